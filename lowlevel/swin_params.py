"""The Swin Transformer's parameters: names and shapes for a config, and the initialisation every implementation uses.

Names follow the ViT's (lowlevel/params.py) inside a block, and timm's stage layout around them (each checkpoint
format maps them in its own file under paper/formats/):

    patch.weight (C, in·P·P), patch.bias      the 4×4 patch projection of §3.1, as an F.linear weight
    patch_norm.weight/bias (C,)               the LayerNorm after it
    stages.{s}.blocks.{j}.ln1/ln2.weight/bias (C_s,)
    stages.{s}.blocks.{j}.qkv.weight (3C_s, C_s), qkv.bias    proj.weight (C_s, C_s), proj.bias
    stages.{s}.blocks.{j}.relative_position_bias_table ((2M_h−1)(2M_w−1), heads_s)    B̂ of §3.2
    stages.{s}.blocks.{j}.fc1.weight (αC_s, C_s), fc1.bias    fc2.weight (C_s, αC_s), fc2.bias
    stages.{s}.merge.norm.weight/bias (4C,), stages.{s}.merge.reduction.weight (2C, 4C)   patch merging, §3.1:
        in stages 1..3 with merge_position "start", in stages 0..2 with "end"
    norm.weight/bias (8C,)                    the LayerNorm before the average pooling
    head.weight (K, 8C), head.bias (K,)
"""
import math

import torch

from .checks import check_config
from .swin_config import SwinConfig


def merge_stage(cfg: SwinConfig, k: int) -> int:
    """The stage that holds the k-th patch merging (k = 0 halves stage 0's grid): k + 1 with merge_position "start",
    k with "end"."""
    return k + 1 if cfg.merge_position == "start" else k


def merge_index(cfg: SwinConfig, stage: int) -> int:
    """The inverse of `merge_stage`: which merging `stage` holds."""
    return stage - 1 if cfg.merge_position == "start" else stage


def block_windows(cfg: SwinConfig) -> dict[tuple[int, int], tuple[tuple[int, int], tuple[int, int]]]:
    """{(stage, block): (window, shift)}: blocks alternate W-MSA and SW-MSA, the odd ones shifted (eq. (3))."""
    return {(s, j): cfg.window_and_shift(size, shifted=j % 2 == 1)
            for s, size in enumerate(cfg.stage_sizes) for j in range(cfg.depths[s])}


def param_shapes(cfg: SwinConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape for `cfg`, in the order the model uses them."""
    check_config(cfg, SwinConfig)
    c, p = cfg.dim, cfg.patch_size
    shapes = {"patch.weight": (c, cfg.in_channels * p * p), "patch.bias": (c,),
              "patch_norm.weight": (c,), "patch_norm.bias": (c,)}
    merges = {merge_stage(cfg, k): cfg.stage_dims[k] for k in range(cfg.num_stages - 1)}   # stage -> input width
    windows = block_windows(cfg)
    for s, (d, m, heads) in enumerate(zip(cfg.stage_dims, cfg.mlp_dims, cfg.num_heads, strict=True)):
        if s in merges and cfg.merge_position == "start":
            shapes.update(merge_shapes(f"stages.{s}.merge.", merges[s]))
        for j in range(cfg.depths[s]):
            (mh, mw), _ = windows[s, j]
            b = f"stages.{s}.blocks.{j}."
            shapes.update({b + "ln1.weight": (d,), b + "ln1.bias": (d,), b + "qkv.weight": (3 * d, d)})
            if cfg.qkv_bias:
                shapes[b + "qkv.bias"] = (3 * d,)
            shapes.update({b + "proj.weight": (d, d), b + "proj.bias": (d,),
                           b + "relative_position_bias_table": ((2 * mh - 1) * (2 * mw - 1), heads),
                           b + "ln2.weight": (d,), b + "ln2.bias": (d,), b + "fc1.weight": (m, d), b + "fc1.bias": (m,),
                           b + "fc2.weight": (d, m), b + "fc2.bias": (d,)})
        if s in merges and cfg.merge_position == "end":
            shapes.update(merge_shapes(f"stages.{s}.merge.", merges[s]))
    f = cfg.num_features
    shapes.update({"norm.weight": (f,), "norm.bias": (f,)})
    if cfg.num_classes:
        shapes.update({"head.weight": (cfg.num_classes, f), "head.bias": (cfg.num_classes,)})
    return shapes


def merge_shapes(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    """Patch merging of a width-C map: LayerNorm over the 4C concatenation, then a 4C -> 2C projection, no bias."""
    return {prefix + "norm.weight": (4 * width,), prefix + "norm.bias": (4 * width,),
            prefix + "reduction.weight": (2 * width, 4 * width)}


def trunc_normal(shape, std: float, g: torch.Generator | None) -> torch.Tensor:
    """timm's `trunc_normal_(std=.02)`: N(0, std²) cut at ±2 (absolute, ±100σ, so practically untruncated)."""
    return torch.nn.init.trunc_normal_(torch.empty(shape), 0.0, std, -2.0, 2.0, generator=g)


def uniform(shape, bound: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.empty(shape).uniform_(-bound, bound, generator=g)


def init_params(cfg: SwinConfig, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Float32 parameters initialised as the original, timm and torchvision do: every linear weight (q/k/v,
    projections, MLP, patch merging, head) and every B̂ trunc_normal(0.02) with zero biases (original
    `_init_weights`, timm `init_weights_vit_timm`, torchvision's model-level loop); LayerNorms 1 and 0; the patch
    projection, a Conv2d none of them re-initialises, PyTorch's default U(±1/√fan_in) for weight and bias."""
    check_config(cfg, SwinConfig)
    g = generator
    fan_in = cfg.in_channels * cfg.patch_size ** 2
    out = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 2)[-2] if name.count(".") else name   # "qkv", "ln1", "patch", "reduction", ...
        if name.startswith("patch."):
            out[name] = uniform(shape, 1 / math.sqrt(fan_in), g)
        elif leaf in ("ln1", "ln2", "norm", "patch_norm") and name.endswith(".weight"):
            out[name] = torch.ones(shape)
        elif name.endswith(".bias"):
            out[name] = torch.zeros(shape)
        else:
            out[name] = trunc_normal(shape, 0.02, g)
    return out

