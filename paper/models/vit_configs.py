"""The paper's models by name: Table 1 (Base, Large, Huge) plus Tiny and Small from DeiT, patch 8, 14, 16 or 32; and
DeiT's models (Touvron et al. 2021): Ti, S and B at patch 16, each also distilled, at 224 or 384.

Addressable by the paper's names ("ViT-B/16"; "DeiT-B", "DeiT-B⚗" for the distilled model as DeiT's Table 5 marks it,
"DeiT-B⚗↑384" fine-tuned at 384) and timm's ("vit_base_patch16_384", "deit_base_distilled_patch16_384"; a ".tag"
suffix such as ".augreg_in21k" is ignored). Layer-norm eps is 1e-6 as in the official code (Flax's default) and the
official DeiT (models.py). The GELU flavour stays a choice: the official ViT checkpoints were trained with the tanh
approximation (Flax `nn.gelu`), timm, Hugging Face and the official DeiT use the exact erf, so `gelu` is an override.
"""
import re
from typing import NamedTuple

from lowlevel import ViTConfig

# name: (hidden size D, layers L, MLP size, heads); D_h = 64 throughout (paper App. A, DeiT §5.1)
VARIANTS = {
    "Ti": (192, 12, 768, 3),     # DeiT-Ti; vit_jax configs/models.py get_ti16_config
    "S": (384, 12, 1536, 6),     # DeiT-S;  get_s16_config
    "B": (768, 12, 3072, 12),    # paper Table 1, "taken directly from BERT"
    "L": (1024, 24, 4096, 16),   # paper Table 1
    "H": (1280, 32, 5120, 16),   # paper Table 1, "new"
}
TIMM_VARIANTS = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
PATCH_SIZES = (8, 14, 16, 32)
# The models the official code defines and counts (vit_jax/models_test.py MODEL_SIZES), smallest first.
PAPER_MODELS = ("ViT-Ti/16", "ViT-S/32", "ViT-S/16", "ViT-B/32", "ViT-B/16", "ViT-B/8", "ViT-L/32", "ViT-L/16",
                "ViT-H/14")
# Paper Table 1's rounded parameter counts ("307M" matches no exact L/16 count;
# the exact counts are vit_jax/models_test.py MODEL_SIZES)..
TABLE1_PARAMS = {"B": "86M", "L": "307M", "H": "632M"}
# DeiT: the three sizes of its Table 1, patch 16, without and with the distillation token ("⚗"); any of them at 224
# or 384 by name. The models the paper reports (Table 5, which fine-tunes only B at 384, "↑384"), which are also the
# ones timm registers (deit.py):
DEIT_VARIANTS = ("Ti", "S", "B")
DEIT_MODELS = ("DeiT-Ti", "DeiT-S", "DeiT-B", "DeiT-B↑384", "DeiT-Ti⚗", "DeiT-S⚗", "DeiT-B⚗", "DeiT-B⚗↑384")
# The paper's rounded parameter counts: Table 1 (DeiT-Ti/S/B) and Table 5 (the distilled ones).
DEIT_PARAMS = {("Ti", False): "5M", ("S", False): "22M", ("B", False): "86M",
               ("Ti", True): "6M", ("S", True): "22M", ("B", True): "87M"}


class ModelName(NamedTuple):
    family: str          # "ViT" or "DeiT"
    variant: str         # "Ti", "S", "B", "L", "H"
    patch: int
    size: int | None     # the image size the name states
    distilled: bool


def parse_name(name: str) -> ModelName:
    """"ViT-B/16" -> ViT B, patch 16, no size; "vit_large_patch16_384" -> ViT L, 16, 384;
    "DeiT-S⚗↑384" and "deit_small_distilled_patch16_384" -> DeiT S, 16, 384, distilled."""
    m = re.fullmatch(r"ViT-(Ti|S|B|L|H)/(\d+)", name)
    if m:
        return ModelName("ViT", m[1], int(m[2]), None, False)
    m = re.fullmatch(r"vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)(\.\w+)?", name)
    if m:
        return ModelName("ViT", TIMM_VARIANTS[m[1]], int(m[2]), int(m[3]), False)
    m = re.fullmatch(r"DeiT-(Ti|S|B)(⚗)?(↑384)?", name)
    if m:
        return ModelName("DeiT", m[1], 16, 384 if m[3] else 224, bool(m[2]))
    m = re.fullmatch(r"deit_(tiny|small|base)(_distilled)?_patch16_(224|384)(\.\w+)?", name)
    if m:
        return ModelName("DeiT", TIMM_VARIANTS[m[1]], 16, int(m[3]), bool(m[2]))
    raise ValueError(f"name: expected a paper name like 'ViT-B/16' or 'DeiT-B⚗', or a timm name like "
                     f"'vit_base_patch16_224' or 'deit_base_distilled_patch16_224', got {name!r}")


def is_vit_name(name: str) -> bool:
    """Whether `name` is a ViT's or a DeiT's, by the patterns parse_name reads."""
    try:
        parse_name(name)
    except ValueError:
        return False
    return True


def vit_config(name: str, **overrides) -> ViTConfig:
    """The exact config for a paper or timm ViT or DeiT name; image size 224 unless the name or overrides say
    otherwise, 1000 classes unless overridden."""
    family, variant, patch, size, distilled = parse_name(name)
    if patch not in PATCH_SIZES:
        raise ValueError(f"name: expected patch size one of {PATCH_SIZES}, got {patch} in {name!r}")
    dim, depth, mlp_dim, heads = VARIANTS[variant]
    fields = dict(image_size=size or 224, patch_size=patch, dim=dim, depth=depth, mlp_dim=mlp_dim, num_heads=heads,
                  num_classes=1000, layer_norm_eps=1e-6, distilled=distilled)
    return ViTConfig(**{**fields, **overrides})


def timm_model_name(name: str, image_size: int = 224) -> str:
    """"ViT-B/16" -> "vit_base_patch16_224", "DeiT-B⚗" -> "deit_base_distilled_patch16_224": the timm model with the
    same architecture."""
    family, variant, patch, size, distilled = parse_name(name)
    long = {v: k for k, v in TIMM_VARIANTS.items()}[variant]
    if family == "DeiT":
        return f"deit_{long}{'_distilled' if distilled else ''}_patch{patch}_{size}"
    return f"vit_{long}_patch{patch}_{size or image_size}"


def vit_model_name(cfg: ViTConfig) -> str | None:
    """The paper name of the variant `cfg` has (D, L, MLP size, heads), e.g. "ViT-B/16", or for a distilled model
    DeiT's, e.g. "DeiT-B⚗↑384"; None if it is none of them."""
    for variant, shape in VARIANTS.items():
        if shape != (cfg.dim, cfg.depth, cfg.mlp_dim, cfg.num_heads):
            continue
        if not cfg.distilled:
            return f"ViT-{variant}/{cfg.patch_size}"
        if variant in DEIT_VARIANTS and cfg.patch_size == 16 and cfg.image_size in ((224, 224), (384, 384)):
            return f"DeiT-{variant}⚗{'↑384' if cfg.image_size == (384, 384) else ''}"
    return None


def vit_paper_params(name: str) -> str:
    """The parameter count the paper states for `name` (Table 1 of ViT or DeiT, Table 5 of DeiT), "-" if none."""
    family, variant, _, _, distilled = parse_name(name)
    if family == "DeiT":
        return DEIT_PARAMS[variant, distilled]
    return TABLE1_PARAMS.get(variant, "-")
