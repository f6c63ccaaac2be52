"""What the commands share: argparse types whose ranges are checked while parsing (a bad value is one
line before any work), each option that several commands take, declared once, and the model source
arguments of the export commands.

A command module (export/cli/<command>.py) declares its parser from these and the few options only it
has; `main.py` registers the commands.
"""

from __future__ import annotations

import argparse
import math

from ddpmrt.engine.errors import UserError

MAX_BATCH = 65536          # images per call; more is a loop over calls
MAX_THREADS = 4096
MAX_SEED = 2 ** 64 - 1     # the noise generator's key (Philox), and every other seed ddpmrt takes

# Precisions by what a command makes or runs: each list is the subset that command can honour.
RUN_PRECISIONS = ("auto", "fp32", "tf32", "fp16", "bf16", "int8")   # sample: any model ddpmrt loads
ONNX_PRECISIONS = ("fp32", "fp16", "int8")                          # export-onnx: the file's precision
ENGINE_PRECISIONS = ("fp16", "fp32", "bf16")                        # export-engine: an engine or .pt2
TRAIN_PRECISIONS = ("fp32", "fp16", "bf16")                         # train: autocast
REPORT_PRECISIONS = ("fp32", "bf16", "fp16", "auto")                # report: the U-Net and the Gaussian check


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
SEED = int_in(0, MAX_SEED)


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


def onnx_batch_arg(text: str):
    """export-onnx --batch: dynamic, or a fixed batch size."""
    if text == "dynamic":
        return text
    if text.isdigit() and 0 < int(text) <= MAX_BATCH:
        return int(text)
    raise UserError(f"--batch {text!r}: use dynamic or an integer in [1, {MAX_BATCH}]")


# -- options several commands take ---------------------------------------------------------------

def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_threads(p: argparse.ArgumentParser, what: str = "CPU threads for ONNX Runtime and OpenVINO",
                default: str = "all cores") -> None:
    p.add_argument("--threads", type=THREADS, help=f"{what} (default: {default})")


def add_seed(p: argparse.ArgumentParser, help_text: str, default: int | None = 0) -> None:
    shown = f" (default {default})" if default is not None else ""
    p.add_argument("--seed", type=SEED, default=default, help=help_text + shown)


def add_description(p: argparse.ArgumentParser, schedule_help: str, image_shape: bool = True) -> None:
    """--schedule and --image-shape: what a model file without ddpmrt metadata cannot say itself."""
    p.add_argument("--schedule", help=schedule_help)
    if image_shape:
        p.add_argument("--image-shape", help="for an .onnx without ddpmrt metadata: C,H,W")


def description(ns: argparse.Namespace):
    """The (schedule, image shape) that --schedule / --image-shape give, None where not given."""
    from ddpmrt.engine.artifacts.metadata import parse_image_shape_arg, parse_schedule_arg

    schedule = parse_schedule_arg(ns.schedule) if getattr(ns, "schedule", None) else None
    image_shape = parse_image_shape_arg(ns.image_shape) if getattr(ns, "image_shape", None) else None
    return schedule, image_shape


def add_export_source(p: argparse.ArgumentParser) -> None:
    """The weights an export command converts: a checkpoint or shipped name, or a diffusers folder."""
    p.add_argument("model", nargs="?", help="checkpoint directory or shipped model name")
    p.add_argument("--from-diffusers", metavar="DIR",
                   help="a saved diffusers pipeline folder (model_index.json, unet/, scheduler/) or its unet/ folder instead")
    add_description(p, "noise schedule where the source has none: linear[:T:start:end] or cosine[:T]", image_shape=False)
    p.add_argument("--opset", type=int_in(7, 30), default=18, help="ONNX opset (default 18)")


def export_source(ns: argparse.Namespace, precision: str):
    """The export source the arguments of add_export_source name, at `precision`."""
    from ddpmrt.export.model.sources import export_source as source

    return source(ns.model, ns.from_diffusers, description(ns)[0], precision)
