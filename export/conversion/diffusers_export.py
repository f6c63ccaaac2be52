"""`ddpmrt export-diffusers`: a ddpmrt model as a diffusers `DDPMPipeline` folder.

    DIR/model_index.json               DDPMPipeline, naming only diffusers classes
    DIR/unet/                          UNet2DModel: config.json, diffusion_pytorch_model.safetensors
    DIR/scheduler/scheduler_config.json DDPMScheduler: the model's noise schedule, ε-prediction

so that `DDPMPipeline.from_pretrained(DIR)` runs it where ddpmrt is not installed.  The U-Net is the
same network (export/model/diffusers_convert.py maps the configuration and renames the tensors); the
export checks that the saved UNet2DModel, loaded back from disk, computes ddpmrt's ε in fp32 before
the folder appears under its name.  The folder is written under a temporary name and renamed, so an
interrupted export leaves no half-written pipeline.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ddpmrt.engine.backends import is_diffusers_folder, resolve_model_path
from ddpmrt.engine.errors import UserError, install_hint
from ddpmrt.export.model.diffusers_convert import diffusers_schedule, to_diffusers
from ddpmrt.export.model.sources import from_checkpoint

# fp32 agreement the saved UNet2DModel must show with ddpmrt's U-Net (max |Δε| over max |ε|): the two
# compute the same operations in a different order (diffusers' attention, its embedding), nothing more.
TOLERANCE = 1e-4
COMPILED_SUFFIXES = (".onnx", ".plan", ".engine", ".pt2")


def check_destination(out: Path, force: bool) -> None:
    """An export goes to a new or empty folder; --force replaces only an earlier diffusers pipeline."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file; name a folder for the diffusers pipeline")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"--out {out} already holds files; pass --force to replace it, or choose another --out")
    if not (out / "model_index.json").is_file():
        raise UserError(f"--out {out} holds files that are not a diffusers pipeline; --force replaces only an earlier "
                        "export, so choose another --out")


def _checked_source(model: str):
    """The ddpmrt checkpoint to convert; an artifact or a diffusers folder is one line saying why not."""
    path = resolve_model_path(model)
    if path.is_file():
        if path.suffix.lower() in COMPILED_SUFFIXES:
            raise UserError(f"{path} is a compiled {path.suffix} artifact and holds no weights to convert; give the "
                            "checkpoint folder or shipped model it was exported from")
        raise UserError(f"{path} is a file; give a checkpoint folder written by `ddpmrt train` or a shipped model name")
    if is_diffusers_folder(path):
        raise UserError(f"{path} is already a diffusers folder; DDPMPipeline.from_pretrained loads it as it is")
    source = from_checkpoint(path, "fp32")
    if source.metadata.model_config.get("family") != "ddpmrt":
        raise UserError(f"{path}: only ddpmrt U-Nets convert to diffusers' UNet2DModel")
    return source


def _pipeline(source):
    try:
        from diffusers import DDPMPipeline, DDPMScheduler
    except ImportError:
        raise UserError(f"export-diffusers needs diffusers: {install_hint('diffusers')}") from None
    model = source.module.float().eval()
    try:
        unet = to_diffusers(model)
    except (RuntimeError, ValueError) as exc:  # a configuration UNet2DModel cannot express
        raise UserError(f"diffusers' UNet2DModel cannot express this U-Net: {str(exc).splitlines()[0]}") from None
    # diffusers' DDPM defaults, as ddpmrt's `ddpm` sampler runs: x̂₀ clipped to ±1, the posterior variance.
    scheduler = DDPMScheduler(**diffusers_schedule(source.metadata.schedule), prediction_type="epsilon",
                              variance_type="fixed_small", clip_sample=True)
    return model, DDPMPipeline(unet=unet, scheduler=scheduler)


def max_relative_error(model, unet, image_shape, num_train_timesteps: int, seed: int = 0) -> float:
    """max |ε_diffusers − ε_ddpmrt| / max |ε_ddpmrt| over a batch of noisy inputs at timesteps across [0, T)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((4, *image_shape), generator=gen)
    t = torch.linspace(0, num_train_timesteps - 1, 4).round().long()
    with torch.no_grad():
        reference = model(x, t)
        got = unet(x, t).sample
    return float((got - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


def export_diffusers(model: str, out: Path, force: bool = False) -> float:
    """Write the DDPMPipeline folder; returns the loaded-back U-Net's fp32 error against ddpmrt's."""
    check_destination(out, force)
    source = _checked_source(model)
    reference, pipe = _pipeline(source)
    from diffusers import UNet2DModel

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.save_pretrained(tmp, safe_serialization=True)
        loaded = UNet2DModel.from_pretrained(tmp / "unet", low_cpu_mem_usage=False).eval()
        error = max_relative_error(reference, loaded, tuple(source.metadata.image_shape),
                                   source.metadata.schedule.num_train_timesteps)
        if not error <= TOLERANCE:
            raise RuntimeError(f"the saved UNet2DModel differs from ddpmrt's U-Net by {error:.2e} (over {TOLERANCE:g}): a "
                               "conversion bug, please report it")
        if out.exists():
            out.rename(old)  # an empty folder or an earlier export (check_destination)
        try:
            tmp.rename(out)
        except OSError:
            if old.exists():
                old.rename(out)  # the earlier export stays as it was
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return error
