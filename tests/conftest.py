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


def run_cli(*args: str, cwd=None, timeout: int = 600, env=None) -> subprocess.CompletedProcess:
    """`ddpmrt ARGS...` via `python -m`, capturing output (the installed console script runs the same main)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", "import sys; from ddpmrt.export.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout, env=full_env)


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
