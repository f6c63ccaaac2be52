"""`ddpmrt sample`: images from any model ddpmrt loads, with any sampler, to a PNG grid or an .npz."""

from __future__ import annotations

import argparse
import sys

from ddpmrt.engine.errors import UserError, install_hint
from ddpmrt.export.cli.options import (
    MAX_BATCH,
    add_description,
    add_quiet,
    add_runtime,
    add_sampler_options,
    add_seed,
    description,
    int_in,
    sampler_options,
    tuned_schedules,
)

NAME, OUTPUT = "sample", "file"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="sample images from a model")
    p.add_argument("model", nargs="?", help="checkpoint directory, shipped model name (e.g. digits), .onnx or .plan file, "
                   "or a diffusers pipeline folder")
    p.add_argument("--from-diffusers", metavar="DIR", help="a saved diffusers pipeline folder (or its unet/ folder)")
    add_sampler_options(p)
    p.add_argument("--batch", type=int_in(1, MAX_BATCH), default=64, help="images to sample (default 64)")
    add_seed(p, "noise seed: image k of a seed is the same in any batch")
    add_runtime(p)
    add_description(p, "for an .onnx without ddpmrt metadata or a bare diffusers UNet folder: "
                       "linear[:T:start:end] or cosine[:T]")
    p.add_argument("--out", required=True, help="a .png grid or a .npz with array 'images'")
    add_quiet(p)
    p.set_defaults(func=run)


def backend_description(model) -> str:
    """What ran: the backend, its device and the precision it computed in (auto resolves per CPU; a .pt2
    package computes in the precision it was built in, which its sidecar records)."""
    sidecar = getattr(model, "sidecar", None) or {}
    precision = sidecar.get("precision") or getattr(model, "precision", None) or \
        getattr(getattr(model, "metadata", None), "precision", "fp32")
    backend = "AOTInductor package" if model.backend == "inductor" and sidecar else model.backend
    return f"{backend} on {getattr(model, 'device', 'cuda')}, {precision}"


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
                        f"(and cuda-python with NVRTC: {install_hint('gpu')})")
    sampler = make_sampler(ns.sampler, model.schedule, ns.steps, tuned=tuned_schedules(ns.from_diffusers or ns.model),
                           **sampler_options(ns))
    if model.backend == "inductor" and not getattr(model, "sidecar", None) and not ns.quiet:
        # The first step waits for TorchInductor; without a word it would look like a hang.  (Only inductor's
        # JIT: a .pt2 package was compiled ahead; OpenVINO and ONNX Runtime compile at load, in a second or two.)
        print(f"compiling the network with inductor ({model.precision}; 30-60 s the first time on a CPU, then kept in "
              "Inductor's cache for later runs); "
              "--backend torch runs it eager", file=sys.stderr)
    images = sampler.sample(model, (ns.batch, *model.image_shape), seed=ns.seed, progress=not ns.quiet)
    save_images(images, out)
    print(f"wrote {ns.batch} samples ({ns.sampler.upper()}, {sampler.num_steps} steps, seed {ns.seed}; "
          f"{backend_description(model)}) to {out}")
