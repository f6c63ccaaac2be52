"""Checkpoint directories: what a trained model is on disk.

    config.json         model config, schedule, image shape, data statistics, training arguments, version
    model.safetensors   the EMA weights (what sampling and export use)
    training_state.pt   model, EMA, optimizer, scaler and RNG states plus the step: for --resume

Every file is written to a temporary name and renamed, so an interrupted save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ddpmrt.engine import __version__
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.io import atomic_write
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.export.unet import UNet, UNetConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"


def write_json(path: Path, data: dict) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def save_weights(path: Path, module: torch.nn.Module) -> None:
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def make_config(model_config: UNetConfig, schedule: NoiseSchedule, data_stats: dict, train_args: dict,
                step: int) -> dict:
    return {
        "ddpmrt_version": __version__,
        "model": model_config.to_dict(),
        "schedule": schedule.to_dict(),
        "prediction_type": "epsilon",
        "image_shape": [model_config.image_channels, model_config.image_size, model_config.image_size],
        "data": data_stats,
        "training": {**train_args, "step": step},
    }


def read_config(directory: Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a ddpmrt checkpoint (no {CONFIG_FILE}); "
                        "pass a directory written by `ddpmrt train` or a shipped model name")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged, retrain or restore it") from None


def load_unet(directory: Path, device: str = "cpu") -> tuple[UNet, dict]:
    """The EMA U-Net of a checkpoint directory, in eval mode, and its config.json."""
    directory = Path(directory)
    config = read_config(directory)
    model = UNet(UNetConfig.from_dict(config["model"]))
    weights = directory / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise UserError(f"{directory} has no {WEIGHTS_FILE}; the checkpoint is incomplete") from None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise UserError(f"cannot read {weights}: {exc}; the file is damaged, re-save the checkpoint") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing, unexpected or differently shaped tensors
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserError(f"{weights} does not match its config.json ({first[:160]}); the checkpoint is "
                        "inconsistent: restore the pair or retrain") from None
    return model.to(device).eval(), config


def write_random_checkpoint(directory: Path, config_name: str, seed: int = 0) -> Path:
    """A checkpoint of a named config with random weights: for benchmarks and export checks."""
    from ddpmrt.export.unet import get_config

    torch.manual_seed(seed)
    config = get_config(config_name)
    save_weights(Path(directory) / WEIGHTS_FILE, UNet(config))
    write_json(Path(directory) / CONFIG_FILE, make_config(config, NoiseSchedule.linear(1000), {"name": "random"},
                                                          {"random_weights": True, "seed": seed}, 0))
    return Path(directory)
