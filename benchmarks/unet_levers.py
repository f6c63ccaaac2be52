"""What each execution choice of the compiled U-Net is worth, measured one against another in one run.

    python benchmarks/unet_levers.py --out benchmarks/results/unet-levers-<gpu>-<date>.json
    python benchmarks/unet_levers.py --device cpu --config tiny --batch 1 --runs 3   # the script itself, on the CPU

Why: issue 10 asks for 1.5x diffusers + torch.compile at batch 1, 64 and 256, and the levers that
could get there cost reproducibility or start-up, so each is measured before it becomes a default.
Every variant runs the cifar10 U-Net (random weights) on the inductor backend, a fresh model each:

- lookup:   the ResBlocks' time shifts looked up in a precomputed table (the default) against
            `computed` (the MLP and one projection per ResBlock in every step);
- cudnn:    cuDNN's algorithm search (`torch.backends.cudnn.benchmark`) against its heuristics.
            Off by default: the search picks by timing, so two processes may pick differently
            and round differently (CUDA only).

On the CPU (issue 20: bf16 on AMX and AVX512-BF16 units) the levers of the compiled network:

- unfrozen:       Inductor's freezing off (the default freezes the weights into the graph, so
                  oneDNN lays them out once; it costs start-up);
- channels-last:  the weights in NHWC, the layout oneDNN's AMX convolutions prefer;
- max-autotune:   Inductor's autotuning with its C++ GEMM templates beside ATen's
                  (`max_autotune_gemm_backends="CPP,ATEN"`): benchmarked kernels, longer compiles;
- cpp-wrapper:    Inductor's C++ wrapper instead of its Python one, which launches the kernels
                  with less host time per call (it counts at batch 1, where a call is short).

`--precision bf16` measures them where it counts (auto is bf16 on a CPU with bf16 units).

On CUDA each variant samples DDIM-50 through the device loop, captured as one CUDA graph
(`profile_device_loop`: ms per image, device ms per step, medians after warm-up); on the CPU it
times one network call (host path).  Every variant's ε at one input is compared with the first
variant's: a lever must not change the result beyond its precision.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpmrt.engine import DDIMSampler, NoiseSchedule
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.backends.torch_backend import TorchModel
from ddpmrt.engine.errors import run_script
from ddpmrt.engine.profiling import environment, profile_device_loop, time_calls
from ddpmrt.export.model.unet import UNet, get_config


@dataclass(frozen=True)
class Variant:
    lookup: bool = True              # time shifts looked up in the table (the default) or computed
    cudnn_search: bool = False       # CUDA only
    channels_last: bool = False      # CPU: NHWC weights
    inductor: tuple = ()             # CPU: Inductor config entries over the backend's (freezing on)
    needs: str = "any"               # "cuda", "cpu", "compiled": where the variant means something


VARIANTS = {
    "lookup": Variant(),
    "computed": Variant(lookup=False),
    "lookup+cudnn-search": Variant(cudnn_search=True, needs="cuda"),
    "unfrozen": Variant(inductor=(("freezing", False),), needs="compiled"),
    "channels-last": Variant(channels_last=True, needs="cpu"),
    "max-autotune": Variant(inductor=(("max_autotune", True), ("max_autotune_gemm_backends", "CPP,ATEN")),
                            needs="compiled"),
    "cpp-wrapper": Variant(inductor=(("cpp_wrapper", True),), needs="compiled"),
}


def make_model(config: str, device: str, variant: Variant, compile: bool, precision: str = "auto") -> TorchModel:
    torch.manual_seed(0)  # the same random weights for every variant
    cfg = get_config(config)
    schedule = NoiseSchedule.linear(1000)
    model = TorchModel(UNet(cfg), schedule, (cfg.image_channels, cfg.image_size, cfg.image_size), device,
                       compile=compile, cuda_graph=device == "cuda", precision=precision,
                       inductor_options=dict(variant.inductor))
    if not variant.lookup:
        model.module.precompute_time_table(None)
    if variant.channels_last:
        model.module.to(memory_format=torch.channels_last)
    return model


@contextlib.contextmanager
def cudnn_search(on: bool):
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def reference_eps(model: TorchModel, batch: int) -> np.ndarray:
    """ε at a fixed input and t = 500, through the host path (it compiles the batch if needed)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, *model.image_shape)).astype(np.float32)
    return model(x, np.full(batch, 500))


def time_host_calls(model: TorchModel, batch: int, runs: int, warmup: int) -> dict:
    x = np.random.default_rng(2).standard_normal((batch, *model.image_shape)).astype(np.float32)
    t = np.full(batch, 500)
    return {"ms_per_call": time_calls(lambda: model(x, t), runs, warmup)}


def run(args) -> dict:
    on_cuda = args.device == "cuda"
    names = args.variants.split(",")
    for name in names:
        if name not in VARIANTS:
            sys.exit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        needs = VARIANTS[name].needs
        if needs == "cuda" and not on_cuda:
            sys.exit(f"variant {name} searches cuDNN algorithms and needs --device cuda; drop it on the CPU")
        if needs == "cpu" and on_cuda:
            sys.exit(f"variant {name} is a CPU lever (on CUDA the weights are already channels_last); use --device cpu")
        if needs == "compiled" and (on_cuda or args.eager):
            sys.exit(f"variant {name} sets Inductor options of the CPU backend: use --device cpu without --eager")
    rows = []
    for batch in args.batches:
        first_eps = None
        for name in names:
            variant = VARIANTS[name]
            with cudnn_search(variant.cudnn_search):
                start = time.perf_counter()
                model = make_model(args.config, args.device, variant, compile=not args.eager, precision=args.precision)
                eps = reference_eps(model, batch)
                row = {"variant": name, "batch": batch, "time_shifts": "looked up" if variant.lookup else "computed",
                       "cudnn_benchmark": variant.cudnn_search, "channels_last": variant.channels_last,
                       "inductor_options": dict(variant.inductor), "precision": model.precision,
                       "first_call_s": time.perf_counter() - start}
                if on_cuda:
                    sampler = DDIMSampler(model.schedule, args.steps)
                    result = profile_device_loop(model, sampler, batch, runs=args.runs, warmup=args.warmup)
                    row.update({key: result[key] for key in ("ms_per_image", "gpu_ms_per_step", "host_ms_per_step")})
                    # Nodes by type: (nodes - 1) / steps is how many kernels one step launches.
                    row["graph"] = result.get("graph")
                else:
                    row.update(time_host_calls(model, batch, args.runs, args.warmup))
            if first_eps is None:
                first_eps = eps
            row["max_abs_eps_difference_to_first"] = float(np.abs(eps - first_eps).max())
            rows.append(row)
            print(json.dumps({k: (v["median"] if isinstance(v, dict) and "median" in v else v) for k, v in row.items()
                              if k != "graph"}),
                  flush=True)
            del model
            torch._dynamo.reset()  # each variant compiles afresh, and its graphs do not count as recompiles
            if on_cuda:
                torch.cuda.empty_cache()
    return {"what": "unet_levers", "config": args.config, "device": args.device, "steps": args.steps,
            "compiled": not args.eager, "runs": args.runs, "warmup": args.warmup,
            "timing": ("DDIM loop as one CUDA graph: wall clock per image, CUDA events per step" if on_cuda
                       else "one host call, wall clock"),
            "rows": rows, "speedups": speedups(rows), "environment": environment(torch.get_num_threads())}


def speedups(rows: list[dict]) -> dict:
    """Per batch: each variant's median time over the first variant's (below 1 is faster)."""
    key = "ms_per_image" if "ms_per_image" in rows[0] else "ms_per_call"
    out = {}
    for row in rows:
        first = next(r for r in rows if r["batch"] == row["batch"])
        out.setdefault(str(row["batch"]), {})[row["variant"]] = row[key]["median"] / first[key]["median"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="cifar10")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--batch", default="1,64,256", help="comma-separated batch sizes")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps per loop (CUDA)")
    p.add_argument("--variants", help="comma-separated, the first is the baseline (default: every variant that "
                   "means something on the device)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--eager", action="store_true", help="do not compile (the torch backend's eager module)")
    p.add_argument("--precision", default="auto", help="the torch backend's precision (default auto: fp16 on CUDA; on "
                   "the CPU bf16 where it has bf16 units, else fp32)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    try:
        args.batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        sys.exit(f"--batch {args.batch!r}: give comma-separated integers such as 1,64,256")
    if args.variants is None:
        usable = ("any", "cuda") if args.device == "cuda" else ("any", "cpu") + (() if args.eager else ("compiled",))
        args.variants = ",".join(name for name, v in VARIANTS.items() if v.needs in usable)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: PyTorch sees no CUDA GPU; run on the GPU machine or pass --device cpu")
    report = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.out) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["speedups"]))


if __name__ == "__main__":
    sys.exit(run_script(main))
