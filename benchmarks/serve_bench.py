"""Serving benchmark: throughput and latency percentiles of `ddpmrt serve` against offered load,
with request batching on and off.

    python benchmarks/serve_bench.py digits.onnx --rates 5,10,20,40 --duration 10 --out benchmarks/results/serve-cpu
    python benchmarks/serve_bench.py model.plan --device cuda --address auto --replicas 4 ...   # on a Ray cluster

Load is open-loop: request k is sent at a Poisson arrival time whatever happened to the earlier
ones (as clients of a web service send), so latency grows once the offered rate passes what the
deployment sustains.  For each batching mode the app is deployed, warmed up, and driven at each
rate for `duration` seconds; a request's latency runs from its arrival time to its answer.
Writes serve_bench.json (with the environment), serve_bench.md and serve_bench.png.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ddpmrt.engine.artifacts.io import atomic_write, check_output_dir
from ddpmrt.engine.errors import run_script
from ddpmrt.engine.profiling import environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send(url: str, body: dict, timeout: float) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # connection refused, reset or timed out


def drive(url: str, rate: float, duration: float, body: dict, seed: int, timeout: float, clients: int) -> dict:
    """Open-loop Poisson arrivals at `rate` per second for `duration` seconds."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, int(rate * duration * 1.5) + 10))
    arrivals = arrivals[arrivals < duration]
    latencies, codes, lock = [], [], threading.Lock()
    start = time.perf_counter()

    def one(k: int) -> None:
        delay = start + arrivals[k] - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        status = send(url, {**body, "seed": int(k)}, timeout)
        done = time.perf_counter()
        with lock:
            codes.append(status)
            if status == 200:
                latencies.append(done - (start + arrivals[k]))  # from the arrival, queueing included

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(len(arrivals))))
    elapsed = time.perf_counter() - start
    ok = len(latencies)
    row = {"offered_per_s": rate, "sent": len(arrivals), "ok": ok, "errors": len(arrivals) - ok,
           "status_counts": {str(c): codes.count(c) for c in sorted(set(codes))},
           "throughput_per_s": ok / elapsed, "elapsed_s": elapsed}
    for q in (50, 95, 99):
        row[f"p{q}_ms"] = float(np.percentile(latencies, q) * 1e3) if latencies else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="what `ddpmrt serve` takes: an .onnx or .plan file, a checkpoint or shipped name")
    parser.add_argument("--rates", default="5,10,20,40", help="offered loads, requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per offered load")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per request")
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-queued", type=int, default=64,
                        help="requests waiting for a replica before 503, as `ddpmrt serve` (default 64)")
    parser.add_argument("--replicas", type=int)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per replica")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=256, help="most requests in flight from this process")
    parser.add_argument("--address", help="a Ray cluster to deploy on (default: a local one)")
    parser.add_argument("--out", default="serve-bench")
    ns = parser.parse_args()
    out = check_output_dir(ns.out)
    rates = [float(r) for r in ns.rates.split(",")]

    import ray
    from ray import serve

    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.engine.serve import build_app

    model = str(resolve_model_path(ns.model))
    port = free_port()
    ray.init(address=ns.address, include_dashboard=False, logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 300})
    body = {"sampler": "ddim", "steps": ns.steps, "n": ns.n, "format": "npz"}
    rows = []
    try:
        for batching in (True, False):
            name = "batched" if batching else "unbatched"
            serve.run(build_app(model, device=ns.device, replicas=ns.replicas, max_batch=ns.max_batch,
                                batch_wait_ms=ns.batch_wait_ms, max_queued=ns.max_queued, threads=ns.threads,
                                batching=batching), name=name, route_prefix=f"/{name}")
            url = f"http://127.0.0.1:{port}/{name}/sample"
            for k in range(3):  # warm-up: sessions, first batches
                send(url, {**body, "seed": k}, 300)
            for rate in rates:
                row = drive(url, rate, ns.duration, body, seed=int(rate * 1000), timeout=300, clients=ns.clients)
                rows.append({"batching": batching, **row})
                print(f"{name:9s} offered {rate:6.1f}/s: {row['throughput_per_s']:6.1f}/s, "
                      f"p50 {row['p50_ms'] or float('nan'):8.1f} ms, p99 {row['p99_ms'] or float('nan'):8.1f} ms, "
                      f"errors {row['errors']}", flush=True)
            serve.delete(name)
    finally:
        serve.shutdown()
        ray.shutdown()
    report = {"model": model, "request": body, "max_batch": ns.max_batch, "batch_wait_ms": ns.batch_wait_ms,
              "max_queued": ns.max_queued,
              "replicas": ns.replicas or 1, "threads_per_replica": ns.threads, "device": ns.device,
              "duration_s": ns.duration, "ray": ray.__version__, "results": rows, "environment": environment(ns.threads)}
    write(report, out)


def write(report: dict, out: Path) -> None:
    from ddpmrt.export.evaluation.plots import pyplot, save_figure, write_markdown

    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "serve_bench.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    env = report["environment"]
    lines = [f"# ddpmrt serve: {Path(report['model']).name}, DDIM-{report['request']['steps']}, "
             f"{report['request']['n']} image(s) per request", "",
             f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores), {report['replicas']} replica(s) on "
             f"{report['device']} with {report['threads_per_replica']} thread(s) each; Ray {report['ray']}. Open-loop "
             f"Poisson load for {report['duration_s']:g} s per row; latency from arrival to answer; batching: up to "
             f"{report['max_batch']} requests, {report['batch_wait_ms']:g} ms wait; at most "
             f"{report.get('max_queued')} requests queued, the rest refused (503: 'refused'). Latency percentiles are "
             "of the requests served.", "",
             "| batching | offered req/s | served req/s | p50 ms | p95 ms | p99 ms | refused (503) | other errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        cells = [f"{r[k]:.0f}" if r[k] is not None else "" for k in ("p50_ms", "p95_ms", "p99_ms")]
        refused = r["status_counts"].get("503", 0)
        lines.append(f"| {'on' if r['batching'] else 'off'} | {r['offered_per_s']:g} | {r['throughput_per_s']:.1f} | "
                     f"{' | '.join(cells)} | {refused} | {r['errors'] - refused} |")
    lines += ["", "![throughput and latency against offered load](serve_bench.png)", ""]
    write_markdown(out / "serve_bench.md", lines)

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for batching, style in ((True, "o-"), (False, "s--")):
        rows = [r for r in report["results"] if r["batching"] == batching]
        label = "batching on" if batching else "batching off"
        offered = [r["offered_per_s"] for r in rows]
        left.plot(offered, [r["throughput_per_s"] for r in rows], style, label=label)
        right.plot(offered, [r["p50_ms"] for r in rows], style, label=f"{label}, p50")
        right.plot(offered, [r["p99_ms"] for r in rows], style, alpha=0.5, label=f"{label}, p99")
    left.plot(offered, offered, ":", color="grey", label="offered")
    left.set_xlabel("offered requests/s")
    left.set_ylabel("served requests/s")
    right.set_xlabel("offered requests/s")
    right.set_ylabel("latency ms")
    right.set_yscale("log")
    left.legend(fontsize=8)
    right.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "serve_bench.png")


if __name__ == "__main__":
    sys.exit(run_script(main))
