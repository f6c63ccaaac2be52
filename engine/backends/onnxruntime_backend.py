"""The ONNX Runtime backend: the embedded default on a CPU, CUDA with onnxruntime-gpu.

It computes in the file's precision: fp32, fp16, or int8 for a file that `export-onnx --precision int8`
calibrated (its Q/DQ pairs run as ONNX Runtime's int8 kernels).

Runs with I/O binding: the output buffer of each batch size is allocated once and reused
every step, so a sampling loop does no per-step allocation inside ONNX Runtime.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ddpmrt.engine.artifacts.integrity import read_onnx_bytes
from ddpmrt.engine.artifacts.metadata import ModelMetadata
from ddpmrt.engine.backends.onnx_base import OnnxFileModel
from ddpmrt.engine.errors import UserError, first_line, install_hint, is_out_of_memory, out_of_memory


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(f"the onnxruntime backend needs ONNX Runtime: {install_hint('onnxruntime')} "
                        f"(for CUDA: {install_hint('gpu')})") from None
    return ort


def cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _session(ort, model_bytes: bytes, options, providers: list[str], name: str):
    """An InferenceSession, with ONNX Runtime's failures told apart: a damaged or foreign file, an
    execution provider that failed, memory that ran out.  Anything else is a bug and propagates."""
    errors = ort.capi.onnxruntime_pybind11_state
    try:
        return ort.InferenceSession(model_bytes, options, providers=providers)
    except (errors.InvalidProtobuf, errors.InvalidGraph, errors.InvalidArgument, errors.NoModel,
            errors.NotImplemented) as exc:  # what ONNX Runtime raises for bytes that are not a model it can run
        raise UserError(f"cannot load {name} with ONNX Runtime ({first_line(exc)}); the file is truncated or not "
                        "an ONNX model: re-export it") from None
    except (errors.EPFail, errors.Fail, errors.RuntimeException, MemoryError) as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(f"ONNX Runtime loaded {name}") from None
        if isinstance(exc, errors.EPFail) or "provider" in str(exc).lower():
            raise UserError(f"ONNX Runtime's {providers[0]} failed to load {name} ({first_line(exc)}); "
                            "check its installation (onnxruntime-gpu, CUDA and cuDNN), or use --device cpu") from None
        if isinstance(exc, errors.Fail):  # a graph ONNX Runtime cannot load: a damaged or foreign file
            raise UserError(f"cannot load {name} with ONNX Runtime ({first_line(exc)}); the file is damaged or not a "
                            "model ONNX Runtime runs: re-export it") from None
        raise


class OnnxRuntimeModel(OnnxFileModel):
    """eps = model(x_t, t) on NumPy arrays, through an ONNX Runtime session."""

    backend = "onnxruntime"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None,
                 fallback_metadata: ModelMetadata | None = None, precision: str = "auto"):
        ort = _import_ort()
        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Without --threads, OMP_NUM_THREADS where set, as PyTorch and OpenMP programs read it (ONNX Runtime's own
        # default is every core, whose spinning pool runs 1.8x slower when two processes share the cores).
        threads = threads or _omp_threads()
        if threads:
            options.intra_op_num_threads = int(threads)
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(f"--device cuda needs onnxruntime-gpu ({install_hint('gpu')}); "
                                "or use --device cpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        model_bytes, sealed = read_onnx_bytes(self.path)  # a damaged ddpmrt file is an error, not wrong samples
        self.session = _session(ort, model_bytes, options, providers, self.path.name)
        self._read_metadata(self.session.get_modelmeta().custom_metadata_map, sealed, fallback_metadata)
        self.device = device
        inputs = {i.name: i for i in self.session.get_inputs()}
        batch = inputs["x"].shape[0] if "x" in inputs else None
        self._check_signature(list(inputs), [o.name for o in self.session.get_outputs()],
                              "x" in inputs and inputs["x"].type == "tensor(float16)", batch if isinstance(batch, int) else None)
        # What it computes in: int8 for a calibrated file (export-onnx --precision int8), else the file's own type.
        self.precision = self.metadata.compute_precision(precision, self.path.name) or self.metadata.precision
        self._binding = self.session.io_binding()
        self._outputs: dict[int, object] = {}  # batch size -> OrtValue reused every call
        # The binding and output buffers are shared state: one call at a time (callers may use threads).
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        ort = _import_ort()
        x, t = self._inputs(x, t)
        with self._lock:
            return self._run(ort, x, t)

    def _run(self, ort, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        n = len(x)
        self._binding.bind_cpu_input("x", x)
        self._binding.bind_cpu_input("t", t)
        out = self._outputs.get(n)
        if out is None:
            device = "cuda" if self.device == "cuda" else "cpu"
            out = ort.OrtValue.ortvalue_from_shape_and_type(x.shape, self.metadata.input_dtype, device, 0)
            self._outputs[n] = out
        self._binding.bind_ortvalue_output("eps", out)
        self.session.run_with_iobinding(self._binding)
        return out.numpy().astype(np.float32, copy=True)


def _omp_threads() -> int | None:
    """OMP_NUM_THREADS as a positive integer, else None."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None
