"""Checkpoint directories: what a trained model is on disk.

    config.json         model config, schedule, image shape, data statistics, training arguments, version,
                        the weights' SHA-256 and its own checksum (engine/artifacts/integrity.py)
    model.safetensors   the EMA weights (what sampling and export use)
    training_state.pt   model, EMA, optimizer, scaler and RNG states plus the step: for --resume

Every file is written to a temporary name and renamed, so an interrupted save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddpmrt.engine.artifacts.integrity import CHECKSUM_KEY, json_seal_matches, seal_json, sha256_file
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.errors import UserError, first_line, out_of_memory
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.engine.version import __version__
from ddpmrt.export.model.unet import UNet, UNetConfig

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


CONFIG_KEYS = {"ddpmrt_version", "model", "schedule", "prediction_type", "image_shape", "data", "training",
               "weights_sha256", CHECKSUM_KEY}


def write_config(directory: Path, config: dict) -> None:
    """config.json beside model.safetensors (written first): with the weights' hash, sealed."""
    directory = Path(directory)
    write_json(directory / CONFIG_FILE, seal_json({**config, "weights_sha256": sha256_file(directory / WEIGHTS_FILE)}))


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
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged, retrain or restore it") from None
    if not isinstance(config, dict) or not {"model", "schedule", "image_shape"} <= set(config):
        raise UserError(f"{path} is not a ddpmrt checkpoint config (model, schedule, image_shape); restore it or retrain")
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise UserError(f"{path} has unknown entries {unknown}: the file is damaged; restore it or retrain")
    if json_seal_matches(config) is False:
        raise UserError(f"{path} does not match its checksum: it was damaged or edited; restore it, or delete its "
                        f'"{CHECKSUM_KEY}" entry to accept an edit')
    return config


def load_unet(directory: Path, device: str = "cpu") -> tuple[UNet, dict]:
    """The EMA U-Net of a checkpoint directory, in eval mode, and its config.json."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        model = UNet(UNetConfig.from_dict(config["model"]))
    except (TypeError, ValueError, KeyError, ZeroDivisionError, RuntimeError) as exc:
        raise UserError(f"{directory / CONFIG_FILE} describes no valid U-Net ({exc}); restore it or retrain") from None
    weights = directory / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise UserError(f"{directory} has no {WEIGHTS_FILE}; the checkpoint is incomplete") from None
    except MemoryError:
        raise out_of_memory(f"reading {weights}") from None
    except (SafetensorError, OSError, ValueError) as exc:  # safetensors' own type for damaged files
        raise UserError(f"cannot read {weights}: {first_line(exc)}; the file is damaged, re-save the checkpoint") from None
    # A flipped bit in a tensor still reads: the hash recorded at save time tells.
    if config.get("weights_sha256") and sha256_file(weights) != config["weights_sha256"]:
        raise UserError(f"{weights} does not match the checksum in {CONFIG_FILE}: the file is damaged; restore it or retrain")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing, unexpected or differently shaped tensors
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserError(f"{weights} does not match its config.json ({first[:160]}); the checkpoint is "
                        "inconsistent: restore the pair or retrain") from None
    return model.to(device).eval(), config


def write_random_checkpoint(directory: Path, config_name: str, seed: int = 0) -> Path:
    """A checkpoint of a named config with random weights: for benchmarks and export checks."""
    from ddpmrt.export.model.unet import get_config

    torch.manual_seed(seed)
    config = get_config(config_name)
    save_weights(Path(directory) / WEIGHTS_FILE, UNet(config))
    write_config(directory, make_config(config, NoiseSchedule.linear(1000), {"name": "random"},
                                        {"random_weights": True, "seed": seed}, 0))
    return Path(directory)
