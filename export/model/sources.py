"""Where an exported model comes from: a ddpmrt checkpoint (or shipped name) or a diffusers UNet2DModel.

Each source gives an fp32 torch module computing eps = f(x, t), the ModelMetadata that
goes into the ONNX file, and an `unwrap` for modules whose output is not ε itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from ddpmrt.engine import __version__
from ddpmrt.engine.artifacts.integrity import sha256_file
from ddpmrt.engine.artifacts.metadata import ModelMetadata
from ddpmrt.engine.backends import resolve_model_path
from ddpmrt.engine.errors import UserError, first_line, is_out_of_memory, out_of_memory
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.export.model.checkpoint import WEIGHTS_FILE, load_unet

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_WEIGHT_FILES = (DIFFUSERS_WEIGHTS, "diffusion_pytorch_model.bin")


class EpsOnly(torch.nn.Module):
    """Adapts a module whose forward returns more than ε (diffusers returns an output object)."""

    def __init__(self, module: torch.nn.Module, unwrap):
        super().__init__()
        self.module, self.unwrap = module, unwrap

    def forward(self, x, t):
        return self.unwrap(self.module(x, t))


@dataclass
class Source:
    module: torch.nn.Module
    metadata: ModelMetadata
    unwrap: object = None   # callable applied to the module's output, or None

    def eps_module(self) -> torch.nn.Module:
        """The module as eps = f(x, t)."""
        return self.module if self.unwrap is None else EpsOnly(self.module, self.unwrap)


def from_checkpoint(model: str | Path, precision: str) -> Source:
    path = resolve_model_path(model)
    if not path.is_dir():
        raise UserError(f"{path} is not a checkpoint directory; pass a directory written by `ddpmrt train`, "
                        "a shipped model name, or --from-diffusers DIR")
    module, config = load_unet(path)
    metadata = ModelMetadata(schedule=NoiseSchedule.from_dict(config["schedule"]), image_shape=config["image_shape"],
                             precision=precision, model_config={"family": "ddpmrt", **config["model"]},
                             source=path.name, source_sha256=sha256_file(path / WEIGHTS_FILE),
                             ddpmrt_version=__version__, dataset=config.get("data", {}).get("name", ""))
    return Source(module, metadata)


def schedule_from_diffusers(config: dict, origin: str = "scheduler_config.json") -> NoiseSchedule:
    """A NoiseSchedule from a diffusers DDPMScheduler / DDIMScheduler config.

    linear, scaled_linear, squaredcos_cap_v2 (= ddpmrt's cosine) and explicit trained_betas; any
    other schedule, or an option that changes the betas (rescale_betas_zero_snr), is one line naming it.
    """
    T = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise UserError(f"{origin}: the scheduler predicts {config['prediction_type']!r}; ddpmrt samples ε-models")
    if config.get("rescale_betas_zero_snr"):
        raise UserError(f"{origin} sets rescale_betas_zero_snr, which ddpmrt's schedules cannot represent; "
                        "pass --schedule to override")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    try:
        if config.get("trained_betas"):
            return NoiseSchedule.from_betas(config["trained_betas"])
        if kind == "linear":
            return NoiseSchedule.linear(T, start, end)
        if kind == "scaled_linear":
            return NoiseSchedule.scaled_linear(T, start, end)
        if kind == "squaredcos_cap_v2":
            return NoiseSchedule.cosine(T)
    except ValueError as exc:  # betas outside (0, 1), a ragged list
        raise UserError(f"{origin} describes an invalid schedule ({exc}); pass --schedule to override") from None
    raise UserError(f"{origin} has beta_schedule {kind!r}, which ddpmrt cannot represent; it reads linear, scaled_linear, "
                    "squaredcos_cap_v2 and trained_betas (pass --schedule to override)")


@dataclass
class DiffusersFolder:
    unet: Path                      # the UNet2DModel folder (config.json + weights)
    scheduler_config: Path | None   # scheduler/scheduler_config.json of its pipeline, if any


def find_diffusers_unet(directory: str | Path) -> DiffusersFolder:
    """A saved pipeline folder (model_index.json, unet/, scheduler/) or a UNet2DModel folder itself.

    The schedule is read from the pipeline's scheduler/scheduler_config.json, also when the unet/
    folder is given; a bare UNet folder may carry a scheduler_config.json of its own (older layouts).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--from-diffusers {directory}: not a folder; give a saved diffusers pipeline folder "
                        "(model_index.json, unet/, scheduler/) or its unet/ folder")
    if (directory / "model_index.json").is_file():
        unet, pipeline = directory / "unet", directory
        if not unet.is_dir():
            raise UserError(f"{directory} is a diffusers pipeline without a unet/ folder; ddpmrt imports its UNet2DModel")
    else:
        unet = directory
        pipeline = directory.parent if (directory.parent / "model_index.json").is_file() else None
    candidates = [unet / "scheduler_config.json"]
    if pipeline is not None:
        candidates.insert(0, pipeline / "scheduler" / "scheduler_config.json")
    scheduler = next((c for c in candidates if c.is_file()), None)
    if not (unet / "config.json").is_file() or not any((unet / w).is_file() for w in DIFFUSERS_WEIGHT_FILES):
        raise UserError(f"{unet} is not a saved diffusers UNet2DModel (needs config.json and {DIFFUSERS_WEIGHTS}); "
                        "give a pipeline folder or its unet/ folder")
    return DiffusersFolder(unet, scheduler)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"cannot read {path} ({exc}); the file is damaged: save the pipeline again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a diffusers config (a JSON object); save the pipeline again")
    return data


def from_diffusers(directory: str | Path, precision: str, schedule: NoiseSchedule | None = None) -> Source:
    found = find_diffusers_unet(directory)
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise UserError("--from-diffusers needs diffusers: pip install diffusers") from None
    config = _read_json(found.unet / "config.json")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserError(f"{found.unet} holds a {config['_class_name']}; ddpmrt imports UNet2DModel")
    if schedule is None:
        if found.scheduler_config is None:
            raise UserError(f"{directory} has no scheduler/scheduler_config.json beside its UNet; pass --schedule "
                            "(e.g. linear:1000:0.0001:0.02)")
        schedule = schedule_from_diffusers(_read_json(found.scheduler_config), str(found.scheduler_config))
    try:
        module = UNet2DModel.from_pretrained(str(found.unet)).float().eval()
        size, channels = config["sample_size"], int(config["in_channels"])
        h, w = (size, size) if isinstance(size, int) else size
    except MemoryError:
        raise out_of_memory(f"loading the UNet2DModel in {found.unet}") from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        # diffusers' and safetensors' errors for damaged or inconsistent files (RuntimeError: tensors of
        # another shape than the config says); out of memory is told apart first.
        if is_out_of_memory(exc):
            raise out_of_memory(f"loading the UNet2DModel in {found.unet}") from None
        raise UserError(f"cannot load the UNet2DModel in {found.unet} ({first_line(exc, 200)}); the folder is damaged "
                        "or incomplete: save the pipeline again") from None
    weights = next(found.unet / w for w in DIFFUSERS_WEIGHT_FILES if (found.unet / w).is_file())
    metadata = ModelMetadata(schedule=schedule, image_shape=(channels, h, w), precision=precision,
                             model_config={"family": "diffusers.UNet2DModel",
                                           **{k: v for k, v in config.items() if not k.startswith("_")}},
                             source=Path(directory).name, source_sha256=sha256_file(weights),
                             ddpmrt_version=__version__)
    return Source(module, metadata, unwrap=lambda out: out.sample)


def export_source(model: str | None, diffusers_folder: str | None, schedule: NoiseSchedule | None,
                  precision: str) -> Source:
    """The weights an export converts: a checkpoint or shipped name, or a diffusers folder (whose missing
    schedule `schedule` may give); a UserError when neither is named."""
    if diffusers_folder:
        return from_diffusers(diffusers_folder, precision, schedule)
    if not model:
        raise UserError("name a model: a checkpoint directory, a shipped model name, or --from-diffusers DIR")
    return from_checkpoint(model, precision)
