"""Turning sampler output ([-1, 1] float32, NCHW) into uint8 images, grids and files."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from ddpmrt.engine.artifacts.io import atomic_write


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] to (N, H, W, C) uint8, rounding to nearest."""
    x = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255)
    return np.rint(x).astype(np.uint8).transpose(0, 2, 3, 1)


def make_grid(images_uint8: np.ndarray, ncols: int | None = None, padding: int = 2) -> np.ndarray:
    """(N, H, W, C) uint8 tiles to one (rows·(H+p)+p, cols·(W+p)+p, C) image."""
    n, h, w, c = images_uint8.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), np.uint8)
    for k, img in enumerate(images_uint8):
        r, col = divmod(k, ncols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = img
    return grid


def png_bytes(image_uint8: np.ndarray, scale: int = 1) -> bytes:
    """(H, W, C) uint8 as PNG bytes; `scale` enlarges small images (nearest).  The one PNG encoder."""
    from PIL import Image

    img = image_uint8[..., 0] if image_uint8.shape[-1] == 1 else image_uint8
    pil = Image.fromarray(img)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def png_grid(images_uint8: np.ndarray) -> bytes:
    """(N, H, W, C) uint8 as one PNG grid, small images enlarged to about 512 px: what `sample` and `serve` return."""
    grid = make_grid(images_uint8)
    return png_bytes(grid, scale=max(1, 512 // max(grid.shape[:2])))


def save_png(image_uint8: np.ndarray, path, scale: int = 1) -> None:
    """Write (H, W, C) uint8 as PNG atomically; `scale` enlarges small images (nearest)."""
    data = png_bytes(image_uint8, scale)
    with atomic_write(Path(path)) as tmp:
        tmp.write_bytes(data)


def save_images(images: np.ndarray, path) -> None:
    """Write sampler output: `.png` as a grid, `.npz` as array `images` (uint8, N×H×W×C)."""
    path = Path(path)
    u8 = to_uint8(images)
    if path.suffix.lower() == ".png":
        data = png_grid(u8)
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
    elif path.suffix.lower() == ".npz":
        with atomic_write(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, images=u8)
    else:
        raise ValueError(f"unsupported output {path.name}: use .png or .npz")
