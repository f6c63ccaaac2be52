"""The benchmark scripts that run on the GPU machine, run here on the CPU so they do not rot unseen."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def run_levers(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """benchmarks/unet_levers.py on the CPU with the tiny config, as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks/unet_levers.py"), "--device", "cpu", "--config", "tiny",
                           *args], capture_output=True, text=True, timeout=timeout)


def test_unet_levers_compares_variants_on_the_same_weights(tmp_path):
    out = tmp_path / "levers.json"
    result = run_levers("--batch", "1,3", "--variants", "lookup,computed", "--runs", "2", "--warmup", "1", "--eager",
                        "--precision", "fp32", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [(r["batch"], r["variant"]) for r in report["rows"]] == [(1, "lookup"), (1, "computed"), (3, "lookup"),
                                                                      (3, "computed")]
    # The same weights in every variant: the time-shift table changes rounding only.
    assert all(r["max_abs_eps_difference_to_first"] < 1e-5 for r in report["rows"])
    assert report["speedups"]["3"]["lookup"] == 1.0 and report["speedups"]["3"]["computed"] > 0
    assert report["rows"][0]["ms_per_call"]["n"] == 2 and report["environment"]["torch"]


def test_unet_levers_cpu_variants(tmp_path):
    # The CPU levers of #20 (channels_last weights; Inductor's freezing and max-autotune, compiled only).
    out = tmp_path / "levers.json"
    result = run_levers("--batch", "2", "--variants", "lookup,channels-last", "--runs", "2", "--warmup", "1", "--eager",
                        "--precision", "fp32", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["channels_last"] for r in rows] == [False, True] and rows[1]["max_abs_eps_difference_to_first"] < 1e-4
    refused = run_levers("--variants", "lookup,max-autotune", "--eager")
    assert refused.returncode != 0 and "without --eager" in refused.stderr


def test_unet_levers_refuses_a_cuda_only_variant_on_the_cpu():
    result = run_levers("--variants", "lookup+cudnn-search", timeout=120)
    assert result.returncode != 0 and "needs --device cuda" in result.stderr and "Traceback" not in result.stderr


def test_sanitize_onnx_builds_both_variants(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="needs TensorRT-RTX to build: pip install -e '.[tensorrt-rtx]'")
    pytest.importorskip("polygraphy", reason="needs Polygraphy: pip install polygraphy onnx-graphsurgeon")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/sanitize_onnx.py"), "--configs", "digits",
                             "--repeats", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads((tmp_path / "sanitize_onnx.json").read_text())["results"][0]
    plain, sanitized = row["variants"]["plain"], row["variants"]["sanitized"]
    assert plain["sanitize"] == {"applied": []} and sanitized["sanitize"]["applied"] == ["fold_constants", "infer_shapes"]
    assert plain["network_layers"] > 100 and sanitized["network_layers"] > 100 and row["onnx_nodes"]["before"] > 100


def run_script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cpu_precision_times_fp32_and_bf16_on_the_same_weights(tmp_path):
    # The measurement behind what --precision auto means on a CPU (engine/cpu.py).
    out = tmp_path / "precision.json"
    result = run_script("cpu_precision.py", "--config", "tiny", "--batch", "1", "--backends", "torch,onnxruntime",
                        "--runs", "2", "--warmup", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [(r["backend"], r["asked"]) for r in report["rows"]] == [("torch", "fp32"), ("torch", "bf16"),
                                                                    ("onnxruntime", "fp32")]
    torch_fp32, torch_bf16, ort = report["rows"]
    # The same weights everywhere: fp32 paths agree with the reference, bf16 within its 8-bit mantissa.
    assert torch_fp32["error_vs_fp32"] == 0 and ort["error_vs_fp32"] < 1e-4 and 1e-4 < torch_bf16["error_vs_fp32"] < 0.1
    assert report["bf16_over_fp32"]["torch"]["1"] > 0 and report["environment"]["cpu_auto_precision"] in ("fp32", "bf16")


def test_cpu_defaults_interleaves_the_paths_and_reports_the_ratios(tmp_path):
    # The ratios issue 20 sets: ddpmrt's default CPU paths against OpenVINO's default and DDIMPipeline.
    pytest.importorskip("openvino", reason="the onnx default and OpenVINO's default need OpenVINO")
    pytest.importorskip("diffusers", reason="the DDIMPipeline row needs diffusers")
    out = tmp_path / "defaults.json"
    result = run_script("cpu_defaults.py", "--config", "tiny", "--batch", "2", "--rounds", "2", "--steps", "2",
                        "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {r["path"]: r for r in report["rows"]}
    assert list(rows) == ["checkpoint-default", "onnx-default", "openvino-default", "DDIMPipeline"]
    assert rows["onnx-default"]["backend"] == "openvino" and rows["DDIMPipeline"]["error_vs_fp32"] is None
    # The same weights on every path: each within bf16's rounding of PyTorch fp32 at least.
    assert all(rows[name]["error_vs_fp32"] < 0.1 for name in ("checkpoint-default", "onnx-default", "openvino-default"))
    assert set(report["speedups"]["2"]) == {f"{ours} vs {peer}" for ours in ("checkpoint-default", "onnx-default")
                                            for peer in ("openvino-default", "DDIMPipeline")}
    assert all(ratio > 0 for ratio in report["speedups"]["2"].values())
    startup = report["checkpoint_default_startup"]
    assert startup["backend"] == rows["checkpoint-default"]["backend"] and 0 < startup["warm_start_s"]
    assert run_script("cpu_defaults.py", "--rounds", "0").returncode != 0


def test_cpu_int8_judges_quality_and_speed(tmp_path):
    pytest.importorskip("onnxruntime.quantization", reason="needs ONNX Runtime's quantizer")
    pytest.importorskip("sklearn", reason="the judge is an sklearn classifier")
    result = run_script("cpu_int8.py", "--models", "digits", "--samples", "32", "--calibration-images", "8",
                        "--speed-config", "tiny", "--batch", "1", "--runs", "2", "--warmup", "1", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "int8.json").read_text())
    digits = report["quality"][0]
    assert digits["quantization"]["calibration_inputs"] == 80  # 8 trajectories of DDIM-10
    fid = {(r["backend"], r["precision"]): r["fid"] for r in digits["rows"]}
    assert ("onnxruntime", "int8") in fid and all(value > 0 for value in fid.values())
    assert digits["int8_fid_over_fp32"]["onnxruntime"] == fid[("onnxruntime", "int8")] / fid[("onnxruntime", "fp32")]
    assert report["int8_within_tolerance"] == all(ratio <= 1.1 for ratio in digits["int8_fid_over_fp32"].values())
    speed = {(r["backend"], r["precision"]): r for r in report["speed"]["rows"]}
    assert speed[("onnxruntime", "int8")]["error_vs_fp32"] > 0 and speed[("onnxruntime", "fp32")]["error_vs_fp32"] == 0


def test_train_speed_times_the_trainers_own_step(tmp_path):
    out = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_speed.py"), "--variants", "fp32,bf16+cl@8",
                             "--steps", "2", "--warmup", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [(r["variant"], r["batch"], r["channels_last"]) for r in report["rows"]] == [("fp32", 64, False),
                                                                                          ("bf16+cl@8", 8, True)]
    assert report["speed_over_fp32"]["fp32"] == 1.0 and report["auto_means"] in ("fp32", "bf16")
    assert all(r["images_per_s"] > 0 and r["step_s"]["n"] == 2 for r in report["rows"])
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_speed.py"), "--variants", "fp64"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "PRECISION[+cl][+compile][@BATCH]" in bad.stderr


def test_clipping_compares_the_three_rules_and_a_later_run_adds_only_what_is_missing(tmp_path):
    pytest.importorskip("diffusers")

    def run(steps, seeds):
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks/clipping.py"), "digits", "--steps", steps,
                                 "--solver-steps", "2", "--ddpm-steps", "3", "--num", "8", "--seeds", seeds, "--out", str(tmp_path)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads((tmp_path / "clipping.json").read_text())

    report = run("2,3", "0")
    assert {(r["sampler"], r["rule"], r["steps"]) for r in report["rows"]} == {
        (s, rule, n) for rule in ("clip", "none", "dynamic") for s, n in (("ddim", 2), ("ddim", 3), ("dpmsolver", 2))
    } | {("ddpm", "clip", 3), ("ddpm", "none", 3)}  # DDPM: no dynamic rule (diffusers would draw other noise)
    assert all(r["seeds"] == [0] and r["fid"][0] > 0 for r in report["rows"])
    # One seed has no spread to judge a small rise by: no verdict.
    assert set(report["never_worse"].values()) == {None} and "needs two seeds" in (tmp_path / "clipping.md").read_text()
    assert "| ddim | 3 |" in (tmp_path / "clipping.md").read_text()
    assert "| ddpm | 3 |" in (tmp_path / "clipping.md").read_text() and "| —" in (tmp_path / "clipping.md").read_text()
    # Again with a second seed and one more step count: what was measured is kept, only the missing is measured.
    again = run("2,3,4", "0,1")
    before = {(r["sampler"], r["rule"], r["steps"]): r for r in report["rows"]}
    for row in again["rows"]:
        key = (row["sampler"], row["rule"], row["steps"])
        assert row["seeds"] == [0, 1] and len(row["fid"]) == 2
        if key in before:
            assert row["fid"][0] == before[key]["fid"][0]
    assert {(r["rule"], r["steps"]) for r in again["rows"] if r["sampler"] == "ddim"} == {
        (rule, n) for rule in ("clip", "none", "dynamic") for n in (2, 3, 4)}
    assert set(again["never_worse"].values()) <= {True, False} and None not in again["never_worse"].values()


def test_clipping_rules_start_from_the_same_noise_and_differ_in_the_rule_alone():
    # diffusers' thresholding with sample_max_value 1 is plain clipping: its loop around the same model and x_T must
    # then give ddpmrt's clipped samples, or the dynamic column would measure something besides the rule.
    pytest.importorskip("diffusers")
    import numpy as np

    from ddpmrt.engine import load_model

    clipping = _benchmark_module("clipping")
    model = load_model("digits", backend="torch", precision="fp32")
    plain = {**clipping.DYNAMIC, "sample_max_value": 1.0}
    for name in ("ddim", "dpmsolver"):
        clip = clipping.sample("clip", name, 4, model, 3, seed=5)
        assert np.abs(clipping.sample("dynamic", name, 4, model, 3, seed=5, dynamic=plain) - clip).max() < 1e-4
        assert np.abs(clipping.sample("dynamic", name, 4, model, 3, seed=5) - clip).max() > 1e-3
    # DDPM's two rules: the same ancestral noise, so without clipping the samples differ by the rule alone.
    assert np.abs(clipping.sample("clip", "ddpm", 4, model, 3, seed=5)
                  - clipping.sample("none", "ddpm", 4, model, 3, seed=5)).max() > 1e-3


def test_learning_curve_judges_snapshots_and_writes_its_table_and_plot(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import learning_curve
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import shutil

    from ddpmrt.engine.backends import SHIPPED_MODELS_DIR

    for step in (100, 200):  # two snapshots: the shipped digits weights stand in for both
        snapshot = tmp_path / "runs" / "digits" / f"step_{step}"
        snapshot.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(SHIPPED_MODELS_DIR / "digits" / name, snapshot / name)
    # The comparison the judge always makes (DDIM-50 against -1000) and one clipped setting; fewer steps would not
    # test the ODE consistency it reports.
    monkeypatch.setattr(learning_curve, "SAMPLERS", [("ddim", 50, 0.0), ("ddim", 1000, 0.0), ("ddim", 3, 1.0)])
    results = tmp_path / "results"
    # --threads reaches the backend of every snapshot (1 beside a training run).
    import ddpmrt.engine

    threads, load_model = [], ddpmrt.engine.load_model
    monkeypatch.setattr(ddpmrt.engine, "load_model", lambda *a, **k: threads.append(k["threads"]) or load_model(*a, **k))
    learning_curve.judge(tmp_path / "runs", results, ["digits"], num=6, seeds=[0], backend="torch", threads=1)
    assert threads == [1, 1]
    table = json.loads((results / "curve.json").read_text())
    # A row is keyed by the precision its snapshot trained in (the shipped digits model: fp32) and names the judge's CPU.
    precision = json.loads((SHIPPED_MODELS_DIR / "digits" / "config.json").read_text())["training"].get("precision_used", "fp32")
    assert sorted(table) == [f"digits/{precision}/step_100", f"digits/{precision}/step_200"]
    row = table[f"digits/{precision}/step_100"]
    assert row["precision"] == precision and "cores" in row["cpu"]
    # Images seen come from the snapshot's own batch (the shipped digits recipe: 64), recipe or not.
    assert row["images_seen"] == 100 * 64
    assert len(row["loss_by_t_bucket"]) == 10 and all(v > 0 for v in row["loss_by_t_bucket"])
    assert set(row["scores"]) == {"ddim50", "ddim1000", "ddim3_clip"}
    assert 0 <= row["ode_consistency"][0]["mean_abs_diff"] < 0.5  # the shipped digits model is consistent unclipped
    markdown = (results / "curve.md").read_text()
    assert f"| digits | {precision} | 200 |" in markdown and (results / "curve.png").stat().st_size > 10_000
    # A second seed is added to the rows it judged, the first seed's figures kept as they were (not judged again).
    first = row["scores"]["ddim50"][0]
    learning_curve.judge(tmp_path / "runs", results, ["digits"], num=6, seeds=[0, 1], backend="torch")
    row = json.loads((results / "curve.json").read_text())[f"digits/{precision}/step_100"]
    assert row["seeds"] == [0, 1] and len(row["scores"]["ddim50"]) == 2 and len(row["ode_consistency"]) == 2
    assert row["scores"]["ddim50"][0] == first and row["scores"]["ddim50"][1]["fid"] != first["fid"]
    # A table of another sample count is not mixed into: the row is left as it is.
    learning_curve.judge(tmp_path / "runs", results, ["digits"], num=5, seeds=[2], backend="torch")
    assert json.loads((results / "curve.json").read_text())[f"digits/{precision}/step_100"]["seeds"] == [0, 1]


def _benchmark_module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_learning_curve_train_stops_at_its_time_limit_with_a_checkpoint_it_resumes(tmp_path, capfd):
    import torch

    learning_curve = _benchmark_module("learning_curve")
    out = tmp_path / "curve"
    # A device call's limit: step 20 is reached and kept, the run towards 10^6 is stopped by SIGTERM and saved.
    learning_curve.train(out, ["digits"], [20, 10 ** 6], "fp32", device="cpu", seconds=45)
    assert (out / "digits" / "step_20" / "model.safetensors").is_file()
    assert not (out / "digits" / "step_1000000").exists()
    state = torch.load(out / "digits" / "run" / "training_state.pt", weights_only=True)
    assert 20 < state["step"] < 10 ** 6
    # The step it reached is kept as a snapshot of its own, for the judge.
    assert f"stopped at the time limit at step {state['step']} (kept) before step 1000000" in capfd.readouterr().out
    assert (out / "digits" / f"step_{state['step']}" / "model.safetensors").is_file()


def test_learning_curve_recipe_variants_name_their_data():
    learning_curve = _benchmark_module("learning_curve")
    assert learning_curve.dataset_of("shapes-b256") == "shapes" and "--batch-size" in learning_curve.RECIPES["shapes-b256"]
    # A variant is the shipped recipe with later flags, which argparse takes over the earlier ones.
    assert learning_curve.RECIPES["shapes-b256"][:len(learning_curve.RECIPES["shapes"])] == learning_curve.RECIPES["shapes"]


def test_ipndm_benchmark_tunes_and_judges_every_solver(monkeypatch):
    ipndm = _benchmark_module("ipndm")
    monkeypatch.setattr(ipndm, "CALLS", (4, 6))
    monkeypatch.setattr(ipndm, "SOLVERS", {k: ipndm.SOLVERS[k] for k in ("dpmsolver-3M", "ipndm-3")})
    result = {"date": "today", "environment": {"cpu": "test"}, "gaussian": ipndm.gaussian_sets(),
              "mixtures": ipndm.mixture_sets(n=200)}
    rows = result["gaussian"][0]["rows"]
    assert [(r["solver"], r["calls"]) for r in rows] == [("dpmsolver-3M", 4), ("dpmsolver-3M", 6), ("ipndm-3", 4),
                                                         ("ipndm-3", 6)]
    assert all(r["tuned_w2"] < r["untuned_w2"] for r in rows)
    assert all(r["tuned"]["rms_to_reference"] < r["untuned"]["rms_to_reference"] for r in result["mixtures"][0]["rows"])
    text = "\n".join(ipndm.markdown(result))
    assert "## gaussian seed 3: exact W2" in text and "DDIM (η = 0, leading)" in text and "of 16" in text


def test_tuned_steps_refuses_an_unknown_solver_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tuned_steps.py"), "model", "digits",
                             "--solvers", "dpmsolver", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("unknown dpmsolver; give some of dpmsolver-3M, ipndm-3")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tuned_steps_model_clips_every_setting_and_the_tuning_alike(monkeypatch):
    tuned_steps = _benchmark_module("tuned_steps")
    monkeypatch.setattr(tuned_steps, "CALLS", (4,))
    monkeypatch.setattr(tuned_steps, "DDIM_STEPS", (5,))
    result = tuned_steps.model_run("digits", samples=16, seeds=[0], solvers=["dpmsolver-3M"], clip_sample=1.0)
    assert result["clip_sample"] == 1.0
    tuned = result["tuned"]["dpmsolver-3M"][4]
    assert tuned["options"]["clip_sample"] == 1.0 and len(tuned["timesteps"]) == 4
    assert [r["sampler"] for r in result["rows"]] == ["DDIM", "DPM-Solver++(3M) linspace", "DPM-Solver++(3M) tuned"]
    assert "x̂₀ clipped to 1.0" in "\n".join(tuned_steps.markdown({**result, "environment": {"date": "d", "cpu": "c"}}))
    # Left out, no setting clips, as the commands do not; --threads reaches the backend.
    import ddpmrt.engine

    threads, load_model = [], ddpmrt.engine.load_model
    monkeypatch.setattr(ddpmrt.engine, "load_model", lambda *a, **k: threads.append(k["threads"]) or load_model(*a, **k))
    monkeypatch.setattr(tuned_steps, "SOLVERS", {})
    unclipped = tuned_steps.model_run("digits", samples=16, seeds=[0], solvers=[], threads=1)
    assert not unclipped["clip_sample"] and threads == [1]
    assert "x̂₀ clipped to nothing" in "\n".join(tuned_steps.markdown({**unclipped, "environment": {"date": "d", "cpu": "c"}}))


def test_tuned_paired_measures_each_setting_against_the_reference_from_the_same_noise(tmp_path):
    def run(seeds):
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tuned_paired.py"), "digits", "--samples", "6",
                                 "--seeds", seeds, "--ddim-steps", "10,100", "--calls", "5", "--threads", "1",
                                 "--out", str(tmp_path)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads((tmp_path / "results.json").read_text())

    first = run("1")
    rows = {(r["label"].split(" ")[-1], r["steps"]): r for r in first["rows"]}
    assert rows[("dpmsolver:200:order=3", 0)]["rms_mean"] == 0.0   # the reference against itself
    # More DDIM steps come closer to the converged solution; every row is scored.
    assert 0 < rows[("DDIM", 100)]["rms_mean"] < rows[("DDIM", 10)]["rms_mean"]
    assert all(r["fid"] > 0 and 0 <= r["recognised"] <= 1 for r in first["rows"])
    # The tuned row runs the shipped table's unclipped 5-call timesteps, the linspace row its own spacing.
    from ddpmrt.engine.artifacts.schedules import TunedSchedules
    from ddpmrt.engine.backends import resolve_model_path

    shipped = [e for e in TunedSchedules(resolve_model_path("digits"), "digits").entries()
               if e["calls"] == 5 and not e["options"].get("clip_sample")]
    assert rows[("tuned", 5)]["timesteps"] == shipped[0]["timesteps"]
    assert rows[("linspace", 5)]["timesteps"] != rows[("tuned", 5)]["timesteps"]
    # A second seed adds its rows and keeps the first's.
    again = run("1,2")
    assert len(again["rows"]) == 2 * len(first["rows"]) and again["rows"][:len(first["rows"])] == first["rows"]
    assert "| DPM-Solver++(3M) tuned | 5 |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("script", ["tuned_paired.py", "clipping.py", "learning_curve.py"])
def test_a_benchmark_script_gives_a_user_error_in_one_line(script, tmp_path):
    # As the ddpmrt command does (engine.errors.run_script): the message names the fix; no traceback.
    args = {"tuned_paired.py": ["no-such-model", "--out", str(tmp_path / "o")],
            "clipping.py": ["no-such-model", "--out", str(tmp_path / "o")],
            "learning_curve.py": ["judge", "--out", str(tmp_path / "runs"), "--models", "no-such-recipe"]}[script]
    result = run_script(script, *args, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith(f"{script}: error: ")
    assert not (tmp_path / "o").exists()


def test_run_script_passes_a_bug_on_and_returns_main_s_status():
    from ddpmrt.engine.errors import UserError
    from ddpmrt.engine.errors import run_script as run_main

    assert run_main(lambda: None) == 0 and run_main(lambda: 3) == 3

    def refused():
        raise UserError("bad input; pass a good one")

    assert run_main(refused, prog="x") == 2
    with pytest.raises(ZeroDivisionError):   # a bug keeps its traceback
        run_main(lambda: 1 / 0)


def test_mean_gain_measures_the_gain_the_best_linear_predictor_has(tmp_path):
    # The reference column is the regression of the true ε's channel means on x_t's, for data whose channel means
    # are Gaussian: checked here by drawing exactly that (Monte Carlo), not by restating its formula.
    import numpy as np

    mean_gain = _benchmark_module("mean_gain")
    rng = np.random.default_rng(0)
    cov = np.array([[0.06, 0.03, 0.0], [0.03, 0.06, 0.0], [0.0, 0.0, 0.02]])
    pixels, n = 256, 400_000
    for abar in (4e-5, 1.5e-3, 0.03):
        m = rng.multivariate_normal(np.zeros(3), cov, n)
        noise_mean = rng.standard_normal((n, 3)) / np.sqrt(pixels)  # the channel means of N(0, I) noise
        d = np.sqrt(abar) * m + np.sqrt(1 - abar) * noise_mean
        # ε's channel means are noise_mean; the best linear predictor of them from d, its gain averaged over channels
        slope = np.linalg.lstsq(d, noise_mean, rcond=None)[0]
        assert mean_gain.best_linear_gain(cov, abar, pixels) == pytest.approx(np.trace(slope) / 3, abs=3e-3)
    # gains() separates the channel means from the rest.
    x = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    means = x.mean((2, 3), keepdims=True)
    g_mean, g_rest = mean_gain.gains(0.9 * means + 1.1 * (x - means), x)
    assert g_mean == pytest.approx(0.9, abs=1e-4) and g_rest == pytest.approx(1.1, abs=1e-4)
    # The script end to end on the shipped digits model; a model that does not exist is one line.
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/mean_gain.py"), "digits", "--samples", "8",
                             "--timesteps", "999,600", "--threads", "1", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["model"] == "digits" and set(row["timesteps"]) == {"999", "600"}
    assert 0.9 < row["timesteps"]["999"]["rest"] < 1.1 and "| digits | 32 |" in (tmp_path / "results.md").read_text()
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks/mean_gain.py"), "nothing-here", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
