"""Faults a new user meets (#22): a run killed before its first checkpoint, resuming with other
options, a used output folder, file permissions, a server fault, a damaged model at serve start,
and help texts.  (A full disk and a read-only folder are fuzz classes: tests/test_fuzz.py.)"""

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import assert_user_error, run_cli

FAST = ["--dataset", "digits", "--batch-size", "4", "--sample-every", "0", "--no-progress", "--warmup", "5"]


def _step(out) -> int:
    torch = pytest.importorskip("torch")
    return int(torch.load(out / "training_state.pt", weights_only=True)["step"])


# -- training: checkpoints early and by the clock, resume, used folders --------------------------------

def test_a_run_saves_at_five_percent_and_by_the_clock(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import ddpmrt.export.training.trainer as train_module
    from ddpmrt.export.training.args import TrainArgs

    saved_at = []
    real_save = train_module.save_weights
    monkeypatch.setattr(train_module, "save_weights", lambda path, module: (saved_at.append(time.monotonic()),
                                                                             real_save(path, module)))
    common = dict(dataset="digits", model="tiny", batch_size=4, sample_every=0, log_every=5, progress=False,
                  device="cpu", save_every=1000)
    train_module.train(TrainArgs(out=str(tmp_path / "by-step"), iters=40, save_minutes=0, **common))
    assert len(saved_at) == 2  # at 5 % (step 2) and at the end: a kill after step 2 loses at most the rest
    saved_at.clear()
    train_module.train(TrainArgs(out=str(tmp_path / "by-clock"), iters=40, save_minutes=1e-4, **common))
    assert len(saved_at) > 5, saved_at  # every 6 ms: after nearly every step


def test_a_run_killed_before_its_first_regular_checkpoint_resumes(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "run"
    command = [sys.executable, "-c", "import sys; from ddpmrt.export.cli import main; sys.exit(main())", "train",
               *FAST, "--iters", "400", "--log-every", "1", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "config.json").exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert (out / "config.json").exists(), "no checkpoint at 5 % of the run"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = _step(out)
    assert killed_at == 20  # 5 % of 400, long before --save-every's 1000
    result = run_cli("train", "--resume", "--iters", "24", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "overriding --iters 24 (saved 400)" in result.stdout and "steps 20..24" in result.stdout, result.stdout
    assert _step(out) == 24
    # The killed run logged steps past its checkpoint; the resumed run logged them again, once.
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 24, steps


def test_resume_restores_the_saved_settings(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "run"
    assert run_cli("train", *FAST, "--iters", "4", "--log-every", "2", "--lr", "1e-3", "--out", str(out)).returncode == 0
    result = run_cli("train", "--resume", "--iters", "6", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "overriding --iters 6 (saved 4)" in result.stdout
    training = json.loads((out / "config.json").read_text())["training"]
    # Not the defaults (batch 128, lr 2e-4, log every 50): the saved run's own.
    assert (training["batch_size"], training["lr"], training["log_every"], training["step"]) == (4, 1e-3, 2, 6)
    assert_user_error(run_cli("train", "--resume", "--dataset", "shapes", "--out", str(out)),
                      "--dataset shapes", "was trained with digits")
    assert_user_error(run_cli("train", "--resume", "--overwrite", "--out", str(out)), "choose one")
    assert_user_error(run_cli("train", "--resume", "--out", str(tmp_path / "empty")), "nothing to resume")


def test_a_used_folder_needs_resume_or_overwrite(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 50, "loss": 1.0}\n')  # what a run killed before any checkpoint leaves
    assert_user_error(run_cli("train", *FAST, "--iters", "2", "--out", str(out)),
                      "already holds the start of a training run (log.jsonl)", "--overwrite")
    result = run_cli("train", *FAST, "--iters", "2", "--log-every", "1", "--overwrite", "--out", str(out))
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # the stale entry is gone, not appended to
    # Every file of a checkpoint has the permissions of any other file the user creates.
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.safetensors", "config.json", "training_state.pt", "log.jsonl"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_a_new_run_needs_a_dataset_and_steps(tmp_path):
    assert_user_error(run_cli("train", "--out", str(tmp_path / "run")), "needs --dataset and --iters")


# -- the server ----------------------------------------------------------------------------------------

def test_a_fault_in_a_request_is_500_in_one_line_logged_once(caplog):
    from ddpmrt.engine.schedule import NoiseSchedule
    from ddpmrt.engine.serve import answer_sample, parse_request

    async def failing_run(request):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore\nlines")

    async def good_run(request):
        return np.zeros((request.n, 16, 16, 1), np.uint8), 1

    async def body(raw):
        yield raw

    schedule = NoiseSchedule.linear(1000)
    parse = lambda b: parse_request(b, schedule)  # noqa: E731
    raw = b'{"steps": 2, "n": 1}'
    with caplog.at_level(logging.ERROR, logger="ddpmrt.serve"):
        status, content, media_type, _ = asyncio.run(answer_sample(str(len(raw)), body(raw), parse, failing_run))
    assert status == 500 and media_type == "application/json"
    error = json.loads(content)["error"]
    assert "RuntimeError" in error and "\n" not in error
    records = [r for r in caplog.records if r.name == "ddpmrt.serve"]
    assert len(records) == 1 and "\n" not in records[0].getMessage()
    status, content, media_type, headers = asyncio.run(answer_sample(str(len(raw)), body(raw), parse, good_run))
    assert status == 200 and media_type == "image/png" and headers["X-Batch-Requests"] == "1"


def test_serve_checks_the_model_before_ray_starts(tmp_path):
    pytest.importorskip("ray", reason="needs Ray Serve: pip install -e '.[serve]'")
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07" + os.urandom(4000))
    for args in ([str(damaged)], [str(damaged), "--device", "cuda"], [str(tmp_path / "missing.onnx")],
                 [str(tmp_path)]):
        start = time.monotonic()
        result = run_cli("serve", *args)
        assert_user_error(result)
        assert time.monotonic() - start < 60, "serve took long to refuse the model"
        assert "Ray" not in result.stdout + result.stderr, result.stdout + result.stderr  # refused before Ray started


def test_serve_checks_a_cuda_package_by_its_sidecar(tmp_path):
    # `serve m.pt2 --device cuda`: the GPU may be on another node, so the check before Ray reads the
    # package's sidecar and checksum; loading it on the CPU would refuse a CUDA package.
    from ddpmrt.engine import NoiseSchedule, UserError
    from ddpmrt.engine.artifacts.metadata import ModelMetadata
    from ddpmrt.engine.artifacts.sidecar import PACKAGE, write_sidecar
    from ddpmrt.engine.serve import check_model

    metadata = ModelMetadata(schedule=NoiseSchedule.linear(), image_shape=(1, 4, 4))
    for device in ("cuda", "cpu"):
        package = tmp_path / f"{device}.pt2"
        package.write_bytes(b"a package's bytes")
        write_sidecar(package, PACKAGE, {"metadata": metadata.to_strings(), "device": device, "precision": "fp16",
                                         "torch_version": "2.13.0", "profile": {"min": 1, "opt": 1, "max": 1},
                                         "cache_key": {}})
    check_model(str(tmp_path / "cuda.pt2"), device="cuda")
    with pytest.raises(UserError, match="cpu.pt2 was compiled for cpu, not cuda"):
        check_model(str(tmp_path / "cpu.pt2"), device="cuda")
    (tmp_path / "cuda.pt2").write_bytes(b"a package's bytez")  # same size, other bytes
    with pytest.raises(UserError, match="damaged"):
        check_model(str(tmp_path / "cuda.pt2"), device="cuda")


# -- help texts --------------------------------------------------------------------------------------

def _options():
    from ddpmrt.export.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                yield name, action


def test_every_option_has_help_with_its_default():
    missing = []
    for command, action in _options():
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        help_text = action.help or ""
        if not help_text:
            missing.append(f"{command} {action.option_strings or action.dest}: no help")
        elif action.option_strings and not flag and action.default is not None and "default" not in help_text:
            missing.append(f"{command} {action.option_strings[0]}: default {action.default!r} not stated")
    assert not missing, "\n".join(missing)
    assert len(list(_options())) > 80  # every command's options were seen


def test_the_step_limit_is_stated_one_way(tmp_path):
    rule = "the number of steps must be an integer from 1 to the model's training timesteps"
    for steps in ("0", "5000", "-3", "many"):
        assert_user_error(run_cli("sample", "digits", "--steps", steps, "--out", str(tmp_path / "x.png")), rule)
