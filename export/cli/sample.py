"""`ddpmrt sample`: images from any model ddpmrt loads, with any sampler, to a PNG grid or an .npz."""

from __future__ import annotations

import argparse
import sys

from ddpmrt.engine.errors import UserError
from ddpmrt.export.cli.options import (
    MAX_BATCH,
    RUN_PRECISIONS,
    add_description,
    add_quiet,
    add_seed,
    add_threads,
    description,
    int_in,
    real_in,
    steps_arg,
)

NAME, OUTPUT = "sample", "file"


def add_sampler_options(p: argparse.ArgumentParser) -> None:
    """--sampler, --steps and each sampler's options.  They default to None here: make_sampler fills in
    SAMPLER_DEFAULTS, the one set every command uses, and refuses an option a sampler does not take."""
    from ddpmrt.engine.sampler_factory import SAMPLER_DEFAULTS, SAMPLERS
    from ddpmrt.engine.samplers import SPACINGS

    ddim, ddpm, dpm, unipc = (SAMPLER_DEFAULTS[name] for name in ("ddim", "ddpm", "dpmsolver", "unipc"))
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                   help="ddim, ddpm, or a few-step multistep solver: dpmsolver (DPM-Solver++) or unipc (default ddim)")
    p.add_argument("--steps", type=steps_arg,
                   help=f"network calls, at most the model's training timesteps (default {ddim['steps']} for ddim and "
                        f"ddpm, {dpm['steps']} for dpmsolver and unipc)")
    p.add_argument("--eta", type=real_in(0, 10),
                   help=f"ddim only: η in [0, 10], 0 deterministic, 1 DDPM-like (default {ddim['eta']:g})")
    p.add_argument("--variance", choices=["fixed_small", "fixed_large"],
                   help=f"ddpm only: the posterior variance (default {ddpm['variance']})")
    p.add_argument("--order", type=int_in(1, 3),
                   help=f"dpmsolver and unipc: solver order 1-3 (default {dpm['order']})")
    p.add_argument("--solver-type", choices=["midpoint", "heun"],
                   help=f"dpmsolver only: the second-order form (default {dpm['solver_type']})")
    p.add_argument("--variant", choices=["bh1", "bh2"], help=f"unipc only: B(h) = h or e^h - 1 (default {unipc['variant']})")
    p.add_argument("--corrector", choices=["on", "off"],
                   help="unipc only: the UniC corrector, which costs no network call (default on)")
    p.add_argument("--spacing", choices=SPACINGS,
                   help=f"timestep spacing (default {ddim['spacing']} for ddim and ddpm: the best measured; "
                        f"{dpm['spacing']} for the solvers, as diffusers)")
    p.add_argument("--clip-sample", type=real_in(0, 100),
                   help=f"clip x̂₀ to ±C, as diffusers does (default {ddim['clip_sample']:g}: images lie in [-1, 1]); "
                        "0 turns it off")


def sampler_options(ns: argparse.Namespace) -> dict:
    """The sampler options given on the command line (make_sampler fills in the rest)."""
    from ddpmrt.engine.sampler_factory import ALL_OPTIONS

    options = {key: getattr(ns, key) for key in ALL_OPTIONS if getattr(ns, key, None) is not None}
    if "corrector" in options:
        options["corrector"] = options["corrector"] == "on"
    return options


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="sample images from a model")
    p.add_argument("model", nargs="?", help="checkpoint directory, shipped model name (e.g. digits), .onnx or .plan file, "
                   "or a diffusers pipeline folder")
    p.add_argument("--from-diffusers", metavar="DIR", help="a saved diffusers pipeline folder (or its unet/ folder)")
    add_sampler_options(p)
    p.add_argument("--batch", type=int_in(1, MAX_BATCH), default=64, help="images to sample (default 64)")
    add_seed(p, "noise seed: image k of a seed is the same in any batch")
    p.add_argument("--backend", default="auto",
                   help="auto, inductor, onnxruntime, openvino, tensorrt or torch (default auto: by file type; an .onnx "
                        "on the CPU runs on openvino where installed, else onnxruntime; a checkpoint on --device cuda runs "
                        "on inductor, torch.compile plus one CUDA graph per loop; on a CPU where bf16 is faster on openvino "
                        "(its ONNX export, made once and cached) or else inductor; eager torch elsewhere)")
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
    add_description(p, "for an .onnx without ddpmrt metadata or a bare diffusers UNet folder: "
                       "linear[:T:start:end] or cosine[:T]")
    p.add_argument("--out", required=True, help="a .png grid or a .npz with array 'images'")
    add_quiet(p)
    p.set_defaults(func=run)


def backend_description(model) -> str:
    """What ran: the backend, its device and the precision it computed in (auto resolves per CPU)."""
    precision = getattr(model, "precision", None) or getattr(getattr(model, "metadata", None), "precision", "fp32")
    return f"{model.backend} on {getattr(model, 'device', 'cuda')}, {precision}"


def run(ns: argparse.Namespace) -> None:
    from ddpmrt.engine import load_model, make_sampler, save_images
    from ddpmrt.engine.artifacts.io import check_output_file

    out = check_output_file(ns.out, (".png", ".npz"))
    if ns.batch < 1:
        raise UserError("--batch must be at least 1")
    schedule, image_shape = description(ns)
    if ns.from_diffusers:
        from ddpmrt.export.model.sources import find_diffusers_unet

        find_diffusers_unet(ns.from_diffusers)  # a one-line error for anything but a pipeline or unet/ folder
    elif not ns.model:
        raise UserError("name a model (checkpoint, shipped name, .onnx or .plan) or pass --from-diffusers DIR")
    model = load_model(ns.from_diffusers or ns.model, backend=ns.backend, device=ns.device, threads=ns.threads,
                       schedule=schedule, image_shape=image_shape, cuda_graph=ns.cuda_graph, precision=ns.precision)
    if ns.cuda_graph and getattr(model, "device_loop", None) is None:
        raise UserError("--cuda-graph needs a GPU backend: a .plan engine, or a checkpoint with --device cuda "
                        "(and cuda-python with NVRTC: pip install 'ddpmrt[gpu]')")
    sampler = make_sampler(ns.sampler, model.schedule, ns.steps, **sampler_options(ns))
    if model.backend == "inductor" and not ns.quiet:
        # The first step waits for TorchInductor; without a word it would look like a hang.  (Only inductor:
        # OpenVINO and ONNX Runtime compile at load, in a second or two.)
        print(f"compiling the network with inductor ({model.precision}; 30-60 s in a new process on a CPU); "
              "--backend torch runs it eager", file=sys.stderr)
    images = sampler.sample(model, (ns.batch, *model.image_shape), seed=ns.seed, progress=not ns.quiet)
    save_images(images, out)
    print(f"wrote {ns.batch} samples ({ns.sampler.upper()}, {sampler.num_steps} steps, seed {ns.seed}; "
          f"{backend_description(model)}) to {out}")
