"""The hybrid's CNN (paper §3.1, "Hybrid Architecture"): BiT's ResNet-v2 without pre-activation (Kolesnikov et al. 2020,
arXiv:1912.11370), as the official code (vit_jax models_resnet.py, models_vit.py) and timm (resnetv2.py `Bottleneck`,
`create_resnetv2_stem` with stem_type="same") build it; config.py's BackboneConfig gives its sizes.

    stem:  x = MaxPool_3×3/2(ReLU(GN(StdConv_7×7/2(image))))
    unit:  y = ReLU(GN₁(StdConv₁ 1×1 (x)))
           y = ReLU(GN₂(StdConv₂ 3×3/s (y)))           s = 2 in the first unit of every stage after the first
           y = GN₃(StdConv₃ 1×1 (y))
           x = ReLU(y + shortcut)                      shortcut = GN_proj(StdConv_proj 1×1/s (x)) in a stage's first
                                                       unit (the channels change there), x elsewhere

StdConv convolves with the weight-standardised kernel (Qiao et al. 2019, arXiv:1903.10520): each output channel's
kernel shifted and scaled to mean 0 and variance 1 over its fan-in, Ŵ = (W − μ)/√(σ² + ε), which BiT pairs with
GroupNorm so that nothing depends on the batch. Every convolution and the max-pool pad as TensorFlow's "SAME", the
official code's: the output is ⌈n/stride⌉ and the padding that takes is split with the smaller half first (top,
left): (2, 3) for the 7×7/2 stem at 224 px, (0, 1) for a 3×3/2 convolution on an even map; the max-pool pads with
−∞, so a padded cell is never the maximum (timm StdConv2dSame, MaxPool2dSame).

Parameters, named without the `backbone.` prefix they have in the model's dict (params.py); kernels (out, in, kh, kw)
as F.conv2d takes them, w_s = width·2^s:

    stem.conv.weight (width, C, 7, 7)        stem.gn.weight/bias (width,)
    stages.{s}.units.{u}.conv1.weight (w_s, in, 1, 1)       gn1.weight/bias (w_s,)
    stages.{s}.units.{u}.conv2.weight (w_s, w_s, 3, 3)      gn2.weight/bias (w_s,)
    stages.{s}.units.{u}.conv3.weight (4·w_s, w_s, 1, 1)    gn3.weight/bias (4·w_s,)
    stages.{s}.units.0.conv_proj.weight (4·w_s, in, 1, 1)   gn_proj.weight/bias (4·w_s,)
"""
import math

import torch
import torch.nn.functional as F

from .checks import check_config
from .config import BackboneConfig
from .encoder import params_under
from .norm import group_norm

__all__ = ["param_shapes", "feature_map", "stem", "bottleneck", "std_conv", "weight_standardization",
           "same_padding", "max_pool"]


def param_shapes(cfg: BackboneConfig, in_channels: int) -> dict[str, tuple[int, ...]]:
    """Every parameter's name (without the `backbone.` prefix) and shape for images of `in_channels` channels."""
    check_config(cfg, BackboneConfig)
    shapes = {"stem.conv.weight": (cfg.width, in_channels, 7, 7), "stem.gn.weight": (cfg.width,),
              "stem.gn.bias": (cfg.width,)}
    channels = cfg.width
    for s, (units, width) in enumerate(zip(cfg.layers, cfg.stage_widths, strict=True)):
        for u in range(units):
            unit = f"stages.{s}.units.{u}."
            convs = {"conv1": (width, channels, 1, 1), "conv2": (width, width, 3, 3), "conv3": (4 * width, width, 1, 1)}
            if u == 0:
                convs["conv_proj"] = (4 * width, channels, 1, 1)
            for conv, shape in convs.items():
                gn = conv.replace("conv", "gn")
                shapes.update({f"{unit}{conv}.weight": shape, f"{unit}{gn}.weight": shape[:1],
                               f"{unit}{gn}.bias": shape[:1]})
            channels = 4 * width
    return shapes


def same_padding(x: torch.Tensor, kernel_size: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TF "SAME": (B, C, H, W) padded so that a kernel_size window at `stride` gives ⌈H/stride⌉ × ⌈W/stride⌉ outputs,
    the smaller half of each axis's padding before, the larger after."""
    pads = []
    for n in reversed(x.shape[-2:]):                    # F.pad lists the last axis first: (left, right, top, bottom)
        total = max((math.ceil(n / stride) - 1) * stride + kernel_size - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


def weight_standardization(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Ŵ = (W − μ)/√(σ² + ε), the mean and the (biased) variance over each output channel's fan-in C_in·kh·kw.
    (out, in, kh, kw) -> the same shape."""
    w = weight.flatten(1)                                                         # (out, in·kh·kw)
    mean = w.mean(dim=1, keepdim=True)
    var = w.var(dim=1, unbiased=False, keepdim=True)
    return ((w - mean) / torch.sqrt(var + eps)).reshape(weight.shape)


def std_conv(x: torch.Tensor, weight: torch.Tensor, stride: int, eps: float) -> torch.Tensor:
    """StdConv: the convolution by the standardised kernel, SAME padding, no bias.
    (B, C_in, H, W) with weight (C_out, C_in, k, k) -> (B, C_out, ⌈H/stride⌉, ⌈W/stride⌉)."""
    return F.conv2d(same_padding(x, weight.shape[-1], stride), weight_standardization(weight, eps), stride=stride)


def max_pool(x: torch.Tensor) -> torch.Tensor:
    """The stem's 3×3/2 max-pool with SAME padding: (B, C, H, W) -> (B, C, ⌈H/2⌉, ⌈W/2⌉)."""
    return F.max_pool2d(same_padding(x, 3, 2, value=-math.inf), 3, 2)


def conv_norm(params: dict, x: torch.Tensor, cfg: BackboneConfig, conv: str, stride: int = 1) -> torch.Tensor:
    """GN(StdConv(x)) with the convolution `conv` ("conv1", "stem.conv", ...) and its GroupNorm ("gn1", "stem.gn")."""
    gn = conv.replace("conv", "gn")
    x = std_conv(x, params[f"{conv}.weight"], stride, cfg.std_eps)
    return group_norm(x, params[f"{gn}.weight"], params[f"{gn}.bias"], cfg.num_groups, cfg.group_norm_eps)


def stem(params: dict, images: torch.Tensor, cfg: BackboneConfig) -> torch.Tensor:
    """The root: StdConv 7×7/2, GN, ReLU, max-pool 3×3/2. (B, C, H, W) -> (B, width, ⌈⌈H/2⌉/2⌉, ⌈⌈W/2⌉/2⌉)."""
    return max_pool(F.relu(conv_norm(params, images, cfg, "stem.conv", stride=2)))


def bottleneck(params: dict, x: torch.Tensor, cfg: BackboneConfig, stride: int = 1,
               projection: bool = False) -> torch.Tensor:
    """One residual unit, `params` its own (the `stages.{s}.units.{u}.` prefix removed): 1×1 down to the bottleneck
    width w, 3×3 at `stride`, 1×1 up to 4w, added to the shortcut (projected by a 1×1/stride StdConv and GN where
    the unit changes the shape), then ReLU. (B, C_in, H, W) -> (B, 4w, ⌈H/stride⌉, ⌈W/stride⌉)."""
    shortcut = conv_norm(params, x, cfg, "conv_proj", stride) if projection else x
    y = F.relu(conv_norm(params, x, cfg, "conv1"))
    y = F.relu(conv_norm(params, y, cfg, "conv2", stride))
    y = conv_norm(params, y, cfg, "conv3")
    return F.relu(y + shortcut)


def feature_map(params: dict, images: torch.Tensor, cfg: BackboneConfig) -> torch.Tensor:
    """The feature map the hybrid's patches are cut from: the stem, then the stages, each after the first halving the
    map. `params` as param_shapes names them. (B, C, H, W) -> (B, cfg.out_channels, *cfg.feature_size((H, W)))."""
    check_config(cfg, BackboneConfig)
    x = stem(params, images, cfg)
    for s, units in enumerate(cfg.layers):
        for u in range(units):
            stride = 2 if s > 0 and u == 0 else 1
            x = bottleneck(params_under(params, f"stages.{s}.units.{u}."), x, cfg, stride, projection=u == 0)
    return x
