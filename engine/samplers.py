"""DDPM and DDIM samplers, and the one coefficient-form update every sampler's step is written in.

Every step of every sampler (these, and the multistep solvers of solvers.py) is the same
affine update with per-step scalars:

    x̂₀     = (x_t − s₁·ε) / s₀                  s₀ = √ᾱ_t, s₁ = √(1 − ᾱ_t)     (predict x_0 from ε)
    x̂₀     = clip(x̂₀, −c, c)                    only if clip_sample is set
    x_c    = (1 + q_x)·x_t + q₀·x̂₀ + Σ_k q_k·H_k + q_p·P                     (UniPC's corrector; x_t otherwise)
    x_prev = a·x̂₀ + b·x_c + c·ε + Σ_k h_k·H_k + σ·z                          z ~ N(0, I) from Philox (philox.py)

H_1, H_2, H_3 are the x̂₀ of the three previous steps (a history ring) and P the previous step's
corrected sample x_c; a step stores its own x̂₀ and x_c for the next ones where its `keep` flags
say so.  A sampler whose history is ε instead (iPNDM, an Adams-Bashforth method in ε) stores the
step's ε in the ring: the model's ε, or with clipping the ε its clipped x̂₀ implies, (x_t − s₀ x̂₀)/s₁.
A sampler only computes the table of these scalars once; `apply_update` applies a row.
DDIM and DDPM rows have zeros in every history column.  The fused CUDA kernel
(kernels/update_step.h) implements exactly `apply_update`, so one kernel serves every sampler.
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
from tqdm.auto import tqdm

from ddpmrt.engine import checks
from ddpmrt.engine.checks import as_images, check_int, shown
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.philox import STREAM_INITIAL, STREAM_STEP, gaussian_noise
from ddpmrt.engine.sampler_options import (
    TIMESTEPS,
    TIMESTEPS_RULE,
    Option,
    as_number,
    choice,
    clip_option,
    real,
    resolve,
)
from ddpmrt.engine.schedule import NoiseSchedule

SPACINGS = ("leading", "trailing", "linspace", "quad")
# The step-count limit, stated one way by the samplers, the command line and the server.
STEPS_RULE = "the number of steps must be an integer from 1 to the model's training timesteps"
# What `ddpmrt sample` and `ddpmrt report` use unless told: the best spacing measured, by mean
# rank of FID and of the exact Gaussian W2 over 21 sampler settings on the shipped digits model, two seeds
# (benchmarks/results/cpu-digits-spacings/, `report --spacing leading,trailing,linspace`).
# It is also diffusers' default, so the sampler classes share it.
DEFAULT_SPACING = "leading"

# Columns of a coefficient table (kernels/update_step.h reads the same layout).
S0, S1, A, B, C, SIGMA, H1, H2, H3, QX, Q0, Q1, Q2, Q3, QP, KEEP = range(16)
COEFFS_PER_STEP = 16
HISTORY = 3             # previous x̂₀ a step may read (UniPC-3's corrector reads three)
KEEP_X0 = 1             # KEEP flags: the step's x̂₀ enters the history ring,
KEEP_CORRECTED = 2      # its corrected sample x_c becomes the next step's P,
KEEP_EPS = 4            # or (instead of x̂₀) its ε enters the ring


def coefficient_table(num_steps: int, **columns) -> np.ndarray:
    """A (num_steps, 16) float64 table with the named columns (s0=..., a=...) set, zeros elsewhere."""
    table = np.zeros((num_steps, COEFFS_PER_STEP))
    names = {"s0": S0, "s1": S1, "a": A, "b": B, "c": C, "sigma": SIGMA, "h1": H1, "h2": H2, "h3": H3, "qx": QX,
             "q0": Q0, "q1": Q1, "q2": Q2, "q3": Q3, "qp": QP, "keep": KEEP}
    for name, values in columns.items():
        table[:, names[name]] = values
    return table


class History:
    """What a multistep sampler carries between steps: the last three x̂₀ (newest first; iPNDM's: ε) and the
    corrected sample."""

    def __init__(self):
        self.x0: list[np.ndarray | None] = [None] * HISTORY
        self.corrected: np.ndarray | None = None

    def read(self, k: int, shape) -> np.ndarray:
        """H_k (k = 1..3); zeros before that many steps ran (their weight is zero there)."""
        value = self.x0[k - 1]
        return np.zeros(shape, np.float32) if value is None else value


def trailing_timesteps(num_train_timesteps: int, num_steps: int) -> np.ndarray:
    """diffusers' "trailing" spacing, round(arange(T, 0, −T/S)) − 1, with exactly S values for every S.

    arange's length is ceil(T / (T/S)) in floating point, which is S + 1 for 62 of the S in 1..1000 at
    T = 1000 (61, 103, 121, ...; diffusers then returns a timestep of −1).  NumPy fills arange as
    start + k·δ with δ = (start + step) − start, so computing those first S elements the same way
    gives arange's values bit for bit where it was right (a value on .5 rounds the same way).
    The values are about T/S ≥ 1 apart before rounding, so they stay distinct, and the last is ≥ 0.
    """
    T, S = num_train_timesteps, num_steps
    delta = (T + (-T / S)) - T
    return (np.round(T + np.arange(S) * delta) - 1).astype(np.int64)


def make_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading") -> np.ndarray:
    """Descending int64 timesteps in [0, T-1], as in diffusers' `timestep_spacing`.

    leading:  arange(S) · (T // S), reversed              (DDPM/DDIM papers, diffusers' default)
    trailing: round(arange(T, 0, −T/S)) − 1               (always starts at T − 1)
    linspace: round(linspace(0, T − 1, S)), reversed
    quad:     floor(linspace(0, √(0.8 T), S)²), reversed  (DDIM paper's CIFAR-10 choice)
    """
    T = num_train_timesteps
    if isinstance(num_steps, (bool, np.bool_)) or not isinstance(num_steps, numbers.Integral) or not 1 <= num_steps <= T:
        raise UserError(f"{STEPS_RULE} ({T}), got {shown(num_steps)}")
    S = int(num_steps)
    if spacing == "leading":
        ts = np.arange(S) * (T // S)
    elif spacing == "trailing":
        ts = trailing_timesteps(T, S)
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, S))
    elif spacing == "quad":
        ts = np.floor(np.linspace(0, np.sqrt(T * 0.8), S) ** 2)
    else:
        raise UserError(f"unknown spacing {shown(spacing)}; choose one of {', '.join(SPACINGS)}")
    ts = np.unique(ts.astype(np.int64))[::-1]  # descending; drops repeats of tiny spacings
    if ts.size != S:
        raise UserError(f"spacing {shown(spacing)} gives only {ts.size} distinct timesteps for {S} steps; "
                        "use fewer steps or another spacing")
    return np.ascontiguousarray(ts)


def apply_update(x_t: np.ndarray, eps: np.ndarray, coeffs: np.ndarray, clip_sample: float | None,
                 noise: np.ndarray | None, history: History | None = None) -> np.ndarray:
    """One sampler step from a coefficient row; float32 in, float32 out.

    `history` carries the previous steps' x̂₀ and corrected sample; rows that read it need it,
    and it is updated in place as the row's KEEP flags say.  A row of 6 (s₀, s₁, a, b, c, σ) is a
    DDIM/DDPM row without history columns.
    """
    row = np.zeros(COEFFS_PER_STEP, np.float64)
    row[:len(coeffs)] = coeffs
    k = row.astype(np.float32)
    x_t = np.asarray(x_t, np.float32)
    eps = np.asarray(eps, np.float32)
    # 1. x̂₀ = (x_t − s₁ ε)/s₀, clipped where asked.
    x0 = (x_t - k[S1] * eps) / k[S0]
    if clip_sample is not None:
        x0 = np.clip(x0, -clip_sample, clip_sample)
    reads_history = bool(np.any(row[[H1, H2, H3, Q1, Q2, Q3, QP]] != 0))
    if (reads_history or row[KEEP]) and history is None:
        raise ValueError("this step reads or keeps earlier steps' x̂₀ (a multistep sampler): pass its history")
    # 2. The corrected sample (UniPC's corrector), x_t itself for every other sampler.
    x_c = x_t
    if np.any(row[[QX, Q0, Q1, Q2, Q3, QP]] != 0):
        x_c = (np.float32(1) + k[QX]) * x_t + k[Q0] * x0 + k[QP] * (history.corrected if history.corrected is not None
                                                                    else np.zeros_like(x_t))
        for j, col in enumerate((Q1, Q2, Q3), start=1):
            if row[col]:
                x_c = x_c + k[col] * history.read(j, x_t.shape)
    # 3. The step: x_prev = a x̂₀ + b x_c + c ε + Σ h_k H_k + σ z.
    x_prev = k[A] * x0 + k[B] * x_c + k[C] * eps
    for j, col in enumerate((H1, H2, H3), start=1):
        if row[col]:
            x_prev = x_prev + k[col] * history.read(j, x_t.shape)
    if k[SIGMA] > 0:
        if noise is None:
            raise ValueError("this step adds noise (sigma > 0): pass noise")
        x_prev = x_prev + k[SIGMA] * np.asarray(noise, np.float32)
    # 4. What later steps read.
    keep = int(row[KEEP])
    if keep & KEEP_X0:
        history.x0 = [x0.astype(np.float32, copy=False), *history.x0[:HISTORY - 1]]
    elif keep & KEEP_EPS:
        kept = eps if clip_sample is None else (x_t - k[S0] * x0) / k[S1]
        history.x0 = [np.array(kept, np.float32), *history.x0[:HISTORY - 1]]
    if keep & KEEP_CORRECTED:
        history.corrected = np.array(x_c, np.float32)  # a copy: x_c may be the caller's x_t, which it may overwrite
    return x_prev.astype(np.float32, copy=False)


@contextlib.contextmanager
def _no_stage(name: str):
    yield


def explicit_timesteps(values, num_train_timesteps: int, num_steps: int | None = None) -> np.ndarray:
    """Timesteps given as data (diffusers' `timesteps=`), checked: strictly decreasing integers in
    [0, T − 1], as many as `num_steps` where that is given."""
    T = num_train_timesteps
    ts = np.asarray(values, dtype=np.int64)
    if ts.ndim != 1 or not 1 <= ts.size <= T or ts.min() < 0 or ts.max() > T - 1 or np.any(np.diff(ts) >= 0):
        raise UserError(f"{TIMESTEPS_RULE} (T = {T}), got {shown(list(map(int, ts.ravel())))}")
    if num_steps is not None and num_steps != ts.size:
        raise UserError(f"{ts.size} timesteps for {shown(num_steps)} steps: give one timestep per step, "
                        "or leave the number of steps out")
    return np.ascontiguousarray(ts)


def spacing_option(default: str, spacings: tuple[str, ...]) -> Option:
    return Option("spacing", default, f"where the steps go: {', '.join(spacings)} (diffusers' timestep_spacing), "
                  "or tuned: the model's own, from ddpmrt tune",
                  check=choice("spacing", spacings))


class Sampler:
    """Shared loop: subclasses fill `self.coefficients` (one row per step, coefficient_table's layout).

    A subclass declares NAME, STEPS (its default number of steps) and OPTIONS (sampler_options.Option:
    every keyword it takes, with its default and check); the constructor, `config`, the factory, the
    command line, the server and report specs all read them.  Every sampler takes `timesteps`: an
    explicit descending list used instead of the spacing (`self.spacing` is then None).
    """

    NAME = ""
    STEPS = 50
    OPTIONS: tuple[Option, ...] = ()

    def __init__(self, schedule: NoiseSchedule, num_steps: int | None = None, **options):
        self.schedule = schedule
        explicit = options.get("timesteps") is not None
        if explicit and options.get("spacing") is not None:
            raise UserError("give timesteps or a spacing, not both: explicit timesteps replace the spacing")
        for name, value in resolve(self.OPTIONS, options, self.NAME).items():
            setattr(self, name, value)
        T = schedule.num_train_timesteps
        if explicit:
            self.timesteps = explicit_timesteps(self.timesteps, T, num_steps)
            self.spacing = None
        else:
            self.timesteps = self.spaced_timesteps(T, self.STEPS if num_steps is None else num_steps)
        self.num_steps = len(self.timesteps)
        self._prepare()
        abar = schedule.alphas_cumprod
        # ᾱ of each step's timestep and of the previous (next-in-table) one; 1 after the last.
        self.alpha_bar = abar[self.timesteps]
        self.alpha_bar_prev = np.append(abar[self.timesteps[1:]], 1.0)
        self.coefficients = self._coefficients()  # (num_steps, 16) float64

    @property
    def config(self) -> dict:
        """The sampler and every option's value (what reproduces it: make_sampler(**config) less "sampler")."""
        config = {"sampler": self.NAME, "num_steps": self.num_steps}
        for option in self.OPTIONS:
            value = getattr(self, option.name)
            config[option.name] = list(value) if isinstance(value, tuple) else value
        config["timesteps"] = [int(t) for t in self.timesteps] if self.spacing is None else None
        return config

    def spaced_timesteps(self, num_train_timesteps: int, num_steps: int) -> np.ndarray:
        return make_timesteps(num_train_timesteps, num_steps, self.spacing)

    def _prepare(self) -> None:
        """Checks of options against the steps, and per-step values the coefficients need (the solvers')."""

    def _coefficients(self) -> np.ndarray:
        raise NotImplementedError

    def step(self, x_t: np.ndarray, eps: np.ndarray, i: int, noise: np.ndarray | None = None,
             history: History | None = None) -> np.ndarray:
        """One update at timesteps[i]; `noise` is needed where σ_i > 0, `history` by multistep samplers."""
        i = check_int(i, "the step index", 0, self.num_steps - 1)
        x_t = as_images(x_t, "x_t")
        eps = as_images(eps, "eps", x_t.shape)
        if noise is not None:
            noise = as_images(noise, "noise", x_t.shape)
        elif self.coefficients[i, SIGMA] > 0:
            raise UserError(f"step {i} adds noise (sigma > 0): pass noise of shape {x_t.shape}")
        return apply_update(x_t, eps, self.coefficients[i], self.clip_sample, noise, history)

    def sample(self, model, shape, seed: int = 0, x_T: np.ndarray | None = None, progress: bool = True,
               image_indices=None, stage=None) -> np.ndarray:
        """Run the whole reverse process; returns float32 images in the model's space: about [-1, 1], slightly
        beyond it where x̂₀ is not clipped (clip_sample); images.to_uint8 clips when it converts.

        `model(x_t, t)` takes float32 NCHW and int64 (N,) timesteps and returns ε.
        Noise comes from philox.gaussian_noise keyed by (seed, image index, step), so image k
        is the same whether generated alone (image_indices=[k]) or in a batch.  `seed` may also
        hold one seed per image: a batch of several requests then gives each request exactly the
        images it would get alone.
        `stage(name)`, if given, returns a context manager wrapped around each "network" call
        and each "update" (noise and step): the profiler's hook.

        A GPU model (one whose `device_loop` is not None: TensorRT, torch on CUDA) runs the whole
        loop on the device with the fused kernel (engine/gpu/device_loop.py), per-image seeds and
        image indices included, unless a stage hook asks for per-step host timing.
        """
        n, image_shape = checks.sample_shape(shape, getattr(model, "image_shape", None))
        seed = checks.seeds(seed, n)
        image_indices = checks.image_indices(np.arange(n) if image_indices is None else image_indices, n)
        if x_T is not None:
            x_T = as_images(x_T, "x_T", (n, *image_shape))
        if hasattr(model, "check_batch"):  # engines with fixed batch ranges say so before any work
            model.check_batch(n)
        loop = getattr(model, "device_loop", None) if stage is None else None
        if loop is not None:
            return loop.sample(self, n, seed=seed, image_indices=image_indices, x_T=x_T)
        stage = stage or _no_stage
        x = gaussian_noise(seed, image_indices, 0, STREAM_INITIAL, image_shape) if x_T is None else x_T.copy()
        history = History()
        for i in tqdm(range(self.num_steps), desc=type(self).__name__, disable=not progress, leave=False):
            t = np.full(n, self.timesteps[i], dtype=np.int64)
            with stage("network"):
                eps = np.asarray(model(x, t), dtype=np.float32)
            with stage("update"):
                if not np.isfinite(eps).all():
                    raise UserError(f"the model returned NaN or Inf at step {i} (t = {self.timesteps[i]}); "
                                    "an fp16 model may overflow here: try the fp32 model or engine")
                noise = None
                if self.coefficients[i, SIGMA] > 0:
                    noise = gaussian_noise(seed, image_indices, i, STREAM_STEP, image_shape)
                x = self.step(x, eps, i, noise, history)
        return x


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2020, eq. 12), η = 0 deterministic, η = 1 DDPM-like."""

    NAME, STEPS = "ddim", 50
    OPTIONS = (Option("eta", 0.0, "η in [0, 10]: 0 deterministic, 1 DDPM-like", check=real("eta", 0.0, 10.0),
                      parse=as_number),
               spacing_option(DEFAULT_SPACING, SPACINGS), clip_option(None), TIMESTEPS)

    def _coefficients(self) -> np.ndarray:
        abar, abar_prev = self.alpha_bar, self.alpha_bar_prev
        # 1. x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t                                    (eq. 12, "predicted x_0")
        s0, s1 = np.sqrt(abar), np.sqrt(1 - abar)
        # 2. σ_t(η) = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)                (eq. 16)
        sigma = self.eta * np.sqrt((1 - abar_prev) / (1 - abar)) * np.sqrt(1 - abar / abar_prev)
        # 3. x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε + σ z                 (eq. 12)
        a = np.sqrt(abar_prev)
        c = np.sqrt(np.clip(1 - abar_prev - sigma ** 2, 0.0, None))
        return coefficient_table(self.num_steps, s0=s0, s1=s1, a=a, c=c, sigma=sigma)


class DDPMSampler(Sampler):
    """Ancestral DDPM (Ho et al. 2020, eq. 6-7), respaced when num_steps < T."""

    VARIANCES = ("fixed_small", "fixed_large")
    NAME, STEPS = "ddpm", 50
    OPTIONS = (Option("variance", "fixed_small", "the posterior variance: fixed_small (β̃) or fixed_large (β)",
                      check=choice("variance", VARIANCES)),
               spacing_option(DEFAULT_SPACING, SPACINGS), clip_option(1.0), TIMESTEPS)

    def _coefficients(self) -> np.ndarray:
        abar, abar_prev = self.alpha_bar, self.alpha_bar_prev
        # 1. Respaced betas: β'_t = 1 − ᾱ_t / ᾱ_prev (= β_t when every timestep is used).
        beta = 1 - abar / abar_prev
        # 2. x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t                                        (eq. 15)
        s0, s1 = np.sqrt(abar), np.sqrt(1 - abar)
        # 3. Posterior mean μ̃ = √ᾱ_prev β'/(1−ᾱ_t) x̂₀ + √(1−β') (1−ᾱ_prev)/(1−ᾱ_t) x_t   (eq. 7)
        a = np.sqrt(abar_prev) * beta / (1 - abar)
        b = np.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
        # 4. σ² = β̃ = (1−ᾱ_prev)/(1−ᾱ_t) β' (fixed_small) or β' (fixed_large); no noise at the last step.
        var = (1 - abar_prev) / (1 - abar) * beta if self.variance == "fixed_small" else beta.copy()
        var[-1] = 0.0
        return coefficient_table(self.num_steps, s0=s0, s1=s1, a=a, b=b, sigma=np.sqrt(var))
