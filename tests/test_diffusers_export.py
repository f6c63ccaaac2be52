"""`ddpmrt export-diffusers`: a ddpmrt model as a DDPMPipeline folder that diffusers loads on its own,
with the same ε, and that comes back through --from-diffusers as the same model."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_user_error, run_cli, run_cli_here

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from ddpmrt.engine.backends import SHIPPED_MODELS_DIR  # noqa: E402
from ddpmrt.export.model.checkpoint import load_unet, write_random_checkpoint  # noqa: E402
from ddpmrt.export.model.sources import from_diffusers  # noqa: E402

# Loads the folder and runs two DDPM steps with ddpmrt made unimportable: the folder needs diffusers only.
LOAD_WITHOUT_DDPMRT = """
import sys, json
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "ddpmrt" or name.startswith("ddpmrt."):
            raise ImportError("ddpmrt is not installed here")
sys.meta_path.insert(0, Refuse())
import torch
from diffusers import DDPMPipeline
pipe = DDPMPipeline.from_pretrained(sys.argv[1], low_cpu_mem_usage=False)
images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
print(json.dumps({"shape": list(images.shape), "ddpmrt": any(m.startswith("ddpmrt") for m in sys.modules)}))
"""


def _eps_pairs(module_a, module_b, shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((3, *shape), generator=gen)
    t = torch.tensor([5, 400, 980])
    with torch.no_grad():
        return module_a(x, t), module_b(x, t)


@pytest.fixture(scope="module")
def digits_pipeline(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "digits-diffusers"
    result = run_cli("export-diffusers", "digits", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "DDPMPipeline.from_pretrained" in result.stdout
    return out


def test_diffusers_loads_the_folder_without_ddpmrt(digits_pipeline):
    index = json.loads((digits_pipeline / "model_index.json").read_text())
    assert (index["_class_name"], index["unet"], index["scheduler"]) == \
        ("DDPMPipeline", ["diffusers", "UNet2DModel"], ["diffusers", "DDPMScheduler"])
    assert (digits_pipeline / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    run = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_DDPMRT, str(digits_pipeline)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded == {"shape": [2, 16, 16, 1], "ddpmrt": False}


def test_the_unet_gives_ddpmrts_eps_and_the_scheduler_its_schedule(digits_pipeline):
    model, config = load_unet(SHIPPED_MODELS_DIR / "digits")
    unet = diffusers.UNet2DModel.from_pretrained(digits_pipeline / "unet", low_cpu_mem_usage=False).eval()
    ours, theirs = _eps_pairs(model.eval(), lambda x, t: unet(x, t).sample, config["image_shape"])
    assert torch.allclose(theirs, ours, rtol=0, atol=1e-5 * float(ours.abs().max()))
    scheduler = diffusers.DDPMScheduler.from_pretrained(digits_pipeline / "scheduler")
    from ddpmrt.engine.schedule import NoiseSchedule

    expected = NoiseSchedule.from_dict(config["schedule"])
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), expected.alphas_cumprod, rtol=1e-5)
    assert scheduler.config.prediction_type == "epsilon"


def test_from_diffusers_gives_back_the_same_model(digits_pipeline):
    model, config = load_unet(SHIPPED_MODELS_DIR / "digits")
    source = from_diffusers(digits_pipeline, "fp32")
    ours, back = _eps_pairs(model.eval(), source.eps_module().eval(), config["image_shape"])
    assert torch.allclose(back, ours, rtol=0, atol=1e-5 * float(ours.abs().max()))
    assert source.metadata.schedule.num_train_timesteps == 1000
    from ddpmrt.engine.schedule import NoiseSchedule

    np.testing.assert_allclose(source.metadata.schedule.betas, NoiseSchedule.from_dict(config["schedule"]).betas, rtol=1e-6)
    assert tuple(source.metadata.image_shape) == tuple(config["image_shape"])


def test_a_cosine_rgb_checkpoint_round_trips(tmp_path):
    checkpoint = write_random_checkpoint(tmp_path / "ckpt", "tiny", seed=3)
    cfg = json.loads((checkpoint / "config.json").read_text())
    from ddpmrt.engine.schedule import NoiseSchedule

    cfg["schedule"] = NoiseSchedule.cosine(1000).to_dict()
    cfg.pop("checksum", None)  # an edit, accepted as the checksum's own message says
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "pipe"
    result = run_cli("export-diffusers", str(checkpoint), "--out", str(out))
    assert result.returncode == 0, result.stderr
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["beta_schedule"] == "squaredcos_cap_v2"
    model, config = load_unet(checkpoint)
    source = from_diffusers(out, "fp32")
    ours, back = _eps_pairs(model.eval(), source.eps_module().eval(), config["image_shape"])
    assert torch.allclose(back, ours, rtol=0, atol=1e-5 * float(ours.abs().max()))


def test_bad_destinations_and_sources(digits_pipeline, tmp_path):
    # An existing non-empty folder without --force: refused, untouched.
    before = sorted(p.name for p in digits_pipeline.rglob("*"))
    assert_user_error(run_cli_here("export-diffusers", "digits", "--out", str(digits_pipeline)), "already holds files", "--force")
    assert sorted(p.name for p in digits_pipeline.rglob("*")) == before
    # --force replaces an earlier export, and only that.
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep")
    assert_user_error(run_cli_here("export-diffusers", "digits", "--out", str(stranger), "--force"), "not a diffusers pipeline")
    assert (stranger / "notes.txt").read_text() == "keep"
    # Compiled artifacts hold no weights: one line, exit 2, nothing left behind.
    out = tmp_path / "from-onnx"
    result = run_cli("export-diffusers", str(SHIPPED_MODELS_DIR / "digits" / "model.onnx"), "--out", str(out))
    assert_user_error(result, "holds no weights", "checkpoint folder")
    assert result.returncode == 2 and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".from-onnx")]
    assert_user_error(run_cli_here("export-diffusers", str(digits_pipeline), "--out", str(tmp_path / "again")),
                      "already a diffusers folder")
    assert not (tmp_path / "again").exists()


def test_force_replaces_an_earlier_export(tmp_path):
    out = tmp_path / "pipe"
    assert run_cli("export-diffusers", "digits", "--out", str(out)).returncode == 0
    (out / "unet" / "stale.txt").write_text("from before")
    result = run_cli("export-diffusers", "shapes", "--out", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert not (out / "unet" / "stale.txt").exists()
    assert json.loads((out / "unet" / "config.json").read_text())["in_channels"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no temporary folder left
