"""The GPU check's figures beside their targets, from the raw results gpu_check.sh left in OUTDIR.

    python benchmarks/gpu_check_summary.py OUTDIR                  # OUTDIR/summary.json and summary.md
    python benchmarks/gpu_check_summary.py OUTDIR --readme benchmarks/results/README.md
                                                                   # and the table between the README's markers

A figure whose part did not run (or ran out of time) is "not measured", never a guess; a part's
failure is listed with its log.  Targets are the GPU check issue's (and benchmarks/README.md's).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

MARKERS = ("<!-- gpu-check:begin -->", "<!-- gpu-check:end -->")
GRAPH_BACKENDS = ("torch-cuda-graph", "inductor-cuda", "tensorrt")


def _load(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _median(row: dict, key: str):
    value = row.get(key)
    return value.get("median") if isinstance(value, dict) else value


def _tests(out: Path) -> dict | None:
    xml = out / "gpu-tests.xml"
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        return counts
    log = out / "tests.log"
    if log.is_file():  # a dry run collects only: "N/M tests collected"
        match = re.search(r"(\d+)(?:/\d+)? tests? collected", log.read_text(encoding="utf-8", errors="replace"))
        if match:
            return {"collected": int(match.group(1))}
    return None


def _figure(name: str, value, target: str, ok) -> dict:
    return {"figure": name, "value": value, "target": target,
            "met": None if value is None or ok is None else bool(ok)}


def summarize(out: Path) -> dict:
    env = _load(out / "env.json") or {}
    parts = [json.loads(line) for line in (out / "parts.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "parts.jsonl").is_file() else []
    figures = []
    bench = _load(out / "bench" / "bench.json") or {}
    rows = bench.get("results", [])
    compiled = {r["batch"]: r for r in bench.get("diffusers", []) if r.get("compiled")}
    steps = rows[0]["steps"] if rows else 50
    # Batch 1 and the largest batch (256 on a GPU; a dry run's is smaller and has no target).
    for batch in (1, max([r["batch"] for r in rows] or [256])):
        ms_target = {1: 35.0, 256: 2.0}.get(batch) if steps == 50 else None
        # The GPU rows the targets are for, and whatever else ran (a dry run's CPU rows).
        for backend in dict.fromkeys(["inductor-cuda", "torch-cuda-graph", *(r["backend"] for r in rows)]):
            row = next((r for r in rows if r["backend"] == backend and r["batch"] == batch), None)
            ms = _median(row, "ms_per_image") if row else None
            figures.append(_figure(f"{backend} DDIM-{steps} ms/image, batch {batch}", ms,
                                   f"<= {ms_target}" if ms_target else "reported",
                                   ms is not None and ms <= ms_target if ms_target else None))
            ratio = row.get("speedup_vs_diffusers_compiled") if row else None
            figures.append(_figure(f"{backend} vs diffusers + torch.compile, batch {batch}", ratio, ">= 1.5x",
                                   ratio is not None and ratio >= 1.5))
            host = _median(row, "host_ms_per_step") if row and backend in GRAPH_BACKENDS else None
            figures.append(_figure(f"{backend} host µs per step (graph launch), batch {batch}",
                                   None if host is None else 1000 * host, "<= 10", host is not None and host <= 0.010))
            figures.append(_figure(f"{backend} TFLOP/s, batch {batch}", row.get("tflops") if row else None,
                                   "reported", None))
        base = compiled.get(batch)
        figures.append(_figure(f"diffusers + torch.compile ms/image, batch {batch}",
                               _median(base, "ms_per_image") if base else None, "reported", None))
    kernels = _load(out / "gpu-kernels.json") or {}
    worst = kernels.get("accuracy_fp32_worst")
    figures.append(_figure("fused update: worst abs(kernel - NumPy), fp32", worst, "<= 1e-5",
                           worst is not None and worst <= 1e-5))
    band = kernels.get("bandwidth") or {}
    for noise in ("with", "without"):
        fraction = band.get(f"fraction_of_copy_{noise}_noise")
        figures.append(_figure(f"fused update {noise} noise, fraction of copy bandwidth", fraction,
                               ">= 0.8" if noise == "with" else "reported",
                               fraction is not None and fraction >= 0.8 if noise == "with" else None))
    ddim = _load(out / "solvers-ddim" / "bench.json") or {}
    ddim_ms = next((_median(r, "ms_per_image") for r in ddim.get("results", [])), None)
    for solver in ("dpmsolver", "unipc"):
        report = _load(out / f"solvers-{solver}" / "bench.json") or {}
        ms = next((_median(r, "ms_per_image") for r in report.get("results", [])), None)
        ratio = ms / ddim_ms if ms and ddim_ms else None
        figures.append(_figure(f"{solver} time per image / DDIM's, same calls", ratio, "<= 1.03",
                               ratio is not None and ratio <= 1.03))
    package = _load(out / "package" / "bench.json") or {}
    warm_s = next((r.get("warm_start_s") for r in package.get("startup", [])), None)
    figures.append(_figure("AOTInductor .pt2: a fresh process's first image, warm (s)", warm_s, "<= 10",
                           warm_s is not None and warm_s <= 10))
    return {"environment": {k: env.get(k) for k in ("date", "gpu", "nvidia_smi", "torch", "diffusers", "triton",
                                                     "cuda_bindings", "onnxruntime", "commit", "python")},
            "dry_run": any(p.get("dry_run") for p in parts), "parts": parts, "tests": _tests(out),
            "figures": figures}


def _shown(value) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown(summary: dict) -> str:
    env = summary["environment"]
    gpu = env.get("gpu") or {}
    lines = [f"GPU check{' (DRY RUN on the CPU: no figure here is a GPU measurement)' if summary['dry_run'] else ''}: "
             f"{gpu.get('name', 'no GPU')}, driver {env.get('nvidia_smi') or gpu.get('driver') or '-'}, "
             f"torch {env.get('torch')}, diffusers {env.get('diffusers')}, commit {str(env.get('commit'))[:10]}, "
             f"{env.get('date')}", "",
             "| figure | value | target | met |", "| --- | --- | --- | --- |"]
    for f in summary["figures"]:
        met = {True: "yes", False: "**no**", None: "-"}[f["met"]]
        lines.append(f"| {f['figure']} | {_shown(f['value'])} | {f['target']} | {met} |")
    tests = summary["tests"]
    lines += ["", f"GPU tests: {json.dumps(tests) if tests else 'not run'}", "",
              "| part | exit | seconds | note |", "| --- | --- | --- | --- |"]
    for p in summary["parts"]:
        note = p.get("skipped") or ("ran out of its time" if p.get("timed_out") else "")
        lines.append(f"| {p['part']} | {p.get('rc', '-')} | {p.get('seconds', '-')} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder gpu_check.sh wrote")
    parser.add_argument("--readme", type=Path, help=f"a Markdown file whose table between {MARKERS[0]} and "
                                                     f"{MARKERS[1]} is replaced by this run's")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        print(f"gpu_check_summary: {args.out} is not a folder; give the OUTDIR of gpu_check.sh", file=sys.stderr)
        return 2
    summary = summarize(args.out)
    text = markdown(summary)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (args.out / "summary.md").write_text(text, encoding="utf-8")
    if args.readme:
        readme = args.readme.read_text(encoding="utf-8")
        begin, end = readme.find(MARKERS[0]), readme.find(MARKERS[1])
        if begin < 0 or end < begin:
            print(f"gpu_check_summary: {args.readme} has no {MARKERS[0]} ... {MARKERS[1]} block", file=sys.stderr)
            return 2
        args.readme.write_text(readme[:begin + len(MARKERS[0])] + "\n" + text + readme[end:], encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
