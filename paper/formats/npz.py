"""The official Google `.npz` checkpoints (google-research/vision_transformer, big_vision): flat Flax names joined
with "/", kernels in Flax's (in, out) layout.

Our name                  npz name ("B" = Transformer/encoderblock_i/)    transform
patch.weight (D, C·P·P)   embedding/kernel (P, P, C, D)                  HWIO conv kernel <-> (D, C, P, P), flattened
patch.bias                embedding/bias                                 -
cls                       cls                                            -
pos (1, N+1, D)           Transformer/posembed_input/pos_embedding       - (2020 layout: the class token has a row)
                          pos_embedding (1, N, D)                        big_vision adds E_pos before prepending the
                                                                         class token: no class row (see below)
blocks.i.ln1              B LayerNorm_0/{scale, bias}                    -
blocks.i.qkv (3D, D)      B MultiHeadDotProductAttention_1/{query, key,  each kernel (D, H, D_h) -> (D, D).T; the
                            value}/kernel, bias (H, D_h)                 three stacked as rows [q; k; v]
blocks.i.proj (D, D)      B MultiHeadDotProductAttention_1/out/kernel    (H, D_h, D) -> (D, D).T
                            (H, D_h, D), bias
blocks.i.ln2              B LayerNorm_2/{scale, bias}                    -
blocks.i.fc1 / fc2        B MlpBlock_3/Dense_0 / Dense_1                 kernel .T
norm                      Transformer/encoder_norm/{scale, bias}         -
pre_logits                pre_logits/{kernel, bias}                      kernel .T (2020 in21k files only)
head                      head/{kernel, bias}                            kernel .T

A hybrid's ResNet (§3.1; lowlevel/resnet.py), at the top level as vit_jax models_vit.py and models_resnet.py name it
("U" = block{s+1}/unit{u+1}/, stage and unit counted from 1):
backbone.stem.conv (w, C, 7, 7)          conv_root/kernel (7, 7, C, w)                 OIHW <-> HWIO
backbone.stem.gn                         gn_root/{scale, bias}                         -
backbone.stages.s.units.u.conv1..3       U conv1..3/kernel                             OIHW <-> HWIO
backbone.stages.s.units.u.gn1..3         U gn1..3/{scale, bias}                        -
backbone.stages.s.units.0.conv_proj      U conv_proj/kernel                            OIHW <-> HWIO
backbone.stages.s.units.0.gn_proj        U gn_proj/{scale, bias}                       -
A hybrid's embedding/kernel is (P, P, C, D) with C the feature map's channels; its E_pos has a row per feature-map
patch. The stem alone (R+ViT-Ti/16) has conv_root and gn_root and no block; timm's `_load_weights` reads both.
The file holds no numerics: the official code standardises a kernel as (W − μ)/(σ + 1e-5) and normalises with Flax's
GroupNorm eps 1e-6, which lowlevel/resnet.py does not compute ((W − μ)/√(σ² + ε)); reading gives timm's hybrid
numerics (BackboneConfig's defaults: 32 groups, eps 1e-5 and 1e-8), those of the model timm's loader fills.

Numbering. The 2020 files were written by pre-Linen Flax, which numbered a block's submodules in one sequence
(LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3). Linen numbers per module type, so later
files, big_vision's included, say LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0 (Google's
own loader converts with flax `convert_pre_linen`). Both are read; `layout` picks the one written.

big_vision's position embedding. big_vision computes [x_class; x + E_pos] with an E_pos of N rows, where the paper
computes [x_class; x] + E_pos with N+1. The two are the same model: reading, we give the class token a zero row
(x_class + 0 = x_class); writing, we fold our class row into the token (x_class' = x_class + E_pos⁰), which is the
very sum our forward computes, so the outputs are bit-identical. This is what big_vision's `fix_old_checkpoints` does.

Also read: a leading "params/" or "opt/target/" (Flax optimizer checkpoints) and big_vision's "scan" layout, one
Transformer/encoderblock/ whose arrays have a leading depth axis. The official numerics use tanh GELU (Flax's
`nn.gelu` default), so reading gives gelu="tanh" unless overridden; eps is Flax's 1e-6.
"""
import math
import re

import numpy as np
import torch

from lowlevel import BackboneConfig, ViTConfig, check_params, param_shapes
from lowlevel.checks import check_config
from paper.formats.fields import Preprocessing, require, square_image_size
from paper.formats.files import load_arrays, naming, save_arrays

LAYOUTS = ("vit2020", "big_vision")
# vision_transformer input_pipeline.py: evaluation resizes to the image size, pixels (x - 127.5) / 127.5
PREPROCESSING = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), None, "the official input pipeline's [-1, 1] scaling")
# (attention, second LayerNorm, MLP) submodule numbers
NUMBERING = {"pre_linen": ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
             "linen": ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")}
POS_KEYS = {"vit2020": "Transformer/posembed_input/pos_embedding", "big_vision": "pos_embedding"}
QKV = ("query", "key", "value")
GLOBAL_NAMES = {"patch": "embedding", "norm": "Transformer/encoder_norm", "pre_logits": "pre_logits", "head": "head"}
ROOT = "conv_root/kernel"                                  # a hybrid's stem kernel: the key that tells a hybrid
UNIT = re.compile(r"block(\d+)/unit(\d+)/")                 # a hybrid's ResNet unit, stage and unit from 1


def backbone_npz_name(name: str) -> str:
    """A hybrid's ResNet parameter, named without `backbone.` -> its npz name: "stem.conv.weight" -> "conv_root/kernel",
    "stages.0.units.2.gn1.bias" -> "block1/unit3/gn1/bias"."""
    *module, layer, leaf = name.split(".")
    leaf = {"weight": "kernel" if layer.startswith("conv") else "scale", "bias": "bias"}[leaf]
    if module == ["stem"]:
        return f"{layer.replace('conv', 'conv_root').replace('gn', 'gn_root')}/{leaf}"
    _, s, _, u = module
    return f"block{int(s) + 1}/unit{int(u) + 1}/{layer}/{leaf}"


def npz_names(name: str, numbering: str) -> list[str]:
    """Our parameter name -> its npz name(s) (three for a qkv tensor); `pos` is handled apart."""
    if name.startswith("backbone."):
        return [backbone_npz_name(name.removeprefix("backbone."))]
    leaf = name.rsplit(".", 1)[-1]
    flax_leaf = {"weight": "kernel", "bias": "bias"}[leaf] if leaf in ("weight", "bias") else leaf
    if name.startswith("blocks."):
        _, i, part, _ = name.split(".")
        mha, ln2, mlp = NUMBERING[numbering]
        block = f"Transformer/encoderblock_{i}/"
        if part in ("ln1", "ln2"):
            return [block + ("LayerNorm_0" if part == "ln1" else ln2) + "/" + {"weight": "scale", "bias": "bias"}[leaf]]
        if part == "qkv":
            return [f"{block}{mha}/{n}/{flax_leaf}" for n in QKV]
        if part == "proj":
            return [f"{block}{mha}/out/{flax_leaf}"]
        return [f"{block}{mlp}/Dense_{int(part[-1]) - 1}/{flax_leaf}"]             # fc1 -> Dense_0, fc2 -> Dense_1
    part = name.split(".")[0]
    if part == "norm":
        return [f"Transformer/encoder_norm/{'scale' if leaf == 'weight' else 'bias'}"]
    return [name if part == "cls" else f"{GLOBAL_NAMES[part]}/{flax_leaf}"]


def to_flax(name: str, t: torch.Tensor, cfg: ViTConfig) -> list[np.ndarray]:
    """One of our tensors -> its npz array(s)."""
    d, h, dh, p, c = cfg.dim, cfg.num_heads, cfg.head_dim, cfg.patch_size, cfg.patch_channels
    t = t.detach().cpu()
    if name == "patch.weight":
        return [t.reshape(d, c, p, p).permute(2, 3, 1, 0).numpy()]                 # (D, C, P, P) -> HWIO
    if t.ndim == 4:
        return [t.permute(2, 3, 1, 0).numpy()]                                      # a ResNet kernel: OIHW -> HWIO
    if name.endswith("qkv.weight"):
        return [w.T.reshape(d, h, dh).numpy() for w in t.chunk(3)]                  # (D, D) -> (D, H, D_h) each
    if name.endswith("qkv.bias"):
        return [b.reshape(h, dh).numpy() for b in t.chunk(3)]
    if name.endswith(".proj.weight"):
        return [t.T.reshape(h, dh, d).numpy()]                                      # (D, D) -> (H, D_h, D)
    if name.endswith(".weight") and t.ndim == 2:
        return [t.T.numpy()]                                                         # Dense kernel is (in, out)
    return [t.numpy()]


def from_flax(name: str, arrays: list[np.ndarray], shape: tuple[int, ...], cfg: ViTConfig) -> torch.Tensor:
    """npz array(s) -> one of our tensors of `shape`: the inverse of `to_flax`."""
    d = cfg.dim
    ts = [torch.from_numpy(np.array(a)) for a in arrays]
    if name == "patch.weight":
        return ts[0].permute(3, 2, 0, 1).reshape(shape)                             # HWIO -> (D, C, P, P) -> (D, C·P·P)
    if len(shape) == 4:
        return ts[0].permute(3, 2, 0, 1)                                            # a ResNet kernel: HWIO -> OIHW
    if name.endswith("qkv.weight"):
        return torch.cat([w.reshape(d, d).T for w in ts])
    if name.endswith("qkv.bias"):
        return torch.cat([b.reshape(d) for b in ts])
    if name.endswith(".proj.weight"):
        return ts[0].reshape(d, d).T.contiguous()
    if name.endswith(".weight") and len(shape) == 2:
        return ts[0].T.contiguous()
    return ts[0]


def npz_shapes(cfg: ViTConfig, numbering: str, pos_key: str, pos_rows: int) -> dict[str, tuple[int, ...]]:
    """Every npz array name and shape for `cfg`."""
    d, h, dh, p, c = cfg.dim, cfg.num_heads, cfg.head_dim, cfg.patch_size, cfg.patch_channels
    shapes = {pos_key: (1, pos_rows, d)}
    for name, shape in param_shapes(cfg).items():
        if name == "pos":
            continue
        names = npz_names(name, numbering)
        if name == "patch.weight":
            shape = (p, p, c, d)
        elif len(shape) == 4:
            shape = (shape[2], shape[3], shape[1], shape[0])                        # OIHW -> HWIO
        elif name.endswith("qkv.weight"):
            shape = (d, h, dh)
        elif name.endswith("qkv.bias"):
            shape = (h, dh)
        elif name.endswith(".proj.weight"):
            shape = (h, dh, d)
        elif len(shape) == 2:
            shape = shape[::-1]
        shapes.update({n: shape for n in names})
    return shapes


def strip_prefix_and_unscan(arrays: dict) -> dict:
    """Drop "params/" or "opt/target/"; split a scanned Transformer/encoderblock/ into encoderblock_i."""
    for prefix in ("opt/target/", "params/"):
        if f"{prefix}embedding/kernel" in arrays:
            arrays = {k.removeprefix(prefix): v for k, v in arrays.items()}
    scanned = "Transformer/encoderblock/"
    if any(k.startswith(scanned) for k in arrays):
        out = {k: v for k, v in arrays.items() if not k.startswith(scanned)}
        for k, v in arrays.items():
            if k.startswith(scanned):
                out.update({f"Transformer/encoderblock_{i}/{k[len(scanned):]}": v[i] for i in range(v.shape[0])})
        arrays = out
    return arrays


def backbone_from_npz(arrays: dict, known: dict) -> BackboneConfig | None:
    """A hybrid's ResNet from the official names (conv_root's width, the units of each block{s}), None for a plain
    ViT. A known backbone, None or a BackboneConfig (a model name's), is taken as it is and checked against the arrays
    with the rest; a dict holds the numerics the file does not (BackboneConfig's defaults, timm's, otherwise)."""
    if not isinstance(known.get("backbone", {}), dict):
        return known["backbone"]
    if ROOT not in arrays:
        return None
    units: dict[int, set] = {}
    for m in filter(None, (UNIT.match(k) for k in arrays)):
        units.setdefault(int(m[1]), set()).add(m[2])
    layers = tuple(len(units.get(s, ())) for s in range(1, max(units, default=0) + 1))
    return BackboneConfig(layers=layers, width=arrays[ROOT].shape[3], **known.get("backbone", {}))


def config_from_npz(arrays: dict, numbering: str, pos_key: str, known: dict) -> dict:
    """What the arrays say, with `known` fields (the caller's) taking precedence. The head count is in the attention
    kernels' shape (D, H, D_h); the image size is taken as a square grid from E_pos's rows unless known (a hybrid's
    grid is of its feature map, the ResNet's stride times smaller). A hybrid's image channels are its stem's."""
    p, _, c, d = arrays["embedding/kernel"].shape
    backbone = backbone_from_npz(arrays, known)
    if backbone and ROOT in arrays:
        c = arrays[ROOT].shape[2]
    mha, _, mlp = NUMBERING[numbering]
    fields = {"patch_size": p, "in_channels": c, "dim": d, "gelu": "tanh", "layer_norm_eps": 1e-6,
              "depth": len({k.split("/")[1] for k in arrays if k.startswith("Transformer/encoderblock_")}),
              "num_heads": arrays[f"Transformer/encoderblock_0/{mha}/query/kernel"].shape[1],
              "mlp_dim": arrays[f"Transformer/encoderblock_0/{mlp}/Dense_0/kernel"].shape[1],
              "num_classes": arrays["head/bias"].shape[0] if "head/bias" in arrays else 0,
              "representation_size": arrays["pre_logits/bias"].shape[0] if "pre_logits/bias" in arrays else None,
              **known, "backbone": backbone}
    if "image_size" not in fields:
        rows = arrays[pos_key].shape[1]
        class_row = math.isqrt(rows) ** 2 != rows           # the 2020 layout has a class-token row, big_vision none
        stride = backbone.stride if backbone else 1
        fields["image_size"] = square_image_size(rows, int(class_row), fields["patch_size"]) * stride
    return fields


def from_npz(arrays: dict, **overrides) -> tuple[ViTConfig, dict]:
    """npz arrays -> (cfg, params). All names are checked (missing, unexpected, mis-shaped) before any conversion."""
    arrays = strip_prefix_and_unscan(dict(arrays))
    if "embedding/kernel" not in arrays:
        raise ValueError("npz: expected the official ViT layout with 'embedding/kernel', missing it")
    if "cls" not in arrays:
        raise ValueError("npz: expected a class-token model with 'cls', got none: the official GAP models apply the "
                         "final LayerNorm before the mean, which ViTConfig(pool='avg') does not compute")
    numbering = "linen" if "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in arrays else "pre_linen"
    pos_key = next((k for k in POS_KEYS.values() if k in arrays), None)
    if pos_key is None:
        raise ValueError(f"npz: expected a learned position embedding, missing {' or '.join(POS_KEYS.values())}")
    try:
        cfg = ViTConfig(**config_from_npz(arrays, numbering, pos_key, overrides))
    except KeyError as e:
        raise ValueError(f"npz arrays: missing key {e.args[0]!r}, needed to infer the config") from e
    rows = arrays[pos_key].shape[1]
    check_params(arrays, npz_shapes(cfg, numbering, pos_key, rows if rows == cfg.num_patches else cfg.num_tokens),
                 what="npz arrays")
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name != "pos":
            params[name] = from_flax(name, [arrays[n] for n in npz_names(name, numbering)], shape, cfg)
    pos = torch.from_numpy(np.array(arrays[pos_key]))
    if rows == cfg.num_patches:                                              # big_vision: no class-token row
        pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    params["pos"] = pos
    return cfg, params


def to_npz(params: dict, cfg: ViTConfig, layout: str = "vit2020") -> dict[str, np.ndarray]:
    """(params, cfg) -> npz arrays: "vit2020" (pre-Linen numbering, E_pos with a class row, as the released 2020
    files) or "big_vision" (Linen numbering, top-level pos_embedding without it, the class row folded into cls)."""
    check_config(cfg, ViTConfig)
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    require("the official npz format", cfg, class_token=True, pool="token", pos_embed="learned", qkv_bias=True,
            distilled=False, patch_embed="linear", attention="standard")
    check_params(params, param_shapes(cfg))
    numbering = "pre_linen" if layout == "vit2020" else "linen"
    arrays = {}
    for name, t in params.items():
        if name in ("pos", "cls"):
            continue
        arrays.update(zip(npz_names(name, numbering), to_flax(name, t, cfg), strict=True))
    pos, cls = params["pos"].detach().cpu(), params["cls"].detach().cpu()
    if layout == "big_vision":
        cls, pos = cls + pos[:, :1], pos[:, 1:]                              # [x_class + E_pos⁰; x + E_pos¹…]
    arrays["cls"], arrays[POS_KEYS[layout]] = cls.numpy(), pos.numpy()
    return arrays


def read_npz(path, **overrides) -> tuple[ViTConfig, dict]:
    """An official .npz file -> (cfg, params)."""
    arrays = load_arrays(path)
    with naming(path):
        return from_npz(arrays, **overrides)


def write_npz(params: dict, cfg: ViTConfig, path, layout: str = "vit2020") -> None:
    """(params, cfg) -> an official .npz at `path`, built and checked in memory first, then written atomically."""
    save_arrays(to_npz(params, cfg, layout), path)
