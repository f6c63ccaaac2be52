"""`ddpmrt bench`: profile every available backend and compare with diffusers on the same weights.

For each backend and batch size: network, update and host time per step, time per image,
images per second, TFLOP/s (and % of the GPU's peak) from the network's FLOP count, and peak
memory; medians and spreads over `runs` loops after `warmup`.  diffusers' DDIMPipeline (or
DDPMPipeline for `sampler="ddpm"`) runs the same weights (converted, diffusers_convert.py) with
the same sampler, steps, batch and threads, in the same process, twice: as shipped, and with
the best one line a user can add, `torch.compile(unet, mode="reduce-overhead", fullgraph=True)`
(the `diffusers-compiled` rows, on a GPU by default).  The report gives both ratios.  Compiled
backends also get their start-up: the time for a fresh process to its first image with an
empty Inductor cache (cold) and with the cache the first one left (warm).  The ahead-of-time
packages (`inductor-package-cpu|cuda`, what `export-engine --flavour inductor` writes) are built
in the run, only when named: their rows, their build time and the start of a process that loads
the `.pt2`, the other way to a fast start.

Writes bench.json (with the environment), bench.md and bench.png into the output directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ddpmrt.engine import cpu, load_model, make_sampler
from ddpmrt.engine.errors import UserError, install_hint
from ddpmrt.engine.profiling import environment, profile_device_loop, profile_sampler
from ddpmrt.export.conversion.onnx_export import export_onnx
from ddpmrt.export.evaluation.bench_backends import (  # noqa: F401
    BENCH_BACKENDS,
    BY_NAME_BACKENDS,
    CALIBRATED_BACKENDS,
    DIFFUSERS_COMPILED,
    PACKAGE_BACKENDS,
)
from ddpmrt.export.evaluation.bench_diffusers import bench_source, diffusers_pipeline, time_diffusers
from ddpmrt.export.evaluation.bench_report import write_report

# Dense fp16/bf16 tensor-core peak by GPU name (datasheets; shared/reference/anchors.md), for % of peak.
# The first name that occurs in the device name wins; --peak-tflops overrides.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
# The samplers diffusers has a scheduler for (iPNDM has none: PNDMScheduler starts with Runge-Kutta steps).
BENCH_SAMPLERS = ("ddim", "ddpm", "dpmsolver", "unipc")


# The settings both sides run, by sampler; diffusers' pipelines are configured to match (diffusers_pipeline).
BENCH_SAMPLER_OPTIONS = {"ddim": {"eta": 0.0, "spacing": "leading", "clip_sample": 0.0},      # DDIM η=0 unclipped
                         "ddpm": {"variance": "fixed_small", "spacing": "leading", "clip_sample": 1.0},
                         # Multistep solvers at order 2, unclipped, against diffusers' schedulers of the same settings.
                         "dpmsolver": {"order": 2, "spacing": "leading", "clip_sample": 0.0},
                         "unipc": {"order": 2, "spacing": "leading", "clip_sample": 0.0}}


def batch_sizes_arg(text: str) -> list[int]:
    """An argparse type for the benchmark scripts' --batch: the CLI's check of a comma-separated list."""
    import argparse

    from ddpmrt.engine.checks import int_list

    try:
        return int_list(text, "--batch")
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def bench_sampler(name: str, schedule, steps: int | None, tuned=None, **given):
    """The sampler ddpmrt's rows run (make_sampler, the factory of every command): BENCH_SAMPLER_OPTIONS, with
    `given` over them (bench --spacing, --timesteps; explicit timesteps replace the spacing; spacing "tuned"
    reads `tuned`, the model's table)."""
    if name not in BENCH_SAMPLER_OPTIONS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(BENCH_SAMPLERS)}")
    options = {**BENCH_SAMPLER_OPTIONS[name], **given}
    if given.get("timesteps") is not None and "spacing" not in given:
        options.pop("spacing")
    return make_sampler(name, schedule, steps, tuned=tuned, **options)


def _backends(checkpoint: Path, source, work: Path, threads: int, wanted, packages: Path, batches) -> tuple[dict, dict]:
    """name -> loaded model for every wanted backend that runs here; name -> why not, for the others.

    Packages are built into `packages`, which must outlive the run: their start-up is measured
    from the file at the end."""
    models, missing = {}, {}
    for build in (_torch_models, _onnx_models, _tensorrt_model):
        build(checkpoint, source, work, threads, wanted, models, missing)
    _package_models(checkpoint, wanted, packages, batches, models, missing)
    return models, missing


def _torch_models(checkpoint, source, work, threads, wanted, models, missing) -> None:
    """torch and inductor on the CPU; on CUDA fp16 on the device loop, eagerly or as one CUDA graph per (batch, steps)."""
    from ddpmrt.engine.backends import inductor_compiler_missing

    for name, backend in (("torch-cpu", "torch"), ("inductor-cpu", "inductor")):
        if name not in wanted:
            continue
        why = inductor_compiler_missing("cpu") if backend == "inductor" else None
        if why:
            missing[name] = why  # e.g. Windows without MSVC: the row is left out, not a traceback
        else:
            models[name] = load_model(checkpoint, backend=backend)
    for name, backend, graph in (("torch-cuda", "torch", False), ("torch-cuda-graph", "torch", True),
                                 ("inductor-cuda", "inductor", True)):
        if name not in wanted:
            continue
        why = "needs a CUDA GPU and PyTorch with CUDA" if not torch.cuda.is_available() else \
            inductor_compiler_missing("cuda") if backend == "inductor" else None
        if why:
            missing[name] = why
        else:
            models[name] = load_model(checkpoint, backend=backend, device="cuda", cuda_graph=graph)


def _onnx_models(checkpoint, source, work, threads, wanted, models, missing) -> None:
    """ONNX Runtime and OpenVINO on the fp32 ONNX file, exported into the run's folder; and OpenVINO as a
    user calls it (its default properties), the peer the CPU backends are measured against."""
    from ddpmrt.engine.backends import openvino_backend
    from ddpmrt.engine.backends.onnxruntime_backend import cuda_available as ort_cuda

    if not {"onnxruntime-cpu", "onnxruntime-cuda", "openvino-cpu", "openvino-default", *CALIBRATED_BACKENDS} & set(wanted):
        return
    onnx_path = work / "model-fp32.onnx"
    export_onnx(source.module, source.metadata, onnx_path, unwrap=source.unwrap)
    if "openvino-int8-cpu" in wanted:
        from ddpmrt.export.conversion.quantize import quantize_onnx

        if not openvino_backend.available():
            missing["openvino-int8-cpu"] = f"needs OpenVINO: {install_hint('openvino')}"
        else:  # what `export-onnx --precision int8` writes, with its default calibration
            quantize_onnx(onnx_path, work / "model-int8.onnx")
            models["openvino-int8-cpu"] = load_model(work / "model-int8.onnx", backend="openvino", threads=threads)
    if "onnxruntime-cpu" in wanted:
        models["onnxruntime-cpu"] = load_model(onnx_path, backend="onnxruntime", threads=threads)
    for name in ("openvino-cpu", "openvino-default"):
        if name not in wanted:
            continue
        if not openvino_backend.available():
            missing[name] = f"needs OpenVINO: {install_hint('openvino')}"
        elif name == "openvino-cpu":  # ddpmrt's backend: the precision auto means here, the bench's threads
            models[name] = load_model(onnx_path, backend="openvino", threads=threads)
        else:
            models[name] = OpenVinoDefault(onnx_path, load_model(onnx_path, backend="onnxruntime"))
    if "onnxruntime-cuda" in wanted:
        if ort_cuda():
            models["onnxruntime-cuda"] = load_model(onnx_path, backend="onnxruntime", device="cuda")
        else:
            missing["onnxruntime-cuda"] = "needs onnxruntime-gpu and a GPU"


class OpenVinoDefault:
    """OpenVINO as a user calls it: `openvino.compile_model(onnx, "CPU")` with its default properties.

    A peer row, not ddpmrt's backend: whatever precision and threads OpenVINO picks by itself (it
    reports bf16 on CPUs with AMX-BF16 or AVX512-BF16), driven by the same sampler loop."""

    backend = "openvino-default"
    device = "cpu"

    def __init__(self, onnx_path: Path, described):
        import openvino

        self.compiled = openvino.compile_model(str(onnx_path), "CPU")
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(hint, hint)
        self.schedule, self.image_shape = described.schedule, described.image_shape

    def __call__(self, x, t):
        return np.asarray(self.compiled({"x": np.ascontiguousarray(x, np.float32), "t": t})[0], np.float32)


def _tensorrt_model(checkpoint, source, work, threads, wanted, models, missing) -> None:
    """An fp16 engine built for this GPU from the fp16 ONNX, run as one CUDA graph per loop."""
    from ddpmrt.engine.gpu.cuda_runtime import device_compute_capability

    if "tensorrt" not in wanted:
        return
    if device_compute_capability() is None:
        missing["tensorrt"] = "needs an NVIDIA GPU and TensorRT or TensorRT-RTX"
        return
    from ddpmrt.engine.backends.tensorrt_flavour import import_flavour
    from ddpmrt.export.conversion.engine_build import BatchProfile, build_engine
    from ddpmrt.export.model.sources import sha256_file

    try:
        flavour = import_flavour("auto")
        source16 = bench_source(checkpoint, "fp16")
        onnx16, plan = work / "model-fp16.onnx", work / "model-fp16.plan"
        export_onnx(source16.module, source16.metadata, onnx16, unwrap=source16.unwrap)
        build_engine(onnx16, plan, source16.metadata, sha256_file(onnx16), flavour, BatchProfile(1, 8, 256), ["current"])
        models["tensorrt"] = load_model(plan, backend="tensorrt", cuda_graph=True)
    except UserError as exc:
        missing["tensorrt"] = str(exc)


def _package_models(checkpoint, wanted, packages: Path, batches, models, missing) -> None:
    """AOTInductor packages, built as `export-engine --flavour inductor` builds them."""
    from ddpmrt.export.conversion.aot_package import build_aot_package
    from ddpmrt.export.conversion.engine_build import BatchProfile

    for name in PACKAGE_BACKENDS:
        if name not in wanted:
            continue
        device = name.rsplit("-", 1)[1]
        if device == "cuda" and not torch.cuda.is_available():
            missing[name] = "needs a CUDA GPU and PyTorch with CUDA"
            continue
        # A source of its own: the build moves and casts the module it is given.  The precision is
        # the device's default (fp16 on CUDA; on the CPU auto's: bf16 where it is faster, else fp32); batches from 1
        # (the start-up's) to the bench's largest.
        package = packages / f"model-{device}.pt2"
        precision = "fp16" if device == "cuda" else cpu.resolve_cpu_precision("auto")
        build_aot_package(bench_source(checkpoint, "fp32"), package, device, precision,
                          BatchProfile(1, max(batches), max(batches)))
        models[name] = load_model(package, device=device)


def network_flops_per_image(source) -> float:
    """FLOPs of one forward per image (convolutions and matrix products, torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    module = source.eps_module().eval()
    x = torch.zeros(1, *source.metadata.image_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x, torch.zeros(1, dtype=torch.int64))
    return float(counter.get_total_flops())


def peak_tflops(gpu_name: str | None) -> float | None:
    """The datasheet's dense fp16 peak of a GPU this table knows, else None."""
    for name, peak in PEAK_TFLOPS:
        if gpu_name and name in gpu_name:
            return peak
    return None


STARTUP_SCRIPT = """
import sys
from ddpmrt.engine import DDIMSampler, load_model
model = load_model(sys.argv[1], backend=sys.argv[2], device=sys.argv[3])
DDIMSampler(model.schedule, int(sys.argv[4])).sample(model, (1, *model.image_shape), seed=0, progress=False)
"""


def measure_startup(model: Path, backend: str, device: str, steps: int, threads: int) -> dict:
    """Seconds from starting a fresh process to its first image (batch 1, DDIM-`steps`), twice:
    cold (empty caches: Inductor's, and ddpmrt's, which keeps a checkpoint's ONNX export for
    OpenVINO) and warm (the caches the first process left): what a low-latency user's second
    process pays.  `model` is a checkpoint, or a `.pt2` package, which needs no cache: its two
    processes show that loading it compiles nothing."""
    times = {}
    with tempfile.TemporaryDirectory(prefix="ddpmrt-start-caches-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(cache) / "inductor"),
               "DDPMRT_CACHE_DIR": str(Path(cache) / "ddpmrt"), "OMP_NUM_THREADS": str(threads)}
        for kind in ("cold", "warm"):
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT, str(model), backend, device, str(steps)],
                                    env=env, capture_output=True, text=True)
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise UserError(f"the start-up measurement of {backend} on {device} failed: {last}")
            times[f"{kind}_start_s"] = time.perf_counter() - start
    return times


def run_bench(checkpoint: Path, out: Path, batches=(1, 8, 64), steps: int | None = 20, runs: int = 10, warmup: int = 2,
              threads: int | None = None, compare_diffusers: bool = True, progress: bool = True,
              backends=BENCH_BACKENDS, sampler: str = "ddim", diffusers_compiled: str = "auto",
              startup: bool = True, peak: float | None = None, sampler_options: dict | None = None,
              tuned=None) -> dict:
    """Time every backend of `backends` at every batch, and diffusers beside them.

    `sampler_options` (a spacing, explicit timesteps) and `tuned` (the model's tuned table) change where
    ddpmrt's steps fall, not what a step costs: diffusers' rows run the same number of steps at their own
    leading spacing, and bench.md says so."""
    from tqdm.auto import tqdm

    if sampler not in BENCH_SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(BENCH_SAMPLERS)}")
    if diffusers_compiled not in DIFFUSERS_COMPILED:
        raise UserError(f"unknown --diffusers-compiled {diffusers_compiled!r}; choose one of {', '.join(DIFFUSERS_COMPILED)}")
    pipeline = {"ddim": "DDIMPipeline", "ddpm": "DDPMPipeline", "dpmsolver": "DPMSolverMultistepScheduler",
                "unipc": "UniPCMultistepScheduler"}[sampler]
    sampler_options = dict(sampler_options or {})
    out.mkdir(parents=True, exist_ok=True)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    # The fp32 weights, read once: exported to ONNX, counted in FLOPs, described in the report
    # (the diffusers pipelines load their own copy, which they move and cast).
    source = bench_source(checkpoint, "fp32")
    # The sampler checked before any export; with explicit timesteps (steps None) their count is the steps.
    steps = bench_sampler(sampler, source.metadata.schedule, steps, tuned, **sampler_options).num_steps
    # This run's ONNX files and engines: exported afresh (never a stale file of other weights) and
    # read into memory by the backends as they load, so the folder goes once they are loaded.
    # Packages stay on disk to the end, for their start-up (the folder also goes if the run fails:
    # TemporaryDirectory removes it when the object is collected).
    packages = tempfile.TemporaryDirectory(prefix="ddpmrt-bench-packages-")
    with tempfile.TemporaryDirectory(prefix="ddpmrt-bench-") as work:
        models, missing = _backends(checkpoint, source, Path(work), threads, backends, Path(packages.name), batches)
    if not models:
        raise UserError("none of the backends asked for runs here: "
                        + "; ".join(f"{name} {why}" for name, why in missing.items()))
    env = environment(threads)
    flops = network_flops_per_image(source)
    gpu_peak = peak or peak_tflops((env.get("gpu") or {}).get("name"))
    results = []
    jobs = [(name, b) for name in models for b in batches]
    pipes = _diffusers_pipes(checkpoint, models, pipeline, sampler, diffusers_compiled) if compare_diffusers else []
    startups = [name for name in models if name.startswith("inductor-")] if startup else []
    with tqdm(total=len(jobs) + len(batches) * len(pipes) + len(startups), disable=not progress, desc="bench") as bar:
        for name, batch in jobs:
            model = models[name]
            profile = profile_device_loop if getattr(model, "device_loop", None) is not None else profile_sampler
            row = profile(model, bench_sampler(sampler, model.schedule, steps, tuned, **sampler_options), batch,
                          runs=runs, warmup=warmup)
            row["backend"] = name
            row["precision"] = getattr(model, "precision", None) or "fp32"
            results.append(row)
            bar.update(1)
        diffusers_rows = []
        for name, device, compiled, pipe in pipes:
            for batch in batches:
                row = time_diffusers(pipe, batch, steps, runs, warmup, sampler)
                row["backend"], row["device"], row["compiled"] = name, device, compiled
                diffusers_rows.append(row)
                bar.update(1)
        startup_rows = []
        for name in startups:
            startup_rows.append(_startup_row(checkpoint, name, models[name], steps, threads))
            bar.update(1)
    packages.cleanup()
    _add_derived_figures(results, diffusers_rows, flops, steps, gpu_peak, peak, threads)
    metadata = source.metadata
    report = {"model": {"source": str(checkpoint), "config": metadata.model_config,
                        "image_shape": list(metadata.image_shape),
                        "gflop_per_forward_per_image": flops / 1e9},
              "sampler": bench_sampler(sampler, next(iter(models.values())).schedule, steps, tuned, **sampler_options).config,
              "results": results,
              "diffusers": diffusers_rows, "startup": startup_rows, "peak_tflops": gpu_peak, "unavailable": missing,
              "environment": env}
    write_report(report, out)
    return report


def _diffusers_pipes(checkpoint: Path, models: dict, pipeline: str, sampler: str, diffusers_compiled: str) -> list:
    """diffusers as users run it, on the devices ddpmrt's rows use: fp32 on the CPU, fp16 on a GPU;
    eager, and with torch.compile where asked.  (name, device, compiled, pipeline) each."""
    pipes = []
    on_cpu = any(_on_cpu(name) for name in models)
    on_gpu = torch.cuda.is_available() and not all(_on_cpu(name) for name in models)
    for compiled in (False, True):
        if compiled and diffusers_compiled == "never":
            continue
        suffix = "compiled-" if compiled else ""
        if on_cpu and (not compiled or diffusers_compiled == "always"):
            pipes.append((f"diffusers-{pipeline}-{suffix}cpu", "cpu", compiled,
                          diffusers_pipeline(checkpoint, "cpu", sampler=sampler, compiled=compiled)))
        if on_gpu:
            pipes.append((f"diffusers-{pipeline}-{suffix}cuda-fp16", "cuda", compiled,
                          diffusers_pipeline(checkpoint, "cuda", torch.float16, sampler=sampler, compiled=compiled)))
    return pipes


def _startup_row(checkpoint: Path, name: str, model, steps: int, threads: int) -> dict:
    """Cold and warm start of an inductor backend: fresh processes to their first image."""
    device = "cuda" if name.endswith("-cuda") else "cpu"
    row = {"backend": name, "batch": 1, "steps": steps}
    model_file = checkpoint
    if name in PACKAGE_BACKENDS:  # built once ahead of time, then loaded by every process
        model_file = Path(model.source)
        row["build_s"] = model.sidecar["build_seconds"]
    row.update(measure_startup(model_file, "inductor", device, steps, threads))
    return row


def _on_cpu(backend: str) -> bool:
    return backend.endswith("-cpu") or backend == "openvino-default"


def _add_derived_figures(results: list, diffusers_rows: list, flops: float, steps: int, gpu_peak, peak,
                         threads: int = 1) -> None:
    """TFLOP/s and % of peak of every row; each ddpmrt row's speed-up over diffusers on its device."""
    for row in results + diffusers_rows:
        seconds_per_image = row["ms_per_image"]["median"] / 1e3
        row["tflops"] = flops * steps / seconds_per_image / 1e12
        device = "cpu" if _on_cpu(row["backend"]) else "cuda"
        if device == "cpu":
            # The CPU's peak in the precision the row computed in (engine/cpu.py's estimate), or --peak-tflops.
            cpu_peak = peak or cpu.peak_tflops(row.get("precision", "fp32"), threads)
            row["peak_tflops"] = cpu_peak
            row["percent_of_peak"] = 100 * row["tflops"] / cpu_peak if cpu_peak else None
        else:
            row["percent_of_peak"] = 100 * row["tflops"] / gpu_peak if gpu_peak else None
    for row in results:
        device = "cpu" if _on_cpu(row["backend"]) else "cuda"
        for compiled, key in ((False, "speedup_vs_diffusers"), (True, "speedup_vs_diffusers_compiled")):
            ref = next((d for d in diffusers_rows
                        if d["batch"] == row["batch"] and d["device"] == device and d["compiled"] == compiled), None)
            if ref:
                row[key] = ref["ms_per_image"]["median"] / row["ms_per_image"]["median"]


