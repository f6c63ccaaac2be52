"""Backends: anything that turns a model file into `eps = model(x_t, t)` on NumPy arrays.

Every loaded model also carries `schedule` (a NoiseSchedule) and `image_shape` (C, H, W),
read from the model file itself, so a sampler needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

from ddpmrt.engine.errors import UserError

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
BACKENDS = ("auto", "torch")
DEVICES = ("cpu", "cuda")


def shipped_models() -> list[str]:
    return sorted(p.name for p in SHIPPED_MODELS_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model_path(model: str | Path) -> Path:
    """A path that exists, or the directory of a model shipped inside the package."""
    path = Path(model)
    if path.exists():
        return path
    shipped = SHIPPED_MODELS_DIR / str(model)
    if (shipped / "config.json").is_file():
        return shipped
    raise UserError(f"model {str(model)!r} not found: give a checkpoint directory or a shipped model "
                    f"({', '.join(shipped_models()) or 'none installed'})")


def load_model(model: str | Path, backend: str = "auto", device: str = "cpu"):
    """Load a checkpoint directory or shipped model name as a sampler-ready callable."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    path = resolve_model_path(model)
    if path.is_dir():
        from ddpmrt.engine.backends.torch_backend import load_checkpoint

        return load_checkpoint(path, device)
    raise UserError(f"{path} is not a checkpoint directory; this version samples checkpoints (torch backend)")
