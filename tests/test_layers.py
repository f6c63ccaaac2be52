"""The layering contract (pyproject.toml [tool.importlinter]) holds, and would catch a back-edge."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
needs_linter = pytest.mark.skipif(LINT is None, reason="needs import-linter (pip install -e '.[dev]')")


def _lint(root: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, "--config", str(cwd / "pyproject.toml"), "--no-cache"], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def _tree(tmp_path: Path) -> Path:
    """The source tree laid out as the installed namespace package ddpmrt/{engine,export}."""
    package = tmp_path / "src" / "ddpmrt"
    package.mkdir(parents=True)
    for folder in ("engine", "export"):
        shutil.copytree(ROOT / folder, package / folder, ignore=shutil.ignore_patterns("models", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "src"


@needs_linter
def test_the_contracts_hold_on_this_tree(tmp_path):
    result = _lint(_tree(tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@needs_linter
@pytest.mark.parametrize("module,line,broken", [
    # An engine module reaching into the torch side, even lazily inside a function: the inversion
    # the entry-point loaders exist to avoid.
    ("engine/backends/torch_backend.py", "def _f():\n    from ddpmrt.export.model.checkpoint import load_unet\n",
     "export (the torch side) -> engine"),
    # The device loop (a low layer) reaching up into the backends.
    ("engine/gpu/device_loop.py", "from ddpmrt.engine.backends import load_model\n", "each using only those below it"),
    # torch in the core.
    ("engine/samplers.py", "import torch\n", "imports no torch"),
    # The torch side: a library module using the command line (bench once took an argument parser from
    # cli, and cli imported bench back), a model module using a conversion, and training using one.
    ("export/evaluation/bench.py", "def _f():\n    from ddpmrt.export.cli.options import int_in\n",
     "the command line on top"),
    ("export/model/sources.py", "def _f():\n    from ddpmrt.export.conversion.onnx_export import export_onnx\n",
     "the command line on top"),
    ("export/training/trainer.py", "def _f():\n    from ddpmrt.export.conversion import quantize\n",
     "the command line on top"),
])
def test_a_reintroduced_back_edge_breaks_a_contract(tmp_path, module, line, broken):
    src = _tree(tmp_path)
    target = src / "ddpmrt" / module
    target.write_text(target.read_text() + "\n\n" + line)
    result = _lint(src, tmp_path)
    assert result.returncode != 0, result.stdout
    assert broken in result.stdout and "1 broken" in result.stdout, result.stdout


def test_backend_names_are_listed_once():
    # The command line, bench and report take their backend names from load_model's one list.
    from ddpmrt.engine.backends import BACKENDS
    from ddpmrt.export.cli.main import build_parser
    from ddpmrt.export.evaluation.bench_backends import BENCH_BACKENDS, BY_NAME_BACKENDS, REPORT_BACKENDS, row_backend

    assert all(row_backend(row) in BACKENDS for row in BENCH_BACKENDS + BY_NAME_BACKENDS)
    assert row_backend("openvino-int8-cpu") == "openvino" and row_backend("torch-cuda-graph") == "torch"
    assert set(REPORT_BACKENDS) < set(BACKENDS)
    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command, expected in (("sample", BACKENDS), ("serve", BACKENDS), ("report", REPORT_BACKENDS)):
        backend = next(a for a in subparsers[command]._actions if a.dest == "backend")
        assert tuple(backend.choices) == tuple(expected), command


def test_the_command_lines_parser_imports_no_torch():
    # Every command builds the whole parser: one that imported torch (report's --dataset choices did, through the
    # judge) added a second of start-up to `ddpmrt sample` of an .onnx or a shipped model on OpenVINO (#33).
    code = ("import sys; from ddpmrt.export.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'onnx', 'openvino', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
