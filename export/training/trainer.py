"""`ddpmrt train`: train an ε-predicting U-Net with L_simple (Ho et al. 2020, Algorithm 1).

    repeat: x_0 ~ data, t ~ U{0..T-1}, ε ~ N(0, I);  step on ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²

with AdamW, linear LR warm-up, gradient clipping, EMA weights, optional autocast on CUDA,
and DistributedDataParallel when started by torchrun.

Reproducibility: all randomness of step k (batch indices, timesteps, noise, dropout) is
seeded from (seed, rank, k), so a resumed run continues exactly where it stopped and every
DDP rank draws its own batches, with no generator state to save.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.backends.torch_backend import TorchModel
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.images import make_grid, save_png, to_uint8
from ddpmrt.engine.samplers import DDIMSampler
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.export.model.checkpoint import CONFIG_FILE, STATE_FILE, WEIGHTS_FILE, make_config, save_weights, write_config
from ddpmrt.export.model.unet import UNet, UNetConfig, count_parameters, get_config, group_norm_widths
from ddpmrt.export.training.args import BEFORE_SAVED, FIXED_ON_RESUME, NOT_SAVED, TrainArgs
from ddpmrt.export.training.data import load_dataset

# What a training run leaves in its folder; a fresh run refuses a folder holding any of them.
LOG_FILE = "log.jsonl"
RUN_FILES = (STATE_FILE, WEIGHTS_FILE, CONFIG_FILE, LOG_FILE, "samples")
# U-Net settings that hold no weights: --init-from may start a run whose values differ.
WEIGHTLESS = ("dropout", "norm_groups")


def saved_settings(state_path: Path) -> dict:
    """The settings a run was started with, as saved in its training state (or, for a run saved
    before the state held them, in its config.json)."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if "train_args" in state:
        return dict(state["train_args"])
    config = state_path.parent / CONFIG_FILE
    return dict(json.loads(config.read_text(encoding="utf-8")).get("training", {})) if config.is_file() else {}


def resume_args(out, given: dict) -> tuple[TrainArgs, list[str]]:
    """`train --resume`: the saved run's settings, with the options given on this command line over them.

    Returns the arguments and a note per setting given that differs from the saved run's.  A
    setting that makes it another run (FIXED_ON_RESUME) cannot change: that is a UserError.
    """
    state_path = Path(out) / STATE_FILE
    if not state_path.is_file():
        raise UserError(f"nothing to resume: {state_path} does not exist; drop --resume to start a new run")
    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    saved = {**BEFORE_SAVED,
             **{k: v for k, v in saved_settings(state_path).items() if k in fields and k not in NOT_SAVED}}
    overridden = []
    for key, value in given.items():
        if key in NOT_SAVED or key not in saved or saved[key] == value:
            continue
        option = "--" + key.replace("_", "-")
        if key in FIXED_ON_RESUME:
            raise UserError(f"{option} {value}: {out} was trained with {saved[key]}; a resumed run keeps it "
                            f"(drop {option}, or start a new run in another --out)")
        overridden.append(f"{option} {value} (saved {saved[key]})")
    return TrainArgs(**{**saved, **given, "resume": True}), overridden


# What stops a run with a checkpoint: Ctrl-C everywhere, SIGTERM on POSIX (kill, a scheduler), and on Windows
# Ctrl-Break (SIGBREAK), since nothing there delivers SIGTERM and Ctrl-Break would otherwise kill without saving.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name))


class _StopRequest:
    """Turns Ctrl-C / SIGTERM / Ctrl-Break into a flag checked between steps, so the checkpoint is consistent."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C stops at once
            signal.signal(signum, self._previous[signum])
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _agreed_stop(asked: bool, world: int, device) -> bool:
    """Whether every rank stops before this step: one rank's Ctrl-C or SIGTERM stops all of them here.

    Each rank catches its own signals; a rank that stopped alone would wait at the barrier after the
    loop while the others enter the next step's gradient all-reduce, and all would hang.  One MAX
    all-reduce of a flag per step makes them stop at the same step, and rank 0 saves once.
    """
    if world == 1:
        return asked
    flag = torch.tensor([1 if asked else 0], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step) % (2 ** 63)


def _device_type(name: str) -> str:
    """The device type a --device value trains on: auto is cuda where PyTorch sees a GPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _distributed(device_type: str) -> tuple[int, int]:
    """(rank, world size); initialises the process group when started by torchrun.

    The collective backend follows the training device, not the machine: NCCL reduces CUDA
    tensors only, so `--device cpu` on a GPU machine needs gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        # NCCL where it exists (Linux CUDA builds); Windows PyTorch has none, so gloo there and on the CPU.
        nccl = device_type == "cuda" and torch.distributed.is_nccl_available()
        torch.distributed.init_process_group("nccl" if nccl else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _pick_device(name: str, rank: int) -> torch.device:
    name = _device_type(name)
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def _schedule(args: TrainArgs) -> NoiseSchedule:
    if args.schedule == "linear":
        return NoiseSchedule.linear(args.num_train_timesteps)
    if args.schedule == "cosine":
        return NoiseSchedule.cosine(args.num_train_timesteps)
    raise UserError(f"unknown schedule {args.schedule!r}; choose linear or cosine")


def learning_rate(args: TrainArgs, step: int) -> float:
    """Linear warm-up over `warmup` steps, then constant, then with `cooldown` a linear fall to 0 over the last
    `cooldown` steps before `iters` (warmup-stable-decay): the noise that a constant rate leaves in the weights
    settles at the end (docs/training.md has the measurement)."""
    lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
    if args.cooldown:
        lr *= min(1.0, (args.iters - step) / args.cooldown)
    return lr


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    # Warm-up of the decay (as TensorFlow's ExponentialMovingAverage with num_updates): early
    # weights are forgotten quickly, so short runs still get a useful EMA.
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(d).add_(p.detach(), alpha=1 - d)


def write_sample_grid(ema: torch.nn.Module, schedule: NoiseSchedule, image_shape, path: Path,
                      device: torch.device, n: int = 64, seed: int = 0) -> None:
    """64 DDIM-50 samples of the EMA weights through the engine's own sampler."""
    # fp32: the grid shows the EMA weights as trained, and the EMA itself is not cast in place.
    model = TorchModel(ema, schedule, image_shape, str(device), precision="fp32")
    images = DDIMSampler(schedule, num_steps=50).sample(model, (n, *image_shape), seed=seed, progress=False)
    save_png(make_grid(to_uint8(images), ncols=8), path, scale=max(1, 128 // image_shape[-1]))


def _check_arguments(args: TrainArgs, state_path: Path, device: torch.device) -> None:
    """Every mistake a command line can make, as one line, before any data is read."""
    out = state_path.parent
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out and --overwrite replaces it; choose one")
    if args.resume and not state_path.is_file():
        raise UserError(f"nothing to resume: {state_path} does not exist; drop --resume to start a new run")
    if args.resume:
        saved = saved_settings(state_path)
        for key in FIXED_ON_RESUME:
            if key in saved and saved[key] != getattr(args, key):
                raise UserError(f"--{key.replace('_', '-')} {getattr(args, key)}: {out} was trained with {saved[key]}; "
                                "a resumed run keeps it (or start a new run in another --out)")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if not args.resume and held and not args.overwrite:
        what = "a training run" if STATE_FILE in held else f"the start of a training run ({', '.join(held)})"
        raise UserError(f"{out} already holds {what}; pass --resume to continue it, --overwrite to start again, "
                        "or choose another --out")
    if args.precision not in ("auto", "fp32", "fp16", "bf16"):
        raise UserError(f"unknown precision {args.precision!r}; choose auto, fp32, fp16 or bf16")
    if args.precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU; use fp32 (or bf16) on the CPU")
    if args.iters < 1 or args.batch_size < 1:
        raise UserError("--iters and --batch-size must be positive")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise UserError(f"--dropout {args.dropout}: give a probability from 0 to below 1")
    if args.save_every < 1 or args.save_minutes < 0:
        raise UserError("--save-every must be positive and --save-minutes at least 0")


def _clear_run(out: Path) -> None:
    """--overwrite: remove what an earlier run left in `out` (and nothing else)."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _trim_log(log_path: Path, step: int) -> None:
    """A resumed run continues from its checkpoint: drop log lines of steps after it (the killed
    run logged them, and this run logs them again)."""
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the kill
    with atomic_write(log_path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def first_checkpoint_step(iters: int) -> int:
    """A run saves at 5 % of its steps as well, so that a killed run of any length can resume."""
    return max(1, math.ceil(0.05 * iters))


def _built_norm_groups(state_path: Path) -> int:
    """The GroupNorm group count a saved run's U-Net was built with."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    return int(state["model_config"].get("norm_groups", UNetConfig.norm_groups))


def _model_config(args: TrainArgs, data, built_norm_groups: int | None = None) -> UNetConfig:
    """The U-Net config `args.model` for the data's images (square, divisible by the U-Net's downsampling).
    `built_norm_groups`: a resumed run's own count, kept where --norm-groups was never given, since the --model
    config's default may have changed since the run started (tiny: 32 until 2026-12-08, 16 since)."""
    c, h, w = data.images.shape[1:]
    if h != w:
        raise UserError(f"images must be square, got {h}x{w}; pass --image-size")
    groups = args.norm_groups if args.norm_groups is not None else built_norm_groups
    overrides = {k: v for k, v in (("dropout", args.dropout), ("norm_groups", groups)) if v is not None}
    try:
        model_config = get_config(args.model, image_channels=c, image_size=h, **overrides)
    except ValueError as exc:
        raise UserError(f"{exc}") from None
    widths = group_norm_widths(model_config) if args.norm_groups is not None else set()
    if any(n % args.norm_groups for n in widths):
        raise UserError(f"--norm-groups {args.norm_groups} does not divide the {args.model} U-Net's GroupNorm widths "
                        f"({', '.join(map(str, sorted(widths)))}); give a divisor of them all, e.g. 8")
    if h % 2 ** (len(model_config.ch_mult) - 1):
        raise UserError(f"image size {h} is not divisible by {2 ** (len(model_config.ch_mult) - 1)} "
                        f"(the {args.model} U-Net's downsampling); pass --image-size")
    return model_config


def _initial_weights(init_from: str, model_config: UNetConfig, model_name: str) -> dict:
    """`--init-from`: the EMA weights of a checkpoint folder or shipped model, for a U-Net of the run's own
    config (its dropout and GroupNorm group count aside, which hold no weights); anything else is one line naming
    what differs."""
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.export.model.checkpoint import load_unet

    path = resolve_model_path(init_from)
    if not (path.is_dir() and (path / CONFIG_FILE).is_file()):
        raise UserError(f"--init-from {init_from}: not a checkpoint folder (config.json and model.safetensors); "
                        "give a folder written by `ddpmrt train` or a shipped model name")
    unet, _ = load_unet(path)
    theirs, ours = unet.config.to_dict(), model_config.to_dict()
    differ = [f"{k} {theirs[k]} against {ours[k]}" for k in ours
              if k not in WEIGHTLESS and theirs.get(k) != ours[k]]
    if differ:
        raise UserError(f"--init-from {init_from} is another U-Net than this run's --model {model_name} on this data "
                        f"({'; '.join(differ)}); give the --model, --dataset and --image-size it was trained with")
    return unet.state_dict()


def _restore(state_path: Path, device, model_config: UNetConfig, model, ema, optimizer, scaler) -> int:
    """Load a saved run into the model, EMA, optimizer and scaler; returns the step it stopped at."""
    state = torch.load(state_path, map_location=device, weights_only=True)
    if state["model_config"] != model_config.to_dict():
        raise UserError(f"{state_path.parent} was trained with a different model/dataset configuration; "
                        "resume with the same --model, --dataset and --image-size")
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["step"])


def training_precision(precision: str, device: torch.device) -> str:
    """What `--precision auto` trains in: bf16 autocast on a CUDA GPU that has bf16 and on a CPU where
    the engine's rule says bf16 is faster (AMX-BF16, or AVX512-BF16 on AMD); fp32 elsewhere.

    The weights, the optimizer and the EMA stay fp32 either way; autocast runs the convolutions and
    matrix products in bf16.  The measured gain is in docs/training.md and benchmarks/results/cpu-train-speed/.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    from ddpmrt.engine.cpu import bf16_is_faster

    return "bf16" if bf16_is_faster() else "fp32"


def train_step(net, model, ema, optimizer, scaler, batch, lr: float, step: int, args: TrainArgs,
               autocast_dtype, device_type: str) -> torch.Tensor:
    """One optimizer step on L_simple (Algorithm 1), or its Min-SNR-γ weighting, then the EMA update;
    returns the loss."""
    x_t, t, noise, weight = batch
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        pred = net(x_t, t)
    per_sample = (pred.float() - noise).pow(2).flatten(1).mean(1)
    loss = (weight * per_sample).mean()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    _update_ema(ema, model, args.ema_decay, step)
    return loss


def min_snr_weight(abar_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ's weight of an ε loss, min(SNR, γ)/SNR with SNR = ᾱ/(1-ᾱ) (Hang et al. 2023, eq. 8 for
    ε-prediction); γ = 0 gives L_simple's 1.

    Why it is here: the deterministic samplers integrate ε over σ = sqrt((1-ᾱ)/ᾱ), which runs to 156 at
    t = T-1, so an ε error at high noise reaches x̂₀ multiplied by that much, while L_simple's gradient is
    dominated by the low-noise timesteps, whose irreducible loss is 100x larger
    (benchmarks/results/cpu-learning-curve/: per-bucket losses). Capping their weight at γ/SNR lets the
    high-noise ε be learned to the precision the ODE needs."""
    if not gamma:
        return torch.ones_like(abar_t)
    snr = abar_t / (1 - abar_t)
    return torch.clamp(snr, max=gamma) / snr


def noisy_batch(images, abar, num_train_timesteps: int, batch_size: int, seed: int, device, snr_gamma: float = 0.0):
    """x_t, t, the noise ε and each sample's loss weight for one training batch, every random choice from
    `seed`."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(images), (batch_size,), generator=gen)
    t = torch.randint(0, num_train_timesteps, (batch_size,), generator=gen)
    x0 = images[idx]
    noise = torch.randn(x0.shape, generator=gen)
    a = abar[t].view(-1, 1, 1, 1)
    x_t = (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(device)
    return x_t, t.to(device), noise.to(device), min_snr_weight(abar[t], snr_gamma).to(device)


def train(args: TrainArgs) -> Path:
    rank, world = _distributed(_device_type(args.device))
    device = _pick_device(args.device, rank)
    out = Path(args.out)
    state_path = out / STATE_FILE
    _check_arguments(args, state_path, device)
    data = load_dataset(args.dataset, args.image_size, seed=args.seed)
    c, h, w = data.images.shape[1:]
    model_config = _model_config(args, data, _built_norm_groups(state_path) if args.resume else None)
    schedule = _schedule(args)

    torch.manual_seed(args.seed)  # initial weights (DDP also broadcasts rank 0's)
    model = UNet(model_config).to(device)
    ema = UNet(model_config).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cuda", enabled=training_precision(args.precision, device) == "fp16")
    if args.init_from and not args.resume:  # a fine-tune: model and EMA start at the given weights, AdamW afresh
        initial = _initial_weights(args.init_from, model_config, args.model)
        model.load_state_dict(initial)
        ema.load_state_dict(initial)
    start = _restore(state_path, device, model_config, model, ema, optimizer, scaler) if args.resume else 0

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    images = torch.from_numpy(data.images)
    abar = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32)
    precision = training_precision(args.precision, device)
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    train_args = {k: v for k, v in dataclasses.asdict(args).items() if k not in NOT_SAVED}
    train_args["precision_used"] = precision  # what `auto` meant on this machine
    train_args["world_size"] = world

    def save(step: int) -> None:
        if rank != 0:
            return
        # Training state first: config.json is written last and so marks a complete checkpoint.
        with atomic_write(state_path) as tmp:
            torch.save({"step": step, "model": model.state_dict(), "ema": ema.state_dict(),
                        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                        "model_config": model_config.to_dict(), "train_args": train_args}, tmp)
        save_weights(out / WEIGHTS_FILE, ema)
        write_config(out, make_config(model_config, schedule, data.statistics(), train_args, step))

    if rank == 0:
        if args.overwrite:
            _clear_run(out)
        if args.resume:
            _trim_log(out / LOG_FILE, start)
        print(f"ddpmrt train: {args.model} U-Net ({count_parameters(model) / 1e6:.2f} M parameters) on "
              f"{data.name} ({len(images)} images {c}x{h}x{w}), {world} process(es) on {device} in {precision}, "
              f"steps {start}..{args.iters}; checkpoints every {args.save_every} steps"
              + (f" or {args.save_minutes:g} min" if args.save_minutes else "")
              + (f" and at step {first_checkpoint_step(args.iters)}" if start < first_checkpoint_step(args.iters) else ""))
    log = None  # opened at the first line, so that a run that fails before it leaves no empty log
    bar = tqdm(total=args.iters, initial=start, disable=rank != 0 or not args.progress, desc="train")
    step, t_last, losses = start, time.perf_counter(), []
    first_save, last_save = first_checkpoint_step(args.iters), time.monotonic()
    stopped = False
    with _StopRequest() as stop:
        try:
            while step < args.iters:
                if _agreed_stop(stop.signal is not None, world, device):
                    stopped = True
                    break
                torch.manual_seed(_step_seed(args.seed, rank, step))  # dropout
                batch = noisy_batch(images, abar, schedule.num_train_timesteps, args.batch_size,
                                     _step_seed(args.seed, rank, step), device, args.snr_gamma)
                lr = learning_rate(args, step)
                loss = train_step(net, model, ema, optimizer, scaler, batch, lr, step, args, autocast_dtype, device.type)
                step += 1
                losses.append(loss.item())
                bar.update(1)

                if rank == 0 and (step % args.log_every == 0 or step == args.iters):
                    now = time.perf_counter()
                    it_s = len(losses) / (now - t_last)
                    mean_loss = float(np.mean(losses))
                    bar.set_postfix(loss=f"{mean_loss:.4f}", it_s=f"{it_s:.2f}")
                    if log is None:
                        out.mkdir(parents=True, exist_ok=True)
                        log = open(out / LOG_FILE, "a", encoding="utf-8")
                    log.write(json.dumps({"step": step, "loss": mean_loss, "lr": lr, "it_per_s": it_s,
                                          "time": time.time()}) + "\n")
                    log.flush()
                    t_last, losses = now, []
                # By step, at the first 5 %, and by the clock: whichever comes first.
                due_by_time = args.save_minutes and time.monotonic() - last_save >= 60 * args.save_minutes
                if step % args.save_every == 0 or step == first_save or due_by_time:
                    save(step)
                    last_save = time.monotonic()
                if rank == 0 and args.sample_every and step % args.sample_every == 0:
                    write_sample_grid(ema, schedule, (c, h, w), out / "samples" / f"step_{step:07d}.png", device)
        finally:
            bar.close()
    save(step)
    if rank == 0:
        if not stopped and args.sample_every and step % args.sample_every:
            write_sample_grid(ema, schedule, (c, h, w), out / "samples" / f"step_{step:07d}.png", device)
        if log is not None:
            log.close()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if stopped:
        signum = int(stop.signal or signal.SIGTERM)  # a rank stopped by another's signal exits as that one would
        if rank == 0:
            print(f"ddpmrt train: stopped by signal {signum} at step {step}; checkpoint saved in {out}, "
                  "continue with --resume")
        raise SystemExit(128 + signum)
    return out
