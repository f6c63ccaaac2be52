"""`ddpmrt report`: quality against latency per sampler and step count (export/evaluation/report.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpmrt.engine.errors import UserError
from ddpmrt.export.cli.options import MAX_SEED, REPORT_PRECISIONS, add_quiet, add_threads, int_in

NAME, OUTPUT = "report", "folder"


def add_parser(sub) -> None:
    from ddpmrt.engine.samplers import DEFAULT_SPACING
    from ddpmrt.export.evaluation.bench_backends import REPORT_BACKENDS
    from ddpmrt.export.evaluation.judged import JUDGED_DATASETS, NO_DATASET

    p = sub.add_parser(NAME, help="quality against latency per sampler and step count (offline metrics)")
    p.add_argument("model", nargs="?", default="digits",
                   help="checkpoint or diffusers folder, shipped model (default digits), or a model file run as it is: "
                        ".onnx (fp32, fp16 or int8), .plan, .pt2")
    p.add_argument("--samplers", default="full",
                   help="quick, full (default), solvers (the multistep solvers at 5-20 calls against DDIM at 10-100), or "
                        "a list such as ddim:20,ddim:50:1,ddpm:1000,dpmsolver:10:3,unipc:8 (the last number: η or order)")
    p.add_argument("--seeds", default="0", help="seeds to sample each setting with, e.g. 0,1: the table gives the "
                   "mean ± half the range (default 0)")
    p.add_argument("--samples", type=int_in(2, 10 ** 6), default=500, help="images per sampler (default 500)")
    p.add_argument("--spacing", default=DEFAULT_SPACING,
                   help=f"timestep spacing, or several to compare, e.g. leading,trailing,linspace (default {DEFAULT_SPACING}: "
                        "the best measured)")
    p.add_argument("--clip-sample", metavar="C[,C...]",
                   help="clip x̂₀ to ±C at every step, or several values to compare, e.g. 1,0 (0 or off: unclipped); "
                        "default: each sampler's own, as ddpmrt sample runs it")
    p.add_argument("--backend", choices=REPORT_BACKENDS,
                   help="weights: onnxruntime (fp32 ONNX; the default), openvino (the ONNX file on the CPU, in "
                        "--precision), torch, or tensorrt (an fp16 engine built here; needs a GPU); an .onnx: onnxruntime "
                        "(default) or openvino; a .plan or .pt2 runs on its own")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="onnxruntime and torch: cpu or cuda (default cpu)")
    p.add_argument("--precision", choices=REPORT_PRECISIONS,
                   help="--backend torch or openvino: the precision of the U-Net and the Gaussian check, e.g. bf16 "
                        "against fp32 (default fp32, or a model file's own; auto = what sample would use here)")
    p.add_argument("--dataset", choices=[*JUDGED_DATASETS, NO_DATASET],
                   help="the data set whose classifier judges the samples, where the model does not say (a diffusers "
                        f"folder, an older export); {NO_DATASET}: latency and the Gaussian check only")
    add_threads(p)
    p.add_argument("--out", default="report", help="report directory (default ./report)")
    add_quiet(p)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> None:
    from ddpmrt.engine.artifacts.io import check_output_dir
    from ddpmrt.engine.backends import resolve_model_path
    from ddpmrt.engine.checks import int_list
    from ddpmrt.engine.sampler_factory import TUNED
    from ddpmrt.engine.samplers import SPACINGS
    from ddpmrt.export.evaluation.report import parse_samplers, run_report, with_clipping

    check_output_dir(ns.out)
    model = resolve_model_path(ns.model)
    spacings = [s.strip() for s in ns.spacing.split(",") if s.strip()]
    for spacing in spacings:
        if spacing not in (*SPACINGS, TUNED):
            raise UserError(f"unknown spacing {spacing!r}; choose one or more of {', '.join(SPACINGS)}, {TUNED}")
    if not spacings or len(set(spacings)) != len(spacings):
        raise UserError(f"--spacing {ns.spacing!r}: name each spacing once, e.g. leading,trailing")
    seeds = int_list(ns.seeds, "--seeds", low=0, high=MAX_SEED)
    samplers = with_clipping(parse_samplers(ns.samplers), _clip_values(ns.clip_sample))
    run_report(model, Path(ns.out), samplers, num_samples=ns.samples, spacings=spacings,
               backend=ns.backend, device=ns.device, threads=ns.threads, progress=not ns.quiet, seeds=seeds,
               precision=ns.precision, name=ns.model, dataset=ns.dataset)
    print((Path(ns.out) / "report.md").read_text(encoding="utf-8"))


def _clip_values(text: str | None) -> list[float]:
    """--clip-sample 1,0,off: each value read and checked as the samplers declare clip_sample; 0 is unclipped
    (given to make_sampler as 0, which stays unclipped whatever the commands' default is)."""
    from ddpmrt.engine.sampler_options import clip_option

    if text is None:
        return []
    declared, values = clip_option(None), []
    for item in (part.strip() for part in text.split(",")):
        try:
            value = declared.from_text("0" if item.lower() in ("off", "none") else item) or 0.0
        except UserError:
            raise UserError(f"--clip-sample {text!r}: each value is a number in [0, 100] or off, e.g. 1,0") from None
        if value in values:
            raise UserError(f"--clip-sample {text!r}: name each value once, e.g. 1,0")
        values.append(value)
    return values
