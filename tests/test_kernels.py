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


def _has_nvrtc() -> bool:
    try:
        from cuda.bindings import nvrtc

        nvrtc.nvrtcVersion()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _has_nvrtc(), reason="needs NVRTC: pip install cuda-python nvidia-cuda-nvrtc")
def test_nvrtc_compiles_and_caches(tmp_path, monkeypatch):
    from ddpmrt.engine.kernels import compile_update_kernel

    monkeypatch.setenv("DDPMRT_CACHE_DIR", str(tmp_path))
    cubin = compile_update_kernel("sm_90")
    assert cubin[:4] == b"\x7fELF"  # a CUDA binary is an ELF file
    files = list(tmp_path.glob("*.cubin"))
    assert len(files) == 1 and "sm_90" in files[0].name
    mtime = files[0].stat().st_mtime_ns
    assert compile_update_kernel("sm_90") == cubin and files[0].stat().st_mtime_ns == mtime  # cache hit
    assert compile_update_kernel("sm_86") != cubin and len(list(tmp_path.glob("*.cubin"))) == 2


def test_kernel_sources_ship_with_the_package():
    from ddpmrt.engine.kernels import kernel_sources

    sources = kernel_sources()
    assert b"ddpmrt_update_kernel" in sources["ddpm_update.cu"] and b"philox4x32_10" in sources["philox.h"]


def test_launch_argument_checks():
    from ddpmrt.engine.errors import UserError
    from ddpmrt.engine.kernels import check_update_arguments

    ok = dict(x_ptr=256, eps_ptr=512, eps_dtype="fp16", x_half_ptr=1024, coeffs_ptr=2048,
              elements_per_image=3 * 32 * 32, n_images=4, step=0, num_steps=10)
    assert check_update_arguments(**ok) is True
    assert check_update_arguments(**{**ok, "elements_per_image": 3 * 5 * 5}) is False  # odd sizes: scalar path
    assert check_update_arguments(**{**ok, "x_ptr": 260}) is False                       # 4- but not 16-aligned
    with pytest.raises(ValueError, match="misaligned"):
        check_update_arguments(**{**ok, "x_ptr": 258})
    with pytest.raises(UserError, match="fp32 or fp16"):
        check_update_arguments(**{**ok, "eps_dtype": "bf16"})
    with pytest.raises(ValueError, match="outside the coefficient table"):
        check_update_arguments(**{**ok, "step": 10})
    with pytest.raises(ValueError, match="null"):
        check_update_arguments(**{**ok, "eps_ptr": 0})
