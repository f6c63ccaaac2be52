"""Training images per second of the shipped recipe, for each lever the Reference models issue names, in one run.

    python benchmarks/train_speed.py --out benchmarks/results/cpu-train-speed/<cpu>.json
    python benchmarks/train_speed.py --variants fp32,bf16 --steps 3 --warmup 1     # the script itself

Every variant runs the trainer's own step (export/training/trainer.train_step: autocast forward,
L_simple, backward, gradient clip, AdamW, EMA) on the shipped recipe's model and data (tiny U-Net,
shapes 16x16), on batches drawn as the trainer draws them.  Variants:

- fp32 / bf16:  autocast precision (`--precision`); `auto` picks one of them by the engine's rule;
- +cl:          channels_last weights and inputs;
- +compile:     torch.compile of the network (its compile time is reported apart, not in the median);
- @B:           batch B instead of the recipe's 64 (the learning rate would be scaled; only speed here).

Each row: median seconds per step over --steps timed steps after --warmup untimed ones, and images
per second; the summary gives each variant's speed over fp32's at the recipe's batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from ddpmrt.engine.errors import run_script
from ddpmrt.engine.profiling import environment, summarize
from ddpmrt.engine.schedule import NoiseSchedule
from ddpmrt.export.model.unet import UNet, get_config
from ddpmrt.export.training.args import TrainArgs
from ddpmrt.export.training.data import load_dataset
from ddpmrt.export.training.trainer import noisy_batch, train_step, training_precision

RECIPE_BATCH = 64
DEFAULT_VARIANTS = "fp32,bf16,bf16+cl,bf16+compile,fp32@256,bf16@256"


def parse_variant(text: str) -> tuple[str, bool, bool, int]:
    """'bf16+cl+compile@256' -> (precision, channels_last, compile, batch)."""
    head, _, batch = text.partition("@")
    precision, *levers = head.split("+")
    if precision not in ("fp32", "bf16") or set(levers) - {"cl", "compile"}:
        raise argparse.ArgumentTypeError(f"variant {text!r}: PRECISION[+cl][+compile][@BATCH], precision fp32 or bf16")
    return precision, "cl" in levers, "compile" in levers, int(batch) if batch else RECIPE_BATCH


def measure(variant: str, steps: int, warmup: int, data, schedule) -> dict:
    precision, channels_last, compiled, batch = parse_variant(variant)
    args = TrainArgs(dataset="shapes", batch_size=batch, precision=precision)
    torch.manual_seed(0)
    model = UNet(get_config("tiny", image_channels=3, image_size=16))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    net = torch.compile(model) if compiled else model
    images = torch.from_numpy(data.images)
    abar = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step(k: int) -> None:
        x_t, t, noise, weight = noisy_batch(images, abar, schedule.num_train_timesteps, batch, k, "cpu")
        if channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        train_step(net, model, ema, optimizer, scaler, (x_t, t, noise, weight), 5e-4, k, args, dtype, "cpu")

    start = time.perf_counter()
    step(0)  # the first step compiles where compile is asked
    first = time.perf_counter() - start
    for k in range(1, warmup):
        step(k)
    times = []
    for k in range(warmup, warmup + steps):
        start = time.perf_counter()
        step(k)
        times.append(time.perf_counter() - start)
    seconds = summarize(times)
    return {"variant": variant, "precision": precision, "channels_last": channels_last, "compile": compiled,
            "batch": batch, "first_step_s": first, "step_s": seconds,
            "images_per_s": batch / seconds["median"], "steps_per_s": 1 / seconds["median"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated (default {DEFAULT_VARIANTS})")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per variant (default 60)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    parser.add_argument("--out", type=Path, help="write the raw results here (JSON)")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    try:
        for v in variants:
            parse_variant(v)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    data = load_dataset("shapes", 16, seed=0)
    schedule = NoiseSchedule.linear(1000)
    rows = []
    for variant in variants:
        row = measure(variant, args.steps, max(1, args.warmup), data, schedule)
        rows.append(row)
        print(f"{variant:>16}: {row['images_per_s']:7.0f} images/s  ({row['steps_per_s']:.2f} steps/s, "
              f"first step {row['first_step_s']:.1f} s)", flush=True)
    base = next((r for r in rows if r["variant"] == "fp32"), None)
    summary = {r["variant"]: r["images_per_s"] / base["images_per_s"] for r in rows} if base else {}
    if summary:
        print("speed over fp32 at batch 64: " + ", ".join(f"{k} {v:.2f}x" for k, v in summary.items()))
    result = {"benchmark": "train_speed", "date": time.strftime("%Y-%m-%d"), "environment": environment(),
              "auto_means": training_precision("auto", torch.device("cpu")), "steps": args.steps,
              "warmup": args.warmup, "rows": rows, "speed_over_fp32": summary}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
