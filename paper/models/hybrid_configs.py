"""The paper's hybrids by name (§3.1, "Hybrid Architecture"; Table 6's R50x1+ViT rows): a ViT of Table 1's sizes whose
patches are cut from a ResNet's feature map (lowlevel/resnet.py), by the official code's names (vit_jax
configs/models.py: "R50+ViT-B_16", written here with "/" as the paper writes ViT-B/16) and timm's
(vision_transformer_hybrid.py: "vit_base_r50_s16_224"; a ".tag" suffix such as ".orig_in21k_ft_in1k" is ignored).

§4.1 builds the R50 hybrids two ways: "we either (i) take the output of stage 4 of a regular ResNet50 or (ii) remove
stage 4, place the same number of layers in stage 3 (keeping the total number of layers), and take the output of this
extended stage 3. Option (ii) results in a 4x longer sequence length": (i) is stages (3, 4, 6, 3), stride 32;
(ii) is (3, 4, 9), stride 16. Both with patches of one "pixel" of the feature map. R26 (2, 2, 2, 2) and the stem alone
(R+ViT-Ti) come from the AugReg study (Steiner et al. 2021, arXiv:2106.10270).

Each is 224 px and 1000 classes unless the name or overrides say otherwise; numerics as timm's hybrids (LN eps 1e-6,
BackboneConfig's defaults). timm's own default for vit_base_r50_s16_224 has no head (97,890,112 parameters); with
num_classes=1000 it has the official count, 98,659,112, as this config has.
"""
import re

from lowlevel import BackboneConfig, ViTConfig
from paper.models.vit_configs import VARIANTS

# paper name: (ViT variant, ResNet units per stage, patch size on the feature map, timm's name without the image size)
HYBRIDS = {
    # The official config's comment says the stem "downscales 2x, making /16 with 8x8 patches"; the stem's convolution
    # and max-pool halve the image twice, so its 8×8 patches step 32 pixels (7×7 tokens at 224, 50 rows of E_pos in
    # the official and timm models alike); the name keeps its "/16".
    "R+ViT-Ti/16": ("Ti", (), 8, "vit_tiny_r_s16_p8"),
    "R26+ViT-S/32": ("S", (2, 2, 2, 2), 1, "vit_small_r26_s32"),
    "R50+ViT-B/16": ("B", (3, 4, 9), 1, "vit_base_r50_s16"),
    "R50+ViT-L/32": ("L", (3, 4, 6, 3), 1, "vit_large_r50_s32"),
}
HYBRID_MODELS = tuple(HYBRIDS)
TIMM_HYBRIDS = {row[3]: name for name, row in HYBRIDS.items()}
WIDTH = 64          # R50x1: BiT's width factor 1 (vit_jax models_vit.py: width = int(64 * width_factor))


def parse_hybrid_name(name: str) -> tuple[str, int | None]:
    """"R50+ViT-B/16" -> ("R50+ViT-B/16", None); "vit_base_r50_s16_384.orig_in21k_ft_in1k" -> ("R50+ViT-B/16", 384)."""
    if name in HYBRIDS:
        return name, None
    m = re.fullmatch(r"(\w+?)_(\d+)(\.\w+)?", name)
    if m and m[1] in TIMM_HYBRIDS:
        return TIMM_HYBRIDS[m[1]], int(m[2])
    raise ValueError(f"name: expected a hybrid name, one of {HYBRID_MODELS} or timm's {sorted(TIMM_HYBRIDS)} with an "
                     f"image size ('vit_base_r50_s16_224'), got {name!r}")


def is_hybrid_name(name: str) -> bool:
    try:
        parse_hybrid_name(name)
    except ValueError:
        return False
    return True


def hybrid_config(name: str, **overrides) -> ViTConfig:
    """The exact config for a paper or timm hybrid name."""
    paper_name, size = parse_hybrid_name(name)
    variant, layers, patch, _ = HYBRIDS[paper_name]
    dim, depth, mlp_dim, heads = VARIANTS[variant]
    fields = dict(image_size=size or 224, patch_size=patch, dim=dim, depth=depth, mlp_dim=mlp_dim, num_heads=heads,
                  num_classes=1000, layer_norm_eps=1e-6, backbone=BackboneConfig(layers=layers, width=WIDTH))
    return ViTConfig(**{**fields, **overrides})


def hybrid_model_name(cfg: ViTConfig) -> str | None:
    """The paper name of the hybrid `cfg` is (ViT variant, ResNet stages and width, patch size), e.g.
    "R50+ViT-B/16"; None if it is none of them."""
    for name, (variant, layers, patch, _) in HYBRIDS.items():
        if (VARIANTS[variant] == (cfg.dim, cfg.depth, cfg.mlp_dim, cfg.num_heads) and cfg.patch_size == patch
                and cfg.backbone is not None and (cfg.backbone.layers, cfg.backbone.width) == (layers, WIDTH)):
            return name
    return None


def timm_hybrid_name(name: str, image_size: int = 224) -> str:
    """"R50+ViT-B/16" -> "vit_base_r50_s16_224": the timm model with the same architecture."""
    paper_name, size = parse_hybrid_name(name)
    return f"{HYBRIDS[paper_name][3]}_{size or image_size}"
