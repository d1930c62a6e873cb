"""Eq. (1)'s patch embedding: patchify by reshape, then a linear map, equals a strided convolution."""
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from timm.layers import PatchEmbed

from lowlevel import patch_embedding, patchify, unpatchify

shapes = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 7), st.integers(1, 4), st.integers(1, 4))


def draw_case(batch, channels, patch, gh, gw, seed=0, dim=6):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, channels, gh * patch, gw * patch, generator=g, dtype=torch.float64)
    kernel = torch.randn(dim, channels, patch, patch, generator=g, dtype=torch.float64)
    bias = torch.randn(dim, generator=g, dtype=torch.float64)
    return images, kernel, bias


@given(shapes)
def test_patch_embedding_equals_strided_conv2d(shape):
    images, kernel, bias = draw_case(*shape)
    patch = shape[2]
    conv = F.conv2d(images, kernel, bias, stride=patch).flatten(2).transpose(1, 2)  # (B, D, gh, gw) -> (B, N, D)
    ours = patch_embedding(images, kernel.reshape(kernel.shape[0], -1), bias, patch)
    torch.testing.assert_close(ours, conv, rtol=0, atol=1e-12)


@given(shapes)
def test_patch_embedding_equals_timm_patch_embed(shape):
    batch, channels, patch, gh, gw = shape
    images, kernel, bias = draw_case(*shape)
    timm_embed = PatchEmbed(img_size=(gh * patch, gw * patch), patch_size=patch, in_chans=channels,
                            embed_dim=kernel.shape[0]).double()
    timm_embed.load_state_dict({"proj.weight": kernel, "proj.bias": bias})
    ours = patch_embedding(images, kernel.reshape(kernel.shape[0], -1), bias, patch)
    torch.testing.assert_close(ours, timm_embed(images), rtol=0, atol=1e-12)


@given(shapes)
def test_patchify_matches_unfold_and_unpatchify_inverts_it(shape):
    images, _, _ = draw_case(*shape)
    patch, gh, gw = shape[2:]
    patches = patchify(images, patch)
    assert patches.shape == (shape[0], gh * gw, shape[1] * patch * patch)
    # F.unfold flattens each block in (C, P, P) order, column index = row-major block position
    torch.testing.assert_close(patches, F.unfold(images, patch, stride=patch).transpose(1, 2), rtol=0, atol=0)
    assert torch.equal(unpatchify(patches, patch, (gh, gw)), images)


def test_patch_order_is_row_major_over_the_grid():
    """Token n is the patch at grid row n // gw, column n % gw: the image is read like text."""
    images = torch.arange(2 * 6, dtype=torch.float64).reshape(1, 1, 2, 6)   # a 1 × 3 grid of 2 × 2 patches
    patches = patchify(images, 2)
    assert patches[0, :, 0].tolist() == [0.0, 2.0, 4.0]
