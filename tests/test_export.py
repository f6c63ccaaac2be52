"""ONNX export (fp32, fp16, from diffusers), its metadata and validation, and the ONNX Runtime backend."""

import json
import re

import numpy as np
import pytest

from conftest import assert_user_error, run_cli, run_cli_here
from helpers import make_checkpoint

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from ddpmrt.engine import DDIMSampler, load_model  # noqa: E402


def _errors(stdout: str) -> tuple[float, float]:
    match = re.search(r"max abs error ([0-9.e+-]+), mean ([0-9.e+-]+)", stdout)
    assert match, stdout
    return float(match.group(1)), float(match.group(2))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=1)


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    paths = {}
    for precision in ("fp32", "fp16"):
        paths[precision] = out / f"tiny-{precision}.onnx"
        result = run_cli("export-onnx", str(tiny), "--out", str(paths[precision]), "--precision", precision)
        assert result.returncode == 0, result.stderr
        paths[precision + "_errors"] = _errors(result.stdout)
    return paths


def test_fp32_export_matches_pytorch(tiny_onnx):
    max_err, mean_err = tiny_onnx["fp32_errors"]
    assert max_err <= 1e-4 and mean_err <= 1e-5


def test_fp16_export_is_typed_end_to_end(tiny_onnx):
    max_err, mean_err = tiny_onnx["fp16_errors"]
    assert max_err <= 2e-2 and mean_err <= 2e-3
    model = onnx.load(str(tiny_onnx["fp16"]))
    types = {i.name: i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]}
    assert types == {"x": onnx.TensorProto.FLOAT16, "t": onnx.TensorProto.INT64, "eps": onnx.TensorProto.FLOAT16}
    # Type inference over the whole graph succeeds: no node mixes float and half inputs.
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    # GroupNorm statistics stay in fp32 (normalization runs on float inputs).
    inferred = onnx.shape_inference.infer_shapes(model)
    value_types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    norm_inputs = [value_types.get(n.input[0]) for n in model.graph.node if n.op_type in ("InstanceNormalization", "GroupNormalization")]
    assert norm_inputs and all(t == onnx.TensorProto.FLOAT for t in norm_inputs)


def test_metadata_makes_the_file_self_describing(tiny_onnx, tiny):
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx["fp16"])).metadata_props}
    assert json.loads(props["ddpmrt.schedule"]) == {"kind": "linear", "num_train_timesteps": 1000,
                                                     "beta_start": 1e-4, "beta_end": 0.02}
    assert json.loads(props["ddpmrt.image_shape"]) == [1, 16, 16]
    assert props["ddpmrt.precision"] == "fp16" and props["ddpmrt.prediction_type"] == "epsilon"
    assert json.loads(props["ddpmrt.model_config"])["ch"] == 32
    from ddpmrt.export.model.sources import sha256_file
    assert props["ddpmrt.source_sha256"] == sha256_file(tiny / "model.safetensors")
    assert props["ddpmrt.version"]


def test_onnxruntime_sampling_matches_torch(tiny_onnx, tiny):
    torch_model = load_model(tiny, precision="fp32")
    ort_model = load_model(tiny_onnx["fp32"], backend="onnxruntime", threads=1)
    assert ort_model.backend == "onnxruntime" and ort_model.image_shape == (1, 16, 16)
    sampler = DDIMSampler(ort_model.schedule, num_steps=10)
    a = sampler.sample(torch_model, (3, 1, 16, 16), seed=2, progress=False)
    b = sampler.sample(ort_model, (3, 1, 16, 16), seed=2, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-3)
    c = sampler.sample(load_model(tiny_onnx["fp16"], backend="onnxruntime"), (3, 1, 16, 16), seed=2, progress=False)
    assert np.abs(a - c).max() < 0.1


def test_onnxruntime_reuses_its_output_buffer(tiny_onnx):
    model = load_model(tiny_onnx["fp32"], backend="onnxruntime")
    x, t = np.zeros((2, 1, 16, 16), np.float32), np.array([5, 5])
    model(x, t)
    buffer = model._outputs[2]
    model(x + 1, t)
    assert model._outputs[2] is buffer and len(model._outputs) == 1


def test_onnxruntime_threads_default_to_omp_num_threads(tiny_onnx, monkeypatch):
    # --threads wins; without it OMP_NUM_THREADS, as PyTorch reads it; without either ONNX Runtime's own default (0).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert load_model(tiny_onnx["fp32"], backend="onnxruntime").session.get_session_options().intra_op_num_threads == 1
    assert load_model(tiny_onnx["fp32"], backend="onnxruntime",
                      threads=2).session.get_session_options().intra_op_num_threads == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert load_model(tiny_onnx["fp32"], backend="onnxruntime").session.get_session_options().intra_op_num_threads == 0


def test_static_batch_export(tiny, tmp_path):
    out = tmp_path / "static.onnx"
    assert run_cli("export-onnx", str(tiny), "--out", str(out), "--batch", "3").returncode == 0
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 1, 16, 16]
    result = run_cli("sample", str(out), "--batch", "2", "--steps", "2", "--out", str(tmp_path / "o.png"))
    assert_user_error(result, "batch 3")


def test_cli_samples_onnx(tiny_onnx, tmp_path):
    out = tmp_path / "s.npz"
    result = run_cli("sample", str(tiny_onnx["fp16"]), "--steps", "3", "--batch", "2", "--threads", "1",
                     "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert np.load(out)["images"].shape == (2, 16, 16, 1)


def test_onnx_without_metadata(tiny_onnx, tmp_path):
    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(tiny_onnx["fp32"]))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    assert_user_error(run_cli_here("sample", str(bare), "--out", str(tmp_path / "o.png")), "--schedule and --image-shape")
    result = run_cli("sample", str(bare), "--schedule", "linear:1000:0.0001:0.02", "--image-shape", "1,16,16",
                     "--steps", "2", "--batch", "1", "--out", str(tmp_path / "o.png"), "--quiet")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage", "truncate"])
def test_damaged_onnx_files(tiny_onnx, tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(tiny_onnx["fp32"].read_bytes()[:5000] if content == "truncate" else content)
    out = tmp_path / "o.png"
    assert_user_error(run_cli_here("sample", str(bad), "--out", str(out)), "bad.onnx")
    assert not out.exists()


def test_export_errors_leave_no_file(tmp_path):
    out = tmp_path / "x.onnx"
    assert_user_error(run_cli_here("export-onnx", str(tmp_path / "missing"), "--out", str(out)), "not found")
    assert_user_error(run_cli_here("export-onnx", "digits", "--out", str(tmp_path / "x.txt")), ".onnx")
    assert_user_error(run_cli_here("export-onnx", "--out", str(out)), "name a model")
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("precision,max_tol,mean_tol", [("fp32", 1e-4, 1e-5), ("fp16", 2e-2, 2e-3)])
def test_shipped_digits_exports_within_tolerance(tmp_path, precision, max_tol, mean_tol):
    result = run_cli("export-onnx", "digits", "--out", str(tmp_path / "d.onnx"), "--precision", precision)
    assert result.returncode == 0, result.stderr
    max_err, mean_err = _errors(result.stdout)
    assert max_err <= max_tol and mean_err <= mean_tol


@pytest.mark.slow
def test_cifar10_config_exports_within_tolerance(tmp_path):
    ckpt = make_checkpoint(tmp_path / "cifar10", "cifar10")
    result = run_cli("export-onnx", str(ckpt), "--out", str(tmp_path / "c16.onnx"), "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    max_err, mean_err = _errors(result.stdout)
    assert max_err <= 2e-2 and mean_err <= 2e-3


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    directory = tmp_path_factory.mktemp("diffusers") / "unet"
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(32, 64), norm_num_groups=32,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    unet.save_pretrained(directory)
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(directory)
    return directory


def test_export_from_diffusers(diffusers_dir, tmp_path):
    import diffusers

    out = tmp_path / "from_diffusers.onnx"
    result = run_cli("export-onnx", "--from-diffusers", str(diffusers_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert _errors(result.stdout)[0] <= 1e-4
    model = load_model(out, precision="fp32")  # fp32's numerics (auto is bf16 on CPUs with AMX-BF16)
    assert model.image_shape == (1, 16, 16) and model.schedule.kind == "linear"
    # Same x_T, same DDIM steps: ddpmrt on ONNX Runtime reproduces diffusers' DDIMPipeline.
    unet = diffusers.UNet2DModel.from_pretrained(str(diffusers_dir)).eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(str(diffusers_dir))
    x_T = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    scheduler.set_timesteps(10)
    x = torch.from_numpy(x_T)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    ours = DDIMSampler(model.schedule, 10, clip_sample=1.0).sample(model, (2, 1, 16, 16), x_T=x_T, progress=False)
    np.testing.assert_allclose(ours, x.numpy(), atol=1e-3)


def test_diffusers_dir_errors(diffusers_dir, tmp_path):
    assert_user_error(run_cli_here("export-onnx", "--from-diffusers", str(tmp_path), "--out", str(tmp_path / "a.onnx")),
                      "not a saved diffusers UNet2DModel")


@pytest.mark.parametrize("name", ["tiny", "cifar10"])
def test_weights_convert_to_diffusers(name):
    pytest.importorskip("diffusers")
    from ddpmrt.export.model.diffusers_convert import to_diffusers
    from ddpmrt.export.model.unet import UNet, get_config

    torch.manual_seed(0)
    model = UNet(get_config(name)).eval()
    unet = to_diffusers(model)
    c = model.config
    x, t = torch.randn(2, c.image_channels, c.image_size, c.image_size), torch.tensor([3, 877])
    with torch.no_grad():
        assert (model(x, t) - unet(x, t).sample).abs().max() < 1e-4


def test_onnx_runtime_model_is_safe_to_call_from_threads(tiny_onnx):
    # A served deployment without batching calls one model from several threads at once; the shared
    # I/O binding once mixed their inputs up ("Unexpected input data type", or another request's ε).
    from concurrent.futures import ThreadPoolExecutor

    model = load_model(tiny_onnx["fp32"], threads=1)
    rng = np.random.default_rng(4)
    calls = [(rng.standard_normal((n, 1, 16, 16)).astype(np.float32), rng.integers(0, 1000, n)) for n in (1, 2, 3, 4) * 6]
    expected = [model(x, t) for x, t in calls]
    for _ in range(5):  # the race showed in about one round in five without the lock
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda call: model(*call), calls))
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)
