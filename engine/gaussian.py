"""Gaussian data, where the optimal ε-predictor and every sampler's output are known exactly.

For data x_0 ~ N(μ, Σ) and x_t = √ᾱ x_0 + √(1−ᾱ) ε, the MMSE noise predictor is

    ε*(x_t, t) = √(1−ᾱ) C_t⁻¹ (x_t − √ᾱ μ),   C_t = ᾱ Σ + (1−ᾱ) I.

With it, every coefficient-form step (samplers.py) without clipping is affine in x plus
Gaussian noise, so the distribution of the samples is Gaussian and its mean and covariance
can be propagated step by step.  This separates a sampler's discretisation error (theory
vs data) from a backend's numerical error (measured samples vs theory).
"""

from __future__ import annotations

import numpy as np

from ddpmrt.engine.samplers import S0, S1, SIGMA, A, B, C, Sampler
from ddpmrt.engine.schedule import NoiseSchedule


class GaussianData:
    def __init__(self, mean: np.ndarray, cov: np.ndarray, image_shape, schedule: NoiseSchedule):
        self.mean = np.asarray(mean, np.float64)
        self.cov = np.asarray(cov, np.float64)
        self.image_shape = tuple(image_shape)
        self.schedule = schedule
        self.dim = int(np.prod(self.image_shape))
        if self.mean.shape != (self.dim,) or self.cov.shape != (self.dim, self.dim):
            raise ValueError("mean and cov must match the flattened image shape")

    @classmethod
    def random(cls, image_shape, schedule: NoiseSchedule, seed: int = 0, scale: float = 0.5) -> "GaussianData":
        """A random mean in [-0.5, 0.5] and a random well-conditioned covariance."""
        rng = np.random.default_rng(seed)
        d = int(np.prod(image_shape))
        a = rng.normal(size=(d, d)) * scale / np.sqrt(d)
        return cls(rng.uniform(-0.5, 0.5, d), a @ a.T + 0.05 * np.eye(d), image_shape, schedule)

    def _eps_operator(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """ε* = M x + m at timestep t."""
        abar = self.schedule.alphas_cumprod[t]
        c_inv = np.linalg.inv(abar * self.cov + (1 - abar) * np.eye(self.dim))
        m_op = np.sqrt(1 - abar) * c_inv
        return m_op, -m_op @ (np.sqrt(abar) * self.mean)

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The optimal ε-predictor as a model callable (float32 NCHW in, float32 out)."""
        flat = x.reshape(len(x), -1).astype(np.float64)
        out = np.empty_like(flat)
        for tt in np.unique(t):
            rows = np.asarray(t) == tt
            m_op, m = self._eps_operator(int(tt))
            out[rows] = flat[rows] @ m_op.T + m
        return out.reshape(x.shape).astype(np.float32)

    def sample_data(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.multivariate_normal(self.mean, self.cov, n).reshape(n, *self.image_shape).astype(np.float32)

    def predicted_moments(self, sampler: Sampler) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of `sampler`'s output, starting from x_T ~ N(0, I), exactly."""
        if sampler.clip_sample is not None:
            raise ValueError("clipping makes the update non-linear; use clip_sample=None")
        eye = np.eye(self.dim)
        mean, cov = np.zeros(self.dim), eye.copy()
        for i, t in enumerate(sampler.timesteps):
            s0, s1, a, b, c, sigma = sampler.coefficients[i, [S0, S1, A, B, C, SIGMA]]
            m_op, m = self._eps_operator(int(t))
            # x̂₀ = (x − s₁ ε)/s₀ and x_prev = a x̂₀ + b x + c ε + σ z, with ε = M x + m.
            k_op = a * (eye - s1 * m_op) / s0 + b * eye + c * m_op
            k = -a * s1 * m / s0 + c * m
            mean = k_op @ mean + k
            cov = k_op @ cov @ k_op.T + sigma ** 2 * eye
        return mean, cov


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def w2_gaussian(mean1, cov1, mean2, cov2) -> float:
    """2-Wasserstein distance between two Gaussians (closed form)."""
    root2 = _sqrtm_psd(cov2)
    cross = _sqrtm_psd(root2 @ cov1 @ root2)
    d2 = np.sum((mean1 - mean2) ** 2) + np.trace(cov1 + cov2 - 2 * cross)
    return float(np.sqrt(max(d2, 0.0)))


def empirical_moments(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = samples.reshape(len(samples), -1).astype(np.float64)
    return flat.mean(0), np.cov(flat, rowvar=False)
