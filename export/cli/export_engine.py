"""`export-engine` (= `ddpmrt export-engine`): the ONNX export and a TensorRT / TensorRT-RTX engine with its
sidecar (export/conversion/pipeline.py), or with `--flavour inductor` an AOTInductor .pt2."""

from __future__ import annotations

import argparse

from ddpmrt.engine.errors import UserError
from ddpmrt.export.cli.options import ENGINE_PRECISIONS, add_export_source, description, export_source, int_in

NAME, OUTPUT = "export-engine", "file"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="export and build an FP16 TensorRT / TensorRT-RTX engine")
    add_export_source(p)
    p.add_argument("--image-shape", help="for an .onnx without ddpmrt metadata: C,H,W")
    p.add_argument("--out", required=True, help="output engine (.plan); its ONNX and sidecar .plan.json go beside it")
    p.add_argument("--precision", choices=ENGINE_PRECISIONS,
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
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> None:
    from ddpmrt.export.conversion.pipeline import export_engine

    if ns.flavour == "inductor":
        return _export_inductor_package(ns)
    if ns.check:
        from ddpmrt.engine.backends.tensorrt_flavour import import_flavour
        from ddpmrt.export.conversion.polygraphy_tools import load_polygraphy

        if (not ns.model or ns.model.lower().endswith(".onnx")) and not ns.from_diffusers:
            raise UserError("--check compares against the PyTorch model: give a checkpoint, shipped name or "
                            "--from-diffusers, not an .onnx")
        load_polygraphy(import_flavour(ns.flavour).is_rtx)  # a missing Polygraphy is one line before the build
    schedule, image_shape = description(ns)
    onnx_path, plan = export_engine(ns.model, ns.out, from_diffusers=ns.from_diffusers, precision=ns.precision or "fp16",
                                    batch=ns.batch, targets=ns.targets, flavour=ns.flavour,
                                    optimization_level=ns.optimization_level, opset=ns.opset, force=ns.force,
                                    schedule=schedule, image_shape=image_shape, sanitize=ns.sanitize)
    if ns.check:
        from ddpmrt.export.evaluation.check import run_check, summary

        report_dir = plan.with_name(plan.stem + "-check")
        report = run_check(export_source(ns, "fp32"), [onnx_path, plan], report_dir)
        print(f"{summary(report)} (report: {report_dir / 'check.md'})")


def _export_inductor_package(ns: argparse.Namespace) -> None:
    """export-engine --flavour inductor: an AOTInductor .pt2 and its sidecar (export/conversion/aot_package.py)."""
    import torch

    from ddpmrt.engine import cpu
    from ddpmrt.engine.artifacts.io import check_output_file
    from ddpmrt.engine.artifacts.sidecar import sidecar_path
    from ddpmrt.export.conversion.aot_package import build_aot_package
    from ddpmrt.export.conversion.engine_build import BatchProfile

    out = check_output_file(ns.out, (".pt2",), option="--out (with --flavour inductor)")
    check_output_file(sidecar_path(out), (".json",), option=f"--out {out} writes")
    device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # The device's default: fp16 on CUDA; on the CPU what --precision auto means there (bf16 where it is faster).
    precision = ns.precision or ("fp16" if device == "cuda" else cpu.resolve_cpu_precision("auto"))
    if ns.model and ns.model.lower().endswith(".onnx"):
        raise UserError("--flavour inductor compiles the PyTorch model: give a checkpoint, shipped name or "
                        "--from-diffusers, not an .onnx")
    source = export_source(ns, "fp32")
    result = build_aot_package(source, out, device, precision, BatchProfile.parse(ns.batch), force=ns.force,
                               progress=lambda line: print(line, flush=True))
    size_mb = result.sidecar["package_bytes"] / 1e6
    what = f"AOTInductor, {precision} on {device}, batch {ns.batch}"
    if result.cached:
        print(f"{out} is up to date ({what}, {size_mb:.1f} MB); --force rebuilds")
    else:
        print(f"built {out} ({what}) in {result.seconds:.1f} s, {size_mb:.1f} MB")
    if not ns.from_diffusers:
        from ddpmrt.export.conversion.pipeline import carry_tuned

        carry_tuned(ns.model, out)
