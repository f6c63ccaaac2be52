"""Profiling a sampling loop: time per stage, medians and spreads over repeated runs, environment.

Stages are the sampler's own (`Sampler.sample(stage=...)`): "network" (the model call) and
"update" (noise and the coefficient-form step); what remains of a step is host overhead.  Each
stage is also an NVTX range when the `nvtx` package is installed, so an Nsight Systems timeline
shows network / update / loop.  GPU backends in this version synchronize inside the model call,
so host clocks include the device time.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone

import numpy as np

try:  # optional: NVTX ranges for Nsight Systems
    import nvtx as _nvtx
except ImportError:
    _nvtx = None


def nvtx_range(name: str):
    return _nvtx.annotate(name) if _nvtx is not None else contextlib.nullcontext()


class StageClock:
    """Accumulates wall time per stage; usable as Sampler.sample's `stage` hook."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str):
        with nvtx_range(name):
            start = time.perf_counter()
            try:
                yield
            finally:
                self.totals[name] += time.perf_counter() - start


def summarize(values) -> dict:
    """Median and spread of repeated measurements."""
    values = sorted(float(v) for v in values)
    q = np.percentile(values, [25, 75]) if len(values) > 1 else [values[0], values[0]]
    return {"median": statistics.median(values), "p25": float(q[0]), "p75": float(q[1]),
            "min": values[0], "max": values[-1], "n": len(values)}


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def profile_sampler(model, sampler, batch: int, runs: int = 10, warmup: int = 2, seed: int = 0) -> dict:
    """Time `runs` full sampling loops after `warmup` ones; per-step and per-image figures."""
    steps = sampler.num_steps
    shape = (batch, *model.image_shape)
    rows = []
    for run in range(warmup + runs):
        clock = StageClock()
        start = time.perf_counter()
        with nvtx_range("loop"):
            sampler.sample(model, shape, seed=seed, progress=False, stage=clock)
        total = time.perf_counter() - start
        if run >= warmup:
            network, update = clock.totals["network"], clock.totals["update"]
            rows.append({"total_s": total, "network_ms_per_step": 1e3 * network / steps,
                         "update_ms_per_step": 1e3 * update / steps,
                         "host_ms_per_step": 1e3 * (total - network - update) / steps,
                         "ms_per_image": 1e3 * total / batch, "images_per_s": batch / total})
    result = {"batch": batch, "steps": steps, "runs": runs, "warmup": warmup}
    for key in rows[0]:
        result[key] = summarize(r[key] for r in rows)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def environment(threads: int | None = None) -> dict:
    """CPU/GPU, library versions, threads and date: what a measurement depends on."""
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
           "platform": platform.platform(), "cpu": _cpu_name(), "cores": os.cpu_count(), "threads": threads,
           "numpy": np.__version__}
    for module in ("onnxruntime", "torch", "diffusers", "tensorrt", "tensorrt_rtx"):
        if module in sys.modules or _importable(module):
            try:
                env[module] = __import__(module).__version__
            except Exception:
                pass
    env["gpu"] = _gpu()
    return env


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> dict | None:
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        return None
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or count == 0:
        return None
    err, props = rt.cudaGetDeviceProperties(0)
    _, driver = rt.cudaDriverGetVersion()
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return {"name": name, "compute_capability": f"{props.major}.{props.minor}", "driver": driver,
            "memory_gb": round(props.totalGlobalMem / 2 ** 30, 1)}
