"""DPM-Solver++ and UniPC against diffusers' schedulers, step by step, from the same x_T and model."""

import numpy as np
import pytest

from ddpmrt.engine import NoiseSchedule
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.solvers import DPMSolverSampler, UniPCSampler, solver_timesteps

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SCHEDULES = {"linear": (NoiseSchedule.linear(), {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}),
             "cosine": (NoiseSchedule.cosine(), {"beta_schedule": "squaredcos_cap_v2"})}


def model(x, t):
    """A deterministic stand-in network: smooth in x, different at every timestep."""
    return (0.4 * np.tanh(x) + 0.3 * np.cos(t / 150.0)[:, None, None, None] * np.sin(3 * x)).astype(np.float32)


def _x_T():
    return np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)


def _ours(sampler):
    """The trajectory x_1 .. x_N of ddpmrt's host loop."""
    from ddpmrt.engine.samplers import History

    x, history, out = _x_T(), History(), []
    for i, t in enumerate(sampler.timesteps):
        x = sampler.step(x, model(x, np.full(len(x), t)), i, history=history)
        out.append(x)
    return out


def _theirs(scheduler, steps):
    scheduler.set_timesteps(steps)
    x, out = torch.from_numpy(_x_T()), []
    for t in scheduler.timesteps:
        eps = torch.from_numpy(model(x.numpy(), np.full(len(x), int(t))))
        x = scheduler.step(eps, t, x).prev_sample
        out.append(x.numpy())
    return [int(t) for t in scheduler.timesteps], out


def _compare(ours, theirs, schedule_name):
    # Within 2e-4 of the largest value (1e-3 on the cosine schedule, where ᾱ near t = 999 makes x̂₀
    # carry float32 rounding): diffusers computes in float32, ddpmrt's tables in float64.
    tolerance = 1e-3 if schedule_name == "cosine" else 2e-4
    for i, (a, b) in enumerate(zip(ours, theirs)):
        scale = max(1.0, float(np.abs(b).max()))
        assert np.abs(a - b).max() <= tolerance * scale, f"step {i}: {np.abs(a - b).max():.2e}"


CASES = [(schedule, order, steps, spacing) for schedule in SCHEDULES for order in (1, 2, 3)
         for steps, spacing in ((5, "linspace"), (10, "leading"), (12, "trailing"), (20, "linspace"))]


# solver_type changes order 2 only: heun is checked there.
DPM_CASES = [(*case, "midpoint") for case in CASES] + [(*case, "heun") for case in CASES if case[1] == 2]


@pytest.mark.parametrize("schedule_name,order,steps,spacing,solver_type", DPM_CASES)
def test_dpm_solver_matches_diffusers(schedule_name, order, steps, spacing, solver_type):
    schedule, config = SCHEDULES[schedule_name]
    ours = DPMSolverSampler(schedule, steps, order=order, spacing=spacing, solver_type=solver_type)
    scheduler = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, **config, solver_order=order,
                                                      algorithm_type="dpmsolver++", solver_type=solver_type,
                                                      final_sigmas_type="zero", timestep_spacing=spacing)
    timesteps, theirs = _theirs(scheduler, steps)
    assert ours.timesteps.tolist() == timesteps
    _compare(_ours(ours), theirs, schedule_name)


@pytest.mark.parametrize("schedule_name,order,steps,spacing", CASES)
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_matches_diffusers(schedule_name, order, steps, spacing, variant):
    schedule, config = SCHEDULES[schedule_name]
    ours = UniPCSampler(schedule, steps, order=order, spacing=spacing, variant=variant)
    scheduler = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, **config, solver_order=order,
                                                  predict_x0=True, solver_type=variant, final_sigmas_type="zero",
                                                  timestep_spacing=spacing)
    timesteps, theirs = _theirs(scheduler, steps)
    assert ours.timesteps.tolist() == timesteps
    trajectory = _ours(ours)
    if variant == "bh1":
        # diffusers is wrong on the last bh1 step: to σ = 0, λ = ∞ and B(h) = h = −∞, and its UniP
        # computes x − α·B(h)·0 = NaN.  The paper's step there is x̂₀ itself: check it in float64 from
        # the step's input, and the steps before it against diffusers.
        assert not np.isfinite(theirs[-1]).all()
        x_in = trajectory[-2].astype(np.float64)
        eps = model(trajectory[-2], np.full(len(x_in), ours.timesteps[-1])).astype(np.float64)
        x0 = (x_in - ours.sigma[-2] * eps) / ours.alpha[-2]
        np.testing.assert_allclose(trajectory[-1], x0, rtol=1e-5, atol=1e-5)
        trajectory, theirs = trajectory[:-1], theirs[:-1]
    _compare(trajectory, theirs, schedule_name)


def test_unipc_without_corrector_and_with_disabled_steps_matches_diffusers():
    schedule, config = SCHEDULES["linear"]
    for kwargs, theirs_kwargs in (({"corrector": False}, {"disable_corrector": list(range(10))}),
                                  ({"disable_corrector": [2, 5]}, {"disable_corrector": [2, 5]})):
        ours = UniPCSampler(schedule, 10, order=3, **kwargs)
        scheduler = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, **config, solver_order=3,
                                                      final_sigmas_type="zero", **theirs_kwargs)
        _, theirs = _theirs(scheduler, 10)
        _compare(_ours(ours), theirs, "linear")


def test_solver_timesteps_exclude_zero_in_linspace():
    assert solver_timesteps(1000, 5, "linspace").tolist() == [999, 799, 599, 400, 200]
    assert solver_timesteps(1000, 4, "leading").tolist() == [800, 600, 400, 200]
    assert solver_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]


@pytest.mark.parametrize("make,fragment", [
    (lambda s: DPMSolverSampler(s, 10, order=4), "order must be an integer from 1 to 3, got 4"),
    (lambda s: UniPCSampler(s, 10, order=0), "order must be an integer from 1 to 3, got 0"),
    (lambda s: DPMSolverSampler(s, 2, order=3), "order 3 needs at least 3 steps"),
    (lambda s: UniPCSampler(s, 10, variant="bh3"), "unknown variant 'bh3'; choose one of bh1, bh2"),
    (lambda s: DPMSolverSampler(s, 10, solver_type="euler"), "unknown solver_type"),
    (lambda s: DPMSolverSampler(s, 10, eta=0.5), r"takes no eta \(it is deterministic"),
    (lambda s: UniPCSampler(s, 10, use_karras_sigmas=True), "takes no use_karras_sigmas; its options are"),
    (lambda s: DPMSolverSampler(s, 10, spacing="quad"), "unknown spacing 'quad'; choose one of linspace, leading, trailing"),
    (lambda s: UniPCSampler(s, 1001), r"must lie in \[1, 1000\]"),
])
def test_bad_solver_options_are_one_line(make, fragment):
    with pytest.raises(UserError, match=fragment) as caught:
        make(NoiseSchedule.linear())
    assert "\n" not in str(caught.value)


def test_the_last_step_is_x0_and_no_order_gives_nan():
    # UniPC with lower_order_final=False: diffusers divides by λ = ∞ on the last step to σ = 0 (NaN);
    # ddpmrt takes the exact step there, x̂₀ (see UniPCSampler.step_orders).
    schedule = NoiseSchedule.linear()
    for sampler in (UniPCSampler(schedule, 6, order=3, lower_order_final=False),
                    DPMSolverSampler(schedule, 6, order=3, lower_order_final=False)):
        assert np.isfinite(sampler.coefficients).all()
        last = sampler.coefficients[-1]
        assert last[3] == 0.0 and np.isclose(last[2], 1.0) and not last[6:9].any()  # x_N = x̂₀
        assert np.isfinite(_ours(sampler)[-1]).all()
