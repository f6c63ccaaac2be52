"""The CPU AOTInductor package's start-up: build it once, then time fresh processes to their first image.

    python benchmarks/cpu_package_start.py --precision bf16 --out benchmarks/results/cpu-package-start-<cpu>/start.json

Why: issue 20 asks for a warm start to the first image of at most 10 s on the CPU.  The JIT inductor
backend with frozen weights compiles in every new process (30-60 s for cifar10, Inductor's cache
skips frozen weights); a `.pt2` from `export-engine --flavour inductor --device cpu` is compiled
once, ahead of time, and a new process only loads it.  This builds that package for the cifar10
U-Net (random weights) in the precision asked for, as export-engine does, and measures the first
image of DDIM-`--steps` at batch 1 in two fresh processes (`bench`'s measure_startup: the first
with an empty Inductor cache, the second with what the first left, which a package does not use).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from ddpmrt.engine.errors import run_script
from ddpmrt.engine.profiling import environment
from ddpmrt.export.conversion.aot_package import build_aot_package
from ddpmrt.export.conversion.engine_build import BatchProfile
from ddpmrt.export.evaluation.bench import measure_startup
from ddpmrt.export.model.checkpoint import write_json, write_random_checkpoint
from ddpmrt.export.model.sources import from_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="cifar10", help="U-Net config, random weights (default cifar10)")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="the package's precision (default bf16)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps of the first image (default 20)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, required=True, help="the JSON report")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_random_checkpoint(Path(tmp) / args.config, args.config)
        package = Path(tmp) / "model-cpu.pt2"
        built = build_aot_package(from_checkpoint(checkpoint, "fp32"), package, "cpu", args.precision,
                                  BatchProfile(1, 1, 8))
        times = measure_startup(package, "inductor", "cpu", args.steps, args.threads)
        report = {"what": "cpu_package_start", "config": args.config, "precision": args.precision,
                  "steps": args.steps, "batch": 1, "build_s": built.sidecar["build_seconds"],
                  "package_mb": built.sidecar["package_bytes"] / 1e6, **times,
                  "target_warm_start_s": 10.0, "environment": environment(args.threads)}
    write_json(args.out, report)
    print(json.dumps({key: report[key] for key in ("precision", "build_s", "cold_start_s", "warm_start_s")}))


if __name__ == "__main__":
    sys.exit(run_script(main))
