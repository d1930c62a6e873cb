"""timm's `SwinTransformer` state dict (swin_tiny_patch4_window7_224 and its siblings), as `.pth` or `.safetensors`.

Our name                                   timm name                                     transform
patch.weight (C, in·P·P)                   patch_embed.proj.weight                       reshape to the conv kernel
patch.bias                                 patch_embed.proj.bias                         -
patch_norm                                 patch_embed.norm                              -
stages.s.blocks.j.ln1 / ln2                layers.s.blocks.j.norm1 / norm2               -
stages.s.blocks.j.qkv                      layers.s.blocks.j.attn.qkv                    - (rows [q; k; v], head-major)
stages.s.blocks.j.proj                     layers.s.blocks.j.attn.proj                   -
stages.s.blocks.j.relative_position_bias_table                                           - ((2M−1)², heads)
                                           layers.s.blocks.j.attn.relative_position_bias_table
stages.s.blocks.j.fc1 / fc2                layers.s.blocks.j.mlp.fc1 / fc2               -
stages.s.merge (the k-th merging)          layers.{k+1}.downsample                       - (timm merges at the start of
                                                                                           stages 1..3)
norm                                       norm                                          -
head                                       head.fc                                       -

timm keeps `relative_position_index` and the shifted windows' `attn_mask` as non-persistent buffers: they are not in
its state dict, and neither read nor written here (timm's own `checkpoint_filter_fn` drops them from the original's
checkpoints). timm computes with its conventions (padding "after_shift", small_window "shrink"), so a reader sets
them and a writer refuses a config whose function they would change at its image size.
"""
import torch

from lowlevel import SwinConfig
from lowlevel.checks import check_config
from lowlevel.swin import param_shapes
from lowlevel.swin_params import merge_index
from paper.formats.fields import Preprocessing, require, require_conventions, swin_fields
from paper.formats.files import read_state_dict, save_tensors
from paper.formats.renaming import renamed, unrenamed

BLOCK_NAMES = {"ln1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "ln2": "norm2", "fc1": "mlp.fc1",
               "fc2": "mlp.fc2", "relative_position_bias_table": "attn.relative_position_bias_table"}
TABLE = "layers.{}.blocks.0.attn.relative_position_bias_table"
# timm's Swin weights' preprocessing (swin_transformer.py _cfg: ImageNet mean and std, crop 0.9; it resizes bicubic)
PREPROCESSING = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.9, "timm's default for its Swins (_cfg)")


def timm_swin_key(name: str, cfg: SwinConfig | None) -> str:
    """Our parameter name -> timm's state-dict key (the config tells where the mergings are; no other name needs it)."""
    parts = name.split(".")
    if parts[0] == "stages" and parts[2] == "blocks":
        s, j, part = parts[1], parts[3], ".".join(parts[4:])
        piece, _, leaf = part.partition(".")
        return f"layers.{s}.blocks.{j}.{BLOCK_NAMES[piece]}" + (f".{leaf}" if leaf else "")
    if parts[0] == "stages":                                   # stages.s.merge.{norm,reduction}.leaf
        return f"layers.{merge_index(cfg, int(parts[1])) + 1}.downsample.{'.'.join(parts[3:])}"
    head, _, leaf = name.partition(".")
    return {"patch": f"patch_embed.proj.{leaf}", "patch_norm": f"patch_embed.norm.{leaf}",
            "head": f"head.fc.{leaf}"}.get(head, name)


def is_timm_swin_state_dict(sd: dict) -> bool:
    return "patch_embed.proj.weight" in sd and TABLE.format(0) in sd


def from_timm_swin(state_dict: dict, **overrides) -> tuple[SwinConfig, dict[str, torch.Tensor]]:
    """A timm SwinTransformer state dict -> (cfg, params). Keyword overrides set what the weights cannot tell (image
    size, eps, ...). All keys are checked (missing, unexpected, mis-shaped) before anything is converted."""
    sd = dict(state_dict)
    missing = [k for k in ("patch_embed.proj.weight", TABLE.format(0), "layers.0.blocks.0.mlp.fc1.weight")
               if k not in sd]
    if missing:
        raise ValueError(f"state_dict: expected a timm SwinTransformer state_dict, missing key(s) {missing}")
    cfg = SwinConfig(**swin_fields(sd, lambda k: timm_swin_key(k, None), {**TIMM_CONVENTIONS, **overrides}))
    return cfg, unrenamed(sd, param_shapes(cfg), cfg, lambda k: timm_swin_key(k, cfg), "timm Swin state_dict")


def to_timm_swin(params: dict[str, torch.Tensor], cfg: SwinConfig) -> dict[str, torch.Tensor]:
    """(params, cfg) -> a timm SwinTransformer state dict (`paper.references.swin.timm_swin(cfg)` builds the model)."""
    require_timm(cfg)
    return renamed(params, param_shapes(cfg), cfg, lambda k: timm_swin_key(k, cfg))


def read_timm_swin(path, **overrides) -> tuple[SwinConfig, dict]:
    """A timm Swin state-dict file -> (cfg, params)."""
    return read_state_dict(path, from_timm_swin, **overrides)


def write_timm_swin(params: dict, cfg: SwinConfig, path) -> None:
    """(params, cfg) -> a timm Swin state dict at `path` (.safetensors by suffix, torch.save otherwise), checked
    before anything is written."""
    save_tensors(to_timm_swin(params, cfg), path)


TIMM = "timm's SwinTransformer"


# Each code's conventions (lowlevel/swin_config.py); merge_position is where its checkpoints name the merging.
TIMM_CONVENTIONS = dict(padding="after_shift", small_window="shrink", merge_position="start")


def require_timm(cfg: SwinConfig) -> None:
    """Refuse a config timm's code does not compute: its GELU is fixed to nn.GELU (the exact erf), its conventions
    are its own."""
    check_config(cfg, SwinConfig)
    require(TIMM, cfg, gelu="exact")
    require_conventions(TIMM, cfg, **TIMM_CONVENTIONS)
