"""Failures that are not a damaged file get their own one-line message: out of memory, a failed provider."""

import pytest

from ddpmrt.engine.errors import UserError, first_line, is_out_of_memory, out_of_memory


def test_out_of_memory_is_recognised_in_each_library_s_words():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : std::bad_alloc"))
    assert is_out_of_memory(RuntimeError("Failed to allocate memory for requested buffer of size 123"))
    assert not is_out_of_memory(RuntimeError("Protobuf parsing failed"))
    assert "smaller --batch" in str(out_of_memory("loading x")) and "\n" not in str(out_of_memory("loading x"))
    assert first_line(RuntimeError("one\ntwo")) == "one" and first_line(RuntimeError()) == "RuntimeError"


@pytest.fixture
def onnx_file(tmp_path):
    pytest.importorskip("torch")
    from ddpmrt.export.conversion.onnx_export import export_onnx
    from ddpmrt.export.model.sources import from_checkpoint

    source = from_checkpoint("digits", "fp32")
    path = tmp_path / "digits.onnx"
    export_onnx(source.module, source.metadata, path)
    return path


@pytest.mark.parametrize("raised,fragment", [
    ("EPFail", "failed to load digits.onnx"),                 # a provider that failed: not "damaged"
    ("RuntimeException:std::bad_alloc", "ran out of memory"),  # memory: not "damaged"
    ("InvalidProtobuf", "truncated or not an ONNX model"),    # a damaged file
    ("Fail", "damaged or not a model ONNX Runtime runs"),
])
def test_onnx_runtime_failures_are_told_apart(onnx_file, monkeypatch, raised, fragment):
    import onnxruntime as ort

    from ddpmrt.engine import load_model

    kind, _, message = raised.partition(":")
    error = getattr(ort.capi.onnxruntime_pybind11_state, kind)

    def failing_session(*args, **kwargs):
        raise error(message or f"[ONNXRuntimeError] {kind}")

    monkeypatch.setattr(ort, "InferenceSession", failing_session)
    with pytest.raises(UserError, match=fragment) as caught:
        load_model(onnx_file, backend="onnxruntime")
    assert "\n" not in str(caught.value)


def test_onnx_runtime_bugs_are_not_user_errors(onnx_file, monkeypatch):
    import onnxruntime as ort

    from ddpmrt.engine import load_model

    def failing_session(*args, **kwargs):
        raise ort.capi.onnxruntime_pybind11_state.RuntimeException("an internal invariant broke")

    monkeypatch.setattr(ort, "InferenceSession", failing_session)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.RuntimeException):
        load_model(onnx_file, backend="onnxruntime")


def test_a_checkpoint_read_that_runs_out_of_memory_says_so(monkeypatch):
    pytest.importorskip("torch")
    from ddpmrt.export.model import checkpoint

    def no_memory(path):
        raise MemoryError()

    monkeypatch.setattr(checkpoint, "load_file", no_memory)
    with pytest.raises(UserError, match="ran out of memory while reading .*model.safetensors"):
        checkpoint.load_unet(checkpoint.Path(__file__).resolve().parent.parent / "engine" / "models" / "digits")
