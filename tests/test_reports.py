"""bench, report and demo: they run, write what they promise, and reject bad arguments."""

import json

import pytest

from conftest import assert_user_error, run_cli

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


def test_bench_writes_json_markdown_and_plot(tmp_path):
    out = tmp_path / "bench"
    result = run_cli("bench", "--random-weights", "tiny", "--batch", "1,2", "--steps", "2", "--runs", "2",
                     "--warmup", "1", "--threads", "1", "--out", str(out), "--quiet")
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
    assert "| peak RSS MB | GPU MB |" in (out / "bench.md").read_text()


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
    assert (out / "quality_vs_latency.png").is_file() and "| DDPM, 4 steps, trailing |" in (out / "report.md").read_text()


def test_best_spacing_is_the_lowest_mean_rank():
    from ddpmrt.export.report import best_spacing

    def row(spacing, steps, fid):
        return {"sampler": "ddim", "eta": 0.0, "steps": steps, "spacing": spacing, "fid": fid}

    rows = [row("leading", 5, 9.0), row("trailing", 5, 4.0), row("leading", 10, 3.0), row("trailing", 10, 3.5),
            row("leading", 20, 2.0), row("trailing", 20, 1.9), row("leading", 1000, 0.1)]  # 1000: measured once
    assert best_spacing(rows, "fid") == "trailing"
    assert best_spacing([r for r in rows if r["steps"] == 10], "fid") == "leading"
    assert best_spacing([row("leading", 5, 1.0)], "fid") == "leading"


@pytest.mark.slow
def test_demo(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--samples", "8", "--threads", "1", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert (out / "report.md").is_file() and (out / "model-fp32.onnx").is_file()
    assert len(list((out / "samples").glob("*.png"))) == 6
    assert "ddpmrt demo: done" in result.stdout


@pytest.mark.parametrize("args,fragment", [
    (["bench", "--random-weights", "huge"], "choose one of"),
    (["bench", "digits", "--batch", "0"], "positive integers"),
    (["bench"], "name a checkpoint"),
    (["bench", "digits", "--backends", "cuda"], "choose all or some of"),
    (["bench", "digits", "--backends", "tensorrt", "--no-diffusers"], "none of the backends asked for runs here"),
    (["report", "digits", "--samplers", "ddim:x"], "not understood"),
    (["report", "digits", "--spacing", "cubic"], "unknown spacing"),
    (["report", "digits", "--spacing", "leading,leading"], "each spacing once"),
    (["report", "digits", "--backend", "tensorflow"], "invalid choice"),
])
def test_bad_arguments(tmp_path, args, fragment):
    assert_user_error(run_cli(*args, "--out", str(tmp_path / "o")), fragment)


def test_report_on_tensorrt_without_a_gpu_says_what_it_needs(tmp_path):
    from ddpmrt.engine.cuda_runtime import device_compute_capability

    if device_compute_capability() is not None:
        pytest.skip("checks the message given where no GPU is visible")
    result = run_cli("report", "digits", "--backend", "tensorrt", "--samplers", "ddim:3", "--samples", "4",
                     "--out", str(tmp_path / "r"), "--quiet")
    assert_user_error(result, "needs an NVIDIA GPU", "--backend onnxruntime")
