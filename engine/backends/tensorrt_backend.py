"""The TensorRT backend: a serialized engine (TensorRT or TensorRT-RTX) run with cuda-python.

Loading checks, in order and before deserializing: the sidecar (model.plan.json), the engine
file's size, the flavour and its version, a visible GPU, and that the GPU's compute capability
is among the engine's targets.  Each failure is one line naming the fix.

Running: x, a table of timesteps (one 256-byte aligned row per sampler step) and eps live in
device buffers allocated once for the profile's largest batch, on one non-blocking stream.

Sampling (`Sampler.sample` on this model) runs engine/device_loop.py: x, ε and the network
input stay on the device, the fused kernel does each update, and `cuda_graph=True` captures
the whole loop (every network call and update) as one CUDA graph per batch and step count.
TensorRT needs one ordinary `execute_async_v3` at a shape before it is captured: the loop's
first run at a key is that run.  TensorRT-RTX's own graph strategy stays disabled, since the
loop captures the enqueue itself.

Called directly (`model(x, t)` on NumPy arrays), the engine copies x and t in and ε out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ddpmrt.engine.checks import model_inputs
from ddpmrt.engine.cuda_runtime import CudaError, DeviceBuffer, check, cudart, describe_graph, device_compute_capability
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.integrity import json_seal_matches, sha256_file
from ddpmrt.engine.metadata import ModelMetadata
from ddpmrt.engine.tensorrt_flavour import import_flavour

RTX_DEFAULT_TARGETS = ("sm80", "sm86", "sm89", "sm120")


def read_sidecar(plan: Path) -> dict:
    sidecar = plan.with_name(plan.name + ".json")
    if not sidecar.is_file():
        raise UserError(f"{plan.name} has no sidecar {sidecar.name}; build engines with `export-engine`")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        _ = data["flavour"], data["flavour_version"], data["profile"], data["metadata"], data["engine_bytes"]
        _ = data["engine_sha256"]
        intact = json_seal_matches(data)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        intact = False
    if not intact:  # unreadable, incomplete, edited, or written before sidecars carried a checksum
        raise UserError(f"{sidecar.name} is damaged; rebuild the engine with `export-engine --force`") from None
    return data


def check_compatible(plan: Path, sidecar: dict, compute_capability: tuple[int, int] | None, flavour) -> None:
    """Everything that can be known about an engine before deserializing it."""
    if plan.stat().st_size != sidecar["engine_bytes"]:
        raise UserError(f"{plan.name} is {plan.stat().st_size} bytes but was built as {sidecar['engine_bytes']}: "
                        "the file is truncated or replaced; rebuild with `export-engine --force`")
    if sha256_file(plan) != sidecar["engine_sha256"]:
        raise UserError(f"{plan.name} is damaged: its bytes do not match the checksum in {plan.name}.json; "
                        "rebuild with `export-engine --force`")
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


def check_batch_in_profile(n: int, profile: dict, name: str) -> None:
    if not profile["min"] <= n <= profile["max"]:
        raise UserError(f"batch {n} is outside {name}'s profile ({profile['min']} to {profile['max']}); "
                        f"sample with a batch in that range or rebuild with `export-engine --batch MIN:OPT:MAX`")


def _row_bytes(n: int) -> int:
    """Bytes of one timestep row of batch n, rounded up to TensorRT's 256-byte address alignment."""
    return -(-n * 8 // 256) * 256


class TensorRTModel:
    """eps = model(x_t, t) through a TensorRT or TensorRT-RTX engine."""

    backend = "tensorrt"

    def __init__(self, path: Path, cuda_graph: bool = False, device_loop: bool = True):
        self.path = Path(path)
        self.sidecar = read_sidecar(self.path)
        self.flavour = import_flavour(self.sidecar["flavour"])
        check_compatible(self.path, self.sidecar, device_compute_capability(), self.flavour)
        self.metadata = ModelMetadata.from_strings(self.sidecar["metadata"], self.path.name)
        self.schedule = self.metadata.schedule
        self.image_shape = self.metadata.image_shape
        self.profile = self.sidecar["profile"]
        trt = self.flavour.trt

        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise UserError(f"{self.flavour.name} could not deserialize {self.path.name}: the file is corrupt or "
                            "was built for another GPU or version; rebuild with `export-engine --targets current`")
        if self.flavour.is_rtx:
            # TensorRT-RTX compiles its kernels for this GPU here (just in time).  Its own graph
            # strategy stays DISABLED (the default): the device loop captures the whole loop.
            runtime_config = self._engine.create_runtime_config()
            self._context = self._engine.create_execution_context(runtime_config)
        else:
            self._context = self._engine.create_execution_context()
        if self._context is None:
            raise UserError(f"cannot create an execution context for {self.path.name} (out of GPU memory?)")

        rt = cudart()
        self.stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self.dtype = self.metadata.input_dtype
        per_image = int(np.prod(self.image_shape))
        max_n = int(self.profile["max"])
        # Allocated once for the largest batch; tensor addresses never change afterwards.
        self.x_device = DeviceBuffer(max_n * per_image * np.dtype(self.dtype).itemsize)
        # One row of timesteps per sampler step: a captured loop points step i at row i.  Rows are
        # 256-byte aligned, as setTensorAddress requires of every address.
        self.max_steps = self.schedule.num_train_timesteps
        self.t_device = DeviceBuffer(self.max_steps * _row_bytes(max_n))
        self.eps_device = DeviceBuffer(max_n * per_image * np.dtype(self.dtype).itemsize)
        self.t_call = DeviceBuffer(max_n * 8)  # t of a direct call, so that it never clobbers the table
        self._t_table = None                   # the table now on the device
        self._set_addresses(self.t_call.ptr)
        self._batch = None
        self.input_dtype = np.dtype(self.dtype)
        self.eps_dtype = "fp16" if self.input_dtype == np.float16 else "fp32"
        self.cuda_graph = cuda_graph
        self._device_loop = None if device_loop else False
        self._graph_execs: list = []
        self.last_graph_shape = None  # cuda_runtime.graph_shape of the last capture

    @property
    def device_loop(self):
        """The GPU sampling loop over this engine (built on first use: it compiles the kernel)."""
        if self._device_loop is None:
            from ddpmrt.engine.device_loop import DeviceLoop

            self._device_loop = DeviceLoop(self, cuda_graph=self.cuda_graph, max_steps=self.max_steps)
        return self._device_loop or None

    def _set_addresses(self, t_ptr: int) -> None:
        for name, ptr in (("x", self.x_device.ptr), ("t", t_ptr), ("eps", self.eps_device.ptr)):
            if not self._context.set_tensor_address(name, ptr):
                raise CudaError(f"set_tensor_address({name}) failed")

    def check_batch(self, n: int) -> None:
        check_batch_in_profile(n, self.profile, self.path.name)

    def _set_batch(self, n: int) -> None:
        self.check_batch(n)
        if n != self._batch:
            if not (self._context.set_input_shape("x", (n, *self.image_shape)) and self._context.set_input_shape("t", (n,))):
                raise CudaError(f"set_input_shape for batch {n} failed")
            self._batch = n

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self.stream):
            raise CudaError("execute_async_v3 failed")

    # -- the network interface of engine/device_loop.py ------------------------------------------

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
        """Enqueue the engine at timesteps[step] (row `step` of the table); returns where ε is."""
        self._set_addresses(self.t_device.ptr + step * _row_bytes(n))
        self._execute()
        return self.eps_device.ptr

    def capture(self, record) -> object:
        """Record `record()` (enqueues on our stream) into a CUDA graph; returns its launcher."""
        rt = cudart()
        check(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture")
        try:
            record()
        finally:
            graph = check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        graph_exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        self.last_graph_shape = describe_graph(graph)
        check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")  # the executable graph keeps what it needs
        self._graph_execs.append(graph_exec)
        return lambda: check(rt.cudaGraphLaunch(graph_exec, self.stream), "cudaGraphLaunch")

    # -- NumPy in, NumPy out -----------------------------------------------------------------------

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        x, t = model_inputs(x, t, self.image_shape, self.schedule.num_train_timesteps)
        n = len(x)
        self._set_batch(n)
        self._set_addresses(self.t_call.ptr)
        x_host = np.ascontiguousarray(x, dtype=self.dtype)
        t_host = np.ascontiguousarray(t, dtype=np.int64)
        eps_host = np.empty_like(x_host)
        self.x_device.copy_from_host(x_host, self.stream)
        self.t_call.copy_from_host(t_host, self.stream)
        self._execute()
        self.eps_device.copy_to_host(eps_host, self.stream)
        check(cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return eps_host.astype(np.float32)

    def close(self) -> None:
        for graph_exec in self._graph_execs:
            check(cudart().cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
        self._graph_execs = []
        for buffer in (self.x_device, self.t_device, self.t_call, self.eps_device):
            buffer.free()
        if self.stream is not None:
            check(cudart().cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None
