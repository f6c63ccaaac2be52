"""`ddpmrt sample` as a user runs it, and what bad input gets."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_user_error, run_cli, run_cli_here

pytest.importorskip("torch")


def test_sample_png_and_npz(tmp_path):
    png, npz = tmp_path / "grid.png", tmp_path / "out" / "images.npz"
    result = run_cli("sample", "digits", "--steps", "5", "--batch", "4", "--seed", "3", "--out", str(png), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "wrote 4 samples" in result.stdout
    with Image.open(png) as img:
        assert img.format == "PNG" and min(img.size) >= 32
    result = run_cli("sample", "digits", "--sampler", "ddpm", "--steps", "10", "--batch", "3", "--out", str(npz), "--quiet")
    assert result.returncode == 0, result.stderr
    images = np.load(npz)["images"]
    assert images.dtype == np.uint8 and images.shape == (3, 16, 16, 1)
    assert images.std() > 10  # not a blank image


def test_same_seed_same_images(tmp_path):
    outs = []
    for name in ("a.npz", "b.npz"):
        result = run_cli("sample", "digits", "--steps", "4", "--eta", "1", "--batch", "2", "--seed", "7",
                         "--out", str(tmp_path / name), "--quiet")
        assert result.returncode == 0, result.stderr
        outs.append(np.load(tmp_path / name)["images"])
    np.testing.assert_array_equal(*outs)


@pytest.fixture
def damaged_checkpoints(tmp_path):
    from ddpmrt.engine.backends import resolve_model_path

    shipped = resolve_model_path("digits")
    bad_json = tmp_path / "bad_json"
    shutil.copytree(shipped, bad_json)
    (bad_json / "config.json").write_text("{ not json")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(shipped, no_weights)
    (no_weights / "model.safetensors").unlink()
    truncated = tmp_path / "truncated"
    shutil.copytree(shipped, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    wrong = tmp_path / "wrong"
    shutil.copytree(shipped, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["model"]["ch"] = 64
    del config["checksum"]  # a deliberate edit: accepted, and then the weights do not fit
    (wrong / "config.json").write_text(json.dumps(config))
    edited = tmp_path / "edited"
    shutil.copytree(shipped, edited)
    config = json.loads((edited / "config.json").read_text())
    config["schedule"]["beta_end"] = 0.03  # still valid JSON and a valid schedule: only the checksum tells
    (edited / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("model,extra,fragment", [
    ("no-such-model", [], "not found"),
    ("digits", ["--steps", "0"], "--steps: the number of steps must be an integer from 1 to the model's training timesteps, got '0'"),
    ("digits", ["--steps", "5000"], "the number of steps must be an integer from 1 to the model's training timesteps (1000), got 5000"),
    ("digits", ["--backend", "tpu"], "invalid choice: 'tpu'"),
    ("digits", ["--cuda-graph"], "needs a GPU backend"),
    ("digits", ["--precision", "fp16"], "needs --device cuda"),
    ("{tmp}/bad_json", [], "not valid JSON"),
    ("{tmp}/no_weights", [], "no model.safetensors"),
    ("{tmp}/truncated", [], "cannot read"),
    ("{tmp}/wrong", [], "does not match its config.json"),
    ("{tmp}/edited", [], "does not match its checksum"),
    ("{tmp}", [], "not a ddpmrt checkpoint"),
])
def test_bad_sample_input(damaged_checkpoints, model, extra, fragment):
    out = damaged_checkpoints / "o.png"
    result = run_cli("sample", model.format(tmp=damaged_checkpoints), "--steps", "3", "--batch", "2", *extra,
                     "--out", str(out))
    assert_user_error(result, fragment)
    assert not out.exists()


def test_bad_output_suffix(tmp_path):
    assert_user_error(run_cli_here("sample", "digits", "--out", str(tmp_path / "x.jpg")), ".png")


def test_sample_with_the_multistep_solvers(tmp_path):
    for args in (["--sampler", "dpmsolver", "--steps", "6", "--order", "3"],
                 ["--sampler", "unipc", "--steps", "5", "--variant", "bh1", "--corrector", "off",
                  "--disable-corrector", "1,2", "--lower-order-final", "off"],
                 ["--sampler", "dpmsolver", "--order", "3", "--timesteps", "999,700,420,150,20"]):
        out = tmp_path / "s.npz"
        result = run_cli("sample", "digits", *args, "--batch", "2", "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert np.load(out)["images"].shape == (2, 16, 16, 1)
    assert "5 steps" in result.stdout  # the count of --timesteps
    for args, fragment in ((["--timesteps", "999,500", "--steps", "3"], "2 timesteps for 3 steps"),
                           (["--timesteps", "500,999"], "strictly decreasing integers in [0, T - 1]"),
                           (["--timesteps", "999,x"], "timesteps must be strictly decreasing integers"),
                           (["--timesteps", "999,1", "--spacing", "trailing"], "timesteps or a spacing, not both"),
                           (["--sampler", "unipc", "--corrector", "maybe"], "corrector must be true or false"),
                           (["--eta", "2e1"], "eta must be a number in [0, 10], got 20.0")):
        assert_user_error(run_cli_here("sample", "digits", *args, "--out", str(tmp_path / "x.png")), fragment)
    # An option the sampler does not take is one line, never ignored.
    assert_user_error(run_cli_here("sample", "digits", "--sampler", "unipc", "--eta", "0.5", "--out", str(tmp_path / "x.png")),
                      "the unipc sampler takes no eta (it is deterministic: no noise, no η)")
    assert_user_error(run_cli_here("sample", "digits", "--sampler", "ddim", "--order", "2", "--out", str(tmp_path / "x.png")),
                      "the ddim sampler takes no order")


def test_every_command_runs_with_a_cp1252_console():
    # Windows' redirected stdout is the ANSI code page in strict mode; η, ε, x̂₀ and ± must not end a command.
    import os
    import subprocess
    import sys

    from ddpmrt.export.cli.main import COMMANDS

    def run(*args):
        return subprocess.run([sys.executable, "-c", "import sys; from ddpmrt.export.cli import main; sys.exit(main())",
                               *args], capture_output=True, encoding="cp1252", timeout=120,
                              env={**os.environ, "PYTHONIOENCODING": "cp1252"})

    for command in COMMANDS:
        result = run(command.NAME, "--help")
        assert result.returncode == 0 and "Traceback" not in result.stderr, (command.NAME, result.stderr[-500:])
    assert "η" not in run("sample", "--help").stdout and "? in [0, 10]" in run("sample", "--help").stdout
    assert_user_error(run("sample", "digits", "--eta", "99", "--out", "x.png"), "eta must be a number in [0, 10]")
    # A command that prints η, ± and x̂₀ in its output (report prints its report.md), run to the end; its files
    # stay UTF-8.
    with tempfile.TemporaryDirectory() as tmp:
        result = run("report", "digits", "--samplers", "ddim:2:eta=0.5", "--clip-sample", "1,0", "--samples", "4",
                     "--threads", "1", "--quiet", "--out", tmp)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-500:]
        assert "DDIM ?=0.5 clip ±1, 2 steps" in result.stdout  # cp1252 has ±, not η
        assert "DDIM η=0.5 clip ±1, 2 steps" in (Path(tmp) / "report.md").read_text(encoding="utf-8")
