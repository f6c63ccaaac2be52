"""The OpenVINO backend: ddpmrt's ONNX files on Intel's CPU runtime, in bf16 where bf16 is faster.

OpenVINO reads the ONNX file directly (no conversion step, no torch) and computes in the
precision of its `INFERENCE_PRECISION_HINT`: ddpmrt sets it from `precision` (auto: bf16 on a CPU
with AMX-BF16 or AMD's AVX512-BF16, fp32 elsewhere, engine/cpu.py), so `fp32` means fp32 whatever
OpenVINO's own default is (it picks bf16 on Intel's AVX512-BF16 without AMX too, where bf16 measured
slower than f32).  Each batch size runs a model compiled for that static shape (`_compiled_for`).
Where OpenVINO has no bf16 kernels for the CPU it computes f32 whatever the hint; `precision` is
then read back as fp32, with a note.  An int8 file (`export-onnx --precision int8`) runs its
quantized layers in int8 and the rest in f32.  The file's bytes are verified against their seal
before OpenVINO sees them, and the ddpmrt metadata comes from the model OpenVINO read (its rt_info keeps the ONNX
metadata_props), so a damaged or foreign file is one line, as with ONNX Runtime.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ddpmrt.engine.artifacts.integrity import read_onnx_bytes
from ddpmrt.engine.artifacts.metadata import ModelMetadata
from ddpmrt.engine.backends.onnx_base import OnnxFileModel
from ddpmrt.engine.cpu import resolve_cpu_precision
from ddpmrt.engine.errors import UserError, first_line, install_hint, is_out_of_memory, out_of_memory

HINTS = {"fp32": "f32", "bf16": "bf16"}
STATIC_BATCHES_KEPT = 4  # batch sizes kept compiled at once (OpenVinoModel._compiled_for)


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise UserError(f"the openvino backend needs OpenVINO: {install_hint('openvino')} (or use --backend "
                        "onnxruntime)") from None
    return openvino


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _metadata_props(model) -> dict[str, str]:
    """The ONNX file's metadata_props, as OpenVINO keeps them in the model's rt_info."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    return {key: value.astype(str) for key, value in info["framework"].items()}


def _with_batch(model, n: int):
    """A copy of `model` with the leading (batch) dimension of every input fixed to n."""
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_static and shape.rank.get_length() > 0:
            shape[0] = n
        shapes[port.get_any_name()] = shape
    model = model.clone()
    model.reshape(shapes)
    return model


class OpenVinoModel(OnnxFileModel):
    """eps = model(x_t, t) on NumPy arrays, through an OpenVINO CPU compiled model."""

    backend = "openvino"

    def __init__(self, path: Path, threads: int | None = None, precision: str = "auto",
                 fallback_metadata: ModelMetadata | None = None):
        ov = import_openvino()
        self.path = Path(path)
        # The precision of the layers computed in float; a bad precision fails before the file is read.
        float_precision = "fp32" if precision == "int8" else resolve_cpu_precision(precision)
        self.device = "cpu"
        data, sealed = read_onnx_bytes(self.path)  # a damaged ddpmrt file is an error, not wrong samples
        core = ov.Core()
        try:
            model = core.read_model(data)
        except RuntimeError as exc:  # OpenVINO's one exception type: bytes its ONNX frontend cannot read
            if is_out_of_memory(exc):
                raise out_of_memory(f"OpenVINO read {self.path.name}") from None
            raise UserError(f"cannot load {self.path.name} with OpenVINO ({first_line(exc, 200)}); the file is "
                            "truncated or not an ONNX model: re-export it") from None
        self._read_metadata(_metadata_props(model), sealed, fallback_metadata)
        inputs = {port.get_any_name(): port for port in model.inputs}
        batch = inputs["x"].get_partial_shape()[0] if "x" in inputs else None
        self._check_signature(list(inputs), [port.get_any_name() for port in model.outputs],
                              "x" in inputs and inputs["x"].get_element_type().get_type_name() == "f16",
                              batch.get_length() if batch is not None and batch.is_static else None)
        # An int8 file (export-onnx --precision int8): its Q/DQ pairs become OpenVINO's int8 kernels, and the
        # layers kept in float run in f32.
        int8 = self.metadata.compute_precision(precision, self.path.name)
        if int8:
            float_precision = "fp32"
        self._core, self._model = core, model
        self._config = {"INFERENCE_PRECISION_HINT": HINTS[float_precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._lock = threading.Lock()  # one infer request per batch size: one call at a time (callers may use threads)
        self._by_batch: OrderedDict[int | None, tuple] = OrderedDict()  # batch -> (compiled model, infer request)
        self.static_shapes = True  # one compile per batch size (_compiled_for); serve_traffic turns it off
        # Compiled for batch 1 (or the file's own batch) now, so that a bad file fails at load and the
        # precision is known; other batch sizes compile on their first call.
        self.compiled = self._compiled_for(self.static_batch or 1)[0]
        # What OpenVINO computes in, read back: on a CPU its bf16 kernels cannot run on, it keeps f32
        # whatever the hint, and the model says so rather than claim bf16.
        computed = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if float_precision == "bf16" and computed != "bf16":
            warnings.warn("OpenVINO computes in f32 on this CPU (it has no bf16 kernels for it); precision is fp32",
                          stacklevel=2)
            float_precision = "fp32"
        self.precision = int8 or float_precision

    def _compiled_for(self, n: int) -> tuple:
        """The compiled model and infer request for batch n, compiled for that static shape on first use.

        ddpmrt's files have a dynamic batch, and OpenVINO's static-shape kernels are faster than its
        dynamic-shape ones (benchmarks/results/cpu-precision-epyc-zen5/static-batch.json, and
        cpu-cifar10-ddim20-epyc-zen5/ against OpenVINO's default on the same file).
        A compile takes 1-2 s, and each compiled batch holds its own copy of the weights, so the last
        STATIC_BATCHES_KEPT are kept (a sampler uses one, two with a remainder batch).  Where batch sizes
        vary from call to call (a server's batches, `serve_traffic()`), `static_shapes = False` runs one
        dynamic-batch compile instead, so that no request waits for a compile."""
        reshape = self.static_shapes and self.static_batch is None
        key = n if reshape or self.static_batch is not None else None  # None: the dynamic-batch compile
        if key in self._by_batch:
            self._by_batch.move_to_end(key)
            return self._by_batch[key]
        try:
            model = _with_batch(self._model, n) if reshape else self._model
            compiled = self._core.compile_model(model, "CPU", self._config)
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(f"OpenVINO compiled {self.path.name} for batch {n}") from None
            raise UserError(f"OpenVINO cannot compile {self.path.name} for the CPU ({first_line(exc, 200)}); "
                            "re-export it, or use --backend onnxruntime") from None
        self._by_batch[key] = (compiled, compiled.create_infer_request())
        while len(self._by_batch) > STATIC_BATCHES_KEPT:
            self._by_batch.popitem(last=False)
        return self._by_batch[key]

    def serve_traffic(self) -> None:
        # A server's batch sizes vary with the traffic, and a compile per new size would stall requests.
        self.static_shapes = False

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        x, t = self._inputs(x, t)
        with self._lock:
            compiled, request = self._compiled_for(len(x))
            result = request.infer({"x": x, "t": t})
            return np.array(result[compiled.output("eps")], dtype=np.float32)
