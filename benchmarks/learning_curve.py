"""The shipped models' learning curve (Reference models issue): train in segments, keep a snapshot
of the EMA weights at each, and judge every snapshot.

    python benchmarks/learning_curve.py train --out runs/curve --steps 6000,12000,24000,48000
    python benchmarks/learning_curve.py judge --out runs/curve --results benchmarks/results/cpu-learning-curve

`train` runs `ddpmrt train` with the shipped recipe (engine/models/NAME/README.md) to the first count,
then `--resume`s it to each next one: the learning rate is constant after warm-up and all randomness
of step k is seeded from (seed, k), so the segments are one uninterrupted run.  A snapshot
(`NAME/step_K/`: config.json, model.safetensors) is a checkpoint folder any command loads.  An
interrupted `train` starts again where the run folder stands; `--seconds` stops it on purpose (a device call's
limit), keeping the step it reached as a snapshot too.  On a GPU, `bash benchmarks/gpu_session.sh curve OUT`
trains and judges both models in one device call, and `merge` joins the per-model tables it writes.

`judge` measures each snapshot: FID / recognised share in the classifier's features of DDIM-10, -50
and -1000 (η = 0, clipped and unclipped) and DDPM-1000, the ODE consistency of DDIM-50 against
DDIM-1000 from the same noise, and the ε loss per timestep bucket; it writes curve.json, and a plot.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ddpmrt.engine.errors import UserError, run_script

# The recipe the models were first shipped with (equal loss weights, L_simple, tiny's 32 GroupNorm groups of the
# time), less the step count; --precision is this script's.  The digits model shipped since 2026-12-06 is
# digits-minsnr5 at 12k steps (engine/models/digits/).
RECIPES = {
    "digits": ["--dataset", "digits", "--model", "tiny", "--batch-size", "64", "--lr", "5e-4", "--warmup", "200",
               "--ema-decay", "0.999", "--snr-gamma", "0", "--norm-groups", "32"],
    "shapes": ["--dataset", "shapes", "--model", "tiny", "--image-size", "16", "--batch-size", "64", "--lr", "5e-4",
               "--warmup", "200", "--ema-decay", "0.999", "--snr-gamma", "0", "--norm-groups", "32"],
}
# Variants of a recipe, named DATASET-VARIANT; the later of two equal flags wins in argparse.  b256: 4x the batch
# (1.25x the images per second in bf16 on the 2-core AMX Xeon, results/cpu-train-speed/) at 2x the learning rate
# (square-root scaling), compared with the shipped recipe at equal images seen.
RECIPES["shapes-b256"] = RECIPES["shapes"] + ["--batch-size", "256", "--lr", "1e-3"]
RECIPES["digits-b256"] = RECIPES["digits"] + ["--batch-size", "256", "--lr", "1e-3"]
# minsnr5: Min-SNR-5 loss weights (trainer.min_snr_weight), for the high-noise ε precision the ODE needs.
RECIPES["shapes-minsnr5"] = RECIPES["shapes"] + ["--snr-gamma", "5"]
RECIPES["digits-minsnr5"] = RECIPES["digits"] + ["--snr-gamma", "5"]
# groups16: 16 GroupNorm groups (tiny's default since 2026-12-08) instead of 32, so that no group holds one channel
# alone (whose mean the norm would remove: results/cpu-shapes-mean-gain/), from scratch, against minsnr5 at equal steps.
RECIPES["shapes-minsnr5-groups16"] = RECIPES["shapes-minsnr5"] + ["--norm-groups", "16"]
RECIPES["digits-minsnr5-groups16"] = RECIPES["digits-minsnr5"] + ["--norm-groups", "16"]


def dataset_of(recipe: str) -> str:
    return recipe.split("-")[0]


# Unclipped DDIM at 10, 20, 50, 100 and 1000 steps: whether more steps are never worse (the issue's criterion).
SAMPLERS = [("ddim", 10, 1.0), ("ddim", 50, 1.0), ("ddim", 1000, 1.0), ("ddim", 10, 0.0), ("ddim", 20, 0.0),
            ("ddim", 50, 0.0), ("ddim", 100, 0.0), ("ddim", 1000, 0.0), ("ddpm", 1000, 1.0)]


def _steps_arg(text: str) -> list[int]:
    steps = sorted({int(s) for s in text.split(",") if s.strip()})
    if not steps or steps[0] <= 0:
        raise argparse.ArgumentTypeError("--steps: positive step counts, e.g. 6000,12000")
    return steps


def train(out: Path, models: list[str], steps: list[int], precision: str, device: str = "auto",
          seconds: float | None = None) -> None:
    """Each model's run to each step count in turn, a snapshot at each.  With `seconds`, the run is stopped there by
    SIGTERM, which the trainer turns into a checkpoint (a device call's time limit), and that checkpoint is kept as
    a snapshot too, at the step it reached; the next call resumes the run."""
    deadline = None if seconds is None else time.monotonic() + seconds
    for name in models:
        run = out / name / "run"
        for count in steps:
            if (out / name / f"step_{count}" / "model.safetensors").is_file():
                continue
            resume = (run / "training_state.pt").is_file()
            command = [sys.executable, "-m", "ddpmrt.export", "train", *RECIPES[name], "--iters", str(count),
                       "--precision", precision, "--device", device, "--save-every", "1000", "--sample-every", "0",
                       "--out", str(run), "--no-progress", *(["--resume"] if resume else ["--overwrite"])]
            start = time.perf_counter()
            with subprocess.Popen(command) as process:
                try:
                    process.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.terminate()  # SIGTERM: the trainer saves its state at the next step and exits
                    process.wait()
            if process.returncode != 0 and not (deadline and time.monotonic() >= deadline):
                raise subprocess.CalledProcessError(process.returncode, command)
            if not (run / "config.json").is_file():
                print(f"{name}: stopped at the time limit before its first checkpoint", flush=True)
                return
            reached = json.loads((run / "config.json").read_text())["training"]["step"]
            snapshot = out / name / f"step_{reached}"
            if not snapshot.exists():
                _keep_snapshot(run, snapshot, {"seconds": time.perf_counter() - start, "precision": precision,
                                               "command": command[1:]})
            if reached < count:
                print(f"{name}: stopped at the time limit at step {reached} (kept) before step {count}; "
                      "run it again to resume", flush=True)
                return
            print(f"{name}: step {count} saved to {snapshot}", flush=True)


def _keep_snapshot(run: Path, snapshot: Path, segment: dict) -> None:
    tmp = snapshot.with_name(snapshot.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for file in ("config.json", "model.safetensors"):
        shutil.copy2(run / file, tmp / file)
    (tmp / "segment.json").write_text(json.dumps(segment))
    tmp.rename(snapshot)


def _loss_by_bucket(model, images, schedule, buckets: int = 10, seed: int = 0) -> list[float]:
    """Mean ‖ε − ε_θ(x_t, t)‖² per equal bucket of t (the training objective, on real images)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    T = schedule.num_train_timesteps
    out = []
    for b in range(buckets):
        t = rng.integers(b * T // buckets, (b + 1) * T // buckets, size=len(images))
        noise = rng.standard_normal(images.shape).astype(np.float32)
        ab = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1).astype(np.float32)
        x_t = np.sqrt(ab) * images + np.sqrt(1 - ab) * noise
        out.append(float(np.mean((model(x_t, t.astype(np.int64)) - noise) ** 2)))
    return out


def _judged_on(device: str | None) -> str:
    """Who judged (and, with these scripts, trained) a row: the GPU's name, or the CPU's vendor, matrix
    instructions and cores."""
    import os

    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    from ddpmrt.engine.cpu import cpu_vendor, matrix_instructions

    return f"{cpu_vendor() or 'CPU'} ({', '.join(matrix_instructions()) or 'no matrix instructions'}), {os.cpu_count()} cores"


def judge(out: Path, results: Path, models: list[str], num: int, seeds: list[int], backend: str = "openvino",
          device: str | None = None, threads: int | None = None) -> None:
    import numpy as np

    from ddpmrt.engine import load_model, make_sampler
    from ddpmrt.export.evaluation.quality import ClassifierJudge
    from ddpmrt.export.training.data import load_dataset

    results.mkdir(parents=True, exist_ok=True)
    path = results / "curve.json"
    table = json.loads(path.read_text()) if path.is_file() else {}
    for name in models:
        judge_ = ClassifierJudge.train(dataset_of(name), image_size=16)
        real = load_dataset(dataset_of(name), image_size=16).images[:num].astype(np.float32)
        # The longest-trained first: a judge stopped by a time limit has judged what matters most.
        for snapshot in sorted((out / name).glob("step_*"), key=lambda p: -int(p.name.split("_")[1].split(".")[0])):
            if snapshot.name.endswith(".tmp"):
                continue
            # The precision it trained in is part of what a row is (bf16 autocast on a CPU with bf16 units).
            training = json.loads((snapshot / "config.json").read_text())["training"]
            precision = training.get("precision_used", "fp32")
            key = f"{name}/{precision}/{snapshot.name}"
            row = table.get(key)
            if row is not None and row["samples"] != num:
                print(f"{key}: judged with {row['samples']} samples in {path}; judge {num} into another --results",
                      flush=True)
                continue
            todo = [seed for seed in seeds if row is None or seed not in row["seeds"]]
            if not todo:
                continue
            # OpenVINO in fp32: the same numbers as eager torch to rounding (the export is validated against it),
            # 4x its speed here, and no bf16 to blur the ODE consistency of 1,000 steps.
            model = load_model(str(snapshot), backend=backend, device=device, precision="fp32", threads=threads)
            step = int(snapshot.name.split("_")[1])
            if row is None:
                # The run's own batch: a snapshot judged under a name that is no recipe (a branch of one) has it too.
                row = {"model": name, "precision": precision, "step": step,
                       "images_seen": step * training["batch_size"] * training.get("world_size", 1),
                       "samples": num, "seeds": [], "cpu": _judged_on(device),
                       "loss_by_t_bucket": _loss_by_bucket(model, real, model.schedule), "scores": {}}
            # Saved after each seed: a judge of many samples that is stopped keeps the seeds it finished and
            # adds only the missing ones next time.
            for seed in todo:
                images = {}
                for kind, steps, clip in SAMPLERS:
                    options = {"eta": 0.0} if kind == "ddim" else {}
                    sampler = make_sampler(kind, model.schedule, steps, clip_sample=clip, **options)
                    x = sampler.sample(model, shape=(num, *model.image_shape), seed=seed, progress=False)
                    label = f"{kind}{steps}{'_clip' if clip else ''}"
                    images[label] = x
                    row["scores"].setdefault(label, []).append(judge_.scores(x))
                a, b = images["ddim50"], images["ddim1000"]
                same = np.abs(a - b).reshape(num, -1).mean(1)
                classes = judge_.classifier.predict(np.clip(a.reshape(num, -1), -1, 1)) == \
                    judge_.classifier.predict(np.clip(b.reshape(num, -1), -1, 1))
                row.setdefault("ode_consistency", []).append(
                    {"mean_abs_diff": float(same.mean()), "same_class": float(classes.mean()),
                     "saturated_ddim50": float((np.abs(a) > 1.2).mean())})
                row["seeds"].append(seed)
                table[key] = row
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(table, indent=1))
                tmp.replace(path)
                print(key, f"seed {seed}", json.dumps({k: round(v[-1]["fid"], 2) for k, v in row["scores"].items()}),
                      flush=True)
            write_curve(table, results)


def merge(folders: list[Path], results: Path) -> None:
    """The rows of several judges' curve.json (one per model, judged at once on a GPU) in one table and plot."""
    table = {}
    for folder in [results, *folders]:
        if (folder / "curve.json").is_file():
            table.update(json.loads((folder / "curve.json").read_text()))
    results.mkdir(parents=True, exist_ok=True)
    (results / "curve.json").write_text(json.dumps(table, indent=1))
    write_curve(table, results)


def write_curve(table: dict, results: Path) -> None:
    """curve.md (every snapshot's figures) and curve.png (FID against training steps per sampler, one panel per
    model; the ε loss per timestep bucket, one line per snapshot)."""
    import numpy as np

    from ddpmrt.export.evaluation.plots import pyplot, save_figure, write_markdown

    rows = sorted(table.values(), key=lambda r: (r["model"], r["precision"], r["step"]))
    labels = [f"{kind}{steps}{'_clip' if clip else ''}" for kind, steps, clip in SAMPLERS]
    lines = ["# Learning curves of the shipped recipes (and variants: NAME-VARIANT, learning_curve.RECIPES)", "",
             "FID in the model's classifier features (mean over the seeds; `samples`: per seed × seeds); DDIM η = 0, "
             "`_clip`: x̂₀ clipped to ±1 at every step; ODE consistency: DDIM-50 against DDIM-1000 from the same noise "
             "(mean absolute pixel difference, share of the same recognised class), and the share of DDIM-50's pixels "
             "past ±1.2.", "",
             *[f"- judged on {cpu}: " + ", ".join(sorted({f"{r['model']} {r['precision']}" for r in rows if r["cpu"] == cpu}))
               for cpu in sorted({r["cpu"] for r in rows})], "",
             "| model | trained in | step | M images seen | samples | " + " | ".join(labels)
             + " | DDIM-50 vs -1000 diff | same class | saturated |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in labels) + " | --- | --- | --- |"]
    for row in rows:
        # Snapshots judged before a sampler joined SAMPLERS have no figure for it: "–".
        fids = [np.mean([s["fid"] for s in row["scores"][label]]) if label in row["scores"] else None for label in labels]
        ode = row["ode_consistency"]
        lines.append(f"| {row['model']} | {row['precision']} | {row['step']} | {row['images_seen'] / 1e6:.2f} | "
                     f"{row['samples']} × {len(row['seeds'])} | "
                     + " | ".join("–" if f is None else f"{f:.2f}" for f in fids)
                     + f" | {np.mean([o['mean_abs_diff'] for o in ode]):.3f} | {np.mean([o['same_class'] for o in ode]):.0%}"
                     + f" | {np.mean([o['saturated_ddim50'] for o in ode]):.1%} |")
    lines += ["", "ε loss per timestep bucket (t in tenths of T, real images):", "",
              "| model | trained in | step | " + " | ".join(f"t{b}" for b in range(10)) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in range(10)) + " |"]
    lines += [f"| {r['model']} | {r['precision']} | {r['step']} | " + " | ".join(f"{v:.4f}" for v in r["loss_by_t_bucket"]) + " |"
              for r in rows]
    write_markdown(results / "curve.md", lines + [""])
    # One column per data set, its recipes side by side against the images seen (batch × steps), so a recipe
    # with another batch size is compared at equal training data; four samplers keep the panel legible.
    datasets = sorted({dataset_of(r["model"]) for r in rows})
    shown_labels = ["ddim50", "ddim50_clip", "ddim1000", "ddpm1000_clip"]
    plt = pyplot()
    # Rows: FID, its legend, ε loss, its legend (a legend of every recipe would hide the panel it sat in).
    fig, grid = plt.subplots(4, max(1, len(datasets)), figsize=(7 * max(1, len(datasets)), 17), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2, 3, 1.3]})
    axes, legends = grid[0::2], grid[1::2]
    for column, dataset in enumerate(datasets):
        recipes = sorted({(r["model"], r["precision"]) for r in rows if dataset_of(r["model"]) == dataset})
        for marker, (model, precision) in zip(itertools.cycle("os^vDPX*<>"), recipes):  # every recipe, markers reused
            recipe = f"{model} {precision}"
            mine = [r for r in rows if (r["model"], r["precision"]) == (model, precision)]
            for colour, label in enumerate(shown_labels):
                points = [(r["images_seen"] / 1e6, np.mean([s["fid"] for s in r["scores"][label]]))
                          for r in mine if label in r["scores"]]
                if points:
                    axes[0][column].plot(*zip(*points), marker=marker, color=f"C{colour}",
                                         linestyle="--" if label.endswith("_clip") else "-", label=f"{recipe} {label}")
            for r in mine:
                axes[1][column].plot(range(10), r["loss_by_t_bucket"], marker=marker, label=f"{recipe} step {r['step']}")
        axes[0][column].set(title=f"{dataset}: FID against images seen", xlabel="million images seen", ylabel="FID",
                            yscale="log")
        axes[1][column].set(title=f"{dataset}: ε loss per timestep bucket", xlabel="t bucket (tenths of T)",
                            ylabel="loss", yscale="log")
        for panel, legend in zip(axes, legends):
            legend[column].axis("off")
            legend[column].legend(*panel[column].get_legend_handles_labels(), fontsize=6, ncol=2, loc="upper center")
    fig.tight_layout()
    save_figure(fig, results / "curve.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["train", "judge", "merge"])
    parser.add_argument("folders", nargs="*", type=Path, help="merge: results folders whose curve.json join in --results")
    parser.add_argument("--out", type=Path, default=Path("runs/curve"))
    parser.add_argument("--models", default="digits,shapes")
    parser.add_argument("--steps", type=_steps_arg, default=[6000, 12000, 24000, 48000])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where the runs train (auto: a CUDA GPU if PyTorch sees one) and, with --backend torch, "
                             "where judge samples (auto: the CPU)")
    parser.add_argument("--seconds", type=float, help="train: stop (with a checkpoint) after this long; resumes next time")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/cpu-learning-curve"))
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--backend", choices=["openvino", "onnxruntime", "torch"], default="openvino",
                        help="judge: the backend the snapshots sample on, in fp32 (default openvino)")
    parser.add_argument("--threads", type=int, help="judge: CPU threads of the backend (default: all cores; 1 beside a "
                                                    "training run, which OpenVINO's default would slow to half)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    # A judged run's name begins with its data set (shapes-minsnr5-cooldown12k); a trained one is a recipe.
    known = RECIPES if args.action == "train" else [n for n in RECIPES if "-" not in n]
    for name in models if args.action != "merge" else []:
        if (name if args.action == "train" else dataset_of(name)) not in known:
            raise UserError(f"--models {name}: not a recipe of this script; give one of {', '.join(known)}"
                            + ("" if args.action == "train" else " (or a name that begins with one and a '-')"))
    if args.action == "train":
        train(args.out, models, args.steps, args.precision, args.device, args.seconds)
    elif args.action == "merge":
        merge(args.folders, args.results)
    else:
        judge(args.out, args.results, models, args.num, [int(s) for s in args.seeds.split(",")], args.backend,
              None if args.device == "auto" else args.device, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
