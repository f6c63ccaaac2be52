"""The settings of a training run, apart from the trainer so that the command line can state their
defaults without importing torch."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class TrainArgs:
    dataset: str = "digits"
    model: str = "tiny"
    out: str = "runs/digits"
    iters: int = 10000
    batch_size: int = 128             # per process
    lr: float = 2e-4
    warmup: int = 500                 # linear LR warm-up steps
    cooldown: int = 0                 # the last N steps before iters: the LR falls linearly to 0 (trainer.learning_rate)
    grad_clip: float = 1.0
    # Min-SNR-γ loss weight min(SNR, γ)/SNR (Hang et al. 2023); 0: L_simple.  5, because on both shipped data sets
    # it gave the better model at every length measured (benchmarks/results/cpu-learning-curve/, docs/training.md).
    snr_gamma: float = 5.0
    ema_decay: float = 0.9999
    image_size: int | None = None     # default: the dataset's own size
    dropout: float | None = None      # the U-Net's dropout; default: the --model config's (0.1 for tiny and cifar10)
    norm_groups: int | None = None    # the U-Net's GroupNorm groups; default: the --model config's (tiny 16, cifar10 32)
    init_from: str | None = None      # start from this checkpoint's (or shipped model's) weights, not at random
    seed: int = 0
    num_train_timesteps: int = 1000
    schedule: str = "linear"          # linear | cosine
    precision: str = "auto"           # auto | fp32 | fp16 | bf16 (autocast); auto: trainer.training_precision
    device: str = "auto"
    save_every: int = 1000
    save_minutes: float = 10.0        # also checkpoint this often by the clock (0: by step only)
    sample_every: int = 2000          # 0: never (a grid is also written at the end)
    log_every: int = 50
    resume: bool = False
    overwrite: bool = False           # a fresh run in a folder that holds one: remove it first
    progress: bool = True


# What a run is: a resumed run must keep these (the data, the network, the noise it draws).
FIXED_ON_RESUME = ("dataset", "model", "image_size", "seed", "num_train_timesteps", "schedule", "dropout", "norm_groups",
                   "init_from")
# What is not a setting of the run but of one command.
NOT_SAVED = ("out", "resume", "overwrite", "progress")
# Settings added after runs were first saved, with the value every run saved without them trained with: a resumed
# older run keeps that, not a later default.
BEFORE_SAVED = {"snr_gamma": 0.0, "cooldown": 0, "dropout": None, "norm_groups": None, "init_from": None}
