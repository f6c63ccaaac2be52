"""A Gaussian mixture: the second exact check, multimodal and nonlinear where gaussian.py is linear.

For data x_0 ~ Σ_k w_k N(μ_k, Σ_k) and x_t = √ᾱ x_0 + √(1−ᾱ) ε, x_t is itself a mixture with
components N(√ᾱ μ_k, C_k), C_k = ᾱ Σ_k + (1−ᾱ) I, so the MMSE noise predictor is closed form:

    ε*(x_t, t) = √(1−ᾱ) Σ_k γ_k(x_t) C_k⁻¹ (x_t − √ᾱ μ_k),   γ_k = the posterior weight of component k.

A sampler's output distribution is no longer closed form; what is: the data (to sample, for a
distribution distance) and, per starting noise, the solution of the probability-flow ODE, which a
many-step high-order solve (REFERENCE) approximates far below any few-step sampler's error.
`MixtureCheck` measures a sampler against both.
"""

from __future__ import annotations

import numpy as np

from ddpmrt.engine.schedule import NoiseSchedule

REFERENCE = "dpmsolver:999:order=3"   # the reference solve: DPM-Solver++(3M) at (almost) every timestep, unclipped


class GaussianMixture:
    def __init__(self, weights, means, covs, image_shape, schedule: NoiseSchedule):
        self.weights = np.asarray(weights, np.float64) / np.sum(weights)
        self.means = np.asarray(means, np.float64)
        self.covs = np.asarray(covs, np.float64)
        self.image_shape = tuple(image_shape)
        self.schedule = schedule
        self.dim = int(np.prod(self.image_shape))
        k = len(self.weights)
        if self.means.shape != (k, self.dim) or self.covs.shape != (k, self.dim, self.dim):
            raise ValueError("means (K, D) and covs (K, D, D) must match the weights and the flattened image shape")
        self._operators: dict[int, tuple] = {}

    @classmethod
    def random(cls, image_shape, schedule: NoiseSchedule, components: int = 4, seed: int = 0,
               spread: float = 0.6, scale: float = 0.15) -> "GaussianMixture":
        """Components with means in [−spread, spread] and small, random, well-conditioned covariances."""
        rng = np.random.default_rng(seed)
        d = int(np.prod(image_shape))
        a = rng.normal(size=(components, d, d)) * scale / np.sqrt(d)
        covs = a @ a.transpose(0, 2, 1) + 0.01 * np.eye(d)
        return cls(rng.uniform(0.5, 1.5, components), rng.uniform(-spread, spread, (components, d)), covs,
                   image_shape, schedule)

    def _operator(self, t: int):
        """C_k⁻¹, log det C_k and √ᾱ μ_k at timestep t (cached: a sampler visits few timesteps)."""
        if t not in self._operators:
            abar = self.schedule.alphas_cumprod[t]
            c = abar * self.covs + (1 - abar) * np.eye(self.dim)
            self._operators[t] = (np.linalg.inv(c), np.linalg.slogdet(c)[1], np.sqrt(abar) * self.means, abar)
        return self._operators[t]

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The optimal ε-predictor as a model callable (float32 NCHW in, float32 out)."""
        flat = x.reshape(len(x), -1).astype(np.float64)
        out = np.empty_like(flat)
        for tt in np.unique(t):
            rows = np.asarray(t) == tt
            c_inv, logdet, centres, abar = self._operator(int(tt))
            diff = flat[rows, None, :] - centres[None]                        # (n, K, D)
            whitened = np.einsum("kde,nke->nkd", c_inv, diff)                 # C_k⁻¹ (x − √ᾱ μ_k)
            log_p = np.log(self.weights) - 0.5 * (logdet + np.einsum("nkd,nkd->nk", diff, whitened))
            gamma = np.exp(log_p - log_p.max(axis=1, keepdims=True))
            gamma /= gamma.sum(axis=1, keepdims=True)
            out[rows] = np.sqrt(1 - abar) * np.einsum("nk,nkd->nd", gamma, whitened)
        return out.reshape(x.shape).astype(np.float32)

    def sample_data(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        which = rng.choice(len(self.weights), size=n, p=self.weights)
        chol = np.linalg.cholesky(self.covs)
        z = rng.standard_normal((n, self.dim))
        samples = self.means[which] + np.einsum("nde,ne->nd", chol[which], z)
        return samples.reshape(n, *self.image_shape).astype(np.float32)


def sliced_w2(a: np.ndarray, b: np.ndarray, projections: int = 256, seed: int = 0) -> float:
    """The sliced 2-Wasserstein distance of two equal-size sample sets (random unit directions, fixed by `seed`)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError("sliced_w2 compares sample sets of the same size and dimension")
    directions = np.random.default_rng(seed).standard_normal((a.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0)
    pa, pb = np.sort(a @ directions, axis=0), np.sort(b @ directions, axis=0)
    return float(np.sqrt(np.mean((pa - pb) ** 2)))


class MixtureCheck:
    """A sampler's error on a mixture, from n seeded noises: the per-image RMS distance of its images to the
    reference solve's from the same noise, and the sliced W2 of its images to n samples of the mixture."""

    def __init__(self, mixture: GaussianMixture, n: int, seed: int = 7, data_seed: int = 9):
        from ddpmrt.engine.sampler_factory import parse_spec  # the samplers, only when a check is made

        self.mixture, self.seed = mixture, seed
        self.shape = (n, *mixture.image_shape)
        self.reference = parse_spec(REFERENCE).make(mixture.schedule, clip_sample=0).sample(
            mixture, self.shape, seed=seed, progress=False)
        self.data = mixture.sample_data(n, seed=data_seed)

    def __call__(self, sampler) -> dict:
        images = sampler.sample(self.mixture, self.shape, seed=self.seed, progress=False)
        return {"rms_to_reference": float(np.sqrt(np.mean((images - self.reference) ** 2))),
                "sliced_w2": sliced_w2(images, self.data)}
