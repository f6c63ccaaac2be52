"""Few-step multistep solvers in the one coefficient form: DPM-Solver++, UniPC and iPNDM.

DPM-Solver++ and UniPC solve the diffusion ODE in data prediction (x̂₀) with the exponential
integrator, and reuse the x̂₀ of earlier steps instead of extra network calls (iPNDM: the ε of earlier
steps, by Adams-Bashforth): one call per step, 2.5-5x fewer steps than DDIM for the same images.
Every step is still the affine update of samplers.py: here each row combines the step's x̂₀ with up
to three earlier ones (the history columns h₁..h₃; iPNDM's hold ε) and, for UniPC's corrector, the
previous corrected sample (q-columns), so the NumPy loop, the fused kernel and the exact Gaussian
oracle run them unchanged.

    DPMSolverSampler   DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095), multistep, orders 1-3
    UniPCSampler       UniPC (Zhao et al. 2023, arXiv:2302.04867): the UniP predictor, and the UniC
                       corrector that reuses the next step's network output (no extra call)
    IPNDMSampler       iPNDM (Zhang & Chen 2022, arXiv:2204.13902): Adams-Bashforth on ε in x/α and σ/α,
                       orders 1-4; its history holds earlier ε instead of x̂₀ (KEEP_EPS)

Timesteps, orders and coefficients follow diffusers' DPMSolverMultistepScheduler(algorithm_type=
"dpmsolver++", final_sigmas_type="zero") and UniPCMultistepScheduler(predict_x0=True,
final_sigmas_type="zero"); tests/test_solvers.py checks whole trajectories against both.  In the
notation of those schedulers, with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) and λ_t = log(α_t/σ_t):

    h = λ_next − λ_now,  φ = e^{−h} − 1,  x_next = (σ_next/σ_now)·x − α_next·φ·D₀ + (higher orders: D₁, D₂ of x̂₀)

and the last step goes to σ = 0, where it is x̂₀ itself.
"""

from __future__ import annotations

import numpy as np

from ddpmrt.engine.checks import check_int, shown
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.sampler_options import (
    TIMESTEPS,
    Option,
    as_int,
    as_ints,
    as_switch,
    choice,
    clip_option,
    integer,
    integers,
    switch,
)
from ddpmrt.engine.samplers import (
    KEEP_CORRECTED,
    KEEP_EPS,
    KEEP_X0,
    Sampler,
    coefficient_table,
    spacing_option,
    trailing_timesteps,
)

SOLVER_SPACINGS = ("linspace", "leading", "trailing")
ORDERS = (1, 2, 3)


def solver_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "linspace") -> np.ndarray:
    """Descending timesteps as diffusers' multistep schedulers compute them (their linspace excludes t = 0).

    linspace: round(linspace(0, T − 1, S + 1)), reversed, without the last (t = 0)
    leading:  arange(S + 1) · (T // (S + 1)), reversed, without the last
    trailing: round(arange(T, 0, −T/S)) − 1
    """
    T = num_train_timesteps
    S = check_int(num_steps, "number of steps", 1, T)
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, S + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(0, S + 1) * (T // (S + 1))).round()[::-1][:-1]
    elif spacing == "trailing":
        ts = trailing_timesteps(T, S)
    else:
        raise UserError(f"unknown spacing {shown(spacing)} for a multistep solver; choose one of {', '.join(SOLVER_SPACINGS)}")
    ts = ts.astype(np.int64)
    if len(np.unique(ts)) != S or ts.min() < 0:
        raise UserError(f"spacing {shown(spacing)} gives only {len(np.unique(ts[ts >= 0]))} distinct timesteps for {S} steps; "
                        "use fewer steps or another spacing")
    return np.ascontiguousarray(ts)


ORDER = Option("order", 2, "solver order 1-3 (diffusers' solver_order; ipndm 1-4)", check=integer("order", 1, 3), parse=as_int)
_INDICES = integers("disable_corrector", "a list of step indices (integers from 0)")


def _step_indices(value) -> tuple[int, ...]:
    return tuple(sorted({check_int(i, "every step of disable_corrector", 0, 10 ** 6) for i in _INDICES(value)}))


LOWER_ORDER_FINAL = Option("lower_order_final", True, "the last steps run lower orders (stabler at few steps)",
                           check=switch("lower_order_final"), parse=as_switch)


class MultistepSampler(Sampler):
    """What DPM-Solver++ and UniPC share: the order, timesteps, and α, σ, λ of every step."""

    STEPS = 20

    def spaced_timesteps(self, num_train_timesteps: int, num_steps: int) -> np.ndarray:
        return solver_timesteps(num_train_timesteps, num_steps, self.spacing)

    def _prepare(self) -> None:
        if self.num_steps < self.order:
            raise UserError(f"order {self.order} needs at least {self.order} steps (the first steps run lower orders "
                            f"while the history fills), got {self.num_steps}; use more steps or order {self.num_steps}")
        abar = self.schedule.alphas_cumprod[self.timesteps]
        # α, σ of every step's timestep, then of σ = 0 after the last (final_sigmas_type="zero").
        self.alpha = np.append(np.sqrt(abar), 1.0)
        self.sigma = np.append(np.sqrt(1 - abar), 0.0)
        with np.errstate(divide="ignore"):
            self.lam = np.log(self.alpha) - np.log(self.sigma)  # λ = +∞ at σ = 0

    def _x0_columns(self) -> dict:
        """x̂₀ = (x_t − σ_t ε)/α_t at every step; every step keeps it for the next ones."""
        return {"s0": self.alpha[:-1], "s1": self.sigma[:-1], "keep": KEEP_X0}


class DPMSolverSampler(MultistepSampler):
    """Multistep DPM-Solver++ (data prediction), orders 1-3; diffusers' DPMSolverMultistepScheduler.

    order:             1, 2 or 3 (diffusers' solver_order); the first steps run lower orders while the
                       history fills, and the last step (to σ = 0) is first order
    solver_type:       midpoint or heun, for order 2 (order 3 has one form)
    lower_order_final: with fewer than 15 steps, the second-to-last step runs at most order 2 (stabler)
    """

    SOLVER_TYPES = ("midpoint", "heun")
    NAME = "dpmsolver"
    OPTIONS = (ORDER, Option("solver_type", "midpoint", "the second-order form: midpoint or heun",
                             check=choice("solver_type", SOLVER_TYPES)),
               spacing_option("linspace", SOLVER_SPACINGS), clip_option(None), LOWER_ORDER_FINAL, TIMESTEPS)

    def step_orders(self) -> list[int]:
        """The order of every step, as DPMSolverMultistepScheduler.step chooses it."""
        n, orders = self.num_steps, []
        for i in range(n):
            warmed = min(i, self.order)  # lower_order_nums: steps with an x̂₀ of their own before this one
            final = i == n - 1           # final_sigmas_type="zero": the last step is first order
            second = i == n - 2 and self.lower_order_final and n < 15
            if self.order == 1 or warmed < 1 or final:
                orders.append(1)
            elif self.order == 2 or warmed < 2 or second:
                orders.append(2)
            else:
                orders.append(3)
        return orders

    def _coefficients(self) -> np.ndarray:
        alpha, sigma, lam = self.alpha, self.sigma, self.lam
        n = self.num_steps
        # Each step's update as weights on (x̂₀ now, x̂₀ one step back, x̂₀ two steps back) and on x.
        weights, ratio = np.zeros((n, 3)), np.zeros(n)
        e0, e1, e2 = np.eye(3)
        for i, order in enumerate(self.step_orders()):
            t, s0 = i + 1, i
            # 1. h = λ_t − λ_s0 and φ = e^{−h} − 1 (−1 on the last step, where h = ∞).
            h = lam[t] - lam[s0]
            phi = np.expm1(-h)
            ratio[i] = sigma[t] / sigma[s0]
            d0 = e0
            # 2. x_t = (σ_t/σ_s0) x − α_t φ D₀ + the order's terms (DPM-Solver++ paper, Alg. 2; diffusers' updates).
            w = -alpha[t] * phi * d0
            if order == 2:
                r0 = (lam[s0] - lam[s0 - 1]) / h
                d1 = (e0 - e1) / r0
                if self.solver_type == "midpoint":
                    w = w - 0.5 * alpha[t] * phi * d1
                else:
                    w = w + alpha[t] * (phi / h + 1.0) * d1
            elif order == 3:
                r0, r1 = (lam[s0] - lam[s0 - 1]) / h, (lam[s0 - 1] - lam[s0 - 2]) / h
                d1_0, d1_1 = (e0 - e1) / r0, (e1 - e2) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                w = w + alpha[t] * (phi / h + 1.0) * d1 - alpha[t] * ((phi + h) / h ** 2 - 0.5) * d2
            weights[i] = w
        return coefficient_table(n, **self._x0_columns(), a=weights[:, 0], b=ratio, h1=weights[:, 1],
                                 h2=weights[:, 2])


# Adams-Bashforth weights for equal steps, on ε of this step and of the 1-3 before it (newest first).
ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


class IPNDMSampler(MultistepSampler):
    """iPNDM: the "improved" pseudo-linear multistep method (Zhang & Chen, DEIS, arXiv:2204.13902), the base
    solver of GITS's and AMED's few-step figures.

    In x̄ = x/α and σ̃ = σ/α the diffusion ODE is dx̄/dσ̃ = ε, and iPNDM is Adams-Bashforth on it:

        x̄_next = x̄ + (σ̃_next − σ̃) · Σ_j c_j ε_{−j}

    with the equal-step weights of order min(order, steps so far + 1) (lower orders while the history
    fills; no Runge-Kutta start) whatever the spacing, as in the GITS and AMED code.  Order 1 is DDIM
    (η = 0) exactly.  The ring holds earlier ε instead of x̂₀ (KEEP_EPS); this step's ε enters through
    x̂₀, ε = (x − α x̂₀)/σ, so clip_sample acts on it as on the other solvers.

    order: 1 to 4 (4: GITS's and AMED's choice; 3 measured best here, benchmarks/results/cpu-ipndm-gaussian/)
    """

    NAME = "ipndm"
    OPTIONS = (Option("order", 3, "the Adams-Bashforth order 1-4", check=integer("order", 1, 4), parse=as_int),
               spacing_option("linspace", SOLVER_SPACINGS), clip_option(None), TIMESTEPS)

    def step_orders(self) -> list[int]:
        return [min(self.order, i + 1) for i in range(self.num_steps)]

    def _coefficients(self) -> np.ndarray:
        alpha, sigma = self.alpha, self.sigma
        sigma_bar = sigma / alpha                        # σ̃ = σ/α, 0 after the last step
        n = self.num_steps
        a, b, hist = np.zeros(n), np.zeros(n), np.zeros((n, 3))
        for i, order in enumerate(self.step_orders()):
            weights = ADAMS_BASHFORTH[order]
            # 1. x̄_next = x̄ + Δ Σ_j c_j ε_{−j}, Δ = σ̃_next − σ̃;  x = α x̄.
            scale = alpha[i + 1] * (sigma_bar[i + 1] - sigma_bar[i])
            # 2. This step's ε through x̂₀: c₀ ε = (c₀/σ) x − (c₀ α/σ) x̂₀.
            b[i] = alpha[i + 1] / alpha[i] + scale * weights[0] / sigma[i]
            a[i] = -scale * weights[0] * alpha[i] / sigma[i]
            # 3. Earlier ε from the ring.
            hist[i, :order - 1] = scale * np.array(weights[1:])
        return coefficient_table(n, s0=alpha[:-1], s1=sigma[:-1], a=a, b=b, h1=hist[:, 0], h2=hist[:, 1],
                                 h3=hist[:, 2], keep=KEEP_EPS)


def _unipc_system(rks: np.ndarray, hh: float, order: int, variant: str):
    """UniPC's order conditions (paper, Alg. 1; diffusers' bh updates): R ρ = b, with φ₁ = e^{hh} − 1."""
    h_phi_1 = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    b_h = hh if variant == "bh1" else np.expm1(hh)
    rows, rhs = [], []
    for i in range(1, order + 1):
        rows.append(rks ** (i - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return np.array(rows), np.array(rhs), h_phi_1, b_h


class UniPCSampler(MultistepSampler):
    """UniPC with data prediction: the UniP-p predictor and the UniC corrector; diffusers' UniPCMultistepScheduler.

    order:             predictor order 1, 2 or 3 (diffusers' solver_order)
    variant:           bh1 or bh2 (diffusers' solver_type): B(h) = h or e^h − 1
    corrector:         UniC after every step but the last: it reuses the next step's network output,
                       so it costs no extra call; False runs UniP alone
    disable_corrector: steps whose following correction is skipped (diffusers' list of step indices)
    lower_order_final: the last steps run lower orders (the last, to σ = 0, first order)
    """

    VARIANTS = ("bh1", "bh2")
    NAME = "unipc"
    OPTIONS = (ORDER, Option("variant", "bh2", "B(h) = h (bh1) or e^h - 1 (bh2), diffusers' solver_type",
                             check=choice("variant", VARIANTS)),
               Option("corrector", True, "the UniC corrector, which costs no network call", check=switch("corrector"),
                      parse=as_switch),
               Option("disable_corrector", (), "step indices whose following correction is skipped",
                      check=_step_indices, parse=as_ints, metavar="I,J,...", many=True),
               spacing_option("linspace", SOLVER_SPACINGS), clip_option(None), LOWER_ORDER_FINAL, TIMESTEPS)

    def step_orders(self) -> list[int]:
        """The predictor order of every step, as UniPCMultistepScheduler.step chooses it."""
        n = self.num_steps
        orders = []
        for i in range(n):
            order = min(self.order, n - i) if self.lower_order_final else self.order
            order = min(order, i + 1)  # warm-up: at most one more than the x̂₀ seen so far
            # The last step goes to σ = 0 (λ = ∞), where orders above 1 divide by ∞ (NaN in diffusers
            # with lower_order_final=False): the exact step there is x̂₀ itself, the first-order update.
            orders.append(1 if i == n - 1 else order)
        return orders

    def _corrects(self, i: int) -> bool:
        return self.corrector and i > 0 and (i - 1) not in self.disable_corrector

    def _coefficients(self) -> np.ndarray:
        alpha, sigma, lam = self.alpha, self.sigma, self.lam
        n, orders = self.num_steps, self.step_orders()
        table = coefficient_table(n, **self._x0_columns())
        table[:, 15] = KEEP_X0 | KEEP_CORRECTED
        for i in range(n):
            # Weights on (x̂₀ now, H₁, H₂, H₃) for the corrected sample and for the step.
            if self._corrects(i):
                # 1. UniC: correct the previous step's prediction x_i with this step's x̂₀ (no extra call):
                #    x_c = (σ_i/σ_{i−1}) P − α_i φ₁ H₁ − α_i B(h) (Σ_j ρ_j D_j + ρ_K (x̂₀ − H₁)),  D_j = (H_{j+1} − H₁)/r_j
                k = orders[i - 1]
                h = lam[i] - lam[i - 1]
                rks = np.array([(lam[i - 1 - j] - lam[i - 1]) / h for j in range(1, k)] + [1.0])
                rows, rhs, h_phi_1, b_h = _unipc_system(rks, -h, k, self.variant)
                rhos = np.array([0.5]) if k == 1 else np.linalg.solve(rows, rhs)
                q = np.zeros(4)  # on (x̂₀ now, H1, H2, H3)
                q[1] -= alpha[i] * h_phi_1
                for j in range(1, k):
                    q[j + 1] -= alpha[i] * b_h * rhos[j - 1] / rks[j - 1]
                    q[1] += alpha[i] * b_h * rhos[j - 1] / rks[j - 1]
                q[0] -= alpha[i] * b_h * rhos[-1]
                q[1] += alpha[i] * b_h * rhos[-1]
                table[i, 9:15] = [-1.0, q[0], q[1], q[2], q[3], sigma[i] / sigma[i - 1]]  # qx, q0, q1..q3, qp
            # 2. UniP: x_{i+1} = (σ_{i+1}/σ_i) x_c − α_{i+1} φ₁ x̂₀ − α_{i+1} B(h) Σ_j ρ_j (H_j − x̂₀)/r_j
            order = orders[i]
            h = lam[i + 1] - lam[i]
            w = np.zeros(4)  # on (x̂₀ now, H1, H2, H3)
            rks = np.array([(lam[i - j] - lam[i]) / h for j in range(1, order)] + [1.0])
            rows, rhs, h_phi_1, b_h = _unipc_system(rks, -h, order, self.variant)
            w[0] -= alpha[i + 1] * h_phi_1
            if order >= 2:
                rhos = np.array([0.5]) if order == 2 else np.linalg.solve(rows[:-1, :-1], rhs[:-1])
                for j in range(1, order):
                    w[j] -= alpha[i + 1] * b_h * rhos[j - 1] / rks[j - 1]
                    w[0] += alpha[i + 1] * b_h * rhos[j - 1] / rks[j - 1]
            table[i, 2] = w[0]                      # a
            table[i, 3] = sigma[i + 1] / sigma[i]   # b (on x_c)
            table[i, 6:9] = w[1:]                   # h1..h3
        return table
