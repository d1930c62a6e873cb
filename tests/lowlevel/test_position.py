"""Eq. (1)'s class token and position embeddings."""
import torch
from hypothesis import given
from hypothesis import strategies as st
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

from lowlevel import ViTConfig, embed, init_params, sincos_2d


@given(st.integers(1, 6), st.integers(1, 6), st.integers(2, 16))
def test_sincos_2d_equals_timm_with_big_vision_layout(gh, gw, quarter):
    """big_vision's bands ω_k = T^(-k/(D/4-1)) are timm's T'^(-k/(D/4)) with T' = T^((D/4)/(D/4-1)); timm with
    reverse_coord and interleaved sin/cos gives big_vision's column order [sin x, cos x, sin y, cos y], over a grid
    enumerated column-major, which we transpose back to row-major. timm builds in float32."""
    dim = 4 * quarter
    ref = build_sincos2d_pos_embed([gh, gw], dim, temperature=10_000.0 ** (quarter / (quarter - 1)),
                                   reverse_coord=True, interleave_sin_cos=True)
    ref = ref.reshape(gw, gh, dim).transpose(0, 1).reshape(gh * gw, dim)
    torch.testing.assert_close(sincos_2d((gh, gw), dim, dtype=torch.float64), ref.double(), rtol=0, atol=2e-6)


def test_sincos_2d_first_band_reads_the_column():
    emb = sincos_2d((3, 5), 8, dtype=torch.float64)                       # ω_0 = 1
    col = torch.arange(5, dtype=torch.float64).repeat(3)
    row = torch.arange(3, dtype=torch.float64).repeat_interleave(5)
    torch.testing.assert_close(emb[:, 0], col.sin())
    torch.testing.assert_close(emb[:, 4], row.sin())


def test_embed_puts_the_class_token_first_without_position_for_fixed_embeddings():
    cfg = ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, num_heads=2, mlp_dim=8, pos_embed="sincos2d")
    params = init_params(cfg)
    params["cls"] = torch.randn(1, 1, 8)
    z0 = embed(params, torch.randn(2, 3, 8, 8), cfg)
    assert z0.shape == (2, 5, 8)
    assert torch.equal(z0[:, 0], params["cls"][0].expand(2, -1))


def test_learned_embedding_is_added_to_the_class_token_too():
    """E_pos has N+1 rows (paper eq. 1)."""
    cfg = ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, num_heads=2, mlp_dim=8)
    params = init_params(cfg, torch.Generator().manual_seed(0))
    z0 = embed(params, torch.zeros(1, 3, 8, 8), cfg)
    torch.testing.assert_close(z0[0, 0], params["cls"][0, 0] + params["pos"][0, 0])
