"""The torch side's model loaders: checkpoint directories and diffusers folders for `load_model`.

`ddpmrt.engine.load_model` never imports this package (dependencies run export -> engine).
It finds these loaders through the entry-point group `ddpmrt.model_loaders` that
pyproject.toml declares, imports them only when a checkpoint or diffusers folder is loaded,
and gets back an engine-side TorchModel around the U-Net defined here.

    checkpoint   a directory written by `ddpmrt train`, or a shipped model (config.json + model.safetensors)
    diffusers    a saved diffusers pipeline (model_index.json, unet/, scheduler/) or its unet/ folder
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddpmrt.engine.backends.torch_backend import TorchModel, resolve_precision
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.export.checkpoint import load_unet
from ddpmrt.export.sources import from_diffusers


def _check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")


def load_checkpoint(path: Path, device: str = "cpu", precision: str = "auto", cuda_graph: bool = False,
                    compile: bool = False, schedule: NoiseSchedule | None = None) -> TorchModel:
    """A ddpmrt checkpoint on the torch (eager) or inductor (compile=True) backend; `schedule` is unused."""
    _check_device(device)
    resolve_precision(precision, device)  # a bad precision fails before the weights are read
    module, config = load_unet(path, device)
    return TorchModel(module, NoiseSchedule.from_dict(config["schedule"]), config["image_shape"], device, str(path),
                      precision=precision, cuda_graph=cuda_graph, compile=compile)


def load_diffusers(path: Path, device: str = "cpu", precision: str = "auto", cuda_graph: bool = False,
                   compile: bool = False, schedule: NoiseSchedule | None = None) -> TorchModel:
    """A diffusers pipeline folder (or its unet/), schedule from its scheduler config unless `schedule` is given."""
    _check_device(device)
    resolve_precision(precision, device)
    source = from_diffusers(path, "fp32", schedule)
    return TorchModel(source.eps_module(), source.metadata.schedule, source.metadata.image_shape, device, str(path),
                      precision=precision, cuda_graph=cuda_graph, compile=compile)
