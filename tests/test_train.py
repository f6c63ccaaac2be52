"""The trainer: exact resume, signals, distributed training, data errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, run_cli

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from ddpmrt.export.training.trainer import TrainArgs, train  # noqa: E402

FAST = dict(dataset="digits", model="tiny", batch_size=4, sample_every=0, save_every=1000, log_every=5,
            progress=False, warmup=5, device="cpu")


def _state(out):
    return torch.load(out / "training_state.pt", weights_only=True)


def test_resume_continues_exactly(tmp_path):
    train(TrainArgs(out=str(tmp_path / "straight"), iters=20, **FAST))
    train(TrainArgs(out=str(tmp_path / "split"), iters=10, **FAST))
    assert _state(tmp_path / "split")["step"] == 10
    train(TrainArgs(out=str(tmp_path / "split"), iters=20, resume=True, **FAST))

    a, b = _state(tmp_path / "straight"), _state(tmp_path / "split")
    assert a["step"] == b["step"] == 20
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    ema_a, ema_b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # The run really trained: the weights moved from their initialisation.
    fresh = _state(tmp_path / "split")
    assert not torch.equal(fresh["model"]["conv_in.weight"], fresh["ema"]["conv_in.weight"])


def test_checkpoint_directory_contents(tmp_path):
    out = tmp_path / "run"
    train(TrainArgs(out=str(out), iters=5, **{**FAST, "sample_every": 5}))
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["ch"] == 32 and config["image_shape"] == [1, 16, 16]
    assert config["schedule"] == {"kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    assert config["data"]["num_images"] == 1797 and config["training"]["step"] == 5
    assert config["training"]["batch_size"] == 4 and config["prediction_type"] == "epsilon"
    assert "ddpmrt_version" in config
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 5 and np.isfinite(log[-1]["loss"]) and log[-1]["it_per_s"] > 0
    assert (out / "samples" / "step_0000005.png").stat().st_size > 0
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_sigterm_saves_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ddpmrt.export", "train", "--dataset", "digits", "--iters", "100000",
                             "--batch-size", "4", "--save-every", "100000", "--sample-every", "0", "--log-every", "1",
                             "--no-progress", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((out / "log.jsonl").exists() and (out / "log.jsonl").read_text().count("\n") >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "--resume" in stdout and "Traceback" not in stderr
    step = _state(out)["step"]
    assert step >= 3 and json.loads((out / "config.json").read_text())["training"]["step"] == step
    train(TrainArgs(out=str(out), iters=step + 2, resume=True, **FAST))
    assert _state(out)["step"] == step + 2


@pytest.mark.slow
@pytest.mark.gpu  # also runs on the CPU; where a GPU is visible it takes another path (it failed there once)
def test_two_process_ddp_with_gloo(tmp_path):
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run([*torchrun, "-m", "ddpmrt.export", "train", "--dataset", "digits", "--iters", "4",
                             "--batch-size", "4", "--sample-every", "0", "--log-every", "2", "--device", "cpu",
                             "--no-progress", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["world_size"] == 2 and config["training"]["step"] == 4
    assert result.stdout.count("ddpmrt train:") == 1  # only rank 0 reports and writes
    state = _state(out)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


def _rank_pids(parent: int) -> dict[int, int]:
    """RANK -> pid of the torchrun workers below `parent` (read from /proc)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        rank = next((int(v[5:]) for v in environ if v.startswith(b"RANK=")), None)
        if ppid == parent and rank is not None:
            found[rank] = int(proc.name)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers in /proc (Linux)")
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    # SIGTERM to rank 1 alone: every rank stops at the same step and rank 0 saves once, instead of
    # rank 1 waiting at the final barrier while rank 0 waits in the next step's all-reduce (a hang).
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    log = tmp_path / "torchrun.log"
    with open(log, "w") as sink:  # a file, not a pipe: a hung rank would hold a pipe open
        process = subprocess.Popen([*torchrun, "-m", "ddpmrt.export", "train", "--dataset", "digits", "--iters",
                                    "100000", "--batch-size", "4", "--sample-every", "0", "--log-every", "2",
                                    "--save-every", "100000", "--device", "cpu", "--no-progress", "--out", str(out)],
                                   stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ranks = {}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (out / "log.jsonl").is_file():  # training has started
            time.sleep(0.5)
        ranks = _rank_pids(process.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGTERM)
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks did not stop within 120 s of SIGTERM to rank 1")
    finally:
        for pid in [*ranks.values(), process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()
    output = log.read_text()
    assert "stopped by signal 15 at step" in output, output[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["step"] == _state(out)["step"] > 0


@pytest.mark.parametrize("setup,args,fragment", [
    ("empty_dir", ["--dataset", "{tmp}/empty"], "no images found"),
    ("bad_image", ["--dataset", "{tmp}/bad"], "cannot read image"),
    ("bad_npz", ["--dataset", "{tmp}/bad.npz"], "expected images of shape"),
    ("npz_keys", ["--dataset", "{tmp}/keys.npz"], "name the image array 'images'"),
    (None, ["--dataset", "{tmp}/nothing-here"], "not found"),
    (None, ["--dataset", "digits", "--model", "huge"], "unknown model config"),
    ("existing_run", ["--dataset", "digits", "--out", "{tmp}/existing"], "pass --resume"),
    (None, ["--dataset", "digits", "--resume", "--out", "{tmp}/fresh"], "nothing to resume"),
    (None, ["--dataset", "digits", "--precision", "fp16", "--device", "cpu"], "needs a CUDA GPU"),
])
def test_bad_training_input(tmp_path, setup, args, fragment):
    if setup == "empty_dir":
        (tmp_path / "empty").mkdir()
    elif setup == "bad_image":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "broken.png").write_bytes(b"not a png at all")
    elif setup == "bad_npz":
        np.savez(tmp_path / "bad.npz", images=np.zeros((4, 5, 7, 2), np.uint8))
    elif setup == "npz_keys":
        np.savez(tmp_path / "keys.npz", a=np.zeros((4, 8, 8), np.uint8), b=np.zeros(3))
    elif setup == "existing_run":
        (tmp_path / "existing").mkdir()
        (tmp_path / "existing" / "training_state.pt").write_bytes(b"x")
    argv = ["train", "--iters", "2", "--out", str(tmp_path / "out"), *[a.format(tmp=tmp_path) for a in args]]
    assert_user_error(run_cli(*argv, timeout=120), fragment)


def test_trains_on_a_folder_and_an_npz(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    train(TrainArgs(**{**FAST, "dataset": str(folder), "image_size": 16}, out=str(tmp_path / "a"), iters=2))
    assert json.loads((tmp_path / "a" / "config.json").read_text())["image_shape"] == [3, 16, 16]
    np.save(tmp_path / "arr.npy", rng.integers(0, 255, (5, 16, 16), dtype=np.uint8))
    train(TrainArgs(**{**FAST, "dataset": str(tmp_path / "arr.npy")}, out=str(tmp_path / "b"), iters=2))
    assert json.loads((tmp_path / "b" / "config.json").read_text())["data"]["num_images"] == 5


def test_process_group_backend_follows_the_training_device(monkeypatch):
    # On a GPU machine `torchrun ... train --device cpu` needs gloo: NCCL reduces CUDA tensors only.
    from ddpmrt.export.training import trainer as train_module

    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: chosen.append(backend))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    for device, backend in (("cpu", "gloo"), ("cuda", "nccl"), ("auto", "nccl")):
        train_module._distributed(train_module._device_type(device))
        assert chosen[-1] == backend, device
    # Windows PyTorch (and any build without NCCL): gloo on CUDA too.
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    train_module._distributed(train_module._device_type("cuda"))
    assert chosen[-1] == "gloo"


def test_auto_precision_follows_the_engine_rule_and_is_recorded(monkeypatch, tmp_path):
    from ddpmrt.engine import cpu
    from ddpmrt.export.training import trainer

    cpu_device = torch.device("cpu")
    for faster, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(cpu, "bf16_is_faster", lambda faster=faster: faster)
        assert trainer.training_precision("auto", cpu_device) == expected
    assert trainer.training_precision("fp32", cpu_device) == "fp32"  # a named precision is kept as given
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert trainer.training_precision("auto", torch.device("cuda")) == "fp32"

    monkeypatch.setattr(cpu, "bf16_is_faster", lambda: True)
    train(TrainArgs(out=str(tmp_path / "run"), iters=2, **FAST))
    training = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    assert (training["precision"], training["precision_used"]) == ("auto", "bf16")


def test_the_signals_that_save_include_windows_ctrl_break(monkeypatch):
    import importlib
    import signal as signal_module

    from ddpmrt.export.training import trainer

    assert {signal_module.SIGINT, signal_module.SIGTERM} <= set(trainer.STOP_SIGNALS)
    monkeypatch.setattr(signal_module, "SIGBREAK", 21, raising=False)  # Windows' number for it
    try:
        assert 21 in importlib.reload(trainer).STOP_SIGNALS
    finally:
        monkeypatch.undo()
        importlib.reload(trainer)


def test_min_snr_weights_are_the_closed_form_and_zero_is_l_simple():
    from ddpmrt.engine.schedule import NoiseSchedule
    from ddpmrt.export.training.trainer import min_snr_weight

    abar = torch.tensor(NoiseSchedule.linear(1000).alphas_cumprod, dtype=torch.float64)
    snr = abar / (1 - abar)
    w = min_snr_weight(abar, 5.0)
    # Hang et al. eq. 8 for ε-prediction: min(SNR, γ) / SNR, written out per timestep.
    expected = torch.tensor([min(s, 5.0) / s for s in snr.tolist()], dtype=torch.float64)
    assert torch.allclose(w, expected, rtol=1e-12)
    assert w[-1] == 1.0 and w[0] < 1e-3  # high noise keeps its weight, the lowest noise loses almost all
    assert torch.equal(min_snr_weight(abar, 0.0), torch.ones_like(abar))


def test_snr_gamma_changes_the_training_and_is_recorded(tmp_path):
    # Batches of 32: some of their timesteps fall below SNR 5 (t < 130), where the weights differ.
    assert TrainArgs().snr_gamma == 5.0  # the default, chosen by the learning curve (docs/training.md)
    train(TrainArgs(out=str(tmp_path / "simple"), iters=3, snr_gamma=0.0, **{**FAST, "batch_size": 32}))
    train(TrainArgs(out=str(tmp_path / "minsnr"), iters=3, **{**FAST, "batch_size": 32}))
    a, b = _state(tmp_path / "simple"), _state(tmp_path / "minsnr")
    assert a["train_args"]["snr_gamma"] == 0.0 and b["train_args"]["snr_gamma"] == 5.0
    assert not torch.equal(a["model"]["conv_in.weight"], b["model"]["conv_in.weight"])
    config = json.loads((tmp_path / "minsnr" / "config.json").read_text())
    assert config["training"]["snr_gamma"] == 5.0


def test_a_run_saved_before_snr_gamma_resumes_with_equal_weights(tmp_path):
    # Runs saved before --snr-gamma existed trained with L_simple; resuming one must not switch it to the new default.
    from ddpmrt.export.training.trainer import resume_args

    out = tmp_path / "old"
    train(TrainArgs(out=str(out), iters=2, snr_gamma=0.0, **FAST))
    state = _state(out)
    del state["train_args"]["snr_gamma"]
    torch.save(state, out / "training_state.pt")
    args, overridden = resume_args(out, {"iters": 4})
    assert args.snr_gamma == 0.0 and args.resume and args.iters == 4
    assert overridden == ["--iters 4 (saved 2)"]
    assert resume_args(out, {"snr_gamma": 5.0})[0].snr_gamma == 5.0  # given on the command line, it is taken


def test_a_run_started_under_tiny_s_earlier_32_groups_resumes_with_them(tmp_path):
    # tiny had 32 GroupNorm groups until 2026-12-08; a run started then without --norm-groups saved none, and its
    # U-Net was built with 32: resumed, it keeps them instead of taking today's default (which would not load).
    out = tmp_path / "old"
    train(TrainArgs(out=str(out), iters=2, norm_groups=32, **FAST))
    state = _state(out)
    state["train_args"]["norm_groups"] = None
    torch.save(state, out / "training_state.pt")
    train(TrainArgs(out=str(out), iters=4, resume=True, **FAST))
    assert _state(out)["step"] == 4 and _state(out)["model_config"]["norm_groups"] == 32
    from ddpmrt.export.model.checkpoint import load_unet

    assert load_unet(out)[0].norm_out.num_groups == 32


def test_bad_snr_gamma_is_one_line(tmp_path):
    assert_user_error(run_cli("train", "--dataset", "digits", "--iters", "2", "--snr-gamma", "-1",
                              "--out", str(tmp_path / "out"), timeout=120), "--snr-gamma")


def test_the_cooldown_falls_linearly_to_zero_over_the_last_steps_and_is_logged(tmp_path):
    from ddpmrt.export.training.trainer import learning_rate

    args = TrainArgs(lr=1e-3, warmup=10, iters=100, cooldown=20)
    rates = [learning_rate(args, step) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == rates[50] == rates[80] == pytest.approx(1e-3)
    assert rates[90] == pytest.approx(0.5e-3) and rates[99] == pytest.approx(0.05e-3)
    assert all(a >= b for a, b in zip(rates[80:], rates[81:]))
    assert learning_rate(TrainArgs(lr=1e-3, warmup=10, iters=100), 99) == pytest.approx(1e-3)  # 0: none
    # The rate the trainer used is the one logged; a run saved before --cooldown existed resumes without one.
    out = tmp_path / "run"
    train(TrainArgs(out=str(out), iters=10, cooldown=5, **FAST))
    logged = [json.loads(line)["lr"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([learning_rate(TrainArgs(lr=FAST.get("lr", TrainArgs.lr), warmup=5, iters=10,
                                                            cooldown=5), step - 1) for step in (5, 10)])
    from ddpmrt.export.training.trainer import resume_args

    state = _state(out)
    del state["train_args"]["cooldown"]
    torch.save(state, out / "training_state.pt")
    assert resume_args(out, {"iters": 20})[0].cooldown == 0


def test_init_from_starts_a_run_at_a_model_s_weights_with_its_own_dropout_and_groups(tmp_path):
    # A fine-tune of the shipped digits model: model and EMA start at its weights (one step at a tiny rate moves
    # them by little), the run's own settings (dropout 0 and 8 GroupNorm groups here, neither of which holds
    # weights) are recorded, and the optimizer starts afresh.
    from ddpmrt.engine.backends import SHIPPED_MODELS_DIR
    from ddpmrt.export.model.checkpoint import load_unet

    shipped = load_file(SHIPPED_MODELS_DIR / "digits" / "model.safetensors")
    out = tmp_path / "ft"
    train(TrainArgs(out=str(out), iters=1, lr=1e-7, init_from="digits", dropout=0.0, norm_groups=8, **FAST))
    state = _state(out)
    assert state["step"] == 1 and state["model_config"]["dropout"] == 0.0
    assert state["train_args"]["init_from"] == "digits" and state["train_args"]["dropout"] == 0.0
    assert state["model_config"]["norm_groups"] == state["train_args"]["norm_groups"] == 8
    unet, _ = load_unet(out)  # what config.json says is what the weights were trained as
    assert unet.norm_out.num_groups == 8 and unet.config.norm_groups == 8
    for key in ("model", "ema"):
        for name, tensor in shipped.items():
            assert torch.allclose(state[key][name], tensor, atol=1e-5), f"{key}.{name}"
    fresh = tmp_path / "fresh"
    train(TrainArgs(out=str(fresh), iters=1, lr=1e-7, **FAST))
    assert not torch.allclose(_state(fresh)["model"]["conv_in.weight"], shipped["conv_in.weight"], atol=1e-2)
    assert _state(fresh)["model_config"]["dropout"] == 0.1   # the tiny config's, when not given
    assert _state(fresh)["model_config"]["norm_groups"] == 16   # tiny's (two channels per group at 32 channels)
    # Resumed, the run keeps its start, dropout and groups: another is one line.
    assert_user_error(run_cli("train", "--resume", "--out", str(out), "--dropout", "0.2", timeout=120), "--dropout")
    assert_user_error(run_cli("train", "--resume", "--out", str(out), "--norm-groups", "4", timeout=120),
                      "--norm-groups")
    from ddpmrt.export.training.trainer import resume_args

    args, _ = resume_args(out, {"iters": 2, "out": str(out), "progress": False})
    assert args.dropout == 0.0 and args.init_from == "digits" and args.norm_groups == 8
    train(args)
    assert _state(out)["step"] == 2 and _state(out)["model_config"]["dropout"] == 0.0
    assert _state(out)["model_config"]["norm_groups"] == 8


@pytest.mark.parametrize("args,fragment", [
    (["--dataset", "digits", "--init-from", "shapes"], "another U-Net"),          # 3 channels against digits' 1
    (["--dataset", "digits", "--init-from", "{tmp}"], "not a checkpoint folder"),
    (["--dataset", "digits", "--init-from", "{tmp}/nothing"], "not found"),
    (["--dataset", "digits", "--dropout", "1"], "--dropout"),
    (["--dataset", "digits", "--norm-groups", "5"], "does not divide"),             # tiny's widths 32, 64, 96
    (["--dataset", "digits", "--norm-groups", "64"], "does not divide"),
])
def test_bad_init_from_and_dropout_are_one_line(tmp_path, args, fragment):
    argv = ["train", "--iters", "2", "--out", str(tmp_path / "out"), *[a.format(tmp=tmp_path) for a in args]]
    assert_user_error(run_cli(*argv, timeout=120), fragment)
    assert not (tmp_path / "out" / "training_state.pt").exists()
