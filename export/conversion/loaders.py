"""The torch side's model loaders: checkpoint directories and diffusers folders for `load_model`.

`ddpmrt.engine.load_model` never imports this package (dependencies run export -> engine).
It finds these loaders through the entry-point group `ddpmrt.model_loaders` that
pyproject.toml declares, imports them only when a checkpoint or diffusers folder is loaded,
and gets back an engine-side model: a TorchModel around the U-Net defined here (backend torch or
inductor), or an OpenVinoModel of its ONNX export, made once and kept in ddpmrt's cache (openvino).

    checkpoint   a directory written by `ddpmrt train`, or a shipped model (config.json + model.safetensors)
    diffusers    a saved diffusers pipeline (model_index.json, unet/, scheduler/) or its unet/ folder
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from ddpmrt.engine.artifacts.io import WriteFailed, cache_dir
from ddpmrt.engine.backends.openvino_backend import OpenVinoModel
from ddpmrt.engine.backends.torch_backend import TorchModel, resolve_precision
from ddpmrt.engine.cpu import resolve_cpu_precision
from ddpmrt.engine.errors import UserError, first_line
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.export.conversion.onnx_export import cached_export, export_onnx
from ddpmrt.export.model.checkpoint import load_unet
from ddpmrt.export.model.sources import Source, from_checkpoint, from_diffusers


def _check(device: str, backend: str, precision: str, threads: int | None = None) -> None:
    """The device and precision, before any weights are read; `threads` sets PyTorch's CPU threads for the torch
    and inductor backends (process-wide, as torch.set_num_threads is), never dropped."""
    if threads is not None and backend != "openvino":
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")
    if backend == "openvino" and precision != "int8":
        resolve_cpu_precision(precision)
    else:
        resolve_precision(precision, device)  # int8 is refused here: it needs a calibrated ONNX file


def _on_openvino(source: Source, precision: str, threads) -> OpenVinoModel:
    """`source` as its cached fp32 ONNX export (onnx_export.cached_export), computed by OpenVINO in bf16 or f32.

    Faster than inductor on the CPUs with bf16 units measured (benchmarks/results/cpu-cifar10-ddim20-*),
    and no 30-60 s compile: the first load exports (seconds), later ones read the cached file.  Where the
    cache cannot be written (a read-only home), the export is made for this process alone, with a note."""
    try:
        path = cached_export(source)
    except (OSError, WriteFailed) as exc:
        warnings.warn(f"ddpmrt's cache {cache_dir()} cannot be written ({first_line(exc)}), so this process exports "
                      "the checkpoint for itself; set DDPMRT_CACHE_DIR to a writable folder", stacklevel=4)
        with tempfile.TemporaryDirectory(prefix="ddpmrt-export-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(source.module, source.metadata, path, unwrap=source.unwrap, log=None)
            return OpenVinoModel(path, threads=threads, precision=precision)  # it holds the model read from the file
    try:
        return OpenVinoModel(path, threads=threads, precision=precision)
    except UserError:  # the cached file was damaged (or cut short) since it was written: export it again
        return OpenVinoModel(cached_export(source, force=True), threads=threads, precision=precision)


def load_checkpoint(path: Path, backend: str = "torch", device: str = "cpu", precision: str = "auto",
                    cuda_graph: bool = False, schedule: NoiseSchedule | None = None, threads: int | None = None):
    """A ddpmrt checkpoint on `backend`: torch (eager), inductor or openvino; `schedule` is unused."""
    _check(device, backend, precision, threads)
    if backend == "openvino":
        return _on_openvino(from_checkpoint(path, "fp32"), precision, threads)
    module, config = load_unet(path, device)
    return TorchModel(module, NoiseSchedule.from_dict(config["schedule"]), config["image_shape"], device, str(path),
                      precision=precision, cuda_graph=cuda_graph, compile=backend == "inductor")


def load_diffusers(path: Path, backend: str = "torch", device: str = "cpu", precision: str = "auto",
                   cuda_graph: bool = False, schedule: NoiseSchedule | None = None, threads: int | None = None):
    """A diffusers pipeline folder (or its unet/), schedule from its scheduler config unless `schedule` is given."""
    _check(device, backend, precision, threads)
    source = from_diffusers(path, "fp32", schedule)
    if backend == "openvino":
        return _on_openvino(source, precision, threads)
    return TorchModel(source.eps_module(), source.metadata.schedule, source.metadata.image_shape, device, str(path),
                      precision=precision, cuda_graph=cuda_graph, compile=backend == "inductor")
