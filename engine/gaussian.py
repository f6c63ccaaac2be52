"""Gaussian data, where the optimal ε-predictor and every sampler's output are known exactly.

For data x_0 ~ N(μ, Σ) and x_t = √ᾱ x_0 + √(1−ᾱ) ε, the MMSE noise predictor is

    ε*(x_t, t) = √(1−ᾱ) C_t⁻¹ (x_t − √ᾱ μ),   C_t = ᾱ Σ + (1−ᾱ) I.

With it, every coefficient-form step (samplers.py) without clipping is affine in x plus
Gaussian noise, so the distribution of the samples is Gaussian and its mean and covariance
can be propagated step by step.  A multistep solver's step also reads earlier steps' x̂₀ and
(UniPC) the previous corrected sample: the joint state (x, H₁, H₂, H₃, P) is still Gaussian,
and it is that state's mean and covariance that are propagated.  This separates a sampler's discretisation error (theory
vs data) from a backend's numerical error (measured samples vs theory).
"""

from __future__ import annotations

import numpy as np

from ddpmrt.engine.samplers import (
    H1,
    HISTORY,
    KEEP,
    KEEP_CORRECTED,
    KEEP_EPS,
    KEEP_X0,
    Q0,
    Q1,
    QP,
    QX,
    S0,
    S1,
    SIGMA,
    A,
    B,
    C,
    Sampler,
)
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
        d, eye, zero = self.dim, np.eye(self.dim), np.zeros((self.dim, self.dim))
        blocks = 2 + HISTORY  # the state: x, H1..H3, P
        mean, cov = np.zeros(blocks * d), np.zeros((blocks * d, blocks * d))
        cov[:d, :d] = eye
        for i, t in enumerate(sampler.timesteps):
            row = sampler.coefficients[i]
            m_op, m = self._eps_operator(int(t))
            # Each quantity of the step as (matrix on the state, constant): ε = M x + m, x̂₀ = (x − s₁ε)/s₀.
            x = (np.hstack([eye] + [zero] * (blocks - 1)), np.zeros(d))
            history = [(np.hstack([zero] * (1 + k) + [eye] + [zero] * (blocks - 2 - k)), np.zeros(d))
                       for k in range(HISTORY)]
            previous = (np.hstack([zero] * (blocks - 1) + [eye]), np.zeros(d))
            eps = (m_op @ x[0], m)
            x0 = ((x[0] - row[S1] * eps[0]) / row[S0], -row[S1] * eps[1] / row[S0])

            def combine(*terms):
                return (sum(w * op for w, (op, _) in terms), sum(w * const for w, (_, const) in terms))

            # x_c = (1 + q_x) x + q₀ x̂₀ + Σ q_k H_k + q_p P;  x_prev = a x̂₀ + b x_c + c ε + Σ h_k H_k + σ z.
            corrected = combine((1 + row[QX], x), (row[Q0], x0), (row[QP], previous),
                                *[(row[Q1 + k], history[k]) for k in range(HISTORY)])
            x_next = combine((row[A], x0), (row[B], corrected), (row[C], eps),
                             *[(row[H1 + k], history[k]) for k in range(HISTORY)])
            keep = int(row[KEEP])
            new_history = [x0, *history[:HISTORY - 1]] if keep & KEEP_X0 else \
                [eps, *history[:HISTORY - 1]] if keep & KEEP_EPS else history
            new_previous = corrected if keep & KEEP_CORRECTED else previous
            state = [x_next, *new_history, new_previous]
            k_op = np.vstack([op for op, _ in state])
            k_const = np.concatenate([const for _, const in state])
            mean = k_op @ mean + k_const
            cov = k_op @ cov @ k_op.T
            cov[:d, :d] += row[SIGMA] ** 2 * eye
        return mean[:d], cov[:d, :d]


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
