"""Tuned timesteps against the standard ones (Tuned steps issue): raw results for benchmarks/results/.

    python benchmarks/tuned_steps.py gaussian --out benchmarks/results/cpu-tuned-gaussian
    python benchmarks/tuned_steps.py model digits --out benchmarks/results/cpu-tuned-digits

gaussian: on two Gaussian data sets (the exact oracle; a linear sampler's output distribution is closed
form), DPM-Solver++(3M) tuned by engine.tuning from 32 trajectories of the oracle at 4-10 calls, beside
its own linspace spacing and DDIM-10..100; exact W2 to the data, and the tuning cost.

model: tunes the model (`ddpmrt tune`'s Tuner, on OpenVINO where installed) for DPM-Solver++(3M) and
iPNDM-3 (--solvers) at 4-10 calls, then FID and recognised share (the data set's classifier) of the tuned
and the untuned solvers and of DDIM-10..100, for two seeds; the tuning cost (network calls, seconds) is
recorded.
Writes results.json (with the environment) and results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ddpmrt.engine.errors import run_script

CALLS = (4, 5, 6, 8, 10)
DDIM_STEPS = (10, 20, 25, 50, 100)


def gaussian(out: Path) -> dict:
    from ddpmrt.engine import NoiseSchedule, make_sampler
    from ddpmrt.engine.gaussian import GaussianData, w2_gaussian
    from ddpmrt.engine.tuning import Tuner

    schedule = NoiseSchedule.linear(1000)
    sets = []
    for seed in (3, 4):
        data = GaussianData.random((2, 2, 2), schedule, seed=seed)

        def w2(sampler):
            mean, cov = data.predicted_moments(sampler)
            return w2_gaussian(mean, cov, data.mean, data.cov)

        start = time.perf_counter()
        tuner = Tuner(data, schedule, "dpmsolver", shape=(32, 2, 2, 2), order=3, clip_sample=0)
        rows = []
        for calls in CALLS:
            tuned = tuner.tune(calls)
            rows.append({"calls": calls, "timesteps": tuned.timesteps,
                         "tuned_w2": w2(make_sampler("dpmsolver", schedule, order=3, clip_sample=0, timesteps=tuned.timesteps)),
                         "linspace_w2": w2(make_sampler("dpmsolver", schedule, calls, order=3, clip_sample=0)),
                         "objective": tuned.objective, "baseline_objective": tuned.baseline})
        sets.append({"data_seed": seed, "dim": data.dim, "rows": rows,
                     "ddim_w2": {s: w2(make_sampler("ddim", schedule, s, clip_sample=0)) for s in DDIM_STEPS},
                     "tuning": {"network_calls": tuner.network_calls, "seconds": time.perf_counter() - start,
                                "trajectories": 32, "teacher": tuner.teacher_spec}})
    return {"what": "tuned_steps_gaussian", "sampler": "dpmsolver order 3, unclipped", "sets": sets,
            "mixtures": [mixture(seed) for seed in (0, 1)]}


def mixture(seed: int, n: int = 2000) -> dict:
    """The same on a Gaussian mixture: per-image RMS to a 999-step reference solve from the same noise, and the
    sliced W2 of the samples to the mixture's (whose floor, data against data, is given)."""
    from ddpmrt.engine import NoiseSchedule, make_sampler
    from ddpmrt.engine.mixture import REFERENCE, GaussianMixture, MixtureCheck, sliced_w2
    from ddpmrt.engine.tuning import Tuner

    schedule = NoiseSchedule.linear(1000)
    mix = GaussianMixture.random((2, 2, 2), schedule, seed=seed)
    measure = MixtureCheck(mix, n)

    start = time.perf_counter()
    tuner = Tuner(mix, schedule, "dpmsolver", shape=(32, 2, 2, 2), order=3, clip_sample=0)
    rows = []
    for calls in CALLS:
        tuned = tuner.tune(calls)
        rows.append({"calls": calls, "timesteps": tuned.timesteps,
                     "tuned": measure(make_sampler("dpmsolver", schedule, order=3, clip_sample=0, timesteps=tuned.timesteps)),
                     "linspace": measure(make_sampler("dpmsolver", schedule, calls, order=3, clip_sample=0))})
    return {"mixture_seed": seed, "components": len(mix.weights), "dim": mix.dim, "samples": n, "reference": REFERENCE,
            "data_floor_sliced_w2": sliced_w2(mix.sample_data(n, seed=10), measure.data), "rows": rows,
            "ddim": {s: measure(make_sampler("ddim", schedule, s, clip_sample=0)) for s in DDIM_STEPS},
            "tuning": {"network_calls": tuner.network_calls, "seconds": time.perf_counter() - start}}


# The solvers `model` tunes and measures: DPM-Solver++(3M), the issue's, and iPNDM-3, which won 23 of 40 settings on
# the Gaussian checks (results/cpu-ipndm-gaussian/).
SOLVERS = {"dpmsolver-3M": ("dpmsolver", {"order": 3}, "DPM-Solver++(3M)"), "ipndm-3": ("ipndm", {"order": 3}, "iPNDM-3")}


def model_run(name: str, samples: int, seeds: list[int], solvers: list[str], clip_sample: float | None = None,
              threads: int | None = None) -> dict:
    """Tuned against linspace and DDIM on a model's classifier FID; clip_sample None: the commands' default, 0: off."""
    from ddpmrt.engine import load_model, make_sampler
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.engine.tuning import Tuner
    from ddpmrt.export.evaluation.quality import ClassifierJudge
    from ddpmrt.export.model.checkpoint import read_config

    path = resolve_model_path(name)
    config = read_config(path)
    model = load_model(path, threads=threads)
    clip = {"clip_sample": clip_sample}      # every setting and the tuning's teacher clip alike
    settings = [("DDIM", s, make_sampler("ddim", model.schedule, s, **clip)) for s in DDIM_STEPS]
    tuning, tuned = {}, {}
    for solver in solvers:
        kind, options, label = SOLVERS[solver]
        options = {**options, **clip}
        start = time.perf_counter()
        tuner = Tuner(model, model.schedule, kind, shape=(32, *model.image_shape), seed=0, **options)
        tuned[solver] = {calls: tuner.tune(calls) for calls in CALLS}
        tuning[solver] = {"network_calls": tuner.network_calls, "seconds": time.perf_counter() - start,
                          "trajectories": 32, "teacher": tuner.teacher_spec,
                          "backend": f"{model.backend} {getattr(model, 'precision', '')}"}
        settings += [(f"{label} linspace", c, make_sampler(kind, model.schedule, c, **options)) for c in CALLS]
        settings += [(f"{label} tuned", c, make_sampler(kind, model.schedule, timesteps=tuned[solver][c].timesteps,
                                                        **options)) for c in CALLS]
    judge = ClassifierJudge.train(config["data"]["name"], image_size=config["image_shape"][-1])
    rows = []
    for label, calls, sampler in settings:
        for seed in seeds:
            images = sampler.sample(model, (samples, *model.image_shape), seed=seed, progress=False)
            rows.append({"sampler": label, "calls": calls, "seed": seed, **judge.scores(images)})
    # Every setting clips alike: as the commands do (make_sampler's command default) unless --clip-sample says.
    return {"what": "tuned_steps_model", "model": name, "samples": samples, "seeds": seeds,
            "clip_sample": settings[0][2].clip_sample, "tuning": tuning,
            "tuned": {solver: {c: t.as_dict() for c, t in by_calls.items()} for solver, by_calls in tuned.items()},
            "rows": rows, "judge": {"kind": judge.description, "real_vs_real": judge.floor()}}


def markdown(result: dict) -> list[str]:
    env = result["environment"]
    lines = [f"# {result['what']} ({env['date']}, {env['cpu']})", ""]
    if result["what"] == "tuned_steps_gaussian":
        for s in result["sets"]:
            ddim = s["ddim_w2"]
            lines += [f"Gaussian data seed {s['data_seed']} ({s['dim']} dims); DDIM W2: "
                      + ", ".join(f"{k} steps {v:.4f}" for k, v in ddim.items())
                      + f"; tuning {s['tuning']['network_calls']} oracle calls, {s['tuning']['seconds']:.1f} s", "",
                      "| calls | tuned W2 | linspace W2 | timesteps |", "| --- | --- | --- | --- |"]
            lines += [f"| {r['calls']} | {r['tuned_w2']:.4f} | {r['linspace_w2']:.4f} | {r['timesteps']} |" for r in s["rows"]]
            lines.append("")
        for m in result["mixtures"]:
            lines += [f"Gaussian mixture seed {m['mixture_seed']} ({m['components']} components, {m['dim']} dims, "
                      f"{m['samples']} samples; reference {m['reference']}; sliced-W2 floor {m['data_floor_sliced_w2']:.4f}); "
                      "DDIM RMS to the reference / sliced W2: "
                      + ", ".join(f"{k} steps {v['rms_to_reference']:.4f} / {v['sliced_w2']:.4f}" for k, v in m["ddim"].items()),
                      "", "| calls | tuned RMS / sliced W2 | linspace RMS / sliced W2 | timesteps |", "| --- | --- | --- | --- |"]
            lines += [f"| {r['calls']} | {r['tuned']['rms_to_reference']:.4f} / {r['tuned']['sliced_w2']:.4f} | "
                      f"{r['linspace']['rms_to_reference']:.4f} / {r['linspace']['sliced_w2']:.4f} | {r['timesteps']} |"
                      for r in m["rows"]]
            lines.append("")
    else:
        costs = "; ".join(f"{solver} {cost['network_calls']} network calls of {cost['trajectories']} images, "
                          f"{cost['seconds']:.1f} s ({cost['backend']})" for solver, cost in result["tuning"].items())
        lines += [f"Model {result['model']}, {result['samples']} samples per row, seeds {result['seeds']}, x̂₀ clipped "
                  f"to {result['clip_sample'] or 'nothing'}; tuning for {len(CALLS)} call counts: {costs}. "
                  f"FID floor (real vs real) {result['judge']['real_vs_real']['fid']:.2f}.", "",
                  "| sampler | calls | FID (mean ± half range) | recognised |", "| --- | --- | --- | --- |"]
        keys = list(dict.fromkeys((r["sampler"], r["calls"]) for r in result["rows"]))
        for label, calls in keys:
            group = [r for r in result["rows"] if (r["sampler"], r["calls"]) == (label, calls)]
            fids = [r["fid"] for r in group]
            rec = sum(r["recognised"] for r in group) / len(group)
            lines.append(f"| {label} | {calls} | {sum(fids) / len(fids):.2f} ± {(max(fids) - min(fids)) / 2:.2f} | {rec:.1%} |")
    return lines


def main() -> None:
    from ddpmrt.engine.artifacts.io import atomic_write
    from ddpmrt.engine.profiling import environment

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["gaussian", "model"])
    parser.add_argument("model", nargs="?", default="digits")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--solvers", default=",".join(SOLVERS), help=f"model: of {', '.join(SOLVERS)}")
    parser.add_argument("--clip-sample", type=float, help="model: clip x̂₀ to ±C in every setting and the teacher "
                                                         "(0: no clipping; default: the commands' default)")
    parser.add_argument("--threads", type=int, help="model: CPU threads of the backend (default: all cores)")
    args = parser.parse_args()
    unknown = sorted(set(args.solvers.split(",")) - set(SOLVERS))
    if unknown:
        parser.error(f"--solvers: unknown {', '.join(unknown)}; give some of {', '.join(SOLVERS)}")
    result = gaussian(args.out) if args.what == "gaussian" else \
        model_run(args.model, args.samples, [int(s) for s in args.seeds.split(",")], args.solvers.split(","),
                  args.clip_sample, args.threads)
    result["environment"] = environment(None)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out / "results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    with atomic_write(args.out / "results.md") as tmp:
        tmp.write_text("\n".join(markdown(result)) + "\n", encoding="utf-8")
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    sys.exit(run_script(main))
