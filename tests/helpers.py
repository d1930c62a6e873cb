"""Shared test utilities: hypothesis strategies for configs, and timm models that expose what they compute."""
import torch
from hypothesis import strategies as st

from lowlevel import ViTConfig, init_params
from paper.formats.timm import to_timm
from paper.reference_models import timm_vit
from paper.weights import perturbed


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


def random_params(cfg: ViTConfig, seed: int = 0, dtype=torch.float64, scale: float = 0.02) -> dict:
    """The official initialisation, then every tensor perturbed (`paper.weights.perturbed`): zero heads, unit
    LayerNorms and zero biases would hide mistakes that random values expose."""
    return perturbed(init_params(cfg, torch.Generator().manual_seed(seed)), seed, dtype, scale)


def random_images(cfg: ViTConfig, batch: int, seed: int, dtype=torch.float64) -> torch.Tensor:
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
