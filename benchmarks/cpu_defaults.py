"""ddpmrt's default CPU paths against OpenVINO's default and diffusers' DDIMPipeline, interleaved round by round.

    python benchmarks/cpu_defaults.py --batch 1,8 --rounds 7 --out benchmarks/results/cpu-defaults-<cpu>/cpu_defaults.json
    python benchmarks/cpu_defaults.py --config tiny --batch 1 --rounds 2 --steps 2     # the script itself

Why: issue 20 asks for ratios measured side by side in one run: ddpmrt's default CPU path (a checkpoint
and its ONNX file, each with `load_model`'s defaults) at least as fast as OpenVINO's default at batch 1
and 8, and `ddpmrt sample` DDIM-20 at batch 1 at least 3x diffusers' DDIMPipeline.  `ddpmrt bench` times
each row in its own stretch of minutes, and on a shared 2-core VM the speed drifts by 10-30 % over
minutes, more than some of these differences.  So here every round runs one DDIM-20 loop of every path
back to back, and each ratio is the median over rounds of that round's ratio.

The paths, every one on the same random-weights U-Net (seed 0) and the same threads:

- checkpoint-default: `load_model(checkpoint)` (where bf16 is faster, OpenVINO on the checkpoint's
  cached ONNX export, or inductor in bf16 with frozen weights without OpenVINO; eager PyTorch
  elsewhere; `DDPMRT_CPU_COMPILE=0` keeps eager);
- onnx-default:       `load_model("model.onnx")` (OpenVINO where installed, its precision from auto);
- openvino-default:   OpenVINO as a user calls it, `compile_model(onnx, "CPU")` (export/evaluation/bench.py);
- DDIMPipeline:       diffusers' pipeline in fp32, η = 0, the same number of steps.

ms per image of one DDIM loop (host wall clock, warm-up loops excluded), the precision each path
computed in, and ε's error against PyTorch fp32 at one input (max abs over max abs of the reference).
Then the checkpoint default's start-up: seconds from a fresh process to its first image at batch 1,
cold (empty caches: the export or the compile) and warm (the issue's limit: 10 s).
"""

from __future__ import annotations

import argparse
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
from ddpmrt.engine.profiling import environment, summarize
from ddpmrt.export.conversion.onnx_export import export_onnx
from ddpmrt.export.evaluation.bench import OpenVinoDefault, batch_sizes_arg, bench_sampler, diffusers_pipeline, measure_startup
from ddpmrt.export.model.checkpoint import write_json, write_random_checkpoint
from ddpmrt.export.model.sources import from_checkpoint

PATHS = ("checkpoint-default", "onnx-default", "openvino-default", "DDIMPipeline")


def load_paths(checkpoint: Path, onnx_path: Path, threads: int) -> dict:
    """Every path by name: a callable running one DDIM loop of a batch, and what it computes in."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a bf16 note: the row says what ran
        models = {"checkpoint-default": load_model(checkpoint, threads=threads),
                  "onnx-default": load_model(onnx_path, threads=threads),
                  "openvino-default": OpenVinoDefault(onnx_path, load_model(onnx_path, backend="onnxruntime"))}
    pipe = diffusers_pipeline(checkpoint, "cpu")
    return {"models": models, "pipe": pipe}


def one_loop(name: str, loaded: dict, batch: int, steps: int, seed: int) -> float:
    """Seconds for one DDIM loop of `batch` images on path `name`."""
    start = time.perf_counter()
    if name == "DDIMPipeline":
        loaded["pipe"](batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                       output_type="np", eta=0.0)
    else:
        model = loaded["models"][name]
        bench_sampler("ddim", model.schedule, steps).sample(model, (batch, *model.image_shape), seed=seed,
                                                            progress=False)
    return time.perf_counter() - start


def run(args) -> dict:
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if not openvino_backend.available():
        sys.exit("needs OpenVINO for the onnx default and OpenVINO's default: pip install 'ddpmrt[openvino]'")
    rows, ratios = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_random_checkpoint(Path(tmp) / args.config, args.config)
        source = from_checkpoint(checkpoint, "fp32")
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(source.module, source.metadata, onnx_path, check=False)
        loaded = load_paths(checkpoint, onnx_path, threads)
        # What the checkpoint default chose, in this process (DDPMRT_CPU_COMPILE and OpenVINO decide it).
        checkpoint_backend = loaded["models"]["checkpoint-default"].backend
        reference = load_model(checkpoint, backend="torch", precision="fp32")
        for batch in args.batches:
            x = np.random.default_rng(1).standard_normal((batch, *reference.image_shape)).astype(np.float32)
            t = np.full(batch, 500)
            expected = reference(x, t)
            for _ in range(args.warmup):  # compiles (inductor, OpenVINO's static batch) and caches
                for name in PATHS:
                    one_loop(name, loaded, batch, args.steps, seed=0)
            seconds = {name: [] for name in PATHS}
            for round_ in range(args.rounds):
                order = PATHS if round_ % 2 == 0 else PATHS[::-1]  # neither path always goes first
                for name in order:
                    seconds[name].append(one_loop(name, loaded, batch, args.steps, seed=round_))
            for name in PATHS:
                model = loaded["models"].get(name)
                error = None if model is None else float(np.abs(model(x, t) - expected).max() / np.abs(expected).max())
                rows.append({"path": name, "batch": batch, "steps": args.steps,
                             "backend": getattr(model, "backend", "diffusers"),
                             "precision": getattr(model, "precision", "fp32"),
                             "ms_per_image": summarize(1e3 * s / batch for s in seconds[name]),
                             "error_vs_fp32": error})
                print(json.dumps({**rows[-1], "ms_per_image": rows[-1]["ms_per_image"]["median"]}), flush=True)
            # Per round: the peer's time over ours (above 1: ours is faster), then the median over rounds.
            per_round = lambda ours, peer: float(np.median(np.array(seconds[peer]) / np.array(seconds[ours])))  # noqa: E731
            ratios[str(batch)] = {f"{ours} vs {peer}": per_round(ours, peer)
                                  for ours in ("checkpoint-default", "onnx-default")
                                  for peer in ("openvino-default", "DDIMPipeline")}
        del loaded  # the start-up processes get the CPU to themselves
        startup = {"backend": checkpoint_backend, "batch": 1, "steps": args.steps,
                   **measure_startup(checkpoint, "auto", "cpu", args.steps, threads)} if args.startup else None
    return {"what": "cpu_defaults", "config": args.config, "steps": args.steps, "rounds": args.rounds,
            "warmup": args.warmup, "timing": "one DDIM loop per path per round, interleaved, host wall clock",
            "rows": rows, "speedups": ratios, "checkpoint_default_startup": startup,
            "environment": environment(threads)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="cifar10", help="U-Net config (default cifar10)")
    p.add_argument("--batch", dest="batches", type=batch_sizes_arg, default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds, one loop of every path each (default 7)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--no-startup", dest="startup", action="store_false",
                   help="skip the checkpoint default's cold and warm start-up")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    args = p.parse_args()
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        sys.exit("--rounds and --steps must be at least 1, --warmup at least 0")
    report = run(args)
    if args.out:
        write_json(args.out, report)
    print(json.dumps({"speedups": report["speedups"], "startup": report["checkpoint_default_startup"]}))


if __name__ == "__main__":
    sys.exit(run_script(main))
