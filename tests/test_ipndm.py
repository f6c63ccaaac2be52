"""iPNDM in the coefficient form against an independent Adams-Bashforth solve, DDIM, and the exact Gaussian oracle."""

import numpy as np
import pytest

from ddpmrt.engine import NoiseSchedule, make_sampler
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.gaussian import GaussianData, w2_gaussian
from ddpmrt.engine.samplers import KEEP_EPS, History, apply_update, coefficient_table
from ddpmrt.engine.solvers import IPNDMSampler

SCHEDULE = NoiseSchedule.linear(1000)
# Adams-Bashforth for equal steps, written out here independently of engine/solvers.py.
WEIGHTS = [[1.0], [1.5, -0.5], [23 / 12, -4 / 3, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -3 / 8]]


def model(x, t):
    """A deterministic stand-in network: smooth in x, different at every timestep."""
    return (0.4 * np.tanh(x) + 0.3 * np.cos(t / 150.0)[:, None, None, None] * np.sin(3 * x)).astype(np.float32)


def reference(timesteps, order, x_T):
    """dx̄/dσ̃ = ε with x̄ = x/α, σ̃ = σ/α, by Adams-Bashforth in float64, warm-started by lower orders."""
    abar = SCHEDULE.alphas_cumprod[np.asarray(timesteps)]
    alpha = np.sqrt(abar)
    sigma_bar = np.append(np.sqrt(1 - abar) / alpha, 0.0)
    x_bar, eps_seen = x_T.astype(np.float64) / alpha[0], []
    for i, t in enumerate(timesteps):
        eps_seen.insert(0, model((x_bar * alpha[i]).astype(np.float32), np.full(len(x_bar), t)).astype(np.float64))
        w = WEIGHTS[min(order, len(eps_seen)) - 1]
        x_bar = x_bar + (sigma_bar[i + 1] - sigma_bar[i]) * sum(c * e for c, e in zip(w, eps_seen))
    return x_bar


def x_T(shape=(3, 2, 4, 4)):
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("steps,spacing", [(5, "linspace"), (10, "trailing"), (25, "leading")])
def test_ipndm_matches_an_adams_bashforth_solve(order, steps, spacing):
    sampler = make_sampler("ipndm", SCHEDULE, steps, order=order, spacing=spacing, clip_sample=0)
    got = sampler.sample(model, x_T().shape, x_T=x_T(), progress=False)
    want = reference(sampler.timesteps, order, x_T())
    assert np.abs(got - want).max() < 2e-4 * max(1.0, np.abs(want).max())


def test_ipndm_order_1_is_ddim():
    ts = [999, 700, 420, 200, 60, 5]
    ipndm = make_sampler("ipndm", SCHEDULE, order=1, timesteps=ts, clip_sample=0).sample(model, (3, 2, 4, 4),
                                                                                             x_T=x_T(), progress=False)
    ddim = make_sampler("ddim", SCHEDULE, timesteps=ts, clip_sample=0).sample(model, (3, 2, 4, 4), x_T=x_T(),
                                                                              progress=False)
    np.testing.assert_allclose(ipndm, ddim, rtol=1e-5, atol=1e-5)


def test_ipndm_gaussian_moments_are_exact():
    """predicted_moments propagates the ε ring (KEEP_EPS): it equals the moments of the affine map x_T -> x_0,
    read off by running the sampler on x_T = 0 and the unit vectors."""
    data = GaussianData.random((2, 2, 2), SCHEDULE, seed=3)
    sampler = make_sampler("ipndm", SCHEDULE, 8, order=4, clip_sample=0)
    basis = np.vstack([np.zeros(8), np.eye(8)]).reshape(9, 2, 2, 2).astype(np.float32)
    out = sampler.sample(data, basis.shape, x_T=basis, progress=False).reshape(9, 8).astype(np.float64)
    linear = (out[1:] - out[0]).T
    mean, cov = data.predicted_moments(sampler)
    np.testing.assert_allclose(mean, out[0], atol=1e-5)
    np.testing.assert_allclose(cov, linear @ linear.T, atol=1e-5)
    # And it is the better solver there at 8 calls, as benchmarks/results/cpu-ipndm-gaussian/ measured.
    dpm = make_sampler("dpmsolver", SCHEDULE, 8, order=3, clip_sample=0)
    assert w2_gaussian(mean, cov, data.mean, data.cov) < w2_gaussian(*data.predicted_moments(dpm), data.mean, data.cov)


def test_the_eps_ring_holds_the_eps_of_the_clipped_x0():
    row = coefficient_table(1, s0=0.6, s1=0.8, a=0.5, b=0.5, keep=KEEP_EPS)[0]
    x = np.array([[[[2.0, -0.1]]]], np.float32)
    eps = np.array([[[[0.5, 0.2]]]], np.float32)
    history = History()
    apply_update(x, eps, row, None, None, history)
    np.testing.assert_array_equal(history.x0[0], eps)           # unclipped: the model's ε
    apply_update(x, eps, row, 1.0, None, history)
    x0 = np.clip((x - 0.8 * eps) / 0.6, -1, 1)
    np.testing.assert_allclose(history.x0[0], (x - 0.6 * x0) / 0.8, rtol=1e-6)   # clipped: the ε it implies
    np.testing.assert_array_equal(history.x0[1], eps)


@pytest.mark.parametrize("options,fragment", [({"order": 5}, "order must be an integer from 1 to 4"),
                                              ({"order": 4, "steps": 3}, "order 4 needs at least 4 steps"),
                                              ({"eta": 0.5}, "the ipndm sampler takes no eta")])
def test_bad_ipndm_options_are_one_line(options, fragment):
    steps = options.pop("steps", 10)
    with pytest.raises(UserError, match=fragment):
        IPNDMSampler(SCHEDULE, steps, **options)
