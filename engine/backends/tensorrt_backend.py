"""The TensorRT backend: a serialized engine (TensorRT or TensorRT-RTX) run with cuda-python.

Loading checks, in order and before deserializing: the sidecar (model.plan.json), the engine
file's size, the flavour and its version, a visible GPU, and that the GPU's compute capability
is among the engine's targets.  Each failure is one line naming the fix.

Running: x, t and eps live in device buffers allocated once for the profile's largest batch,
with fixed tensor addresses; a call copies x and t in, runs `execute_async_v3` on a
non-blocking stream and copies eps out.  `run_on_device` skips both copies so that a sampling
loop on the GPU can keep x on the device.

`cuda_graph=True` replays the network as a CUDA graph: TensorRT-RTX captures it itself
(CudaGraphStrategy.WHOLE_GRAPH_CAPTURE); with full TensorRT this backend captures
`execute_async_v3` once per batch size, after one ordinary run at that shape (TensorRT needs
it to settle its shape-dependent state), and replays it with cudaGraphLaunch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ddpmrt.engine.cuda_runtime import CudaError, DeviceBuffer, check, cudart, device_compute_capability
from ddpmrt.engine.errors import UserError
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
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise UserError(f"{sidecar.name} is damaged; rebuild the engine with `export-engine --force`") from None
    return data


def check_compatible(plan: Path, sidecar: dict, compute_capability: tuple[int, int] | None, flavour) -> None:
    """Everything that can be known about an engine before deserializing it."""
    if plan.stat().st_size != sidecar["engine_bytes"]:
        raise UserError(f"{plan.name} is {plan.stat().st_size} bytes but was built as {sidecar['engine_bytes']}: "
                        "the file is truncated or replaced; rebuild with `export-engine --force`")
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


class TensorRTModel:
    """eps = model(x_t, t) through a TensorRT or TensorRT-RTX engine."""

    backend = "tensorrt"

    def __init__(self, path: Path, cuda_graph: bool = False):
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
            # TensorRT-RTX compiles its kernels for this GPU here (just in time).
            runtime_config = self._engine.create_runtime_config()
            if cuda_graph:
                runtime_config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
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
        self.t_device = DeviceBuffer(max_n * 8)
        self.eps_device = DeviceBuffer(max_n * per_image * np.dtype(self.dtype).itemsize)
        for name, buffer in (("x", self.x_device), ("t", self.t_device), ("eps", self.eps_device)):
            if not self._context.set_tensor_address(name, buffer.ptr):
                raise CudaError(f"set_tensor_address({name}) failed")
        self._batch = None
        # Full TensorRT: graphs captured by us, one per batch size (addresses never change).
        self._capture_graphs = cuda_graph and not self.flavour.is_rtx
        self._graphs: dict[int, object] = {}
        self._runs_at_shape = 0

    def check_batch(self, n: int) -> None:
        check_batch_in_profile(n, self.profile, self.path.name)

    def _set_batch(self, n: int) -> None:
        self.check_batch(n)
        if n != self._batch:
            if not (self._context.set_input_shape("x", (n, *self.image_shape)) and self._context.set_input_shape("t", (n,))):
                raise CudaError(f"set_input_shape for batch {n} failed")
            self._batch = n
            self._runs_at_shape = 0

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self.stream):
            raise CudaError("execute_async_v3 failed")

    def _capture(self) -> object:
        rt = cudart()
        check(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture")
        try:
            self._execute()
        finally:
            graph = check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        return check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def run_on_device(self, n: int) -> None:
        """Run the network on the device buffers (x_device, t_device -> eps_device), asynchronously."""
        self._set_batch(n)
        if not self._capture_graphs or self._runs_at_shape == 0:
            self._execute()  # the first run at a shape is always an ordinary one
        else:
            if n not in self._graphs:
                self._graphs[n] = self._capture()
            check(cudart().cudaGraphLaunch(self._graphs[n], self.stream), "cudaGraphLaunch")
        self._runs_at_shape += 1

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        n = len(x)
        self._set_batch(n)
        x_host = np.ascontiguousarray(x, dtype=self.dtype)
        t_host = np.ascontiguousarray(t, dtype=np.int64)
        eps_host = np.empty_like(x_host)
        self.x_device.copy_from_host(x_host, self.stream)
        self.t_device.copy_from_host(t_host, self.stream)
        self.run_on_device(n)
        self.eps_device.copy_to_host(eps_host, self.stream)
        check(cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return eps_host.astype(np.float32)

    def close(self) -> None:
        for buffer in (self.x_device, self.t_device, self.eps_device):
            buffer.free()
        if self.stream is not None:
            check(cudart().cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None
