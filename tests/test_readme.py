"""The README's and docs/ pages' commands, as a new user runs them after the install their page names (#22, #33).

Every `ddpmrt` and `export-engine` command in the bash blocks of README.md and of every page under docs/
is taken out of its page here: each one must parse, and each must name the extra it needs in its section
or at the top of its page.  The quick ones then run exactly as written, in order (the README first, then
the docs pages in PAGES order), in a fresh folder: the Quick start's single steps (sample, export-engine,
sample the ONNX), the few-step solvers' samples, the export for serving, and the Python example,
`ddpmrt check` and the demo.  The long ones (training 6000 steps, bench, full reports, serve, diffusers
folders that need a download) are parsed only; their code paths run in test_train, test_cli, test_reports
and test_serve.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The docs pages in reading order (the README's Documentation table links each one).
PAGES = [README] + [ROOT / "docs" / f"{name}.md" for name in
                    ("training", "samplers", "backends", "serving", "benchmarks", "measured", "architecture", "status")]
RUN_AS_WRITTEN = (  # prefixes of the commands run exactly as the README writes them
    "ddpmrt sample digits --steps 50",
    "export-engine digits --out engines/digits.plan",
    "ddpmrt sample engines/digits.onnx",
    "ddpmrt sample digits --sampler unipc",
    "ddpmrt sample digits --sampler dpmsolver",
    "ddpmrt export-onnx digits --out digits.onnx",
    "ddpmrt check digits --out check/",
    "ddpmrt demo",
)
# What each command needs beyond the Quick start's install (".[export,tensorrt-rtx]"), and the words in
# its section of the README that tell a user so.
NEEDS = {"serve": "pip install -e \".[serve]\"", "bench": "pip install diffusers"}


def sections() -> list[tuple[str, str]]:
    """(page: heading, text) of every section of the README and the docs pages; a page's text before its
    first section (what to install for it) counts as part of each of its sections."""
    result = []
    for page in PAGES:
        parts = re.split(r"^(#+ .*)$", page.read_text(encoding="utf-8"), flags=re.M)
        preamble = parts[2] if len(parts) > 2 and parts[1].startswith("# ") else ""
        result += [(f"{page.relative_to(ROOT)}: {parts[i].strip()}", preamble + parts[i + 1])
                   for i in range(1, len(parts) - 1, 2)]
    return result


def all_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in PAGES)


def test_every_docs_page_is_read_here_and_linked_from_the_readme():
    on_disk = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert on_disk == sorted(p.name for p in PAGES[1:]), "add the new page to PAGES in tests/test_readme.py"
    readme = README.read_text(encoding="utf-8")
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"the README's Documentation table does not link docs/{page.name}"
    # Relative links in the docs pages point at files that exist.
    for page in PAGES[1:]:
        for target in re.findall(r"\]\((?!https?:)([^)#]+)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


def test_the_readme_is_short_with_the_backend_table_near_the_top():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, len(lines)
    assert [i for i, line in enumerate(lines) if line.startswith("## Which backend when")][0] < 80


def readme_commands() -> list[tuple[str, str]]:
    """(section heading, command) for every ddpmrt / export-engine command in a bash block."""
    commands = []
    for heading, text in sections():
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                for part in line.split("&&"):
                    part = part.strip()
                    if part.startswith(("ddpmrt ", "export-engine ")) and "pytest" not in part:
                        commands.append((heading, part))
    return commands


def install_line() -> str:
    quick = dict(sections())["README.md: ## Quick start"]
    return re.search(r"pip install (torch==\S+ )?-e \"([^\"]+)\"", quick).group(2)


def test_the_readme_has_its_commands():
    commands = [c for _, c in readme_commands()]
    assert len(commands) >= 20, commands
    for prefix in RUN_AS_WRITTEN:
        assert [c for c in commands if c.startswith(prefix)], f"the README no longer has {prefix!r}"


@pytest.mark.parametrize("heading,command", readme_commands(), ids=[c[:60] for _, c in readme_commands()])
def test_every_readme_command_parses_and_names_its_extras(heading, command):
    from ddpmrt.export.cli import build_parser

    argv = shlex.split(command)
    if argv[0] == "export-engine":
        argv = ["export-engine", *argv[1:]]
    else:
        argv = argv[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"the README's {command!r} does not parse (exit {exc.code})")
    section = dict(sections())[heading]
    need = NEEDS.get(argv[0])
    if need and "--no-diffusers" not in argv:
        assert need in section, f"{heading}: {command!r} needs {need!r}, and its section does not say so"
    assert {"export", "tensorrt-rtx"} <= set(install_line().strip(".[]").split(","))


@pytest.mark.slow
def test_the_quick_readme_commands_run_as_written(tmp_path):
    pytest.importorskip("torch", reason="the README's install has the torch side: pip install -e '.[export]'")
    pytest.importorskip("tensorrt_rtx", reason="the README's install has TensorRT-RTX: pip install -e '.[tensorrt-rtx]'")
    to_run = [c for _, c in readme_commands() if c.startswith(RUN_AS_WRITTEN)]
    bin_dir = Path(sys.executable).parent
    # A new user's environment (empty caches under a new HOME), with this worker's share of the cores
    # (tests/conftest.py): two workers' spinning thread pools on two cores ran these commands 2x slower.
    threads = {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]} if "OMP_NUM_THREADS" in os.environ else {}
    for command in to_run:
        result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                                env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **threads})
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert (tmp_path / "digits.png").stat().st_size > 0 and (tmp_path / "engines" / "digits.plan").stat().st_size > 0
    # The Python example, after the commands that wrote its model.
    example = re.search(r"```python\n(from ddpmrt.engine import DDIMSampler.*?)```", all_text(), flags=re.S)
    result = subprocess.run([sys.executable, "-c", example.group(1)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_the_cmake_commands_run_in_windows_powershell_too():
    # One command per line (PowerShell 5.1 has no &&), and the configuration named for multi-config generators.
    text = all_text()
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()
             if line.strip().startswith(("cmake", "ctest"))]
    assert [line.split()[0] for line in lines] == ["cmake", "cmake", "ctest"], lines
    assert not [line for line in lines if "&&" in line or ";" in line]
    assert "--config Release" in lines[1] and "-C Release" in lines[2]
    assert "ddpmrt_kernels.dll" in text and "cmake -S . -B build &&" not in text
