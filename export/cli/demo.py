"""`ddpmrt demo`, the README's first command: the shipped model -> ONNX -> engine (if a TensorRT flavour is
installed) -> a report."""

from __future__ import annotations

import argparse

from ddpmrt.engine.errors import UserError
from ddpmrt.export.cli.options import add_quiet, add_threads, int_in

NAME, OUTPUT = "demo", "folder"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="export, build and sample the shipped model; write a report (a few minutes on a CPU)")
    p.add_argument("--out", default="demo", help="report directory (default ./demo)")
    p.add_argument("--samples", type=int_in(2, 10 ** 6), default=128, help="images per sampler (default 128)")
    add_threads(p)
    add_quiet(p)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> None:
    import time

    from ddpmrt.engine.artifacts.io import check_output_dir
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.engine.backends.tensorrt_flavour import import_flavour
    from ddpmrt.export.conversion.pipeline import export_engine, sampling_backend
    from ddpmrt.engine.sampler_factory import parse_specs
    from ddpmrt.export.evaluation.report import QUICK, run_report

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
    backend, device = sampling_backend(flavour)
    print(f"sampling on {backend} ({device})")
    # The quick set, and DPM-Solver++(3M) at 5 calls with its own spacing and with the model's tuned timesteps
    # (engine/models/digits/schedules.json, from `ddpmrt tune`): what tuning buys, side by side.
    samplers = QUICK + parse_specs("dpmsolver:5:3,dpmsolver:5:3:spacing=tuned")
    run_report(checkpoint, out, samplers, num_samples=ns.samples, backend=backend, device=device, threads=ns.threads,
               progress=not ns.quiet)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"ddpmrt demo: done in {time.perf_counter() - start:.0f} s; open {out / 'report.md'}")
