"""`ddpmrt bench`: every available backend against diffusers, same weights, steps, batch and threads
(export/evaluation/bench.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpmrt.engine.errors import UserError
from ddpmrt.export.cli.options import (
    add_option_flags,
    add_quiet,
    add_threads,
    int_in,
    real_in,
    sampler_options,
    steps_arg,
    tuned_schedules,
)

NAME, OUTPUT = "bench", "folder"


def add_parser(sub) -> None:
    from ddpmrt.engine.sampler_factory import SAMPLERS
    from ddpmrt.export.evaluation.bench_backends import BENCH_BACKENDS, BY_NAME_BACKENDS, DIFFUSERS_COMPILED

    p = sub.add_parser(NAME, help="profile every available backend against diffusers")
    p.add_argument("model", nargs="?", help="checkpoint directory or shipped model name")
    p.add_argument("--random-weights", metavar="CONFIG", help="bench a named U-Net config (tiny, cifar10) with random weights")
    p.add_argument("--from-diffusers", metavar="DIR", help="a saved diffusers pipeline folder (or its unet/) instead")
    p.add_argument("--batch", default="1,8,64", help="batch sizes (default 1,8,64)")
    p.add_argument("--backends", default="all",
                   help=f"all (default: every one that runs here) or a list of {', '.join(BENCH_BACKENDS)} "
                        "(openvino-default is OpenVINO with its own defaults, the peer); and, only by name (each is "
                        f"built in the run), {', '.join(BY_NAME_BACKENDS)} (an AOTInductor .pt2 as export-engine "
                        "--flavour inductor writes it, with its build and start-up; the int8 file of export-onnx "
                        "--precision int8)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                   help="ddim (η=0, against DDIMPipeline; default), ddpm (against DDPMPipeline), or dpmsolver / unipc "
                        "(order 2, against DPMSolverMultistepScheduler / UniPCMultistepScheduler in the pipelines' loop)")
    p.add_argument("--steps", type=steps_arg, help="sampler steps per loop (default 20; with --timesteps, their count)")
    # Where ddpmrt's steps fall (a spacing, the model's tuned table, or explicit timesteps): diffusers' rows run the
    # same number of steps at their leading spacing, since a step's time does not depend on its timestep.
    add_option_flags(p, ("spacing", "timesteps"))
    p.add_argument("--runs", type=int_in(1, 10_000), default=10, help="timed loops per configuration (default 10)")
    p.add_argument("--warmup", type=int_in(0, 10_000), default=2, help="untimed loops first (default 2)")
    add_threads(p, "CPU threads for torch, ONNX Runtime and OpenVINO", "torch's")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers comparison")
    p.add_argument("--diffusers-compiled", choices=DIFFUSERS_COMPILED, default="auto",
                   help="also time diffusers with torch.compile(unet, mode='reduce-overhead', fullgraph=True): "
                        "auto = on a GPU (default), always = on the CPU too, never")
    p.add_argument("--no-startup", action="store_true",
                   help="skip the cold and warm start-up of the inductor backends and packages (two fresh "
                        "processes each)")
    p.add_argument("--peak-tflops", type=real_in(0, 1e6, low_open=True), help="the device's dense peak for the %% of peak column "
                   "(default: the datasheet figure of a known GPU)")
    p.add_argument("--out", default="bench", help="report directory (default ./bench)")
    add_quiet(p)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> None:
    import tempfile

    from ddpmrt.engine.artifacts.io import check_output_dir
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.engine.checks import int_list
    from ddpmrt.export.evaluation.bench import run_bench
    from ddpmrt.export.evaluation.bench_backends import BENCH_BACKENDS, BY_NAME_BACKENDS
    from ddpmrt.export.model.checkpoint import write_random_checkpoint
    from ddpmrt.export.model.sources import find_diffusers_unet
    from ddpmrt.export.model.unet import CONFIGS

    check_output_dir(ns.out)
    batches = int_list(ns.batch, "--batch")
    backends = BENCH_BACKENDS if ns.backends == "all" else [b.strip() for b in ns.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BENCH_BACKENDS + BY_NAME_BACKENDS]
    if unknown or not backends:
        raise UserError(f"--backends {ns.backends!r}: choose all or some of {', '.join(BENCH_BACKENDS + BY_NAME_BACKENDS)}")
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
        given = sampler_options(ns)  # --spacing, --timesteps
        steps = ns.steps if ns.steps is not None else None if given.get("timesteps") is not None else 20
        tuned = tuned_schedules(checkpoint) if given.get("spacing") == "tuned" else None
        run_bench(checkpoint, Path(ns.out), batches=batches, steps=steps, runs=ns.runs, sampler_options=given, tuned=tuned,
                  warmup=ns.warmup, threads=ns.threads, compare_diffusers=not ns.no_diffusers,
                  progress=not ns.quiet, backends=backends, sampler=ns.sampler,
                  diffusers_compiled=ns.diffusers_compiled, startup=not ns.no_startup, peak=ns.peak_tflops)
    print((Path(ns.out) / "bench.md").read_text(encoding="utf-8"))
