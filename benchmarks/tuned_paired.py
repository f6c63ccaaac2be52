"""Tuned timesteps on a shipped model, paired: each setting's error against the converged ODE solution from the
same noise, beside its FID (Tuned steps issue).

    python benchmarks/tuned_paired.py digits --out benchmarks/results/cpu-tuned-paired-digits
    python benchmarks/tuned_paired.py shapes --samples 16 --seeds 1 --out /tmp/paired   # the script itself

An FID of 500 samples moves by ±0.1-0.2 between two seeds on digits, as much as DDIM-25 and DDIM-50 differ, so it
cannot tell whether 5 tuned calls give what DDIM-25 gives.  The error each sampler makes can be measured without
that noise: every setting starts from the same x_T as the reference (the tuning's teacher, DPM-Solver++(3M) at
200 steps, with the same clipping), and the per-image RMS distance to the reference's image is the discretisation
error alone — the measure of the Gaussian check, on the real model.  DDIM-100 against the reference shows where two
converged solvers stop agreeing.

Settings: DDIM at --ddim-steps, DPM-Solver++(3M) at --calls with its linspace spacing and with the timesteps the
model ships (`--spacing tuned`, engine/models/NAME/schedules.json, the entries for this clipping).  The default
seeds 1 and 2 are noises the shipped tables were not tuned on (tuning draws seed 0).  The model runs in fp32
(--backend, OpenVINO by default) so that the error is the solver's, not bf16's.  Writes results.json (raw, the
environment) after every row, so an interrupted run resumes, and results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ddpmrt.engine import load_model, make_sampler
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.artifacts.schedules import TunedSchedules
from ddpmrt.engine.backends import resolve_model_path
from ddpmrt.engine.errors import run_script
from ddpmrt.engine.profiling import environment
from ddpmrt.engine.sampler_factory import parse_spec
from ddpmrt.engine.tuning import DEFAULT_TEACHER
from ddpmrt.export.evaluation.quality import ClassifierJudge
from ddpmrt.export.model.checkpoint import read_config


def settings(ddim_steps: list[int], calls: list[int]) -> list[tuple[str, str, int, dict]]:
    """(label, sampler, steps, options) of every row, the reference's own row first."""
    rows = [("reference " + DEFAULT_TEACHER, "reference", 0, {})]
    rows += [("DDIM", "ddim", s, {"eta": 0.0}) for s in ddim_steps]
    rows += [("DPM-Solver++(3M) linspace", "dpmsolver", c, {"order": 3}) for c in calls]
    rows += [("DPM-Solver++(3M) tuned", "dpmsolver", c, {"order": 3, "spacing": "tuned"}) for c in calls]
    return rows


def rms_each(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((images.reshape(len(images), -1) - reference.reshape(len(images), -1)) ** 2, axis=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a shipped model (digits, shapes) or a checkpoint folder with schedules.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--ddim-steps", default="10,20,25,50,100")
    parser.add_argument("--calls", default="4,5,6,8,10")
    parser.add_argument("--clip-sample", type=float, default=0.0,
                        help="clip x̂₀ to ±C in every setting and the reference (default 0: none, the commands' default)")
    parser.add_argument("--backend", default="openvino", choices=("openvino", "onnxruntime", "torch"))
    parser.add_argument("--threads", type=int, help="CPU threads of the backend (default: all cores)")
    args = parser.parse_args(argv)
    path = resolve_model_path(args.model)
    config = read_config(path)
    model = load_model(str(path), backend=args.backend, precision="fp32", threads=args.threads)
    tuned = TunedSchedules(path, args.model)
    judge = ClassifierJudge.train(config["data"]["name"], image_size=config["image_shape"][-1])
    seeds = [int(s) for s in args.seeds.split(",")]
    clip = {"clip_sample": args.clip_sample}
    plan = settings([int(s) for s in args.ddim_steps.split(",")], [int(c) for c in args.calls.split(",")])

    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "results.json"
    result = {"benchmark": "tuned_paired", "model": args.model, "samples": args.samples, "clip_sample": args.clip_sample,
              "backend": f"{args.backend} fp32", "reference": DEFAULT_TEACHER, "rows": []}
    if raw.is_file():  # the same measurement stopped earlier: keep its rows
        earlier = json.loads(raw.read_text())
        if all(earlier.get(k) == result[k] for k in ("model", "samples", "clip_sample", "backend", "reference")):
            result["rows"] = earlier["rows"]
    result["environment"], result["judge_floor"] = environment(), judge.floor()
    done = {(r["label"], r["steps"], r["seed"]) for r in result["rows"]}
    shape = (args.samples, *model.image_shape)
    for seed in seeds:
        if all((label, steps, seed) in done for label, _, steps, _ in plan):
            continue
        reference = parse_spec(DEFAULT_TEACHER).make(model.schedule, **clip).sample(model, shape, seed=seed,
                                                                                  progress=False)
        for label, name, steps, options in plan:
            if (label, steps, seed) in done:
                continue
            start = time.perf_counter()
            if name == "reference":
                images, timesteps = reference, None
            else:
                sampler = make_sampler(name, model.schedule, steps, tuned=tuned, **options, **clip)
                images, timesteps = sampler.sample(model, shape, seed=seed, progress=False), sampler.timesteps.tolist()
            each = rms_each(images, reference)
            row = {"label": label, "steps": steps, "seed": seed, "timesteps": timesteps,
                   "rms_mean": float(each.mean()), "rms_median": float(np.median(each)),
                   "rms_p90": float(np.quantile(each, 0.9)), **judge.scores(images),
                   "seconds": time.perf_counter() - start}
            result["rows"].append(row)
            print(f"{label:28s} {steps:4d} seed {seed}: RMS to reference {row['rms_mean']:.4f}, FID {row['fid']:.2f}",
                  flush=True)
            with atomic_write(raw) as tmp:
                tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    with atomic_write(args.out / "results.md") as tmp:
        tmp.write_text("\n".join(markdown(result, seeds)) + "\n", encoding="utf-8")
    print("\n".join(markdown(result, seeds)))
    return 0


def markdown(result: dict, seeds: list[int]) -> list[str]:
    env = result["environment"]
    lines = [f"# Tuned timesteps, paired with the converged solution: {result['model']} ({env['date'][:10]}, "
             f"{env['cpu']}, {', '.join(env.get('cpu_matrix_instructions', []))})", "",
             f"{result['samples']} samples per seed, seeds {seeds}, {result['backend']}, x̂₀ clipped to "
             f"{result['clip_sample'] or 'nothing'}. RMS: each image's RMS distance (on [-1, 1]) to the reference's image "
             f"from the same noise ({result['reference']}), mean (median, 90th percentile) over the images and seeds. "
             + ("FID: the mean over the seeds ± half their range" if len(seeds) > 1 else "FID: one seed")
             + f"; real against real {result['judge_floor']['fid']:.2f}.",
             "", "| sampler | calls | RMS to reference | FID | recognised |", "| --- | --- | --- | --- | --- |"]
    keys = list(dict.fromkeys((r["label"], r["steps"]) for r in result["rows"]))
    for label, steps in keys:
        group = [r for r in result["rows"] if (r["label"], r["steps"]) == (label, steps) and r["seed"] in seeds]
        if not group:
            continue
        fids = [r["fid"] for r in group]
        mean = lambda key: sum(r[key] for r in group) / len(group)  # noqa: E731
        calls = "200" if steps == 0 else str(steps)
        lines.append(f"| {label} | {calls} | {mean('rms_mean'):.4f} ({mean('rms_median'):.4f}, {mean('rms_p90'):.4f}) | "
                     f"{np.mean(fids):.2f}" + (f" ± {(max(fids) - min(fids)) / 2:.2f}" if len(fids) > 1 else "")
                     + f" | {mean('recognised'):.1%} |")
    return lines


if __name__ == "__main__":
    sys.exit(run_script(main))
