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


needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="needs a C++ compiler")


def build_host_test(name: str, tmp_path) -> Path:
    """Compile kernels/tests/NAME.cpp (a host test of the kernel headers) into tmp_path."""
    compiler = shutil.which("g++") or shutil.which("c++")
    binary = tmp_path / name
    subprocess.run([compiler, "-std=c++11", "-O2", "-o", str(binary), str(KERNELS / "tests" / f"{name}.cpp")],
                   check=True)
    return binary


@needs_compiler
def test_host_generator_matches_python(tmp_path):
    binary = build_host_test("philox_host_test", tmp_path)
    result = subprocess.run([str(binary), str(KERNELS / "tests" / "philox_vectors.txt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "68 passed, 0 failed" in result.stdout  # 67 vectors and the fp32 Box-Muller bound


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
    from ddpmrt.engine.errors import UserError
    from ddpmrt.engine.gpu.kernels import compile_update_kernel

    monkeypatch.setenv("DDPMRT_CACHE_DIR", str(tmp_path))
    cubin = compile_update_kernel("sm_90")
    assert cubin[:4] == b"\x7fELF"  # a CUDA binary is an ELF file
    files = list(tmp_path.glob("*.cubin"))
    assert len(files) == 1 and "sm_90" in files[0].name
    mtime = files[0].stat().st_mtime_ns
    assert compile_update_kernel("sm_90") == cubin and files[0].stat().st_mtime_ns == mtime  # cache hit
    assert compile_update_kernel("sm_86") != cubin and len(list(tmp_path.glob("*.cubin"))) == 2
    with pytest.raises(UserError, match="older than NVRTC"):
        compile_update_kernel("sm_60")  # a Pascal GPU: a one-line error, not an NVRTC log


def test_nvrtc_target_picks_a_compatible_architecture():
    from ddpmrt.engine.errors import UserError
    from ddpmrt.engine.gpu.kernels import nvrtc_target

    supported = [75, 80, 86, 87, 89, 90, 100, 120]
    assert nvrtc_target("sm_90", supported, "13.0") == "sm_90"
    assert nvrtc_target("sm_88", supported, "13.0") == "sm_87"    # same major, older minor: the cubin runs
    assert nvrtc_target("sm_121", supported, "13.0") == "sm_120"
    with pytest.raises(UserError, match=r"older than NVRTC 13.0 supports \(sm_75 and newer\)"):
        nvrtc_target("sm_70", supported, "13.0")
    with pytest.raises(UserError, match="update nvidia-cuda-nvrtc"):
        nvrtc_target("sm_130", supported, "13.0")
    with pytest.raises(UserError, match="not understood"):
        nvrtc_target("compute_90", supported, "13.0")


def test_kernel_sources_ship_with_the_package():
    from ddpmrt.engine.gpu.kernels import kernel_sources

    sources = kernel_sources()
    assert b"ddpmrt_update_kernel" in sources["ddpm_update.cu"] and b"philox4x32_10" in sources["philox.h"]


def test_launch_argument_checks():
    from ddpmrt.engine.errors import UserError
    from ddpmrt.engine.gpu.kernels import check_update_arguments

    ok = dict(x_ptr=256, eps_ptr=512, eps_dtype="fp16", x_half_ptr=1024, coeffs_ptr=2048, keys_ptr=3072, params_ptr=4096,
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
    with pytest.raises(ValueError, match="null"):
        check_update_arguments(**{**ok, "params_ptr": 0})
    with pytest.raises(ValueError, match="8-byte"):
        check_update_arguments(**{**ok, "params_ptr": 4100})
    with pytest.raises(ValueError, match="null"):
        check_update_arguments(**{**ok, "keys_ptr": 0})
    with pytest.raises(ValueError, match="8-byte"):
        check_update_arguments(**{**ok, "keys_ptr": 3076})


def test_image_keys_and_run_parameters_are_the_kernels_structs():
    from ddpmrt.engine.errors import UserError
    from ddpmrt.engine.gpu.kernels import IMAGE_KEY_DTYPE, RUN_PARAMS_DTYPE, image_keys, run_params

    source = (KERNELS / "update_step.h").read_text()
    assert IMAGE_KEY_DTYPE.itemsize == 16 and RUN_PARAMS_DTYPE.itemsize == 16
    assert "uint64_t seed;" in source and "uint32_t image;" in source and "float clip;" in source
    one = image_keys(7, [3, 4])
    assert one["seed"].tolist() == [7, 7] and one["image"].tolist() == [3, 4]
    mixed = image_keys((2 ** 64 - 1, 5), [0, 0])
    assert mixed["seed"].tolist() == [2 ** 64 - 1, 5]
    assert float(run_params(None)["clip"][0]) == 0.0 and float(run_params(1.5)["clip"][0]) == 1.5
    with pytest.raises(UserError, match="seed"):
        image_keys(-1, [0])
    with pytest.raises(UserError, match="one per image"):
        image_keys((1, 2, 3), [0, 1])


def test_committed_update_vectors_match_numpy():
    make = runpy.run_path(str(KERNELS / "tests" / "make_update_vectors.py"))
    committed = (KERNELS / "tests" / "update_vectors.txt").read_text().splitlines()
    assert committed == make["lines"](), ("regenerate with: python kernels/tests/make_update_vectors.py > "
                                          "kernels/tests/update_vectors.txt")


@needs_compiler
def test_host_update_step_matches_numpy_with_a_key_per_image(tmp_path):
    binary = build_host_test("update_host_test", tmp_path)
    vectors = KERNELS / "tests" / "update_vectors.txt"
    result = subprocess.run([str(binary), str(vectors)], capture_output=True, text=True)
    # Every element of every case, three values each (x_prev, the kept x̂₀ or ε, the corrected sample).
    checked = 3 * sum(int(line.split()[1]) * int(line.split()[2]) for line in vectors.read_text().splitlines()
                      if line.startswith("case "))
    assert checked == 294  # the seven cases of make_update_vectors.py, iPNDM's two included
    assert result.returncode == 0 and f"{checked} passed, 0 failed" in result.stdout, result.stdout
    # A wrong key (another image index for one image) must fail the test: that image's 7 elements.
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(vectors.read_text().replace("key 42 5\n", "key 42 6\n"))
    result = subprocess.run([str(binary), str(wrong)], capture_output=True, text=True)
    assert result.returncode == 1 and "7 failed" in result.stdout, result.stdout
    # So must a wrong earlier x̂₀: the DPM-Solver-like case (the 4th) reads H_1.
    lines = vectors.read_text().splitlines()
    h1 = [i for i, line in enumerate(lines) if line.startswith("h1 ")][3]
    lines[h1] = "h1 " + " ".join(["0.0"] * (len(lines[h1].split()) - 1))
    wrong.write_text("\n".join(lines) + "\n")
    result = subprocess.run([str(binary), str(wrong)], capture_output=True, text=True)
    assert result.returncode == 1 and "FAIL case 4" in result.stdout and "x_prev" in result.stdout, result.stdout


def _kernel_parameters(source: str, kernel: str) -> list[str]:
    """The parameter declarations of `extern "C" __global__ void kernel(...)` in the CUDA source."""
    import re

    match = re.search(r"__global__\s+void\s+" + kernel + r"\s*\(([^)]*)\)", source)
    assert match, f"{kernel} not found in ddpm_update.cu"
    return [" ".join(p.split()) for p in match.group(1).split(",")]


@pytest.mark.parametrize("kernel,types_name", [("ddpmrt_update_kernel", "UPDATE_KERNEL_PARAMS"),
                                               ("ddpmrt_initial_noise_kernel", "NOISE_KERNEL_PARAMS")])
def test_launch_types_match_the_kernel_signature(kernel, types_name):
    import ctypes

    from ddpmrt.engine.gpu import kernels

    declared = _kernel_parameters((KERNELS / "ddpm_update.cu").read_text(), kernel)
    types = getattr(kernels, types_name)
    assert len(declared) == len(types), f"{kernel} takes {len(declared)} parameters, {types_name} has {len(types)}"
    for declaration, ctype in zip(declared, types):
        if "*" in declaration:
            expected = ctypes.c_void_p
        elif declaration.startswith("unsigned int "):
            expected = ctypes.c_uint
        else:
            assert declaration.startswith("int "), f"no ctypes mapping for {declaration!r}"
            expected = ctypes.c_int
        assert ctype is expected, f"{kernel}: {declaration!r} is launched as {ctype.__name__}"


def test_launch_arguments_pack_in_cuda_python():
    """cuda-python packs (values, ctypes types) before it calls the driver: the types must be ones it packs."""
    import ctypes

    driver = pytest.importorskip("cuda.bindings.driver")
    from ddpmrt.engine.gpu.kernels import UPDATE_KERNEL_PARAMS

    if _has_gpu():
        pytest.skip("a GPU is visible: the GPU tests launch the real kernel instead of a null one")
    args = (256, 512, 0, 1024, 4096, 2048, 0, 0, 3, 1, 3072, 8, 1)  # x, eps, x_half, table, keys, params, history, P
    with pytest.raises(Exception) as raised:  # no driver here: packing succeeds, then loading libcuda fails
        driver.cuLaunchKernel(driver.CUfunction(), 1, 1, 1, 256, 1, 1, 0, driver.CUstream(0),
                              (args, UPDATE_KERNEL_PARAMS), 0)
    assert not isinstance(raised.value, TypeError), raised.value
    with pytest.raises(TypeError):  # the check above can fail: an unsupported type is refused while packing
        driver.cuLaunchKernel(driver.CUfunction(), 1, 1, 1, 256, 1, 1, 0, driver.CUstream(0),
                              (args, UPDATE_KERNEL_PARAMS[:-1] + (ctypes.c_char_p,)), 0)


def test_image_key_layout_matches_the_c_struct():
    import numpy as np

    from ddpmrt.engine.gpu.kernels import image_keys, run_params

    keys = image_keys(2 ** 64 - 1, [7])
    assert keys.nbytes == 16 and keys.dtype.alignment == 8
    raw = keys.tobytes()
    assert raw[:8] == b"\xff" * 8 and np.frombuffer(raw[8:12], "<u4")[0] == 7
    params = run_params(1.0).tobytes()
    assert len(params) == 16 and np.frombuffer(params[:4], "<f4")[0] == 1.0


# -- on a GPU -------------------------------------------------------------------------------------

def _has_gpu() -> bool:
    from ddpmrt.engine.gpu.cuda_runtime import device_compute_capability

    return device_compute_capability() is not None


def needs_gpu(test):
    """A GPU test: marked `gpu` (pytest -m gpu selects them) and skipped with its reason where none is visible."""
    skip = pytest.mark.skipif(not (_has_nvrtc() and _has_gpu()),
                              reason="needs an NVIDIA GPU, cuda-python and NVRTC (pip install -e '.[gpu]')")
    return pytest.mark.gpu(skip(test))


@needs_gpu
@pytest.mark.parametrize("eps_dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("sampler_kind,clip", [("ddpm", 1.0), ("ddpm", None), ("ddim", None), ("ddim1", 1.0)])
@pytest.mark.parametrize("image_shape", [(3, 8, 8), (3, 5, 5)])  # vectorized and odd element counts
def test_kernel_matches_numpy_update(eps_dtype, sampler_kind, clip, image_shape):
    import numpy as np

    from ddpmrt.engine import DDIMSampler, DDPMSampler, NoiseSchedule
    from ddpmrt.engine.gpu.cuda_runtime import DeviceBuffer, check, cudart
    from ddpmrt.engine.gpu.kernels import FusedUpdate, image_keys, run_params
    from ddpmrt.engine.philox import STREAM_INITIAL, STREAM_STEP, gaussian_noise

    schedule = NoiseSchedule.linear()
    sampler = {"ddpm": lambda: DDPMSampler(schedule, 20, clip_sample=clip),
               "ddim": lambda: DDIMSampler(schedule, 20, clip_sample=clip),
               "ddim1": lambda: DDIMSampler(schedule, 20, eta=1.0, clip_sample=clip)}[sampler_kind]()
    # Three images of two requests: each image's own (seed, image index), as a served batch has them.
    n, seeds, indices = 3, (1234, 1234, 99), np.array([0, 1, 0])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, *image_shape)).astype(np.float32)
    eps = rng.standard_normal((n, *image_shape)).astype(np.float16 if eps_dtype == "fp16" else np.float32)
    coeffs = sampler.coefficients.astype(np.float32)
    params, keys = run_params(clip), image_keys(seeds, indices)
    kernel, stream = FusedUpdate(), 0
    x_dev, eps_dev, c_dev = DeviceBuffer(x.nbytes), DeviceBuffer(eps.nbytes), DeviceBuffer(coeffs.nbytes)
    half_dev, p_dev, k_dev = DeviceBuffer(x.size * 2), DeviceBuffer(params.nbytes), DeviceBuffer(keys.nbytes)
    eps_dev.copy_from_host(eps, stream)
    c_dev.copy_from_host(coeffs, stream)
    p_dev.copy_from_host(params, stream)
    k_dev.copy_from_host(keys, stream)
    elements = int(np.prod(image_shape))
    for step in (0, 7, 19):
        x_dev.copy_from_host(x, stream)
        kernel.update(x_dev.ptr, eps_dev.ptr, eps_dtype, c_dev.ptr, k_dev.ptr, p_dev.ptr, step, sampler.num_steps,
                      elements, n,
                      x_half_ptr=half_dev.ptr, stream=stream)
        out, half = np.empty_like(x), np.empty(x.shape, np.float16)
        x_dev.copy_to_host(out, stream)
        half_dev.copy_to_host(half, stream)
        check(cudart().cudaStreamSynchronize(stream), "sync")
        noise = gaussian_noise(seeds, indices, step, STREAM_STEP, image_shape)
        expected = sampler.step(x, eps.astype(np.float32), step, noise=noise)
        np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(half.astype(np.float32), expected, atol=2e-3, rtol=1e-3)
    kernel.initial_noise(x_dev.ptr, k_dev.ptr, elements, n, stream=stream)
    x_dev.copy_to_host(out, stream)
    check(cudart().cudaStreamSynchronize(stream), "sync")
    np.testing.assert_allclose(out, gaussian_noise(seeds, indices, 0, STREAM_INITIAL, image_shape), atol=1e-6)
