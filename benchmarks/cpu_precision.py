"""fp32 against bf16 on this CPU, for every CPU backend, side by side in one run: what `auto` should mean here.

    python benchmarks/cpu_precision.py --batch 1,8 --out benchmarks/results/cpu-precision-<cpu>-<date>.json
    python benchmarks/cpu_precision.py --config tiny --batch 1 --runs 2 --backends torch     # the script itself

Why: `--precision auto` picks bf16 on the CPU only where bf16 is faster than fp32 (engine/cpu.py).
bf16 halves the bytes moved everywhere, but it pays only where the CPU multiplies bf16 faster than
fp32: AMX tiles do (16x the fp32 FMA's FLOP per cycle); AVX512-BF16's dot products alone may not,
and then the conversions make bf16 slower.  So each CPU type is measured before its default is set.

Every backend runs the same cifar10 U-Net (a random-weights checkpoint, seed 0) at one input, t = 500:

- torch:       PyTorch eager (the checkpoint's default CPU path);
- inductor:    TorchInductor with frozen weights (the checkpoint with --backend inductor);
- openvino:    ddpmrt's OpenVINO backend on the fp32 ONNX export, INFERENCE_PRECISION_HINT f32 or bf16;
- openvino-dynamic: the same with one dynamic-batch compile (`static_shapes = False`, as the server
                   runs it) instead of one compile per batch size;
- openvino-default: OpenVINO as a user calls it (`compile_model(onnx, "CPU")`), whatever it picks;
- onnxruntime: fp32 only (ONNX Runtime has no bf16 CPU kernels for these layers).

Each row: ms per call (median after warm-up), the precision the backend reports it computed in, and
the error of ε against PyTorch fp32 (max abs over max abs of the reference).  The summary gives
bf16's time over fp32's per backend and batch (below 1: bf16 is faster).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ddpmrt.engine import load_model
from ddpmrt.engine.backends import openvino_backend
from ddpmrt.engine.errors import run_script
from ddpmrt.engine.profiling import environment, time_calls
from ddpmrt.export.conversion.onnx_export import export_onnx
from ddpmrt.export.evaluation.bench import batch_sizes_arg
from ddpmrt.export.model.checkpoint import write_json, write_random_checkpoint
from ddpmrt.export.model.sources import from_checkpoint

BACKENDS = ("torch", "inductor", "openvino", "openvino-dynamic", "openvino-default", "onnxruntime")


def export(checkpoint: Path, folder: Path) -> Path:
    source = from_checkpoint(checkpoint, "fp32")
    path = folder / "model-fp32.onnx"
    export_onnx(source.module, source.metadata, path, check=False)
    return path


def load(backend: str, precision: str, checkpoint: Path, onnx_path: Path, threads: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a bf16 note on a CPU without the units: the row says what ran
        if backend in ("torch", "inductor"):
            return load_model(checkpoint, backend=backend, precision=precision)
        if backend == "openvino-default":
            from ddpmrt.export.evaluation.bench import OpenVinoDefault

            return OpenVinoDefault(onnx_path, load_model(onnx_path, backend="onnxruntime"))
        model = load_model(onnx_path, backend=backend.split("-")[0], precision=precision, threads=threads)
        if backend == "openvino-dynamic":
            model.static_shapes = False
        return model


def run(args) -> dict:
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    wanted = args.backends.split(",")
    for name in wanted:
        if name not in BACKENDS:
            sys.exit(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    rows, skipped = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_random_checkpoint(Path(tmp) / args.config, args.config)
        onnx_path = export(checkpoint, Path(tmp)) if set(wanted) - {"torch", "inductor"} else None
        reference = load_model(checkpoint, backend="torch", precision="fp32")
        for batch in args.batches:
            rng = np.random.default_rng(1)
            x = rng.standard_normal((batch, *reference.image_shape)).astype(np.float32)
            t = np.full(batch, 500)
            expected = reference(x, t)
            for backend in wanted:
                if backend.startswith("openvino") and not openvino_backend.available():
                    skipped[backend] = "needs OpenVINO: pip install 'ddpmrt[openvino]'"
                    continue
                precisions = ("fp32",) if backend in ("onnxruntime", "openvino-default") else ("fp32", "bf16")
                for precision in precisions:
                    start = time.perf_counter()
                    model = load(backend, precision, checkpoint, onnx_path, threads)
                    eps = model(x, t)
                    row = {"backend": backend, "batch": batch, "asked": precision if backend != "openvino-default"
                           else "OpenVINO's default", "computed": getattr(model, "precision", "fp32"),
                           "first_call_s": time.perf_counter() - start,
                           "ms_per_call": time_calls(functools.partial(model, x, t), args.runs, args.warmup),
                           "error_vs_fp32": float(np.abs(eps - expected).max() / np.abs(expected).max())}
                    rows.append(row)
                    print(json.dumps({**row, "ms_per_call": row["ms_per_call"]["median"]}), flush=True)
                    del model
    return {"what": "cpu_precision", "config": args.config, "runs": args.runs, "warmup": args.warmup,
            "timing": "one host call, wall clock", "rows": rows, "skipped": skipped,
            "bf16_over_fp32": ratios(rows), "environment": environment(threads)}


def ratios(rows: list[dict]) -> dict:
    """Per backend and batch: bf16's median time over fp32's (below 1: bf16 is faster)."""
    out = {}
    for row in rows:
        if row["asked"] != "bf16":
            continue
        fp32 = next(r for r in rows if r["backend"] == row["backend"] and r["batch"] == row["batch"]
                    and r["asked"] == "fp32")
        out.setdefault(row["backend"], {})[str(row["batch"])] = row["ms_per_call"]["median"] / fp32["ms_per_call"]["median"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="cifar10", help="U-Net config (default cifar10)")
    p.add_argument("--batch", dest="batches", type=batch_sizes_arg, default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated (default {','.join(BACKENDS)})")
    p.add_argument("--runs", type=int, default=10, help="timed calls per row (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    args = p.parse_args()
    report = run(args)
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report["bf16_over_fp32"]))


if __name__ == "__main__":
    sys.exit(run_script(main))
