"""Part 1 of gpu_check.sh: what the GPU check ran on (nvidia-smi, versions, commit, date).

    python benchmarks/gpu_check_env.py --out OUTDIR/env.json --nvidia-smi OUTDIR/nvidia-smi.txt
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from ddpmrt.engine.errors import run_script
from ddpmrt.engine.profiling import environment
from ddpmrt.export.model.checkpoint import write_json

# Libraries the GPU paths use beyond those environment() records.
EXTRA_VERSIONS = ("triton", "cuda-python", "cuda-bindings", "nvidia-cuda-nvrtc", "cupy-cuda13x", "onnx")


def _run(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--nvidia-smi", type=Path, required=True, help="where nvidia-smi's full output goes")
    args = parser.parse_args(argv)
    from importlib import metadata

    env = environment()
    for name in EXTRA_VERSIONS:
        try:
            env[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    smi = shutil.which("nvidia-smi")
    env["nvidia_smi"] = _run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"]) if smi else None
    args.nvidia_smi.write_text((_run([smi]) if smi else None) or "nvidia-smi: not found (no NVIDIA driver here)\n",
                               encoding="utf-8")
    env["commit"] = _run(["git", "rev-parse", "HEAD"])
    env["nvcc"] = _run(["nvcc", "--version"]) if shutil.which("nvcc") else None
    write_json(args.out, env)
    print(json.dumps({k: env.get(k) for k in ("date", "gpu", "torch", "nvidia_smi", "commit")}))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
