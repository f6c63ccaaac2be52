"""Install layout: the runtime is torch-free and nothing generic lands in site-packages."""

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest


def _python(code: str, cwd) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_engine_import_does_not_import_torch(tmp_path):
    out = _python("import sys, json, ddpmrt.engine as e\n"
                  "e.DDIMSampler(e.NoiseSchedule.linear(), 10)\n"
                  "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'diffusers', 'polygraphy'))))",
                  cwd=tmp_path)
    assert json.loads(out) == []


def test_no_generic_top_level_packages(tmp_path):
    # Run outside the repository so the source folders engine/ and export/ are not on sys.path.
    out = _python("import importlib.util as u, json\n"
                  "print(json.dumps([u.find_spec(n) is None for n in ('engine', 'export', 'kernels', 'benchmarks', 'tests')]))\n",
                  cwd=tmp_path)
    assert json.loads(out) == [True] * 5
    out = _python("import ddpmrt.engine, ddpmrt.export; print(ddpmrt.engine.__name__, ddpmrt.export.__name__)", cwd=tmp_path)
    assert out.split() == ["ddpmrt.engine", "ddpmrt.export"]


def test_console_scripts_are_declared():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.value.startswith("ddpmrt.")}
    assert scripts == {"ddpmrt": "ddpmrt.export.cli:main", "export-engine": "ddpmrt.export.cli:export_engine_main"}


def test_checkpoint_loaders_come_from_the_torch_side_through_entry_points(tmp_path):
    loaders = {ep.name: ep.value for ep in entry_points(group="ddpmrt.model_loaders")}
    assert loaders == {"checkpoint": "ddpmrt.export.conversion.loaders:load_checkpoint",
                       "diffusers": "ddpmrt.export.conversion.loaders:load_diffusers"}
    # Sampling an ONNX file never imports the torch side; a checkpoint imports it only through its loader.
    out = _python("import sys, json, ddpmrt.engine as e\n"
                  "print(json.dumps('ddpmrt.export' in sys.modules))\n"
                  "m = e.load_model('digits')\n"
                  "print(json.dumps(['ddpmrt.export.conversion.loaders' in sys.modules, type(m).__module__]))", cwd=tmp_path)
    before, after = out.splitlines()
    assert json.loads(before) is False
    assert json.loads(after) == [True, "ddpmrt.engine.backends.torch_backend"]


def test_every_extra_that_runs_engines_brings_nvrtc():
    # An engine runs in the device loop, whose fused update NVRTC compiles: without the wheel the demo fails on an
    # RTX GPU unless a CUDA toolkit happens to be installed.
    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra in ("gpu", "tensorrt", "tensorrt-rtx"):
        assert any(r.startswith("nvidia-cuda-nvrtc") for r in extras[extra]), extra


@pytest.mark.slow
def test_every_extra_has_windows_wheels():
    # What pip would install on win_amd64 for each extra's packages, asked of the package registry (metadata only,
    # nothing installed).  tensorrt-rtx is a source metapackage and tensorrt comes from NVIDIA's index: the README
    # says so instead.
    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    packages = sorted({r.split(";")[0].strip() for name, reqs in extras.items() if name != "dev" for r in reqs
                       if not r.startswith(("ddpmrt", "tensorrt"))})

    def dry_run(*requirements):
        return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps",
                               "--only-binary=:all:", "--platform", "win_amd64", "--python-version", "3.11",
                               "--target", "unused", *requirements], capture_output=True, text=True, timeout=300)

    if dry_run("numpy").returncode != 0:
        pytest.skip("needs the package registry (pip could not resolve numpy for win_amd64)")
    missing = [p for p in packages if dry_run(p).returncode != 0]
    assert not missing, f"no win_amd64 wheel for {missing}"
