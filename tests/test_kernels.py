"""The CUDA kernel sources: the C++ generator's test vectors stay in step with the Python generator."""

import runpy
import shutil
import subprocess
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def test_committed_vectors_match_the_python_generator():
    make = runpy.run_path(str(KERNELS / "tests" / "make_vectors.py"))
    committed = (KERNELS / "tests" / "philox_vectors.txt").read_text().splitlines()
    assert committed == make["lines"](), "regenerate with: python kernels/tests/make_vectors.py > kernels/tests/philox_vectors.txt"


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="needs a C++ compiler")
def test_host_generator_matches_python(tmp_path):
    compiler = shutil.which("g++") or shutil.which("c++")
    binary = tmp_path / "philox_host_test"
    subprocess.run([compiler, "-std=c++11", "-O2", "-o", str(binary), str(KERNELS / "tests" / "philox_host_test.cpp")],
                   check=True)
    result = subprocess.run([str(binary), str(KERNELS / "tests" / "philox_vectors.txt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "67 passed, 0 failed" in result.stdout


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA compiler)")
def test_kernel_compiles_for_every_architecture(tmp_path):
    for arch in ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90"):
        subprocess.run(["nvcc", "-c", "-O3", f"-arch={arch}", "-o", str(tmp_path / f"{arch}.o"),
                        str(KERNELS / "ddpm_update.cu")], check=True)
