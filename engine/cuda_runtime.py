"""Small helpers over NVIDIA's cuda-python runtime binding, every return code checked.

As in TensorRT's samples/python/common_runtime.py: each cudart call returns (err, *values);
`check` turns a non-success code into an exception naming the call.
"""

from __future__ import annotations

import numpy as np

from ddpmrt.engine.errors import UserError


def cudart():
    try:
        from cuda.bindings import runtime
    except ImportError:
        raise UserError("GPU backends need NVIDIA's cuda-python: pip install cuda-python") from None
    return runtime


class CudaError(RuntimeError):
    pass


def check(result, what: str):
    """Unpack a cudart result tuple, raising CudaError on failure."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(err)
        raise CudaError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_compute_capability(device: int = 0) -> tuple[int, int] | None:
    """(major, minor) of a visible GPU, or None where there is no GPU or no driver."""
    try:
        rt = cudart()
    except UserError:
        return None
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or count <= device:
        return None
    major = check(rt.cudaDeviceGetAttribute(rt.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute")
    minor = check(rt.cudaDeviceGetAttribute(rt.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute")
    return int(major), int(minor)


def copy_host_to_device(ptr: int, array: np.ndarray, stream) -> None:
    """Enqueue array (C-contiguous) -> device address `ptr` on `stream`."""
    rt = cudart()
    array = np.ascontiguousarray(array)
    check(rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync H2D")


def copy_device_to_host(array: np.ndarray, ptr: int, stream) -> None:
    """Enqueue device address `ptr` -> array (C-contiguous, written in place) on `stream`."""
    rt = cudart()
    if not array.flags.c_contiguous:
        raise ValueError("the destination array must be C-contiguous")
    check(rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync D2H")


class DeviceBuffer:
    """A device allocation of `nbytes`, freed with the object."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = int(check(cudart().cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

    def copy_from_host(self, array: np.ndarray, stream) -> None:
        if array.nbytes > self.nbytes:
            raise ValueError(f"{array.nbytes} bytes do not fit a {self.nbytes}-byte buffer")
        copy_host_to_device(self.ptr, array, stream)

    def copy_to_host(self, array: np.ndarray, stream) -> None:
        copy_device_to_host(array, self.ptr, stream)

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


class DeviceMemory:
    """What engine/device_loop.py needs of the device: allocate, copy, wait."""

    def alloc(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(nbytes)

    def copy_from_host(self, ptr: int, array: np.ndarray, stream) -> None:
        copy_host_to_device(ptr, array, stream)

    def copy_to_host(self, array: np.ndarray, ptr: int, stream) -> None:
        copy_device_to_host(array, ptr, stream)

    def synchronize(self, stream) -> None:
        check(cudart().cudaStreamSynchronize(stream), "cudaStreamSynchronize")
