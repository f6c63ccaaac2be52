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
TRAIN_PRECISIONS = ("auto", "fp32", "fp16", "bf16")                 # train: autocast
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


def add_backend(p: argparse.ArgumentParser, default_help: str) -> None:
    """--backend: one of load_model's backends (engine/backends BACKENDS), default auto."""
    from ddpmrt.engine.backends import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default="auto", help=f"{', '.join(BACKENDS)} {default_help}")


def add_runtime(p: argparse.ArgumentParser) -> None:
    """How a loaded model runs: --backend, --device, --threads, --cuda-graph and --precision (load_model's options)."""
    add_backend(p, "(default auto: by file type; an .onnx "
                        "on the CPU runs on openvino where installed, else onnxruntime; a checkpoint on --device cuda runs "
                        "on inductor, torch.compile plus one CUDA graph per loop; on a CPU where bf16 is faster on openvino "
                        "(its ONNX export, made once and cached) or else inductor; eager torch elsewhere, and where inductor "
                        "has no compiler: Triton on CUDA, a C++ compiler on the CPU, with a note)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="cpu or cuda (default cpu; an engine runs on cuda, a .pt2 on the device it was built for)")
    add_threads(p)
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU backends: capture the whole sampling loop once and replay it as a CUDA graph "
                        "(default: only a CUDA .pt2 does)")
    p.add_argument("--precision", choices=RUN_PRECISIONS, default="auto",
                   help="auto (default) = fp16 on CUDA; on the CPU bf16 where it is faster (AMX-BF16, AVX512-BF16 "
                        "on AMD), else fp32, and int8 for an int8 .onnx; fp32 is IEEE fp32 (tf32 asks for TF32 "
                        "convolutions on CUDA); onnxruntime "
                        "computes fp32; int8 needs a model from export-onnx --precision int8")


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


def add_sampler_options(p: argparse.ArgumentParser) -> None:
    """--sampler, --steps and a flag for every option any sampler declares (Sampler.OPTIONS).  They default
    to None here: make_sampler fills in the commands' defaults and refuses an option a sampler does not take;
    each flag's help names the samplers that take it and their defaults."""
    from ddpmrt.engine.sampler_factory import SAMPLER_CLASSES, SAMPLERS

    p.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                   help="ddim, ddpm, or a few-step multistep solver: dpmsolver (DPM-Solver++) or unipc (default ddim)")
    steps = ", ".join(f"{cls.STEPS} for {name}" for name, cls in SAMPLER_CLASSES.items())
    p.add_argument("--steps", type=steps_arg, help=f"network calls, at most the model's training timesteps (default {steps}"
                   "; with --timesteps, their count)")
    add_option_flags(p)


def add_option_flags(p: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """A flag for every sampler option (or those of `names`), generated from the samplers' declarations."""
    from ddpmrt.engine.sampler_factory import SAMPLERS, all_options

    def shown_default(value) -> str:
        return "off" if value is None else (",".join(map(str, value)) or "none") if isinstance(value, tuple) else \
            ("on" if value is True else "off" if value is False else f"{value:g}" if isinstance(value, float) else str(value))

    for name, declared in all_options().items():
        if names is not None and name not in names:
            continue
        option = declared[0][1]
        takers = [sampler for sampler, _ in declared]
        who = "every sampler" if len(takers) == len(SAMPLERS) else ", ".join(takers) + " only" * (len(takers) == 1)
        defaults: dict[str, list[str]] = {}   # each default, with the samplers that have it
        for sampler, o in declared:
            defaults.setdefault(shown_default(o.for_commands), []).append(sampler)
        default = "" if option.for_commands is None and len(defaults) == 1 else \
            f"; default {next(iter(defaults))}" if len(defaults) == 1 else \
            "; default " + ", ".join(f"{value} ({', '.join(samplers)})" for value, samplers in defaults.items())
        p.add_argument(option.flag, dest=name, metavar=option.metavar or name.upper(),
                       help=f"{who}: {option.help}{default}")


def sampler_options(ns: argparse.Namespace) -> dict:
    """The sampler options given on the command line, read as their declarations say (make_sampler checks them
    against the sampler chosen)."""
    from ddpmrt.engine.sampler_factory import all_options

    return {name: declared[0][1].parse(getattr(ns, name)) for name, declared in all_options().items()
            if getattr(ns, name, None) is not None}


def tuned_schedules(model: str):
    """The tuned timesteps stored with `model` (--spacing tuned), read only if asked for."""
    from ddpmrt.engine.artifacts.schedules import TunedSchedules
    from ddpmrt.engine.backends import resolve_model_path

    return TunedSchedules(resolve_model_path(model), str(model))
