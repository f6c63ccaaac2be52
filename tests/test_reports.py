"""bench, report and demo: they run, write what they promise, and reject bad arguments."""

import json
import re

import pytest

from ddpmrt.engine.schedule import NoiseSchedule

from conftest import assert_user_error, run_cli, run_cli_here

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


@pytest.mark.gpu  # also runs on the CPU; where a GPU is visible it adds the CUDA rows (it failed there once)
def test_bench_writes_json_markdown_and_plot(tmp_path):
    out = tmp_path / "bench"
    result = run_cli("bench", "--random-weights", "tiny", "--batch", "1,2", "--steps", "2", "--runs", "2",
                     "--warmup", "1", "--threads", "1", "--backends", "torch-cpu,onnxruntime-cpu,torch-cuda-graph",
                     "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    backends = {(r["backend"], r["batch"]) for r in report["results"]}
    assert {("torch-cpu", 1), ("onnxruntime-cpu", 2)} <= backends
    row = report["results"][0]
    assert row["runs"] == 2 and row["network_ms_per_step"]["median"] > 0 and row["images_per_s"]["median"] > 0
    assert "speedup_vs_diffusers" in row and report["diffusers"][0]["ms_per_image"]["n"] == 2
    assert report["environment"]["cores"] and report["environment"]["threads"] == 1
    if not __import__("torch").cuda.is_available():  # on a GPU machine the row runs instead
        assert "torch-cuda-graph" in report["unavailable"]
    assert (out / "bench.png").stat().st_size > 1000 and "| onnxruntime-cpu |" in (out / "bench.md").read_text()
    assert all(r["peak_rss_mb"] > 50 for r in report["results"] + report["diffusers"])  # torch alone is larger
    md = (out / "bench.md").read_text()
    # Columns with nothing in them on the CPU are left out (no GPU memory, no compiled pipeline here).
    header = next(line for line in md.splitlines() if line.startswith("| backend |"))
    assert "| peak RSS MB |" in header and "GPU MB" not in header and "vs compiled" not in header


def test_bench_runs_explicit_and_tuned_timesteps(tmp_path):
    out = tmp_path / "bench"
    result = run_cli("bench", "digits", "--batch", "2", "--runs", "1", "--warmup", "1", "--threads", "1", "--no-startup",
                     "--backends", "onnxruntime-cpu", "--no-diffusers", "--timesteps", "999,700,400,100,10",
                     "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    assert report["sampler"]["timesteps"] == [999, 700, 400, 100, 10] and report["sampler"]["num_steps"] == 5
    assert report["results"][0]["steps"] == 5
    assert "ran the timesteps 999, 700, 400, 100, 10; diffusers' rows run as many steps" in (out / "bench.md").read_text()
    # The shipped table holds DPM-Solver++(3M) at 5 calls; bench's solver rows are order 2, so the entry is missing.
    tuned = run_cli("bench", "digits", "--sampler", "dpmsolver", "--spacing", "tuned", "--steps", "5", "--no-diffusers",
                    "--backends", "onnxruntime-cpu", "--out", str(tmp_path / "t"))
    assert_user_error(tuned, "no tuned timesteps for dpmsolver at 5 steps", "ddpmrt tune")
    tuned = run_cli("bench", "digits", "--spacing", "tuned", "--timesteps", "999,500", "--no-diffusers",
                    "--backends", "onnxruntime-cpu", "--out", str(tmp_path / "t"))
    assert_user_error(tuned, "not both")


@pytest.mark.slow
def test_bench_inductor_against_compiled_diffusers(tmp_path):
    # The rows a GPU run compares (inductor against diffusers + torch.compile), run on the CPU.
    out = tmp_path / "bench"
    result = run_cli("bench", "--random-weights", "tiny", "--batch", "1", "--steps", "2", "--runs", "2", "--warmup", "1",
                     "--threads", "1", "--backends", "inductor-cpu", "--diffusers-compiled", "always",
                     "--peak-tflops", "0.5", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    assert [d["backend"] for d in report["diffusers"]] == ["diffusers-DDIMPipeline-cpu",
                                                           "diffusers-DDIMPipeline-compiled-cpu"]
    row = report["results"][0]
    assert row["backend"] == "inductor-cpu" and row["speedup_vs_diffusers"] > 0 and row["speedup_vs_diffusers_compiled"] > 0
    # TFLOP/s from the FLOP count: 2 network calls per image in the measured time.
    gflop = report["model"]["gflop_per_forward_per_image"]
    assert 0.1 < gflop < 0.2  # the tiny U-Net at 16x16
    assert row["tflops"] == pytest.approx(gflop * 2 / row["ms_per_image"]["median"], rel=1e-6)  # GFLOP/ms = TFLOP/s
    assert row["percent_of_peak"] == pytest.approx(100 * row["tflops"] / 0.5)
    (startup,) = report["startup"]
    assert startup["backend"] == "inductor-cpu" and startup["warm_start_s"] < startup["cold_start_s"]
    assert report["diffusers"][1]["first_run_s"] > report["diffusers"][1]["total_s"]["median"]  # compilation
    md = (out / "bench.md").read_text()
    assert re.search(r"\| inductor-cpu \| (fp32|bf16) \| 1 \|", md) and "cold start s" in md and "vs compiled" in md


@pytest.mark.slow
def test_bench_builds_and_starts_an_inductor_package(tmp_path):
    # The ahead-of-time way to a fast start, measured beside the rest: the .pt2 is built in the run,
    # timed like any backend, and a fresh process that loads it compiles nothing.
    out, scratch = tmp_path / "bench", tmp_path / "scratch"
    scratch.mkdir()
    # Batch 3 only: the package must still take the start-up's batch of 1.
    result = run_cli("bench", "--random-weights", "tiny", "--batch", "3", "--steps", "2", "--runs", "2", "--warmup", "1",
                     "--threads", "1", "--backends", "inductor-package-cpu", "--no-diffusers", "--out", str(out),
                     "--quiet", env={"TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    assert [(r["backend"], r["batch"]) for r in report["results"]] == [("inductor-package-cpu", 3)]
    assert all(r["ms_per_image"]["median"] > 0 for r in report["results"])
    (startup,) = report["startup"]
    assert startup["backend"] == "inductor-package-cpu" and startup["build_s"] > 0
    # Loading the package is far cheaper than building it: a process that compiled would take longer.
    assert 0 < startup["warm_start_s"] < startup["build_s"]
    md = (out / "bench.md").read_text()
    assert f"| inductor-package-cpu | {startup['build_s']:.1f} | {startup['cold_start_s']:.1f} |" in md
    assert not list(scratch.glob("ddpmrt-bench-*"))  # the package and the exports are gone with the run


def test_bench_names_the_package_backends_in_its_error():
    assert_user_error(run_cli_here("bench", "digits", "--backends", "inductor-package"), "inductor-package-cpu")


def test_bench_markdown_says_when_a_graph_hides_the_stages(tmp_path):
    from ddpmrt.engine.profiling import environment, summarize
    from ddpmrt.export.evaluation.bench_report import write_report

    def row(backend, stages, network):
        timing = summarize([1.0, 2.0])
        return {"backend": backend, "precision": "fp16", "batch": 4, "stages": stages, "host_ms_per_step": timing,
                "ms_per_image": timing,
                "images_per_s": timing, "network_ms_per_step": network, "update_ms_per_step": network,
                "tflops": 3.0, "percent_of_peak": 0.3}

    report = {"model": {"config": {"ch": 32}, "image_shape": [1, 16, 16], "gflop_per_forward_per_image": 0.13},
              "sampler": {"sampler": "ddim", "num_steps": 5}, "diffusers": [], "startup": [], "unavailable": {},
              "peak_tflops": 989.0, "environment": environment(1),
              "results": [row("inductor-cuda", "network and update run inside one CUDA graph", None),
                          row("torch-cuda", "network and update by CUDA events", summarize([0.25]))]}
    report["results"][0].update(steps=5, graph={"nodes": 301, "edges": 300, "types": {"kernel": 300, "memset": 1},
                                                "straight_line": True})
    write_report(report, tmp_path)
    md = (tmp_path / "bench.md").read_text()
    # The graph's contents, and the host's time per launch (1.5 ms per step median x 5 steps).
    assert "| inductor-cuda | 4 | 301 | kernel 300, memset 1 | yes | 7.500 |" in md
    assert "| inductor-cuda | fp16 | 4 | in graph | in graph |" in md
    assert "| torch-cuda | fp16 | 4 | 0.25 | 0.250 |" in md and "| 3 (0.3%) |" in md


def test_peak_tflops_by_gpu_name():
    from ddpmrt.export.evaluation.bench import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA GeForce RTX 3050") is None and peak_tflops(None) is None


def test_bench_ddpm_compares_with_ddpm_pipeline(tmp_path):
    out = tmp_path / "bench"
    result = run_cli("bench", "--random-weights", "tiny", "--sampler", "ddpm", "--batch", "1", "--steps", "3",
                     "--runs", "2", "--warmup", "0", "--threads", "1", "--backends", "onnxruntime-cpu",
                     "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    assert report["sampler"]["sampler"] == "ddpm" and report["sampler"]["num_steps"] == 3
    assert [d["backend"] for d in report["diffusers"]] == ["diffusers-DDPMPipeline-cpu"]
    assert report["results"][0]["speedup_vs_diffusers"] > 0
    assert (out / "bench.md").read_text().startswith("# ddpmrt bench: DDPM-3")


def test_bench_times_a_multistep_solver_against_its_diffusers_scheduler(tmp_path):
    out = tmp_path / "bench"
    result = run_cli("bench", "--random-weights", "tiny", "--sampler", "unipc", "--batch", "1", "--steps", "4",
                     "--runs", "1", "--warmup", "0", "--threads", "1", "--backends", "onnxruntime-cpu", "--no-startup",
                     "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    assert report["sampler"]["sampler"] == "unipc" and report["sampler"]["order"] == 2
    assert [d["backend"] for d in report["diffusers"]] == ["diffusers-UniPCMultistepScheduler-cpu"]
    assert report["results"][0]["speedup_vs_diffusers"] > 0


def test_report_sampler_specs_and_seed_spread():
    from ddpmrt.engine.sampler_factory import SamplerSpec
    from ddpmrt.export.evaluation.report import SOLVERS, _by_setting, _cell, parse_samplers

    specs = parse_samplers("dpmsolver:10:3,unipc:8,ddim:25,ddpm:50,unipc:5:3:bh1,unipc:6:order=1:corrector=off,"
                           "ddim:4:timesteps=999,700,400,100,dpmsolver:3:order=3:timesteps=900/500/100")
    assert specs[:5] == [SamplerSpec("dpmsolver", 10, (("order", 3),)), SamplerSpec("unipc", 8),
                         SamplerSpec("ddim", 25), SamplerSpec("ddpm", 50),
                         SamplerSpec("unipc", 5, (("order", 3), ("variant", "bh1")))]
    assert [s.label for s in specs] == [
        "DPM-Solver++(3M), 10 steps", "UniPC-2, 8 steps", "DDIM η=0, 25 steps", "DDPM, 50 steps", "UniPC-3 bh1, 5 steps",
        "UniPC-1 no corrector, 6 steps", "DDIM η=0 timesteps, 4 steps", "DPM-Solver++(3M) timesteps, 3 steps"]
    assert dict(specs[6].options)["timesteps"] == (999, 700, 400, 100)
    assert [s.label for s in parse_samplers("ipndm:8,ipndm:6:4:spacing=trailing")] == [
        "iPNDM-3, 8 steps", "iPNDM-4 trailing, 6 steps"]
    assert all(spec.label for spec in SOLVERS)  # every sampler of the solvers set has its label
    schedule = NoiseSchedule.linear(1000)
    assert list(specs[7].make(schedule).timesteps) == [900, 500, 100] and specs[5].make(schedule).corrector is False
    # The comparison: every new sampler at 5-20 calls, DDIM at 10-100.
    assert {spec.steps for spec in SOLVERS if spec.name != "ddim"} == {5, 8, 10, 15, 20}
    assert {spec.steps for spec in SOLVERS if spec.name == "ddim"} == {10, 25, 50, 100}
    rows = [{"label": "a", "spacing": "leading", "fid": 2.0}, {"label": "a", "spacing": "leading", "fid": 4.0},
            {"label": "b", "spacing": "leading", "fid": 1.0}]
    groups = _by_setting(rows)
    assert [len(g) for g in groups] == [2, 1]
    assert _cell(groups[0], "fid", ".1f") == "3.0 ± 1.0" and _cell(groups[1], "fid", ".1f") == "1.0"


def test_report_measures_quality_and_latency(tmp_path):
    out = tmp_path / "report"
    result = run_cli("report", "digits", "--samplers", "ddim:3,ddpm:4", "--samples", "16", "--threads", "1",
                     "--spacing", "leading,trailing", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in report["rows"]] == ["DDIM η=0, 3 steps, leading", "DDIM η=0, 3 steps, trailing",
                                                    "DDPM, 4 steps, leading", "DDPM, 4 steps, trailing"]
    assert report["best_spacing"]["by_fid"] in ("leading", "trailing") and report["judge"]["dataset"] == "digits"
    for row in report["rows"]:
        assert row["ms_per_image"] > 0 and row["fid"] > 0 and 0 <= row["recognised"] <= 1
        # Few steps: the sampler's own error dominates, and the measured samples follow the theory.
        assert row["gaussian_w2_theory_to_data"] > 0.1
        assert abs(row["gaussian_w2_to_data"] - row["gaussian_w2_theory_to_data"]) < 0.1
        assert (out / row["grid"]).is_file()
    assert report["judge"]["test_accuracy"] > 0.95 and report["judge"]["real_vs_real"]["fid"] > 0
    markdown = (out / "report.md").read_text()
    assert (out / "quality_vs_calls.png").is_file() and "| DDPM, 4 steps, trailing |" in markdown
    # Every sample grid is shown, and exists.
    grids = re.findall(r'<img src="([^"]+)"', markdown)
    assert len(grids) == len(json.loads((out / "report.json").read_text())["rows"])
    assert all((out / grid).is_file() for grid in grids)


def test_report_compares_clipping_in_one_command(tmp_path):
    from ddpmrt.engine.sampler_factory import SamplerSpec
    from ddpmrt.export.evaluation.report import _file_stem, with_clipping

    specs = with_clipping([SamplerSpec("ddim", 5), SamplerSpec("ddpm", 8, (("clip_sample", 2.0),))], [1.0, 0.0])
    assert [s.label for s in specs] == ["DDIM η=0 clip ±1, 5 steps", "DDIM η=0 unclipped, 5 steps",
                                        "DDPM clip ±2, 8 steps"]  # a spec's own value is kept, once
    assert _file_stem("DDIM η=0.5 clip ±1, 5 steps") == "DDIMeta0p5clip1_5steps"
    out = tmp_path / "report"
    result = run_cli("report", "digits", "--samplers", "ddim:3", "--clip-sample", "1,off", "--samples", "8",
                     "--threads", "1", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [(r["label"], r["options"]["clip_sample"]) for r in rows] == [
        ("DDIM η=0 clip ±1, 3 steps", 1.0), ("DDIM η=0 unclipped, 3 steps", None)]
    assert all((out / r["grid"]).is_file() and r["grid"].isascii() for r in rows)


def test_report_on_openvino_in_bf16(tmp_path):
    # The CPU default's engine and precision, judged like the rest: the U-Net and the Gaussian's ε* both on
    # OpenVINO in bf16 (OpenVINO computes f32 where the CPU has no bf16 kernels, and the report says so).
    openvino = pytest.importorskip("openvino", reason="needs OpenVINO: pip install -e '.[openvino]'")
    out = tmp_path / "report"
    result = run_cli("report", "digits", "--backend", "openvino", "--precision", "bf16", "--samplers", "ddim:3",
                     "--samples", "16", "--threads", "1", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    has_bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert report["backend"] == f"openvino (cpu, {'bf16' if has_bf16 else 'fp32'})"
    row = report["rows"][0]
    assert row["fid"] > 0 and abs(row["gaussian_w2_to_data"] - row["gaussian_w2_theory_to_data"]) < 0.1
    failed = run_cli("report", "digits", "--backend", "onnxruntime", "--precision", "bf16", "--out", str(tmp_path / "o"))
    assert_user_error(failed, "runs on --backend torch or openvino")


def test_best_spacing_is_the_lowest_mean_rank():
    from ddpmrt.export.evaluation.report import best_spacing

    def row(spacing, steps, fid):
        return {"sampler": "ddim", "eta": 0.0, "steps": steps, "spacing": spacing, "fid": fid}

    rows = [row("leading", 5, 9.0), row("trailing", 5, 4.0), row("leading", 10, 3.0), row("trailing", 10, 3.5),
            row("leading", 20, 2.0), row("trailing", 20, 1.9), row("leading", 1000, 0.1)]  # 1000: measured once
    assert best_spacing(rows, "fid") == "trailing"
    assert best_spacing([r for r in rows if r["steps"] == 10], "fid") == "leading"
    assert best_spacing([row("leading", 5, 1.0)], "fid") == "leading"


def test_a_report_copies_a_checkpoints_own_export_instead_of_exporting(tmp_path):
    # The shipped models carry model.onnx, the fp32 export of their weights: the demo's report copies it (#33).
    import shutil

    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.export.evaluation.report_models import own_export

    digits, shapes = resolve_model_path("digits"), resolve_model_path("shapes")
    assert own_export(digits) == digits / "model.onnx"
    folder = tmp_path / "digits"
    shutil.copytree(digits, folder)
    shutil.copy2(shapes / "model.onnx", folder / "model.onnx")  # another model's export: not these weights
    assert own_export(folder) is None
    (folder / "model.onnx").unlink()
    assert own_export(folder) is None


@pytest.mark.slow
def test_demo(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--samples", "8", "--threads", "1", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert (out / "report.md").is_file() and (out / "model-fp32.onnx").is_file()
    from ddpmrt.export.evaluation.report import QUICK

    assert len(list((out / "samples").glob("*.png"))) == len(QUICK) + 2
    assert "ddpmrt demo: done" in result.stdout
    # A tuned row beside the same solver on its own spacing (the shipped model's table).
    labels = [row["label"] for row in json.loads((out / "report.json").read_text())["rows"]]
    assert labels[-2:] == ["DPM-Solver++(3M), 5 steps", "DPM-Solver++(3M) tuned, 5 steps"]
    # report.md lists every file the demo built, and says what each is (an engine: the GPUs it targets).
    listed = re.findall(r"^\| \[([^\]]+)\]", (out / "report.md").read_text(), flags=re.M)
    assert "model-fp32.onnx" in listed and "gaussian-optimal-eps.onnx" in listed
    assert all((out / name).is_file() for name in listed)
    if (out / "digits-fp16.plan").is_file():
        assert {"digits-fp16.plan", "digits-fp16.plan.json", "digits-fp16.onnx"} <= set(listed)
        assert "GPU architectures" in (out / "report.md").read_text() or "this GPU" in (out / "report.md").read_text()


@pytest.mark.parametrize("args,fragment", [
    (["bench", "--random-weights", "huge"], "choose one of"),
    (["bench", "digits", "--batch", "0"], "integers in [1, 65536]"),
    (["bench"], "name a checkpoint"),
    (["bench", "digits", "--backends", "cuda"], "choose all or some of"),
    (["bench", "digits", "--backends", "tensorrt", "--no-diffusers"], "none of the backends asked for runs here"),
    (["bench", "digits", "--peak-tflops", "-3"], "outside (0, 1e+06]"),
    (["bench", "digits", "--diffusers-compiled", "maybe"], "invalid choice"),
    (["report", "digits", "--samplers", "ddim:x"], "not understood"),
    (["report", "digits", "--spacing", "cubic"], "unknown spacing"),
    (["report", "digits", "--spacing", "leading,leading"], "each spacing once"),
    (["report", "digits", "--backend", "tensorflow"], "invalid choice"),
    (["report", "digits", "--samplers", "unipc:8:4"], "order must be an integer from 1 to 3, got 4"),
    (["report", "digits", "--samplers", "unipc:8:2:bh3"], "unknown variant 'bh3'; choose one of bh1, bh2"),
    (["report", "digits", "--samplers", "ddim:5:timesteps=999,500"], "2 timesteps for 5 steps"),
    (["report", "digits", "--samplers", "ddim:2:timesteps=500,999"], "strictly decreasing integers in [0, T - 1]"),
    (["report", "digits", "--samplers", "dpmsolver:5:eta=1"], "dpmsolver takes no eta; its options are"),
    (["report", "digits", "--samplers", "dpmsolver:2:3"], "order 3 needs at least 3 steps"),
    (["report", "digits", "--seeds", "0,0"], "distinct integers"),
    (["report", "digits", "--clip-sample", "1,x"], "each value is a number in [0, 100] or off"),
    (["report", "digits", "--clip-sample", "1,1"], "name each value once"),
])
def test_bad_arguments(tmp_path, args, fragment):
    assert_user_error(run_cli_here(*args, "--out", str(tmp_path / "o")), fragment)


def test_report_on_tensorrt_without_a_gpu_says_what_it_needs(tmp_path):
    from ddpmrt.engine.gpu.cuda_runtime import device_compute_capability

    if device_compute_capability() is not None:
        pytest.skip("checks the message given where no GPU is visible")
    result = run_cli("report", "digits", "--backend", "tensorrt", "--samplers", "ddim:3", "--samples", "4",
                     "--out", str(tmp_path / "r"), "--quiet")
    assert_user_error(result, "needs an NVIDIA GPU", "--backend onnxruntime")


def test_bench_without_diffusers_says_so_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    from ddpmrt.export.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    assert main(["bench", "--random-weights", "tiny", "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()


def test_report_runs_a_model_file_as_it_is(tmp_path):
    # The shipped fp32 export, judged as a user's file: its schedule and shape from its metadata, the data set
    # named (this file predates the metadata's data set), the Gaussian's ε* beside it on the same backend.
    from ddpmrt.engine.backends import SHIPPED_MODELS_DIR

    onnx_file = SHIPPED_MODELS_DIR / "digits" / "model.onnx"
    out = tmp_path / "report"
    result = run_cli("report", str(onnx_file), "--dataset", "digits", "--samplers", "ddim:3", "--samples", "8",
                     "--threads", "1", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == "onnxruntime (cpu, fp32)" and report["model"]["source"] == str(onnx_file)
    row = report["rows"][0]
    assert row["fid"] > 0 and abs(row["gaussian_w2_to_data"] - row["gaussian_w2_theory_to_data"]) < 0.1
    assert not (out / "model-fp32.onnx").exists()  # the file itself ran, not an export of the weights
    assert_user_error(run_cli_here("report", str(onnx_file), "--backend", "torch", "--out", str(tmp_path / "o")),
                      "runs as it is: on onnxruntime or openvino")


def test_report_names_the_data_set_a_model_file_does_not():
    from ddpmrt.engine.artifacts.metadata import ModelMetadata
    from ddpmrt.engine.errors import UserError
    from ddpmrt.export.evaluation.report_models import judged_dataset

    metadata = ModelMetadata(schedule=NoiseSchedule.linear(1000), image_shape=(1, 16, 16))
    with pytest.raises(UserError, match="does not say which data set .* pass --dataset digits, shapes or none"):
        judged_dataset(metadata, None, "old.onnx")
    assert judged_dataset(metadata, "none", "old.onnx") is None and judged_dataset(metadata, "shapes", "x") == "shapes"
    # The data set travels in the metadata of every export from a checkpoint.
    written = ModelMetadata(schedule=metadata.schedule, image_shape=(1, 16, 16), dataset="digits")
    read = ModelMetadata.from_strings(written.to_strings(), "x.onnx")
    assert read.dataset == "digits" and judged_dataset(read, None, "x.onnx") == "digits"
    assert judged_dataset(ModelMetadata(schedule=metadata.schedule, image_shape=(3, 32, 32), dataset="cifar10"),
                          None, "c.onnx") is None  # known, not judged: latency and the Gaussian check


def test_report_samples_a_fixed_batch_model_in_chunks_with_the_same_images():
    import numpy as np

    from ddpmrt.engine.backends.base import LoadedModel
    from ddpmrt.engine.samplers import DDIMSampler
    from ddpmrt.export.evaluation.report_models import batch_within, sample_all

    class Model(LoadedModel):
        image_shape = (1, 4, 4)

        def __init__(self, batch=None):
            self.static_batch = batch

        def __call__(self, x, t):
            assert self.static_batch in (None, len(x))
            return 0.3 * x + 0.01 * t[:, None, None, None]

    sampler = DDIMSampler(NoiseSchedule.linear(1000), num_steps=4)
    whole = sample_all(sampler, Model(), 10, seed=5)
    chunked = sample_all(sampler, Model(batch=4), 10, seed=5)  # 4 + 4 + a last chunk of 4 cut to 2
    assert whole.shape == chunked.shape == (10, 1, 4, 4) and np.array_equal(whole, chunked)
    assert batch_within(Model(batch=4), 16) == 4 and batch_within(Model(), 16) == 16
