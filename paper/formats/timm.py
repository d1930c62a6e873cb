"""timm's `VisionTransformer`, the de facto PyTorch state-dict layout, as `.pth` (torch.save) or `.safetensors`; and
its `VisionTransformerDistilled` (deit.py), the distilled DeiT, in the same layout with three more tensors.

Our name                 timm name                        transform
patch.weight (D, C·P·P)  patch_embed.proj.weight          reshape to the conv kernel (D, C, P, P): same numbers
patch.bias               patch_embed.proj.bias            -
cls                      cls_token                        -
dist                     dist_token (DeiT)                -
pos                      pos_embed                        - (DeiT: rows cls, dist, patches, as ours)
blocks.i.ln1 / ln2       blocks.i.norm1 / norm2           -
blocks.i.qkv             blocks.i.attn.qkv                - (rows [q; k; v], head-major: the same layout)
blocks.i.proj            blocks.i.attn.proj               -
blocks.i.fc1 / fc2       blocks.i.mlp.fc1 / fc2           -
norm                     norm (pool "token")              - ; with pool "avg" timm applies this LN after the
                         fc_norm (pool "avg")               mean and calls it fc_norm
head                     head                             -
head_dist                head_dist (DeiT)                 -

timm has no pre-logits layer and no fixed sin-cos position embedding, so configs with either cannot be written.
A DeiT without the distillation token is timm's plain VisionTransformer (deit.py builds deit_tiny_patch16_224 so).
"""
import torch

from lowlevel import ViTConfig, check_params, param_shapes

from .fields import num_heads_for, require, square_image_size
from .files import load_tensors, save_tensors

FORMAT = "timm's VisionTransformer"
BLOCK_NAMES = {"ln1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "ln2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def timm_key(name: str, cfg: ViTConfig) -> str:
    """Our parameter name -> timm's state-dict key."""
    if name.startswith("blocks."):
        _, i, part, leaf = name.split(".")
        return f"blocks.{i}.{BLOCK_NAMES[part]}.{leaf}"
    part, _, leaf = name.partition(".")
    if part == "norm" and cfg.pool == "avg":
        return f"fc_norm.{leaf}"
    return {"patch": f"patch_embed.proj.{leaf}", "cls": "cls_token", "dist": "dist_token", "pos": "pos_embed"}.get(
        part, name)


def is_timm_state_dict(sd: dict) -> bool:
    return "patch_embed.proj.weight" in sd


def config_from_timm_model(model) -> dict:
    """What a timm model says about itself that its weights do not: image size, heads, eps, GELU, pooling."""
    block = model.blocks[0]
    act = block.mlp.act
    norm = model.norm if model.global_pool == "token" else model.fc_norm
    return {"image_size": tuple(model.patch_embed.img_size), "num_heads": block.attn.num_heads,
            "layer_norm_eps": norm.eps, "gelu": "tanh" if getattr(act, "approximate", "none") == "tanh" else "exact",
            "pool": "avg" if model.global_pool == "avg" else "token"}


def config_from_timm_state_dict(sd: dict, known: dict) -> dict:
    """The config fields a timm state_dict's shapes determine, with `known` fields (the caller's, or the model's)
    taking precedence; `fields.py` supplies what neither tells."""
    d, c, p, _ = sd["patch_embed.proj.weight"].shape
    class_token, distilled = "cls_token" in sd, "dist_token" in sd
    fields = {"patch_size": p, "in_channels": c, "dim": d, "class_token": class_token, "distilled": distilled,
              "depth": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
              "mlp_dim": sd["blocks.0.mlp.fc1.weight"].shape[0], "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
              "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
              "pool": "avg" if "fc_norm.weight" in sd else "token", **known}
    if "num_heads" not in fields:
        fields["num_heads"] = num_heads_for(d)
    if "pos_embed" not in sd:
        fields.setdefault("pos_embed", "none")
    elif "image_size" not in fields:
        fields["image_size"] = square_image_size(sd["pos_embed"].shape[1], class_token + distilled, p)
    return fields


def from_timm(model_or_state_dict, **overrides) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """A timm VisionTransformer or VisionTransformerDistilled (or its state_dict) -> (cfg, params). Keyword overrides
    set config fields the weights cannot tell (num_heads, image_size, layer_norm_eps, gelu) when a bare state_dict is
    given."""
    if hasattr(model_or_state_dict, "blocks"):  # a timm model, not a bare state_dict
        sd = model_or_state_dict.state_dict()
        known = {**config_from_timm_model(model_or_state_dict), **overrides}
    else:
        sd = dict(model_or_state_dict)
        missing = [k for k in ("patch_embed.proj.weight", "blocks.0.mlp.fc1.weight") if k not in sd]
        if missing:
            raise ValueError(f"state_dict: expected a timm VisionTransformer state_dict, missing key(s) {missing}")
        known = overrides
    cfg = ViTConfig(**config_from_timm_state_dict(sd, known))
    shapes = param_shapes(cfg)
    names = {timm_key(k, cfg): k for k in shapes}
    timm_shapes = {t: (shapes[k] if k != "patch.weight" else (cfg.dim, cfg.in_channels, cfg.patch_size, cfg.patch_size))
                   for t, k in names.items()}
    check_params(sd, timm_shapes, what="timm state_dict")
    params = {names[t]: v.detach().clone() for t, v in sd.items()}
    params["patch.weight"] = params["patch.weight"].reshape(shapes["patch.weight"])
    return cfg, params


def to_timm(params: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """(params, cfg) -> a timm VisionTransformer (VisionTransformerDistilled) state_dict
    (`paper.reference_models.timm_vit(cfg)` builds the model)."""
    require(FORMAT, cfg, representation_size=None, pos_embed=("learned", "none"))
    if cfg.distilled:                               # VisionTransformerDistilled always learns E_pos (deit.py)
        require("timm's VisionTransformerDistilled", cfg, pos_embed="learned")
    check_params(params, param_shapes(cfg))
    sd = {timm_key(k, cfg): v.detach().clone() for k, v in params.items()}
    p = cfg.patch_size
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].reshape(cfg.dim, cfg.in_channels, p, p)
    return sd


def read_timm(path, **overrides) -> tuple[ViTConfig, dict]:
    """A timm state_dict file -> (cfg, params); overrides set what the weights cannot tell and are checked against
    the shapes."""
    sd = load_tensors(path)
    if not is_timm_state_dict(sd):
        raise ValueError(f"{path}: expected a timm VisionTransformer state_dict with 'patch_embed.proj.weight', "
                         f"got keys {sorted(sd)[:4]}...")
    try:
        return from_timm(sd, **overrides)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def write_timm(params: dict, cfg: ViTConfig, path) -> None:
    """(params, cfg) -> a timm state_dict at `path` (.safetensors by suffix, torch.save otherwise). Everything is
    checked before the file is written."""
    save_tensors(to_timm(params, cfg), path)
