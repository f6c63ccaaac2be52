"""Training data, all offline: images as a float32 array (N, C, H, W) in [-1, 1].

- `digits`: scikit-learn's bundled 8×8 handwritten digits (1,797 images), upsampled to 16×16.
- `shapes`: procedural 32×32 RGB images (a circle, square or triangle), deterministic by seed.
- a folder of images: each resized (shorter side) and centre-cropped to a square.
- a `.npz` / `.npy` array: uint8 (N, H, W[, C]) or (N, C, H, W) in [0, 255], or float in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ddpmrt.engine.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
SHAPE_NAMES = ("circle", "square", "triangle")


@dataclass
class Dataset:
    images: np.ndarray          # (N, C, H, W) float32 in [-1, 1]
    labels: np.ndarray | None   # (N,) int64 where the source has classes
    name: str

    def statistics(self) -> dict:
        return {
            "name": self.name,
            "num_images": int(self.images.shape[0]),
            "image_shape": list(self.images.shape[1:]),
            "mean": float(self.images.mean()),
            "std": float(self.images.std()),
        }


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, C, H, W) float images with Pillow's bilinear filter, per channel."""
    if images.shape[2] == size and images.shape[3] == size:
        return images
    out = np.empty(images.shape[:2] + (size, size), np.float32)
    for i, img in enumerate(images):
        for c, plane in enumerate(img):
            out[i, c] = np.asarray(Image.fromarray(plane, mode="F").resize((size, size), Image.BILINEAR))
    return out


def load_digits(image_size: int = 16) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits  # bundled with scikit-learn, no download

    bunch = sk_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    images = np.clip(_resize(images, image_size), 0.0, 1.0) * 2.0 - 1.0
    return Dataset(images.astype(np.float32), bunch.target.astype(np.int64), "digits")


def make_shapes(num_images: int = 5000, image_size: int = 32, seed: int = 0) -> Dataset:
    """One random shape per image, random colours and placement; label = shape index."""
    rng = np.random.default_rng(seed)
    images = np.empty((num_images, image_size, image_size, 3), np.uint8)
    labels = rng.integers(0, len(SHAPE_NAMES), num_images)
    for i, label in enumerate(labels):
        background = tuple(int(v) for v in rng.integers(0, 96, 3))
        colour = tuple(int(v) for v in rng.integers(128, 256, 3))
        img = Image.new("RGB", (image_size, image_size), background)
        draw = ImageDraw.Draw(img)
        r = rng.uniform(0.2, 0.4) * image_size
        cx, cy = rng.uniform(r, image_size - r, 2)
        if label == 0:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif label == 1:
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        images[i] = np.asarray(img)
    floats = images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    return Dataset(floats, labels.astype(np.int64), "shapes")


def load_folder(folder: Path, image_size: int) -> Dataset:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no images found in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
                        "point --dataset at a folder of images")
    images = []
    for path in files:
        try:
            if path.suffix.lower() == ".png":
                with Image.open(path) as img:
                    img.verify()  # every chunk's CRC: a flipped bit is an error, not a different image
            with Image.open(path) as img:
                img = img.convert("RGB")
                scale = image_size / min(img.size)
                w, h = max(image_size, round(img.width * scale)), max(image_size, round(img.height * scale))
                img = img.resize((w, h), Image.BICUBIC)
                left, top = (w - image_size) // 2, (h - image_size) // 2
                images.append(np.asarray(img.crop((left, top, left + image_size, top + image_size))))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            # Pillow's decoders use all of these for damaged files (SyntaxError: "broken PNG file").
            raise UserError(f"cannot read image {path}: {exc}; remove or fix the file") from None
    array = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    return Dataset(array, None, folder.name)


def load_array(path: Path, image_size: int | None) -> Dataset:
    import tokenize
    import zipfile
    import zlib

    # .npz members carry a CRC-32 (checked as they are read); a .npy has none beyond its header.
    # np.load parses the .npy header with Python's tokenizer: a damaged one raises SyntaxError or TokenError.
    damaged = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError,
               SyntaxError, tokenize.TokenError, MemoryError)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            keys = list(loaded.keys())
            key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise UserError(f"{path} holds arrays {keys}; name the image array 'images'")
            array = loaded[key]
        else:
            array = loaded
    except damaged as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"cannot read array file {path} ({first}); the file is damaged or not a NumPy array") from None
    if array.size == 0:
        raise UserError(f"{path} holds no images (shape {array.shape}); save at least one image")
    original_shape = array.shape
    if array.ndim == 3:
        array = array[:, None]                  # (N, H, W): greyscale
    elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)     # NHWC to NCHW
    if array.ndim != 4 or array.shape[1] not in (1, 3) or array.shape[2] != array.shape[3]:
        raise UserError(f"{path}: expected images of shape (N, H, W), (N, H, W, C) or (N, C, H, W) with "
                        f"square H = W and C in (1, 3), got {original_shape}")
    if array.dtype == np.uint8:
        images = array.astype(np.float32) / 127.5 - 1.0
    elif np.issubdtype(array.dtype, np.floating):
        images = array.astype(np.float32)
        if not np.isfinite(images).all():
            raise UserError(f"{path}: the images hold NaN or Inf; the file is damaged or was saved from bad data")
        if images.min() < -1.0 - 1e-3 or images.max() > 1.0 + 1e-3:
            raise UserError(f"{path}: float images must lie in [-1, 1] (got [{images.min():.3g}, {images.max():.3g}]); "
                            "save uint8 in [0, 255] or rescale")
    else:
        raise UserError(f"{path}: unsupported dtype {array.dtype}; use uint8 or float")
    if image_size is not None:
        images = _resize(images, image_size)
    return Dataset(images, None, path.stem)


def load_dataset(spec: str, image_size: int | None = None, seed: int = 0) -> Dataset:
    """`spec` is `digits`, `shapes`, a folder, or a .npz/.npy file."""
    if spec == "digits":
        return load_digits(image_size or 16)
    if spec == "shapes":
        return make_shapes(image_size=image_size or 32, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"dataset {spec!r} not found; use digits, shapes, a folder of images or a .npz/.npy file")
    if path.is_dir():
        return load_folder(path, image_size or 32)
    if path.suffix in (".npz", ".npy"):
        return load_array(path, image_size)
    raise UserError(f"dataset {spec!r} is neither a folder nor a .npz/.npy file")
