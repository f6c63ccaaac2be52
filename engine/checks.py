"""Checks on what callers pass to samplers and models: each bad value is one UserError naming it.

The runtime is called from users' own processes with whatever arrays they have; a wrong shape
or dtype must not reach ONNX Runtime, TensorRT or a kernel, where it would become a long error
of theirs, a crash, or silently wrong images.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ddpmrt.engine.errors import UserError


def shown(value, limit: int = 60) -> str:
    """`value` as an error message quotes it: its repr, cut to `limit` characters (a request may send megabytes)."""
    text = repr(value) if not isinstance(value, numbers.Integral) or abs(value) < 10 ** limit else f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_int(value, name: str, low: int, high: int) -> int:
    """An integer (Python or NumPy; not bool, not float) in [low, high]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise UserError(f"{name} must be an integer, got {shown(value)}")
    if not low <= int(value) <= high:
        raise UserError(f"{name} must lie in [{low}, {high}], got {shown(value)}")
    return int(value)


def check_real(value, name: str, low: float, high: float = math.inf) -> float:
    """A finite real number in [low, high]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise UserError(f"{name} must be a number, got {shown(value)}")
    if not math.isfinite(float(value)) or not low <= float(value) <= high:
        raise UserError(f"{name} must be a finite number in [{low:g}, {high:g}], got {shown(value)}")
    return float(value)


def as_images(array, name: str, shape: tuple | None = None) -> np.ndarray:
    """A real, finite float32 array of rank 4 (N, C, H, W), of `shape` where given."""
    try:
        array = np.asarray(array)
    except ValueError:  # ragged nested lists
        raise UserError(f"{name} must be an array of shape (N, C, H, W), got a ragged sequence") from None
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise UserError(f"{name} must hold real numbers (float32 preferred), got dtype {array.dtype}")
    if array.ndim != 4 or array.shape[0] < 1:
        raise UserError(f"{name} must have shape (N, C, H, W) with N >= 1, got {array.shape}")
    if shape is not None and array.shape != tuple(shape):
        raise UserError(f"{name} has shape {array.shape}, expected {tuple(shape)}")
    array = np.ascontiguousarray(array, np.float32)
    if not np.isfinite(array).all():
        raise UserError(f"{name} holds NaN or Inf")
    return array


def as_timesteps(t, n: int, num_train_timesteps: int) -> np.ndarray:
    """int64 timesteps of shape (n,), each in [0, T)."""
    t = np.asarray(t)
    if not np.issubdtype(t.dtype, np.integer):
        raise UserError(f"t must hold integer timesteps, got dtype {t.dtype}")
    if t.shape != (n,):
        raise UserError(f"t must have shape ({n},), one timestep per image, got {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= num_train_timesteps):
        raise UserError(f"timesteps must lie in [0, {num_train_timesteps - 1}], got [{t.min()}, {t.max()}]")
    return np.ascontiguousarray(t, np.int64)


def model_inputs(x, t, image_shape, num_train_timesteps: int) -> tuple[np.ndarray, np.ndarray]:
    """What every backend's `model(x, t)` accepts: x (N, *image_shape) float32, t (N,) int64."""
    x = as_images(x, "x")
    if x.shape[1:] != tuple(image_shape):
        raise UserError(f"x has images of shape {x.shape[1:]}, this model takes {tuple(image_shape)}")
    return x, as_timesteps(t, x.shape[0], num_train_timesteps)


def sample_shape(shape, image_shape=None) -> tuple[int, tuple[int, ...]]:
    """(n, image shape) from a sampler's `shape` (N, C, H, W), checked against the model's image shape."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise UserError(f"shape must be (N, C, H, W), got {shape!r}") from None
    if len(dims) != 4:
        raise UserError(f"shape must be (N, C, H, W), got {shape!r}")
    n, *image = (check_int(d, "every entry of shape", 1, 2 ** 31 - 1) for d in dims)
    if image_shape is not None and tuple(image) != tuple(image_shape):
        raise UserError(f"shape {dims} asks for images of {tuple(image)}, this model makes {tuple(image_shape)}")
    return n, tuple(image)


def image_indices(indices, n: int) -> np.ndarray:
    """int64 image indices (N,), each in [0, 2^32): the noise key of each image."""
    array = np.asarray(indices)
    if not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"image_indices must be integers, got {indices!r}")
    if array.shape != (n,):
        raise UserError(f"image_indices must have {n} entries, one per image, got shape {array.shape}")
    if array.min() < 0 or array.max() >= 2 ** 32:
        raise UserError(f"image indices must lie in [0, 2**32), got [{array.min()}, {array.max()}]")
    return array.astype(np.int64)


def seeds(seed, n: int):
    """One seed in [0, 2^64), or a sequence of n of them (one per image): an int or a tuple of ints."""
    if np.ndim(seed) == 0:
        return check_int(seed, "seed", 0, 2 ** 64 - 1)
    values = list(np.asarray(seed, dtype=object).ravel()) if not isinstance(seed, (list, tuple)) else list(seed)
    if len(values) != n or np.ndim(seed) != 1:
        raise UserError(f"seed must be one integer or {n} of them (one per image), got {np.shape(seed)}")
    return tuple(check_int(v, "every seed", 0, 2 ** 64 - 1) for v in values)


def int_list(text: str, option: str, low: int = 1, high: int = 65536) -> list[int]:
    """A comma-separated list of distinct integers in [low, high] (a --batch or --seeds value)."""
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if not values or min(values) < low or max(values) > high or len(set(values)) != len(values):
        raise UserError(f"{option} {text!r}: use distinct integers in [{low}, {high}] separated by commas, e.g. 1,8,64")
    return values
