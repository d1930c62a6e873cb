"""The paper's models by name: Table 1 (Base, Large, Huge) plus Tiny and Small from DeiT, patch 8, 14, 16 or 32.

Addressable by the paper's names ("ViT-B/16") and timm's ("vit_base_patch16_384", a ".tag" suffix such as
".augreg_in21k" is ignored). Layer-norm eps is 1e-6 as in the official code (Flax's default). The GELU flavour stays
a choice: the official checkpoints were trained with the tanh approximation (Flax `nn.gelu`), timm and Hugging Face
use the exact erf, so `gelu` is an override.
"""
import math
import re

from lowlevel import SwinConfig, ViTConfig, param_shapes, swin

from .swin_configs import parse_swin_name, swin_config, swin_model_name

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


def parse_name(name: str) -> tuple[str, int, int | None]:
    """"ViT-B/16" -> ("B", 16, None); "vit_large_patch16_384" -> ("L", 16, 384)."""
    m = re.fullmatch(r"ViT-(Ti|S|B|L|H)/(\d+)", name)
    if m:
        return m[1], int(m[2]), None
    m = re.fullmatch(r"vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)(\.\w+)?", name)
    if m:
        return TIMM_VARIANTS[m[1]], int(m[2]), int(m[3])
    raise ValueError(f"name: expected a paper name like 'ViT-B/16' or a timm name like 'vit_base_patch16_224', "
                     f"got {name!r}")


def paper_config(name: str, **overrides) -> ViTConfig | SwinConfig:
    """The exact config for a paper or timm model name; image size 224 unless the name or overrides say otherwise,
    1000 classes unless overridden. Swin names (paper/swin_configs.py) give a SwinConfig."""
    if parse_swin_name(name):
        return swin_config(name, **overrides)
    variant, patch, size = parse_name(name)
    if patch not in PATCH_SIZES:
        raise ValueError(f"name: expected patch size one of {PATCH_SIZES}, got {patch} in {name!r}")
    dim, depth, mlp_dim, heads = VARIANTS[variant]
    fields = dict(image_size=size or 224, patch_size=patch, dim=dim, depth=depth, mlp_dim=mlp_dim, num_heads=heads,
                  num_classes=1000, layer_norm_eps=1e-6)
    return ViTConfig(**{**fields, **overrides})


def timm_model_name(name: str, image_size: int = 224) -> str:
    """"ViT-B/16" -> "vit_base_patch16_224": the timm model with the same architecture."""
    variant, patch, size = parse_name(name)
    long = {v: k for k, v in TIMM_VARIANTS.items()}[variant]
    return f"vit_{long}_patch{patch}_{size or image_size}"


def model_name(cfg: ViTConfig | SwinConfig) -> str | None:
    """The paper name of the variant `cfg` has (D, L, MLP size, heads), e.g. "ViT-B/16"; None if it is none of them."""
    if isinstance(cfg, SwinConfig):
        return swin_model_name(cfg)
    for variant, shape in VARIANTS.items():
        if shape == (cfg.dim, cfg.depth, cfg.mlp_dim, cfg.num_heads):
            return f"ViT-{variant}/{cfg.patch_size}"
    return None


def param_count(cfg: ViTConfig | SwinConfig) -> int:
    """The number of parameters of `cfg`, from the shapes alone: nothing is allocated (ViT-H/14 holds 632M)."""
    shapes = swin.param_shapes(cfg) if isinstance(cfg, SwinConfig) else param_shapes(cfg)
    return sum(math.prod(shape) for shape in shapes.values())
