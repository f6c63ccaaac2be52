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
    from ddpmrt.engine.sampler_factory import parse_specs
    from ddpmrt.export.conversion.pipeline import export_engine, sampling_backend
    from ddpmrt.export.evaluation.report import QUICK, run_report

    start = time.perf_counter()
    out = check_output_dir(ns.out)
    checkpoint = resolve_model_path("digits")
    print(f"ddpmrt demo: the shipped 'digits' model ({checkpoint}) -> {out}/")
    files, plan = {}, out / "digits-fp16.plan"
    try:
        flavour = import_flavour("auto")
    except UserError as exc:
        flavour = None
        print(f"skipping the engine build: {exc}")
    else:
        onnx_file, plan = export_engine(str(checkpoint), plan, precision="fp16", batch="1:64:256", flavour=flavour.name)
        files = built_files(onnx_file, plan)
    backend, device = sampling_backend(flavour)
    print(f"sampling on {backend} ({device})")
    # The quick set, and DPM-Solver++(3M) at 5 calls with its own spacing and with the model's tuned timesteps
    # (engine/models/digits/schedules.json, from `ddpmrt tune`): what tuning buys, side by side.  On a GPU the
    # report samples the engine just built; on the CPU the shipped model's own ONNX export on OpenVINO (in bf16
    # where that is faster) or ONNX Runtime, as `ddpmrt sample` of an .onnx runs.
    samplers = QUICK + parse_specs("dpmsolver:5:3,dpmsolver:5:3:spacing=tuned")
    run_report(plan if backend == "tensorrt" else checkpoint, out, samplers, num_samples=ns.samples,
               backend=None if backend == "tensorrt" else backend, device=device, threads=ns.threads,
               precision="auto" if backend == "openvino" else None,
               progress=not ns.quiet, name="digits", files=files)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"ddpmrt demo: done in {time.perf_counter() - start:.0f} s; open {out / 'report.md'}")


def built_files(onnx_file, plan) -> dict[str, str]:
    """What the engine build wrote, a line each, for the report's list of files."""
    from ddpmrt.engine.artifacts.schedules import schedules_path
    from ddpmrt.engine.artifacts.sidecar import ENGINE, read_sidecar, sidecar_path

    sidecar = read_sidecar(plan, ENGINE)
    targets = sidecar["targets"]
    where = ("this GPU" if targets == ["current"] else
             f"targets {', '.join(targets)}: the NVIDIA GPU architectures (compute capability sm80 = 8.0, sm120 = 12.0) "
             "it was built for ahead of time, with no GPU needed to build (Hopper, sm90, is not a TensorRT-RTX target)")
    profile = sidecar["profile"]
    files = {onnx_file.name: "the shipped model's fp16 ONNX export, which the engine was built from (runs on ONNX "
                             "Runtime and OpenVINO too)",
             plan.name: f"a {sidecar['flavour']} {sidecar['flavour_version']} engine, fp16, batch {profile['min']} to {profile['max']}, "
                        f"for {where}; sample it on such a GPU with `ddpmrt sample {plan}`",
             sidecar_path(plan).name: "the engine's sidecar: its metadata, batch profile, targets and checksums, which "
                                      "ddpmrt checks before loading it"}
    for artifact in (onnx_file, plan):
        if schedules_path(artifact).is_file():
            files[schedules_path(artifact).name] = "the model's tuned timesteps (`--spacing tuned`), carried over"
    return files
