"""`ddpmrt train`: train an ε-predicting U-Net (export/training/trainer.py)."""

from __future__ import annotations

import argparse

from ddpmrt.engine.errors import UserError
from ddpmrt.export.cli.options import MAX_BATCH, SEED, TRAIN_PRECISIONS, int_in, real_in

NAME, OUTPUT = "train", "folder"


def add_parser(sub) -> None:
    from ddpmrt.export.training.args import TrainArgs

    d = TrainArgs()  # the defaults, stated once (a resumed run takes its saved settings instead)
    p = sub.add_parser(NAME, help="train an ε-predicting U-Net (DDPM L_simple)")
    p.add_argument("--dataset", help="digits, shapes, a folder of images, or a .npz/.npy array (required for a new run)")
    p.add_argument("--model", help=f"U-Net config: tiny or cifar10 (default {d.model})")
    p.add_argument("--iters", type=int_in(1, 10 ** 9),
                   help="total training steps (required for a new run; a resumed run continues to its saved value, or to this)")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), help=f"batch per process (default {d.batch_size})")
    p.add_argument("--out", required=True, help="checkpoint directory (required)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out with its saved settings; an option given here overrides its "
                        "saved value (except --dataset, --model, --image-size, --seed, --schedule, --dropout, "
                        "--norm-groups and --init-from)")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an --out that holds one (its files are removed)")
    p.add_argument("--image-size", type=int_in(4, 4096), help="resize the data to S×S (default: the data's own size)")
    p.add_argument("--dropout", type=real_in(0, 1, high_open=True),
                   help="the U-Net's dropout probability (default: the --model config's, 0.1)")
    p.add_argument("--norm-groups", type=int_in(1, 4096), metavar="G",
                   help="the U-Net's GroupNorm group count, a divisor of every GroupNorm's width (default: the "
                        "--model config's: tiny 16, cifar10 32; 32 on tiny's 32 channels is one channel per group, "
                        "which removes each channel's mean: docs/training.md)")
    p.add_argument("--init-from", metavar="MODEL",
                   help="start from the weights of this checkpoint folder or shipped model (a fine-tune, with a fresh "
                        "optimizer), not from random weights; it must be the same --model on data of the same shape "
                        "(--dropout and --norm-groups may differ: they hold no weights)")
    p.add_argument("--lr", type=real_in(0, 1, low_open=True), help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--warmup", type=int_in(0, 10 ** 9), help=f"LR warm-up steps (default {d.warmup})")
    p.add_argument("--cooldown", type=int_in(0, 10 ** 9),
                   help="the last N steps before --iters: the learning rate falls linearly to 0 "
                        f"(warmup-stable-decay); 0 = constant to the end (default {d.cooldown})")
    p.add_argument("--ema-decay", type=real_in(0, 1, high_open=True), help=f"EMA decay (default {d.ema_decay:g})")
    p.add_argument("--grad-clip", type=real_in(0, 1e6, low_open=True), help=f"gradient-norm clip (default {d.grad_clip:g})")
    p.add_argument("--snr-gamma", type=real_in(0, 1e6),
                   help="weight each sample's ε loss by min(SNR, γ)/SNR (Min-SNR-γ, as diffusers' --snr_gamma; "
                        f"5 is the paper's value), 0 = L_simple's equal weights (default {d.snr_gamma:g})")
    p.add_argument("--schedule", choices=["linear", "cosine"], help=f"noise schedule (default {d.schedule})")
    p.add_argument("--precision", choices=TRAIN_PRECISIONS, help=f"autocast precision (default {d.precision}: bf16 on a CUDA GPU that has it and "
                        "on a CPU where bf16 is faster, as the engine's auto rule; fp32 elsewhere)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: cuda if available, else cpu")
    p.add_argument("--seed", type=SEED, help=f"seed for every random choice (default {d.seed})")
    p.add_argument("--save-every", type=int_in(1, 10 ** 9),
                   help=f"checkpoint every N steps (default {d.save_every}); a run also saves at 5 %% of its steps "
                        "and every --save-minutes, so a killed run of any length can resume")
    p.add_argument("--save-minutes", type=real_in(0, 10 ** 6),
                   help=f"also checkpoint every M minutes of training, 0 = by step only (default {d.save_minutes:g})")
    p.add_argument("--sample-every", type=int_in(0, 10 ** 9),
                   help=f"sample grid every N steps and at the end, 0 = never (default {d.sample_every})")
    p.add_argument("--log-every", type=int_in(1, 10 ** 9), help=f"log line every N steps (default {d.log_every})")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> None:
    from ddpmrt.engine.artifacts.io import check_output_dir
    from ddpmrt.export.training.trainer import TrainArgs, resume_args, train

    check_output_dir(ns.out)
    fields = TrainArgs.__dataclass_fields__
    given = {k: v for k, v in vars(ns).items() if k in fields and v is not None}
    if not ns.resume:
        if ns.dataset is None or ns.iters is None:
            raise UserError("a new run needs --dataset and --iters (--resume continues the run in --out with its own)")
        return train(TrainArgs(**given))
    # --resume: the saved run's settings; an option given here overrides its saved value, and says so.
    args, overridden = resume_args(ns.out, {k: v for k, v in given.items() if k != "resume"})
    print(f"ddpmrt train: resuming {ns.out} with its saved settings"
          + (f"; overriding {', '.join(overridden)}" if overridden else ""))
    train(args)
