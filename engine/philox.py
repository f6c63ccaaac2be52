"""Philox4x32-10 counter-based noise: a pure function of (seed, image, step, element).

Sampling noise must not depend on the batch an image is generated in, on the device, or on
the order of calls.  A counter-based generator gives that: each block of four outputs is a
pure function of a 128-bit counter and a 64-bit key (Salmon et al., SC 2011; the same round
function as Random123 and cuRAND's Philox4_32_10).  The CUDA kernel in kernels/ implements
exactly this specification; change one and you must change the other.

Specification (version 1)
-------------------------
key     k0 = seed & 0xFFFFFFFF, k1 = (seed >> 32) & 0xFFFFFFFF        (seed: 0 .. 2^64 - 1; one per
        image where a batch holds several requests, each with its own seed)
counter c0 = element // 4        element index in the image, C-order over (C, H, W)
        c1 = image index         the image's index in the run (not in the batch)
        c2 = step index i        the sampler step (index into timesteps); 0 for the initial noise
        c3 = stream              STREAM_INITIAL (0) for x_T, STREAM_STEP (1) for the noise z of step i
lane    element % 4 selects output word w[lane] of the block.

uniform u = ((w >> 8) + 1) · 2^-24, exactly representable in float32, in (0, 1] so log(u) is finite.
normal  Box-Muller on the lane pairs (0, 1) and (2, 3): with r = √(−2 ln u_even), θ = 2π u_odd,
        z_even = r cos θ, z_odd = r sin θ; computed in float64 and rounded to float32.
"""

from __future__ import annotations

import numpy as np

from ddpmrt.engine import checks

PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint32(0x9E3779B9)  # key schedule: golden ratio
PHILOX_W1 = np.uint32(0xBB67AE85)  # key schedule: sqrt(3) - 1
PHILOX_ROUNDS = 10

STREAM_INITIAL = 0
STREAM_STEP = 1

_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32(counter: np.ndarray, key) -> np.ndarray:
    """Philox4x32-10 of counters (..., 4) uint32; returns (..., 4) uint32.

    `key` is (k0, k1): two integers, or two uint32 arrays broadcasting against counter[..., 0]
    (one key per image).
    """
    c = np.asarray(counter, dtype=np.uint32)
    c0, c1, c2, c3 = (c[..., i].astype(np.uint64) for i in range(4))
    k0, k1 = (np.asarray(np.asarray(k, dtype=np.uint64) & _MASK32, dtype=np.uint32) for k in key)
    for round_ in range(PHILOX_ROUNDS):
        if round_:
            # Key bump between rounds, mod 2^32 (uint32 arithmetic wraps).
            with np.errstate(over="ignore"):
                k0, k1 = k0 + PHILOX_W0, k1 + PHILOX_W1
        p0 = PHILOX_M0 * c0           # full 64-bit products of two 32-bit words
        p1 = PHILOX_M1 * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0.astype(np.uint64), lo1, hi0 ^ c3 ^ k1.astype(np.uint64), lo0
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def uniforms_from_words(words: np.ndarray) -> np.ndarray:
    """uint32 words to float32 uniforms in (0, 1]: 24 random bits, exact in float32."""
    return ((words >> np.uint32(8)).astype(np.float32) + np.float32(1.0)) * np.float32(2.0 ** -24)


def normals_from_words(words: np.ndarray) -> np.ndarray:
    """(..., 4) uint32 words to (..., 4) float32 standard normals by Box-Muller on lane pairs."""
    u = uniforms_from_words(words).astype(np.float64)
    r = np.sqrt(-2.0 * np.log(u[..., 0::2]))
    theta = 2.0 * np.pi * u[..., 1::2]
    z = np.empty(u.shape, np.float64)
    z[..., 0::2] = r * np.cos(theta)
    z[..., 1::2] = r * np.sin(theta)
    return z.astype(np.float32)


def _counters(num_elements: int, image_indices: np.ndarray, step: int, stream: int) -> np.ndarray:
    blocks = (num_elements + 3) // 4
    counter = np.empty((len(image_indices), blocks, 4), np.uint32)
    counter[..., 0] = np.arange(blocks, dtype=np.uint32)[None, :]
    counter[..., 1] = np.asarray(image_indices, dtype=np.uint32)[:, None]
    counter[..., 2] = step
    counter[..., 3] = stream
    return counter


def _key(seed) -> tuple:
    """(k0, k1) of one seed, or per-image (n, 1) arrays of a sequence of seeds (checks.seeds checks them)."""
    seed = checks.seeds(seed, 1 if np.ndim(seed) == 0 else len(np.asarray(seed, dtype=object).ravel()))
    if isinstance(seed, int):
        return seed & 0xFFFFFFFF, seed >> 32
    return (np.array([s & 0xFFFFFFFF for s in seed], np.uint32)[:, None],
            np.array([s >> 32 for s in seed], np.uint32)[:, None])


def gaussian_noise(seed: int, image_indices, step: int, stream: int, image_shape) -> np.ndarray:
    """Standard normal noise of shape (len(image_indices), *image_shape), float32.

    Row k depends only on (seed, image_indices[k], step, stream), or (seed[k], ...) where `seed`
    holds one seed per image: an image is the same whether generated alone or in any batch.
    """
    image_indices = np.atleast_1d(np.asarray(image_indices, dtype=np.int64))
    num_elements = int(np.prod(image_shape))
    words = philox4x32(_counters(num_elements, image_indices, step, stream), _key(seed))
    z = normals_from_words(words).reshape(len(image_indices), -1)[:, :num_elements]
    return z.reshape(len(image_indices), *image_shape)


def uniform_noise(seed: int, image_indices, step: int, stream: int, image_shape) -> np.ndarray:
    """The uniforms behind gaussian_noise (for checking the CUDA generator bit for bit)."""
    image_indices = np.atleast_1d(np.asarray(image_indices, dtype=np.int64))
    num_elements = int(np.prod(image_shape))
    words = philox4x32(_counters(num_elements, image_indices, step, stream), _key(seed))
    u = uniforms_from_words(words).reshape(len(image_indices), -1)[:, :num_elements]
    return u.reshape(len(image_indices), *image_shape)
