"""The parameters: their names and shapes for a config, and the official implementation's initialisation.

Names follow the paper's pieces (and are close to timm's state-dict names; each checkpoint format maps them in its
own file under paper/formats/):

    backbone.*    a hybrid's ResNet (§3.1), named as resnet.py's table says (hybrid only)
    patch.weight  (D, C·P·P)   E of eq. (1), as an F.linear weight    patch.bias (D,)   (a hybrid's C: the feature map's)
                  (D, 5C·P·P)  with Shifted Patch Tokenization (patch_embed "spt", locality.py): E_S, after an LN
    patch_norm.weight/bias (5C·P·P,)   that LN (SPT only)
    cls           (1, 1, D)    x_class                                 pos (1, P+N, D)  E_pos (learned only)
    dist          (1, 1, D)    DeiT's distillation token (distilled only; P = 2 prefix tokens, else 1)
    blocks.{i}.ln1.weight/bias (D,)            blocks.{i}.qkv.weight (3D, D)  qkv.bias (3D,)
    blocks.{i}.proj.weight (D, D)  proj.bias   blocks.{i}.ln2.weight/bias (D,)
    blocks.{i}.fc1.weight (M, D)  fc1.bias     blocks.{i}.fc2.weight (D, M)  fc2.bias
    blocks.{i}.log_scale ()    LSA's learned log(1/τ) (attention "lsa", locality.py)
    norm.weight/bias (D,)      the LN of eq. (4)
    pre_logits.weight (R, D), pre_logits.bias  the pre-training head's hidden layer (when representation_size)
    head.weight (K, R or D), head.bias (K,)
    head_dist.weight (K, R or D), head_dist.bias (K,)  DeiT's distillation head (distilled only)
"""
import math

import torch

from . import resnet
from .checks import check_config
from .config import ViTConfig


def param_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape for `cfg`."""
    check_config(cfg, ViTConfig)
    d, m, p, c = cfg.dim, cfg.mlp_dim, cfg.patch_size, cfg.patch_channels
    shapes = {}
    if cfg.backbone:
        shapes.update({f"backbone.{k}": v for k, v in resnet.param_shapes(cfg.backbone, cfg.in_channels).items()})
    if cfg.patch_embed == "spt":
        shapes.update({"patch_norm.weight": (5 * c * p * p,), "patch_norm.bias": (5 * c * p * p,),
                       "patch.weight": (d, 5 * c * p * p), "patch.bias": (d,)})
    else:
        shapes.update({"patch.weight": (d, c * p * p), "patch.bias": (d,)})
    if cfg.class_token:
        shapes["cls"] = (1, 1, d)
    if cfg.distilled:
        shapes["dist"] = (1, 1, d)
    if cfg.pos_embed == "learned":
        shapes["pos"] = (1, cfg.num_tokens, d)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        shapes.update({b + "ln1.weight": (d,), b + "ln1.bias": (d,), b + "qkv.weight": (3 * d, d)})
        if cfg.qkv_bias:
            shapes[b + "qkv.bias"] = (3 * d,)
        if cfg.attention == "lsa":
            shapes[b + "log_scale"] = ()
        shapes.update({b + "proj.weight": (d, d), b + "proj.bias": (d,), b + "ln2.weight": (d,), b + "ln2.bias": (d,),
                       b + "fc1.weight": (m, d), b + "fc1.bias": (m,), b + "fc2.weight": (d, m), b + "fc2.bias": (d,)})
    shapes.update({"norm.weight": (d,), "norm.bias": (d,)})
    width = d
    if cfg.representation_size:
        width = cfg.representation_size
        shapes.update({"pre_logits.weight": (width, d), "pre_logits.bias": (width,)})
    if cfg.num_classes:
        for head in ("head", "head_dist") if cfg.distilled else ("head",):
            shapes.update({f"{head}.weight": (cfg.num_classes, width), f"{head}.bias": (cfg.num_classes,)})
    return shapes


def lecun_normal(shape, fan_in: int, g: torch.Generator | None) -> torch.Tensor:
    """Flax's default kernel init: truncated normal (±2σ) rescaled so the std is √(1/fan_in)."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of a unit normal truncated to ±2
    return torch.nn.init.trunc_normal_(torch.empty(shape), 0.0, std, -2 * std, 2 * std, generator=g)


def xavier_uniform(shape, fan_in: int, fan_out: int, g: torch.Generator | None) -> torch.Tensor:
    """U(-a, a), a = √(6/(fan_in + fan_out))."""
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return torch.empty(shape).uniform_(-a, a, generator=g)


def normal(shape, std: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.empty(shape).normal_(0.0, std, generator=g)


def init_params(cfg: ViTConfig, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Float32 parameters initialised as the official Flax code does (vit_jax/models_vit.py):
    patch conv lecun_normal, bias 0; class token 0; E_pos N(0, 0.02); q, k, v and the output projection
    xavier_uniform each over its own (D, D) matrix, biases 0; MLP xavier_uniform, biases N(0, 1e-6); LN 1 and 0;
    pre-logits lecun_normal, bias 0; head 0 ("zero-initialized", paper §3.2). DeiT's distillation token N(0, 0.02)
    (timm deit.py and the official models.py: trunc_normal_(std=.02), whose bounds ±2 lie at ±100σ), its head 0
    like the class head. A hybrid's ResNet (vit_jax models_resnet.py): kernels lecun_normal (Flax's Conv default),
    GroupNorm 1 and 0 but each unit's last GroupNorm scale 0, so that every unit starts as the ReLU of its shortcut.
    SPT's LN 1 and 0 (its E_S lecun_normal like E); LSA's log(1/τ) log(1/√D_h), the standard scale to start from
    (vit-pytorch's LSA.temperature)."""
    check_config(cfg, ViTConfig)
    g = generator
    d, m = cfg.dim, cfg.mlp_dim
    out = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 2)[-2] if "." in name else name   # "qkv", "fc1", "ln1", "patch", "cls", "conv1", ...
        if name.endswith(".log_scale"):
            out[name] = torch.tensor(-0.5 * math.log(cfg.head_dim))
        elif name.endswith(".bias"):
            out[name] = normal(shape, 1e-6, g) if leaf in ("fc1", "fc2") else torch.zeros(shape)
        elif leaf in ("ln1", "ln2", "norm", "patch_norm", "gn", "gn1", "gn2", "gn_proj"):
            out[name] = torch.ones(shape)
        elif leaf == "gn3":
            out[name] = torch.zeros(shape)
        elif leaf in ("conv", "conv1", "conv2", "conv3", "conv_proj"):
            out[name] = lecun_normal(shape, math.prod(shape[1:]), g)
        elif leaf == "patch":
            out[name] = lecun_normal(shape, shape[1], g)
        elif leaf == "cls":
            out[name] = torch.zeros(shape)
        elif leaf in ("pos", "dist"):
            out[name] = normal(shape, 0.02, g)
        elif leaf == "qkv":
            out[name] = torch.cat([xavier_uniform((d, d), d, d, g) for _ in range(3)])
        elif leaf == "proj":
            out[name] = xavier_uniform(shape, d, d, g)
        elif leaf in ("fc1", "fc2"):
            out[name] = xavier_uniform(shape, d, m, g)
        elif leaf == "pre_logits":
            out[name] = lecun_normal(shape, d, g)
        elif leaf in ("head", "head_dist"):
            out[name] = torch.zeros(shape)
    return out
