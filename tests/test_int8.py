"""`export-onnx --precision int8`: calibrated on the model's own trajectories, run on OpenVINO and ONNX Runtime."""

import os

import numpy as np
import pytest

from ddpmrt.engine import DDIMSampler, UserError, load_model

from conftest import assert_user_error, run_cli, run_cli_here

pytest.importorskip("onnxruntime.quantization", reason="needs ONNX Runtime's quantizer: pip install -e '.[onnxruntime]'")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    result = run_cli("export-onnx", "digits", "--out", str(folder / "digits.onnx"))
    assert result.returncode == 0, result.stderr
    result = run_cli("export-onnx", "digits", "--precision", "int8", "--calibration-images", "16",
                     "--out", str(folder / "digits-int8.onnx"))
    assert result.returncode == 0, result.stderr
    assert "int8, calibrated on 160 inputs of DDIM-10 trajectories" in result.stdout
    return folder / "digits.onnx", folder / "digits-int8.onnx", result.stdout


def _backends():
    from ddpmrt.engine.backends import openvino_backend

    return ["onnxruntime"] + (["openvino"] if openvino_backend.available() else [])


def test_int8_file_records_its_calibration_and_is_quantized(exported):
    import onnx

    fp32, int8, _ = exported
    graph = onnx.load(str(int8)).graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    fed_by = {output: node.op_type for node in graph.node for output in node.output}
    quantized = [conv for conv in convs if fed_by.get(conv.input[0]) == "DequantizeLinear"]
    # Every Conv but the first and the last reads a dequantized (int8) activation.
    assert len(quantized) == len(convs) - 2
    assert fed_by.get(convs[0].input[0]) != "DequantizeLinear" and fed_by.get(convs[-1].input[0]) != "DequantizeLinear"
    assert not any(node.op_type == "Softmax" and fed_by.get(node.input[0]) == "DequantizeLinear" for node in graph.node)
    model = load_model(int8, backend="onnxruntime")
    assert model.precision == "int8" and "DDIM-10 trajectories of 16 images" in model.metadata.quantization["calibration"]
    assert int8.stat().st_size < fp32.stat().st_size / 2  # int8 weights


@pytest.mark.parametrize("backend", _backends())
def test_int8_samples_stay_close_to_fp32(exported, backend):
    fp32, int8, _ = exported
    reference, model = load_model(fp32, backend=backend, precision="fp32"), load_model(int8, backend=backend)
    assert model.backend == backend and model.precision == "int8"
    sampler = DDIMSampler(model.schedule, 10, clip_sample=1.0)
    shape = (8, *model.image_shape)
    a = sampler.sample(reference, shape, seed=3, progress=False)
    b = sampler.sample(model, shape, seed=3, progress=False)
    difference = np.abs(a - b)
    # The same digits, not bit-identical: int8 moves pixels by a few percent of the [-1, 1] range.
    assert difference.mean() < 0.05 and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97, (difference.mean(), difference.max())


def test_int8_samples_stay_close_on_a_cpu_without_vnni(exported):
    """OpenVINO limited to AVX2 (oneDNN's ONEDNN_MAX_CPU_ISA) multiplies uint8 by int8 as a CPU without VNNI does,
    with int16 pair sums that saturate on full-range weights (CI's AVX2 machine: mean difference 0.07-0.08)."""
    import subprocess
    import sys

    from ddpmrt.engine.backends import openvino_backend

    if not openvino_backend.available():
        pytest.skip("needs OpenVINO: pip install -e '.[openvino]'")
    fp32, int8, _ = exported
    script = ("import sys, numpy as np; from ddpmrt.engine import DDIMSampler, load_model\n"
              "a, b = (load_model(p, backend='openvino', precision=q) for p, q in zip(sys.argv[1:], ('fp32', 'auto')))\n"
              "s = DDIMSampler(b.schedule, 10, clip_sample=1.0)\n"
              "x, y = (s.sample(m, (8, *b.image_shape), seed=3, progress=False) for m in (a, b))\n"
              "print(np.abs(x - y).mean())")
    result = subprocess.run([sys.executable, "-c", script, str(fp32), str(int8)], capture_output=True, text=True,
                            env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) < 0.05, result.stdout


def test_sample_reports_int8(exported, tmp_path):
    _, int8, _ = exported
    result = run_cli("sample", str(int8), "--steps", "3", "--batch", "2", "--out", str(tmp_path / "x.png"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert ", int8)" in result.stdout


def test_check_compares_the_int8_file_at_its_tolerance(exported, tmp_path):
    _, int8, _ = exported
    result = run_cli("check", "digits", str(int8), "--no-export", "--out", str(tmp_path / "check"))
    assert result.returncode == 0, result.stderr
    assert "| digits-int8.onnx | int8 |" in (tmp_path / "check" / "check.md").read_text(encoding="utf-8")


def test_int8_bad_input_is_one_line(exported, tmp_path):
    fp32, int8, _ = exported
    # --precision int8 without a calibrated model: the fix is the int8 export.
    assert_user_error(run_cli_here("sample", str(fp32), "--precision", "int8", "--out", str(tmp_path / "x.png")),
                      "is not calibrated for int8", "export-onnx MODEL --precision int8")
    assert_user_error(run_cli_here("sample", "digits", "--precision", "int8", "--out", str(tmp_path / "x.png")),
                      "int8 runs on a calibrated ONNX model", "--precision int8")
    # An int8 file computes int8 only.
    with pytest.raises(UserError, match="is an int8 model; sample it with --precision auto or int8"):
        load_model(int8, precision="fp32")
    assert_user_error(run_cli_here("export-onnx", "digits", "--precision", "int8", "--calibration-steps", "1001",
                              "--out", str(tmp_path / "x.onnx")), "--calibration-steps")
    assert not (tmp_path / "x.onnx").exists()
    # A damaged int8 file is refused like any sealed export.
    damaged = tmp_path / "damaged.onnx"
    data = bytearray(int8.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged"):
        load_model(damaged, backend="onnxruntime")
