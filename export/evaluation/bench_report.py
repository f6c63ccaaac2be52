"""`ddpmrt bench`'s report: bench.json, bench.md (one table of every row, start-up, CUDA graphs) and
bench.png, from the report dictionary bench.run_bench builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.export.evaluation.plots import pyplot, save_figure, write_markdown


def _cell(value, fmt: str, none: str = "") -> str:
    return none if value is None else format(value, fmt)


def _stage(row: dict, key: str, fmt: str) -> str:
    """A stage column: its median, or why there is none (the stages ran inside one CUDA graph)."""
    if row.get(key) is not None:
        return format(row[key]["median"], fmt)
    return "in graph" if "graph" in row.get("stages", "") else ""


def _flops(row: dict) -> str:
    if row.get("tflops") is None:
        return ""
    # Three significant digits: a CPU row's 0.0034 TFLOP/s is not "0.00".
    return f"{row['tflops']:.3g}" + (f" ({row['percent_of_peak']:.2g}%)" if row.get("percent_of_peak") is not None else "")


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}x" if key in row else ""


def write_report(report: dict, out: Path) -> None:
    with atomic_write(out / "bench.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    env = report["environment"]
    title = f"{report['sampler']['sampler'].upper()}-{report['sampler']['num_steps']}"
    peak = report.get("peak_tflops")
    lines = [f"# ddpmrt bench: {title}, {report['model']['config'].get('ch')}-channel U-Net "
             f"{'x'.join(map(str, report['model']['image_shape']))}", "",
             f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores, {env['threads']} threads)"
             + (f", GPU {env['gpu']['name']}" if env.get("gpu") else ", no GPU")
             + f"; torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, diffusers {env.get('diffusers')}.",
             "Medians over the runs after warm-up (spread: 25th-75th percentile of ms/image). GPU rows run the "
             "device loop: end to end by wall clock, network and update by CUDA events (a loop replayed as one CUDA "
             "graph has no separate stages: 'in graph'), host = enqueue time; 'vs diffusers' compares with diffusers' "
             "pipeline on the same device (fp32 on the CPU, fp16 on a GPU) as shipped, 'vs compiled' with its U-Net "
             "under torch.compile(mode=\"reduce-overhead\", fullgraph=True). "
             f"TFLOP/s: {report['model'].get('gflop_per_forward_per_image', 0):.2f} GFLOP per image per network call"
             + (f", % of a {peak:g} TFLOP/s dense fp16 peak" if peak else "")
             + "; CPU rows: % of the peak of the precision the row computed in, estimated from the CPU's matrix "
             f"instructions ({', '.join(env.get('cpu_matrix_instructions') or []) or 'none reported'}"
             + (f"; not detectable here: {', '.join(env['cpu_flags_not_detectable'])}" if env.get("cpu_flags_not_detectable")
                else "") + ") and clock"
             + ". RSS: the process's peak resident memory when the row finished (rows run in order, so it only grows); "
             "GPU: device memory in use after the row.", "",
             ]
    sampler = report["sampler"]
    if sampler.get("timesteps") or sampler.get("spacing") not in (None, "leading"):
        where = f"timesteps {', '.join(map(str, sampler['timesteps']))}" if sampler.get("timesteps") else \
            f"spacing {sampler['spacing']}"
        lines[-1:-1] = [f"ddpmrt's rows ran the {where}; diffusers' rows run as many steps at their leading spacing "
                        "(a step's time does not depend on its timestep)."]
    header = ["backend", "precision", "batch", "network ms/step", "update ms/step", "host ms/step", "ms/image (p25-p75)",
              "images/s", "TFLOP/s", "vs diffusers", "vs compiled", "peak RSS MB", "GPU MB"]
    table = []
    for r in report["results"]:
        ms = r["ms_per_image"]
        table.append([r["backend"], r.get("precision", ""), str(r["batch"]), _stage(r, "network_ms_per_step", ".2f"),
                      _stage(r, "update_ms_per_step", ".3f"), f"{r['host_ms_per_step']['median']:.3f}",
                      f"{ms['median']:.1f} ({ms['p25']:.1f}-{ms['p75']:.1f})", f"{r['images_per_s']['median']:.1f}",
                      _flops(r), _ratio(r, "speedup_vs_diffusers"), _ratio(r, "speedup_vs_diffusers_compiled"),
                      _cell(r.get("peak_rss_mb"), ".0f"), _cell(r.get("gpu_memory_used_mb"), ".0f")])
    for d in report["diffusers"]:
        ms = d["ms_per_image"]
        table.append([d["backend"], "fp32" if d.get("device") == "cpu" else "fp16", str(d["batch"]), "", "", "",
                      f"{ms['median']:.1f} ({ms['p25']:.1f}-{ms['p75']:.1f})", f"{d['images_per_s']['median']:.1f}",
                      _flops(d), "" if d.get("compiled") else "1.00x", "1.00x" if d.get("compiled") else "",
                      _cell(d.get("peak_rss_mb"), ".0f"), _cell(d.get("gpu_memory_used_mb"), ".0f")])
    # A column with nothing in any row (GPU MB on the CPU, 'vs compiled' without a compiled pipeline) is left out.
    kept = [i for i in range(len(header)) if any(row[i] for row in table)]
    lines += ["| " + " | ".join(header[i] for i in kept) + " |", "| " + " | ".join("---" for _ in kept) + " |"]
    lines += ["| " + " | ".join(row[i] for i in kept) + " |" for row in table]
    compiled = [d for d in report["diffusers"] if d.get("compiled")]
    if report.get("startup") or compiled:
        lines += ["", "Start-up: seconds from a fresh process to its first image (batch 1); cold with an empty "
                  "Inductor cache, warm with the cache a first process left. An inductor package is built once "
                  "ahead of time (build s: `export-engine --flavour inductor`), then every process loads the "
                  "`.pt2` (cold: the first after the build). diffusers-compiled: its first pipeline call in this "
                  "process (compilation and CUDA-graph recording).", "",
                  "| backend | build s | cold start s | warm start s | first call s |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['backend']} | {_cell(r.get('build_s'), '.1f')} | {r['cold_start_s']:.1f} | "
                  f"{r['warm_start_s']:.1f} | |" for r in report.get("startup", [])]
        lines += [f"| {d['backend']} (batch {d['batch']}) | | | | {_cell(d.get('first_run_s'), '.1f')} |"
                  for d in compiled]
    graphed = [r for r in report["results"] if r.get("graph")]
    if graphed:
        lines += ["", "CUDA graphs replayed (one per batch and step count): what each holds, and the host's time in "
                  "one launch.", "", "| backend | batch | nodes | by type | one chain | host ms per launch |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['backend']} | {r['batch']} | {r['graph']['nodes']} | "
                  + ", ".join(f"{k} {v}" for k, v in r["graph"]["types"].items())
                  + f" | {({True: 'yes', False: 'no'}).get(r['graph']['straight_line'], '?')} | "
                  f"{r['host_ms_per_step']['median'] * r['steps']:.3f} |" for r in graphed]
    if report["unavailable"]:
        lines += ["", "Not measured here:", ""] + [f"- {k}: {v}" for k, v in report["unavailable"].items()]
    lines += ["", "![time per image](bench.png)", ""]
    write_markdown(out / "bench.md", lines)
    _plot(report, out / "bench.png")


def _plot(report: dict, path: Path) -> None:
    plt = pyplot()

    rows = report["results"] + report["diffusers"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        values = [next((r["ms_per_image"]["median"] for r in rows if r["backend"] == backend and r["batch"] == b), np.nan)
                  for b in batches]
        ax.bar(np.arange(len(batches)) + i * width, values, width, label=backend)
    ax.set_xticks(np.arange(len(batches)) + width * (len(backends) - 1) / 2, [f"batch {b}" for b in batches])
    values = [r["ms_per_image"]["median"] for r in rows]
    if max(values) > 20 * min(values):  # bars start at zero on a linear axis unless the range needs a log one
        ax.set_yscale("log")
    ax.set_ylabel("ms per image (median)")
    ax.set_title(f"{report['sampler']['sampler'].upper()}-{report['sampler']['num_steps']} end to end")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
