"""Profiling a sampling loop: time per stage, medians and spreads over repeated runs, environment.

Stages are the sampler's own (`Sampler.sample(stage=...)`): "network" (the model call) and
"update" (noise and the coefficient-form step); what remains of a step is host overhead.  Each
stage is also an NVTX range when the `nvtx` package is installed, so an Nsight Systems timeline
shows network / update / loop.

GPU models (those with a `device_loop`) are profiled by `profile_device_loop` instead: the
loop runs end to end on the device as users run it (wall clock), and the stages are timed
with CUDA events on the model's stream, each stage enqueued alone for all steps (eager loops;
a loop replayed as one CUDA graph has no separate stages to time).
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
from importlib import metadata

import numpy as np

from ddpmrt.engine.cpu import bf16_is_faster, cpu_vendor, has_bf16_units, matrix_instructions, undetectable_flags

try:  # optional: NVTX ranges for Nsight Systems
    import nvtx as _nvtx
except ImportError:
    _nvtx = None


# The libraries a measurement may depend on, by distribution name (reported where installed).
VERSIONED = ("onnxruntime", "onnxruntime-gpu", "openvino", "torch", "diffusers", "tensorrt", "tensorrt-rtx",
             "cuda-python", "polygraphy")


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


def time_calls(call, runs: int, warmup: int) -> dict:
    """Wall-clock ms of `call()`, `warmup` untimed calls first, summarized over `runs` timed ones."""
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        call()
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - start))
    return summarize(times)


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (None where the platform does not say)."""
    if sys.platform == "win32":
        return _windows_peak_working_set_mb()
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def _windows_peak_working_set_mb() -> float | None:
    """Windows' peak working set (its resident memory): GetProcessMemoryInfo's PeakWorkingSetSize."""
    import ctypes
    from ctypes import wintypes

    class Counters(ctypes.Structure):  # PROCESS_MEMORY_COUNTERS (psapi.h)
        _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD),
                    ("PeakWorkingSetSize", ctypes.c_size_t), ("WorkingSetSize", ctypes.c_size_t),
                    ("QuotaPeakPagedPoolUsage", ctypes.c_size_t), ("QuotaPagedPoolUsage", ctypes.c_size_t),
                    ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t), ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
                    ("PagefileUsage", ctypes.c_size_t), ("PeakPagefileUsage", ctypes.c_size_t)]

    try:
        counters = Counters(cb=ctypes.sizeof(Counters))
        process = ctypes.windll.kernel32.GetCurrentProcess()
        if not ctypes.windll.psapi.GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb):
            return None
    except (AttributeError, OSError):
        return None
    return counters.PeakWorkingSetSize / 1024 / 1024


class CudaTimer:
    """Elapsed GPU time between two CUDA events recorded on a stream (cuda-python, codes checked)."""

    def __init__(self):
        from ddpmrt.engine.gpu.cuda_runtime import check, cudart

        self._rt, self._check = cudart(), check
        self._start = check(self._rt.cudaEventCreate(), "cudaEventCreate")
        self._end = check(self._rt.cudaEventCreate(), "cudaEventCreate")

    def start(self, stream) -> None:
        self._check(self._rt.cudaEventRecord(self._start, stream), "cudaEventRecord")

    def stop_ms(self, stream) -> float:
        """Record the end event, wait for it, and return the milliseconds since start()."""
        self._check(self._rt.cudaEventRecord(self._end, stream), "cudaEventRecord")
        self._check(self._rt.cudaEventSynchronize(self._end), "cudaEventSynchronize")
        return float(self._check(self._rt.cudaEventElapsedTime(self._start, self._end), "cudaEventElapsedTime"))


def gpu_memory_used_mb() -> float | None:
    """Device memory in use now (total − free, all processes and the CUDA context included)."""
    try:
        from ddpmrt.engine.gpu.cuda_runtime import check, cudart

        free, total = check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    except Exception:
        return None
    return (total - free) / 2 ** 20


def profile_device_loop(model, sampler, batch: int, runs: int = 10, warmup: int = 2, seed: int = 0,
                        timer=None) -> dict:
    """Profile a GPU model's device loop: wall clock end to end, CUDA events on the device.

    gpu:     the whole loop's device time (events around it), per step.
    host:    the host time spent enqueuing one loop (a graph launch, or every call), per step.
    network, update (eager loops only): all steps' network calls, then all steps' fused-kernel
             launches, each enqueued alone and timed with events, per step.  A loop replayed as
             one CUDA graph runs both stages inside the graph, so it reports none: an eager run's
             stage times would describe another run.
    """
    loop = model.device_loop
    steps, n = sampler.num_steps, batch
    timer = timer or CudaTimer()
    graphed = bool(getattr(loop, "cuda_graph", False))
    rows = []
    for run in range(warmup + runs):
        stream = model.stream_handle()
        timer.start(stream)
        start = time.perf_counter()
        with nvtx_range("loop"):
            loop.sample(sampler, n, seed=seed)
        total = time.perf_counter() - start
        gpu_ms = timer.stop_ms(stream)
        row = {"total_s": total, "gpu_ms_per_step": gpu_ms / steps, "host_ms_per_step": 1e3 * loop.last_enqueue_seconds / steps,
               "ms_per_image": 1e3 * total / n, "images_per_s": n / total}
        if not graphed:
            with nvtx_range("network"):
                timer.start(stream)
                eps = [model.forward(n, i) for i in range(steps)][-1]
                row["network_ms_per_step"] = timer.stop_ms(stream) / steps
            with nvtx_range("update"):
                timer.start(stream)
                for i in range(steps):
                    loop.update(n, eps, i, steps, stream)
                row["update_ms_per_step"] = timer.stop_ms(stream) / steps
        if run >= warmup:
            rows.append(row)
    result = {"batch": batch, "steps": steps, "runs": runs, "warmup": warmup,
              "timing": "wall clock; device time by CUDA events",
              "stages": ("network and update run inside one CUDA graph: not timed separately" if graphed
                         else "network and update by CUDA events, each stage enqueued alone"),
              "network_ms_per_step": None, "update_ms_per_step": None}
    for key in rows[0]:
        result[key] = summarize(r[key] for r in rows)
    # What the replayed graph holds (nodes by type, one chain or not): the host's launch time depends on it.
    result["graph"] = loop.graph_shape(n, steps) if graphed else None
    result["peak_rss_mb"] = peak_rss_mb()
    result["gpu_memory_used_mb"] = gpu_memory_used_mb()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        result["torch_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return result


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
    # Versions from the installed distributions' metadata: importing torch, diffusers or TensorRT
    # just to read a version would cost seconds and load them into an embedded user's process.
    for distribution in VERSIONED:
        try:
            env[distribution.replace("-", "_")] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            pass
    env["cpu_vendor"] = cpu_vendor()  # with the flags, what decides bf16's speed (engine/cpu.py)
    env["cpu_matrix_instructions"] = matrix_instructions()
    env["cpu_flags_not_detectable"] = undetectable_flags()  # absent from the list above means "not seen", not "absent"
    env["cpu_bf16_units"] = has_bf16_units()
    env["cpu_auto_precision"] = "bf16" if bf16_is_faster() else "fp32"  # what --precision auto computes in here
    env["gpu"] = _gpu()
    return env


def _cpu_name() -> str:
    """The CPU's brand name: /proc/cpuinfo on Linux, the registry on Windows (platform.processor() there is
    only "Intel64 Family 6 Model 143 ..."), else what platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "win32":
        try:
            import winreg

            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0") as key:
                return str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).strip()
        except (ImportError, OSError):
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
