"""`ddpmrt export-diffusers`: a ddpmrt model as a diffusers DDPMPipeline folder (export/conversion/diffusers_export.py)."""

from __future__ import annotations

import argparse

NAME, OUTPUT = "export-diffusers", "folder"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="write a checkpoint or shipped model as a diffusers DDPMPipeline folder")
    p.add_argument("model", help="checkpoint directory or shipped model name")
    p.add_argument("--out", required=True, help="the pipeline folder to write (new or empty)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> None:
    from ddpmrt.engine.artifacts.io import check_output_dir
    from ddpmrt.export.conversion.diffusers_export import check_destination, export_diffusers

    out = check_output_dir(ns.out)
    check_destination(out, ns.force)  # before torch and diffusers are imported
    error = export_diffusers(ns.model, out, force=ns.force)
    print(f"wrote {out}: DDPMPipeline (UNet2DModel + DDPMScheduler), fp32 safetensors; its U-Net gives ddpmrt's ε "
          f"within {error:.1e} of its range. Load it with: DDPMPipeline.from_pretrained({str(out)!r})")
