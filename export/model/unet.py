"""The ε-predicting U-Net of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models").

Layout (paper appendix B, and the authors' `diffusion_tf/models/unet.py`):

    x ─ conv_in ─┬─ [ResBlock × num_res_blocks (+ attention)] ─ Downsample ─ ... ─┐
                 │                                                               middle: Res, Attn, Res
    eps ─ conv_out ─ GroupNorm/SiLU ─ [ResBlock × (num_res_blocks + 1) (+ attention)] ─ Upsample ─ ...

Every ResBlock adds a per-channel shift computed from the timestep (sinusoidal embedding,
a 2-layer MLP, then the block's own projection) and every decoder block concatenates the
matching encoder activation (skip connection).  The shifts depend on t alone, so a runtime
can compute them for every timestep once (`UNet.precompute_time_table`) and look them up.

The configuration is a plain dataclass so that it can be written to a checkpoint's
config.json and to ONNX metadata, and read back without any code but this file.

One module, two execution forms of the same weights (`UNet.set_execution_form`):
- "export" (the default): GroupNorm statistics and attention logits computed in fp32 by explicit
  casts, so an fp16 ONNX graph (and a strongly typed TensorRT engine built from it) keeps them
  accurate whatever the backend's kernels do;
- "native": PyTorch's own kernels, which already accumulate in fp32 on the GPU:
  `F.group_norm` on the fp16 input and `F.scaled_dot_product_attention` (flash / memory-efficient
  attention), in a layout that stays channels_last.  The torch and inductor backends run this.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class UNetConfig:
    image_channels: int = 3
    image_size: int = 32
    ch: int = 128                          # base channel count
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)  # channels per level = ch * mult
    num_res_blocks: int = 2                # ResBlocks per level in the encoder
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    norm_groups: int = 32

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        for key in ("ch_mult", "attn_resolutions"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# Named configurations.  `cifar10` is the paper's 35.7 M-parameter CIFAR-10 model.
# `tiny` is small enough to train on two CPU cores and to ship inside the package.  Its 16 GroupNorm groups keep
# two channels per group at its 32-channel level: with 32 groups (its count until 2026-12-08, which the shipped
# digits keeps) each channel is normalised alone, its mean removed, and the network passes x_t's channel means to
# ε short of the gain the ODE needs, so unclipped samples saturate (benchmarks/results/cpu-shapes-mean-gain/;
# shapes at 6k steps, unclipped DDIM-50 FID 10.5 against 73: cpu-learning-curve/).
CONFIGS = {
    "cifar10": UNetConfig(),
    "tiny": UNetConfig(image_channels=1, image_size=16, ch=32, ch_mult=(1, 2, 2),
                       num_res_blocks=1, attn_resolutions=(8,), dropout=0.1, norm_groups=16),
}


def group_norm_widths(config: UNetConfig) -> set[int]:
    """The channel counts of every GroupNorm of the U-Net `config` describes, each of which `train --norm-groups`
    must divide (as diffusers' norm_num_groups must).  Built on the meta device, so no memory is used."""
    with torch.device("meta"):
        net = UNet(dataclasses.replace(config, norm_groups=1))
    return {m.num_channels for m in net.modules() if isinstance(m, nn.GroupNorm)}


def get_config(name: str, **overrides) -> UNetConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}")
    return dataclasses.replace(CONFIGS[name], **overrides)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Transformer positions, as in DDPM).

    Computed in fp32 whatever the module's dtype: sin/cos of t up to 1000 need the mantissa.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


EXECUTION_FORMS = ("export", "native")


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are computed in fp32 even when the module runs in fp16.

    Export form: mean and variance over a 32×32×C/G group overflow or lose precision in half
    unless computed in fp32, so the graph says so with casts; the cast back keeps the
    activations (and the exported ONNX graph) in the module's dtype.  Native form: PyTorch's
    kernel on the input's dtype, which accumulates its statistics in fp32 itself.
    """

    native = False  # set by UNet.set_execution_form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return GroupNorm32(min(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # 1×1 projection of the shortcut only where the channel count changes.
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, time_shift: torch.Tensor) -> torch.Tensor:
        """time_shift (N, out_ch): temb_proj(silu(temb)), a per-channel shift that depends on t alone."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + time_shift[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual connection."""

    native = False  # set by UNet.set_execution_form

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.native:
            # (n, 3c, h, w) -> (n, hw, 3c): a view when the activations are channels_last.
            qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2)
            q, k, v = (part.unsqueeze(1) for part in qkv.chunk(3, dim=-1))   # (n, 1 head, hw, c)
            out = F.scaled_dot_product_attention(q, k, v)                     # scale c^-1/2, fp32 softmax inside
            return x + self.proj(out.squeeze(1).transpose(1, 2).reshape(n, c, h, w))
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        # Logits and softmax in fp32: in fp16 the logits of a 256-position row can
        # overflow and the softmax loses its small weights.
        logits = torch.einsum("ncq,nck->nqk", q.float(), k.float()) * (c ** -0.5)
        weights = torch.softmax(logits, dim=-1).to(v.dtype)
        out = torch.einsum("nqk,nck->ncq", weights, v).reshape(n, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """eps = UNet(x, t): x (N,C,H,W) in [-1, 1], t (N,) int64 in [0, T-1]."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        temb_ch = 4 * c.ch
        self.temb = nn.Sequential(nn.Linear(c.ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch))
        self.conv_in = nn.Conv2d(c.image_channels, c.ch, 3, padding=1)

        # Encoder: remember every activation's channel count for the skip connections.
        self.down = nn.ModuleList()
        skip_chs = [c.ch]
        ch, res = c.ch, c.image_size
        for level, mult in enumerate(c.ch_mult):
            for _ in range(c.num_res_blocks):
                blocks = [ResBlock(ch, c.ch * mult, temb_ch, c.dropout, c.norm_groups)]
                ch = c.ch * mult
                if res in c.attn_resolutions:
                    blocks.append(AttnBlock(ch, c.norm_groups))
                self.down.append(nn.ModuleList(blocks))
                skip_chs.append(ch)
            if level != len(c.ch_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skip_chs.append(ch)
                res //= 2

        self.mid = nn.ModuleList([
            ResBlock(ch, ch, temb_ch, c.dropout, c.norm_groups),
            AttnBlock(ch, c.norm_groups),
            ResBlock(ch, ch, temb_ch, c.dropout, c.norm_groups),
        ])

        # Decoder: one more ResBlock per level than the encoder, each eating one skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.ch_mult))):
            for _ in range(c.num_res_blocks + 1):
                blocks = [ResBlock(ch + skip_chs.pop(), c.ch * mult, temb_ch, c.dropout, c.norm_groups)]
                ch = c.ch * mult
                if res in c.attn_resolutions:
                    blocks.append(AttnBlock(ch, c.norm_groups))
                self.up.append(nn.ModuleList(blocks))
            if level != 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))
                res *= 2

        self.norm_out = _norm(ch, c.norm_groups)
        self.conv_out = nn.Conv2d(ch, c.image_channels, 3, padding=1)
        # Every ResBlock in call order, and their shifts' widths: the layout of a time-table row.
        self._resblocks = [m for m in self.modules() if isinstance(m, ResBlock)]
        self._shift_widths = [block.temb_proj.out_features for block in self._resblocks]
        self.register_buffer("time_table", None, persistent=False)  # see precompute_time_table

    def set_execution_form(self, form: str) -> "UNet":
        """"export" (explicit fp32 statistics and attention logits) or "native" (PyTorch's kernels)."""
        if form not in EXECUTION_FORMS:
            raise ValueError(f"unknown execution form {form!r}; choose one of {', '.join(EXECUTION_FORMS)}")
        for module in self.modules():
            if isinstance(module, (GroupNorm32, AttnBlock)):
                module.native = form == "native"
        return self

    def time_shifts(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every ResBlock's time shift (N, out_ch) for timesteps t, in call order.

        From the precomputed table when there is one (one row lookup), else computed: the
        sinusoidal embedding, the two-layer MLP, and one projection per ResBlock.
        """
        if self.time_table is not None and not self.training:  # training must reach the MLP's weights
            return list(self.time_table[t].split(self._shift_widths, dim=1))
        temb = self.temb(timestep_embedding(t, self.config.ch).to(self.conv_in.weight.dtype))
        temb = F.silu(temb)  # the same activation feeds every projection: computed once
        return [block.temb_proj(temb) for block in self._resblocks]

    def precompute_time_table(self, num_timesteps: int | None) -> "UNet":
        """Compute every ResBlock's time shift for t = 0 .. num_timesteps-1 once; calls then look rows up.

        The shifts depend on t alone, and a sampler visits at most the schedule's T timesteps.  Per
        call the MLP and the projections (24 small matrix products for cifar10) become one gather,
        which a compiler fuses into the additions that use it: at batch 1 on a GPU those matrix
        products are separate, launch-bound kernels in every step.  The table (T × 4992 values for
        cifar10: 10 MB in fp16) is computed in the module's current dtype and follows later
        `.to()` calls; it is not part of the state dict, so recompute it after loading new weights.
        None drops it.
        """
        self.time_table = None
        if num_timesteps:
            device = self.conv_in.weight.device
            with torch.no_grad():
                table = torch.cat(self.time_shifts(torch.arange(int(num_timesteps), device=device)), dim=1)
            self.time_table = table
        return self

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, shifts) -> torch.Tensor:
        for block in blocks:
            h = block(h, next(shifts)) if isinstance(block, ResBlock) else block(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shifts = iter(self.time_shifts(t))
        hs = [self.conv_in(x)]
        for blocks in self.down:
            hs.append(self._run(blocks, hs[-1], shifts))
        h = self._run(self.mid, hs[-1], shifts)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(blocks, h, shifts)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
