"""Shared test utilities: hypothesis strategies for configs, timm models that expose what they compute, and the
figures a text states."""
import re

import torch
from hypothesis import strategies as st

from lowlevel import BackboneConfig, SwinConfig, ViTConfig, init_params, swin
from paper.formats.timm import to_timm
from paper.models.weights import perturbed
from paper.references.vit import timm_vit


@st.composite
def vit_configs(draw, max_depth=3, learned_or_none=True):
    """Small random configs covering every switch timm also has: depth, dim, heads, mlp ratio, patch size,
    square and non-square images, class token vs average pooling, qkv bias, head or no head, GELU, eps."""
    heads = draw(st.integers(1, 4))
    patch = draw(st.integers(2, 6))
    pool = draw(st.sampled_from(["token", "avg"]))
    return ViTConfig(
        image_size=(patch * draw(st.integers(1, 4)), patch * draw(st.integers(1, 4))),
        patch_size=patch, in_channels=draw(st.integers(1, 4)), dim=heads * draw(st.integers(2, 8)),
        depth=draw(st.integers(1, max_depth)), num_heads=heads, mlp_dim=draw(st.integers(1, 24)),
        num_classes=draw(st.sampled_from([0, 1, 5])), class_token=pool == "token" or draw(st.booleans()), pool=pool,
        pos_embed=draw(st.sampled_from(["learned", "none"])) if learned_or_none else "learned",
        qkv_bias=draw(st.booleans()), gelu=draw(st.sampled_from(["exact", "tanh"])),
        layer_norm_eps=draw(st.sampled_from([1e-6, 1e-12, 1e-5])))


@st.composite
def hybrid_configs(draw, max_stages=3):
    """Small random hybrids (§3.1): the stem alone or 1-3 stages of 1-2 bottleneck units, widths 8 or 16 (timm rounds
    a bottleneck width to a multiple of 8) in 1-8 groups, timm's and the official code's eps, patches of 1-3 cells,
    image sides from a multiple of the ResNet's stride down to one pixel above the next (so the "SAME" padding splits
    both ways, odd sides included), square and not; a small encoder on top."""
    backbone = BackboneConfig(layers=tuple(draw(st.integers(1, 2)) for _ in range(draw(st.integers(0, max_stages)))),
                              width=draw(st.sampled_from([8, 16])), num_groups=draw(st.sampled_from([1, 2, 4, 8])),
                              group_norm_eps=draw(st.sampled_from([1e-5, 1e-6])),
                              std_eps=draw(st.sampled_from([1e-8, 1e-5])))
    patch = draw(st.integers(1, 3))
    side = st.builds(lambda cells, cut: cells * patch * backbone.stride - cut, st.integers(1, 2),
                     st.integers(0, backbone.stride - 1))           # a feature map of `cells` patches per side
    heads = draw(st.integers(1, 2))
    pool = draw(st.sampled_from(["token", "avg"]))
    return ViTConfig(image_size=(draw(side), draw(side)), patch_size=patch, in_channels=draw(st.integers(1, 3)),
                     dim=heads * draw(st.integers(2, 6)), depth=draw(st.integers(1, 2)), num_heads=heads,
                     mlp_dim=draw(st.integers(1, 12)), num_classes=draw(st.sampled_from([0, 3])), pool=pool,
                     class_token=pool == "token" or draw(st.booleans()), backbone=backbone)


@st.composite
def swin_configs(draw, conventions: dict, max_stages=3, torchvision=False, transformers=False):
    """Small random Swin configs with the given conventions (paper.references.swin's TIMM_CONVENTIONS, ...): 1-3
    stages of 1-2 blocks (so shifted blocks too), windows of 2-5, grids from smaller than a window (shrunk or padded
    windows) to three windows with a remainder (padding), odd sides (padded patch merging), square and not.
    torchvision=True: only what torchvision's class holds (3 channels, q/k/v biases, a head, two blocks or more).
    transformers=True: only sizes whose every stage is at least a window (transformers 5.23 fails on smaller ones),
    each side halving, rounded up, to a last stage of M to M + 3 tokens; eps 1e-5 (its only one)."""
    stages = draw(st.integers(1, max_stages))
    window = draw(st.integers(2, 5))
    patch = draw(st.sampled_from([1, 2, 4]))
    scale = 2 ** (stages - 1)
    side = st.builds(lambda last, cut: last * scale - cut, st.integers(window, window + 3), st.integers(0, scale - 1)) \
        if transformers else st.integers(1, 3 * window + 2)
    return SwinConfig(
        image_size=(patch * draw(side), patch * draw(side)), patch_size=patch,
        in_channels=3 if torchvision else draw(st.integers(1, 3)), dim=draw(st.sampled_from([6, 12])),
        depths=tuple(draw(st.integers(2 if torchvision and s == 0 else 1, 2)) for s in range(stages)),
        num_heads=tuple(draw(st.integers(1, 3)) for _ in range(stages)), window_size=window,
        mlp_ratio=draw(st.sampled_from([1.0, 1.5, 4.0])),
        num_classes=draw(st.sampled_from([3] if torchvision else [0, 3])),
        qkv_bias=torchvision or draw(st.booleans()),
        layer_norm_eps=1e-5 if transformers else draw(st.sampled_from([1e-5, 1e-6])),
        **conventions)


def random_params(cfg: ViTConfig | SwinConfig, seed: int = 0, dtype=torch.float64, scale: float = 0.02) -> dict:
    """The official initialisation, then every tensor perturbed (`paper.models.weights.perturbed`): zero heads, unit
    LayerNorms and zero biases would hide mistakes that random values expose."""
    init = swin.init_params if isinstance(cfg, SwinConfig) else init_params
    return perturbed(init(cfg, torch.Generator().manual_seed(seed)), seed, dtype, scale)


def randomised(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Every parameter of a library's model drawn anew from N(0, std²), seeded: their inits leave heads at zero and
    LayerNorms at one, which would hide a mapping mistake. In place; returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def random_images(cfg: ViTConfig | SwinConfig, batch: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_channels, *cfg.image_size, generator=g, dtype=dtype)


def timm_twin(params: dict, cfg: ViTConfig, dtype=torch.float64):
    """timm's VisionTransformer holding our weights, in eval mode, with its explicit (non-fused) attention so that
    the attention probabilities can be recorded: model.recorded holds one (B, H, N, N) tensor per block."""
    model = timm_vit(cfg).to(dtype).eval()
    model.load_state_dict(to_timm(params, cfg))
    model.recorded = []
    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda mod, inp, out: model.recorded.append(out))
    return model


def typed_figures(prose: str) -> list[str]:
    """The figures a text states, as it writes them: each number with decimals (a percentage, a difference, a time),
    leaving out what measures nothing: sizes (n = 4,000), section numbers (§4.3), links and code."""
    prose = re.sub(r"n = [\d,]+|§[\d.]+|\[[^]]*\]\([^)]*\)|`[^`]*`", "", prose)
    return re.findall(r"\d[\d,]*\.\d+", prose)
