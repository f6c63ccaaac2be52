"""The fused update kernel at run time: NVRTC compiles kernels/ddpm_update.cu on first use.

Python users need no CMake: the same source the CMake build uses is compiled by NVRTC
(through cuda-python) for the GPU's architecture, and the binary is cached on disk keyed by
the source hash, the architecture and the NVRTC version, so later runs load it directly.

    cubin = compile_update_kernel("sm_90")             # works without a GPU (NVRTC only)
    kernel = FusedUpdate()                             # needs a GPU: loads the module
    kernel.update(x_ptr, eps_ptr, "fp16", coeffs_ptr, keys_ptr, params_ptr, step=i, ..., stream=stream)

The coefficient table (num_steps, COEFFS_PER_STEP: the columns of samplers.py), the image keys (`image_keys`: one seed and image index
per image) and the run parameters (`run_params`: the clip value) are device memory the kernel
reads when it runs, so a captured CUDA graph of a whole loop serves any sampler, seed or mix of
per-request seeds with that shape and step count.
"""

from __future__ import annotations

import ctypes
import hashlib
from importlib import resources

import numpy as np

from ddpmrt.engine import checks
from ddpmrt.engine.artifacts.io import atomic_write, cache_dir
from ddpmrt.engine.errors import UserError, install_hint
from ddpmrt.engine.gpu.cuda_runtime import check

SOURCE = "ddpm_update.cu"
HEADERS = ("update_step.h", "philox.h")
OPTIONS = ("-std=c++17", "-lineinfo")  # no --use_fast_math: the noise must match the NumPy generator
EPS_DTYPES = {"fp32": 0, "fp16": 1}
HISTORY_SLOTS = 4  # the x̂₀ ring of multistep samplers: three read, one written (kernels/update_step.h)
# The kernels' parameters in the order of their __global__ signatures in ddpm_update.cu (a test
# parses the source and compares): device pointers, then the scalars.
UPDATE_KERNEL_PARAMS = (ctypes.c_void_p,) * 8 + (ctypes.c_int, ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_int)
NOISE_KERNEL_PARAMS = (ctypes.c_void_p,) * 3 + (ctypes.c_uint, ctypes.c_uint)
# The structs of kernels/update_step.h: one key per image (16 bytes, 8-byte aligned), and the run's parameters.
IMAGE_KEY_DTYPE = np.dtype([("seed", "<u8"), ("image", "<u4"), ("reserved", "<u4")], align=True)
RUN_PARAMS_DTYPE = np.dtype([("clip", "<f4"), ("reserved", "<u4", (3,))], align=True)


def image_keys(seed, image_indices) -> np.ndarray:
    """The noise key of every image as the bytes to copy to the device: one seed for all, or one per image."""
    image_indices = checks.image_indices(image_indices, len(np.atleast_1d(image_indices)))
    seeds = checks.seeds(seed, len(image_indices))
    keys = np.zeros(len(image_indices), IMAGE_KEY_DTYPE)
    keys["seed"] = np.array(seeds if isinstance(seeds, tuple) else [seeds] * len(image_indices), np.uint64)
    keys["image"] = image_indices
    return keys


def run_params(clip: float | None = None) -> np.ndarray:
    """The kernels' run parameters as the bytes to copy to the device; clip None (or 0) = off."""
    clip = 0.0 if clip is None else checks.check_real(clip, "clip_sample", 0.0)
    return np.array([(clip, (0, 0, 0))], RUN_PARAMS_DTYPE)


def kernel_sources() -> dict[str, bytes]:
    package = resources.files("ddpmrt.kernels")
    return {name: package.joinpath(name).read_bytes() for name in (SOURCE, *HEADERS)}


def _nvrtc():
    try:
        from cuda.bindings import nvrtc

        nvrtc.nvrtcVersion()
    except (ImportError, OSError, RuntimeError):  # not installed, or the NVRTC library cannot be loaded
        raise UserError("the fused CUDA kernel is compiled with NVRTC, which is not installed: "
                        f"{install_hint('gpu')} (cuda-python and nvidia-cuda-nvrtc)") from None
    return nvrtc


def nvrtc_target(arch: str, supported: list[int], nvrtc_version: str) -> str:
    """The architecture to compile for on an `arch` GPU, given the ones this NVRTC supports.

    A cubin runs on its own architecture and on later minor versions of the same major one, so
    an sm_XY this NVRTC does not name is served by the newest supported sm_XZ with Z < Y.
    """
    if not (arch.startswith("sm_") and arch[3:].isdigit()):
        raise UserError(f"GPU architecture {arch!r} not understood; expected sm_XY, e.g. sm_90")
    number = int(arch[3:])
    if number in supported:
        return arch
    same_major = [s for s in supported if s // 10 == number // 10 and s < number]
    if same_major:
        return f"sm_{max(same_major)}"
    if number < min(supported):
        raise UserError(f"this GPU ({arch}) is older than NVRTC {nvrtc_version} supports (sm_{min(supported)} and "
                        "newer): install an NVRTC that still targets it (e.g. nvidia-cuda-nvrtc-cu12) or use a "
                        "newer GPU")
    raise UserError(f"NVRTC {nvrtc_version} cannot compile for {arch} (it targets up to sm_{max(supported)}): "
                    "update nvidia-cuda-nvrtc")


def compile_update_kernel(arch: str) -> bytes:
    """The cubin of the fused kernels for an `arch` GPU (e.g. "sm_90"), from the disk cache or NVRTC."""
    nvrtc = _nvrtc()
    sources = kernel_sources()
    version = ".".join(map(str, check(nvrtc.nvrtcVersion(), "nvrtcVersion")))
    arch = nvrtc_target(arch, list(check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs")), version)
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name])
    digest.update(f"{arch}|{version}|{' '.join(OPTIONS)}".encode())
    cached = cache_dir() / f"ddpm_update-{digest.hexdigest()[:20]}-{arch}.cubin"
    if cached.is_file():
        return cached.read_bytes()

    headers = list(HEADERS)
    program = check(nvrtc.nvrtcCreateProgram(sources[SOURCE], SOURCE.encode(), len(headers),
                                                     [sources[h] for h in headers], [h.encode() for h in headers]),
                     "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in OPTIONS)]
        err, = nvrtc.nvrtcCompileProgram(program, len(options), options)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            size = check(nvrtc.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(program, log)
            raise RuntimeError(f"NVRTC failed to compile {SOURCE} for {arch}:\n{log.decode(errors='replace')}")
        size = check(nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
        cubin = b" " * size
        check(nvrtc.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    with atomic_write(cached) as tmp:
        tmp.write_bytes(cubin)
    return cubin


def check_update_arguments(x_ptr: int, eps_ptr: int, eps_dtype: str, x_half_ptr: int, coeffs_ptr: int, keys_ptr: int,
                           params_ptr: int, elements_per_image: int, n_images: int, step: int, num_steps: int,
                           history_ptr: int = 0, corrected_ptr: int = 0) -> bool:
    """Validate a launch as the C ABI does; returns whether the vectorized path applies."""
    if eps_dtype not in EPS_DTYPES:
        raise UserError(f"eps dtype {eps_dtype!r} is not supported; the kernel reads fp32 or fp16")
    if not x_ptr or not eps_ptr or not coeffs_ptr or not keys_ptr or not params_ptr:
        raise ValueError("x, eps, the coefficient table, the image keys and the run parameters must be device "
                         "pointers, not null")
    if params_ptr % 8 or keys_ptr % 8:
        raise ValueError("misaligned buffer: the image keys and the run parameters must be 8-byte aligned")
    if not (0 < elements_per_image < 2 ** 32 and 0 < n_images < 2 ** 32):
        raise ValueError("element and image counts must be positive and below 2**32 (the kernel's unsigned int)")
    if not 0 <= step < num_steps:
        raise ValueError(f"step {step} outside the coefficient table (0 to {num_steps - 1})")
    eps_size = 2 if eps_dtype == "fp16" else 4
    if x_ptr % 4 or eps_ptr % eps_size or (x_half_ptr and x_half_ptr % 2) or history_ptr % 4 or corrected_ptr % 4:
        raise ValueError("misaligned buffer: x, the history and the corrected sample must be 4-byte aligned, eps and "
                         "the fp16 copy aligned to their element size")
    return (elements_per_image % 4 == 0 and x_ptr % 16 == 0 and eps_ptr % (4 * eps_size) == 0
            and (not x_half_ptr or x_half_ptr % 8 == 0) and history_ptr % 16 == 0 and corrected_ptr % 16 == 0)


class FusedUpdate:
    """The fused kernels loaded on the current GPU, launched on any stream (needs a GPU).

    Written against cuda-python's documented driver API; validated by tests/test_kernels.py's
    GPU tests, which skip where no GPU is visible.
    """

    THREADS = 256

    def __init__(self, device: int = 0):
        from cuda.bindings import driver

        from ddpmrt.engine.gpu.cuda_runtime import cudart, device_compute_capability

        capability = device_compute_capability(device)
        if capability is None:
            raise UserError("the fused kernel needs an NVIDIA GPU and none is visible")
        rt = cudart()
        check(rt.cudaSetDevice(device), "cudaSetDevice")
        check(rt.cudaFree(0), "cudaFree(0)")  # makes the primary context current for the driver API
        self._driver = driver
        self.arch = "sm_{}{}".format(*capability)
        self._module = check(driver.cuModuleLoadData(compile_update_kernel(self.arch)), "cuModuleLoadData")
        self._update = check(driver.cuModuleGetFunction(self._module, b"ddpmrt_update_kernel"), "cuModuleGetFunction")
        self._noise = check(driver.cuModuleGetFunction(self._module, b"ddpmrt_initial_noise_kernel"),
                                    "cuModuleGetFunction")

    def _grid(self, elements_per_image: int, n_images: int) -> int:
        groups = (elements_per_image + 3) // 4 * n_images
        return max(1, min((groups + self.THREADS - 1) // self.THREADS, 65535 * 32))  # grid-stride covers the rest

    def _launch(self, function, grid: int, args: tuple, types: tuple, stream) -> None:
        # cuda-python packs the arguments from (values, ctypes types); c_void_p takes a device address.
        stream = self._driver.CUstream(int(stream or 0))
        check(self._driver.cuLaunchKernel(function, grid, 1, 1, self.THREADS, 1, 1, 0, stream, (args, types), 0),
                      "cuLaunchKernel")

    def update(self, x_ptr: int, eps_ptr: int, eps_dtype: str, coeffs_ptr: int, keys_ptr: int, params_ptr: int,
               step: int, num_steps: int, elements_per_image: int, n_images: int, x_half_ptr: int = 0,
               history_ptr: int = 0, corrected_ptr: int = 0, stream=None) -> None:
        """x (fp32, in place) <- one sampler step at row `step` of the device coefficient table.

        history_ptr: HISTORY_SLOTS × n × elements floats, corrected_ptr: n × elements floats; a
        multistep sampler needs both, DDIM and DDPM neither (0)."""
        vectorized = check_update_arguments(x_ptr, eps_ptr, eps_dtype, x_half_ptr, coeffs_ptr, keys_ptr, params_ptr,
                                            elements_per_image, n_images, step, num_steps, history_ptr, corrected_ptr)
        args = (x_ptr, eps_ptr, x_half_ptr, coeffs_ptr, keys_ptr, params_ptr, history_ptr, corrected_ptr, step,
                EPS_DTYPES[eps_dtype],
                elements_per_image, n_images, int(vectorized))
        self._launch(self._update, self._grid(elements_per_image, n_images), args, UPDATE_KERNEL_PARAMS, stream)

    def initial_noise(self, x_ptr: int, keys_ptr: int, elements_per_image: int, n_images: int, x_half_ptr: int = 0,
                      stream=None) -> None:
        """x_T (fp32, and optionally an fp16 copy) from the STREAM_INITIAL Philox stream, keyed per image."""
        if not x_ptr or x_ptr % 4 or (x_half_ptr and x_half_ptr % 2) or not keys_ptr or keys_ptr % 8:
            raise ValueError("x must be a 4-byte aligned device pointer, the fp16 copy 2-byte aligned and the "
                             "image keys an 8-byte aligned device pointer")
        if not (0 < elements_per_image < 2 ** 32 and 0 < n_images < 2 ** 32):
            raise ValueError("element and image counts must be positive and below 2**32 (the kernel's unsigned int)")
        args = (x_ptr, x_half_ptr, keys_ptr, elements_per_image, n_images)
        self._launch(self._noise, self._grid(elements_per_image, n_images), args, NOISE_KERNEL_PARAMS, stream)
