"""The `ddpmrt` command line: train, sample (and, from the export issue on, export-onnx / export-engine).

torch is imported only by the subcommands that need it, so `ddpmrt sample` on an ONNX
model works in an environment without PyTorch.  User mistakes (UserError) are printed as
one line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpmrt.engine.errors import UserError


def _train(ns: argparse.Namespace) -> None:
    from ddpmrt.export.train import TrainArgs, train

    fields = TrainArgs.__dataclass_fields__
    train(TrainArgs(**{k: v for k, v in vars(ns).items() if k in fields and v is not None}))


def _sample(ns: argparse.Namespace) -> None:
    from ddpmrt.engine import DDIMSampler, DDPMSampler, load_model, save_images

    out = Path(ns.out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise UserError(f"--out {out} must end in .png (a grid) or .npz (array 'images')")
    if ns.batch < 1:
        raise UserError("--batch must be at least 1")
    model = load_model(ns.model, backend=ns.backend, device=ns.device)
    if ns.sampler == "ddim":
        sampler = DDIMSampler(model.schedule, num_steps=ns.steps, eta=ns.eta, spacing=ns.spacing,
                              clip_sample=ns.clip_sample)
    else:
        sampler = DDPMSampler(model.schedule, num_steps=ns.steps, variance=ns.variance,
                              clip_sample=ns.clip_sample if ns.clip_sample is not None else 1.0,
                              spacing=ns.spacing)
    images = sampler.sample(model, (ns.batch, *model.image_shape), seed=ns.seed, progress=not ns.quiet)
    save_images(images, out)
    print(f"wrote {ns.batch} samples ({ns.sampler.upper()}, {sampler.num_steps} steps, seed {ns.seed}) to {out}")


def build_parser() -> argparse.ArgumentParser:
    from ddpmrt.engine import __version__
    from ddpmrt.engine.samplers import SPACINGS

    parser = argparse.ArgumentParser(prog="ddpmrt", description="Diffusion model training, export and fast sampling.")
    parser.add_argument("--version", action="version", version=f"ddpmrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an ε-predicting U-Net (DDPM L_simple)")
    p.add_argument("--dataset", required=True, help="digits, shapes, a folder of images, or a .npz/.npy array")
    p.add_argument("--model", default="tiny", help="U-Net config: tiny or cifar10 (default tiny)")
    p.add_argument("--iters", type=int, required=True, help="total training steps (a resumed run continues to this)")
    p.add_argument("--batch-size", type=int, default=128, help="batch per process (default 128)")
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--image-size", type=int, help="resize the data to S×S")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-4)")
    p.add_argument("--warmup", type=int, help="LR warm-up steps (default 500)")
    p.add_argument("--ema-decay", type=float, help="EMA decay (default 0.9999)")
    p.add_argument("--grad-clip", type=float, help="gradient-norm clip (default 1.0)")
    p.add_argument("--schedule", choices=["linear", "cosine"], help="noise schedule (default linear)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="autocast precision (default fp32)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--seed", type=int, help="seed for every random choice (default 0)")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (default 1000)")
    p.add_argument("--sample-every", type=int, help="sample grid every N steps and at the end, 0 = never (default 2000)")
    p.add_argument("--log-every", type=int, help="log line every N steps (default 50)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="sample images from a model")
    p.add_argument("model", help="checkpoint directory or shipped model name (e.g. digits)")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η (0 deterministic, 1 DDPM-like)")
    p.add_argument("--spacing", choices=SPACINGS, default="leading")
    p.add_argument("--variance", choices=["fixed_small", "fixed_large"], default="fixed_small", help="DDPM only")
    p.add_argument("--clip-sample", type=float, default=None, help="clip x̂₀ to ±C (DDPM default 1.0)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", help="auto or torch")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", required=True, help="a .png grid or a .npz with array 'images'")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        ns.func(ns)
    except UserError as exc:
        print(f"ddpmrt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddpmrt: interrupted", file=sys.stderr)
        return 130
    return 0


def export_engine_main(argv: list[str] | None = None) -> int:
    print("export-engine: not implemented yet (see the export issue); use `ddpmrt train` and `ddpmrt sample`",
          file=sys.stderr)
    return 2
