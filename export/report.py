"""`ddpmrt report`: latency against quality for each sampler and step count, fully offline.

For every sampler configuration: milliseconds per image on the chosen backend, then
- learned quality (a `digits` model): FID and KID in a digit classifier's feature space, the
  share of samples the classifier recognises, with the real-versus-real floor;
- exact quality: the same sampler on Gaussian data with the closed-form optimal ε exported
  to ONNX and run on the same backend, as the 2-Wasserstein distance of its samples to the data
  and to the distribution theory predicts for that sampler (which separates discretisation error
  from numerical error).

Writes report.json (with the environment), report.md, quality_vs_latency.png and sample grids.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ddpmrt.engine import DDIMSampler, DDPMSampler, load_model, make_grid, save_png, to_uint8
from ddpmrt.engine.errors import UserError
from ddpmrt.engine.gaussian import GaussianData, empirical_moments, w2_gaussian
from ddpmrt.engine.io import atomic_write
from ddpmrt.engine.profiling import environment
from ddpmrt.export.checkpoint import read_config
from ddpmrt.export.onnx_export import export_onnx
from ddpmrt.export.plots import pyplot, save_figure, write_markdown
from ddpmrt.export.sources import from_checkpoint

# (sampler, steps, eta) — the list; QUICK is what the demo runs.
FULL = [("ddim", s, 0.0) for s in (5, 10, 20, 50, 100, 250, 1000)] + \
       [("ddim", s, 1.0) for s in (20, 50, 100)] + [("ddpm", s, None) for s in (50, 250, 1000)]
QUICK = [("ddim", s, 0.0) for s in (5, 10, 20, 50)] + [("ddim", 20, 1.0), ("ddpm", 50, None)]


def label(spec) -> str:
    kind, steps, eta = spec
    return f"DDIM η={eta:g}, {steps} steps" if kind == "ddim" else f"DDPM, {steps} steps"


def make_sampler(spec, schedule, spacing: str, for_gaussian: bool = False):
    kind, steps, eta = spec
    # Images: x̂₀ clipped to [-1, 1] (ddpmrt sample's and diffusers' default); the Gaussian check
    # needs the linear, unclipped update.
    clip = None if for_gaussian else 1.0
    if kind == "ddim":
        return DDIMSampler(schedule, num_steps=steps, eta=eta, spacing=spacing, clip_sample=clip)
    return DDPMSampler(schedule, num_steps=steps, spacing=spacing, clip_sample=clip)


def _onnx_model(module, metadata, path: Path, threads: int | None):
    if not path.is_file():
        export_onnx(module, metadata, path)
    return load_model(path, backend="onnxruntime", threads=threads)


def _gaussian_model(schedule, work: Path, threads: int | None):
    import torch  # noqa: F401  (the module below is torch)

    from ddpmrt.engine import __version__
    from ddpmrt.engine.metadata import ModelMetadata
    from ddpmrt.export.quality import GaussianEpsModule

    data = GaussianData.random((2, 2, 2), schedule, seed=3)
    metadata = ModelMetadata(schedule=schedule, image_shape=data.image_shape, source="gaussian-optimal-eps",
                             model_config={"family": "gaussian-optimal-eps", "dim": data.dim}, ddpmrt_version=__version__)
    return data, _onnx_model(GaussianEpsModule(data), metadata, work / "gaussian-optimal-eps.onnx", threads)


def run_report(checkpoint: Path, out: Path, samplers=QUICK, num_samples: int = 500, gaussian_samples: int = 4096,
               spacing: str = "leading", threads: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    config = read_config(checkpoint)
    source = from_checkpoint(checkpoint, "fp32")
    model = _onnx_model(source.module, source.metadata, out / "model-fp32.onnx", threads)
    judge = None
    if config.get("data", {}).get("name") == "digits":
        from ddpmrt.export.quality import DigitJudge

        judge = DigitJudge.train()
    data, gaussian = _gaussian_model(model.schedule, out, threads)
    data_moments = (data.mean, data.cov)

    rows = []
    for spec in tqdm(samplers, desc="report", disable=not progress):
        sampler = make_sampler(spec, model.schedule, spacing)
        start = time.perf_counter()
        images = sampler.sample(model, (num_samples, *model.image_shape), seed=seed, progress=False)
        elapsed = time.perf_counter() - start
        name = label(spec)
        grid = out / "samples" / (name.replace(" ", "").replace(",", "_").replace("η=", "eta") + ".png")
        save_png(make_grid(to_uint8(images[:64]), ncols=8), grid, scale=max(1, 128 // model.image_shape[-1]))
        row = {"sampler": spec[0], "steps": spec[1], "eta": spec[2], "label": name, "spacing": spacing,
               "ms_per_image": 1e3 * elapsed / num_samples, "num_samples": num_samples,
               "grid": str(grid.relative_to(out))}
        if judge is not None:
            row.update(judge.scores(images))
        g_sampler = make_sampler(spec, model.schedule, spacing, for_gaussian=True)
        g_samples = g_sampler.sample(gaussian, (gaussian_samples, *data.image_shape), seed=seed, progress=False)
        measured = empirical_moments(g_samples)
        theory = data.predicted_moments(g_sampler)
        row["gaussian_w2_to_data"] = w2_gaussian(*measured, *data_moments)
        row["gaussian_w2_theory_to_data"] = w2_gaussian(*theory, *data_moments)
        row["gaussian_w2_to_theory"] = w2_gaussian(*measured, *theory)
        rows.append(row)

    report = {"model": {"source": str(checkpoint), "config": config["model"], "image_shape": config["image_shape"]},
              "backend": f"{model.backend} ({model.device})", "num_samples": num_samples,
              "gaussian": {"dim": data.dim, "samples": gaussian_samples,
                           "sampling_error_floor": (data.dim / gaussian_samples) ** 0.5},
              "rows": rows, "environment": environment(threads)}
    if judge is not None:
        report["judge"] = {"kind": "MLP digit classifier (sklearn), hidden-layer features", "test_accuracy": judge.test_accuracy,
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
        lines += [f"FID/KID: features of a digit classifier trained on the real training split (test accuracy "
                  f"{judge['test_accuracy']:.3f}); real-vs-real floor FID {floor['fid']:.2f}, KID {floor['kid']:.4f}.", ""]
    lines += ["Gaussian W2: samples of the same sampler with the exact optimal ε on Gaussian data "
              f"({report['gaussian']['dim']} dims, {report['gaussian']['samples']} samples); theory = the exact output "
              "distribution of that sampler. Differences below about √(dim/n) = "
              f"{(report['gaussian']['dim'] / report['gaussian']['samples']) ** 0.5:.3f} are the sampling noise of n samples.",
              "Latency: one timed run of all samples as one batch (ms/image = total / n).", "",
              "| sampler | ms/image | FID | KID | recognised | Gaussian W2 to data (theory) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        learned = (f"{r['fid']:.2f} | {r['kid']:.4f} | {r['recognised']:.1%}" if "fid" in r else "– | – | –")
        lines.append(f"| {r['label']} | {r['ms_per_image']:.2f} | {learned} | "
                     f"{r['gaussian_w2_to_data']:.3f} ({r['gaussian_w2_theory_to_data']:.3f}) |")
    lines += ["", "![quality against latency](quality_vs_latency.png)", ""]
    write_markdown(out / "report.md", lines)
    _plot(report, out / "quality_vs_latency.png")


def _plot(report: dict, path: Path) -> None:
    plt = pyplot()

    rows = report["rows"]
    learned = "fid" in rows[0]
    fig, axes = plt.subplots(1, 2 if learned else 1, figsize=(11 if learned else 6, 4), squeeze=False)
    panels = ([("fid", "FID (digit-classifier features)")] if learned else []) + [("gaussian_w2_to_data", "Gaussian W2 to data")]
    for ax, (key, title) in zip(axes[0], panels):
        for family in dict.fromkeys((r["sampler"], r["eta"]) for r in rows):
            sel = sorted((r for r in rows if (r["sampler"], r["eta"]) == family), key=lambda r: r["ms_per_image"])
            name = f"DDIM η={family[1]:g}" if family[0] == "ddim" else "DDPM"
            ax.plot([r["ms_per_image"] for r in sel], [r[key] for r in sel], "o-", label=name)
            for r in sel:
                ax.annotate(str(r["steps"]), (r["ms_per_image"], r[key]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"ms per image ({report['backend']})")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def parse_samplers(text: str):
    """`quick`, `full`, or a list like ddim:20,ddim:50:1,ddpm:1000."""
    if text in ("quick", "full"):
        return QUICK if text == "quick" else FULL
    specs = []
    for item in text.split(","):
        parts = item.split(":")
        try:
            if parts[0] == "ddim" and len(parts) in (2, 3):
                specs.append(("ddim", int(parts[1]), float(parts[2]) if len(parts) == 3 else 0.0))
                continue
            if parts[0] == "ddpm" and len(parts) == 2:
                specs.append(("ddpm", int(parts[1]), None))
                continue
        except ValueError:
            pass
        raise UserError(f"--samplers item {item!r} not understood; use quick, full, or e.g. ddim:20,ddim:50:1,ddpm:1000")
    return specs
