"""The torch backend: a ddpmrt checkpoint run by PyTorch, behind the NumPy model interface.

torch is imported here, on first use, never by `import ddpmrt.engine`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpmrt.engine.errors import UserError
from ddpmrt.engine.schedule import NoiseSchedule


class TorchModel:
    """eps = model(x_t, t) on NumPy arrays, around a torch nn.Module."""

    backend = "torch"

    def __init__(self, module, schedule: NoiseSchedule, image_shape, device: str = "cpu", source: str = ""):
        import torch

        self._torch = torch
        self.module = module.to(device).eval()
        self.device = torch.device(device)
        self.dtype = next(module.parameters()).dtype
        self.schedule = schedule
        self.image_shape = tuple(image_shape)
        self.source = source

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device, self.dtype)
            tt = torch.from_numpy(np.ascontiguousarray(t, np.int64)).to(self.device)
            return self.module(xt, tt).float().cpu().numpy()


def load_checkpoint(path: Path, device: str = "cpu") -> TorchModel:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("the torch backend needs PyTorch: pip install 'ddpmrt[export]' "
                        "(or use an .onnx model with --backend onnxruntime)") from None
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")
    from ddpmrt.export.checkpoint import load_unet

    module, config = load_unet(path, device)
    return TorchModel(module, NoiseSchedule.from_dict(config["schedule"]), config["image_shape"], device, str(path))
