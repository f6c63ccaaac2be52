"""The TensorRT backend: a serialized engine (TensorRT or TensorRT-RTX) run with cuda-python.

Loading checks, in order and before deserializing: the sidecar (model.plan.json), the engine
file's size, the flavour and its version, a visible GPU, and that the GPU's compute capability
is among the engine's targets.  Each failure is one line naming the fix.

Running: x, a table of timesteps (one 256-byte aligned row per sampler step) and eps live in
device buffers allocated once for the profile's largest batch, on one non-blocking stream.  Tensor
addresses are bound once: a loop step copies its row of timesteps to t's one address on the stream.

Sampling (`Sampler.sample` on this model) runs engine/gpu/device_loop.py: x, ε and the network
input stay on the device, the fused kernel does each update, and `cuda_graph=True` captures
the whole loop (every network call and update) as one CUDA graph per batch and step count.
TensorRT needs one ordinary `execute_async_v3` at a shape before it is captured: the loop's
first run at a key is that run, and with graphs each batch size has an execution context of its
own, whose shape never changes after its capture.  TensorRT-RTX's own graph strategy stays
disabled, since the loop captures the enqueue itself; its kernels are specialized eagerly for
graphs and kept in a runtime cache across loads.  A stream TensorRT says it cannot capture runs
eagerly, with a note.

Called directly (`model(x, t)` on NumPy arrays), the engine copies x and t in and ε out.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from ddpmrt.engine.artifacts.io import atomic_write, cache_dir
from ddpmrt.engine.artifacts.sidecar import ENGINE, check_batch, read_sidecar, sidecar_metadata
from ddpmrt.engine.backends.base import LoadedModel
from ddpmrt.engine.backends.tensorrt_flavour import import_flavour
from ddpmrt.engine.checks import model_inputs
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.gpu.cuda_runtime import (
    CudaError,
    DeviceBuffer,
    check,
    collector_paused,
    cudart,
    device_compute_capability,
    graph_shape_or_none,
)

RTX_DEFAULT_TARGETS = ("sm80", "sm86", "sm89", "sm120")


def check_compatible(plan: Path, sidecar: dict, compute_capability: tuple[int, int] | None, flavour) -> None:
    """What TensorRT adds to the sidecar's checks before deserializing: the flavour's version and the GPU."""
    if flavour.version != sidecar["flavour_version"]:
        raise UserError(f"{plan.name} was built with {sidecar['flavour']} {sidecar['flavour_version']} but "
                        f"{flavour.version} is installed; rebuild with `export-engine`, or install that version")
    if compute_capability is None:
        raise UserError(f"{plan.name} needs an NVIDIA GPU and none is visible; sample the .onnx model with "
                        "--backend onnxruntime instead")
    gpu = "sm{}{}".format(*compute_capability)
    targets = sidecar.get("targets", [])
    built_on = "sm{}{}".format(*sidecar["built_with_gpu"]) if sidecar.get("built_with_gpu") else None
    if sidecar["flavour"] == "tensorrt" or targets == ["current"]:
        allowed = {built_on} if built_on else set()
    else:
        allowed = set(RTX_DEFAULT_TARGETS if targets in ([], ["default"]) else targets)
        if "current" in allowed and built_on:
            allowed.add(built_on)
    if gpu not in allowed:
        raise UserError(f"{plan.name} targets {', '.join(sorted(allowed)) or 'another GPU'}, this GPU is {gpu}; "
                        "rebuild with `export-engine --targets current`, or use --backend onnxruntime")


def _row_bytes(n: int) -> int:
    """Bytes of one timestep row of batch n, rounded up to TensorRT's 256-byte address alignment."""
    return -(-n * 8 // 256) * 256


class _TensorRTGraph:
    """An instantiated CUDA graph of a captured loop (the CapturedGraph of engine/gpu/device_loop.py)."""

    def __init__(self, graph_exec, stream, shape: dict | None):
        self.graph_exec, self.stream, self.shape = graph_exec, stream, shape

    def launch(self) -> None:
        check(cudart().cudaGraphLaunch(self.graph_exec, self.stream), "cudaGraphLaunch")

    def close(self) -> None:
        if self.graph_exec is not None:
            check(cudart().cudaGraphExecDestroy(self.graph_exec), "cudaGraphExecDestroy")
            self.graph_exec = None


_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
           "INT8": "int8", "BOOL": "bool"}


def check_engine_io(engine, trt, io_dtype: np.dtype, name: str) -> None:
    """The engine's own inputs and outputs, read as NVIDIA's common_runtime.py reads them (num_io_tensors), against
    what ddpmrt binds: inputs x (the sidecar's I/O type) and t (int64), output eps.  One line on a mismatch,
    before any address is set on a tensor that is not there."""
    expected = {"x": ("INPUT", np.dtype(io_dtype).name), "t": ("INPUT", "int64"), "eps": ("OUTPUT", np.dtype(io_dtype).name)}
    found = {}
    for i in range(engine.num_io_tensors):
        tensor = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(tensor)
        dtype = engine.get_tensor_dtype(tensor)
        found[tensor] = (getattr(mode, "name", str(mode)).upper(), _DTYPES.get(getattr(dtype, "name", str(dtype)).upper(),
                                                                              str(dtype)))
    if found != expected:
        def shown(io):
            return ", ".join(f"{t} {mode.lower()} {dtype}" for t, (mode, dtype) in io.items())
        raise UserError(f"{name} has {shown(found) or 'no inputs or outputs'}; its sidecar describes {shown(expected)}: "
                        "the engine and its .plan.json do not belong together, rebuild with export-engine")


def check_engine_validity(runtime, serialized: bytes, name: str) -> None:
    """TensorRT-RTX's own verdict on an engine for this GPU, driver and version (Runtime.get_engine_validity), before
    deserializing it: an invalid one is one line naming the reasons.  Full TensorRT has no such call."""
    if not hasattr(runtime, "get_engine_validity"):
        return
    validity, diagnostics = runtime.get_engine_validity(serialized)
    if getattr(validity, "name", str(validity)).upper() != "INVALID":
        return
    reasons = [flag.lower() for flag in ("VERSION_MISMATCH", "UNSUPPORTED_CC", "OLD_CUDA_DRIVER", "OLD_CUDA_RUNTIME",
                                         "INSUFFICIENT_GPU_MEMORY", "MALFORMED_ENGINE", "CUDA_ERROR")
               if _has_flag(diagnostics, flag)]
    raise UserError(f"{name} cannot run here ({', '.join(reasons) or 'invalid'}); rebuild it for this GPU with "
                    "export-engine --targets current, or update the driver where it says old_cuda_driver")


def _has_flag(diagnostics, flag: str) -> bool:
    """Whether the EngineInvalidityDiagnostics bit field holds `flag`."""
    try:
        import tensorrt_rtx as trt

        return bool(int(diagnostics) & int(getattr(trt.EngineInvalidityDiagnostics, flag)))
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


def runtime_cache_path(sidecar: dict) -> Path:
    """Where TensorRT-RTX's runtime cache for an engine lives: ddpmrt's cache, by the engine's hash and the GPU."""
    capability = device_compute_capability() or (0, 0)
    name = f"{str(sidecar.get(ENGINE.sha256_key, 'engine'))[:16]}-sm{capability[0]}{capability[1]}.cache"
    return cache_dir() / "tensorrt-rtx-runtime" / name


class TensorRTModel(LoadedModel):
    """eps = model(x_t, t) through a TensorRT or TensorRT-RTX engine."""

    backend = "tensorrt"

    def __init__(self, path: Path, cuda_graph: bool = False, device_loop: bool = True):
        self.path = Path(path)
        self.sidecar = read_sidecar(self.path, ENGINE)  # format, checksum, the engine's size and hash
        self.flavour = import_flavour(self.sidecar["flavour"])
        check_compatible(self.path, self.sidecar, device_compute_capability(), self.flavour)
        self.metadata = sidecar_metadata(self.sidecar, self.path.name)
        self.schedule = self.metadata.schedule
        self.image_shape = self.metadata.image_shape
        self.profile = self.sidecar["profile"]
        trt = self.flavour.trt

        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        serialized = self.path.read_bytes()
        check_engine_validity(self._runtime, serialized, self.path.name)
        self._engine = self._runtime.deserialize_cuda_engine(serialized)
        if self._engine is None:
            raise UserError(f"{self.flavour.name} could not deserialize {self.path.name}: the file is corrupt or "
                            "was built for another GPU or version; rebuild with `export-engine --targets current`")
        check_engine_io(self._engine, trt, np.dtype(self.metadata.input_dtype), self.path.name)
        self.cuda_graph = cuda_graph
        self._runtime_config = self._rtx_runtime_config(trt) if self.flavour.is_rtx else None
        self._context = self._new_context()
        self._contexts: dict[int, object] = {}  # with cuda_graph: one context per batch size (_set_batch)

        rt = cudart()
        self.stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self.io_dtype = np.dtype(self.metadata.input_dtype)  # what the engine reads and writes (fp16 or fp32)
        per_image = int(np.prod(self.image_shape))
        max_n = int(self.profile["max"])
        # Allocated once for the largest batch; tensor addresses never change afterwards.
        self.x_device = DeviceBuffer(max_n * per_image * self.io_dtype.itemsize)
        # One row of timesteps per sampler step: a captured loop points step i at row i.  Rows are
        # 256-byte aligned, as setTensorAddress requires of every address.
        self.max_steps = self.schedule.num_train_timesteps
        self.t_device = DeviceBuffer(self.max_steps * _row_bytes(max_n))
        self.eps_device = DeviceBuffer(max_n * per_image * self.io_dtype.itemsize)
        # The one address the engine reads t from, for direct calls and every step of the loop: a step copies its
        # row of the table here on the stream (a memcpy node in a captured graph).  TensorRT's tensor addresses
        # are bound once and never change, so a captured graph holds no set_tensor_address between enqueues.
        self.t_call = DeviceBuffer(max_n * 8)
        self._t_table = None                   # the table now on the device
        self._set_addresses(self.t_call.ptr)
        self._batch = None
        self._loop = None
        self._loop_wanted = device_loop  # False: sample from the host (tests of the NumPy path)

    @property
    def device_loop(self):
        """The GPU sampling loop over this engine (built on first use: it compiles the kernel), or None."""
        if self._loop is None and self._loop_wanted:
            from ddpmrt.engine.gpu.device_loop import DeviceLoop

            self._loop = DeviceLoop(self, cuda_graph=self.cuda_graph, max_steps=self.max_steps)
        return self._loop

    def _rtx_runtime_config(self, trt):
        """TensorRT-RTX's runtime configuration, kept alive with the contexts made from it.

        It compiles kernels for this GPU just in time; its runtime cache (runtime_cache_path) keeps them across
        loads.  With CUDA graphs, dynamic-shape kernels are specialized EAGERly: LAZY would bake the generic
        fallback kernels into a captured graph.  Its own graph strategy stays DISABLED (the default): the device
        loop captures the whole loop."""
        runtime_config = self._engine.create_runtime_config()
        if self.cuda_graph and hasattr(trt, "DynamicShapesKernelSpecializationStrategy"):
            runtime_config.dynamic_shapes_kernel_specialization_strategy = trt.DynamicShapesKernelSpecializationStrategy.EAGER
        self._runtime_cache = None
        if hasattr(runtime_config, "create_runtime_cache"):
            self._runtime_cache = runtime_config.create_runtime_cache()
            cached = runtime_cache_path(self.sidecar)
            if cached.is_file():
                with contextlib.suppress(Exception):  # a cache of another version: compiled again, and replaced
                    self._runtime_cache.deserialize(cached.read_bytes())
            runtime_config.set_runtime_cache(self._runtime_cache)
        return runtime_config

    def _new_context(self):
        context = self._engine.create_execution_context(self._runtime_config) if self._runtime_config is not None \
            else self._engine.create_execution_context()
        if context is None:
            raise UserError(f"cannot create an execution context for {self.path.name} (out of GPU memory?)")
        return context

    def _set_addresses(self, t_ptr: int, context=None) -> None:
        context = context or self._context
        for name, ptr in (("x", self.x_device.ptr), ("t", t_ptr), ("eps", self.eps_device.ptr)):
            if not context.set_tensor_address(name, ptr):
                raise CudaError(f"set_tensor_address({name}) failed")

    def check_batch(self, n: int) -> None:
        check_batch(self.sidecar, n, self.path.name)

    def _set_batch(self, n: int) -> None:
        self.check_batch(n)
        if n == self._batch:
            return
        if self.cuda_graph:
            # A graph captured at one shape replays the context's state at that shape: TensorRT documents capture
            # only after an enqueue at the current shape, so each batch size keeps a context of its own whose
            # shape never changes (the first context serves the first batch size).
            if n not in self._contexts:
                context = self._context if not self._contexts else self._new_context()
                self._set_addresses(self.t_call.ptr, context)
                self._set_input_shape(context, n)
                self._contexts[n] = context
            self._context = self._contexts[n]
        else:
            self._set_input_shape(self._context, n)
        self._batch = n

    def _set_input_shape(self, context, n: int) -> None:
        if not (context.set_input_shape("x", (n, *self.image_shape)) and context.set_input_shape("t", (n,))):
            raise CudaError(f"set_input_shape for batch {n} failed")

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self.stream):
            raise CudaError("execute_async_v3 failed")

    # -- the network interface of engine/gpu/device_loop.py ------------------------------------------

    def stream_handle(self) -> int:
        return int(self.stream)

    def prepare(self, n: int, timesteps: np.ndarray) -> None:
        """Set batch n and copy the (steps, n) timestep table to the device, on our stream."""
        self._set_batch(n)
        table = np.zeros((len(timesteps), _row_bytes(n) // 8), np.int64)
        table[:, :n] = np.asarray(timesteps, np.int64)[:, None]
        if self._t_table is None or not np.array_equal(self._t_table, table):
            self.t_device.copy_from_host(table, self.stream)
            self._t_table = table

    def input_ptr(self, n: int) -> int:
        return self.x_device.ptr

    def forward(self, n: int, step: int) -> int:
        """Enqueue the engine at timesteps[step]: row `step` of the table copied to t's fixed address, then the
        engine; returns where ε is."""
        rt = cudart()
        check(rt.cudaMemcpyAsync(self.t_call.ptr, self.t_device.ptr + step * _row_bytes(n), n * 8,
                                 rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.stream), "cudaMemcpyAsync D2D")
        self._execute()
        return self.eps_device.ptr

    def capture(self, record) -> _TensorRTGraph:
        """Record `record()` (enqueues on our stream) into a CUDA graph; returns its launcher.

        The collector is paused for the capture (cuda_runtime.collector_paused).  If `record()` fails, the
        capture is still ended and its graph destroyed, and the error raised is record()'s own, not the
        end-capture error that follows from it."""
        rt = cudart()
        capturable = getattr(self._context, "is_stream_capturable", None)
        if capturable is not None and not capturable(self.stream):
            warnings.warn(f"{self.flavour.name} cannot capture this engine's work on its stream here; the loop runs "
                          "eagerly at this batch size (no CUDA graph)", stacklevel=3)
            return None
        with collector_paused():
            check(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
                  "cudaStreamBeginCapture")
            try:
                record()
            except BaseException:
                _err, graph = rt.cudaStreamEndCapture(self.stream)  # ends the capture; its status follows record()'s
                if graph is not None and int(graph):
                    rt.cudaGraphDestroy(graph)
                raise
            graph = check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        try:
            graph_exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            shape = graph_shape_or_none(graph)
        finally:
            check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")  # the executable graph keeps what it needs
        return _TensorRTGraph(graph_exec, self.stream, shape)

    # -- NumPy in, NumPy out -----------------------------------------------------------------------

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        x, t = model_inputs(x, t, self.image_shape, self.schedule.num_train_timesteps)
        n = len(x)
        self._set_batch(n)
        x_host = np.ascontiguousarray(x, dtype=self.io_dtype)
        t_host = np.ascontiguousarray(t, dtype=np.int64)
        eps_host = np.empty_like(x_host)
        self.x_device.copy_from_host(x_host, self.stream)
        self.t_call.copy_from_host(t_host, self.stream)
        self._execute()
        self.eps_device.copy_to_host(eps_host, self.stream)
        check(cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return eps_host.astype(np.float32)

    def close(self) -> None:
        """Free the loop's graphs and buffers, then the engine's buffers and stream; keep the kernels TensorRT-RTX
        compiled (its runtime cache) for the next load."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        if getattr(self, "_runtime_cache", None) is not None:
            with contextlib.suppress(Exception):  # a cache is an optimization: never fail a close for it
                path = runtime_cache_path(self.sidecar)
                with atomic_write(path) as tmp:
                    tmp.write_bytes(bytes(self._runtime_cache.serialize()))
            self._runtime_cache = None
        for buffer in (self.x_device, self.t_device, self.t_call, self.eps_device):
            buffer.free()
        if self.stream is not None:
            check(cudart().cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None
