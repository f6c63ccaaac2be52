"""`ddpmrt check` and Polygraphy in the engine build (#23): it passes where the artifacts are right,
fails where they are not (a perturbed weight, an fp16 export that overflows), and bad input is one line."""

import copy
import json
import subprocess
import sys

import pytest

from conftest import assert_user_error, run_cli, run_cli_here

torch = pytest.importorskip("torch")
pytest.importorskip("polygraphy", reason="needs Polygraphy: pip install polygraphy onnx-graphsurgeon")

from ddpmrt.engine.errors import UserError  # noqa: E402
from ddpmrt.export.conversion.onnx_export import export_onnx  # noqa: E402
from ddpmrt.export.evaluation.check import CheckFailed, run_check, timestep_buckets  # noqa: E402
from ddpmrt.export.model.sources import Source, from_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return from_checkpoint("digits", "fp32")


def _export(source: Source, module, path, precision="fp32"):
    metadata = copy.deepcopy(source.metadata)
    metadata.precision = precision
    export_onnx(module, metadata, path, check=False)
    return path


def test_buckets_cover_every_timestep_once():
    for T in (1000, 100, 7):
        covered = [t for lo, hi in timestep_buckets(T) for t in range(lo, hi)]
        assert covered == list(range(T))
    assert timestep_buckets(1000)[0] == (0, 1) and timestep_buckets(1000)[-1] == (900, 1000)


def test_check_passes_and_reports_every_bucket(tmp_path):
    result = run_cli("check", "digits", "--out", str(tmp_path / "check"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "check" / "check.json").read_text())
    assert [a["precision"] for a in report["artifacts"]] == ["fp32", "fp16"] and report["all_finite"]
    for artifact in report["artifacts"]:
        assert artifact["ok"] and len(artifact["buckets"]) == len(timestep_buckets(1000))
        worst = max(b["max_abs_error"] for b in artifact["buckets"])
        assert 0 < worst < artifact["tolerance"]["max"]  # it measured something, and within the limit
    assert "| model-fp16.onnx | fp16 | 900-999 |" in (tmp_path / "check" / "check.md").read_text()


def test_a_perturbed_weight_fails(digits, tmp_path):
    perturbed = copy.deepcopy(digits.module)
    with torch.no_grad():
        perturbed.conv_out.weight.mul_(1.05)  # 5 %: an export of the wrong weights
    onnx_path = _export(digits, perturbed, tmp_path / "perturbed.onnx")
    with pytest.raises(CheckFailed) as failure:
        run_check(digits, [onnx_path], tmp_path / "report")
    message = str(failure.value)
    assert message.startswith("check failed: perturbed.onnx at t ") and "limit 0.001" in message
    assert "\n" not in message and failure.value.exit_status == 1
    report = json.loads((tmp_path / "report" / "check.json").read_text())
    assert not report["artifacts"][0]["ok"] and report["failures"]


def test_an_fp16_export_that_overflows_fails(tmp_path):
    source = from_checkpoint("digits", "fp32")
    with torch.no_grad():
        source.module.conv_in.weight.mul_(1e5)  # activations past fp16's 65504 ahead of the first GroupNorm
    fp32 = _export(source, source.module, tmp_path / "big-fp32.onnx")
    fp16 = _export(source, source.module, tmp_path / "big-fp16.onnx", "fp16")
    with pytest.raises(CheckFailed) as failure:
        run_check(source, [fp32, fp16], tmp_path / "report")
    assert "big-fp16.onnx" in str(failure.value) and "NaN or Inf in" in str(failure.value)
    report = json.loads((tmp_path / "report" / "check.json").read_text())
    by_name = {a["file"].split("/")[-1]: a for a in report["artifacts"]}
    assert by_name["big-fp32.onnx"]["ok"] and not by_name["big-fp16.onnx"]["ok"] and not report["all_finite"]


def test_bad_input_is_one_line(tmp_path, digits):
    onnx_path = _export(digits, digits.module, tmp_path / "good.onnx")
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(onnx_path.read_bytes()[:5000])
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a model")
    out = str(tmp_path / "out")
    assert_user_error(run_cli_here("check", "digits", str(damaged), "--out", out), "damaged.onnx")
    assert_user_error(run_cli_here("check", "digits", str(foreign), "--out", out), "compares .onnx, .plan and .pt2")
    assert_user_error(run_cli_here("check", str(onnx_path), "--out", out), "give the checkpoint or shipped name first")
    assert_user_error(run_cli_here("check", "digits", "--no-export", "--out", out), "nothing to compare")
    assert_user_error(run_cli_here("check", "no-such-model", "--out", out), "not found")
    for result in (run_cli("check", "digits", str(damaged), "--out", out),):
        assert result.returncode == 2
    with pytest.raises(UserError, match="share a file name"):
        (tmp_path / "b").mkdir()
        run_check(digits, [onnx_path, _export(digits, digits.module, tmp_path / "b" / "good.onnx")], tmp_path / "r")


def test_export_engine_sanitizes_checks_and_records_it(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="needs TensorRT-RTX to build: pip install -e '.[tensorrt-rtx]'")
    plan = tmp_path / "d.plan"
    result = run_cli("export-engine", "digits", "--flavour", "tensorrt-rtx", "--targets", "sm86", "--batch", "1:2:4",
                     "--sanitize", "--check", "--out", str(plan))
    assert result.returncode == 0, result.stderr
    sidecar = json.loads(plan.with_suffix(".plan.json").read_text())
    assert sidecar["sanitize"]["applied"] == ["fold_constants", "infer_shapes"]
    assert sidecar["sanitize"]["nodes_before"] >= sidecar["sanitize"]["nodes_after"] > 100
    assert sidecar["network_layers"] > 100
    report = json.loads((tmp_path / "d-check" / "check.json").read_text())
    by_kind = {a["kind"]: a for a in report["artifacts"]}
    assert by_kind["onnx"]["ok"] and by_kind["onnx"]["precision"] == "fp16"
    from ddpmrt.engine.gpu.cuda_runtime import device_compute_capability

    if device_compute_capability() is None:
        assert by_kind["engine"]["skipped"].startswith("no GPU here") and "skipped d.plan" in result.stdout
        assert sidecar["inspection"]["skipped"].startswith("no GPU here")
        assert by_kind["engine"]["inspection"]["skipped"].startswith("no GPU here")
        assert "Engine d.plan: not inspected (no GPU here" in (tmp_path / "d-check" / "check.md").read_text()
    # The build with sanitize is its own cache entry; without it, the earlier key.
    again = run_cli("export-engine", "digits", "--flavour", "tensorrt-rtx", "--targets", "sm86", "--batch", "1:2:4",
                    "--sanitize", "--out", str(plan))
    assert "is up to date" in again.stdout, again.stdout
    assert_user_error(run_cli_here("export-engine", str(plan.with_suffix(".onnx")), "--flavour", "tensorrt-rtx", "--targets",
                              "sm86", "--check", "--out", str(tmp_path / "e.plan")), "--check compares against the PyTorch model")


@pytest.mark.gpu
def test_engine_inspection_on_a_gpu(tmp_path):
    from ddpmrt.engine.gpu.cuda_runtime import device_compute_capability

    if device_compute_capability() is None:
        pytest.skip("needs a GPU: deserializing an engine for inspection needs one (TensorRT-RTX too)")
    flavour_module = pytest.importorskip("tensorrt", reason="needs TensorRT on the GPU (pip install -e '.[tensorrt]')")
    assert flavour_module
    plan = tmp_path / "d.plan"
    result = run_cli("export-engine", "digits", "--flavour", "tensorrt", "--batch", "1:2:4", "--out", str(plan))
    assert result.returncode == 0, result.stderr
    inspection = json.loads(plan.with_suffix(".plan.json").read_text())["inspection"]
    assert {t["name"] for t in inspection["tensors"]} == {"x", "t", "eps"} and inspection["layers"] > 0
    assert inspection["profiles"][0]["x"][0][0] == 1 and inspection["profiles"][0]["x"][2][0] == 4
    # ddpmrt check lists the same, and runs the engine with TrtRunner.
    result = run_cli("check", "digits", str(plan), "--no-export", "--out", str(tmp_path / "check"))
    assert result.returncode == 0, result.stderr
    artifact = json.loads((tmp_path / "check" / "check.json").read_text())["artifacts"][0]
    assert artifact["ok"] and artifact["inspection"]["layers"] == inspection["layers"]


def test_a_static_batch_onnx_is_checked_at_its_batch(digits, tmp_path):
    # An `export-onnx --batch 3` file takes batch 3 only: check feeds it that, not 1 and 4.
    for n in (3, 5):
        export_onnx(digits.module, digits.metadata, tmp_path / f"b{n}.onnx", batch=n, check=False)
    report = run_check(digits, [tmp_path / "b3.onnx"], tmp_path / "report")
    assert report["batches"] == [3] and report["artifacts"][0]["ok"]
    with pytest.raises(UserError, match=r"no batch size in common \(5 > 3\)"):
        run_check(digits, [tmp_path / "b3.onnx", tmp_path / "b5.onnx"], tmp_path / "report2")


def test_polygraphy_takes_the_engines_flavour_even_after_an_onnx_only_import():
    # Polygraphy reads POLYGRAPHY_USE_TENSORRT_RTX at its first import; `check` used to import it with the flavour
    # unset first, so a TensorRT-RTX engine's runner asked for `tensorrt`.  In a fresh process, as `check` runs.
    script = (
        "from ddpmrt.export.conversion.polygraphy_tools import load_polygraphy\n"
        "from ddpmrt.engine.errors import UserError\n"
        "load_polygraphy()\n"                       # an ONNX-only use first (sanitize, ONNX Runtime runners)
        "load_polygraphy(True)\n"
        "from polygraphy.mod.trt_importer import tensorrt_module_and_version_string\n"
        "assert tensorrt_module_and_version_string().startswith('tensorrt_rtx'), tensorrt_module_and_version_string()\n"
        "import polygraphy.backend.trt\n"           # the TensorRT backend binds its module now
        "try:\n    load_polygraphy(False)\nexcept UserError as e:\n    print('refused:', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused: Polygraphy's TensorRT runners are already loaded for TensorRT-RTX" in result.stdout


def test_engines_of_both_flavours_are_checked_apart(tmp_path):
    from ddpmrt.export.evaluation.check import engines_flavour

    for name, flavour in (("a.plan", "tensorrt"), ("b.plan", "tensorrt-rtx")):
        (tmp_path / name).write_bytes(b"engine")
        (tmp_path / (name + ".json")).write_text(json.dumps({"flavour": flavour}))
    assert engines_flavour([tmp_path / "b.plan", tmp_path / "m.onnx"]) is True
    assert engines_flavour([tmp_path / "a.plan"]) is False and engines_flavour([tmp_path / "m.onnx"]) is None
    with pytest.raises(UserError, match="one TensorRT flavour at a time"):
        engines_flavour([tmp_path / "a.plan", tmp_path / "b.plan"])
