"""`ddpmrt report`: latency against quality for each sampler and step count, fully offline.

For every sampler configuration: milliseconds per image on the chosen backend, then
- learned quality (a model trained on `digits` or `shapes`): FID and KID in the feature space
  of a classifier of that data set, the share of samples it recognises, with the
  real-versus-real floor;
- exact quality: the same sampler on Gaussian data with the closed-form optimal ε exported
  to ONNX and run on the same backend, as the 2-Wasserstein distance of its samples to the data
  and to the distribution theory predicts for that sampler (which separates discretisation error
  from numerical error).

Writes report.json (with the environment), report.md (with every sample grid), quality_vs_calls.png
(quality against network calls per image) and the sample grids.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ddpmrt.engine import make_grid, save_png, to_uint8
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.gaussian import empirical_moments, w2_gaussian
from ddpmrt.engine.profiling import environment
from ddpmrt.engine.sampler_factory import SamplerSpec, parse_specs
from ddpmrt.engine.samplers import DEFAULT_SPACING
from ddpmrt.export.evaluation.plots import pyplot, save_figure, write_markdown
from ddpmrt.export.evaluation.quality import ClassifierJudge
from ddpmrt.export.evaluation.report_models import (
    ReportModels,
    batch_within,
    file_metadata,
    judged_dataset,
    report_backend,
    sample_all,
    weights_source,
)

# SOLVERS compares the multistep solvers at few network calls with DDIM at more; FULL adds the
# stochastic samplers and long runs; QUICK is what the demo runs.  Each is a list of sampler specs
# (sampler_factory.parse_specs: NAME:STEPS[:VALUE...][:KEY=VALUE...]).
SOLVERS = parse_specs(",".join([f"ddim:{s}" for s in (10, 25, 50, 100)]
                               + [f"{kind}:{s}:{order}" for kind in ("dpmsolver", "unipc") for order in (2, 3)
                                  for s in (5, 8, 10, 15, 20)]
                               + [f"unipc:{s}:3:bh1" for s in (5, 8, 10, 15, 20)]
                               + [f"ipndm:{s}:{order}" for order in (3, 4) for s in (5, 8, 10, 15, 20)]))
FULL = parse_specs(",".join([f"ddim:{s}" for s in (5, 10, 20, 50, 100, 250, 1000)] + [f"ddim:{s}:1" for s in (20, 50, 100)]
                            + [f"ddpm:{s}" for s in (50, 250, 1000)]
                            + [f"{kind}:{s}:{order}" for kind in ("dpmsolver", "unipc") for order in (2, 3)
                               for s in (5, 10, 20)]))
QUICK = parse_specs("ddim:5,ddim:10,ddim:20,ddim:50,ddim:20:1,ddpm:50,unipc:10:2")
SETS = {"quick": QUICK, "full": FULL, "solvers": SOLVERS}


def report_sampler(spec: SamplerSpec, schedule, spacing: str, for_gaussian: bool = False, tuned=None):
    """The sampler of one report row, from make_sampler (the factory and defaults of `ddpmrt sample`).

    Images: x̂₀ clipped to [-1, 1] (the default); the Gaussian check needs the linear, unclipped update.
    A spec with its own timesteps or spacing (dpmsolver:5:3:spacing=tuned) ignores the report's spacing; `tuned` is the model's table for spacing
    "tuned" (the Gaussian check then runs the U-Net's tuned timesteps: what they cost or buy there)."""
    options = dict(spec.options)
    own = options.get("timesteps") is not None
    spacing = None if own else options.get("spacing", spacing)  # a spec's own spacing (spacing=tuned) wins
    sampler = spec.make(schedule, tuned=tuned, spacing=spacing)
    if not for_gaussian:
        return sampler
    return spec.make(schedule, spacing=None, timesteps=list(sampler.timesteps), clip_sample=0.0) if spacing == "tuned" \
        else spec.make(schedule, spacing=spacing, clip_sample=0.0)


def _file_stem(label: str) -> str:
    """A row's label as a portable ASCII file name: "DDIM η=0 clip ±1, 10 steps" -> "DDIMeta0clip1_10steps"."""
    text = label.replace(",", "_").replace("η", "eta").replace("++", "pp").replace(".", "p")
    return "".join(c for c in text if c.isascii() and (c.isalnum() or c in "_-"))


PLOT = "quality_vs_calls.png"


def best_spacing(rows: list[dict], key: str) -> str | None:
    """The spacing with the lowest mean rank of `key` over the sampler settings measured with each spacing."""
    spacings = list(dict.fromkeys(r["spacing"] for r in rows))
    if len(spacings) < 2:
        return spacings[0] if spacings else None
    ranks = {s: [] for s in spacings}
    def setting_of(r):  # everything but the spacing (rows of older reports carry param or eta, not family)
        return r["sampler"], r["steps"], r.get("family", r.get("param", r.get("eta"))), r.get("variant"), r.get("seed", 0)

    for setting in {setting_of(r) for r in rows}:
        group = [r for r in rows if setting_of(r) == setting]
        if len(group) != len(spacings):
            continue  # measured once: T steps, where every spacing is the same
        for rank, r in enumerate(sorted(group, key=lambda r: r[key])):
            ranks[r["spacing"]].append(rank)
    return min(spacings, key=lambda s: (sum(ranks[s]) / max(1, len(ranks[s])), spacings.index(s)))


def run_report(model: Path, out: Path, samplers=QUICK, num_samples: int = 500, gaussian_samples: int = 4096,
               spacings=(DEFAULT_SPACING,), backend: str | None = None, device: str = "cpu",
               threads: int | None = None, seed: int = 0, progress: bool = True, seeds=None,
               precision: str | None = None, name: str | None = None, dataset: str | None = None,
               files: dict[str, str] | None = None) -> dict:
    """Every sampler of `samplers` at every spacing and seed (`seeds`, default just `seed`): its latency,
    its quality on the model's data set, and its exact quality on Gaussian data.

    `model`: a checkpoint or diffusers folder, or a model file run as it is (report_models.py); `dataset`
    names the data set to judge on where the model's metadata does not (or "none"); `files`: what other files in
    `out` are (name -> a line), listed in report.md with those the report writes."""
    from tqdm.auto import tqdm

    from ddpmrt.engine.artifacts.schedules import TunedSchedules

    model = Path(model)
    name = name or str(model)
    source = weights_source(model) if model.is_dir() else None
    metadata = source.metadata if source is not None else file_metadata(model)
    backend = report_backend(model, backend, weights=source is not None)
    dataset = judged_dataset(metadata, dataset, name)
    tuned = TunedSchedules(model, name)
    for spec in samplers:  # every setting checked (order against steps, spacing, a tuned entry) before any work
        for spacing in spacings:
            report_sampler(spec, metadata.schedule, spacing, tuned=tuned)
    out.mkdir(parents=True, exist_ok=True)
    models = ReportModels(model, metadata, out, backend, device, threads, num_samples, gaussian_samples, precision,
                          source)
    judge = ClassifierJudge.train(dataset, image_size=metadata.image_shape[-1]) if dataset else None
    unet, gaussian, data = models.unet, models.gaussian, models.data
    data_moments = (data.mean, data.cov)
    T = metadata.schedule.num_train_timesteps
    # With T steps every spacing gives the same timesteps: measure those once.
    seeds = list(seeds or [seed])
    runs = [(spec, spacing, s) for s in seeds for spec in samplers for spacing in spacings
            if (spec.steps or T) < T or spacing == spacings[0]]

    rows = []
    for spec, spacing, seed in tqdm(runs, desc="report", disable=not progress):
        sampler = report_sampler(spec, metadata.schedule, spacing, tuned=tuned)
        images = sample_all(sampler, unet, num_samples, seed)
        latency = _latency(sampler, unet, batch_within(unet, min(num_samples, LATENCY_BATCH)), seed)
        label = spec.label + (f", {spacing}" if len(spacings) > 1 else "")
        stem = _file_stem(label)
        grid = out / "samples" / (stem + (f"_seed{seed}" if len(seeds) > 1 else "") + ".png")
        save_png(make_grid(to_uint8(images[:64]), ncols=8), grid, scale=max(1, 128 // metadata.image_shape[-1]))
        row = {"sampler": spec.name, "steps": sampler.num_steps, "options": dict(sampler.config, sampler=None),
               "family": spec.family, "network_calls": sampler.num_steps, "seed": seed, "label": label,
               "spacing": _row_spacing(spec, spacing, sampler),
               **latency, "num_samples": num_samples,
               "grid": str(grid.relative_to(out))}
        if judge is not None:
            row.update(judge.scores(images))
        g_sampler = report_sampler(spec, metadata.schedule, spacing, for_gaussian=True, tuned=tuned)
        g_samples = g_sampler.sample(gaussian, (gaussian_samples, *data.image_shape), seed=seed, progress=False)
        measured = empirical_moments(g_samples)
        theory = data.predicted_moments(g_sampler)
        row["gaussian_w2_to_data"] = w2_gaussian(*measured, *data_moments)
        row["gaussian_w2_theory_to_data"] = w2_gaussian(*theory, *data_moments)
        row["gaussian_w2_to_theory"] = w2_gaussian(*measured, *theory)
        rows.append(row)

    report = {"model": {"source": str(model), "config": metadata.model_config,
                        "image_shape": list(metadata.image_shape), "dataset": metadata.dataset or None},
              "backend": models.description, "num_samples": num_samples, "spacings": list(spacings),
              "gaussian": {"dim": data.dim, "samples": gaussian_samples,
                           "sampling_error_floor": (data.dim / gaussian_samples) ** 0.5},
              "seeds": seeds, "rows": rows, "files": {**(files or {}), **models.built},
              "environment": environment(threads)}
    if len(spacings) > 1:
        report["best_spacing"] = {"by_fid": best_spacing(rows, "fid") if judge else None,
                                  "by_gaussian_w2": best_spacing(rows, "gaussian_w2_to_data")}
    if judge is not None:
        report["judge"] = {"kind": judge.description, "dataset": judge.dataset, "test_accuracy": judge.test_accuracy,
                           "real_vs_real": judge.floor()}
    _write(report, out)
    return report


def _write(report: dict, out: Path) -> None:
    with atomic_write(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    env, judge = report["environment"], report.get("judge")
    lines = ["# ddpmrt report: quality against latency", "",
             f"Model {report['model']['source']} on {report['backend']}, {report['num_samples']} samples per sampler; "
             f"measured {env['date']} on {env['cpu']} ({env['cores']} cores)"
             + (f", GPU {env['gpu']['name']}" if env.get("gpu") else ", no GPU") + ".", ""]
    if judge:
        floor = judge["real_vs_real"]
        lines += [f"FID/KID: features of a {judge.get('dataset', 'digits')} classifier trained on the real training split (test accuracy "
                  f"{judge['test_accuracy']:.3f}); real-vs-real floor FID {floor['fid']:.2f}, KID {floor['kid']:.4f}. "
                  "Recognised: the share of samples the classifier assigns to one class with probability above 0.5. "
                  f"FID depends on the sample count ({report['num_samples']} here): compare FIDs of reports with the same "
                  "count only.", ""]
    lines += ["Gaussian W2: samples of the same sampler with the exact optimal ε on Gaussian data "
              f"({report['gaussian']['dim']} dims, {report['gaussian']['samples']} samples); theory = the exact output "
              "distribution of that sampler. Differences below about √(dim/n) = "
              f"{(report['gaussian']['dim'] / report['gaussian']['samples']) ** 0.5:.3f} are the sampling noise of n samples.",
              f"Latency: ms per image at batch {LATENCY_BATCH} (or the sample count, if smaller), the median of "
              f"{LATENCY_RUNS} timed runs after an untimed one, ± half their range.", ""]
    if report.get("best_spacing"):
        best = report["best_spacing"]
        lines += [f"Timestep spacings compared: {', '.join(report['spacings'])}. Best (lowest mean rank over the "
                  f"settings measured with each): by FID {best['by_fid'] or '–'}, by Gaussian W2 {best['by_gaussian_w2']}.",
                  ""]
    seeds = report.get("seeds", [0])
    if len(seeds) > 1:
        lines += [f"Seeds {', '.join(map(str, seeds))}: each cell is the mean ± half the range over the seeds.", ""]
    lines += ["| sampler | network calls | ms/image | FID | KID | recognised | Gaussian W2 to data (theory) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for group in _by_setting(report["rows"]):
        first = group[0]
        learned = (f"{_cell(group, 'fid', '.2f')} | {_cell(group, 'kid', '.4f')} | {_cell(group, 'recognised', '.1%')}"
                   if "fid" in first else "– | – | –")
        spread = f" ± {first['ms_per_image_spread']:.2f}" if len(group) == 1 and "ms_per_image_spread" in first else ""
        lines.append(f"| {first['label']} | {first['steps']} | {_cell(group, 'ms_per_image', '.2f')}{spread} | {learned} | "
                     f"{_cell(group, 'gaussian_w2_to_data', '.3f')} ({first['gaussian_w2_theory_to_data']:.3f}) |")
    lines += ["", f"![quality against network calls]({PLOT})", "",
              "## Sample grids", "",
              "The first 64 images of each row (seed " + ", ".join(map(str, seeds)) + "; click for full size).", "",
              "| sampler | images |", "| --- | --- |"]
    for group in _by_setting(report["rows"]):
        for r in group:
            seed = f" (seed {r['seed']})" if len(seeds) > 1 else ""
            lines.append(f"| {r['label']}{seed} | [<img src=\"{r['grid']}\" width=\"160\">]({r['grid']}) |")
    lines.append("")
    if report.get("files"):
        lines += ["## Files", "", "What else is in this folder, besides report.json, this page, the plot and samples/.", "",
                  "| file | what it is |", "| --- | --- |",
                  *(f"| [{name}]({name}) | {what} |" for name, what in report["files"].items()), ""]
    write_markdown(out / "report.md", lines)
    _plot(report, out / PLOT)


LATENCY_BATCH, LATENCY_RUNS = 16, 3


def _latency(sampler, model, batch: int, seed: int) -> dict:
    """ms per image: the median of LATENCY_RUNS timed runs at `batch` after one untimed run at that batch
    (a static-shape backend compiles there), with half the range as the spread."""
    shape = (batch, *model.image_shape)
    sampler.sample(model, shape, seed=seed, progress=False)
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        sampler.sample(model, shape, seed=seed, progress=False)
        times.append(1e3 * (time.perf_counter() - start) / batch)
    times.sort()
    return {"ms_per_image": times[len(times) // 2], "ms_per_image_spread": (times[-1] - times[0]) / 2,
            "latency_batch": batch, "latency_runs": LATENCY_RUNS}


def _row_spacing(spec: SamplerSpec, spacing: str, sampler) -> str:
    """Where a row's steps went: the report's spacing, the spec's own (tuned), or its explicit timesteps."""
    own = dict(spec.options).get("spacing", spacing)
    return own if sampler.spacing is not None or own == "tuned" else "timesteps"


def _by_setting(rows: list) -> list[list]:
    """Rows grouped by everything but the seed, in the order first measured."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["label"], r["spacing"]), []).append(r)
    return list(groups.values())


def _cell(group: list, key: str, fmt: str) -> str:
    """One value, or the mean ± half the range of several seeds' values."""
    values = [r[key] for r in group]
    mean = sum(values) / len(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format((max(values) - min(values)) / 2, fmt)}"


def _plot(report: dict, path: Path) -> None:
    plt = pyplot()

    rows = report["rows"]
    learned = "fid" in rows[0]
    fig, axes = plt.subplots(1, 2 if learned else 1, figsize=(13 if learned else 8, 4), squeeze=False)
    dataset = report.get("judge", {}).get("dataset", "digits")
    panels = ([("fid", f"FID ({dataset}-classifier features)")] if learned else []) + [("gaussian_w2_to_data", "Gaussian W2 to data")]
    # Quality against network calls, one line per sampler family (per spacing where several were
    # compared); a seed's spread is the error bar: how many calls each sampler needs, at a glance.
    several = len({r["spacing"] for r in rows}) > 1
    groups = _by_setting(rows)
    for ax, (key, title) in zip(axes[0], panels):
        for line in dict.fromkeys((g[0].get("family") or g[0]["label"].rsplit(",", 1)[0], g[0]["spacing"]) for g in groups):
            sel = sorted((g for g in groups if (g[0].get("family") or g[0]["label"].rsplit(",", 1)[0], g[0]["spacing"]) == line),
                         key=lambda g: g[0]["steps"])
            means = [sum(r[key] for r in g) / len(g) for g in sel]
            spread = [(max(r[key] for r in g) - min(r[key] for r in g)) / 2 for g in sel]
            name = line[0] + (f", {line[1]}" if several and line[1] not in line[0] else "")
            ax.errorbar([g[0]["steps"] for g in sel], means, yerr=spread, fmt="o-", capsize=2, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        calls = sorted({r["steps"] for r in rows})
        ax.set_xticks(calls, [str(c) for c in calls])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xlabel("network calls per image")
        ax.set_ylabel(title + " (lower is better)")
        # Plain numbers on the log axis (matplotlib's default writes 4.2×10⁰).
        ax.yaxis.set_major_formatter(plt.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(plt.FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
    # One legend beside the panels, where it covers no point.
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(0.8, 0.5))
    save_figure(fig, path)


def parse_samplers(text: str) -> list[SamplerSpec]:
    """`quick`, `full`, `solvers`, or sampler specs like ddim:20,ddim:50:1,ddpm:1000,dpmsolver:10:3,unipc:8:order=3
    (sampler_factory.parse_specs)."""
    return SETS[text] if text in SETS else parse_specs(text)


def with_clipping(specs: list[SamplerSpec], clips: list[float | None]) -> list[SamplerSpec]:
    """Every spec once per x̂₀ clip value of `report --clip-sample` (0: unclipped); a spec that names its own
    clip_sample keeps it and is run once.  No values: each sampler's own default, as `ddpmrt sample` runs it."""
    if not clips:
        return list(specs)
    expanded = []
    for spec in specs:
        for clip in clips:
            variant = spec.with_option("clip_sample", clip)
            if variant not in expanded:
                expanded.append(variant)
    return expanded
