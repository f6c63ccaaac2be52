"""Samplers: timesteps, coefficient form, step-by-step agreement with diffusers, reproducibility."""

import numpy as np
import pytest

from ddpmrt.engine import DDIMSampler, DDPMSampler, NoiseSchedule, UserError, make_timesteps
from ddpmrt.engine.philox import STREAM_STEP, gaussian_noise

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 3, 5, 5)  # odd element count on purpose


def _ddim_reference(num_steps, spacing, clip):
    s = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                clip_sample=clip is not None, clip_sample_range=clip or 1.0,
                                set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing)
    s.set_timesteps(num_steps)
    return s


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [1, 10, 50, 999, 1000])
def test_timesteps_match_diffusers(spacing, num_steps):
    ref = _ddim_reference(num_steps, spacing, None).timesteps.numpy()
    ours = make_timesteps(1000, num_steps, spacing)
    assert ours.dtype == np.int64 and np.all(np.diff(ours) < 0)
    np.testing.assert_array_equal(ours, ref)


def test_quad_spacing_is_the_ddim_papers():
    ts = make_timesteps(1000, 10, "quad")
    expected = [int(v) for v in np.linspace(0, np.sqrt(800), 10) ** 2][::-1]
    assert list(ts) == expected


def test_previous_timestep_is_next_table_entry():
    sampler = DDIMSampler(NoiseSchedule.linear(1000), num_steps=3, spacing="trailing")
    abar = NoiseSchedule.linear(1000).alphas_cumprod
    assert list(sampler.timesteps) == [999, 666, 332]
    np.testing.assert_array_equal(sampler.alpha_bar_prev, [abar[666], abar[332], 1.0])


# diffusers' DDIM takes the previous timestep as t − T//S, which equals the next table entry
# for leading spacing and for trailing spacing when S divides T: compare there.
@pytest.mark.parametrize("spacing,num_steps", [("leading", 50), ("leading", 7), ("trailing", 50), ("trailing", 10)])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddim_matches_diffusers_step_by_step(spacing, num_steps, eta, clip):
    ref = _ddim_reference(num_steps, spacing, clip)
    ours = DDIMSampler(NoiseSchedule.linear(1000), num_steps=num_steps, eta=eta, spacing=spacing, clip_sample=clip)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    for i, t in enumerate(ours.timesteps):
        eps = rng.standard_normal(SHAPE).astype(np.float32)
        z = gaussian_noise(3, np.arange(SHAPE[0]), i, STREAM_STEP, SHAPE[1:])
        expected = ref.step(torch.from_numpy(eps), int(t), torch.from_numpy(x), eta=eta,
                            variance_noise=torch.from_numpy(z)).prev_sample.numpy()
        x_ours = ours.step(x, eps, i, noise=z)
        np.testing.assert_allclose(x_ours, expected, atol=2e-5, rtol=1e-5, err_msg=f"step {i} (t={t})")
        x = expected


@pytest.mark.parametrize("num_steps", [1000, 50, 13])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddpm_matches_diffusers_step_by_step(num_steps, variance, clip, monkeypatch):
    import diffusers.schedulers.scheduling_ddpm as ddpm_module

    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                  variance_type=variance, clip_sample=clip is not None, clip_sample_range=clip or 1.0,
                                  timestep_spacing="leading")
    if num_steps < 1000:
        ref.set_timesteps(num_steps)
    # diffusers computes β'_t = 1 − ᾱ_t/ᾱ_prev in float32, which cancels badly at small t
    # (β ≈ 1e-4: ~4e-4 relative error).  Run its formulas in float64 to compare the maths.
    ref.alphas_cumprod = ref.alphas_cumprod.double()
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    ours = DDPMSampler(NoiseSchedule.linear(1000), num_steps=num_steps, variance=variance, clip_sample=clip)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    current_noise = {}
    # diffusers draws its own noise inside step(): hand it ours.
    monkeypatch.setattr(ddpm_module, "randn_tensor", lambda *a, **k: torch.from_numpy(current_noise["z"]).double())
    for i, t in enumerate(ours.timesteps):
        eps = rng.standard_normal(SHAPE).astype(np.float32)
        current_noise["z"] = gaussian_noise(4, np.arange(SHAPE[0]), i, STREAM_STEP, SHAPE[1:])
        expected = ref.step(torch.from_numpy(eps).double(), int(t), torch.from_numpy(x).double()).prev_sample.numpy()
        x_ours = ours.step(x, eps, i, noise=current_noise["z"])
        np.testing.assert_allclose(x_ours, expected, atol=2e-5, rtol=1e-5, err_msg=f"step {i} (t={t})")
        x = expected.astype(np.float32)


def test_full_ddpm_uses_the_training_betas():
    schedule = NoiseSchedule.linear(1000)
    sampler = DDPMSampler(schedule, 1000, variance="fixed_large")
    np.testing.assert_allclose(sampler.coefficients[:-1, 5] ** 2, schedule.betas[::-1][:-1], rtol=1e-10)


def test_sample_is_batch_independent():
    schedule = NoiseSchedule.linear(1000)
    model = lambda x, t: 0.1 * x + 0.001 * t[:, None, None, None].astype(np.float32)  # noqa: E731
    for sampler in (DDIMSampler(schedule, 10, eta=1.0), DDPMSampler(schedule, 10)):
        batch = sampler.sample(model, (8, 1, 3, 3), seed=11, progress=False)
        alone = sampler.sample(model, (1, 1, 3, 3), seed=11, progress=False, image_indices=[5])
        np.testing.assert_array_equal(batch[5], alone[0])
        again = sampler.sample(model, (8, 1, 3, 3), seed=11, progress=False)
        np.testing.assert_array_equal(batch, again)
        other = sampler.sample(model, (8, 1, 3, 3), seed=12, progress=False)
        assert not np.allclose(batch, other)


def test_sample_from_given_x_T_is_deterministic_for_ddim():
    sampler = DDIMSampler(NoiseSchedule.linear(1000), 5)
    x_T = np.ones((2, 1, 2, 2), np.float32)
    a = sampler.sample(lambda x, t: x * 0.5, (2, 1, 2, 2), seed=0, x_T=x_T, progress=False)
    b = sampler.sample(lambda x, t: x * 0.5, (2, 1, 2, 2), seed=99, x_T=x_T, progress=False)
    np.testing.assert_array_equal(a, b)


def test_nan_in_eps_names_the_step():
    sampler = DDIMSampler(NoiseSchedule.linear(1000), 10)
    calls = []

    def model(x, t):
        calls.append(1)
        return np.full_like(x, np.nan) if len(calls) == 4 else np.zeros_like(x)

    with pytest.raises(UserError, match=r"NaN or Inf at step 3 .*fp32"):
        sampler.sample(model, (1, 1, 2, 2), progress=False)


@pytest.mark.parametrize("kwargs,match", [({"num_steps": 0}, "steps"), ({"num_steps": 1001}, "steps"),
                                          ({"spacing": "cubic"}, "spacing"), ({"eta": -1.0}, "eta")])
def test_bad_sampler_arguments(kwargs, match):
    with pytest.raises(UserError, match=match):
        DDIMSampler(NoiseSchedule.linear(1000), **{"num_steps": 10, **kwargs})


def test_steps_noise_only_where_sigma_positive():
    ddim = DDIMSampler(NoiseSchedule.linear(1000), 10, eta=0.0)
    assert np.all(ddim.coefficients[:, 5] == 0)
    ddpm = DDPMSampler(NoiseSchedule.linear(1000), 10)
    assert np.all(ddpm.coefficients[:-1, 5] > 0) and ddpm.coefficients[-1, 5] == 0


def test_one_seed_per_image_serves_several_requests_in_one_batch():
    # A served batch of request A (seed 3, two images) and request B (seed 7, one image): each
    # request gets exactly the images it gets alone.
    from ddpmrt.engine import NoiseSchedule

    schedule = NoiseSchedule.linear(1000)

    def model(x, t):
        return (0.2 * np.tanh(x) + np.sin(t / 300.0)[:, None, None, None]).astype(np.float32)

    for sampler in (DDPMSampler(schedule, 6), DDIMSampler(schedule, 6, eta=1.0)):
        batch = sampler.sample(model, (3, 1, 4, 4), seed=(3, 3, 7), image_indices=[0, 1, 0], progress=False)
        alone_a = sampler.sample(model, (2, 1, 4, 4), seed=3, progress=False)
        alone_b = sampler.sample(model, (1, 1, 4, 4), seed=7, progress=False)
        np.testing.assert_array_equal(batch, np.concatenate([alone_a, alone_b]))
    with pytest.raises(UserError, match="one per image"):
        DDIMSampler(schedule, 2).sample(model, (3, 1, 4, 4), seed=(1, 2), progress=False)


def test_every_sampler_takes_explicit_timesteps():
    # diffusers' `timesteps=`: the list replaces the spacing; the same list as a spacing gives the same table.
    from ddpmrt.engine.sampler_factory import SAMPLER_CLASSES, make_sampler

    schedule = NoiseSchedule.linear(1000)
    for name, cls in SAMPLER_CLASSES.items():
        spaced = make_sampler(name, schedule, 7)
        given = make_sampler(name, schedule, timesteps=[int(t) for t in spaced.timesteps])
        np.testing.assert_array_equal(given.coefficients, spaced.coefficients)
        assert given.spacing is None and given.config["timesteps"] == list(spaced.timesteps)
        assert spaced.config["timesteps"] is None
        assert cls(schedule, 3, timesteps=np.array([999, 500, 1])).num_steps == 3
        # The config reproduces the sampler: every declared option, and the steps.
        again = make_sampler(name, schedule, given.config["num_steps"],
                             **{k: v for k, v in given.config.items() if k not in ("sampler", "num_steps")})
        np.testing.assert_array_equal(again.coefficients, given.coefficients)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"timesteps": [500, 999]}, r"strictly decreasing integers in \[0, T - 1\]"),
    ({"timesteps": [999, 999, 0]}, "strictly decreasing"),
    ({"timesteps": [1000, 10]}, r"\(T = 1000\), got \[1000, 10\]"),
    ({"timesteps": [10, -1]}, "strictly decreasing"),
    ({"timesteps": [999.0, 10.0]}, "timesteps: timesteps must be"),
    ({"timesteps": "999,10"}, "timesteps: timesteps must be"),
    ({"timesteps": []}, "strictly decreasing"),
    ({"timesteps": [999, 500], "num_steps": 3}, "2 timesteps for 3 steps: give one timestep per step"),
    ({"timesteps": [999, 500], "spacing": "trailing"}, "timesteps or a spacing, not both"),
])
def test_bad_explicit_timesteps_are_one_line(kwargs, fragment):
    with pytest.raises(UserError, match=fragment) as caught:
        DDIMSampler(NoiseSchedule.linear(1000), **kwargs)
    assert "\n" not in str(caught.value)


def test_each_declared_option_reaches_the_command_line_a_request_and_a_spec():
    # Options are declared once (Sampler.OPTIONS): every one is a flag of `ddpmrt sample`, a field of a
    # request and a key of a report spec, and a sampler's config is exactly its declared options.
    from ddpmrt.engine.sampler_factory import SAMPLER_CLASSES, parse_spec
    from ddpmrt.engine.serve_requests import _fields
    from ddpmrt.export.cli import build_parser

    sample = next(a for a in build_parser()._subparsers._group_actions[0].choices["sample"]._actions
                  if a.dest == "sampler").container
    flags = {a.dest for a in sample._actions}
    schedule = NoiseSchedule.linear(1000)
    for name, cls in SAMPLER_CLASSES.items():
        sampler = cls(schedule, 4)
        assert list(sampler.config) == ["sampler", "num_steps", *(o.name for o in cls.OPTIONS if o.name != "timesteps"),
                                        "timesteps"]
        for option in cls.OPTIONS:
            assert option.name in flags and option.name in _fields(), option.name
            value = sampler.config[option.name]
            if value is None or option.name == "spacing":
                continue
            text = ",".join(map(str, value)) if isinstance(value, list) else ("on" if value is True else
                                                                              "off" if value is False else str(value))
            spec = parse_spec(f"{name}:4:{option.name}={text}")
            assert spec.make(schedule, clip_sample=sampler.clip_sample or 0).config == sampler.config, option.name


def test_the_commands_clip_no_sampler_unless_asked_while_ddpms_class_keeps_diffusers_default():
    # make_sampler is every command's factory: an option left out, or None, is the commands' default, and for
    # clip_sample that is "off" for every sampler (measured: benchmarks/results/cpu-clipping-*), DDPM included,
    # although DDPMSampler itself keeps diffusers' ±1.
    from ddpmrt.engine.sampler_factory import SAMPLER_CLASSES, make_sampler

    schedule = NoiseSchedule.linear(1000)
    for name in SAMPLER_CLASSES:
        assert make_sampler(name, schedule, 10).clip_sample is None, name
        assert make_sampler(name, schedule, 10, clip_sample=None).clip_sample is None, name
        assert make_sampler(name, schedule, 10, clip_sample=1.0).clip_sample == 1.0, name
        assert make_sampler(name, schedule, 10, clip_sample=0).clip_sample is None, name
    assert DDPMSampler(schedule, 10).clip_sample == 1.0 and DDIMSampler(schedule, 10).clip_sample is None
