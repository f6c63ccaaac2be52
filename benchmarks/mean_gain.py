"""How well a model passes each channel's mean through at high noise (Reference models issue): the gain of its ε
on the per-channel mean of x_t, against the best linear predictor's, and what the error does to unclipped DDIM.

    python benchmarks/mean_gain.py shapes runs/shapes-ft-g8 --out benchmarks/results/cpu-shapes-mean-gain

Why: at t near T, x̂₀ = (x_t − √(1−ᾱ) ε) / √ᾱ multiplies an ε error by up to 1/√ᾱ = 156, and the mean colour of an
image is decided there (a channel's mean of x_T has standard deviation 1/√(HW), so its signal-to-noise ratio is HW
times a pixel's).  The optimal ε passes that mean through almost unchanged; a gain short of it makes x̂₀'s mean a
multiple of x_T's, and the deterministic samplers follow it to a saturated colour field from the noises whose mean
lies in the tail.

Measured on pure noise x_T (seed `--seed`, `--samples` images) at each `--timesteps` t: the least-squares gain
of the model's ε per-channel mean on x_T's (`mean`), and of the rest of ε on the rest of x_T (`rest`: should be
about 1/√(1−ᾱ)); the best linear predictor's gain on the mean, from the data's channel-mean covariance Σ
(m ~ N(μ, Σ): ε̂ = (I − ᾱ Σ (ᾱ Σ + (1−ᾱ)/HW I)⁻¹) d / √(1−ᾱ) up to a constant, averaged over the channels); and
unclipped DDIM-50 from the same noise: the share of images with more than a quarter of their pixels past ±1.2, and
the rank correlation of that share with the size of x_T's channel means.  Writes results.json (the environment
with it) and results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ddpmrt.engine import load_model, make_sampler
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.backends import resolve_model_path
from ddpmrt.engine.errors import run_script
from ddpmrt.engine.philox import gaussian_noise
from ddpmrt.engine.profiling import environment
from ddpmrt.engine.samplers import STREAM_INITIAL
from ddpmrt.export.model.checkpoint import read_config
from ddpmrt.export.training.data import load_dataset


def gains(eps: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Least-squares gains of ε on x: of the per-channel means, and of the rest."""
    n, c = x.shape[:2]
    xm, em = x.reshape(n, c, -1).mean(2, keepdims=True), eps.reshape(n, c, -1).mean(2, keepdims=True)
    xr, er = x.reshape(n, c, -1) - xm, eps.reshape(n, c, -1) - em
    return float((xm * em).sum() / (xm * xm).sum()), float((xr * er).sum() / (xr * xr).sum())


def best_linear_gain(cov: np.ndarray, abar: float, pixels: int) -> float:
    """The mean over channels of the best linear ε predictor's gain on x_t's channel means (the docstring)."""
    c = len(cov)
    shrink = abar * cov @ np.linalg.inv(abar * cov + (1 - abar) / pixels * np.eye(c))
    return float(np.trace(np.eye(c) - shrink) / c / np.sqrt(1 - abar))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="shipped model names or checkpoint folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timesteps", default="999,900,800,700,600")
    parser.add_argument("--threads", type=int, help="CPU threads of the backend (default: all cores)")
    args = parser.parse_args(argv)
    timesteps = [int(t) for t in args.timesteps.split(",")]
    rows = []
    for name in args.models:
        path = resolve_model_path(name)
        config = read_config(path)
        model = load_model(str(path), backend="openvino", precision="fp32", threads=args.threads)
        shape = tuple(model.image_shape)
        data = load_dataset(config["data"]["name"], image_size=shape[-1]).images
        cov = np.atleast_2d(np.cov(data.reshape(len(data), shape[0], -1).mean(2).T))
        abar = model.schedule.alphas_cumprod
        x_T = gaussian_noise(args.seed, np.arange(args.samples), 0, STREAM_INITIAL, shape).astype(np.float32)
        row = {"model": name, "norm_groups": read_config(path)["model"].get("norm_groups"), "timesteps": {}}
        for t in timesteps:
            g_mean, g_rest = gains(np.asarray(model(x_T, np.full(args.samples, t, np.int64))), x_T)
            row["timesteps"][t] = {"mean": g_mean, "best_linear_mean": best_linear_gain(cov, abar[t], shape[1] * shape[2]),
                                   "rest": g_rest, "rest_ideal": float(1 / np.sqrt(1 - abar[t]))}
        images = make_sampler("ddim", model.schedule, 50, eta=0.0, clip_sample=0.0).sample(
            model, (args.samples, *shape), seed=args.seed, progress=False)
        past = (np.abs(images.reshape(args.samples, -1)) > 1.2).mean(1)
        size = np.linalg.norm(x_T.reshape(args.samples, shape[0], -1).mean(2), axis=1)
        ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731
        row["ddim50_saturated_share"] = float((past > 0.25).mean())
        row["saturation_vs_mean_size_spearman"] = float(np.corrcoef(ranks(past), ranks(size))[0, 1])
        rows.append(row)
        print(name, json.dumps(row), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "mean_gain", "samples": args.samples, "seed": args.seed, "rows": rows,
              "environment": environment(args.threads)}
    with atomic_write(args.out / "results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    head = " | ".join(f"t={t} mean (best) / rest" for t in timesteps)
    lines = ["# ε gain on the channel means at high noise", "",
             f"{args.samples} pure-noise images (seed {args.seed}), OpenVINO fp32; `benchmarks/mean_gain.py` says what each "
             "column is. Unclipped DDIM-50 from the same noise: the share of images more than a quarter past ±1.2.", "",
             f"| model | GroupNorm groups | {head} | DDIM-50 saturated | rank corr. with mean size |",
             "| --- | --- | " + "--- | " * len(timesteps) + "--- | --- |"]
    for row in rows:
        cells = [f"{v['mean']:.4f} ({v['best_linear_mean']:.4f}) / {v['rest']:.4f}" for v in row["timesteps"].values()]
        lines.append(f"| {row['model']} | {row['norm_groups']} | " + " | ".join(cells)
                     + f" | {100 * row['ddim50_saturated_share']:.1f} % | {row['saturation_vs_mean_size_spearman']:.2f} |")
    with atomic_write(args.out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
