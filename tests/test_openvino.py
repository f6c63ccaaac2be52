"""The OpenVINO backend and what `auto` precision means on the CPU."""

import warnings

import numpy as np
import pytest

from ddpmrt.engine import DDIMSampler, UserError, cpu, load_model

openvino = pytest.importorskip("openvino", reason="needs OpenVINO: pip install -e '.[openvino]'")
pytest.importorskip("torch")
# Whether OpenVINO itself has bf16 kernels for this CPU (AMX or AVX512-BF16), whatever flags a test fakes.
OPENVINO_HAS_BF16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from ddpmrt.export.conversion.onnx_export import export_onnx
    from ddpmrt.export.model.sources import from_checkpoint

    source = from_checkpoint("digits", "fp32")
    path = tmp_path_factory.mktemp("ov") / "digits.onnx"
    export_onnx(source.module, source.metadata, path)
    return path


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend to be a CPU with (or without) bf16 matrix units (an Intel one unless vendor says)."""
    def pretend(*flags, vendor="Intel"):
        monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(cpu, "cpu_vendor", lambda: vendor)
    return pretend


def _inputs(n=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 16, 16)).astype(np.float32), np.array([0, 500, 999][:n] * (n // 3 + 1))[:n]


def test_onnx_on_the_cpu_runs_on_openvino_and_fp32_matches_onnx_runtime(onnx_file, cpu_flags):
    cpu_flags("avx2", "avx512f")  # no bf16 units: auto is fp32
    model = load_model(onnx_file)
    assert model.backend == "openvino" and model.precision == "fp32" and model.image_shape == (1, 16, 16)
    reference = load_model(onnx_file, backend="onnxruntime")
    x, t = _inputs()
    np.testing.assert_allclose(model(x, t), reference(x, t), atol=2e-5)
    sampler = DDIMSampler(model.schedule, 3)
    np.testing.assert_allclose(sampler.sample(model, (2, 1, 16, 16), seed=1, progress=False),
                               sampler.sample(reference, (2, 1, 16, 16), seed=1, progress=False), atol=1e-4)


def test_auto_is_bf16_where_the_cpu_has_amx(onnx_file, cpu_flags):
    cpu_flags("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    assert cpu.resolve_cpu_precision("auto") == "bf16"
    if not OPENVINO_HAS_BF16:
        # The flags are faked and this CPU's OpenVINO has no bf16 kernels: it computes f32, and says so.
        with pytest.warns(UserWarning, match="OpenVINO computes in f32 on this CPU"):
            model = load_model(onnx_file)
        assert model.precision == "fp32" and model.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
        return
    model = load_model(onnx_file)
    assert model.precision == "bf16"
    assert model.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
    x, t = _inputs()
    reference = load_model(onnx_file, backend="onnxruntime")(x, t)
    error = np.abs(model(x, t) - reference).max() / np.abs(reference).max()
    assert error < 5e-2  # bf16's 8-bit mantissa through the network
    assert load_model(onnx_file, precision="fp32").compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"


def test_auto_is_fp32_on_an_intel_cpu_with_avx512_bf16_alone(onnx_file, cpu_flags):
    # bf16 dot products without AMX tiles measured slower than fp32 there (engine/cpu.py): auto keeps
    # fp32, even though OpenVINO's own default would pick bf16 on such a CPU.
    cpu_flags("avx512f", "avx512_bf16")
    assert cpu.has_bf16_units() and not cpu.bf16_is_faster()
    model = load_model(onnx_file)
    assert model.precision == "fp32"
    assert model.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    with pytest.warns(UserWarning, match=r"Intel AVX512-BF16 without AMX\) measured slower than fp32"):
        assert cpu.resolve_cpu_precision("bf16") == "bf16"


def test_auto_is_bf16_on_an_amd_cpu_with_avx512_bf16(cpu_flags):
    # Zen 5 measured bf16 1.7-1.9x faster than fp32 on every backend (engine/cpu.py).
    cpu_flags("avx512f", "avx512_bf16", vendor="AMD")
    assert cpu.bf16_is_faster() and cpu.resolve_cpu_precision("auto") == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note: bf16 is the fast choice here
        assert cpu.resolve_cpu_precision("bf16") == "bf16"
    cpu_flags("avx512f", "avx2", vendor="AMD")  # an AMD CPU without bf16 instructions (Zen 3)
    assert not cpu.bf16_is_faster() and cpu.resolve_cpu_precision("auto") == "fp32"


def test_bf16_without_bf16_units_runs_with_a_note(onnx_file, cpu_flags):
    cpu_flags("avx2")
    with pytest.warns(UserWarning, match="emulated and will be slower than fp32"):
        model = load_model(onnx_file, precision="bf16")
    # OpenVINO computes bf16 where the CPU really has bf16 kernels (the flags here are faked), else f32.
    assert model.precision == ("bf16" if OPENVINO_HAS_BF16 else "fp32")


def test_cpu_precision_choices(cpu_flags):
    cpu_flags("amx_bf16", "amx_tile", "avx512f")
    assert cpu.has_bf16_units() and cpu.matrix_instructions() == ["amx_bf16", "amx_tile", "avx512f"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu.resolve_cpu_precision("fp32") == "fp32" and cpu.resolve_cpu_precision("bf16") == "bf16"
    with pytest.raises(UserError, match="unknown CPU precision 'fp16'"):
        cpu.resolve_cpu_precision("fp16")


def test_openvino_bad_input_is_one_line(onnx_file, tmp_path, monkeypatch):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07not an onnx model")
    with pytest.raises(UserError, match="cannot load damaged.onnx with OpenVINO"):
        load_model(damaged, backend="openvino")
    with pytest.raises(UserError, match="runs on the CPU"):
        load_model(onnx_file, backend="openvino", device="cuda")
    with pytest.raises(UserError, match="ONNX Runtime computes digits.onnx in fp32"):
        load_model(onnx_file, backend="onnxruntime", precision="bf16")
    # Without OpenVINO: --backend openvino names the install; auto falls back to ONNX Runtime.
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(UserError, match=r'pip install "openvino>=2024.0"'):
        load_model(onnx_file, backend="openvino")
    assert load_model(onnx_file).backend == "onnxruntime"


def test_cpu_vendor_from_the_processor_string_off_linux(monkeypatch):
    # Windows names the vendor in platform.processor(); a vendor that says nothing is "".
    monkeypatch.setattr(cpu.sys, "platform", "win32")
    for text, vendor in (("AMD64 Family 26 Model 2 Stepping 0, AuthenticAMD", "AMD"),
                         ("Intel64 Family 6 Model 143 Stepping 8, GenuineIntel", "Intel"), ("", "")):
        monkeypatch.setattr(cpu.platform, "processor", lambda text=text: text)
        cpu.cpu_vendor.cache_clear()
        assert cpu.cpu_vendor() == vendor
    cpu.cpu_vendor.cache_clear()


def test_each_batch_size_runs_a_static_shape_compile_and_the_last_few_are_kept(onnx_file):
    # OpenVINO's static-shape kernels are faster than its dynamic-batch ones; results must not change.
    from ddpmrt.engine.backends.openvino_backend import STATIC_BATCHES_KEPT

    model = load_model(onnx_file, precision="fp32")
    reference = load_model(onnx_file, backend="onnxruntime")
    assert list(model._by_batch) == [1]  # compiled at load for batch 1
    rng = np.random.default_rng(4)
    sizes = list(range(1, STATIC_BATCHES_KEPT + 3))
    for n in sizes + [2]:
        x, t = rng.standard_normal((n, 1, 16, 16)).astype(np.float32), rng.integers(0, 1000, n)
        np.testing.assert_allclose(model(x, t), reference(x, t), atol=2e-5)
        compiled = model._by_batch[n][0]
        assert [dim.get_length() for dim in compiled.input("x").get_partial_shape()] == [n, 1, 16, 16]
    assert list(model._by_batch) == sizes[-STATIC_BATCHES_KEPT + 1:] + [2]  # least recently used dropped first
    # A server's batch sizes vary with the traffic: one dynamic-batch compile serves them all.
    model.static_shapes = False
    for n in (3, 7):
        x, t = rng.standard_normal((n, 1, 16, 16)).astype(np.float32), rng.integers(0, 1000, n)
        np.testing.assert_allclose(model(x, t), reference(x, t), atol=2e-5)
    assert not model._by_batch[None][0].input("x").get_partial_shape()[0].is_static
    assert None in model._by_batch and 7 not in model._by_batch


def without_shipped_export(tmp_path):
    import shutil

    from ddpmrt.engine.backends import resolve_model_path

    folder = tmp_path / "own" / "digits"
    shutil.copytree(resolve_model_path("digits"), folder, ignore=shutil.ignore_patterns("model.onnx*"))
    return folder


def test_a_shipped_model_runs_on_openvino_from_its_own_export(tmp_path, monkeypatch, cpu_flags):
    # The shipped models carry their fp32 ONNX export: the default path on OpenVINO reads it, exports nothing
    # and needs no PyTorch (the first sample in a fresh process took 2.2 s on the 2-core machine).
    import shutil
    import subprocess
    import sys

    from ddpmrt.engine.backends import resolve_model_path

    monkeypatch.setenv("DDPMRT_CACHE_DIR", str(tmp_path / "cache"))
    model = load_model("digits", backend="openvino", precision="fp32")
    assert model.path == resolve_model_path("digits") / "model.onnx" and not (tmp_path / "cache").exists()
    script = ("import sys; from ddpmrt.engine import load_model; m = load_model('digits', backend='openvino'); "
              "print(m.path.name, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["model.onnx", "False"], result.stderr
    # An export of other weights (a retrained copy) is not used: the checkpoint is exported into the cache.
    copy = tmp_path / "retrained"
    shutil.copytree(resolve_model_path("digits"), copy)
    shutil.copy(resolve_model_path("shapes") / "model.onnx", copy / "model.onnx")
    assert load_model(copy, backend="openvino", precision="fp32").path.parent == tmp_path / "cache" / "onnx"


def test_a_checkpoint_runs_on_openvino_as_its_cached_onnx_export(tmp_path, monkeypatch, cpu_flags):
    # Where bf16 is faster, a checkpoint's default is OpenVINO: its ONNX export, made once, then read back.
    from ddpmrt.export.conversion import onnx_export

    digits = without_shipped_export(tmp_path)  # a checkpoint of the user's own, with no model.onnx beside it
    monkeypatch.setenv("DDPMRT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("DDPMRT_CPU_COMPILE", raising=False)
    cpu_flags("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    model = load_model(digits)
    assert model.backend == "openvino" and model.image_shape == (1, 16, 16)
    assert model.precision == ("bf16" if OPENVINO_HAS_BF16 else "fp32")
    cached = sorted((tmp_path / onnx_export.ONNX_CACHE).glob("digits-*.onnx"))
    assert len(cached) == 1 and model.path == cached[0]
    # fp32 on OpenVINO is the checkpoint's own numbers; the schedule is the checkpoint's.
    reference = load_model("digits", backend="torch", precision="fp32")
    exact = load_model(digits, backend="openvino", precision="fp32")
    x, t = _inputs()
    np.testing.assert_allclose(exact(x, t), reference(x, t), atol=1e-4)
    np.testing.assert_array_equal(exact.schedule.betas, reference.schedule.betas)

    # Later loads read the cached file and export nothing; a damaged cached file is exported again.
    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_onnx", no_export)
    assert load_model(digits, backend="openvino").path == cached[0]
    data = bytearray(cached[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached[0].write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="exported again"):
        load_model(digits, backend="openvino")
    monkeypatch.undo()
    monkeypatch.setenv("DDPMRT_CACHE_DIR", str(tmp_path))
    np.testing.assert_allclose(load_model(digits, backend="openvino", precision="fp32")(x, t), reference(x, t),
                               atol=1e-4)


def test_a_checkpoint_on_openvino_bad_input_is_one_line(tmp_path, monkeypatch):
    from ddpmrt.engine.backends import openvino_backend

    monkeypatch.setenv("DDPMRT_CACHE_DIR", str(tmp_path))
    with pytest.raises(UserError, match="runs on the CPU"):
        load_model("digits", backend="openvino", device="cuda")
    with pytest.raises(UserError, match="unknown CPU precision 'fp16'"):
        load_model("digits", backend="openvino", precision="fp16")
    monkeypatch.setattr(openvino_backend, "available", lambda: False)
    with pytest.raises(UserError, match=r'pip install "openvino>=2024.0" \(or use --backend inductor or torch\)'):
        load_model("digits", backend="openvino")
    assert not (tmp_path / "onnx").exists()  # refused before anything was exported


def test_a_checkpoint_on_openvino_with_an_unwritable_cache_exports_for_itself(tmp_path, monkeypatch):
    # A read-only home must not stop the default path: the export is made for this process, with a note.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("DDPMRT_CACHE_DIR", str(blocked))
    digits = without_shipped_export(tmp_path)
    with pytest.warns(UserWarning, match="cannot be written .* set DDPMRT_CACHE_DIR to a writable folder"):
        model = load_model(digits, backend="openvino", precision="fp32")
    reference = load_model("digits", backend="torch", precision="fp32")
    x, t = _inputs()
    np.testing.assert_allclose(model(x, t), reference(x, t), atol=1e-4)
    assert not model.path.exists()  # the temporary export is gone; the model holds what it read
