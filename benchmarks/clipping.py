"""x̂₀ clipping by measurement (Reference models issue, item 3): which clipping rule makes more steps never worse.

    python benchmarks/clipping.py shapes --out benchmarks/results/cpu-clipping-shapes
    python benchmarks/clipping.py digits --steps 5,10 --num 16 --seeds 0 --out /tmp/clip   # the script itself

For DDIM (η = 0), DPM-Solver++(2M) and DDPM (ancestral, fixed_small) at their step counts (--steps,
--solver-steps, --ddpm-steps), FID and recognised share (the model's classifier judge, as `ddpmrt report`)
of --num samples per seed under:

- clip:     x̂₀ clipped to [-1, 1] at every step (ddpmrt's clip_sample=1, diffusers' clip_sample=True);
- none:     no clipping; the images are clipped once, when they become pixels (to_uint8, and the judge).
            This is also "clipping only the final output": an unclipped run clipped at the end;
- dynamic:  Imagen's dynamic thresholding in diffusers' own scheduler (thresholding=True, ratio 0.995,
            sample_max_value 1.5) on the same weights converted to UNet2DModel.  With diffusers'
            default sample_max_value of 1.0 the threshold is always 1 and the rule is plain clipping.
            Not for DDPM: diffusers' DDPMScheduler draws its own noise, so the rule would not differ
            from the other two in the rule alone.

Every rule starts from the same noise (ddpmrt's Philox x_T for each seed) and calls the same model
(--backend, fp32; OpenVINO by default, the learning curve's judge), so the rules differ in the rule
alone: clip and none through ddpmrt's samplers (make_sampler, the factory of every command), dynamic
through diffusers' DDIMScheduler / DPMSolverMultistepScheduler with the same schedule and spacing.
Writes clipping.json (raw scores per seed, the environment) after every sample set, so an interrupted
run resumes where it stopped and a later run with more seeds or step counts adds only what is missing,
and clipping.md (the table, and per rule whether FID never rose by more than the seed spread as the
steps grew; that needs two seeds).
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
from ddpmrt.engine.errors import run_script
from ddpmrt.engine.philox import STREAM_INITIAL, gaussian_noise
from ddpmrt.engine.profiling import environment
from ddpmrt.export.evaluation.quality import ClassifierJudge
from ddpmrt.export.model.checkpoint import read_config
from ddpmrt.export.model.diffusers_convert import diffusers_schedule

RULES = ("clip", "none", "dynamic")
SAMPLERS = ("ddim", "dpmsolver", "ddpm")
RULES_OF = {"ddim": RULES, "dpmsolver": RULES, "ddpm": ("clip", "none")}
DYNAMIC = {"thresholding": True, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.5}


def _diffusers_scheduler(name: str, schedule, spacing: str, dynamic: dict):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    args = {**diffusers_schedule(schedule), "timestep_spacing": spacing}
    if name == "ddim":
        return DDIMScheduler(**args, set_alpha_to_one=True, **dynamic)
    return DPMSolverMultistepScheduler(**args, solver_order=2, algorithm_type="dpmsolver++", final_sigmas_type="zero",
                                       **dynamic)


def _sample_dynamic(model, scheduler, x_T: np.ndarray, steps: int, timesteps: np.ndarray) -> np.ndarray:
    """diffusers' own scheduler loop, thresholding included, around the model's ε (numpy in, numpy out)."""
    x = torch.from_numpy(x_T.copy())
    scheduler.set_timesteps(steps)
    if scheduler.timesteps.tolist() != timesteps.tolist():
        raise RuntimeError(f"diffusers' timesteps {scheduler.timesteps.tolist()} are not ddpmrt's {timesteps.tolist()}")
    for t in scheduler.timesteps:
        eps = model(x.numpy(), np.full(len(x), int(t), np.int64))
        x = scheduler.step(torch.from_numpy(np.asarray(eps, np.float32)), t, x).prev_sample
    return x.numpy()


def sample(rule: str, name: str, steps: int, model, num: int, seed: int, dynamic: dict = DYNAMIC) -> np.ndarray:
    shape = (num, *model.image_shape)
    x_T = gaussian_noise(seed, np.arange(num), 0, STREAM_INITIAL, model.image_shape)
    options = {"ddim": {"eta": 0.0}, "dpmsolver": {"order": 2}, "ddpm": {}}[name]
    sampler = make_sampler(name, model.schedule, steps, clip_sample=1.0 if rule == "clip" else 0.0, **options)
    if rule == "dynamic":  # each sampler's default spacing, as the other two rules run it
        scheduler = _diffusers_scheduler(name, model.schedule, sampler.spacing, dynamic)
        return _sample_dynamic(model, scheduler, x_T, steps, sampler.timesteps)
    return sampler.sample(model, shape, seed=seed, x_T=x_T, progress=False)


def never_worse(fids_by_steps: list[tuple[int, list[float]]]) -> bool | None:
    """FID non-increasing with the steps, within the spread of the seeds (max − min of each pair of settings);
    None with fewer than two seeds, where there is no spread to judge a small rise by."""
    if any(len(fids) < 2 for _, fids in fids_by_steps):
        return None
    for (_, a), (_, b) in zip(fids_by_steps, fids_by_steps[1:]):
        spread = (max(a) - min(a)) + (max(b) - min(b))
        if np.mean(b) > np.mean(a) + spread:
            return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="checkpoint directory or shipped model (digits, shapes)")
    parser.add_argument("--steps", default="5,10,20,50,100,250,1000")
    parser.add_argument("--solver-steps", default="5,10,20,50", help="DPM-Solver++ step counts (default 5,10,20,50)")
    parser.add_argument("--ddpm-steps", default="1000", help="DDPM step counts (default 1000)")
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--backend", default="openvino", choices=("openvino", "onnxruntime", "torch"),
                        help="where the model runs, in fp32 (default openvino)")
    parser.add_argument("--threads", type=int, help="CPU threads of the backend (default: all cores; 1 beside "
                        "another job, which OpenVINO's default would slow to half)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    path = resolve_model_path(args.model)
    dataset = read_config(path).get("data", {}).get("name", args.model)
    judge = ClassifierJudge.train(dataset, image_size=16)
    model = load_model(str(path), backend=args.backend, precision="fp32", threads=args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    plan = {name: [int(s) for s in text.split(",")]
            for name, text in (("ddim", args.steps), ("dpmsolver", args.solver_steps), ("ddpm", args.ddpm_steps))}
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "clipping.json"
    result = {"benchmark": "clipping", "model": str(path), "dataset": dataset, "num": args.num,
              "backend": args.backend, "dynamic": DYNAMIC, "environment": environment(), "rows": []}
    if raw.is_file():  # an earlier run of the same measurement: keep its rows, add what is missing (settings, seeds)
        earlier = json.loads(raw.read_text())
        if all(earlier.get(k) == result[k] for k in ("model", "num", "backend", "dynamic")):
            result["rows"] = earlier["rows"]
    rows = result["rows"]
    for name in SAMPLERS:
        for rule in RULES_OF[name]:
            for steps in plan[name]:
                row = next((r for r in rows if (r["sampler"], r["rule"], r["steps"]) == (name, rule, steps)), None)
                if row is None:
                    row = {"sampler": name, "rule": rule, "steps": steps, "seeds": [], "fid": [], "recognised": [],
                           "seconds": []}
                    rows.append(row)
                for seed in seeds:
                    if seed in row["seeds"]:
                        continue
                    start = time.perf_counter()
                    score = judge.scores(sample(rule, name, steps, model, args.num, seed))
                    for key, value in (("seeds", seed), ("fid", score["fid"]), ("recognised", score["recognised"]),
                                       ("seconds", time.perf_counter() - start)):
                        row[key].append(value)
                    print(f"{name:9s} {rule:8s} {steps:5d} steps, seed {seed}: FID {score['fid']:7.2f}", flush=True)
                    tmp = raw.with_suffix(".tmp")
                    tmp.write_text(json.dumps(result, indent=1))
                    tmp.replace(raw)

    def fids(name, rule, steps):  # this command's seeds only
        row = next(r for r in rows if (r["sampler"], r["rule"], r["steps"]) == (name, rule, steps))
        return [row["fid"][row["seeds"].index(seed)] for seed in seeds]

    verdict = {f"{name}/{rule}": never_worse([(steps, fids(name, rule, steps)) for steps in sorted(plan[name])])
               for name in SAMPLERS for rule in RULES_OF[name]}
    result["never_worse"] = verdict
    tmp = raw.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(raw)
    lines = [f"# x̂₀ clipping on {args.model} ({args.num} samples, seeds {args.seeds})", "",
             "FID, the mean over the seeds ± half their range." if len(seeds) > 1 else "FID, one seed.", "",
             "| sampler | steps | " + " | ".join(f"FID {rule}" for rule in RULES) + " |",
             "| --- | --- | " + " | ".join("---" for _ in RULES) + " |"]
    for name in SAMPLERS:
        for steps in plan[name]:
            cells = []
            for rule in RULES:
                if rule not in RULES_OF[name]:
                    cells.append("—")
                    continue
                fid = fids(name, rule, steps)
                cells.append(f"{np.mean(fid):.2f}" + (f" ± {(max(fid) - min(fid)) / 2:.2f}" if len(fid) > 1 else ""))
            lines.append(f"| {name} | {steps} | " + " | ".join(cells) + " |")
    lines += ["", "More steps never worse (within the seed spread): " +
              ", ".join(f"{k} {'yes' if v else 'no' if v is False else 'needs two seeds'}" for k, v in verdict.items())]
    (args.out / "clipping.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
