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
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.backends.torch_backend import TorchModel
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.images import make_grid, save_png, to_uint8
from ddpmrt.engine.samplers import DDIMSampler
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.export.checkpoint import STATE_FILE, WEIGHTS_FILE, make_config, save_weights, write_config
from ddpmrt.export.data import load_dataset
from ddpmrt.export.unet import UNet, UNetConfig, count_parameters, get_config


@dataclasses.dataclass
class TrainArgs:
    dataset: str = "digits"
    model: str = "tiny"
    out: str = "runs/digits"
    iters: int = 10000
    batch_size: int = 128             # per process
    lr: float = 2e-4
    warmup: int = 500                 # linear LR warm-up steps
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    image_size: int | None = None     # default: the dataset's own size
    seed: int = 0
    num_train_timesteps: int = 1000
    schedule: str = "linear"          # linear | cosine
    precision: str = "fp32"           # fp32 | fp16 | bf16 (autocast)
    device: str = "auto"
    save_every: int = 1000
    sample_every: int = 2000          # 0: never (a grid is also written at the end)
    log_every: int = 50
    resume: bool = False
    progress: bool = True


class _StopRequest:
    """Turns Ctrl-C / SIGTERM into a flag checked between steps, so the checkpoint is consistent."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
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
        torch.distributed.init_process_group("nccl" if device_type == "cuda" else "gloo")
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
    if args.resume and not state_path.is_file():
        raise UserError(f"nothing to resume: {state_path} does not exist; drop --resume to start a new run")
    if not args.resume and state_path.exists():
        raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if args.precision not in ("fp32", "fp16", "bf16"):
        raise UserError(f"unknown precision {args.precision!r}; choose fp32, fp16 or bf16")
    if args.precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU; use fp32 (or bf16) on the CPU")
    if args.iters < 1 or args.batch_size < 1:
        raise UserError("--iters and --batch-size must be positive")


def _model_config(args: TrainArgs, data) -> UNetConfig:
    """The U-Net config `args.model` for the data's images (square, divisible by the U-Net's downsampling)."""
    c, h, w = data.images.shape[1:]
    if h != w:
        raise UserError(f"images must be square, got {h}x{w}; pass --image-size")
    try:
        model_config = get_config(args.model, image_channels=c, image_size=h)
    except ValueError as exc:
        raise UserError(f"{exc}") from None
    if h % 2 ** (len(model_config.ch_mult) - 1):
        raise UserError(f"image size {h} is not divisible by {2 ** (len(model_config.ch_mult) - 1)} "
                        f"(the {args.model} U-Net's downsampling); pass --image-size")
    return model_config


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


def _noisy_batch(images, abar, num_train_timesteps: int, batch_size: int, seed: int, device):
    """x_t, t and the noise ε of one training batch (L_simple), every random choice from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(images), (batch_size,), generator=gen)
    t = torch.randint(0, num_train_timesteps, (batch_size,), generator=gen)
    x0 = images[idx]
    noise = torch.randn(x0.shape, generator=gen)
    a = abar[t].view(-1, 1, 1, 1)
    x_t = (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(device)
    return x_t, t.to(device), noise.to(device)


def train(args: TrainArgs) -> Path:
    rank, world = _distributed(_device_type(args.device))
    device = _pick_device(args.device, rank)
    out = Path(args.out)
    state_path = out / STATE_FILE
    _check_arguments(args, state_path, device)
    data = load_dataset(args.dataset, args.image_size, seed=args.seed)
    c, h, w = data.images.shape[1:]
    model_config = _model_config(args, data)
    schedule = _schedule(args)

    torch.manual_seed(args.seed)  # initial weights (DDP also broadcasts rank 0's)
    model = UNet(model_config).to(device)
    ema = UNet(model_config).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "fp16")
    start = _restore(state_path, device, model_config, model, ema, optimizer, scaler) if args.resume else 0

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    images = torch.from_numpy(data.images)
    abar = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32)
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.precision)
    train_args = {k: v for k, v in dataclasses.asdict(args).items() if k not in ("resume", "progress")}
    train_args["world_size"] = world

    def save(step: int) -> None:
        if rank != 0:
            return
        # Training state first: config.json is written last and so marks a complete checkpoint.
        with atomic_write(state_path) as tmp:
            torch.save({"step": step, "model": model.state_dict(), "ema": ema.state_dict(),
                        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                        "model_config": model_config.to_dict()}, tmp)
        save_weights(out / WEIGHTS_FILE, ema)
        write_config(out, make_config(model_config, schedule, data.statistics(), train_args, step))

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(f"ddpmrt train: {args.model} U-Net ({count_parameters(model) / 1e6:.2f} M parameters) on "
              f"{data.name} ({len(images)} images {c}x{h}x{w}), {world} process(es) on {device}, "
              f"steps {start}..{args.iters}")
    log = open(out / "log.jsonl", "a", encoding="utf-8") if rank == 0 else None
    bar = tqdm(total=args.iters, initial=start, disable=rank != 0 or not args.progress, desc="train")
    step, t_last, losses = start, time.perf_counter(), []
    with _StopRequest() as stop:
        try:
            while step < args.iters and stop.signal is None:
                torch.manual_seed(_step_seed(args.seed, rank, step))  # dropout
                x_t, t, noise = _noisy_batch(images, abar, schedule.num_train_timesteps, args.batch_size,
                                             _step_seed(args.seed, rank, step), device)

                lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    pred = net(x_t, t)
                loss = F.mse_loss(pred.float(), noise)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                _update_ema(ema, model, args.ema_decay, step)
                step += 1
                losses.append(loss.item())
                bar.update(1)

                if rank == 0 and (step % args.log_every == 0 or step == args.iters):
                    now = time.perf_counter()
                    it_s = len(losses) / (now - t_last)
                    mean_loss = float(np.mean(losses))
                    bar.set_postfix(loss=f"{mean_loss:.4f}", it_s=f"{it_s:.2f}")
                    log.write(json.dumps({"step": step, "loss": mean_loss, "lr": lr, "it_per_s": it_s,
                                          "time": time.time()}) + "\n")
                    log.flush()
                    t_last, losses = now, []
                if step % args.save_every == 0:
                    save(step)
                if rank == 0 and args.sample_every and step % args.sample_every == 0:
                    write_sample_grid(ema, schedule, (c, h, w), out / "samples" / f"step_{step:07d}.png", device)
        finally:
            bar.close()
    save(step)
    if rank == 0:
        if stop.signal is None and args.sample_every and step % args.sample_every:
            write_sample_grid(ema, schedule, (c, h, w), out / "samples" / f"step_{step:07d}.png", device)
        log.close()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if stop.signal is not None:
        if rank == 0:
            print(f"ddpmrt train: stopped by signal {stop.signal} at step {step}; checkpoint saved in {out}, "
                  "continue with --resume")
        raise SystemExit(128 + int(stop.signal))
    return out
