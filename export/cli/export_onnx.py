"""`ddpmrt export-onnx`: a self-describing ONNX file (fp32, fp16, or int8 calibrated on the model's own
trajectories), validated against PyTorch fp32."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpmrt.export.cli.options import ONNX_PRECISIONS, add_export_source, export_source, int_in, onnx_batch_arg, steps_arg
from ddpmrt.export.conversion.pipeline import carry_tuned

NAME, OUTPUT = "export-onnx", "file"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="export a model to self-describing ONNX (fp32 or fp16), validated")
    add_export_source(p)
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--precision", choices=ONNX_PRECISIONS, default="fp32",
                   help="the ONNX file's precision (default fp32); int8: static quantization calibrated on the model's "
                        "own DDIM trajectories, for OpenVINO and ONNX Runtime on the CPU")
    p.add_argument("--batch", default="dynamic", help="dynamic (default) or a fixed batch size")
    p.add_argument("--calibration-images", type=int_in(1, 4096), default=64,
                   help="--precision int8: DDIM trajectories the activation ranges come from, 1-4096 (default 64)")
    p.add_argument("--calibration-steps", type=steps_arg, default=10,
                   help="--precision int8: steps of each calibration trajectory (default 10)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> None:
    from ddpmrt.engine.artifacts.io import check_output_file
    from ddpmrt.export.conversion.onnx_export import export_onnx

    out = check_output_file(ns.out, (".onnx",))
    if ns.precision == "int8":
        return _export_int8(ns, out)
    source = export_source(ns, ns.precision)
    result = export_onnx(source.module, source.metadata, out, opset=ns.opset, batch=onnx_batch_arg(ns.batch),
                         unwrap=source.unwrap)
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({ns.precision}, {size_mb:.1f} MB) in {result.seconds:.1f} s")
    if not ns.from_diffusers:
        carry_tuned(ns.model, out)


def _export_int8(ns: argparse.Namespace, out: Path) -> None:
    """The fp32 export, then its int8 copy calibrated on its own trajectories (export/conversion/quantize.py)."""
    import tempfile

    from ddpmrt.export.conversion.onnx_export import export_onnx
    from ddpmrt.export.conversion.quantize import Calibration, quantize_onnx

    calibration = Calibration(images=ns.calibration_images, steps=ns.calibration_steps)
    source = export_source(ns, "fp32")
    calibration.check(source.metadata.schedule.num_train_timesteps)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model-fp32.onnx"
        export_onnx(source.module, source.metadata, fp32, opset=ns.opset, batch=onnx_batch_arg(ns.batch),
                    unwrap=source.unwrap)
        result = quantize_onnx(fp32, out, calibration)
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} (int8, calibrated on {result.calibration_inputs} inputs of DDIM-{calibration.steps} "
          f"trajectories; ε within {result.relative_error:.1%} of fp32's range; {size_mb:.1f} MB) in {result.seconds:.1f} s")
    if not ns.from_diffusers:
        carry_tuned(ns.model, out)
