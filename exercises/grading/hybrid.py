"""Checks for 13_hybrid.md, against lowlevel/resnet.py, lowlevel/norm.py, lowlevel/patches.py and lowlevel/position.py,
and torch.utils.flop_counter on the project's model (lowlevel.forward, its parameters on the meta device: counted,
nothing allocated). The known mistakes are the reference with one step wrong, computed here, so each gets its hint."""
import math

import torch
import torch.nn.functional as F

import lowlevel as vit
from lowlevel import BackboneConfig, resnet
from lowlevel.encoder import params_under
from lowlevel.norm import group_norm as reference_group_norm
from lowlevel.patches import patch_embedding
from lowlevel.position import prepend_prefix_tokens
from paper.models.hybrid_configs import hybrid_config
from paper.models.vit_configs import vit_config
from paper.reports.compare_summary import multiply_adds
from paper.training.recipes import MNIST_HYBRID

from .common import call, call_unchanged, expect, expect_integer, expect_png

HINTS = {
    # Task 1
    "per input channel": "standardise each output filter over its whole fan-in, (C_in, kh, kw) together: "
                         "weight.flatten(1), one row per output channel; not each (C_out, C_in) slice over (kh, kw)",
    "eps outside": "ε goes inside the square root, (W − μ)/√(σ² + ε), as timm's StdConv2d and this project place it "
                   "((W − μ)/(σ + ε) is the official JAX code's placement)",
    "unbiased": "the variance is the biased one, divided by the fan-in C_in·kh·kw (torch.var's default divides by "
                "one less: pass unbiased=False, or take the mean of the squared deviations)",
    "not standardised": "convolve with the standardised kernel, weight_standardization(weight, eps), not the raw one",
    "symmetric padding": "TF \"SAME\" pads (⌈n/s⌉ − 1)·s + k − n in all, the smaller half before: a stride-2 "
                         "convolution on an even map pads (k − 2)//2 before and one more after, not k//2 on both sides",
    # Task 2
    "gn unbiased": "GroupNorm's variance is the biased one, divided by the (C/G)·H·W values of the group",
    "groups transposed": "a group is C/G neighbouring channels and all their positions, x.reshape(B, G, C/G·H·W); "
                         "x.reshape(B, C/G·H·W, G) puts every G-th value in one group instead",
    "per channel": "each group normalises over its C/G channels together, not each channel alone (that is "
                   "instance normalisation, GN with G = C)",
    "relu before gn": "normalise, then activate: ReLU(GN(StdConv(x))), the ReLU after the GroupNorm",
    "stride in conv1": "the stride belongs to the 3×3 convolution (conv2) and the projection, not to the first 1×1 "
                       "(timm and the official code stride the 3×3)",
    "no final relu": "the unit ends with a ReLU after the addition: ReLU(y + shortcut)",
    # Task 3
    "not transposed": "flatten(2) gives (B, C, H'W'), and a reshape to (B, H'W', C) mixes channels and positions: "
                      "flatten(2), then transpose(1, 2), so that each token is one cell of the map, its C channels "
                      "the patch",
    "class token last": "x_class comes first: z_0 = [x_class; x_p¹E; …] + E_pos",
    "count no class token": "z_0 holds x_class too: the cells of the map plus one",
    "count floor": "\"SAME\" padding rounds each halving up, ⌈n/2⌉: the map is ⌈H/stride⌉ × ⌈W/stride⌉",
    "stride per stage": "the first stage keeps the map's size; only the stages after it halve it: stride 4·2^(S − 1) "
                        "for S stages (16 for three, 4 for the stem alone)",
    # Task 4
    "flops": "count multiply-adds, not FLOPs: a convolution's multiply-adds are (output cells)·C_out·C_in·k², not "
             "twice that",
    "no projection": "each stage's first unit also convolves its shortcut, a 1×1 StdConv of (output cells)·4w·C_in",
    "floor": "a stride-2 step with \"SAME\" padding gives ⌈n/2⌉, not ⌊n/2⌋: follow each side through the stem, the "
             "max-pool and every halving stage",
    "no class token": "the class token is a token: T = N + 1 in every block",
    "no attention products": "attention itself multiplies too: q kᵀ and A v are T·T·D multiply-adds each, per block",
    "image patches": "a hybrid's patches are cut from the feature map: the patch embedding reads cfg.patch_channels "
                     "(the map's C), not the image's channels",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def weight_standardization(weight: torch.Tensor, eps: float) -> torch.Tensor:
    return resnet.weight_standardization(weight, eps)


def std_conv(x: torch.Tensor, weight: torch.Tensor, stride: int, eps: float) -> torch.Tensor:
    return resnet.std_conv(x, weight, stride, eps)


def group_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float) -> torch.Tensor:
    return reference_group_norm(x, weight, bias, num_groups, eps)


def bottleneck(params: dict, x: torch.Tensor, cfg: BackboneConfig, stride: int = 1,
               projection: bool = False) -> torch.Tensor:
    return resnet.bottleneck(params, x, cfg, stride, projection)


def hybrid_tokens(feature_map: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, cls: torch.Tensor,
                  pos: torch.Tensor) -> torch.Tensor:
    return prepend_prefix_tokens(patch_embedding(feature_map, weight, bias, 1), cls) + pos


def hybrid_num_tokens(image_size: tuple[int, int], layers: tuple[int, ...]) -> int:
    return math.prod(BackboneConfig(layers=tuple(layers)).feature_size(tuple(image_size))) + 1


def meta_params(cfg: vit.ViTConfig) -> dict:
    with torch.device("meta"):
        return vit.init_params(cfg)


def backbone_multiply_adds(cfg: BackboneConfig, in_channels: int, image_size: tuple[int, int]) -> int:
    hybrid = vit.ViTConfig(image_size=image_size, in_channels=in_channels, patch_size=1, dim=8, depth=1, num_heads=1,
                           mlp_dim=8, backbone=cfg)                     # a hybrid holding this ResNet's parameters
    params = params_under(meta_params(hybrid), "backbone.")
    return multiply_adds(lambda x: resnet.feature_map(params, x.to("meta"), cfg), hybrid)


def transformer_multiply_adds(cfg: vit.ViTConfig) -> int:
    params = meta_params(cfg)
    whole = multiply_adds(lambda x: vit.forward(params, x.to("meta"), cfg), cfg)
    return whole - (backbone_multiply_adds(cfg.backbone, cfg.in_channels, cfg.image_size) if cfg.backbone else 0)


REFERENCE = {"weight_standardization": weight_standardization, "std_conv": std_conv, "group_norm": group_norm,
             "bottleneck": bottleneck, "hybrid_tokens": hybrid_tokens, "hybrid_num_tokens": hybrid_num_tokens,
             "backbone_multiply_adds": backbone_multiply_adds,
             "transformer_multiply_adds": transformer_multiply_adds}


# ---- task 1 ----------------------------------------------------------------------------------------------------

def standardized(weight: torch.Tensor, eps: float, mistake: str | None = None) -> torch.Tensor:
    """The standardisation, or with one known mistake."""
    w = weight.flatten(2 if mistake == "per input channel" else 1)
    mean = w.mean(dim=-1, keepdim=True)
    var = w.var(dim=-1, unbiased=mistake == "unbiased", keepdim=True)
    scale = var.sqrt() + eps if mistake == "eps outside" else torch.sqrt(var + eps)
    return ((w - mean) / scale).reshape(weight.shape)


def task_standardization(ns, output_dir):
    g = torch.Generator().manual_seed(1301)
    # (C_out, C_in, k) and eps: 1e-8 is timm's; 0.05 against filters of variance 0.01 puts ε's placement in view
    for (c_out, c_in, k), eps, scale in [((8, 3, 7), 1e-8, 1.0), ((6, 4, 3), 0.05, 0.1), ((5, 2, 1), 0.05, 0.1),
                                         ((4, 5, 3), 1e-8, 0.02)]:
        weight = (torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64) * scale
                  + torch.randn(c_out, c_in, 1, 1, generator=g, dtype=torch.float64) * scale)  # each slice its own mean
        expect(call_unchanged(ns, "weight_standardization", weight, eps), standardized(weight, eps),
               f"weight_standardization of {tuple(weight.shape)}, eps={eps}",
               {HINTS[m]: standardized(weight, eps, m) for m in ("per input channel", "eps outside", "unbiased")},
               hint="Ŵ_o = (W_o − μ_o)/√(σ_o² + ε), mean and biased variance over each output filter's C_in·kh·kw "
                    "weights", atol=1e-10, rtol=1e-8)
    for (b, c_in, h, w), (c_out, k), stride in [((2, 3, 16, 16), (4, 7), 2), ((1, 4, 9, 12), (5, 3), 2),
                                                 ((2, 3, 7, 6), (6, 3), 1), ((1, 2, 10, 11), (3, 1), 2)]:
        x = torch.randn(b, c_in, h, w, generator=g, dtype=torch.float64)
        weight = torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64) + 0.3
        want = std_conv(x, weight, stride, 1e-8)
        standard = resnet.weight_standardization(weight, 1e-8)
        wrong = {HINTS["not standardised"]: F.conv2d(resnet.same_padding(x, k, stride), weight, stride=stride)}
        if want.shape == F.conv2d(x, standard, stride=stride, padding=k // 2).shape:
            wrong[HINTS["symmetric padding"]] = F.conv2d(x, standard, stride=stride, padding=k // 2)
        expect(call_unchanged(ns, "std_conv", x, weight, stride, 1e-8), want,
               f"std_conv of {tuple(x.shape)} by {tuple(weight.shape)}, stride {stride}", wrong,
               hint="pad as TF \"SAME\" (the smaller half before), then F.conv2d by the standardised kernel at the "
                    "stride, no bias", atol=1e-9, rtol=1e-8)


# ---- task 2 ----------------------------------------------------------------------------------------------------

def wrong_group_norm(x, weight, bias, groups, eps, mistake):
    """GN with one known mistake."""
    b, c, h, w = x.shape
    if mistake == "groups transposed":                                       # every G-th value in one group
        flat, dim = x.reshape(b, -1, groups), 1
    else:
        flat, dim = x.reshape(b, c if mistake == "per channel" else groups, -1), -1
    mean = flat.mean(dim, keepdim=True)
    var = flat.var(dim, unbiased=mistake == "gn unbiased", keepdim=True)
    normed = ((flat - mean) / torch.sqrt(var + eps)).reshape(b, c, h, w)
    return normed * weight[:, None, None] + bias[:, None, None]


def wrong_bottleneck(params, x, cfg, stride, projection, mistake):
    """The unit with one known mistake."""
    def conv_gn(name, y, s=1, relu=False):
        gn = name.replace("conv", "gn")
        y = resnet.std_conv(y, params[f"{name}.weight"], s, cfg.std_eps)
        if relu and mistake == "relu before gn":
            y = F.relu(y)
        y = reference_group_norm(y, params[f"{gn}.weight"], params[f"{gn}.bias"], cfg.num_groups, cfg.group_norm_eps)
        return F.relu(y) if relu and mistake != "relu before gn" else y

    shortcut = conv_gn("conv_proj", x, stride) if projection else x
    first = mistake == "stride in conv1"
    y = conv_gn("conv1", x, stride if first else 1, relu=True)
    y = conv_gn("conv2", y, 1 if first else stride, relu=True)
    y = conv_gn("conv3", y) + shortcut
    return y if mistake == "no final relu" else F.relu(y)


def unit_params(cfg: BackboneConfig, in_channels: int, stage: int, unit: int, g: torch.Generator) -> dict:
    """Random float64 parameters of one unit: kernels N(0.1, 1), GN weights near 1 and biases that move the ReLUs."""
    shapes = resnet.param_shapes(cfg, in_channels)
    prefix = f"stages.{stage}.units.{unit}."
    params = {}
    for name, shape in shapes.items():
        if name.startswith(prefix):
            t = torch.randn(shape, generator=g, dtype=torch.float64)
            params[name[len(prefix):]] = t + 0.1 if name.endswith("conv.weight") or ".conv" in name else \
                (1 + 0.3 * t if name.endswith(".weight") else 0.5 * t)
    return params


def task_bottleneck(ns, output_dir):
    g = torch.Generator().manual_seed(1302)
    for b, c, h, w, groups, eps in [(2, 8, 5, 6, 4, 1e-5), (1, 12, 3, 3, 3, 1e-5), (3, 32, 4, 2, 8, 0.1)]:
        x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, c,
                                                                                        dtype=torch.float64)[:, None,
                                                                                                             None]
        weight = 1 + 0.5 * torch.randn(c, generator=g, dtype=torch.float64)
        bias = torch.randn(c, generator=g, dtype=torch.float64)
        expect(call_unchanged(ns, "group_norm", x, weight, bias, groups, eps), group_norm(x, weight, bias, groups, eps),
               f"group_norm of {(b, c, h, w)} in {groups} groups",
               {HINTS[m]: wrong_group_norm(x, weight, bias, groups, eps, m)
                for m in ("gn unbiased", "groups transposed", "per channel")},
               hint="(x − μ)/√(σ² + ε) over each image's group of C/G neighbouring channels and all positions, the "
                    "biased σ², then · weight + bias per channel", atol=1e-10, rtol=1e-8)
    # (cfg, input channels, stage, unit, stride, projection): a stage-0 first unit, a striding projection, a plain unit
    small = BackboneConfig(layers=(2, 1), width=8, num_groups=4)
    for cfg, stage, unit, stride, projection, (h, w) in [(small, 0, 0, 1, True, (6, 5)), (small, 1, 0, 2, True, (8, 7)),
                                                         (small, 0, 1, 1, False, (5, 5))]:
        c_in = cfg.width if (stage, unit) == (0, 0) else 4 * cfg.stage_widths[stage - 1 if unit == 0 else stage]
        params = unit_params(cfg, 3, stage, unit, g)
        x = torch.randn(2, c_in, h, w, generator=g, dtype=torch.float64)
        what = f"bottleneck of {tuple(x.shape)}, stride {stride}, projection {projection}"
        wrong = {HINTS[m]: wrong_bottleneck(params, x, cfg, stride, projection, m)
                 for m in ("relu before gn", "no final relu") + (("stride in conv1",) if stride == 2 else ())}
        expect(call_unchanged(ns, "bottleneck", params, x, cfg, stride, projection),
               bottleneck(params, x, cfg, stride, projection), what, wrong,
               hint="y = ReLU(GN₁(StdConv₁ x)), ReLU(GN₂(StdConv₂ y at the stride)), GN₃(StdConv₃ y); "
                    "ReLU(y + shortcut), the shortcut GN_proj(StdConv_proj x at the stride) where projection",
               atol=1e-9, rtol=1e-8)


# ---- task 3 ----------------------------------------------------------------------------------------------------

def task_tokens(ns, output_dir):
    g = torch.Generator().manual_seed(1303)
    # (B, C, H', W', D); C = H'W' in the first, where a (B, C, H'W') map passes for (B, H'W', C) and runs
    for b, c, h, w, d in [(2, 4, 2, 2, 3), (1, 6, 3, 4, 5), (3, 16, 2, 5, 8)]:
        fmap = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
        weight = torch.randn(d, c, generator=g, dtype=torch.float64)
        bias, cls = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(1, 1, d, generator=g,
                                                                                  dtype=torch.float64)
        pos = torch.randn(1, 1 + h * w, d, generator=g, dtype=torch.float64)
        want = hybrid_tokens(fmap, weight, bias, cls, pos)
        wrong = {HINTS["class token last"]: torch.cat([want[:, 1:] - pos[:, 1:], cls.expand(b, -1, -1)], 1) + pos}
        if c == h * w:      # (B, C, H'W') used as tokens, or reshaped to (B, H'W', C): the same values here
            wrong[HINTS["not transposed"]] = torch.cat([cls.expand(b, -1, -1), fmap.flatten(2) @ weight.T + bias],
                                                       1) + pos
        else:
            wrong[HINTS["not transposed"]] = torch.cat([cls.expand(b, -1, -1), fmap.reshape(b, h * w, c) @ weight.T
                                                        + bias], 1) + pos
        expect(call_unchanged(ns, "hybrid_tokens", fmap, weight, bias, cls, pos), want,
               f"hybrid_tokens of a {(b, c, h, w)} map, D={d}", wrong,
               hint="z_0 = [x_class; x_p¹E; …] + E_pos, x_pⁱ the C channels of cell i of the map, cells row by row: "
                    "flatten(2).transpose(1, 2) @ Eᵀ + b", atol=1e-10, rtol=1e-8)
    for (h, w), layers in [((224, 224), (3, 4, 9)), ((384, 384), (3, 4, 9)), ((28, 28), (1,)),
                           ((100, 60), (3, 4, 6, 3)), ((200, 120), (2, 2)), ((30, 30), ()), ((50, 34), (1, 1, 1))]:
        want = hybrid_num_tokens((h, w), layers)
        stride = 4 * 2 ** max(len(layers) - 1, 0)
        wrong = {want - 1: HINTS["count no class token"], (h // stride) * (w // stride) + 1: HINTS["count floor"],
                 math.ceil(h / (2 * stride)) * math.ceil(w / (2 * stride)) + 1: HINTS["stride per stage"]}
        expect_integer(call(ns, "hybrid_num_tokens", (h, w), layers), want,
                       f"hybrid_num_tokens({(h, w)}, {layers})", {k: v for k, v in wrong.items() if k != want},
                       hint="⌈H/stride⌉·⌈W/stride⌉ cells, stride 4·2^(S − 1) for S ≥ 1 stages (4 for the stem alone), "
                            "plus x_class")


# ---- task 4 ----------------------------------------------------------------------------------------------------

def backbone_macs_by_hand(cfg: BackboneConfig, in_channels: int, image_size, *, half=lambda n: -(-n // 2),
                          projection=True, flops=False) -> int:
    """The multiply-adds of the ResNet's convolutions, with one known mistake where asked."""
    h, w = (half(n) for n in image_size)
    total = h * w * cfg.width * in_channels * 49
    h, w = half(h), half(w)
    channels = cfg.width
    for s, units in enumerate(cfg.layers):
        width = cfg.width * 2 ** s
        for u in range(units):
            h_in, w_in = h, w
            if s > 0 and u == 0:
                h, w = half(h), half(w)
            total += h_in * w_in * width * channels + h * w * (9 * width * width + 4 * width * width)
            total += h * w * 4 * width * channels if u == 0 and projection else 0
            channels = 4 * width
    return 2 * total if flops else total


def transformer_macs_by_hand(cfg: vit.ViTConfig, *, tokens=None, attention=True, channels=None) -> int:
    n, d = cfg.num_patches, cfg.dim
    t = cfg.num_tokens if tokens is None else tokens
    total = n * (cfg.patch_channels if channels is None else channels) * cfg.patch_size ** 2 * d
    total += cfg.depth * (t * (4 * d * d + 2 * d * cfg.mlp_dim) + (2 * t * t * d if attention else 0))
    return total + d * cfg.num_classes


BACKBONE_CASES = [(BackboneConfig(layers=(3, 4, 9)), 3, (224, 224)), (MNIST_HYBRID.backbone, 1, (28, 28)),
                  (BackboneConfig(layers=(2, 2), width=8, num_groups=4), 3, (30, 46)),
                  (BackboneConfig(layers=(), width=16, num_groups=8), 3, (33, 33)),
                  (BackboneConfig(layers=(1, 1, 1, 1), width=8, num_groups=4), 2, (62, 40))]

TRANSFORMER_CASES = [hybrid_config("R50+ViT-B/16"), MNIST_HYBRID, vit_config("ViT-B/16"),
                     vit.ViTConfig(image_size=(40, 24), patch_size=2, in_channels=3, dim=32, depth=2, num_heads=2,
                                   mlp_dim=64, num_classes=7, backbone=BackboneConfig(layers=(), width=16, num_groups=8))]


def task_cost(ns, output_dir):
    for cfg, c, size in BACKBONE_CASES:
        what = f"backbone_multiply_adds(layers={cfg.layers}, width={cfg.width}, {c} channels, {size})"
        wrong = {backbone_macs_by_hand(cfg, c, size, flops=True): HINTS["flops"],
                 backbone_macs_by_hand(cfg, c, size, projection=False): HINTS["no projection"],
                 backbone_macs_by_hand(cfg, c, size, half=lambda n: n // 2): HINTS["floor"]}
        want = backbone_multiply_adds(cfg, c, size)
        expect_integer(call(ns, "backbone_multiply_adds", cfg, c, size), want, what,
                       {k: v for k, v in wrong.items() if k != want},
                       hint="follow (H, W) through the stem's 7×7/2, the max-pool and each stage; per unit "
                            "conv1 1×1, conv2 3×3 at the stride, conv3 1×1, and in a stage's first unit conv_proj")
    for cfg in TRANSFORMER_CASES:
        what = f"transformer_multiply_adds for {cfg.image_size}, D {cfg.dim}, backbone {cfg.backbone is not None}"
        want = transformer_multiply_adds(cfg)
        wrong = {transformer_macs_by_hand(cfg, tokens=cfg.num_patches): HINTS["no class token"],
                 transformer_macs_by_hand(cfg, attention=False): HINTS["no attention products"],
                 transformer_macs_by_hand(cfg, channels=cfg.in_channels): HINTS["image patches"]}
        expect_integer(call(ns, "transformer_multiply_adds", cfg), want, what,
                       {k: v for k, v in wrong.items() if k != want},
                       hint="the patch embedding N·C·P²·D (C the feature map's for a hybrid); per block "
                            "T·(4D² + 2D·MLP) + 2T²D, T = N + 1; the head D·K")
    expect_png(output_dir / "hybrid_cost.png", "the bar chart of where the multiply-adds go")


TASKS = {1: task_standardization, 2: task_bottleneck, 3: task_tokens, 4: task_cost}
