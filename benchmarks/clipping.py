"""x̂₀ clipping by measurement (Reference models issue, item 3): which clipping rule makes more steps never worse.

    python benchmarks/clipping.py shapes --out benchmarks/results/cpu-clipping-shapes
    python benchmarks/clipping.py digits --steps 5,10 --num 16 --seeds 0 --out /tmp/clip   # the script itself

For DDIM (η = 0) and DPM-Solver++(2M) at every step count of --steps, FID and recognised share (the
model's classifier judge, as `ddpmrt report`) of --num samples per seed under:

- clip:     x̂₀ clipped to [-1, 1] at every step (ddpmrt's clip_sample=1, diffusers' clip_sample=True);
- none:     no clipping; the images are clipped once, when they become pixels (to_uint8, and the judge).
            This is also "clipping only the final output": an unclipped run clipped at the end;
- dynamic:  Imagen's dynamic thresholding in diffusers' own scheduler (thresholding=True, ratio 0.995,
            sample_max_value 1.5) on the same weights converted to UNet2DModel.  With diffusers'
            default sample_max_value of 1.0 the threshold is always 1 and the rule is plain clipping.

clip and none run through ddpmrt's samplers (make_sampler, the factory of every command); dynamic
through diffusers' DDIMScheduler / DPMSolverMultistepScheduler with the same schedule and spacing.
Writes clipping.json (raw scores per seed, the environment) and clipping.md (the table, and per rule
whether FID never rose by more than the seed spread as the steps grew).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddpmrt.engine import load_model, make_sampler
from ddpmrt.engine.backends import resolve_model_path
from ddpmrt.engine.profiling import environment
from ddpmrt.export.evaluation.quality import ClassifierJudge
from ddpmrt.export.model.checkpoint import read_config
from ddpmrt.export.model.diffusers_convert import diffusers_schedule, to_diffusers
from ddpmrt.export.model.sources import from_checkpoint

RULES = ("clip", "none", "dynamic")
SAMPLERS = ("ddim", "dpmsolver")
DYNAMIC = {"thresholding": True, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.5}


def _diffusers_scheduler(name: str, schedule):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    args = diffusers_schedule(schedule)
    if name == "ddim":
        return DDIMScheduler(**args, set_alpha_to_one=True, **DYNAMIC)
    return DPMSolverMultistepScheduler(**args, solver_order=2, algorithm_type="dpmsolver++", final_sigmas_type="zero",
                                       **DYNAMIC)


@torch.no_grad()
def _sample_dynamic(unet, scheduler, shape, steps: int, seed: int, batch: int = 250) -> np.ndarray:
    out = []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, shape[0], batch):
        x = torch.randn((min(batch, shape[0] - start), *shape[1:]), generator=gen)
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
        out.append(x.numpy())
    return np.concatenate(out)


def sample(rule: str, name: str, steps: int, model, unet, schedule, num: int, seed: int) -> np.ndarray:
    shape = (num, *model.image_shape)
    if rule == "dynamic":
        return _sample_dynamic(unet, _diffusers_scheduler(name, schedule), shape, steps, seed)
    options = {"eta": 0.0} if name == "ddim" else {"order": 2}
    sampler = make_sampler(name, schedule, steps, clip_sample=1.0 if rule == "clip" else 0.0, **options)
    return sampler.sample(model, shape, seed=seed, progress=False)


def never_worse(fids_by_steps: list[tuple[int, list[float]]]) -> bool:
    """FID non-increasing with the steps, within the spread of the seeds (max − min of each pair of settings)."""
    for (_, a), (_, b) in zip(fids_by_steps, fids_by_steps[1:]):
        spread = (max(a) - min(a)) + (max(b) - min(b))
        if np.mean(b) > np.mean(a) + max(spread, 1e-9):
            return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="checkpoint directory or shipped model (digits, shapes)")
    parser.add_argument("--steps", default="5,10,20,50,100,250,1000")
    parser.add_argument("--solver-steps", default="5,10,20,50", help="DPM-Solver++ step counts (default 5,10,20,50)")
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    path = resolve_model_path(args.model)
    dataset = read_config(path).get("data", {}).get("name", args.model)
    judge = ClassifierJudge.train(dataset, image_size=16)
    model = load_model(str(path), backend="torch", precision="fp32")
    unet = to_diffusers(from_checkpoint(path, "fp32").module.eval())
    schedule = model.schedule
    seeds = [int(s) for s in args.seeds.split(",")]
    plan = {"ddim": [int(s) for s in args.steps.split(",")], "dpmsolver": [int(s) for s in args.solver_steps.split(",")]}
    rows = []
    for name in SAMPLERS:
        for rule in RULES:
            for steps in plan[name]:
                start = time.perf_counter()
                scores = [judge.scores(sample(rule, name, steps, model, unet, schedule, args.num, seed)) for seed in seeds]
                rows.append({"sampler": name, "rule": rule, "steps": steps, "fid": [s["fid"] for s in scores],
                             "recognised": [s["recognised"] for s in scores], "seconds": time.perf_counter() - start})
                print(f"{name:9s} {rule:8s} {steps:5d} steps: FID {np.mean(rows[-1]['fid']):7.2f}", flush=True)
    verdict = {f"{name}/{rule}": never_worse([(r["steps"], r["fid"]) for r in rows if r["sampler"] == name and r["rule"] == rule])
               for name in SAMPLERS for rule in RULES}
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "clipping", "model": str(path), "dataset": dataset, "num": args.num, "seeds": seeds,
              "dynamic": DYNAMIC, "environment": environment(), "rows": rows, "never_worse": verdict}
    (args.out / "clipping.json").write_text(json.dumps(result, indent=1))
    lines = [f"# x̂₀ clipping on {args.model} ({args.num} samples, seeds {args.seeds})", "",
             "| sampler | steps | " + " | ".join(f"FID {rule}" for rule in RULES) + " |",
             "| --- | --- | " + " | ".join("---" for _ in RULES) + " |"]
    for name in SAMPLERS:
        for steps in plan[name]:
            cells = []
            for rule in RULES:
                fid = next(r["fid"] for r in rows if (r["sampler"], r["rule"], r["steps"]) == (name, rule, steps))
                cells.append(f"{np.mean(fid):.2f} ± {(max(fid) - min(fid)) / 2:.2f}")
            lines.append(f"| {name} | {steps} | " + " | ".join(cells) + " |")
    lines += ["", "More steps never worse (within the seed spread): " +
              ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in verdict.items())]
    (args.out / "clipping.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
