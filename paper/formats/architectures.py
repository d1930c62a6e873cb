"""The known architectures: the head count of every paper, timm, DeiT and torchvision ViT, and the image size of
every paper, timm and torchvision Swin, for files that do not store them.

timm and torchvision keep q, k and v of all heads in one (3D, D) matrix, transformers in three (D, D) ones: any
divisor of D fits the shapes, and a wrong one computes another function. (Guessing D_h = 64 read a timm model with
D = 64 and 4 heads as 1 head, logits off by 0.70, and is wrong for the paper's own ViT-H/14: D = 1280, 16 heads,
D_h = 80.) So a reader that finds no head count in the file matches what the shapes do tell, (D, depth, MLP size,
patch size), against this table, says which architecture matched, and refuses when none does or when two head counts
do (`paper.formats.fields.num_heads_for`).

The timm rows are every model of timm 1.0.31's vision_transformer.py, deit.py and vision_transformer_hybrid.py whose
state_dict paper/formats/timm.py reads (DeiT's distilled models and the hybrids included: a hybrid's patch size is on
its ResNet's feature map); tests/formats/test_architectures.py rebuilds them from timm's registry on the meta device,
and the torchvision rows from torchvision's builders, and fails on any difference.
"""
from paper.models.hybrid_configs import HYBRID_MODELS, hybrid_config
from paper.models.swin_configs import swin_config
from paper.models.vit_configs import PATCH_SIZES, VARIANTS

# name: (D, depth, MLP size, patch size, heads)
TIMM = {
    "deit_base_distilled_patch16_224": (768, 12, 3072, 16, 12),
    "deit_base_distilled_patch16_384": (768, 12, 3072, 16, 12),
    "deit_base_patch16_224": (768, 12, 3072, 16, 12),
    "deit_base_patch16_384": (768, 12, 3072, 16, 12),
    "deit_small_distilled_patch16_224": (384, 12, 1536, 16, 6),
    "deit_small_patch16_224": (384, 12, 1536, 16, 6),
    "deit_tiny_distilled_patch16_224": (192, 12, 768, 16, 3),
    "deit_tiny_patch16_224": (192, 12, 768, 16, 3),
    "eva_large_patch14_196": (1024, 24, 4096, 14, 16),
    "eva_large_patch14_336": (1024, 24, 4096, 14, 16),
    "test_vit": (64, 6, 192, 16, 2),
    "vit_base_patch16_224": (768, 12, 3072, 16, 12),
    "vit_base_patch16_224_miil": (768, 12, 3072, 16, 12),
    "vit_base_patch16_384": (768, 12, 3072, 16, 12),
    "vit_base_patch16_rpn_224": (768, 12, 3072, 16, 12),
    "vit_base_patch32_224": (768, 12, 3072, 32, 12),
    "vit_base_patch32_384": (768, 12, 3072, 32, 12),
    "vit_base_patch8_224": (768, 12, 3072, 8, 12),
    "vit_base_r26_s32_224": (768, 12, 3072, 1, 12),
    "vit_base_r50_s16_224": (768, 12, 3072, 1, 12),
    "vit_base_r50_s16_384": (768, 12, 3072, 1, 12),
    "vit_giant_patch14_224": (1408, 40, 6144, 14, 16),
    "vit_gigantic_patch14_224": (1664, 48, 8192, 14, 16),
    "vit_huge_patch14_224": (1280, 32, 5120, 14, 16),
    "vit_large_patch14_224": (1024, 24, 4096, 14, 16),
    "vit_large_patch16_224": (1024, 24, 4096, 16, 16),
    "vit_large_patch16_384": (1024, 24, 4096, 16, 16),
    "vit_large_patch32_224": (1024, 24, 4096, 32, 16),
    "vit_large_patch32_384": (1024, 24, 4096, 32, 16),
    "vit_large_r50_s32_224": (1024, 24, 4096, 1, 16),
    "vit_large_r50_s32_384": (1024, 24, 4096, 1, 16),
    "vit_small_patch16_224": (384, 12, 1536, 16, 6),
    "vit_small_patch16_384": (384, 12, 1536, 16, 6),
    "vit_small_patch32_224": (384, 12, 1536, 32, 6),
    "vit_small_patch32_384": (384, 12, 1536, 32, 6),
    "vit_small_patch8_224": (384, 12, 1536, 8, 6),
    "vit_small_r26_s32_224": (384, 12, 1536, 1, 6),
    "vit_small_r26_s32_384": (384, 12, 1536, 1, 6),
    "vit_tiny_patch16_224": (192, 12, 768, 16, 3),
    "vit_tiny_patch16_384": (192, 12, 768, 16, 3),
    "vit_tiny_r_s16_p8_224": (192, 12, 768, 8, 3),
    "vit_tiny_r_s16_p8_384": (192, 12, 768, 8, 3),
}
# The paper's Table 1 and DeiT's Ti and S (paper/models/vit_configs.py), at every patch size the paper uses
PAPER = {f"ViT-{variant}/{p}": (d, depth, mlp, p, heads)
         for variant, (d, depth, mlp, heads) in VARIANTS.items() for p in PATCH_SIZES}
# The paper's hybrids (paper/models/hybrid_configs.py; their patch size is on the ResNet's feature map)
PAPER_HYBRIDS = {name: (cfg.dim, cfg.depth, cfg.mlp_dim, cfg.patch_size, cfg.num_heads)
                 for name in HYBRID_MODELS for cfg in [hybrid_config(name)]}
# torchvision 0.29's builders (torchvision/models/vision_transformer.py vit_b_16 … vit_h_14) are paper models
TORCHVISION = {f"vit_{variant.lower()}_{p}": PAPER[f"ViT-{variant}/{p}"]
               for variant, p in (("B", 16), ("B", 32), ("L", 16), ("L", 32), ("H", 14))}
KNOWN = {**PAPER, **PAPER_HYBRIDS, **TORCHVISION, **TIMM}


def matching(dim: int, depth: int, mlp_dim: int, patch_size: int) -> dict[int, list[str]]:
    """head count -> the names of the known architectures with these shapes (empty when none has them)."""
    found = {}
    for name, (*shapes, heads) in KNOWN.items():
        if tuple(shapes) == (dim, depth, mlp_dim, patch_size):
            found.setdefault(heads, []).append(name)
    return found


def described(names: list[str], shown: int = 3) -> str:
    """"ViT-B/16, vit_b_16, vit_base_patch16_224 and 5 more"."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


# A Swin's weights tell its shapes (patch size, C, depths, the head counts, M), but not the image size: they fit any.
# The size still decides where stages are padded and windows shrink, and a format that records it (transformers'
# config.json) would carry a wrong one. So a file that does not store it (timm's and torchvision's state dicts) takes
# the size of the known Swin with its shapes, or is refused (`paper.formats.fields.swin_image_size_for`).
# name: (patch size, C, depths, heads, M, image side). timm 1.0.31's swin_transformer.py, but its swin_s3_* (a window
# per stage, which lowlevel/swin.py does not compute); tests/formats/test_architectures.py rebuilds them from timm's
# registry on the meta device, and torchvision's rows from its builders.
SWIN_TIMM = {
    "swin_tiny_patch4_window7_224": (4, 96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
    "swin_small_patch4_window7_224": (4, 96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224),
    "swin_base_patch4_window7_224": (4, 128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 224),
    "swin_base_patch4_window12_384": (4, 128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
    "swin_large_patch4_window7_224": (4, 192, (2, 2, 18, 2), (6, 12, 24, 48), 7, 224),
    "swin_large_patch4_window12_384": (4, 192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384),
}
# The Swin paper's T, S and B (paper/models/swin_configs.py) and torchvision 0.29's swin_t/s/b, the same models
SWIN_PAPER = {name: (cfg.patch_size, cfg.dim, cfg.depths, cfg.num_heads, cfg.window_size, cfg.image_size[0])
              for name in ("Swin-T", "Swin-S", "Swin-B", "swin_t", "swin_s", "swin_b")
              for cfg in [swin_config(name)]}
SWIN_KNOWN = {**SWIN_PAPER, **SWIN_TIMM}


def swin_matching(patch_size: int, dim: int, depths: tuple, num_heads: tuple, window_size: int) -> dict[int, list[str]]:
    """image side -> the names of the known Swins with these shapes (empty when none has them)."""
    found = {}
    for name, (*shapes, side) in SWIN_KNOWN.items():
        if tuple(shapes) == (patch_size, dim, tuple(depths), tuple(num_heads), window_size):
            found.setdefault(side, []).append(name)
    return found
