"""Test helpers that build model files."""

from __future__ import annotations

from pathlib import Path


def make_checkpoint(directory: Path, config_name: str = "tiny", seed: int = 0) -> Path:
    """A checkpoint directory with random weights (as `ddpmrt train` writes it)."""
    from ddpmrt.export.model.checkpoint import write_random_checkpoint

    return write_random_checkpoint(directory, config_name, seed)
