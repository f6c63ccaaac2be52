"""`ddpmrt check MODEL [ARTIFACT ...]`: artifacts against PyTorch fp32 with Polygraphy (export/evaluation/check.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpmrt.engine.errors import UserError
from ddpmrt.export.cli.options import add_description, add_seed, export_source

NAME, OUTPUT = "check", "folder"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="compare a model's ONNX, engine and .pt2 against PyTorch fp32 (Polygraphy)")
    p.add_argument("model", nargs="?", help="the reference: checkpoint directory or shipped model name")
    p.add_argument("artifacts", nargs="*", help=".onnx, .plan and .pt2 files to compare (default: none beyond the "
                   "ONNX files check exports)")
    p.add_argument("--from-diffusers", metavar="DIR", help="a diffusers pipeline folder as the reference instead")
    add_description(p, "for a bare diffusers UNet folder: linear[:T:start:end] or cosine[:T]", image_shape=False)
    p.add_argument("--no-export", action="store_true", help="compare only the artifacts given, not the fp32 and "
                   "fp16 ONNX files check exports into --out")
    add_seed(p, "seed of the inputs")
    p.add_argument("--out", default="check", help="report folder: check.json, check.md (default ./check)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> None:
    from ddpmrt.engine.artifacts.io import check_output_dir
    from ddpmrt.export.conversion.polygraphy_tools import load_polygraphy
    from ddpmrt.export.evaluation.check import ARTIFACT_SUFFIXES, describe, run_check, summary

    out = check_output_dir(ns.out)
    load_polygraphy()  # a missing Polygraphy is one line before any work
    if ns.model and ns.model.lower().endswith(ARTIFACT_SUFFIXES) and not ns.from_diffusers:
        raise UserError(f"check compares artifacts against the PyTorch model: give the checkpoint or shipped name "
                        f"first, e.g. ddpmrt check digits {ns.model}")
    for artifact in ns.artifacts:
        describe(Path(artifact))  # damaged or foreign files: one line before the export
    source = export_source(ns, "fp32")
    exported = []
    if not ns.no_export:  # every artifact that can be made here: the fp32 and the fp16 ONNX
        from ddpmrt.export.conversion.onnx_export import export_onnx

        for precision in ("fp32", "fp16"):
            onnx_path = out / f"model-{precision}.onnx"
            at_precision = source if precision == "fp32" else export_source(ns, precision)
            export_onnx(at_precision.module, at_precision.metadata, onnx_path, check=False, unwrap=at_precision.unwrap)
            exported.append(onnx_path)
    report = run_check(source, exported + [Path(a) for a in ns.artifacts], out, seed=ns.seed)
    print((out / "check.md").read_text(encoding="utf-8"))
    print(summary(report))
