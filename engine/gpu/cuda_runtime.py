"""Small helpers over NVIDIA's cuda-python bindings, every return code checked.

As in TensorRT's samples/python/common_runtime.py: each call of the runtime (cudart), driver
(cu*) or NVRTC binding returns (err, *values); `check` turns a non-success code of any of the
three into a CudaError naming the call and the code.  It is the one result checker of ddpmrt.
"""

from __future__ import annotations

import contextlib
import gc

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


def _error_name(err) -> str:
    """The name of a cudart, driver or NVRTC error code (each binding has its own lookup)."""
    kind = type(err).__name__
    try:
        if kind == "nvrtcResult":
            from cuda.bindings import nvrtc

            name = nvrtc.nvrtcGetErrorString(err)[1]
        elif kind == "CUresult":
            from cuda.bindings import driver

            name = driver.cuGetErrorName(err)[1]
        else:
            name = cudart().cudaGetErrorName(err)[1]
    except Exception:  # a lookup that fails must not hide the original error
        return str(err)
    return name.decode() if isinstance(name, bytes) else str(name)


def check(result, what: str):
    """Unpack a cuda-python result tuple (err, *values), raising CudaError where err is not success.

    Success is code 0 in all three bindings (cudaSuccess, CUDA_SUCCESS, NVRTC_SUCCESS).
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise CudaError(f"{what} failed: {_error_name(err)}")
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


def graph_shape(node_types: list[str], edges: list[tuple[int, int]]) -> dict:
    """What a captured graph holds: node counts by type, edges, and whether it is one straight line.

    A loop captured from one stream is a chain of nodes; a library that forks work onto a side
    stream, or copies and memsets between kernels, shows up here (the bench reports it per graph,
    since how long the host spends in cudaGraphLaunch depends on what the graph holds).
    """
    types: dict[str, int] = {}
    for kind in node_types:
        types[kind] = types.get(kind, 0) + 1
    into = np.zeros(len(node_types), np.int64)
    out_of = np.zeros(len(node_types), np.int64)
    for a, b in edges:
        out_of[a] += 1
        into[b] += 1
    chain = len(edges) == max(len(node_types) - 1, 0) and bool((into <= 1).all() and (out_of <= 1).all())
    return {"nodes": len(node_types), "edges": len(edges), "types": dict(sorted(types.items())), "straight_line": chain}


def describe_graph(graph) -> dict:
    """graph_shape of a cudaGraph_t (a cuda-python handle or its address, as torch's raw_cuda_graph gives)."""
    rt = cudart()
    if isinstance(graph, int):
        graph = rt.cudaGraph_t(graph)
    _, count = check(rt.cudaGraphGetNodes(graph, 0), "cudaGraphGetNodes")
    nodes, _ = check(rt.cudaGraphGetNodes(graph, count), "cudaGraphGetNodes")
    index = {int(node): i for i, node in enumerate(nodes)}
    prefix = "cudaGraphNodeType"
    node_types = [check(rt.cudaGraphNodeGetType(node), "cudaGraphNodeGetType").name.removeprefix(prefix).lower()
                  for node in nodes]
    try:
        # (from, to, [edge data,] count): cuda-python 13 returns the edge data too, 12 does not.
        edge_count = check(rt.cudaGraphGetEdges(graph, 0), "cudaGraphGetEdges")[-1]
        sources, targets, *_ = check(rt.cudaGraphGetEdges(graph, edge_count), "cudaGraphGetEdges")
    except CudaError as exc:  # e.g. cudaErrorLossyQuery: edges that carry data (programmatic launches)
        shape = graph_shape(node_types, [])
        shape.update(edges=None, straight_line=None, edge_error=str(exc))
        return shape
    edges = [(index[int(a)], index[int(b)]) for a, b in zip(sources or [], targets or [])]
    return graph_shape(node_types, edges)


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
    """What engine/gpu/device_loop.py needs of the device: allocate, copy, wait."""

    def alloc(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(nbytes)

    def copy_from_host(self, ptr: int, array: np.ndarray, stream) -> None:
        copy_host_to_device(ptr, array, stream)

    def copy_to_host(self, array: np.ndarray, ptr: int, stream) -> None:
        copy_device_to_host(array, ptr, stream)

    def synchronize(self, stream) -> None:
        check(cudart().cudaStreamSynchronize(stream), "cudaStreamSynchronize")


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic collector run first, then held off, around a CUDA stream capture.

    A collection inside a capture can free an unreachable DeviceBuffer, whose cudaFree is not allowed while
    a stream captures (the capture is invalidated); torch 2.11 no longer collects before its own captures.
    """
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def graph_shape_or_none(graph) -> dict | None:
    """describe_graph, or None where the graph cannot be read: what it holds is for reports, and sampling goes on."""
    try:
        return describe_graph(graph)
    except Exception:  # noqa: BLE001 - a report's detail must never stop the loop
        return None
