"""Test helpers that build model files."""

from __future__ import annotations

from pathlib import Path


def make_checkpoint(directory: Path, config_name: str = "tiny", seed: int = 0) -> Path:
    """A checkpoint directory with random weights (as `ddpmrt train` writes it)."""
    import torch

    from ddpmrt.engine import NoiseSchedule
    from ddpmrt.export.checkpoint import CONFIG_FILE, WEIGHTS_FILE, make_config, save_weights, write_json
    from ddpmrt.export.unet import UNet, get_config

    torch.manual_seed(seed)
    config = get_config(config_name)
    model = UNet(config)
    save_weights(directory / WEIGHTS_FILE, model)
    write_json(directory / CONFIG_FILE, make_config(config, NoiseSchedule.linear(1000), {"name": "random"}, {}, 0))
    return directory
