"""How long `export-engine` takes for the cifar10 U-Net (random weights, fp16, batch 1:8:64).

    python benchmarks/engine_build.py [--repeats 3] [--targets sm86] [--out benchmarks/results]

Each repeat is a cold build in a fresh directory: ONNX export (with its validation), then the
TensorRT-RTX engine.  Reports medians and the spread, with the environment, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from ddpmrt.engine.errors import run_script
from ddpmrt.export.model.checkpoint import write_random_checkpoint


def environment() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch

    try:
        import tensorrt_rtx
        rtx = tensorrt_rtx.__version__
    except ImportError:
        rtx = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "tensorrt_rtx": rtx, "numpy": numpy.__version__, "threads": torch.get_num_threads(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", default="sm86")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "cifar10", "cifar10")
        for i in range(args.repeats):
            plan = Path(tmp) / f"run{i}" / "cifar10.plan"
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "ddpmrt.export", "export-engine", str(ckpt), "--out", str(plan),
                                     "--precision", "fp16", "--batch", "1:8:64", "--targets", args.targets],
                                    capture_output=True, text=True)
            total = time.perf_counter() - start
            if result.returncode != 0:
                sys.exit(result.stderr)
            sidecar = json.loads(Path(str(plan) + ".json").read_text())
            runs.append({"total_s": round(total, 2), "engine_build_s": sidecar["build_seconds"],
                         "engine_mb": round(sidecar["engine_bytes"] / 1e6, 1), "output": result.stdout.strip()})
            print(f"run {i}: {total:.1f} s total, engine build {sidecar['build_seconds']} s")

    totals = [r["total_s"] for r in runs]
    report = {"benchmark": "export-engine cifar10 fp16 batch 1:8:64, cold, export included",
              "target_s": 120, "median_total_s": statistics.median(totals), "min_total_s": min(totals),
              "max_total_s": max(totals), "median_engine_build_s": statistics.median(r["engine_build_s"] for r in runs),
              "runs": runs, "environment": environment()}
    out = Path(args.out) / f"engine_build_cpu_{datetime.now(timezone.utc):%Y%m%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"median {report['median_total_s']:.1f} s (target {report['target_s']} s); wrote {out}")


if __name__ == "__main__":
    sys.exit(run_script(main))
