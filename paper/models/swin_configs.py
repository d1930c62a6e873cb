"""The Swin paper's models by name: Swin-T, Swin-S and Swin-B (§3.3, Table 1).

Addressable by the paper's names ("Swin-T"), torchvision's ("swin_t") and timm's ("swin_tiny_patch4_window7_224",
"swin_base_patch4_window12_384"; a ".tag" suffix such as ".ms_in1k" is ignored). A paper or torchvision name means
224 px with M = 7; a timm name says its patch, window and image size.
"""
import re

from lowlevel import SwinConfig

# variant: (C, depths, heads); d = 32 per head (§3.3: "Swin-T: C = 96, layer numbers = {2, 2, 6, 2}", ...)
SWIN_VARIANTS = {
    "T": (96, (2, 2, 6, 2), (3, 6, 12, 24)),      # timm swin_transformer.py:1332, torchvision swin_t
    "S": (96, (2, 2, 18, 2), (3, 6, 12, 24)),     # timm :1341, torchvision swin_s
    "B": (128, (2, 2, 18, 2), (4, 8, 16, 32)),    # timm :1350, torchvision swin_b
}
TIMM_SWIN_VARIANTS = {"tiny": "T", "small": "S", "base": "B"}
SWIN_MODELS = ("Swin-T", "Swin-S", "Swin-B")
# Table 1's rounded parameter counts; the exact ones (1000 classes) are 28,288,354, 49,606,258 and 87,768,224.
SWIN_TABLE1_PARAMS = {"T": "29M", "S": "50M", "B": "88M"}


def parse_swin_name(name: str) -> tuple[str, int, int, int] | None:
    """"Swin-T" or "swin_t" -> ("T", 4, 7, 224); "swin_base_patch4_window12_384" -> ("B", 4, 12, 384); None for a
    name that is no Swin's."""
    m = re.fullmatch(r"Swin-(T|S|B)|swin_(t|s|b)", name)
    if m:
        return (m[1] or m[2].upper()), 4, 7, 224
    m = re.fullmatch(r"swin_(tiny|small|base)_patch(\d+)_window(\d+)_(\d+)(\.\w+)?", name)
    if m:
        return TIMM_SWIN_VARIANTS[m[1]], int(m[2]), int(m[3]), int(m[4])
    return None


def is_swin_name(name: str) -> bool:
    return parse_swin_name(name) is not None


def swin_config(name: str, **overrides) -> SwinConfig:
    """The exact config for a paper, torchvision or timm Swin name, 1000 classes unless overridden."""
    parsed = parse_swin_name(name)
    if parsed is None:
        raise ValueError(f"name: expected a Swin name like 'Swin-T', 'swin_t' or 'swin_tiny_patch4_window7_224', "
                         f"got {name!r}")
    variant, patch, window, size = parsed
    dim, depths, heads = SWIN_VARIANTS[variant]
    fields = dict(image_size=size, patch_size=patch, window_size=window, dim=dim, depths=depths, num_heads=heads,
                  num_classes=1000)
    return SwinConfig(**{**fields, **overrides})


def swin_model_name(cfg: SwinConfig) -> str | None:
    """The paper name of the variant `cfg` has (C, depths, heads, patch 4), e.g. "Swin-T"; None if none of them."""
    for variant, shape in SWIN_VARIANTS.items():
        if shape == (cfg.dim, cfg.depths, cfg.num_heads) and cfg.patch_size == 4:
            return f"Swin-{variant}"
    return None


def swin_paper_params(name: str) -> str:
    """The parameter count Table 1 states for a Swin name."""
    return SWIN_TABLE1_PARAMS[parse_swin_name(name)[0]]
