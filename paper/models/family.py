"""One record per model family: what the rest of `paper/` needs to know about a ViT (DeiT and the hybrids included) or
a Swin, so that no code asks "is this a Swin?". Everything family-specific is chosen here, by the config's type, once:

    family_of(cfg)          the record of a config
    family_named(name)      the record of a paper, timm or torchvision model name

A record holds the config type, the lowlevel module computing the model (`init_params`, `param_shapes`, `forward`,
`forward_intermediates`), the model names and their parser, the architecture fields a name fixes, where a checkpoint
of the family stores the head count, and the memory an equivalence check needs. Layers above keep their own
family-specific tables keyed by `Family.name` (the writers in formats/checkpoints.py, the reference models in
references/, the multiply-add counts in reports/).
"""
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

import lowlevel
from lowlevel import SwinConfig, ViTConfig, swin
from paper.models import hybrid_configs, swin_configs, vit_configs


@dataclass(frozen=True)
class Family:
    name: str                                   # "vit" (DeiT, hybrids included) or "swin": the key of every per-family table
    title: str                                  # how messages name a model of the family: "ViT", "Swin"
    config: type                                # ViTConfig or SwinConfig
    model: ModuleType                           # lowlevel or lowlevel.swin
    models: tuple[str, ...]                     # the papers' models, by name (paper.verify's default rows)
    is_named: Callable[[str], bool]             # whether a model name is one of this family's
    config_named: Callable[..., object]         # (name, **overrides) -> the config the name means
    model_name: Callable[[object], str | None]  # cfg -> its paper name, or None
    paper_params: Callable[[str], str]          # name -> the parameter count its paper states, "-" if none
    architecture: tuple[str, ...]               # the fields a model name fixes (a checkpoint is checked against them)
    heads_found_in: str | None                  # where every checkpoint of the family stores the head count, if it does
    activation_bytes: Callable[[object, int, int], int]   # (cfg, bytes per value, batch) -> kept maps, for verify


def vit_activation_bytes(cfg: ViTConfig, size: int, batch: int) -> int:
    """Our kept attention maps and hidden states (forward_intermediates) for `batch` images."""
    n = cfg.num_tokens
    return batch * cfg.depth * (cfg.num_heads * n * n + 8 * n * cfg.dim + n * cfg.mlp_dim) * size


def swin_activation_bytes(cfg: SwinConfig, size: int, batch: int) -> int:
    """Our kept window attention maps (B·nW·heads·N², i.e. tokens·heads·N) and hidden maps for `batch` images."""
    n = cfg.window_size ** 2
    return sum(batch * depth * math.prod(hw) * (heads * n + 8 * c + m) * size for depth, hw, heads, c, m in
               zip(cfg.depths, cfg.stage_sizes, cfg.num_heads, cfg.stage_dims, cfg.mlp_dims, strict=True))


def is_vit_family_name(name: str) -> bool:
    """A plain ViT's or DeiT's name (vit_configs.py), or a hybrid's (hybrid_configs.py): a hybrid is a ViTConfig with
    a backbone, computed by the same lowlevel functions."""
    return vit_configs.is_vit_name(name) or hybrid_configs.is_hybrid_name(name)


def vit_family_config(name: str, **overrides) -> ViTConfig:
    named = hybrid_configs.hybrid_config if hybrid_configs.is_hybrid_name(name) else vit_configs.vit_config
    return named(name, **overrides)


def vit_family_model_name(cfg: ViTConfig) -> str | None:
    return (hybrid_configs.hybrid_model_name if cfg.backbone else vit_configs.vit_model_name)(cfg)


def vit_family_paper_params(name: str) -> str:
    """Table 1's and DeiT's counts; the hybrids' rows in Table 6 state none."""
    return "-" if hybrid_configs.is_hybrid_name(name) else vit_configs.vit_paper_params(name)


VIT = Family(name="vit", title="ViT", config=ViTConfig, model=lowlevel,
             models=vit_configs.PAPER_MODELS + vit_configs.DEIT_MODELS + hybrid_configs.HYBRID_MODELS,
             is_named=is_vit_family_name, config_named=vit_family_config,
             model_name=vit_family_model_name, paper_params=vit_family_paper_params,
             architecture=("image_size", "patch_size", "dim", "depth", "num_heads", "mlp_dim", "distilled", "backbone"),
             heads_found_in=None,
             activation_bytes=vit_activation_bytes)
SWIN = Family(name="swin", title="Swin", config=SwinConfig, model=swin, models=swin_configs.SWIN_MODELS,
              is_named=swin_configs.is_swin_name, config_named=swin_configs.swin_config,
              model_name=swin_configs.swin_model_name, paper_params=swin_configs.swin_paper_params,
              architecture=("image_size", "patch_size", "dim", "depths", "num_heads", "window_size", "mlp_ratio"),
              heads_found_in="the relative-position tables, a column per head",
              activation_bytes=swin_activation_bytes)
FAMILIES = (SWIN, VIT)          # a name is offered to each in turn: Swin names are the narrower pattern


def family_of(cfg) -> Family:
    """The record of a config: the one place a config's type is looked at."""
    for family in FAMILIES:
        if type(cfg) is family.config:
            return family
    raise ValueError(f"cfg: expected a ViTConfig or a SwinConfig, got {type(cfg).__name__}")


def family_named(name: str) -> Family:
    """The record of a model name ("ViT-B/16", "DeiT-S⚗", "Swin-T", a timm or torchvision name)."""
    if not isinstance(name, str):
        raise ValueError(f"name: expected a model name such as 'ViT-B/16' or 'Swin-T', got {name!r}")
    for family in FAMILIES:
        if family.is_named(name):
            return family
    raise ValueError(f"name: expected a paper name like 'ViT-B/16', 'DeiT-B⚗', 'R50+ViT-B/16' or 'Swin-T', or a timm "
                     f"name like 'vit_base_patch16_224', 'deit_base_distilled_patch16_224', 'vit_base_r50_s16_224' or "
                     f"'swin_tiny_patch4_window7_224', got {name!r}")


def paper_config(name: str, **overrides):
    """The exact config for a paper, timm or torchvision model name (vit_configs.py, swin_configs.py)."""
    return family_named(name).config_named(name, **overrides)


def model_name(cfg) -> str | None:
    """The paper name of the variant `cfg` has, e.g. "ViT-B/16", "DeiT-B⚗↑384", "Swin-T"; None if none of them."""
    return family_of(cfg).model_name(cfg)


def paper_params(name: str) -> str:
    """The parameter count a paper states for `name` (ViT's Table 1, DeiT's Tables 1 and 5, Swin's Table 1); "-" if
    none."""
    try:
        family = family_named(name)
    except ValueError:
        return "-"
    return family.paper_params(name)


def param_count(cfg) -> int:
    """The number of parameters of `cfg`, from the shapes alone: nothing is allocated (ViT-H/14 holds 632M)."""
    return sum(math.prod(shape) for shape in family_of(cfg).model.param_shapes(cfg).values())


def bytes_to_verify(cfg, dtype: torch.dtype, batch: int) -> int:
    """Memory an equivalence check of `cfg` needs: two copies of the weights (ours and one reference at a time), the
    float32 weights they are drawn from, and our kept maps."""
    size = torch.finfo(dtype).bits // 8
    return param_count(cfg) * (2 * size + 4) + family_of(cfg).activation_bytes(cfg, size, batch)
