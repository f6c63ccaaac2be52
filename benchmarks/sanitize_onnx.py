"""Is Polygraphy's sanitize (constant folding, shape inference) worth running before `export-engine`?

    python benchmarks/sanitize_onnx.py [--configs digits,cifar10] [--repeats 3] [--targets sm86] [--out DIR]

For each model (the shipped digits, the cifar10 U-Net with random weights), the fp16 ONNX is
exported once, then the TensorRT-RTX engine is built `--repeats` times with and without
sanitize, alternating so that both see the same machine.  Reports, per variant: the ONNX node
count before and after, the parsed network's layer count, the engine's size, and the median and
spread of the build time (sanitize's own time included).  Writes sanitize_onnx.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.backends.tensorrt_flavour import import_flavour
from ddpmrt.engine.errors import run_script
from ddpmrt.engine.profiling import environment
from ddpmrt.export.conversion.engine_build import BatchProfile, build_engine
from ddpmrt.export.conversion.onnx_export import export_onnx
from ddpmrt.export.model.checkpoint import write_random_checkpoint
from ddpmrt.export.model.sources import from_checkpoint, sha256_file


def measure(config: str, work: Path, repeats: int, targets: list[str]) -> dict:
    checkpoint = "digits" if config == "digits" else write_random_checkpoint(work / config, config)
    source = from_checkpoint(checkpoint, "fp16")
    onnx_path = work / f"{config}-fp16.onnx"
    export_onnx(source.module, source.metadata, onnx_path, check=False)
    flavour, profile = import_flavour("tensorrt-rtx"), BatchProfile(1, 8, 64)
    runs = {False: [], True: []}
    for _ in range(repeats):
        for sanitize in (False, True):
            plan = work / f"{config}-{'sanitized' if sanitize else 'plain'}.plan"
            result = build_engine(onnx_path, plan, source.metadata, sha256_file(onnx_path), flavour, profile, targets,
                                  force=True, sanitize=sanitize)
            runs[sanitize].append(result)
    row = {"config": config, "onnx_nodes": None, "variants": {}}
    for sanitize, results in runs.items():
        seconds = [r.seconds for r in results]
        sidecar = results[-1].sidecar
        row["variants"]["sanitized" if sanitize else "plain"] = {
            "build_seconds_median": round(statistics.median(seconds), 2), "build_seconds": [round(s, 2) for s in seconds],
            "network_layers": sidecar["network_layers"], "engine_bytes": sidecar["engine_bytes"],
            "sanitize": sidecar["sanitize"]}
    sanitized = row["variants"]["sanitized"]["sanitize"]
    row["onnx_nodes"] = {"before": sanitized["nodes_before"], "after": sanitized["nodes_after"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="digits,cifar10")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", default="sm86")
    parser.add_argument("--out", default="benchmarks/results/sanitize-onnx-tensorrt-rtx")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddpmrt-sanitize-") as work:
        rows = [measure(c, Path(work), args.repeats, args.targets.split(",")) for c in args.configs.split(",")]
    report = {"environment": environment(), "repeats": args.repeats, "targets": args.targets, "profile": "1:8:64",
              "results": rows}
    out = Path(args.out)
    with atomic_write(out / "sanitize_onnx.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for row in rows:
        plain, sanitized = row["variants"]["plain"], row["variants"]["sanitized"]
        print(f"{row['config']}: ONNX nodes {row['onnx_nodes']['before']} -> {row['onnx_nodes']['after']}; network layers "
              f"{plain['network_layers']} -> {sanitized['network_layers']}; engine {plain['engine_bytes']} -> "
              f"{sanitized['engine_bytes']} bytes; build {plain['build_seconds_median']} -> "
              f"{sanitized['build_seconds_median']} s (median of {args.repeats})")


if __name__ == "__main__":
    sys.exit(run_script(main))
