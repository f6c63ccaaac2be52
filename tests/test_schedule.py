import numpy as np
import pytest

from ddpmrt.engine import NoiseSchedule


def test_linear_matches_closed_form():
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(s.betas), (0.02 - 1e-4) / 999, rtol=1e-9)
    # ᾱ_t = Π (1 − β_s), in closed form through logs.
    np.testing.assert_allclose(s.alphas_cumprod, np.exp(np.cumsum(np.log1p(-s.betas))), rtol=1e-12)


def test_cosine_matches_nichol_dhariwal():
    T, eps = 1000, 0.008
    s = NoiseSchedule.cosine(T)
    f = np.cos((np.arange(T + 1) / T + eps) / (1 + eps) * np.pi / 2) ** 2
    expected_abar = f[1:] / f[0]
    # Where no beta is capped, ᾱ_t equals f(t+1)/f(0) exactly.
    uncapped = np.cumprod(s.betas < 0.999).astype(bool)
    np.testing.assert_allclose(s.alphas_cumprod[uncapped], expected_abar[uncapped], rtol=1e-9)
    assert s.betas.max() <= 0.999 and s.betas[-1] == pytest.approx(0.999)


def test_betas_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    lin = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    cos = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    np.testing.assert_allclose(NoiseSchedule.linear(1000).betas, lin.betas.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(NoiseSchedule.cosine(1000).betas, cos.betas.double().numpy(), rtol=1e-5)
    # diffusers accumulates ᾱ in float32: compare to float32 precision.
    np.testing.assert_allclose(NoiseSchedule.cosine(1000).alphas_cumprod, cos.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(500, 2e-4, 0.03), NoiseSchedule.cosine(200),
                                      NoiseSchedule.from_betas(np.full(10, 0.1))])
def test_dict_round_trip(schedule):
    again = NoiseSchedule.from_dict(schedule.to_dict())
    np.testing.assert_array_equal(again.betas, schedule.betas)
    assert again.kind == schedule.kind


def test_rejects_bad_betas():
    with pytest.raises(ValueError, match="beta"):
        NoiseSchedule.from_betas([0.1, 1.2])


@pytest.mark.parametrize("T", [1000, 10, 37])
def test_trailing_spacing_has_every_step_count(T):
    # arange(T, 0, -T/S) holds S + 1 values in floating point for some S (62 of 1..1000 at T = 1000,
    # the first 61): both timestep functions used to refuse those counts.
    from ddpmrt.engine.samplers import make_timesteps
    from ddpmrt.engine.solvers import solver_timesteps

    for S in range(1, T + 1):
        reference = np.round(np.arange(T, 0, -T / S)) - 1  # diffusers' formula, right where it has S values
        for ts in (make_timesteps(T, S, "trailing"), solver_timesteps(T, S, "trailing")):
            assert ts.dtype == np.int64 and len(ts) == S, S
            assert ts[0] == T - 1 and ts[-1] >= 0 and np.all(np.diff(ts) < 0), S
            if len(reference) == S:
                np.testing.assert_array_equal(ts, reference)
    if T == 1000:
        assert len(np.arange(T, 0, -T / 61)) == 62  # the case the old code refused
