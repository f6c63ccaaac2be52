"""TensorRT engines: builds with TensorRT-RTX here (no GPU needed), the sidecar and cache, every
error message, and the run path against ONNX Runtime wherever a GPU and a flavour exist."""

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import assert_user_error, run_cli, run_cli_here
from helpers import make_checkpoint

pytest.importorskip("torch")
pytest.importorskip("onnx")

from ddpmrt.engine.backends import tensorrt_backend  # noqa: E402
from ddpmrt.engine.backends.tensorrt_backend import check_compatible  # noqa: E402
from ddpmrt.engine.backends.tensorrt_flavour import Flavour, import_flavour  # noqa: E402
from ddpmrt.engine.errors import UserError  # noqa: E402
from ddpmrt.engine.gpu.cuda_runtime import device_compute_capability  # noqa: E402

try:
    import tensorrt_rtx
except ImportError:
    tensorrt_rtx = None
needs_rtx = pytest.mark.skipif(tensorrt_rtx is None, reason="needs TensorRT-RTX: pip install tensorrt-rtx")
HAS_GPU = device_compute_capability() is not None


def _installed_flavour():
    try:
        return import_flavour("auto")
    except Exception:
        return None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=2)


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    """A TensorRT-RTX engine of the tiny model, built ahead of time for sm86 and sm89."""
    if tensorrt_rtx is None:
        pytest.skip("needs TensorRT-RTX: pip install tensorrt-rtx")
    plan = tmp_path_factory.mktemp("engine") / "tiny.plan"
    result = run_cli("export-engine", str(tiny), "--out", str(plan), "--batch", "1:4:16", "--targets", "sm86,sm89",
                     "--flavour", "tensorrt-rtx")
    assert result.returncode == 0, result.stderr
    return plan, result.stdout


@needs_rtx
def test_build_writes_onnx_engine_and_sidecar(built):
    plan, stdout = built
    assert "built" in stdout and " s, " in stdout and "MB" in stdout   # build time and engine size
    assert plan.with_suffix(".onnx").is_file() and plan.stat().st_size > 100_000
    sidecar = json.loads(Path(str(plan) + ".json").read_text())
    assert sidecar["flavour"] == "tensorrt-rtx" and sidecar["flavour_version"] == tensorrt_rtx.__version__
    assert sidecar["profile"] == {"min": 1, "opt": 4, "max": 16, "static": False}
    assert sidecar["targets"] == ["sm86", "sm89"] and sidecar["tensors"]["x"] == "fp16"
    assert sidecar["engine_bytes"] == plan.stat().st_size
    from ddpmrt.export.model.sources import sha256_file
    assert sidecar["onnx_sha256"] == sha256_file(plan.with_suffix(".onnx"))
    assert json.loads(sidecar["metadata"]["ddpmrt.image_shape"]) == [1, 16, 16]


@needs_rtx
def test_engine_cache(built, tiny):
    plan, _ = built
    mtime = plan.stat().st_mtime_ns
    args = ["export-engine", str(tiny), "--out", str(plan), "--batch", "1:4:16", "--targets", "sm86,sm89",
            "--flavour", "tensorrt-rtx"]
    again = run_cli(*args)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr
    assert plan.stat().st_mtime_ns == mtime
    forced = run_cli(*args, "--force")
    assert forced.returncode == 0 and "built" in forced.stdout
    assert plan.stat().st_mtime_ns != mtime


@needs_rtx
def test_key_change_rebuilds_static_shape(tiny, tmp_path):
    plan = tmp_path / "static.plan"
    base = ["export-engine", str(tiny), "--out", str(plan), "--targets", "sm86", "--flavour", "tensorrt-rtx"]
    assert run_cli(*base, "--batch", "4").returncode == 0
    assert json.loads(Path(str(plan) + ".json").read_text())["profile"]["static"] is True
    result = run_cli(*base, "--batch", "8")
    assert result.returncode == 0 and "built" in result.stdout
    assert json.loads(Path(str(plan) + ".json").read_text())["profile"]["max"] == 8


@needs_rtx
def test_shipped_digits_engine_builds(tmp_path):
    plan = tmp_path / "digits.plan"
    result = run_cli("export-engine", "digits", "--out", str(plan), "--targets", "sm86,sm89,sm120")
    assert result.returncode == 0, result.stderr
    assert json.loads(Path(str(plan) + ".json").read_text())["metadata"]["ddpmrt.source"] == "digits"


@needs_rtx
@pytest.mark.slow
def test_cifar10_engine_builds(tmp_path):
    ckpt = make_checkpoint(tmp_path / "cifar10", "cifar10")
    plan = tmp_path / "cifar10.plan"
    result = run_cli("export-engine", str(ckpt), "--out", str(plan), "--precision", "fp16", "--batch", "1:8:64",
                     "--targets", "sm86")
    assert result.returncode == 0, result.stderr
    assert plan.stat().st_size > 30e6  # 35.7 M fp16 weights


@pytest.mark.parametrize("args,fragment", [
    (["--targets", "sm90", "--flavour", "tensorrt-rtx"], "Hopper"),
    (["--targets", "sm86", "--flavour", "tensorrt"], "not installed"),
    (["--flavour", "tensorrt-llm"], "unknown TensorRT flavour"),
    (["--batch", "8:4:16", "--flavour", "tensorrt-rtx"], "MIN <= OPT <= MAX"),
    (["--batch", "abc", "--flavour", "tensorrt-rtx"], "--batch"),
])
def test_export_engine_argument_errors(tiny, tmp_path, args, fragment):
    if tensorrt_rtx is None and "tensorrt-rtx" in args:
        pytest.skip("needs TensorRT-RTX: pip install tensorrt-rtx")
    plan = tmp_path / "x.plan"
    assert_user_error(run_cli_here("export-engine", str(tiny), "--out", str(plan), *args), fragment)
    assert not plan.exists()


@needs_rtx
def test_export_engine_input_errors(built, tmp_path):
    plan, _ = built
    onnx_file = plan.with_suffix(".onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(onnx_file.read_bytes()[:4000])
    assert_user_error(run_cli_here("export-engine", str(bad), "--out", str(tmp_path / "a.plan"), "--targets", "sm86"),
                      "truncated")
    import onnx
    model = onnx.load(str(onnx_file))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    assert_user_error(run_cli_here("export-engine", str(bare), "--out", str(tmp_path / "b.plan"), "--targets", "sm86"),
                      "--schedule and --image-shape")
    result = run_cli("export-engine", str(bare), "--out", str(tmp_path / "b.plan"), "--targets", "sm86",
                     "--schedule", "linear", "--image-shape", "1,16,16", "--batch", "2")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "a.plan").exists()


# -- the run path: checks made before deserializing --------------------------------------------


def _sidecar(plan):
    return json.loads(Path(str(plan) + ".json").read_text())


def _rtx():
    return Flavour("tensorrt-rtx", tensorrt_rtx, tensorrt_rtx.__version__) if tensorrt_rtx else \
        Flavour("tensorrt-rtx", None, "1.7.1.116")


@needs_rtx
def test_compatibility_checks(built):
    plan, _ = built
    sidecar = _sidecar(plan)
    flavour = _rtx()
    check_compatible(plan, sidecar, (8, 6), flavour)           # an sm86 GPU runs it
    with pytest.raises(Exception, match="this GPU is sm90.*--targets current"):
        check_compatible(plan, sidecar, (9, 0), flavour)
    with pytest.raises(Exception, match="needs an NVIDIA GPU.*onnxruntime"):
        check_compatible(plan, sidecar, None, flavour)
    with pytest.raises(Exception, match="built with tensorrt-rtx 0.1.*rebuild"):
        check_compatible(plan, {**sidecar, "flavour_version": "0.1"}, (8, 6), flavour)
    default_targets = {**sidecar, "targets": ["default"]}
    check_compatible(plan, default_targets, (12, 0), flavour)
    current = {**sidecar, "targets": ["current"], "built_with_gpu": [8, 9]}
    check_compatible(plan, current, (8, 9), flavour)
    with pytest.raises(Exception, match="this GPU is sm86"):
        check_compatible(plan, current, (8, 6), flavour)


@needs_rtx
@pytest.mark.skipif(HAS_GPU, reason="checks the message given where no GPU is visible")
def test_sampling_an_engine_without_gpu(built, tmp_path):
    plan, _ = built
    out = tmp_path / "o.png"
    assert_user_error(run_cli_here("sample", str(plan), "--out", str(out)), "needs an NVIDIA GPU")
    assert not out.exists()


@needs_rtx
def test_damaged_engine_and_sidecar(built, tmp_path):
    plan, _ = built
    copy = tmp_path / "copy.plan"
    copy.write_bytes(plan.read_bytes()[:1000])
    assert_user_error(run_cli_here("sample", str(copy), "--out", str(tmp_path / "o.png")), "no sidecar")
    Path(str(copy) + ".json").write_text(Path(str(plan) + ".json").read_text())
    assert_user_error(run_cli_here("sample", str(copy), "--out", str(tmp_path / "o.png")), "truncated")
    Path(str(copy) + ".json").write_text("{")
    assert_user_error(run_cli_here("sample", str(copy), "--out", str(tmp_path / "o.png")), "damaged")
    sidecar = _sidecar(plan)
    copy.write_bytes(plan.read_bytes())
    from ddpmrt.engine.artifacts.integrity import seal_json

    Path(str(copy) + ".json").write_text(json.dumps({**sidecar, "flavour": "tensorrt", "checksum": "edited"}))
    assert_user_error(run_cli_here("sample", str(copy), "--out", str(tmp_path / "o.png")), "damaged")
    Path(str(copy) + ".json").write_text(json.dumps(seal_json({**sidecar, "flavour": "tensorrt"})))
    if _installed_flavour() is None or _installed_flavour().name != "tensorrt":
        assert_user_error(run_cli_here("sample", str(copy), "--out", str(tmp_path / "o.png")), "pip install tensorrt")


def test_no_flavour_message_names_pip(monkeypatch):
    import importlib

    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name.startswith("tensorrt") else real(name, *a))
    with pytest.raises(Exception, match="pip install tensorrt-rtx"):
        import_flavour("auto")


# -- the backend only uses API that exists ---------------------------------------------------------

# Which TensorRT class each object in tensorrt_backend.py is.
OBJECT_CLASSES = {"_runtime": "Runtime", "runtime": "Runtime", "_engine": "ICudaEngine", "engine": "ICudaEngine",
                  "_context": "IExecutionContext", "context": "IExecutionContext", "runtime_config": "IRuntimeConfig",
                  "_runtime_cache": "IRuntimeCache"}


def _attributes_used() -> dict[str, set[str]]:
    tree = ast.parse(Path(tensorrt_backend.__file__).read_text())
    used: dict[str, set[str]] = {cls: set() for cls in OBJECT_CLASSES.values()}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
            if name in OBJECT_CLASSES:
                used[OBJECT_CLASSES[name]].add(node.attr)
    return used


@needs_rtx
def test_backend_calls_only_methods_of_installed_tensorrt_rtx():
    used = _attributes_used()
    assert used["IExecutionContext"] >= {"set_input_shape", "set_tensor_address", "execute_async_v3"}
    for cls, names in used.items():
        missing = sorted(n for n in names if not hasattr(getattr(tensorrt_rtx, cls), n))
        assert not missing, f"{cls} has no {missing} in tensorrt_rtx {tensorrt_rtx.__version__}"
    for name in ("Logger", "Runtime"):
        assert hasattr(tensorrt_rtx, name)


# -- on a GPU with a TensorRT flavour --------------------------------------------------------------

def needs_gpu_and_trt(test):
    """A GPU test: marked `gpu` (pytest -m gpu selects them) and skipped with its reason where it cannot run."""
    skip = pytest.mark.skipif(not HAS_GPU or _installed_flavour() is None,
                              reason="needs an NVIDIA GPU, cuda-python and TensorRT or TensorRT-RTX")
    return pytest.mark.gpu(skip(test))


@needs_gpu_and_trt
def test_engine_matches_onnxruntime_on_gpu(tiny, tmp_path):
    from ddpmrt.engine import DDIMSampler, load_model

    plan = tmp_path / "gpu.plan"
    result = run_cli("export-engine", str(tiny), "--out", str(plan), "--targets", "current", "--batch", "1:4:8")
    assert result.returncode == 0, result.stderr
    trt_model = load_model(plan)
    ort_model = load_model(plan.with_suffix(".onnx"))
    x = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    t = np.array([0, 10, 500, 999])
    np.testing.assert_allclose(trt_model(x, t), ort_model(x, t), atol=2e-2)
    sampler = DDIMSampler(trt_model.schedule, 10)
    a = sampler.sample(trt_model, (4, 1, 16, 16), seed=0, progress=False)
    b = sampler.sample(ort_model, (4, 1, 16, 16), seed=0, progress=False)
    assert np.abs(a - b).max() < 0.05
    # The whole loop as one CUDA graph: captured once, replayed for a new seed and sampler, same images.
    graph_model = load_model(plan, cuda_graph=True)
    c = sampler.sample(graph_model, (4, 1, 16, 16), seed=0, progress=False)
    sampler.sample(graph_model, (4, 1, 16, 16), seed=1, progress=False)
    d = sampler.sample(graph_model, (4, 1, 16, 16), seed=0, progress=False)
    np.testing.assert_array_equal(c, d)
    assert graph_model.device_loop.captures == 1 and np.abs(c - a).max() < 1e-3
    # Graphs at two batch sizes on one engine (a context each), replayed alternately: each gives its eager images.
    e = sampler.sample(graph_model, (2, 1, 16, 16), seed=5, progress=False)
    for _ in range(2):
        np.testing.assert_array_equal(sampler.sample(graph_model, (4, 1, 16, 16), seed=0, progress=False), c)
        np.testing.assert_array_equal(sampler.sample(graph_model, (2, 1, 16, 16), seed=5, progress=False), e)
    assert graph_model.device_loop.captures == 2
    np.testing.assert_allclose(e, sampler.sample(trt_model, (2, 1, 16, 16), seed=5, progress=False), atol=1e-3)
    assert_user_error(run_cli_here("sample", str(plan), "--batch", "9", "--out", str(tmp_path / "o.png")), "1 to 8")


@needs_rtx
def test_load_model_refuses_what_an_engine_cannot_honour(built, tmp_path):
    # An engine computes in the precision it was built for, on a GPU: another precision or CPU threads
    # are refused with one line, before any GPU is looked for, never dropped.
    from ddpmrt.engine import load_model
    from ddpmrt.engine.errors import UserError

    plan, _ = built
    with pytest.raises(UserError, match=r"tiny.plan is an engine built for fp16; it cannot run in fp32"):
        load_model(plan, precision="fp32")
    with pytest.raises(UserError, match="--threads sets CPU threads"):
        load_model(plan, threads=2)
    assert_user_error(run_cli_here("sample", str(plan), "--precision", "bf16", "--out", str(tmp_path / "x.png")), "built for fp16")


def test_targets_current_stands_alone_and_keys_the_cache_by_gpu(monkeypatch):
    # TensorRT-RTX refuses CURRENT beside named targets (set_compute_capability returns False); and an engine
    # built for `current` on one GPU must not be "up to date" on another.
    from types import SimpleNamespace

    from ddpmrt.export.conversion import engine_build
    from ddpmrt.export.conversion.engine_build import BatchProfile, cache_key, parse_targets

    rtx = SimpleNamespace(is_rtx=True, name="tensorrt-rtx", version="1.7")
    monkeypatch.setattr(engine_build, "device_compute_capability", lambda: (8, 6))
    with pytest.raises(UserError, match="cannot be combined with named targets"):
        parse_targets("current,sm86", rtx)
    assert parse_targets("current", rtx) == ["current"] and parse_targets("sm86,sm89", rtx) == ["sm86", "sm89"]
    profile = BatchProfile.parse("1:4:16")
    on_86 = cache_key("abc", rtx, profile, ["current"], None), cache_key("abc", rtx, profile, ["sm86"], None)
    monkeypatch.setattr(engine_build, "device_compute_capability", lambda: (9, 0))
    on_90 = cache_key("abc", rtx, profile, ["current"], None), cache_key("abc", rtx, profile, ["sm86"], None)
    assert on_86[0] != on_90[0] and on_86[1] == on_90[1]


def test_auto_targets_and_gpus_tensorrt_rtx_cannot_build_for(monkeypatch):
    # No GPU: the named default set, sm121 included.  A Hopper GPU with TensorRT-RTX: one line at once, naming the
    # flavour that builds for it (not an optimization-level message after a failed build).
    from types import SimpleNamespace

    from ddpmrt.engine.backends.tensorrt_flavour import RTX_DEFAULT_TARGETS, rtx_target
    from ddpmrt.export.conversion import engine_build

    rtx = SimpleNamespace(is_rtx=True, name="tensorrt-rtx", version="1.7")
    monkeypatch.setattr(engine_build, "device_compute_capability", lambda: None)
    assert engine_build.parse_targets("auto", rtx) == list(RTX_DEFAULT_TARGETS) and "sm121" in RTX_DEFAULT_TARGETS
    monkeypatch.setattr(engine_build, "device_compute_capability", lambda: (9, 0))
    for targets in ("auto", "current"):
        with pytest.raises(UserError, match=r"this GPU \(sm90\) is not a TensorRT-RTX target .*--flavour tensorrt"):
            engine_build.parse_targets(targets, rtx)
    assert engine_build.parse_targets("sm86", rtx) == ["sm86"]  # building ahead for other GPUs is still fine
    monkeypatch.setattr(engine_build, "device_compute_capability", lambda: (12, 0))
    assert engine_build.parse_targets("auto", rtx) == ["current"] and rtx_target((12, 1)) == "sm121"


@needs_rtx
def test_an_engine_tensorrt_rtx_calls_invalid_is_one_line_before_deserializing():
    from ddpmrt.engine.backends.tensorrt_backend import check_engine_validity

    runtime = tensorrt_rtx.Runtime(tensorrt_rtx.Logger(tensorrt_rtx.Logger.ERROR))
    with pytest.raises(UserError, match=r"d.plan cannot run here \(malformed_engine\); rebuild it"):
        check_engine_validity(runtime, b"not an engine" * 64, "d.plan")
    check_engine_validity(SimpleNamespace(), b"", "d.plan")  # full TensorRT has no such call: nothing to check


@needs_rtx
def test_a_static_batch_onnx_with_a_dynamic_profile_is_one_line(tmp_path):
    onnx = tmp_path / "digits-b4.onnx"
    assert run_cli("export-onnx", "digits", "--batch", "4", "--out", str(onnx)).returncode == 0
    assert_user_error(run_cli_here("export-engine", str(onnx), "--out", str(tmp_path / "e.plan"), "--batch", "1:4:16",
                              "--flavour", "tensorrt-rtx", "--targets", "sm86"),
                      "has a fixed batch of 4", "--batch 4:4:4")
    assert not (tmp_path / "e.plan").exists()
