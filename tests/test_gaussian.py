"""Closed-form check: on Gaussian data with the optimal ε, samplers reproduce the data distribution."""

import numpy as np
import pytest

from ddpmrt.engine import DDIMSampler, DDPMSampler, NoiseSchedule
from ddpmrt.engine.gaussian import GaussianData, empirical_moments, w2_gaussian
from ddpmrt.engine.solvers import DPMSolverSampler, UniPCSampler

SCHEDULE = NoiseSchedule.linear(1000)
SHAPE = (2, 2, 2)  # 8 dimensions


@pytest.fixture(scope="module")
def data():
    return GaussianData.random(SHAPE, SCHEDULE, seed=3)


def test_optimal_eps_is_the_posterior_mean_of_the_noise(data):
    # Monte Carlo: E[ε | x_t] estimated by regression on simulated pairs matches ε*.
    rng = np.random.default_rng(0)
    t = 400
    x0 = data.sample_data(200_000, seed=1).reshape(200_000, -1).astype(np.float64)
    eps = rng.standard_normal(x0.shape)
    abar = SCHEDULE.alphas_cumprod[t]
    xt = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    design = np.hstack([xt, np.ones((len(xt), 1))])
    coef, *_ = np.linalg.lstsq(design, eps, rcond=None)
    m_op, m = data._eps_operator(t)
    np.testing.assert_allclose(coef[:-1].T, m_op, atol=0.01)
    np.testing.assert_allclose(coef[-1], m, atol=0.01)


@pytest.mark.parametrize("sampler", [DDIMSampler(SCHEDULE, 20), DDIMSampler(SCHEDULE, 20, eta=1.0),
                                     DDPMSampler(SCHEDULE, 50, clip_sample=None),
                                     DPMSolverSampler(SCHEDULE, 10, order=3), UniPCSampler(SCHEDULE, 8, order=3),
                                     UniPCSampler(SCHEDULE, 6, order=2, variant="bh1", spacing="trailing")],
                         ids=["ddim20", "ddim20-eta1", "ddpm50", "dpmsolver3-10", "unipc3-8", "unipc2-bh1-6"])
def test_samples_follow_the_predicted_distribution(data, sampler):
    n = 8192
    samples = sampler.sample(data, (n, *SHAPE), seed=0, progress=False)
    mean, cov = empirical_moments(samples)
    p_mean, p_cov = data.predicted_moments(sampler)
    # Sampling error of n draws: ~ sqrt(var / n) for the mean, ~ var·sqrt(2/n) for the covariance.
    scale = np.sqrt(np.diag(p_cov))
    assert np.all(np.abs(mean - p_mean) < 5 * scale / np.sqrt(n))
    assert np.max(np.abs(cov - p_cov)) < 6 * np.max(np.diag(p_cov)) * np.sqrt(2 / n)


def test_error_shrinks_with_steps(data):
    w2 = {}
    for steps in (2, 5, 10, 50, 250):
        p_mean, p_cov = data.predicted_moments(DDIMSampler(SCHEDULE, steps))
        w2[steps] = w2_gaussian(p_mean, p_cov, data.mean, data.cov)
    values = [w2[s] for s in sorted(w2)]
    assert all(a > b for a, b in zip(values, values[1:])), w2
    assert w2[250] < 0.02 and w2[2] > 5 * w2[50]
    # Full ancestral DDPM with 1000 steps is (near) exact too.
    p_mean, p_cov = data.predicted_moments(DDPMSampler(SCHEDULE, 1000, clip_sample=None))
    assert w2_gaussian(p_mean, p_cov, data.mean, data.cov) < 0.02


def test_w2_closed_form():
    cov = np.diag([1.0, 4.0])
    # Same covariance: W2 is the mean distance; same mean: sum of (sqrt differences)² for diagonal.
    assert w2_gaussian(np.zeros(2), cov, np.array([3.0, 4.0]), cov) == pytest.approx(5.0)
    assert w2_gaussian(np.zeros(2), cov, np.zeros(2), np.eye(2)) == pytest.approx(1.0)


def test_multistep_moments_are_those_of_the_recursion(data):
    # The oracle's joint-state propagation against the same recursion run on the exact mean: a
    # deterministic sampler maps x_T = μ_T + L ξ affinely, so pushing the mean and d basis vectors
    # through the NumPy loop gives the mean and covariance without sampling error.
    from ddpmrt.engine.samplers import History

    for sampler in (DPMSolverSampler(SCHEDULE, 7, order=3), UniPCSampler(SCHEDULE, 7, order=3)):
        d = data.dim
        starts = np.vstack([np.zeros((1, d)), np.eye(d)]).astype(np.float64)
        x, history = starts.reshape(-1, *SHAPE).astype(np.float32), History()
        for i, t in enumerate(sampler.timesteps):
            x = sampler.step(x, data(x, np.full(len(x), t)), i, history=history)
        out = x.reshape(len(x), -1).astype(np.float64)
        mean, columns = out[0], out[1:] - out[0]
        p_mean, p_cov = data.predicted_moments(sampler)
        np.testing.assert_allclose(mean, p_mean, atol=1e-4)
        np.testing.assert_allclose(columns.T @ columns, p_cov, atol=1e-4)


def test_multistep_solvers_beat_ddim_at_equal_network_calls(data):
    def w2(sampler):
        p_mean, p_cov = data.predicted_moments(sampler)
        return w2_gaussian(p_mean, p_cov, data.mean, data.cov)

    for calls in (10, 20):
        ddim = w2(DDIMSampler(SCHEDULE, calls))
        for sampler in (DPMSolverSampler(SCHEDULE, calls, order=2), UniPCSampler(SCHEDULE, calls, order=2)):
            assert w2(sampler) < 0.8 * ddim, (calls, type(sampler).__name__)
