"""Tuned timesteps: the tuner on the exact Gaussian oracle, the table that travels with a model, and
`ddpmrt tune` / `--spacing tuned` from the command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ddpmrt.engine import NoiseSchedule, UserError, make_sampler
from ddpmrt.engine.artifacts.schedules import TunedSchedules, schedules_path
from ddpmrt.engine.backends import resolve_model_path
from ddpmrt.engine.gaussian import GaussianData, w2_gaussian
from ddpmrt.engine.tuning import Tuner, tune_timesteps

from conftest import assert_user_error, run_cli, run_cli_here

SCHEDULE = NoiseSchedule.linear(1000)


def w2(data: GaussianData, sampler) -> float:
    mean, cov = data.predicted_moments(sampler)
    return w2_gaussian(mean, cov, data.mean, data.cov)


@pytest.mark.parametrize("seed", [3, 4])
def test_tuned_calls_reach_ddim_with_five_to_ten_times_more(seed):
    # The required figures, exactly (the W2 of a linear sampler on Gaussian data is closed form):
    # tuned DPM-Solver++(3M) at 10 calls at or below DDIM-50, at 5 calls at or below DDIM-25; and the aim,
    # 8 calls at or below DDIM-50.  Tuned from 32 trajectories of the oracle model alone.
    data = GaussianData.random((2, 2, 2), SCHEDULE, seed=seed)
    ddim = {steps: w2(data, make_sampler("ddim", SCHEDULE, steps, clip_sample=0)) for steps in (25, 50)}
    tuner = Tuner(data, SCHEDULE, "dpmsolver", shape=(32, 2, 2, 2), order=3, clip_sample=0)
    tuned = {calls: tuner.tune(calls) for calls in (5, 8, 10)}
    measured = {calls: w2(data, make_sampler("dpmsolver", SCHEDULE, order=3, clip_sample=0, timesteps=t.timesteps))
                for calls, t in tuned.items()}
    assert measured[10] <= ddim[50] and measured[8] <= ddim[50] and measured[5] <= ddim[25], (measured, ddim)
    for calls, t in tuned.items():
        untuned = w2(data, make_sampler("dpmsolver", SCHEDULE, calls, order=3, clip_sample=0))
        assert measured[calls] < untuned and t.objective < t.baseline
        assert t.heldout < t.heldout_baseline  # on noises it was not tuned on, too
        assert t.timesteps[0] == 999 and len(t.timesteps) == calls and t.network_calls > 0


def test_the_tuning_distance_leaves_out_the_images_farthest_from_the_teacher():
    # A quarter of the images far off (a flip of mode) does not move it; the others' RMS distances are averaged.
    target = np.zeros((8, 12), np.float32)
    images = np.full((8, 12), 0.1, np.float32)
    images[[2, 5]] = 3.0
    assert Tuner.distance(images, target) == pytest.approx(0.1)
    images[3] = 0.4
    assert Tuner.distance(images, target) == pytest.approx((5 * 0.1 + 0.4) / 6)


def test_tuning_is_deterministic_and_works_for_ddim_unipc_and_ipndm():
    data = GaussianData.random((2, 2, 2), SCHEDULE, seed=5)
    for sampler, options in (("ddim", {}), ("unipc", {"order": 2}), ("ipndm", {"order": 4})):
        first = tune_timesteps(data, SCHEDULE, sampler, calls=5, shape=(8, 2, 2, 2), seed=1, clip_sample=0, **options)
        again = tune_timesteps(data, SCHEDULE, sampler, calls=5, shape=(8, 2, 2, 2), seed=1, clip_sample=0, **options)
        np.testing.assert_array_equal(first, again)
        assert first.dtype == np.int64 and np.all(np.diff(first) < 0)


@pytest.mark.parametrize("call,fragment", [
    (lambda d: tune_timesteps(d, SCHEDULE, "ddpm", calls=5, shape=(4, 2, 2, 2)), "needs a deterministic sampler"),
    (lambda d: tune_timesteps(d, SCHEDULE, "ddim", calls=5, shape=(4, 2, 2, 2), eta=1.0), "with eta > 0"),
    (lambda d: tune_timesteps(d, SCHEDULE, "dpmsolver", calls=2, shape=(4, 2, 2, 2), order=3),
     "from 3 \\(two, and the sampler's order\\)"),
    (lambda d: tune_timesteps(d, SCHEDULE, "ddim", calls=30, shape=(4, 2, 2, 2), teacher="dpmsolver:20:order=3"),
     "to the teacher's 20 steps"),
    (lambda d: tune_timesteps(d, SCHEDULE, "ddim", calls=5, shape=(4, 2, 2, 2), spacing="trailing"),
     "leave out timesteps and spacing"),
    (lambda d: tune_timesteps(d, SCHEDULE, "ddim", calls=5, shape=(4, 2, 2, 2), teacher="euler:50"),
     "sampler spec 'euler:50' not understood"),
])
def test_bad_tuning_requests_are_one_line(call, fragment):
    with pytest.raises(UserError, match=fragment) as caught:
        call(GaussianData.random((2, 2, 2), SCHEDULE, seed=1))
    assert "\n" not in str(caught.value)


@pytest.fixture
def checkpoint(tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(resolve_model_path("digits"), folder, ignore=shutil.ignore_patterns("schedules.json"))
    return folder


def test_tune_writes_a_sealed_table_that_sampling_and_exports_use(checkpoint, tmp_path):
    quick = ["--teacher", "dpmsolver:16:order=2", "--trajectories", "4", "--backend", "torch", "--quiet"]
    result = run_cli("tune", str(checkpoint), "--sampler", "dpmsolver", "--calls", "3,4", *quick)
    assert result.returncode == 0, result.stderr
    assert "network calls" in result.stdout and "use them with --spacing tuned" in result.stdout
    table = json.loads((checkpoint / "schedules.json").read_text())
    assert [e["calls"] for e in table["entries"]] == [3, 4] and table["checksum"]
    entry = table["entries"][1]
    assert entry["options"]["order"] == 2 and entry["teacher"]["spec"] == "dpmsolver:16:order=2" and entry["date"]
    # --spacing tuned: the entry's timesteps, as if given.
    out = tmp_path / "tuned.npz"
    result = run_cli("sample", str(checkpoint), "--sampler", "dpmsolver", "--steps", "4", "--spacing", "tuned",
                     "--batch", "2", "--backend", "torch", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    explicit = tmp_path / "explicit.npz"
    result = run_cli("sample", str(checkpoint), "--sampler", "dpmsolver", "--timesteps",
                     ",".join(map(str, entry["timesteps"])), "--batch", "2", "--backend", "torch", "--out",
                     str(explicit), "--quiet")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(out)["images"], np.load(explicit)["images"])
    # Another setting or step count: one line naming the command that makes it.
    assert_user_error(run_cli("sample", str(checkpoint), "--sampler", "dpmsolver", "--order", "3", "--steps", "4",
                              "--spacing", "tuned", "--out", str(tmp_path / "x.png")),
                      f"make them with: ddpmrt tune {checkpoint} --sampler dpmsolver --order 3 --calls 4")
    # export-onnx carries the table over, keyed by the file's own hash.
    onnx = tmp_path / "digits.onnx"
    result = run_cli("export-onnx", str(checkpoint), "--out", str(onnx))
    assert result.returncode == 0, result.stderr
    assert TunedSchedules(onnx).lookup(make_sampler("dpmsolver", SCHEDULE, 4).config, 4) == entry["timesteps"]


def test_a_damaged_foreign_or_edited_table_is_refused_with_one_line(checkpoint, tmp_path):
    table = TunedSchedules(checkpoint, "digits")
    sampler = make_sampler("ddim", SCHEDULE, 3)
    table.write([{"sampler": "ddim", "options": sampler.config, "calls": 3, "timesteps": [999, 500, 100]}])
    path = schedules_path(checkpoint)
    assert TunedSchedules(checkpoint).lookup(sampler.config, 3) == [999, 500, 100]
    good = path.read_text()
    args = ["sample", str(checkpoint), "--steps", "3", "--spacing", "tuned", "--backend", "torch",
            "--out", str(tmp_path / "x.png")]
    for text, fragment in ((good.replace("500", "501"), "does not match its checksum"),
                           (good[:40], "is not readable JSON"),
                           (json.dumps({"format": "other"}), "is not a ddpmrt tuned-schedules file")):
        path.write_text(text)
        assert_user_error(run_cli(*args), fragment)
        assert not (tmp_path / "x.png").exists()
    path.write_text(good)
    (checkpoint / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes() + b" ")
    with pytest.raises(UserError, match="tuned for other weights"):
        TunedSchedules(checkpoint).lookup(sampler.config, 3)


def test_tune_refuses_bad_calls_and_writes_nothing(checkpoint):
    for args, fragment in ((["--sampler", "dpmsolver", "--order", "3", "--calls", "2"], "from 3 (two, and the sampler's order)"),
                           (["--calls", "300"], "more than the teacher's 200 steps"),
                           (["--calls", "4", "--steps", "4"], "tune takes --calls"),
                           (["--sampler", "ddpm", "--calls", "4"], "needs a deterministic sampler"),
                           (["--calls", "4", "--teacher", "ddim"], "sampler spec 'ddim' not understood")):
        assert_user_error(run_cli_here("tune", str(checkpoint), *args, "--backend", "torch", "--quiet"), fragment)
        assert not (checkpoint / "schedules.json").exists()


def test_the_mixtures_optimal_eps_is_the_gaussians_for_one_component():
    from ddpmrt.engine.mixture import GaussianMixture

    data = GaussianData.random((2, 2, 2), SCHEDULE, seed=2)
    mixture = GaussianMixture([1.0], data.mean[None], data.cov[None], (2, 2, 2), SCHEDULE)
    x = np.random.default_rng(0).standard_normal((6, 2, 2, 2)).astype(np.float32)
    for t in (0, 10, 500, 999):
        ts = np.full(6, t, np.int64)
        np.testing.assert_allclose(mixture(x, ts), data(x, ts), rtol=1e-5, atol=1e-6)
    samples = mixture.sample_data(20000, seed=1).reshape(20000, -1)
    np.testing.assert_allclose(samples.mean(0), data.mean, atol=0.02)


def test_tuned_timesteps_generalize_to_the_gaussian_mixture():
    # Multimodal and nonlinear: per-image distance to a 999-step reference solve from the same noise.
    from ddpmrt.engine.mixture import GaussianMixture, MixtureCheck

    mixture = GaussianMixture.random((2, 2, 2), SCHEDULE, seed=0)
    check = MixtureCheck(mixture, 256)

    def error(sampler):
        return check(sampler)["rms_to_reference"]

    tuner = Tuner(mixture, SCHEDULE, "dpmsolver", shape=(32, 2, 2, 2), order=3, clip_sample=0)
    tuned = {calls: make_sampler("dpmsolver", SCHEDULE, order=3, clip_sample=0, timesteps=tuner.tune(calls).timesteps)
             for calls in (5, 10)}
    assert error(tuned[10]) <= error(make_sampler("ddim", SCHEDULE, 50, clip_sample=0))
    assert error(tuned[5]) <= error(make_sampler("ddim", SCHEDULE, 25, clip_sample=0))


def test_a_request_with_spacing_tuned_gets_the_tables_timesteps(checkpoint):
    from ddpmrt.engine.serve import parse_request

    table = TunedSchedules(checkpoint, "digits")
    table.write([{"sampler": "ddim", "options": make_sampler("ddim", SCHEDULE, 3).config, "calls": 3,
                  "timesteps": [999, 500, 100]}])
    request = parse_request({"steps": 3, "spacing": "tuned", "n": 2}, SCHEDULE, tuned=table)
    assert dict(request.options) == {"timesteps": (999, 500, 100)}
    # The same batch as a request that gave those timesteps itself.
    assert request.settings == parse_request({"timesteps": [999, 500, 100]}, SCHEDULE).settings
    with pytest.raises(UserError, match="make them with: ddpmrt tune digits --sampler ddim --eta 0.5 --calls 3"):
        parse_request({"steps": 3, "eta": 0.5, "spacing": "tuned"}, SCHEDULE, tuned=table)


def test_report_puts_tuned_rows_beside_the_standard_ones(checkpoint, tmp_path):
    TunedSchedules(checkpoint).write([{"sampler": "ddim", "options": make_sampler("ddim", SCHEDULE, 3).config,
                                       "calls": 3, "timesteps": [999, 500, 100]}])
    out = tmp_path / "report"
    result = run_cli("report", str(checkpoint), "--samplers", "ddim:3", "--spacing", "leading,tuned", "--samples", "16",
                     "--threads", "1", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["DDIM η=0, 3 steps, leading", "DDIM η=0, 3 steps, tuned"]
    assert rows[1]["options"]["timesteps"] == [999, 500, 100] and rows[0]["options"]["timesteps"] is None
    assert (out / "quality_vs_calls.png").is_file()
    # A setting with no entry: one line naming the command, before any work.
    assert_user_error(run_cli("report", str(checkpoint), "--samplers", "ddim:4", "--spacing", "tuned", "--out",
                              str(tmp_path / "r2")), f"ddpmrt tune {checkpoint} --sampler ddim --calls 4")


@pytest.mark.parametrize("name", ["digits", "shapes"])
def test_shipped_models_carry_tables_for_the_commands_default_and_for_clipping(name):
    # `--spacing tuned` with the commands' default (no clipping) and with --clip-sample 1 finds an entry made
    # for the shipped weights (lookup refuses a table of other weights) at every call count the issue names.
    table = TunedSchedules(resolve_model_path(name), name)
    for clip in (None, 1.0):
        for calls in (4, 5, 6, 8, 10):
            sampler = make_sampler("dpmsolver", SCHEDULE, calls, order=3, clip_sample=clip)
            timesteps = table.lookup(sampler.config, calls)
            assert timesteps is not None and timesteps[0] == 999 and len(timesteps) == calls, (clip, calls)
            assert all(a > b for a, b in zip(timesteps, timesteps[1:]))
