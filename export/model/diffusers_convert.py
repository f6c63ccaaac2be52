"""ddpmrt's U-Net as a diffusers `UNet2DModel` with the same weights.

The two are the same network (diffusers' google/ddpm-cifar10-32 is Ho et al.'s model): this
maps the configuration and renames the tensors, splitting the attention's fused 1×1 qkv
convolution into diffusers' to_q / to_k / to_v linears.  Used to compare ddpmrt with
diffusers' pipelines on identical weights, and to hand a trained model to diffusers users.
"""

from __future__ import annotations

import torch

from ddpmrt.export.model.unet import AttnBlock, Downsample, ResBlock, UNet, UNetConfig, Upsample

RESBLOCK_NAMES = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2",
                  "conv2": "conv2", "skip": "conv_shortcut"}


def diffusers_config(config: UNetConfig) -> dict:
    """UNet2DModel keyword arguments for the same architecture."""
    levels = len(config.ch_mult)
    attn = [config.image_size // 2 ** level in config.attn_resolutions for level in range(levels)]
    return dict(
        sample_size=config.image_size, in_channels=config.image_channels, out_channels=config.image_channels,
        block_out_channels=tuple(config.ch * m for m in config.ch_mult), layers_per_block=config.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=None,               # one head of all channels, as in DDPM
        norm_num_groups=config.norm_groups, norm_eps=1e-6, dropout=config.dropout,
        flip_sin_to_cos=False, freq_shift=1,   # DDPM's [sin, cos] embedding with (half - 1) in the exponent
        act_fn="silu", time_embedding_type="positional",
    )


def diffusers_schedule(schedule) -> dict:
    """A diffusers scheduler's schedule arguments for a ddpmrt NoiseSchedule (any kind, by its betas if need be)."""
    kinds = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
    args = {"num_train_timesteps": schedule.num_train_timesteps, "timestep_spacing": "leading"}
    if schedule.kind in ("linear", "scaled_linear"):
        return {**args, "beta_schedule": kinds[schedule.kind], "beta_start": schedule.params["beta_start"],
                "beta_end": schedule.params["beta_end"]}
    if schedule.kind == "cosine" and schedule.params.get("s", 0.008) == 0.008 and schedule.params.get("max_beta", 0.999) == 0.999:
        return {**args, "beta_schedule": "squaredcos_cap_v2"}
    return {**args, "trained_betas": schedule.betas.tolist()}


def _block_pairs(model: UNet):
    """(ddpmrt module, diffusers prefix) for every block, walking both layouts in the same order."""
    c = model.config
    yield from ((model.conv_in, "conv_in"), (model.norm_out, "conv_norm_out"), (model.conv_out, "conv_out"))
    entries = iter(model.down)
    for level in range(len(c.ch_mult)):
        for j in range(c.num_res_blocks):
            blocks = next(entries)
            yield blocks[0], f"down_blocks.{level}.resnets.{j}"
            if len(blocks) > 1:
                yield blocks[1], f"down_blocks.{level}.attentions.{j}"
        if level != len(c.ch_mult) - 1:
            yield next(entries)[0], f"down_blocks.{level}.downsamplers.0"
    yield model.mid[0], "mid_block.resnets.0"
    yield model.mid[1], "mid_block.attentions.0"
    yield model.mid[2], "mid_block.resnets.1"
    entries = iter(model.up)
    for level in range(len(c.ch_mult)):
        for j in range(c.num_res_blocks + 1):
            blocks = next(entries)
            yield blocks[0], f"up_blocks.{level}.resnets.{j}"
            if len(blocks) > 1:
                yield blocks[1], f"up_blocks.{level}.attentions.{j}"
        if level != len(c.ch_mult) - 1:
            yield next(entries)[0], f"up_blocks.{level}.upsamplers.0"


def diffusers_state_dict(model: UNet) -> dict[str, torch.Tensor]:
    state = {"time_embedding.linear_1.weight": model.temb[0].weight, "time_embedding.linear_1.bias": model.temb[0].bias,
             "time_embedding.linear_2.weight": model.temb[2].weight, "time_embedding.linear_2.bias": model.temb[2].bias}
    for module, prefix in _block_pairs(model):
        if isinstance(module, ResBlock):
            for name, tensor in module.named_parameters():
                child, kind = name.split(".")
                state[f"{prefix}.{RESBLOCK_NAMES[child]}.{kind}"] = tensor
        elif isinstance(module, AttnBlock):
            ch = module.proj.weight.shape[0]
            weights = module.qkv.weight.reshape(3, ch, ch)
            biases = module.qkv.bias.reshape(3, ch)
            for i, name in enumerate(("to_q", "to_k", "to_v")):
                state[f"{prefix}.{name}.weight"], state[f"{prefix}.{name}.bias"] = weights[i], biases[i]
            state[f"{prefix}.to_out.0.weight"] = module.proj.weight.reshape(ch, ch)
            state[f"{prefix}.to_out.0.bias"] = module.proj.bias
            state[f"{prefix}.group_norm.weight"], state[f"{prefix}.group_norm.bias"] = module.norm.weight, module.norm.bias
        elif isinstance(module, (Downsample, Upsample)):
            state[f"{prefix}.conv.weight"], state[f"{prefix}.conv.bias"] = module.conv.weight, module.conv.bias
        else:  # conv_in, norm_out, conv_out
            state[f"{prefix}.weight"], state[f"{prefix}.bias"] = module.weight, module.bias
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def to_diffusers(model: UNet):
    """A diffusers UNet2DModel (eval mode) computing the same ε as `model`."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(**diffusers_config(model.config))
    unet.load_state_dict(diffusers_state_dict(model), strict=True)  # raises on any unmatched tensor
    return unet.to(next(model.parameters()).device).eval()
