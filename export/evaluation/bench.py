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

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ddpmrt.engine import cpu, load_model, make_sampler
from ddpmrt.engine.artifacts.io import atomic_write
from ddpmrt.engine.errors import UserError, install_hint
from ddpmrt.engine.profiling import environment, gpu_memory_used_mb, peak_rss_mb, profile_device_loop, profile_sampler, summarize
from ddpmrt.export.conversion.onnx_export import export_onnx
from ddpmrt.export.evaluation.bench_backends import (  # noqa: F401
    BENCH_BACKENDS,
    BY_NAME_BACKENDS,
    CALIBRATED_BACKENDS,
    DIFFUSERS_COMPILED,
    PACKAGE_BACKENDS,
)
from ddpmrt.export.evaluation.plots import pyplot, save_figure, write_markdown
from ddpmrt.export.model.sources import from_checkpoint, from_diffusers

# Dense fp16/bf16 tensor-core peak by GPU name (datasheets; shared/reference/anchors.md), for % of peak.
# The first name that occurs in the device name wins; --peak-tflops overrides.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
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


def bench_sampler(name: str, schedule, steps: int):
    """The sampler both sides run, respaced to `steps` (make_sampler, the factory of every command)."""
    if name not in BENCH_SAMPLER_OPTIONS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(BENCH_SAMPLERS)}")
    return make_sampler(name, schedule, steps, **BENCH_SAMPLER_OPTIONS[name])


def _source(model: Path, precision: str):
    """The weights as an export Source: a ddpmrt checkpoint or a diffusers pipeline / unet folder."""
    from ddpmrt.engine.backends import is_diffusers_folder

    return from_diffusers(model, precision) if is_diffusers_folder(model) else from_checkpoint(model, precision)


def _diffusers_schedule(schedule) -> dict:
    """A diffusers scheduler's schedule arguments for a ddpmrt NoiseSchedule (any kind, by its betas if need be)."""
    kinds = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
    args = {"num_train_timesteps": schedule.num_train_timesteps, "timestep_spacing": "leading"}
    if schedule.kind in ("linear", "scaled_linear"):
        return {**args, "beta_schedule": kinds[schedule.kind], "beta_start": schedule.params["beta_start"],
                "beta_end": schedule.params["beta_end"]}
    if schedule.kind == "cosine" and schedule.params.get("s", 0.008) == 0.008 and schedule.params.get("max_beta", 0.999) == 0.999:
        return {**args, "beta_schedule": "squaredcos_cap_v2"}
    return {**args, "trained_betas": schedule.betas.tolist()}


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
    for name, backend in (("torch-cpu", "torch"), ("inductor-cpu", "inductor")):
        if name in wanted:
            models[name] = load_model(checkpoint, backend=backend)
    for name, backend, graph in (("torch-cuda", "torch", False), ("torch-cuda-graph", "torch", True),
                                 ("inductor-cuda", "inductor", True)):
        if name not in wanted:
            continue
        if torch.cuda.is_available():
            models[name] = load_model(checkpoint, backend=backend, device="cuda", cuda_graph=graph)
        else:
            missing[name] = "needs a CUDA GPU and PyTorch with CUDA"


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
        source16 = _source(checkpoint, "fp16")
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
        build_aot_package(_source(checkpoint, "fp32"), package, device, precision,
                          BatchProfile(1, max(batches), max(batches)))
        models[name] = load_model(package, device=device)


def diffusers_pipeline(checkpoint: Path, device: str, dtype=torch.float32, sampler: str = "ddim", compiled: bool = False):
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    from ddpmrt.export.model.diffusers_convert import to_diffusers

    source = _source(checkpoint, "fp32")
    # A ddpmrt U-Net is converted to UNet2DModel; a diffusers folder's UNet2DModel is used as it is.
    unet = source.module if source.unwrap is not None else to_diffusers(source.module)
    schedule = _diffusers_schedule(source.metadata.schedule)
    if sampler == "ddim":
        pipe = DDIMPipeline(unet=unet,
                            scheduler=DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=True))
    elif sampler == "ddpm":
        pipe = DDPMPipeline(unet=unet,
                            scheduler=DDPMScheduler(**schedule, clip_sample=True, variance_type="fixed_small"))
    else:
        from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

        if sampler == "dpmsolver":
            scheduler = DPMSolverMultistepScheduler(**schedule, solver_order=2, algorithm_type="dpmsolver++",
                                                    final_sigmas_type="zero")
        else:
            scheduler = UniPCMultistepScheduler(**schedule, solver_order=2, predict_x0=True, final_sigmas_type="zero")
        pipe = _SchedulerLoop(unet, scheduler)
    pipe = pipe.to(device)
    if dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if compiled:
        # The one line an experienced diffusers user adds: Inductor plus its own CUDA graphs.
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
    return pipe


class _SchedulerLoop:
    """A UNet2DModel and a multistep scheduler in the sampling loop of diffusers' unconditional pipelines.

    DDPMPipeline's loop is what a diffusers user writes around these schedulers, but it passes
    `generator` to `scheduler.step`, which UniPCMultistepScheduler does not take: this is that loop
    (noise, `set_timesteps`, UNet, `step`, the same conversion to images) without it.
    """

    def __init__(self, unet, scheduler):
        self.unet, self.scheduler = unet, scheduler

    @property
    def device(self):
        return next(self.unet.parameters()).device

    def to(self, device=None, dtype=None):
        self.unet = self.unet.to(device=device, dtype=dtype)
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        pass

    @torch.no_grad()
    def __call__(self, batch_size: int, num_inference_steps: int, generator=None, output_type: str = "np"):
        from diffusers.utils.torch_utils import randn_tensor

        size = self.unet.config.sample_size
        shape = (batch_size, self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        dtype = next(self.unet.parameters()).dtype
        image = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            image = self.scheduler.step(self.unet(image, t).sample, t, image).prev_sample
        return (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()


def _time_diffusers(pipe, batch: int, steps: int, runs: int, warmup: int, sampler: str) -> dict:
    totals, first_run_s = [], None
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    extra = {"eta": 0.0} if sampler == "ddim" else {}  # DDPMPipeline takes no eta
    for run in range(warmup + runs):
        start = time.perf_counter()
        pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(run),
             output_type="np", **extra)  # returns host arrays: synchronized, like ddpmrt's loop
        if run == 0:
            first_run_s = time.perf_counter() - start  # compilation included, where there is one
        if run >= warmup:
            totals.append(time.perf_counter() - start)
    row = {"batch": batch, "steps": steps, "runs": runs, "warmup": warmup, "first_run_s": first_run_s,
           "total_s": summarize(totals),
           "ms_per_image": summarize(1e3 * t / batch for t in totals),
           "images_per_s": summarize(batch / t for t in totals)}
    row["peak_rss_mb"] = peak_rss_mb()
    if pipe.device.type == "cuda":
        row["torch_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        row["gpu_memory_used_mb"] = gpu_memory_used_mb()
    return row


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


def run_bench(checkpoint: Path, out: Path, batches=(1, 8, 64), steps: int = 20, runs: int = 10, warmup: int = 2,
              threads: int | None = None, compare_diffusers: bool = True, progress: bool = True,
              backends=BENCH_BACKENDS, sampler: str = "ddim", diffusers_compiled: str = "auto",
              startup: bool = True, peak: float | None = None) -> dict:
    from tqdm.auto import tqdm

    if sampler not in BENCH_SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(BENCH_SAMPLERS)}")
    if diffusers_compiled not in DIFFUSERS_COMPILED:
        raise UserError(f"unknown --diffusers-compiled {diffusers_compiled!r}; choose one of {', '.join(DIFFUSERS_COMPILED)}")
    pipeline = {"ddim": "DDIMPipeline", "ddpm": "DDPMPipeline", "dpmsolver": "DPMSolverMultistepScheduler",
                "unipc": "UniPCMultistepScheduler"}[sampler]
    out.mkdir(parents=True, exist_ok=True)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    # The fp32 weights, read once: exported to ONNX, counted in FLOPs, described in the report
    # (the diffusers pipelines load their own copy, which they move and cast).
    source = _source(checkpoint, "fp32")
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
            row = profile(model, bench_sampler(sampler, model.schedule, steps), batch, runs=runs, warmup=warmup)
            row["backend"] = name
            row["precision"] = getattr(model, "precision", None) or "fp32"
            results.append(row)
            bar.update(1)
        diffusers_rows = []
        for name, device, compiled, pipe in pipes:
            for batch in batches:
                row = _time_diffusers(pipe, batch, steps, runs, warmup, sampler)
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
              "sampler": bench_sampler(sampler, next(iter(models.values())).schedule, steps).config, "results": results,
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


def _cell(value, fmt: str, none: str = "") -> str:
    return none if value is None else format(value, fmt)


def _stage(row: dict, key: str, fmt: str) -> str:
    """A stage column: its median, or why there is none (the stages ran inside one CUDA graph)."""
    if row.get(key) is not None:
        return format(row[key]["median"], fmt)
    return "in graph" if "graph" in row.get("stages", "") else ""


def _flops(row: dict) -> str:
    if row.get("tflops") is None:
        return ""
    # Three significant digits: a CPU row's 0.0034 TFLOP/s is not "0.00".
    return f"{row['tflops']:.3g}" + (f" ({row['percent_of_peak']:.2g}%)" if row.get("percent_of_peak") is not None else "")


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}x" if key in row else ""


def write_report(report: dict, out: Path) -> None:
    with atomic_write(out / "bench.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    env = report["environment"]
    title = f"{report['sampler']['sampler'].upper()}-{report['sampler']['num_steps']}"
    peak = report.get("peak_tflops")
    lines = [f"# ddpmrt bench: {title}, {report['model']['config'].get('ch')}-channel U-Net "
             f"{'x'.join(map(str, report['model']['image_shape']))}", "",
             f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores, {env['threads']} threads)"
             + (f", GPU {env['gpu']['name']}" if env.get("gpu") else ", no GPU")
             + f"; torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, diffusers {env.get('diffusers')}.",
             "Medians over the runs after warm-up (spread: 25th-75th percentile of ms/image). GPU rows run the "
             "device loop: end to end by wall clock, network and update by CUDA events (a loop replayed as one CUDA "
             "graph has no separate stages: 'in graph'), host = enqueue time; 'vs diffusers' compares with diffusers' "
             "pipeline on the same device (fp32 on the CPU, fp16 on a GPU) as shipped, 'vs compiled' with its U-Net "
             "under torch.compile(mode=\"reduce-overhead\", fullgraph=True). "
             f"TFLOP/s: {report['model'].get('gflop_per_forward_per_image', 0):.2f} GFLOP per image per network call"
             + (f", % of a {peak:g} TFLOP/s dense fp16 peak" if peak else "")
             + "; CPU rows: % of the peak of the precision the row computed in, estimated from the CPU's matrix "
             f"instructions ({', '.join(env.get('cpu_matrix_instructions') or []) or 'none reported'}) and clock"
             + ". RSS: the process's peak resident memory when the row finished (rows run in order, so it only grows); "
             "GPU: device memory in use after the row.", "",
             ]
    header = ["backend", "precision", "batch", "network ms/step", "update ms/step", "host ms/step", "ms/image (p25-p75)",
              "images/s", "TFLOP/s", "vs diffusers", "vs compiled", "peak RSS MB", "GPU MB"]
    table = []
    for r in report["results"]:
        ms = r["ms_per_image"]
        table.append([r["backend"], r.get("precision", ""), str(r["batch"]), _stage(r, "network_ms_per_step", ".2f"),
                      _stage(r, "update_ms_per_step", ".3f"), f"{r['host_ms_per_step']['median']:.3f}",
                      f"{ms['median']:.1f} ({ms['p25']:.1f}-{ms['p75']:.1f})", f"{r['images_per_s']['median']:.1f}",
                      _flops(r), _ratio(r, "speedup_vs_diffusers"), _ratio(r, "speedup_vs_diffusers_compiled"),
                      _cell(r.get("peak_rss_mb"), ".0f"), _cell(r.get("gpu_memory_used_mb"), ".0f")])
    for d in report["diffusers"]:
        ms = d["ms_per_image"]
        table.append([d["backend"], "fp32" if d.get("device") == "cpu" else "fp16", str(d["batch"]), "", "", "",
                      f"{ms['median']:.1f} ({ms['p25']:.1f}-{ms['p75']:.1f})", f"{d['images_per_s']['median']:.1f}",
                      _flops(d), "" if d.get("compiled") else "1.00x", "1.00x" if d.get("compiled") else "",
                      _cell(d.get("peak_rss_mb"), ".0f"), _cell(d.get("gpu_memory_used_mb"), ".0f")])
    # A column with nothing in any row (GPU MB on the CPU, 'vs compiled' without a compiled pipeline) is left out.
    kept = [i for i in range(len(header)) if any(row[i] for row in table)]
    lines += ["| " + " | ".join(header[i] for i in kept) + " |", "| " + " | ".join("---" for _ in kept) + " |"]
    lines += ["| " + " | ".join(row[i] for i in kept) + " |" for row in table]
    compiled = [d for d in report["diffusers"] if d.get("compiled")]
    if report.get("startup") or compiled:
        lines += ["", "Start-up: seconds from a fresh process to its first image (batch 1); cold with an empty "
                  "Inductor cache, warm with the cache a first process left. An inductor package is built once "
                  "ahead of time (build s: `export-engine --flavour inductor`), then every process loads the "
                  "`.pt2` (cold: the first after the build). diffusers-compiled: its first pipeline call in this "
                  "process (compilation and CUDA-graph recording).", "",
                  "| backend | build s | cold start s | warm start s | first call s |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['backend']} | {_cell(r.get('build_s'), '.1f')} | {r['cold_start_s']:.1f} | "
                  f"{r['warm_start_s']:.1f} | |" for r in report.get("startup", [])]
        lines += [f"| {d['backend']} (batch {d['batch']}) | | | | {_cell(d.get('first_run_s'), '.1f')} |"
                  for d in compiled]
    graphed = [r for r in report["results"] if r.get("graph")]
    if graphed:
        lines += ["", "CUDA graphs replayed (one per batch and step count): what each holds, and the host's time in "
                  "one launch.", "", "| backend | batch | nodes | by type | one chain | host ms per launch |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['backend']} | {r['batch']} | {r['graph']['nodes']} | "
                  + ", ".join(f"{k} {v}" for k, v in r["graph"]["types"].items())
                  + f" | {({True: 'yes', False: 'no'}).get(r['graph']['straight_line'], '?')} | "
                  f"{r['host_ms_per_step']['median'] * r['steps']:.3f} |" for r in graphed]
    if report["unavailable"]:
        lines += ["", "Not measured here:", ""] + [f"- {k}: {v}" for k, v in report["unavailable"].items()]
    lines += ["", "![time per image](bench.png)", ""]
    write_markdown(out / "bench.md", lines)
    _plot(report, out / "bench.png")


def _plot(report: dict, path: Path) -> None:
    plt = pyplot()

    rows = report["results"] + report["diffusers"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        values = [next((r["ms_per_image"]["median"] for r in rows if r["backend"] == backend and r["batch"] == b), np.nan)
                  for b in batches]
        ax.bar(np.arange(len(batches)) + i * width, values, width, label=backend)
    ax.set_xticks(np.arange(len(batches)) + width * (len(backends) - 1) / 2, [f"batch {b}" for b in batches])
    values = [r["ms_per_image"]["median"] for r in rows]
    if max(values) > 20 * min(values):  # bars start at zero on a linear axis unless the range needs a log one
        ax.set_yscale("log")
    ax.set_ylabel("ms per image (median)")
    ax.set_title(f"{report['sampler']['sampler'].upper()}-{report['sampler']['num_steps']} end to end")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
