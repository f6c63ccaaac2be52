"""Where an exported model comes from: a ddpmrt checkpoint (or shipped name) or a diffusers UNet2DModel.

Each source gives an fp32 torch module computing eps = f(x, t), the ModelMetadata that
goes into the ONNX file, and an `unwrap` for modules whose output is not ε itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpmrt.engine import __version__
from ddpmrt.engine.backends import resolve_model_path
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.metadata import ModelMetadata
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.export.checkpoint import WEIGHTS_FILE, load_unet

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass
class Source:
    module: torch.nn.Module
    metadata: ModelMetadata
    unwrap: object = None   # callable applied to the module's output, or None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def from_checkpoint(model: str | Path, precision: str) -> Source:
    path = resolve_model_path(model)
    if not path.is_dir():
        raise UserError(f"{path} is not a checkpoint directory; pass a directory written by `ddpmrt train`, "
                        "a shipped model name, or --from-diffusers DIR")
    module, config = load_unet(path)
    metadata = ModelMetadata(schedule=NoiseSchedule.from_dict(config["schedule"]), image_shape=config["image_shape"],
                             precision=precision, model_config={"family": "ddpmrt", **config["model"]},
                             source=path.name, source_sha256=sha256_file(path / WEIGHTS_FILE),
                             ddpmrt_version=__version__)
    return Source(module, metadata)


def schedule_from_diffusers(config: dict) -> NoiseSchedule:
    """A NoiseSchedule from a diffusers scheduler_config.json (DDPM/DDIM schedulers)."""
    T = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas"):
        return NoiseSchedule.from_betas(config["trained_betas"])
    if kind == "linear":
        return NoiseSchedule.linear(T, float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02)))
    if kind == "squaredcos_cap_v2":
        return NoiseSchedule.cosine(T)
    raise UserError(f"scheduler_config.json has beta_schedule {kind!r}; ddpmrt reads linear and squaredcos_cap_v2 "
                    "(pass --schedule to override)")


def from_diffusers(directory: str | Path, precision: str, schedule: NoiseSchedule | None = None) -> Source:
    directory = Path(directory)
    if not (directory / "config.json").is_file() or not (directory / DIFFUSERS_WEIGHTS).is_file():
        raise UserError(f"{directory} is not a saved diffusers UNet2DModel (needs config.json and {DIFFUSERS_WEIGHTS})")
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise UserError("--from-diffusers needs diffusers: pip install diffusers") from None
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserError(f"{directory} holds a {config['_class_name']}; ddpmrt imports UNet2DModel")
    scheduler_file = directory / "scheduler_config.json"
    if schedule is None:
        if not scheduler_file.is_file():
            raise UserError(f"{directory} has no scheduler_config.json; pass --schedule (e.g. linear:1000:0.0001:0.02)")
        scheduler = json.loads(scheduler_file.read_text(encoding="utf-8"))
        if scheduler.get("prediction_type", "epsilon") != "epsilon":
            raise UserError(f"the scheduler predicts {scheduler['prediction_type']!r}; ddpmrt samples ε-models")
        schedule = schedule_from_diffusers(scheduler)
    module = UNet2DModel.from_pretrained(str(directory)).float().eval()
    size = config["sample_size"]
    h, w = (size, size) if isinstance(size, int) else size
    metadata = ModelMetadata(schedule=schedule, image_shape=(config["in_channels"], h, w), precision=precision,
                             model_config={"family": "diffusers.UNet2DModel",
                                           **{k: v for k, v in config.items() if not k.startswith("_")}},
                             source=directory.name, source_sha256=sha256_file(directory / DIFFUSERS_WEIGHTS),
                             ddpmrt_version=__version__)
    return Source(module, metadata, unwrap=lambda out: out.sample)
