"""`ddpmrt export-onnx`: a trained ε-U-Net as a self-describing ONNX model (fp32 or fp16).

    inputs  x (N, C, H, W) float32 or float16,  t (N,) int64
    output  eps (N, C, H, W), same dtype as x

The fp16 model is exported from a half-precision module, so every tensor is typed by the
exporter itself: a blind float32→float16 graph converter leaves mixed-type nodes that
TensorRT's strongly typed parser rejects.  GroupNorm statistics and the attention softmax stay
in fp32 inside the module (unet.py says why), and so they do in the graph.

`metadata_props` carries everything a runtime needs to sample (schedule, image shape,
prediction type, precision, model config, source hash, version): see MODEL_METADATA_KEYS in
ddpmrt.engine.artifacts.metadata.  Every export validates itself against PyTorch in fp32.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpmrt.engine.artifacts.integrity import ONNX_SEAL_KEY, PLACEHOLDER, seal_onnx_file, sha256_bytes
from ddpmrt.engine.artifacts.io import atomic_write, cache_dir
from ddpmrt.engine.artifacts.metadata import ModelMetadata
from ddpmrt.engine.errors import UserError, first_line, is_out_of_memory, out_of_memory
from ddpmrt.export.model.sources import EpsOnly

# Validation targets (max, mean absolute error against PyTorch fp32 on the same inputs).
TOLERANCES = {"fp32": (1e-4, 1e-5), "fp16": (2e-2, 2e-3)}
VALIDATION_TIMESTEPS = (0, 10, 250, 500, 750, 999)
ONNX_CACHE = "onnx"  # cache_dir() / ONNX_CACHE: checkpoints' exports for the OpenVINO backend (cached_export)


@dataclass
class ExportedModel:
    path: Path
    metadata: ModelMetadata
    max_abs_error: float
    mean_abs_error: float
    seconds: float


def _export(module: torch.nn.Module, example: tuple, path: Path, opset: int, dynamic_batch: bool) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = ({0: batch}, {0: batch}) if dynamic_batch else None
    # The exporter reports progress on stdout and through logging; keep the CLI's output to our lines.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, example, input_names=["x", "t"], output_names=["eps"],
                                    opset_version=opset, dynamic_shapes=shapes, dynamo=True, verbose=False,
                                    external_data=False, optimize=True)
    program.save(str(path), external_data=False)


def validate(onnx_path: Path, reference: torch.nn.Module, metadata: ModelMetadata, batch: int = 4) -> tuple[float, float]:
    """Max and mean |ε_onnx − ε_torch_fp32| with ONNX Runtime on a fixed batch over several timesteps."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *metadata.image_shape)).astype(np.float32)
    errors = []
    for t_value in VALIDATION_TIMESTEPS:
        t = np.full(batch, min(t_value, metadata.schedule.num_train_timesteps - 1), np.int64)
        eps = session.run(None, {"x": x.astype(metadata.input_dtype), "t": t})[0].astype(np.float32)
        with torch.inference_mode():
            ref = reference(torch.from_numpy(x), torch.from_numpy(t)).float().numpy()
        errors.append(np.abs(eps - ref))
    errors = np.concatenate([e.ravel() for e in errors])
    return float(errors.max()), float(errors.mean())


def export_onnx(module: torch.nn.Module, metadata: ModelMetadata, out: Path, opset: int = 18,
                batch: str | int = "dynamic", unwrap=None, check: bool = True, log=print) -> ExportedModel:
    """Export `module` (an fp32 ε-model) at metadata.precision, validate it, and write it atomically.

    `log` gets the validation line (None: keep quiet, as a library call inside load_model does)."""
    import onnx

    out = Path(out)
    start = time.perf_counter()
    reference = copy.deepcopy(module).float().eval()
    if hasattr(reference, "set_execution_form"):
        # The form whose fp16 graph keeps GroupNorm statistics and attention logits in fp32 explicitly.
        reference.set_execution_form("export")
    if unwrap is not None:
        reference = EpsOnly(reference, unwrap)
    exported = copy.deepcopy(reference)
    if metadata.precision == "fp16":
        exported = exported.half()
    dynamic = batch == "dynamic"
    n = 2 if dynamic else int(batch)
    example = (torch.randn(n, *metadata.image_shape, dtype=torch.float16 if metadata.precision == "fp16" else torch.float32),
               torch.zeros(n, dtype=torch.int64))

    with atomic_write(out) as tmp:
        try:
            _export(exported.eval(), example, tmp, opset, dynamic)
        except MemoryError:
            raise out_of_memory("exporting to ONNX") from None
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            # The exporter's failures (an operator it cannot export, a dynamic shape it cannot express) are
            # long; keep their first line.  Out of memory is its own message.
            if is_out_of_memory(exc):
                raise out_of_memory("exporting to ONNX") from None
            raise UserError(f"ONNX export failed: {first_line(exc)}") from exc
        model = onnx.load(str(tmp))
        metadata.write_to(model)
        seal = model.metadata_props.add()  # filled with the file's checksum once saved (engine/artifacts/integrity.py)
        seal.key, seal.value = ONNX_SEAL_KEY, PLACEHOLDER
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        seal_onnx_file(tmp)
        max_err = mean_err = float("nan")
        if check:
            max_err, mean_err = validate(tmp, reference, metadata, batch=4 if dynamic else n)
            max_tol, mean_tol = TOLERANCES[metadata.precision]
            line = (f"validated {out.name} ({metadata.precision}) against PyTorch fp32 with ONNX Runtime: "
                    f"max abs error {max_err:.2e}, mean {mean_err:.2e}")
            if log is not None:
                log(line)
            if not (max_err <= max_tol and mean_err <= mean_tol):
                raise UserError(f"{line}: above the {metadata.precision} limits ({max_tol:g} max, {mean_tol:g} mean); "
                                "the export is wrong, try --precision fp32 or another --opset")
    return ExportedModel(out, metadata, max_err, mean_err, time.perf_counter() - start)


def cached_export(source, opset: int = 18, force: bool = False) -> Path:
    """The fp32 ONNX export of `source` (export/model/sources.py) in ddpmrt's cache, exported on first use.

    This is how a checkpoint runs on the OpenVINO backend (`load_model`'s default on a CPU where bf16 is
    faster): the same validated export as `ddpmrt export-onnx`, made once and then read back in well under
    a second.  The file name carries a hash of everything the export depends on (the weights, the
    metadata, ddpmrt's version, the network's source file, torch's version, the opset), so a retrained
    checkpoint or an upgrade exports afresh.  The file is not read here: the backend verifies its seal as
    it loads it, and `force` exports again over a file it found damaged.  Written atomically, so two
    processes exporting at once each leave a whole file.
    """
    metadata = source.metadata
    code = Path(inspect.getsourcefile(type(source.module))).read_bytes()  # the network's definition, edits included
    key = json.dumps({"metadata": metadata.to_strings(), "code": sha256_bytes(code), "torch": torch.__version__,
                      "opset": opset}, sort_keys=True)
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in metadata.source or "model")[:40]
    path = cache_dir() / ONNX_CACHE / f"{name}-{sha256_bytes(key.encode())[:16]}.onnx"
    if force or not path.is_file():
        # First use: a few seconds of export, then OpenVINO's compile, before the first step; say so.
        print(f"exporting {metadata.source or 'the checkpoint'} to ONNX for OpenVINO, once (a few seconds; cached in "
              f"{path.parent})", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(source.module, metadata, path, opset=opset, unwrap=source.unwrap, log=None)
    return path
