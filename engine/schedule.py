"""Noise schedules: the forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I).

All tables are float64; samplers derive their per-step coefficients from them in float64
and round once to float32, so no precision is lost in products of a thousand terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class NoiseSchedule:
    betas: np.ndarray                       # β_t, t = 0 .. T-1
    kind: str = "custom"                    # linear | scaled_linear | cosine | custom
    params: dict = field(default_factory=dict)  # the constructor's arguments, for to_dict()

    def __post_init__(self):
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError("betas must be a non-empty 1-D array")
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError("every beta must lie in (0, 1)")
        object.__setattr__(self, "betas", betas)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Ho et al. 2020: β linear from beta_start to beta_end."""
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
        return cls(betas, "linear", {"num_train_timesteps": num_train_timesteps,
                                     "beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def scaled_linear(cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012) -> "NoiseSchedule":
        """√β linear from √beta_start to √beta_end (latent diffusion; diffusers' "scaled_linear")."""
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float64) ** 2
        return cls(betas, "scaled_linear", {"num_train_timesteps": num_train_timesteps,
                                            "beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Nichol & Dhariwal 2021: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), β capped."""
        def f(t):
            return math.cos((t / num_train_timesteps + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(num_train_timesteps)]
        return cls(np.array(betas), "cosine", {"num_train_timesteps": num_train_timesteps, "s": s, "max_beta": max_beta})

    @classmethod
    def from_betas(cls, betas) -> "NoiseSchedule":
        betas = np.asarray(betas, dtype=np.float64)
        return cls(betas, "custom", {"betas": betas.tolist()})

    # -- serialisation (checkpoint config.json, ONNX metadata, engine sidecars) ---------
    def to_dict(self) -> dict:
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseSchedule":
        d = dict(d)
        kind = d.pop("kind")
        if kind == "linear":
            return cls.linear(**d)
        if kind == "scaled_linear":
            return cls.scaled_linear(**d)
        if kind == "cosine":
            return cls.cosine(**d)
        if kind == "custom":
            return cls.from_betas(d["betas"])
        raise ValueError(f"unknown schedule kind {kind!r}")

    # -- derived tables -----------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.size)

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t = Π_{s≤t} (1 − β_s)."""
        return np.cumprod(self.alphas)

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: np.ndarray) -> np.ndarray:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, with t one timestep per image."""
        abar = self.alphas_cumprod[np.asarray(t)].reshape(-1, *([1] * (x0.ndim - 1)))
        return (np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise).astype(x0.dtype)
