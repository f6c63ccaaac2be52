"""`ddpmrt export-onnx --precision int8`: static INT8 quantization calibrated on the sampler's own trajectory.

    quantize_onnx(fp32.onnx, out-int8.onnx)  ->  a QDQ ONNX model that OpenVINO and ONNX Runtime run in int8

A diffusion U-Net sees very different activations at t = 999 (almost pure noise) and t = 0 (almost an
image), so ranges calibrated on one timestep or on random inputs clip the others.  As Q-Diffusion and
PTQ4DM do, the calibration set is the inputs the network really gets while sampling: (x_t, t) at
every step of DDIM trajectories run by the fp32 model itself.

ONNX Runtime's quantizer does the rest (`quant_pre_process`, then `quantize_static`, MinMax ranges):
QDQ format, per-channel int8 weights and asymmetric uint8 activations, the form OpenVINO's int8
convolutions take (with int8 activations OpenVINO's ε was off by 0.65 of its range; with uint8,
0.07, as ONNX Runtime's).  The weights use 7 of their 8 bits (`reduce_range`): a CPU without VNNI
(AVX2, or AVX-512 before VNNI) multiplies uint8 by int8 with `vpmaddubsw`, which sums pairs into int16
and saturates once 255 x 127 x 2 overflows it; the file is the same on every CPU, so it must be exact on
those too (full-range weights moved DDIM-10 samples by 0.073 on OpenVINO limited to AVX2 against 0.025
with VNNI; 7-bit weights, 0.030 on both).  Only Conv, Gemm and MatMul are quantized, so attention's softmax and
every GroupNorm stay in float, and so do the first and last convolutions: the image's own scale
in, ε out.  What it costs and gains was measured before it was offered (benchmarks/cpu_int8.py,
benchmarks/results/cpu-int8-*/): quality against fp32 and speed, on digits and shapes.

The file keeps the fp32 export's ddpmrt metadata plus `ddpmrt.quantization` (how it was calibrated),
and is sealed like every ONNX file ddpmrt writes.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpmrt.engine import DDIMSampler, load_model
from ddpmrt.engine.artifacts.integrity import ONNX_SEAL_KEY, PLACEHOLDER, seal_onnx_file
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.artifacts.metadata import ModelMetadata
from ddpmrt.engine.errors import UserError, install_hint

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
VALIDATION_TIMESTEPS = (0, 250, 500, 750, 999)


@dataclass(frozen=True)
class Calibration:
    """Which trajectories the activation ranges come from: DDIM-`steps` (clipped x̂₀) from `images` seeds."""

    images: int = 64
    steps: int = 10
    batch: int = 16
    seed: int = 1000

    def check(self, num_train_timesteps: int) -> None:
        if not 1 <= self.images <= 4096:
            raise UserError(f"--calibration-images {self.images}: use 1 to 4096 (default 64)")
        if not 1 <= self.steps <= num_train_timesteps:
            raise UserError(f"--calibration-steps {self.steps}: use 1 to {num_train_timesteps} (default 10)")


@dataclass
class QuantizedModel:
    path: Path
    calibration_inputs: int
    quantized_nodes: int
    relative_error: float   # max |ε_int8 − ε_fp32| over max |ε_fp32|, at VALIDATION_TIMESTEPS
    seconds: float


class _Recorder:
    """The fp32 model, remembering every (x_t, t) the sampler gives it."""

    def __init__(self, model):
        self.model, self.inputs = model, []
        self.schedule, self.image_shape = model.schedule, model.image_shape

    def check_batch(self, n: int) -> None:
        self.model.check_batch(n)

    def __call__(self, x, t):
        self.inputs.append({"x": np.array(x, np.float32), "t": np.array(t, np.int64)})
        return self.model(x, t)


def trajectory_inputs(fp32_model, calibration: Calibration) -> list[dict]:
    """(x_t, t) at every step of DDIM trajectories of the fp32 model, one dict per network call."""
    recorder = _Recorder(fp32_model)
    sampler = DDIMSampler(recorder.schedule, calibration.steps, clip_sample=1.0)
    for start in range(0, calibration.images, calibration.batch):
        n = min(calibration.batch, calibration.images - start)
        sampler.sample(recorder, (n, *recorder.image_shape), seed=calibration.seed + start, progress=False)
    return recorder.inputs


def _import_quantizer():
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise UserError(f"--precision int8 quantizes with ONNX Runtime: {install_hint('onnxruntime')}") from None
    return onnx, CalibrationDataReader, QuantFormat, QuantType, quantize_static, quant_pre_process


def quantize_onnx(fp32_path: Path, out: Path, calibration: Calibration = Calibration(),
                  metadata: ModelMetadata | None = None) -> QuantizedModel:
    """An int8 QDQ copy of the fp32 ONNX file `fp32_path`, calibrated on its own DDIM trajectories, written atomically."""
    onnx, CalibrationDataReader, QuantFormat, QuantType, quantize_static, quant_pre_process = _import_quantizer()
    start = time.perf_counter()
    fp32_model = load_model(fp32_path, backend="onnxruntime")
    metadata = metadata or fp32_model.metadata
    if metadata.precision != "fp32":
        raise UserError(f"{Path(fp32_path).name} is {metadata.precision}; int8 is calibrated from the fp32 export")
    calibration.check(metadata.schedule.num_train_timesteps)
    inputs = trajectory_inputs(fp32_model, calibration)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(inputs)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        # ONNX Runtime's recommended first step: shapes inferred and the graph optimised, so the quantizer
        # sees the graph the runtime will run.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        convs = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Conv"]
        kept_in_float = [convs[0], convs[-1]] if len(convs) >= 2 else convs
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=kept_in_float, reduce_range=True)
        model = onnx.load(str(quantized))
        quantized_nodes = sum(node.op_type == "DequantizeLinear" for node in model.graph.node)
        metadata = dataclasses.replace(metadata, quantization={
            "kind": "int8 static, QDQ, per-channel 7-bit weights, uint8 activations, MinMax",
            "calibration": f"DDIM-{calibration.steps} trajectories of {calibration.images} images "
                           f"({len(inputs)} network calls), seed {calibration.seed}",
            "kept_in_float": "first and last Conv; everything but " + ", ".join(QUANTIZED_OPS)})
        del model.metadata_props[:]  # written fresh: ddpmrt's entries, then the seal
        metadata.write_to(model)
        seal = model.metadata_props.add()
        seal.key, seal.value = ONNX_SEAL_KEY, PLACEHOLDER
        with atomic_write(Path(out)) as target:
            onnx.save(model, str(target))
            seal_onnx_file(target)
            error = _relative_error(fp32_model, target)
    return QuantizedModel(Path(out), sum(len(item["x"]) for item in inputs), quantized_nodes, error,
                          time.perf_counter() - start)


def _relative_error(fp32_model, int8_path: Path) -> float:
    """max |ε_int8 − ε_fp32| / max |ε_fp32| on one fixed batch at several timesteps (ONNX Runtime)."""
    from ddpmrt.engine.backends.onnxruntime_backend import OnnxRuntimeModel

    int8_model = OnnxRuntimeModel(int8_path, precision="int8")  # the path is atomic_write's temporary name
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, *fp32_model.image_shape)).astype(np.float32)
    worst = 0.0
    for t_value in VALIDATION_TIMESTEPS:
        t = np.full(4, min(t_value, fp32_model.schedule.num_train_timesteps - 1), np.int64)
        reference = fp32_model(x, t)
        error = np.abs(int8_model(x, t) - reference).max() / np.abs(reference).max()
        if not np.isfinite(error):
            raise UserError(f"the int8 model gives non-finite ε at t = {t_value}; calibrate on more images "
                            "(--calibration-images) or keep fp32")
        worst = max(worst, float(error))
    return worst
