"""Shared helpers: running the command line as a user would, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

# On a CPU where bf16 is faster a checkpoint's default backend is OpenVINO (its ONNX export) or inductor
# (engine/backends: checkpoint_backend), which would export or compile the U-Net in many test processes.
# The tests check behaviour, not that default's speed, so they run eager; tests/test_openvino.py and
# tests/test_torch_backend.py check the default itself.
os.environ.setdefault("DDPMRT_CPU_COMPILE", "0")
# Checkpoints' ONNX exports for OpenVINO and compiled kernels go to ddpmrt's cache: not the user's, here.
os.environ.setdefault("DDPMRT_CACHE_DIR", tempfile.mkdtemp(prefix="ddpmrt-test-cache-"))
# Under pytest-xdist each worker (and every command it starts) gets its share of the cores: two workers with
# two OpenMP threads each on two cores ran eager PyTorch 5.5x and ONNX Runtime 1.8x slower than one thread each
# (spinning thread pools that wait for each other), which was most of the suite's time.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))


# Every test has one kind, by its file (a test of a library file that runs the command line is `cli`):
#   unit         the library in process: samplers, schedules, kernels on the host, checks, fuzz cases
#   cli          the command line as a user runs it, in a subprocess
#   integration  exports, training, servers, backends, benchmark scripts: the slow end-to-end paths
#   contract     the architecture's rules: import layers, packaging, the README's own commands
# `pytest -m "unit or contract" -m "not slow"` is the quick development run (README, Tests).
KINDS = ("unit", "cli", "integration", "contract")
KIND_BY_FILE = {
    "unit": ("test_samplers", "test_solvers", "test_ipndm", "test_schedule", "test_gaussian", "test_philox", "test_device_loop",
             "test_kernels", "test_sidecar", "test_fuzz", "test_tuning", "test_unet", "test_cuda_calls"),
    "cli": ("test_cli", "test_errors", "test_output_paths", "test_reports"),
    "integration": ("test_export", "test_openvino", "test_torch_backend", "test_train", "test_serve", "test_shipped_model",
                    "test_tensorrt", "test_int8", "test_diffusers_folders", "test_diffusers_export", "test_benchmark_scripts", "test_gpu_check",
                    "test_faults", "test_gpu_loop", "test_check"),
    "contract": ("test_layers", "test_packaging", "test_readme"),
}

# Tests of a unit file that run whole commands (in process) against write faults.
KIND_BY_TEST = {"test_a_full_disk": "cli", "test_a_read_only_folder": "cli", "test_permission_denied": "cli"}


def pytest_collection_modifyitems(config, items):
    import inspect

    kind_of = {name: kind for kind, names in KIND_BY_FILE.items() for name in names}
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module not in kind_of:
            raise pytest.UsageError(f"{module}.py has no kind: add it to KIND_BY_FILE in tests/conftest.py")
        kind = KIND_BY_TEST.get(item.function.__name__, kind_of[module])
        if kind == "unit" and "run_cli(" in inspect.getsource(item.function):
            kind = "cli"
        item.add_marker(getattr(pytest.mark, kind))


def run_cli(*args: str, cwd=None, timeout: int = 600, env=None) -> subprocess.CompletedProcess:
    """`ddpmrt ARGS...` via `python -m`, capturing output (the installed console script runs the same main)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", "import sys; from ddpmrt.export.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout, env=full_env)


def run_cli_here(*args: str) -> subprocess.CompletedProcess:
    """`ddpmrt ARGS...` in this process, for a command that fails on its input before any real work: the same
    `main` a user runs, without a new interpreter importing torch (seconds per call on two busy cores).  Output is
    captured by swapping sys.stdout and sys.stderr, so it works inside pytest's own capture."""
    import contextlib
    import io

    from ddpmrt.export.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user mistake: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ddpmrt: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], err


@pytest.fixture
def cli():
    return run_cli
