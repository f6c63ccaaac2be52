"""The `ddpmrt` command line: train, sample, export-onnx, export-engine, check, bench, report, demo, serve.

torch is imported only by the subcommands that need it, so `ddpmrt sample` on an ONNX
model works in an environment without PyTorch.  User mistakes (UserError) are printed as
one line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from ddpmrt.engine.errors import UserError

# -- numeric options: ranges checked while parsing, so a bad value is one line before any work ---

MAX_BATCH = 65536          # images per call; more is a loop over calls
MAX_THREADS = 4096


def int_in(low: int, high: int):
    """argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, {high}]")
        return value
    return parse


def real_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    """argparse type: a finite number in [low, high] (open ends where asked)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not math.isfinite(value) or below or above:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{text} is outside {interval}")
        return value
    return parse


THREADS = int_in(1, MAX_THREADS)


def steps_arg(text: str) -> int:
    """argparse type of --steps: a positive integer; its upper limit, the model's training timesteps,
    is checked once the model is known, in the same words (samplers.STEPS_RULE)."""
    from ddpmrt.engine.samplers import STEPS_RULE

    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= 10 ** 7:
        raise argparse.ArgumentTypeError(f"{STEPS_RULE}, got {text!r}")
    return value


def _train(ns: argparse.Namespace) -> None:
    from ddpmrt.engine.artifacts.io import check_output_dir
    from ddpmrt.export.train import TrainArgs, resume_args, train

    check_output_dir(ns.out)
    fields = TrainArgs.__dataclass_fields__
    given = {k: v for k, v in vars(ns).items() if k in fields and v is not None}
    if not ns.resume:
        if ns.dataset is None or ns.iters is None:
            raise UserError("a new run needs --dataset and --iters (--resume continues the run in --out with its own)")
        return train(TrainArgs(**given))
    # --resume: the saved run's settings; an option given here overrides its saved value, and says so.
    args, overridden = resume_args(ns.out, {k: v for k, v in given.items() if k != "resume"})
    print(f"ddpmrt train: resuming {ns.out} with its saved settings"
          + (f"; overriding {', '.join(overridden)}" if overridden else ""))
    train(args)


def _sample(ns: argparse.Namespace) -> None:
    from ddpmrt.engine import load_model, make_sampler, save_images
    from ddpmrt.engine.artifacts.io import check_output_file

    out = check_output_file(ns.out, (".png", ".npz"))
    if ns.batch < 1:
        raise UserError("--batch must be at least 1")
    schedule, image_shape = _description(ns)
    if ns.from_diffusers:
        from ddpmrt.export.sources import find_diffusers_unet

        find_diffusers_unet(ns.from_diffusers)  # a one-line error for anything but a pipeline or unet/ folder
    elif not ns.model:
        raise UserError("name a model (checkpoint, shipped name, .onnx or .plan) or pass --from-diffusers DIR")
    model = load_model(ns.from_diffusers or ns.model, backend=ns.backend, device=ns.device, threads=ns.threads,
                       schedule=schedule, image_shape=image_shape, cuda_graph=ns.cuda_graph, precision=ns.precision)
    if ns.cuda_graph and getattr(model, "device_loop", None) is None:
        raise UserError("--cuda-graph needs a GPU backend: a .plan engine, or a checkpoint with --device cuda "
                        "(and cuda-python with NVRTC: pip install 'ddpmrt[gpu]')")
    sampler = make_sampler(ns.sampler, model.schedule, ns.steps, **_sampler_options(ns))
    if model.backend == "inductor" and not ns.quiet:
        # The first step waits for TorchInductor; without a word it would look like a hang.  (Only inductor:
        # OpenVINO and ONNX Runtime compile at load, in a second or two.)
        print(f"compiling the network with inductor ({model.precision}; 30-60 s in a new process on a CPU); "
              "--backend torch runs it eager", file=sys.stderr)
    images = sampler.sample(model, (ns.batch, *model.image_shape), seed=ns.seed, progress=not ns.quiet)
    save_images(images, out)
    print(f"wrote {ns.batch} samples ({ns.sampler.upper()}, {sampler.num_steps} steps, seed {ns.seed}; "
          f"{_backend_description(model)}) to {out}")


def _backend_description(model) -> str:
    """What ran: the backend, its device and the precision it computed in (auto resolves per CPU)."""
    precision = getattr(model, "precision", None) or getattr(getattr(model, "metadata", None), "precision", "fp32")
    return f"{model.backend} on {getattr(model, 'device', 'cuda')}, {precision}"


def _sampler_options(ns: argparse.Namespace) -> dict:
    """The sampler options given on the command line; make_sampler fills in the defaults and refuses
    the ones this sampler does not take (--eta with ddpm)."""
    from ddpmrt.engine.sampler_factory import ALL_OPTIONS

    options = {key: getattr(ns, key) for key in ALL_OPTIONS if getattr(ns, key, None) is not None}
    if "corrector" in options:
        options["corrector"] = options["corrector"] == "on"
    return options


def _description(ns: argparse.Namespace):
    """--schedule / --image-shape: what a model file without ddpmrt metadata cannot say itself."""
    from ddpmrt.engine.artifacts.metadata import parse_image_shape_arg, parse_schedule_arg

    schedule = parse_schedule_arg(ns.schedule) if getattr(ns, "schedule", None) else None
    image_shape = parse_image_shape_arg(ns.image_shape) if getattr(ns, "image_shape", None) else None
    return schedule, image_shape


def _export_source(model: str | None, diffusers_folder: str | None, schedule, precision: str):
    """The weights to export: a checkpoint or shipped name, or a diffusers folder (whose schedule `schedule` may give)."""
    from ddpmrt.export.sources import from_checkpoint, from_diffusers

    if diffusers_folder:
        return from_diffusers(diffusers_folder, precision, schedule)
    if not model:
        raise UserError("name a model: a checkpoint directory, a shipped model name, or --from-diffusers DIR")
    return from_checkpoint(model, precision)


def _batch_arg(text: str):
    if text == "dynamic":
        return text
    if text.isdigit() and 0 < int(text) <= MAX_BATCH:
        return int(text)
    raise UserError(f"--batch {text!r}: use dynamic or an integer in [1, {MAX_BATCH}]")


def _export_onnx(ns: argparse.Namespace) -> None:
    from ddpmrt.engine.artifacts.io import check_output_file
    from ddpmrt.export.onnx_export import export_onnx

    out = check_output_file(ns.out, (".onnx",))
    if ns.precision == "int8":
        return _export_int8(ns, out)
    source = _export_source(ns.model, ns.from_diffusers, _description(ns)[0], ns.precision)
    result = export_onnx(source.module, source.metadata, out, opset=ns.opset, batch=_batch_arg(ns.batch),
                         unwrap=source.unwrap)
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({ns.precision}, {size_mb:.1f} MB) in {result.seconds:.1f} s")


def _export_int8(ns: argparse.Namespace, out: Path) -> None:
    """The fp32 export, then its int8 copy calibrated on its own trajectories (export/quantize.py)."""
    import tempfile

    from ddpmrt.export.onnx_export import export_onnx
    from ddpmrt.export.quantize import Calibration, quantize_onnx

    calibration = Calibration(images=ns.calibration_images, steps=ns.calibration_steps)
    source = _export_source(ns.model, ns.from_diffusers, _description(ns)[0], "fp32")
    calibration.check(source.metadata.schedule.num_train_timesteps)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model-fp32.onnx"
        export_onnx(source.module, source.metadata, fp32, opset=ns.opset, batch=_batch_arg(ns.batch),
                    unwrap=source.unwrap)
        result = quantize_onnx(fp32, out, calibration)
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} (int8, calibrated on {result.calibration_inputs} inputs of DDIM-{calibration.steps} "
          f"trajectories; ε within {result.relative_error:.1%} of fp32's range; {size_mb:.1f} MB) in {result.seconds:.1f} s")


def _onnx_is_current(path: Path, metadata, opset: int) -> bool:
    """An existing ONNX file exported from the same weights, precision, opset and ddpmrt version."""
    import onnx

    from ddpmrt.export.engine_build import read_onnx_metadata

    if not path.is_file():
        return False
    try:
        existing = read_onnx_metadata(path)
        model_opset = max(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
    except (UserError, ValueError):
        return False
    return (existing.source_sha256 == metadata.source_sha256 and existing.precision == metadata.precision
            and existing.ddpmrt_version == metadata.ddpmrt_version and model_opset == opset)


def _export_engine(ns: argparse.Namespace) -> None:
    if ns.flavour == "inductor":
        return _export_inductor_package(ns)
    schedule, image_shape = _description(ns)
    export_engine(ns.model, ns.out, from_diffusers=ns.from_diffusers, precision=ns.precision or "fp16", batch=ns.batch,
                  targets=ns.targets, flavour=ns.flavour, optimization_level=ns.optimization_level, opset=ns.opset,
                  force=ns.force, schedule=schedule, image_shape=image_shape, sanitize=ns.sanitize, check=ns.check)


def export_engine(model: str | None, out, from_diffusers: str | None = None, precision: str = "fp16",
                  batch: str = "1:8:64", targets: str = "auto", flavour: str = "auto", optimization_level: int | None = None,
                  opset: int = 18, force: bool = False, schedule=None, image_shape=None, sanitize: bool = False,
                  check: bool = False) -> None:
    """`export-engine`: the ONNX export (unless given an .onnx, or one that is up to date), then the engine build.

    `schedule` and `image_shape` describe an .onnx without ddpmrt metadata (or a bare diffusers UNet folder).
    `sanitize` runs Polygraphy's constant folding first; `check` compares the ONNX and the engine
    against PyTorch fp32 afterwards (`ddpmrt check`), into a folder beside the engine.
    """
    from ddpmrt.engine.artifacts.io import check_output_file
    from ddpmrt.engine.artifacts.sidecar import sidecar_path
    from ddpmrt.engine.backends.tensorrt_flavour import import_flavour
    from ddpmrt.export.engine_build import BatchProfile, build_engine, parse_targets, read_onnx_metadata
    from ddpmrt.export.sources import sha256_file

    plan = check_output_file(out, (".plan", ".engine"))
    # Everything written beside the engine: its ONNX, the sidecar and TensorRT's timing cache.
    for companion, suffixes in ((plan.with_suffix(".onnx"), (".onnx",)), (sidecar_path(plan), (".json",)),
                                (plan.with_name(plan.name + ".timing-cache"), (".timing-cache",))):
        check_output_file(companion, suffixes, option=f"--out {plan} writes")
    trt_flavour = import_flavour(flavour)          # fail early, before a long export
    target_list = parse_targets(targets, trt_flavour)
    profile = BatchProfile.parse(batch)
    if sanitize or check:
        from ddpmrt.export.polygraphy_tools import load_polygraphy

        load_polygraphy(trt_flavour.is_rtx)
    if check and (not model or model.lower().endswith(".onnx")) and not from_diffusers:
        raise UserError("--check compares against the PyTorch model: give a checkpoint, shipped name or "
                        "--from-diffusers, not an .onnx")

    if model and model.lower().endswith(".onnx") and not from_diffusers:
        onnx_path = Path(model)
        if not onnx_path.is_file():
            raise UserError(f"{onnx_path} not found")
        metadata = read_onnx_metadata(onnx_path, schedule, image_shape)
    else:
        from ddpmrt.export.onnx_export import export_onnx

        source = _export_source(model, from_diffusers, schedule, precision)
        onnx_path = plan.with_suffix(".onnx")
        metadata = source.metadata
        if _onnx_is_current(onnx_path, metadata, opset):
            print(f"{onnx_path} is up to date")
        else:
            result = export_onnx(source.module, metadata, onnx_path, opset=opset, unwrap=source.unwrap)
            print(f"wrote {onnx_path} ({metadata.precision}) in {result.seconds:.1f} s")

    result = build_engine(onnx_path, plan, metadata, sha256_file(onnx_path), trt_flavour, profile, target_list,
                          optimization_level, force=force, sanitize=sanitize)
    what = (f"{trt_flavour.name} {trt_flavour.version}, {metadata.precision}, batch {profile}, "
            f"targets {','.join(result.sidecar['targets'])}")
    size_mb = result.sidecar["engine_bytes"] / 1e6
    if result.cached:
        print(f"{plan} is up to date ({what}, {size_mb:.1f} MB); --force rebuilds")
    else:
        print(f"built {plan} ({what}) in {result.seconds:.1f} s, {size_mb:.1f} MB")
    if check:
        from ddpmrt.export.check import run_check, summary

        report_dir = plan.with_name(plan.stem + "-check")
        report = run_check(_export_source(model, from_diffusers, schedule, "fp32"), [onnx_path, plan], report_dir)
        print(f"{summary(report)} (report: {report_dir / 'check.md'})")


def _check(ns: argparse.Namespace) -> None:
    """`ddpmrt check MODEL [ARTIFACT ...]`: artifacts against PyTorch fp32 (export/check.py)."""
    from ddpmrt.engine.artifacts.io import check_output_dir
    from ddpmrt.export.check import ARTIFACT_SUFFIXES, describe, run_check, summary
    from ddpmrt.export.polygraphy_tools import load_polygraphy

    out = check_output_dir(ns.out)
    load_polygraphy()  # a missing Polygraphy is one line before any work
    if ns.model and ns.model.lower().endswith(ARTIFACT_SUFFIXES) and not ns.from_diffusers:
        raise UserError(f"check compares artifacts against the PyTorch model: give the checkpoint or shipped name "
                        f"first, e.g. ddpmrt check digits {ns.model}")
    for artifact in ns.artifacts:
        describe(Path(artifact))  # damaged or foreign files: one line before the export
    source = _export_source(ns.model, ns.from_diffusers, _description(ns)[0], "fp32")
    exported = []
    if not ns.no_export:  # every artifact that can be made here: the fp32 and the fp16 ONNX
        from ddpmrt.export.onnx_export import export_onnx

        for precision in ("fp32", "fp16"):
            onnx_path = out / f"model-{precision}.onnx"
            at_precision = source if precision == "fp32" else _export_source(ns.model, ns.from_diffusers,
                                                                              _description(ns)[0], precision)
            export_onnx(at_precision.module, at_precision.metadata, onnx_path, check=False, unwrap=at_precision.unwrap)
            exported.append(onnx_path)
    report = run_check(source, exported + [Path(a) for a in ns.artifacts], out, seed=ns.seed)
    print((out / "check.md").read_text(encoding="utf-8"))
    print(summary(report))


def _export_inductor_package(ns: argparse.Namespace) -> None:
    """export-engine --flavour inductor: an AOTInductor .pt2 and its sidecar (export/aot_package.py)."""
    import torch

    from ddpmrt.engine import cpu
    from ddpmrt.engine.artifacts.io import check_output_file
    from ddpmrt.engine.artifacts.sidecar import sidecar_path
    from ddpmrt.export.aot_package import build_aot_package
    from ddpmrt.export.engine_build import BatchProfile

    out = check_output_file(ns.out, (".pt2",), option="--out (with --flavour inductor)")
    check_output_file(sidecar_path(out), (".json",), option=f"--out {out} writes")
    device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # The device's default: fp16 on CUDA; on the CPU what --precision auto means there (bf16 where it is faster).
    precision = ns.precision or ("fp16" if device == "cuda" else cpu.resolve_cpu_precision("auto"))
    if ns.model and ns.model.lower().endswith(".onnx"):
        raise UserError("--flavour inductor compiles the PyTorch model: give a checkpoint, shipped name or "
                        "--from-diffusers, not an .onnx")
    source = _export_source(ns.model, ns.from_diffusers, _description(ns)[0], "fp32")
    result = build_aot_package(source, out, device, precision, BatchProfile.parse(ns.batch), force=ns.force)
    size_mb = result.sidecar["package_bytes"] / 1e6
    what = f"AOTInductor, {precision} on {device}, batch {ns.batch}"
    if result.cached:
        print(f"{out} is up to date ({what}, {size_mb:.1f} MB); --force rebuilds")
    else:
        print(f"built {out} ({what}) in {result.seconds:.1f} s, {size_mb:.1f} MB")


def _int_list(text: str, option: str, low: int = 1, high: int = MAX_BATCH) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < low or max(values) > high or len(set(values)) != len(values):
        raise UserError(f"{option} {text!r}: use distinct integers in [{low}, {high}] separated by commas, e.g. 1,8,64")
    return values


def _bench(ns: argparse.Namespace) -> None:
    import tempfile

    from ddpmrt.engine.artifacts.io import check_output_dir
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.export.bench import BENCH_BACKENDS, BY_NAME_BACKENDS, run_bench
    from ddpmrt.export.checkpoint import write_random_checkpoint
    from ddpmrt.export.sources import find_diffusers_unet
    from ddpmrt.export.unet import CONFIGS

    check_output_dir(ns.out)
    batches = _int_list(ns.batch, "--batch")
    backends = BENCH_BACKENDS if ns.backends == "all" else [b.strip() for b in ns.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BENCH_BACKENDS + BY_NAME_BACKENDS]
    if unknown or not backends:
        raise UserError(f"--backends {ns.backends!r}: choose all or some of {', '.join(BENCH_BACKENDS + BY_NAME_BACKENDS)}")
    if ns.runs < 1 or ns.warmup < 0 or ns.steps < 1:
        raise UserError("--runs and --steps must be positive and --warmup non-negative")
    if not ns.no_diffusers:
        import importlib.util

        if importlib.util.find_spec("diffusers") is None:  # the peer rows need it: say so before any work
            raise UserError("bench compares with diffusers, which is not installed: pip install diffusers, or pass "
                            "--no-diffusers")
    with tempfile.TemporaryDirectory() as tmp:
        if ns.random_weights:
            if ns.random_weights not in CONFIGS:
                raise UserError(f"--random-weights {ns.random_weights!r}: choose one of {', '.join(sorted(CONFIGS))}")
            checkpoint = write_random_checkpoint(Path(tmp) / ns.random_weights, ns.random_weights)
        elif ns.from_diffusers:
            checkpoint = Path(ns.from_diffusers)
            find_diffusers_unet(checkpoint)  # a one-line error for anything but a pipeline or unet/ folder
        elif ns.model:
            checkpoint = resolve_model_path(ns.model)
            if not checkpoint.is_dir():
                raise UserError(f"{checkpoint} is not a checkpoint directory; bench needs the weights (it exports them itself)")
        else:
            raise UserError("name a checkpoint or shipped model, pass --from-diffusers DIR, or --random-weights cifar10")
        run_bench(checkpoint, Path(ns.out), batches=batches, steps=ns.steps, runs=ns.runs,
                  warmup=ns.warmup, threads=ns.threads, compare_diffusers=not ns.no_diffusers,
                  progress=not ns.quiet, backends=backends, sampler=ns.sampler,
                  diffusers_compiled=ns.diffusers_compiled, startup=not ns.no_startup, peak=ns.peak_tflops)
    print((Path(ns.out) / "bench.md").read_text(encoding="utf-8"))


def _report(ns: argparse.Namespace) -> None:
    from ddpmrt.engine.artifacts.io import check_output_dir
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.engine.samplers import SPACINGS
    from ddpmrt.export.report import parse_samplers, run_report

    check_output_dir(ns.out)
    checkpoint = resolve_model_path(ns.model)
    if not checkpoint.is_dir():
        raise UserError(f"{checkpoint} is not a checkpoint directory; report needs the weights")
    spacings = [s.strip() for s in ns.spacing.split(",") if s.strip()]
    for spacing in spacings:
        if spacing not in SPACINGS:
            raise UserError(f"unknown spacing {spacing!r}; choose one or more of {', '.join(SPACINGS)}")
    if not spacings or len(set(spacings)) != len(spacings):
        raise UserError(f"--spacing {ns.spacing!r}: name each spacing once, e.g. leading,trailing")
    if ns.samples < 2:
        raise UserError("--samples must be at least 2")
    seeds = _int_list(ns.seeds, "--seeds", low=0, high=2 ** 63 - 1)
    run_report(checkpoint, Path(ns.out), parse_samplers(ns.samplers), num_samples=ns.samples, spacings=spacings,
               backend=ns.backend, device=ns.device, threads=ns.threads, progress=not ns.quiet, seeds=seeds,
               precision=ns.precision)
    print((Path(ns.out) / "report.md").read_text(encoding="utf-8"))


def _best_backend(flavour) -> tuple[str, str]:
    """TensorRT on a GPU with a flavour, else torch on CUDA, else ONNX Runtime on the CPU."""
    from ddpmrt.engine.backends.tensorrt_flavour import RTX_TARGETS
    from ddpmrt.engine.gpu.cuda_runtime import device_compute_capability

    capability = device_compute_capability()
    if capability is not None:
        gpu = "sm{}{}".format(*capability)
        if flavour is not None and (not flavour.is_rtx or gpu in RTX_TARGETS):  # RTX: no Hopper
            return "tensorrt", "cuda"
        import torch

        if torch.cuda.is_available():
            return "torch", "cuda"
    return "onnxruntime", "cpu"


def _demo(ns: argparse.Namespace) -> None:
    """The README's first command: shipped model -> ONNX -> engine (if a flavour is installed) -> report."""
    import time

    from ddpmrt.engine.artifacts.io import check_output_dir
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.engine.backends.tensorrt_flavour import import_flavour
    from ddpmrt.export.report import QUICK, run_report

    start = time.perf_counter()
    out = check_output_dir(ns.out)
    checkpoint = resolve_model_path("digits")
    print(f"ddpmrt demo: the shipped 'digits' model ({checkpoint}) -> {out}/")
    try:
        flavour = import_flavour("auto")
    except UserError as exc:
        flavour = None
        print(f"skipping the engine build: {exc}")
    else:
        export_engine(str(checkpoint), out / "digits-fp16.plan", precision="fp16", batch="1:64:256", flavour=flavour.name)
    backend, device = _best_backend(flavour)
    print(f"sampling on {backend} ({device})")
    run_report(checkpoint, out, QUICK, num_samples=ns.samples, backend=backend, device=device, threads=ns.threads,
               progress=not ns.quiet)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"ddpmrt demo: done in {time.perf_counter() - start:.0f} s; open {out / 'report.md'}")


def _serve(ns: argparse.Namespace) -> None:
    """`ddpmrt serve`: Ray Serve on this machine, or on the Ray cluster named by --address."""
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.engine.serve import build_app, check_model_apart

    model = str(resolve_model_path(ns.model))
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UserError("serving needs Ray Serve: pip install 'ddpmrt[serve]'") from None
    check_model_apart(model, ns.backend, ns.device, ns.threads)  # one line in seconds, not Serve's retries
    ray.init(address=ns.address, include_dashboard=False, logging_level="ERROR")
    try:
        serve.start(http_options={"host": ns.host, "port": ns.port, "request_timeout_s": ns.request_timeout_s})
        app = build_app(model, backend=ns.backend, device=ns.device, replicas=ns.replicas, max_batch=ns.max_batch,
                        batch_wait_ms=ns.batch_wait_ms, max_ongoing=ns.max_ongoing, max_queued=ns.max_queued,
                        threads=ns.threads, max_images=ns.max_images, batching=not ns.no_batching,
                        max_body_bytes=ns.max_body_bytes)
        serve.run(app, name="ddpmrt", route_prefix="/")
        print(f"ddpmrt serve: {model} on http://{ns.host}:{ns.port} (POST /sample, GET /healthz, GET /metadata); "
              "Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    _add_export_source_args(p)
    p.add_argument("--image-shape", help="for an .onnx without ddpmrt metadata: C,H,W")
    p.add_argument("--out", required=True, help="output engine (.plan); its ONNX and sidecar .plan.json go beside it")
    p.add_argument("--precision", choices=["fp16", "fp32", "bf16"],
                   help="engine precision (default fp16; for an inductor package on the CPU, bf16 where it is faster, else fp32)")
    p.add_argument("--batch", default="1:8:64", help="N (static shape) or MIN:OPT:MAX (default 1:8:64)")
    p.add_argument("--targets", default="auto",
                   help="auto (this GPU, else the flavour's defaults), current, or e.g. sm86,sm89 (TensorRT-RTX)")
    p.add_argument("--flavour", default="auto",
                   help="auto, tensorrt or tensorrt-rtx; inductor writes an AOTInductor .pt2 package instead (default auto: "
                        "tensorrt where installed, else tensorrt-rtx)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="--flavour inductor: the device the package runs on (default: cuda if PyTorch sees one)")
    p.add_argument("--optimization-level", type=int_in(0, 5), help="builder optimization level 0-5 (default: the builder's, 3)")
    p.add_argument("--force", action="store_true", help="rebuild even if the engine is up to date")
    p.add_argument("--sanitize", action="store_true",
                   help="fold constants and infer shapes with Polygraphy before the build (off: it changes nothing "
                        "measurable on ddpmrt's exports)")
    p.add_argument("--check", action="store_true",
                   help="then compare the ONNX and the engine against PyTorch fp32 (ddpmrt check) into OUT-check/; "
                        "exit status 1 if one is off its tolerance")
    p.set_defaults(func=_export_engine)


def _add_check_command(sub) -> None:
    p = sub.add_parser("check", help="compare a model's ONNX, engine and .pt2 against PyTorch fp32 (Polygraphy)")
    p.add_argument("model", nargs="?", help="the reference: checkpoint directory or shipped model name")
    p.add_argument("artifacts", nargs="*", help=".onnx, .plan and .pt2 files to compare (default: none beyond the "
                   "ONNX files check exports)")
    p.add_argument("--from-diffusers", metavar="DIR", help="a diffusers pipeline folder as the reference instead")
    p.add_argument("--schedule", help="for a bare diffusers UNet folder: linear[:T:start:end] or cosine[:T]")
    p.add_argument("--no-export", action="store_true", help="compare only the artifacts given, not the fp32 and "
                   "fp16 ONNX files check exports into --out")
    p.add_argument("--seed", type=int_in(0, 2 ** 32 - 1), default=0, help="seed of the inputs (default 0)")
    p.add_argument("--out", default="check", help="report folder: check.json, check.md (default ./check)")
    p.set_defaults(func=_check)


def _add_export_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="checkpoint directory or shipped model name")
    p.add_argument("--from-diffusers", metavar="DIR",
                   help="a saved diffusers pipeline folder (model_index.json, unet/, scheduler/) or its unet/ folder instead")
    p.add_argument("--schedule", help="noise schedule where the source has none: linear[:T:start:end] or cosine[:T]")
    p.add_argument("--opset", type=int_in(7, 30), default=18, help="ONNX opset (default 18)")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"ddpmrt: error: {message} (see {self.prog} --help)\n")


def _add_train_command(sub) -> None:
    from ddpmrt.export.train_args import TrainArgs

    d = TrainArgs()  # the defaults, stated once (a resumed run takes its saved settings instead)
    p = sub.add_parser("train", help="train an ε-predicting U-Net (DDPM L_simple)")
    p.add_argument("--dataset", help="digits, shapes, a folder of images, or a .npz/.npy array (required for a new run)")
    p.add_argument("--model", help=f"U-Net config: tiny or cifar10 (default {d.model})")
    p.add_argument("--iters", type=int_in(1, 10 ** 9),
                   help="total training steps (required for a new run; a resumed run continues to its saved value, or to this)")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), help=f"batch per process (default {d.batch_size})")
    p.add_argument("--out", required=True, help="checkpoint directory (required)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out with its saved settings; an option given here overrides its "
                        "saved value (except --dataset, --model, --image-size, --seed and --schedule)")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an --out that holds one (its files are removed)")
    p.add_argument("--image-size", type=int_in(4, 4096), help="resize the data to S×S (default: the data's own size)")
    p.add_argument("--lr", type=real_in(0, 1, low_open=True), help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--warmup", type=int_in(0, 10 ** 9), help=f"LR warm-up steps (default {d.warmup})")
    p.add_argument("--ema-decay", type=real_in(0, 1, high_open=True), help=f"EMA decay (default {d.ema_decay:g})")
    p.add_argument("--grad-clip", type=real_in(0, 1e6, low_open=True), help=f"gradient-norm clip (default {d.grad_clip:g})")
    p.add_argument("--schedule", choices=["linear", "cosine"], help=f"noise schedule (default {d.schedule})")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help=f"autocast precision (default {d.precision})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: cuda if available, else cpu")
    p.add_argument("--seed", type=int_in(0, 2 ** 63 - 1), help=f"seed for every random choice (default {d.seed})")
    p.add_argument("--save-every", type=int_in(1, 10 ** 9),
                   help=f"checkpoint every N steps (default {d.save_every}); a run also saves at 5 %% of its steps "
                        "and every --save-minutes, so a killed run of any length can resume")
    p.add_argument("--save-minutes", type=real_in(0, 10 ** 6),
                   help=f"also checkpoint every M minutes of training, 0 = by step only (default {d.save_minutes:g})")
    p.add_argument("--sample-every", type=int_in(0, 10 ** 9),
                   help=f"sample grid every N steps and at the end, 0 = never (default {d.sample_every})")
    p.add_argument("--log-every", type=int_in(1, 10 ** 9), help=f"log line every N steps (default {d.log_every})")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.set_defaults(func=_train)


def _add_sample_command(sub) -> None:
    from ddpmrt.engine.sampler_factory import SAMPLER_DEFAULTS, SAMPLERS
    from ddpmrt.engine.samplers import SPACINGS

    p = sub.add_parser("sample", help="sample images from a model")
    p.add_argument("model", nargs="?", help="checkpoint directory, shipped model name (e.g. digits), .onnx or .plan file, "
                   "or a diffusers pipeline folder")
    p.add_argument("--from-diffusers", metavar="DIR", help="a saved diffusers pipeline folder (or its unet/ folder)")
    # Sampler options default to None here: make_sampler fills in SAMPLER_DEFAULTS, the one set every command uses.
    ddim, ddpm, dpm, unipc = (SAMPLER_DEFAULTS[name] for name in ("ddim", "ddpm", "dpmsolver", "unipc"))
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                   help="ddim, ddpm, or a few-step multistep solver: dpmsolver (DPM-Solver++) or unipc (default ddim)")
    p.add_argument("--steps", type=steps_arg,
                   help=f"network calls, at most the model's training timesteps (default {ddim['steps']} for ddim and "
                        f"ddpm, {dpm['steps']} for dpmsolver and unipc)")
    p.add_argument("--eta", type=real_in(0, 10),
                   help=f"ddim only: η in [0, 10], 0 deterministic, 1 DDPM-like (default {ddim['eta']:g})")
    p.add_argument("--variance", choices=["fixed_small", "fixed_large"],
                   help=f"ddpm only: the posterior variance (default {ddpm['variance']})")
    p.add_argument("--order", type=int_in(1, 3),
                   help=f"dpmsolver and unipc: solver order 1-3 (default {dpm['order']})")
    p.add_argument("--solver-type", choices=["midpoint", "heun"],
                   help=f"dpmsolver only: the second-order form (default {dpm['solver_type']})")
    p.add_argument("--variant", choices=["bh1", "bh2"], help=f"unipc only: B(h) = h or e^h - 1 (default {unipc['variant']})")
    p.add_argument("--corrector", choices=["on", "off"],
                   help="unipc only: the UniC corrector, which costs no network call (default on)")
    p.add_argument("--spacing", choices=SPACINGS,
                   help=f"timestep spacing (default {ddim['spacing']} for ddim and ddpm: the best measured; "
                        f"{dpm['spacing']} for the solvers, as diffusers)")
    p.add_argument("--clip-sample", type=real_in(0, 100),
                   help=f"clip x̂₀ to ±C, as diffusers does (default {ddim['clip_sample']:g}: images lie in [-1, 1]); "
                        "0 turns it off")
    p.add_argument("--batch", type=int_in(1, MAX_BATCH), default=64, help="images to sample (default 64)")
    p.add_argument("--seed", type=int_in(0, 2 ** 64 - 1), default=0,
                   help="noise seed: image k of a seed is the same in any batch (default 0)")
    p.add_argument("--backend", default="auto",
                   help="auto, inductor, onnxruntime, openvino, tensorrt or torch (default auto: by file type; an .onnx "
                        "on the CPU runs on openvino where installed, else onnxruntime; a checkpoint on --device cuda runs "
                        "on inductor, torch.compile plus one CUDA graph per loop; on a CPU where bf16 is faster on openvino "
                        "(its ONNX export, made once and cached) or else inductor; eager torch elsewhere)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="cpu or cuda (default cpu; an engine runs on cuda, a .pt2 on the device it was built for)")
    p.add_argument("--threads", type=THREADS, help="CPU threads for ONNX Runtime (default: all cores)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU backends: capture the whole sampling loop once and replay it as a CUDA graph "
                        "(default: only a CUDA .pt2 does)")
    p.add_argument("--precision", choices=["auto", "fp32", "tf32", "fp16", "bf16", "int8"], default="auto",
                   help="auto (default) = fp16 on CUDA; on the CPU bf16 where it is faster (AMX-BF16, AVX512-BF16 "
                        "on AMD), else fp32, and int8 for an int8 .onnx; fp32 is IEEE fp32 (tf32 asks for TF32 "
                        "convolutions on CUDA); onnxruntime "
                        "computes fp32; int8 needs a model from export-onnx --precision int8")
    p.add_argument("--schedule", help="for an .onnx without ddpmrt metadata or a bare diffusers UNet folder: "
                   "linear[:T:start:end] or cosine[:T]")
    p.add_argument("--image-shape", help="for an .onnx without ddpmrt metadata: C,H,W")
    p.add_argument("--out", required=True, help="a .png grid or a .npz with array 'images'")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_sample)


def _add_export_onnx_command(sub) -> None:
    p = sub.add_parser("export-onnx", help="export a model to self-describing ONNX (fp32 or fp16), validated")
    _add_export_source_args(p)
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="the ONNX file's precision (default fp32); int8: static quantization calibrated on the model's "
                        "own DDIM trajectories, for OpenVINO and ONNX Runtime on the CPU")
    p.add_argument("--batch", default="dynamic", help="dynamic (default) or a fixed batch size")
    p.add_argument("--calibration-images", type=int_in(1, 4096), default=64,
                   help="--precision int8: DDIM trajectories the activation ranges come from, 1-4096 (default 64)")
    p.add_argument("--calibration-steps", type=steps_arg, default=10,
                   help="--precision int8: steps of each calibration trajectory (default 10)")
    p.set_defaults(func=_export_onnx)


def _add_export_engine_command(sub) -> None:
    p = sub.add_parser("export-engine", help="export and build an FP16 TensorRT / TensorRT-RTX engine")
    _add_engine_args(p)


def _add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="profile every available backend against diffusers")
    p.add_argument("model", nargs="?", help="checkpoint directory or shipped model name")
    p.add_argument("--random-weights", metavar="CONFIG", help="bench a named U-Net config (tiny, cifar10) with random weights")
    p.add_argument("--from-diffusers", metavar="DIR", help="a saved diffusers pipeline folder (or its unet/) instead")
    p.add_argument("--batch", default="1,8,64", help="batch sizes (default 1,8,64)")
    p.add_argument("--backends", default="all",
                   help="all (default: every one that runs here) or a list of torch-cpu, inductor-cpu, onnxruntime-cpu, "
                        "openvino-cpu, openvino-default (OpenVINO with its own defaults, the peer), torch-cuda, "
                        "torch-cuda-graph, inductor-cuda, onnxruntime-cuda, tensorrt; and, only by name (each is built "
                        "in the run), inductor-package-cpu and inductor-package-cuda (an AOTInductor .pt2 as "
                        "export-engine --flavour inductor writes it, with its build and start-up) and openvino-int8-cpu "
                        "(the int8 file of export-onnx --precision int8)")
    p.add_argument("--sampler", choices=["ddim", "ddpm", "dpmsolver", "unipc"], default="ddim",
                   help="ddim (η=0, against DDIMPipeline; default), ddpm (against DDPMPipeline), or dpmsolver / unipc "
                        "(order 2, against DPMSolverMultistepScheduler / UniPCMultistepScheduler in the pipelines' loop)")
    p.add_argument("--steps", type=steps_arg, default=20, help="sampler steps per loop (default 20)")
    p.add_argument("--runs", type=int_in(1, 10_000), default=10, help="timed loops per configuration (default 10)")
    p.add_argument("--warmup", type=int_in(0, 10_000), default=2, help="untimed loops first (default 2)")
    p.add_argument("--threads", type=THREADS, help="CPU threads for torch and ONNX Runtime (default: torch's)")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers comparison")
    p.add_argument("--diffusers-compiled", choices=["auto", "always", "never"], default="auto",
                   help="also time diffusers with torch.compile(unet, mode='reduce-overhead', fullgraph=True): "
                        "auto = on a GPU (default), always = on the CPU too, never")
    p.add_argument("--no-startup", action="store_true",
                   help="skip the cold and warm start-up of the inductor backends and packages (two fresh "
                        "processes each)")
    p.add_argument("--peak-tflops", type=real_in(0, 1e6, low_open=True), help="the device's dense peak for the %% of peak column "
                   "(default: the datasheet figure of a known GPU)")
    p.add_argument("--out", default="bench", help="report directory (default ./bench)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_bench)


def _add_report_command(sub) -> None:
    from ddpmrt.engine.samplers import DEFAULT_SPACING

    p = sub.add_parser("report", help="quality against latency per sampler and step count (offline metrics)")
    p.add_argument("model", nargs="?", default="digits", help="checkpoint directory or shipped model (default digits)")
    p.add_argument("--samplers", default="full",
                   help="quick, full (default), solvers (the multistep solvers at 5-20 calls against DDIM at 10-100), or "
                        "a list such as ddim:20,ddim:50:1,ddpm:1000,dpmsolver:10:3,unipc:8 (the last number: η or order)")
    p.add_argument("--seeds", default="0", help="seeds to sample each setting with, e.g. 0,1: the table gives the "
                   "mean ± half the range (default 0)")
    p.add_argument("--samples", type=int_in(2, 10 ** 6), default=500, help="images per sampler (default 500)")
    p.add_argument("--spacing", default=DEFAULT_SPACING,
                   help=f"timestep spacing, or several to compare, e.g. leading,trailing,linspace (default {DEFAULT_SPACING}: "
                        "the best measured)")
    p.add_argument("--backend", choices=["onnxruntime", "openvino", "torch", "tensorrt"], default="onnxruntime",
                   help="onnxruntime (fp32 ONNX), openvino (the ONNX file on the CPU, in --precision), torch, or tensorrt "
                        "(an fp16 engine built here; needs a GPU) (default onnxruntime)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="onnxruntime and torch: cpu or cuda (default cpu)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default="fp32",
                   help="--backend torch or openvino: the precision of the U-Net and the Gaussian check, e.g. bf16 "
                        "against fp32 (default fp32; auto = what sample would use here)")
    p.add_argument("--threads", type=THREADS, help="ONNX Runtime and OpenVINO threads (default: all cores)")
    p.add_argument("--out", default="report", help="report directory (default ./report)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_report)


def _add_serve_command(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP with Ray Serve (batching, replicas, back-pressure)")
    p.add_argument("model", help="an .onnx or .plan file, checkpoint directory or shipped model name (on every node)")
    p.add_argument("--backend", default="auto",
                   help="auto (by file type), onnxruntime, openvino, tensorrt, torch or inductor (default auto)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu, or cuda: one replica per GPU of the cluster (default cpu)")
    p.add_argument("--replicas", type=int_in(1, 4096), help="replicas (default: one per GPU on cuda, else 1)")
    p.add_argument("--max-batch", type=int_in(1, 1024), default=8, help="requests per batch (default 8)")
    p.add_argument("--batch-wait-ms", type=real_in(0, 10_000), default=5.0,
                   help="how long a batch waits for more requests (default 5 ms)")
    p.add_argument("--no-batching", action="store_true", help="run every request alone")
    p.add_argument("--max-ongoing", type=int_in(1, 10 ** 5),
                   help="requests a replica runs or batches at once (Serve's max_ongoing_requests; default 2 x --max-batch)")
    p.add_argument("--max-queued", type=int_in(1, 10 ** 6), default=64,
                   help="requests waiting for a replica before Serve answers 503 (default 64)")
    p.add_argument("--request-timeout-s", type=real_in(0, 86_400, low_open=True), default=120.0,
                   help="a request running longer is answered 408 (default 120 s)")
    p.add_argument("--max-images", type=int_in(1, MAX_BATCH), default=64, help="images per request (default 64)")
    p.add_argument("--max-body-bytes", type=int_in(64, 1 << 30), default=4096,
                   help="larger request bodies are answered 413 unread (default 4096)")
    p.add_argument("--threads", type=THREADS, help="CPU threads per replica (default 1)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int_in(1, 65535), default=8000, help="HTTP port (default 8000)")
    p.add_argument("--address", help="a running Ray cluster (e.g. auto or ray://head:10001); default: start one here")
    p.set_defaults(func=_serve)


def _add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="export, build and sample the shipped model; write a report (a few minutes on a CPU)")
    p.add_argument("--out", default="demo", help="report directory (default ./demo)")
    p.add_argument("--samples", type=int_in(2, 10 ** 6), default=128, help="images per sampler (default 128)")
    p.add_argument("--threads", type=THREADS, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    from ddpmrt.engine import __version__

    parser = OneLineErrorParser(prog="ddpmrt", description="Diffusion model training, export and fast sampling.")
    parser.add_argument("--version", action="version", version=f"ddpmrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_command(sub)
    _add_sample_command(sub)
    _add_export_onnx_command(sub)
    _add_export_engine_command(sub)
    _add_check_command(sub)
    _add_bench_command(sub)
    _add_report_command(sub)
    _add_serve_command(sub)
    _add_demo_command(sub)
    return parser


# Where each command writes: a file, or a folder.  A write that fails (a full disk, a read-only folder)
# takes back what the command wrote there; training keeps the checkpoints it completed.
FILE_OUTPUTS = ("sample", "export-onnx", "export-engine")
FOLDER_OUTPUTS = ("train", "bench", "report", "demo", "check")


def main(argv: list[str] | None = None) -> int:
    from ddpmrt.engine.artifacts.io import NewOutputs, WriteFailed, write_failure

    ns = build_parser().parse_args(argv)
    outputs = None
    if ns.command in FILE_OUTPUTS + FOLDER_OUTPUTS and getattr(ns, "out", None):
        outputs = NewOutputs(ns.out, is_folder=ns.command in FOLDER_OUTPUTS)
    try:
        try:
            ns.func(ns)
        except OSError as exc:  # a write outside atomic_write (a log line): the same one line
            failure = write_failure(exc.filename or ns.out, exc, writing=False) if outputs else None
            if failure is None:
                raise
            raise failure from None
    except UserError as exc:
        if isinstance(exc, WriteFailed) and outputs is not None:
            outputs.remove(keep_complete=ns.command == "train")
        print(f"ddpmrt: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)
    except KeyboardInterrupt:
        print("ddpmrt: interrupted", file=sys.stderr)
        return 130
    return 0


def export_engine_main(argv: list[str] | None = None) -> int:
    """The `export-engine` console script: `ddpmrt export-engine` under its own name."""
    argv = sys.argv[1:] if argv is None else argv
    return main(["export-engine", *argv])
