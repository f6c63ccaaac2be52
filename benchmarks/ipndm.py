"""iPNDM against DPM-Solver++(3M) and UniPC at 4-10 calls, tuned and untuned (Tuned steps issue, item 6).

    python benchmarks/ipndm.py --out benchmarks/results/cpu-ipndm-gaussian

iPNDM (Zhang & Chen, DEIS, arXiv:2204.13902; the base solver of GITS's and AMED's best figures) is the
explicit Adams-Bashforth method on the diffusion ODE written in x̄ = x/α and σ̃ = σ/α, where it reads
dx̄/dσ̃ = ε(x, t):

    x̄_{i+1} = x̄_i + (σ̃_{i+1} − σ̃_i) · Σ_j c_j ε_{i−j}

with the constant-step coefficients of order k = min(order, i + 1) (the "improved" warm start: lower
orders while the history fills, no Runge-Kutta start):  1: (1);  2: (3, −1)/2;  3: (23, −16, 5)/12;
4: (55, −59, 37, −9)/24.  Order 1 is DDIM (η = 0) exactly (tests/test_ipndm.py).

Its step reads the ε of earlier steps, which the coefficient form's history did not hold (earlier
x̂₀ only): this script first measured it in NumPy, it won, and the form gained KEEP_EPS (the ring holds
a step's ε), so it runs here as engine.solvers.IPNDMSampler, the sampler every command takes.

On the exact Gaussian oracle (two data sets) the exact W2 of each solver's output distribution to the
data; on the Gaussian mixture (two mixtures) the per-image RMS to a 999-step reference solve from the
same noise and the sliced W2 to the mixture's samples, as benchmarks/tuned_steps.py.  Tuned:
engine.tuning's Tuner for each solver (the same teacher, 32 trajectories, dynamic programming and
coordinate descent); untuned: the multistep solvers' linspace spacing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ddpmrt.engine import NoiseSchedule, make_sampler
from ddpmrt.engine.errors import run_script
from ddpmrt.engine.tuning import Tuner

CALLS = (4, 5, 6, 8, 10)
SOLVERS = {"dpmsolver-3M": ("dpmsolver", {"order": 3}), "unipc-3": ("unipc", {"order": 3}),
           "ipndm-3": ("ipndm", {"order": 3}), "ipndm-4": ("ipndm", {"order": 4})}


def solver(name: str, schedule, calls: int | None = None, timesteps=None):
    kind, options = SOLVERS[name]
    return make_sampler(kind, schedule, calls, clip_sample=0, timesteps=timesteps, **options)


def tuner(name: str, model, schedule) -> Tuner:
    kind, options = SOLVERS[name]
    return Tuner(model, schedule, kind, shape=(32, 2, 2, 2), clip_sample=0, **options)


def gaussian_sets() -> list[dict]:
    from ddpmrt.engine.gaussian import GaussianData, w2_gaussian

    schedule = NoiseSchedule.linear(1000)
    sets = []
    for data_seed in (3, 4):
        data = GaussianData.random((2, 2, 2), schedule, seed=data_seed)

        def w2(sampler) -> float:
            return w2_gaussian(*data.predicted_moments(sampler), data.mean, data.cov)

        rows = []
        for name in SOLVERS:
            start, tuning = time.perf_counter(), tuner(name, data, schedule)
            for calls in CALLS:
                tuned = tuning.tune(calls)
                rows.append({"solver": name, "calls": calls, "untuned_w2": w2(solver(name, schedule, calls)),
                             "tuned_w2": w2(solver(name, schedule, timesteps=tuned.timesteps)),
                             "timesteps": tuned.timesteps})
            rows[-1]["tuning_seconds"] = time.perf_counter() - start
        sets.append({"data": f"gaussian seed {data_seed}", "dim": data.dim, "rows": rows,
                     "ddim_w2": {s: w2_gaussian(*data.predicted_moments(make_sampler("ddim", schedule, s, clip_sample=0)),
                                                data.mean, data.cov) for s in (10, 20, 25, 50, 100)}})
    return sets


def mixture_sets(n: int = 2000) -> list[dict]:
    from ddpmrt.engine.mixture import REFERENCE, GaussianMixture, MixtureCheck, sliced_w2

    schedule = NoiseSchedule.linear(1000)
    sets = []
    for mix_seed in (0, 1):
        mix = GaussianMixture.random((2, 2, 2), schedule, seed=mix_seed)
        measure = MixtureCheck(mix, n)

        rows = []
        for name in SOLVERS:
            tuning = tuner(name, mix, schedule)
            for calls in CALLS:
                tuned = tuning.tune(calls)
                rows.append({"solver": name, "calls": calls, "untuned": measure(solver(name, schedule, calls)),
                             "tuned": measure(solver(name, schedule, timesteps=tuned.timesteps)),
                             "timesteps": tuned.timesteps})
        ddim = {s: measure(make_sampler("ddim", schedule, s, clip_sample=0)) for s in (10, 20, 25, 50, 100)}
        sets.append({"data": f"mixture seed {mix_seed}", "rows": rows, "reference": REFERENCE, "ddim": ddim,
                     "data_floor_sliced_w2": sliced_w2(mix.sample_data(n, seed=10), measure.data)})
    return sets


def markdown(result: dict) -> list[str]:
    lines = [f"# iPNDM against DPM-Solver++(3M) and UniPC-3 ({result['date']}, {result['environment']['cpu']})", "",
             "Unclipped; untuned: the multistep solvers' linspace spacing; tuned: engine.tuning's Tuner per solver. "
             "Best of each row in bold.", ""]
    wins = {}
    for block in result["gaussian"] + result["mixtures"]:
        gaussian = "untuned_w2" in block["rows"][0]
        measure = "exact W2" if gaussian else "RMS to the reference"
        lines += [f"## {block['data']}: {measure}", "", "| calls | " + " | ".join(
            f"{s} {kind}" for kind in ("untuned", "tuned") for s in SOLVERS) + " |",
                  "| --- | " + " | ".join("---" for _ in range(2 * len(SOLVERS))) + " |"]
        for calls in CALLS:
            cells = []
            for kind in ("untuned", "tuned"):
                values = {}
                for s in SOLVERS:
                    row = next(r for r in block["rows"] if r["solver"] == s and r["calls"] == calls)
                    values[s] = row[f"{kind}_w2"] if gaussian else row[kind]["rms_to_reference"]
                best = min(values, key=values.get)
                wins.setdefault(best, []).append(f"{block['data']} {kind} {calls}")
                cells += [f"**{v:.4f}**" if s == best else f"{v:.4f}" for s, v in values.items()]
            lines.append(f"| {calls} | " + " | ".join(cells) + " |")
        ddim = block["ddim_w2"] if gaussian else {k: v["rms_to_reference"] for k, v in block["ddim"].items()}
        lines += ["", f"DDIM (η = 0, leading) {measure}: " + ", ".join(f"{k} steps {v:.4f}" for k, v in ddim.items()), ""]
    lines += ["Wins (best of the four at a call count, tuned and untuned separately):", ""]
    lines += [f"- {s}: {len(w)} of {sum(len(v) for v in wins.values())}" for s, w in sorted(wins.items())]
    return lines + [""]


def main() -> None:
    from ddpmrt.engine.artifacts.io import atomic_write
    from ddpmrt.engine.profiling import environment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    result = {"what": "ipndm", "date": time.strftime("%Y-%m-%d"), "environment": environment(),
              "gaussian": gaussian_sets(), "mixtures": mixture_sets()}
    result["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out / "results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    with atomic_write(args.out / "results.md") as tmp:
        tmp.write_text("\n".join(markdown(result)), encoding="utf-8")
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    sys.exit(run_script(main))
