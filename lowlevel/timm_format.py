"""Conversion to and from timm's `VisionTransformer`, the de facto PyTorch state-dict layout.

Our name                 timm name                        transform
patch.weight (D, C·P·P)  patch_embed.proj.weight          reshape to the conv kernel (D, C, P, P): same numbers
patch.bias               patch_embed.proj.bias            -
cls                      cls_token                        -
pos                      pos_embed                        -
blocks.i.ln1 / ln2       blocks.i.norm1 / norm2           -
blocks.i.qkv             blocks.i.attn.qkv                - (rows [q; k; v], head-major: the same layout)
blocks.i.proj            blocks.i.attn.proj               -
blocks.i.fc1 / fc2       blocks.i.mlp.fc1 / fc2           -
norm                     norm (pool "token")              - ; with pool "avg" timm applies this LN after the
                         fc_norm (pool "avg")               mean and calls it fc_norm
head                     head                             -

timm has no pre-logits layer, so configs with representation_size cannot be written to it.
"""
import torch

from .checks import check_params
from .config import ViTConfig
from .params import param_shapes

BLOCK_NAMES = {"ln1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "ln2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def timm_name(name: str, cfg: ViTConfig) -> str:
    """Our parameter name -> timm's."""
    if name.startswith("blocks."):
        _, i, part, leaf = name.split(".")
        return f"blocks.{i}.{BLOCK_NAMES[part]}.{leaf}"
    part, _, leaf = name.partition(".")
    if part == "norm" and cfg.pool == "avg":
        return f"fc_norm.{leaf}"
    return {"patch": f"patch_embed.proj.{leaf}", "cls": "cls_token", "pos": "pos_embed"}.get(part, name)


def config_from_timm(model) -> dict:
    """What a timm model says about itself that its weights do not: image size, heads, eps, GELU, pooling."""
    block = model.blocks[0]
    act = block.mlp.act
    norm = model.norm if model.global_pool == "token" else model.fc_norm
    return {"image_size": tuple(model.patch_embed.img_size), "num_heads": block.attn.num_heads,
            "layer_norm_eps": norm.eps, "gelu": "tanh" if getattr(act, "approximate", "none") == "tanh" else "exact",
            "pool": "avg" if model.global_pool == "avg" else "token"}


def config_from_timm_state_dict(sd: dict) -> dict:
    """The config fields a timm state_dict's shapes determine. A square image is assumed, and D_h = 64 as in every
    paper and timm ViT config (the head count is not in the weights); pass overrides to from_timm otherwise."""
    d, c, p, _ = sd["patch_embed.proj.weight"].shape
    class_token = "cls_token" in sd
    fields = {"patch_size": p, "in_channels": c, "dim": d, "class_token": class_token,
              "depth": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
              "mlp_dim": sd["blocks.0.mlp.fc1.weight"].shape[0], "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
              "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
              "pool": "avg" if "fc_norm.weight" in sd else "token", "num_heads": max(d // 64, 1)}
    if "pos_embed" in sd:
        side = round((sd["pos_embed"].shape[1] - int(class_token)) ** 0.5)
        fields["image_size"] = (side * p, side * p)
    else:
        fields["pos_embed"] = "none"
    return fields


def from_timm(model_or_state_dict, **overrides) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """A timm VisionTransformer (or its state_dict) -> (cfg, params). Keyword overrides set config fields the
    weights cannot tell (num_heads, image_size, layer_norm_eps, gelu) when a bare state_dict is given."""
    if hasattr(model_or_state_dict, "blocks"):  # a timm model, not a bare state_dict
        sd = model_or_state_dict.state_dict()
        fields = {**config_from_timm_state_dict(sd), **config_from_timm(model_or_state_dict)}
    else:
        sd = dict(model_or_state_dict)
        missing = [k for k in ("patch_embed.proj.weight", "blocks.0.mlp.fc1.weight") if k not in sd]
        if missing:
            raise ValueError(f"state_dict: expected a timm VisionTransformer state_dict, missing key(s) {missing}")
        fields = config_from_timm_state_dict(sd)
    cfg = ViTConfig(**{**fields, **overrides})
    shapes = param_shapes(cfg)
    names = {timm_name(k, cfg): k for k in shapes}
    timm_shapes = {t: (shapes[k] if k != "patch.weight" else (cfg.dim, cfg.in_channels, cfg.patch_size, cfg.patch_size))
                   for t, k in names.items()}
    check_params(sd, timm_shapes, what="timm state_dict")
    params = {names[t]: v.detach().clone() for t, v in sd.items()}
    params["patch.weight"] = params["patch.weight"].reshape(shapes["patch.weight"])
    return cfg, params


def to_timm(params: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """(params, cfg) -> a timm VisionTransformer state_dict (`paper.reference_models.timm_vit(cfg)` builds the model)."""
    if cfg.representation_size:
        raise ValueError(f"representation_size: timm's VisionTransformer has no pre-logits layer, got {cfg.representation_size}")
    if cfg.pos_embed == "sincos2d":
        raise ValueError("pos_embed: timm's VisionTransformer has no fixed 2-D sin-cos option, got 'sincos2d'")
    check_params(params, param_shapes(cfg))
    sd = {timm_name(k, cfg): v.detach().clone() for k, v in params.items()}
    p = cfg.patch_size
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].reshape(cfg.dim, cfg.in_channels, p, p)
    return sd

