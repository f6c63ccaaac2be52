"""diffusers pipeline folders as people download them: model_index.json, unet/, scheduler/.

Saved by diffusers' own save_pretrained for a DDPMPipeline and a DDIMPipeline; the pipeline
folder and its unet/ folder are accepted everywhere --from-diffusers is (export-onnx,
export-engine, bench, sample), the schedule is read from scheduler/scheduler_config.json, and the
exported model reproduces the pipeline's own samples.
"""

import json

import numpy as np
import pytest

from conftest import assert_user_error, run_cli, run_cli_here

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from ddpmrt.engine import DDIMSampler, DDPMSampler, load_model  # noqa: E402


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(32, 64), norm_num_groups=32,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    ddpm = diffusers.DDPMPipeline(unet=tiny_unet(0), scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000))
    ddpm.save_pretrained(root / "ddpm")
    ddim = diffusers.DDIMPipeline(unet=tiny_unet(1), scheduler=diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012))
    ddim.save_pretrained(root / "ddim")
    return root


def export(tmp_path, source, name):
    out = tmp_path / f"{name}.onnx"
    result = run_cli("export-onnx", "--from-diffusers", str(source), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return load_model(out, precision="fp32")  # the numerics checked here are fp32's (auto is bf16 on bf16 CPUs)


def test_pipeline_and_unet_folders_export_the_same_model(pipelines, tmp_path):
    whole = export(tmp_path, pipelines / "ddim", "whole")
    unet_only = export(tmp_path, pipelines / "ddim" / "unet", "unet")
    for model in (whole, unet_only):
        assert model.schedule.kind == "scaled_linear" and model.image_shape == (1, 16, 16)
    scheduler = diffusers.DDIMScheduler.from_pretrained(pipelines / "ddim", subfolder="scheduler")
    np.testing.assert_allclose(whole.schedule.alphas_cumprod, scheduler.alphas_cumprod.numpy(), rtol=1e-5)
    x, t = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32), np.array([5, 900])
    np.testing.assert_array_equal(whole(x, t), unet_only(x, t))


def test_exported_model_reproduces_the_ddim_pipeline(pipelines, tmp_path):
    model = export(tmp_path, pipelines / "ddim", "ddim")
    pipe = diffusers.DDIMPipeline.from_pretrained(pipelines / "ddim")
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=10, eta=0.0,
                    output_type="np").images
    x_T = diffusers.utils.torch_utils.randn_tensor((2, 1, 16, 16), generator=torch.Generator().manual_seed(0)).numpy()
    clip = 1.0 if pipe.scheduler.config.clip_sample else None
    ours = DDIMSampler(model.schedule, 10, eta=0.0, clip_sample=clip).sample(model, (2, 1, 16, 16), x_T=x_T, progress=False)
    ours = np.clip(ours / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, expected, atol=2e-4)


def test_exported_model_reproduces_the_ddpm_pipeline(pipelines, tmp_path):
    # Ancestral sampling: replay the pipeline's generator draws (x_T, then one z per step with t > 0).
    model = export(tmp_path, pipelines / "ddpm" / "unet", "ddpm")
    pipe = diffusers.DDPMPipeline.from_pretrained(pipelines / "ddpm")
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=10,
                    output_type="np").images
    config = pipe.scheduler.config
    sampler = DDPMSampler(model.schedule, 10, variance=config.variance_type,
                          clip_sample=config.clip_sample_range if config.clip_sample else None)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn((2, 1, 16, 16), generator=generator).numpy()
    for i, t in enumerate(sampler.timesteps):
        eps = model(x, np.full(2, t, np.int64))
        noise = torch.randn((2, 1, 16, 16), generator=generator).numpy() if t > 0 else None
        x = sampler.step(x, eps, i, noise)
    np.testing.assert_allclose(np.clip(x / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1), expected, atol=2e-4)


def test_sample_and_bench_take_pipeline_folders(pipelines, tmp_path):
    out = tmp_path / "grid.npz"
    for args in (["sample", str(pipelines / "ddpm")], ["sample", "--from-diffusers", str(pipelines / "ddpm" / "unet")]):
        result = run_cli(*args, "--steps", "3", "--batch", "2", "--out", str(out), "--quiet")
        assert result.returncode == 0, result.stderr
        assert np.load(out)["images"].shape == (2, 16, 16, 1)
    result = run_cli("bench", "--from-diffusers", str(pipelines / "ddim"), "--batch", "1", "--steps", "2", "--runs", "1",
                     "--warmup", "0", "--threads", "1", "--backends", "torch-cpu,onnxruntime-cpu", "--out",
                     str(tmp_path / "bench"), "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert {r["backend"] for r in report["results"]} == {"torch-cpu", "onnxruntime-cpu"}
    assert report["results"][0]["speedup_vs_diffusers"] > 0 and report["model"]["image_shape"] == [1, 16, 16]


def test_export_engine_takes_a_pipeline_folder(pipelines, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="needs TensorRT-RTX (pip install tensorrt-rtx) to build engines")
    plan = tmp_path / "pipe.plan"
    result = run_cli("export-engine", "--from-diffusers", str(pipelines / "ddpm"), "--out", str(plan),
                     "--flavour", "tensorrt-rtx", "--targets", "sm86", "--batch", "1:2:4")
    assert result.returncode == 0, result.stderr
    assert plan.is_file() and json.loads((tmp_path / "pipe.plan.json").read_text())["metadata"]


@pytest.mark.parametrize("changes,fragment", [
    ({"beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid', which ddpmrt cannot represent"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"prediction_type": "v_prediction"}, "predicts 'v_prediction'"),
])
def test_schedules_ddpmrt_cannot_represent(pipelines, tmp_path, changes, fragment):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(pipelines / "ddpm", folder)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    assert_user_error(run_cli_here("export-onnx", "--from-diffusers", str(folder), "--out", str(tmp_path / "x.onnx")), fragment)
    assert not (tmp_path / "x.onnx").exists()


def test_trained_betas_and_cosine_are_read(tmp_path):
    from ddpmrt.export.model.sources import schedule_from_diffusers

    betas = np.linspace(1e-4, 2e-2, 50)
    assert np.allclose(schedule_from_diffusers({"trained_betas": betas.tolist()}).betas, betas)
    cosine = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ours = schedule_from_diffusers(dict(cosine.config))
    np.testing.assert_allclose(ours.alphas_cumprod, cosine.alphas_cumprod.numpy(), rtol=1e-5, atol=1e-9)  # diffusers: float32


def test_a_bare_unet_folder_needs_schedule(pipelines, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(pipelines / "ddpm" / "unet", bare)
    out = tmp_path / "bare.onnx"
    assert_user_error(run_cli_here("export-onnx", "--from-diffusers", str(bare), "--out", str(out)), "pass --schedule")
    result = run_cli("export-onnx", "--from-diffusers", str(bare), "--schedule", "linear:1000:0.0001:0.02", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert_user_error(run_cli_here("export-onnx", "--from-diffusers", str(tmp_path / "nothing"), "--out", str(out)),
                      "not a folder")


def test_a_pipeline_folder_runs_on_openvino_as_its_cached_export(pipelines, tmp_path, monkeypatch):
    # What a checkpoint's default is where bf16 is faster: the folder's ONNX export on OpenVINO.
    pytest.importorskip("openvino", reason="needs OpenVINO: pip install -e '.[openvino]'")
    monkeypatch.setenv("DDPMRT_CACHE_DIR", str(tmp_path))
    model = load_model(pipelines / "ddim", backend="openvino", precision="fp32")
    eager = load_model(pipelines / "ddim", backend="torch", precision="fp32")
    assert model.backend == "openvino" and model.schedule.kind == "scaled_linear"
    assert model.path.parent == tmp_path / "onnx"
    x, t = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32), np.array([5, 900])
    np.testing.assert_allclose(model(x, t), eager(x, t), atol=1e-4)
