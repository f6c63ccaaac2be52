"""How long the host spends in one CUDA graph launch, against what the graph holds.

    python benchmarks/graph_launch.py --out benchmarks/results/graph-launch-<gpu>-<date>.json

Why: on the first H100 run the whole-loop graph of torch-cuda-graph (cifar10, DDIM-50) cost the
host 0.5 ms per launch at batch 1 and 0.7 ms at batch 64, but 1.37 s at batch 256: the launch
returned only after about 70 % of the run had executed on the GPU.  The bench now reports what
each replayed graph holds (`graph` in bench.json: nodes by type, one chain or not); this script
measures launch time on synthetic graphs whose contents are known, to tell which property
makes a launch wait for the GPU:

- chain:  N kernel nodes in one stream (torch.cuda._sleep, each running about `us` µs);
- memset: the same with a cudaMemsetAsync node after every 8th kernel (what cuBLAS/cuDNN insert
          to zero a workspace or a split-K output);
- fork:   the same with every 8th kernel on a side stream joined back (what a library that forks
          work onto its own streams leaves in a graph).

Each graph is captured once, replayed once to upload it, then replayed `--runs` times from an
idle GPU: host = wall clock around `replay()`, gpu = CUDA events around it.  A launch that
returns while the GPU has most of the work ahead of it has host << gpu; `waits` marks
host > gpu / 2.  Needs a GPU, PyTorch with CUDA and cuda-python.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.errors import run_script
from ddpmrt.engine.gpu.cuda_runtime import check, cudart, describe_graph
from ddpmrt.engine.profiling import environment, summarize

EVERY = 8  # a memset or a fork after every 8th kernel


def cycles_per_us() -> float:
    """torch.cuda._sleep spins for a number of GPU clock cycles: measure how many make a microsecond."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1_000_000)  # warm up
    start.record()
    torch.cuda._sleep(10_000_000)
    stop.record()
    stop.synchronize()
    return 10_000_000 / (1e3 * start.elapsed_time(stop))


def record(variant: str, nodes: int, cycles: int, scratch: torch.Tensor, side: torch.cuda.Stream) -> None:
    """Enqueue the graph's contents on the current (capturing) stream."""
    rt, current = cudart(), torch.cuda.current_stream()
    for i in range(nodes):
        if variant == "fork" and i % EVERY == 0:
            side.wait_stream(current)
            with torch.cuda.stream(side):
                torch.cuda._sleep(cycles)
            current.wait_stream(side)
        else:
            torch.cuda._sleep(cycles)
        if variant == "memset" and i % EVERY == 0:
            check(rt.cudaMemsetAsync(scratch.data_ptr(), 0, scratch.numel() * scratch.element_size(),
                                     current.cuda_stream), "cudaMemsetAsync")


def measure(variant: str, nodes: int, kernel_us: float, runs: int, rate: float) -> dict:
    scratch = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    capture_stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    cycles = int(kernel_us * rate)
    with torch.cuda.graph(graph, stream=capture_stream):
        record(variant, nodes, cycles, scratch, side)
    graph.instantiate()
    shape = describe_graph(graph.raw_cuda_graph())
    graph.replay()  # the first launch uploads the graph
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host, gpu = [], []
    for _ in range(runs):
        torch.cuda.synchronize()
        start.record()
        begin = time.perf_counter()
        graph.replay()
        host.append(1e3 * (time.perf_counter() - begin))
        stop.record()
        stop.synchronize()
        gpu.append(start.elapsed_time(stop))
    row = {"variant": variant, "kernels": nodes, "kernel_us": kernel_us, "graph": shape,
           "host_ms": summarize(host), "gpu_ms": summarize(gpu)}
    row["host_us_per_node"] = 1e3 * row["host_ms"]["median"] / shape["nodes"]
    row["waits"] = row["host_ms"]["median"] > row["gpu_ms"]["median"] / 2
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--kernels", default="1000,4000,16000,32000", help="kernel nodes per graph")
    parser.add_argument("--kernel-us", default="0,10,40", help="how long each kernel spins, µs")
    parser.add_argument("--variants", default="chain,memset,fork")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-gpu-ms", type=float, default=700.0, help="skip graphs that would run longer")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("graph_launch.py needs a CUDA GPU and PyTorch with CUDA", file=sys.stderr)
        return 2
    rate = cycles_per_us()
    rows = []
    for variant in args.variants.split(","):
        for kernel_us in map(float, args.kernel_us.split(",")):
            for nodes in map(int, args.kernels.split(",")):
                if nodes * kernel_us / 1e3 > args.max_gpu_ms:
                    continue
                row = measure(variant, nodes, kernel_us, args.runs, rate)
                rows.append(row)
                print(f"{variant:6s} {nodes:6d} kernels x {kernel_us:4.0f} us: host {row['host_ms']['median']:9.3f} ms, "
                      f"gpu {row['gpu_ms']['median']:9.3f} ms, {row['host_us_per_node']:.2f} us/node"
                      + ("  WAITS" if row["waits"] else ""), flush=True)
    report = {"what": "host time in one CUDA graph launch against the graph's contents", "cycles_per_us": rate,
              "every": EVERY, "runs": args.runs, "rows": rows, "environment": environment()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
