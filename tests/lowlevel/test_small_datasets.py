"""Shifted Patch Tokenization and Locality Self-Attention (Lee, Lee & Song 2021; lowlevel/locality.py, switched on by
ViTConfig's patch_embed="spt" and attention="lsa"): the whole model against vit-pytorch's vit_for_small_dataset.ViT
on the same weights, logits and gradients, in float64; the paper's diagonal shifts against the official code's
PatchShifting; LSA against standard attention; the fast path against the explicit one; the formats' refusals."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from vit_pytorch.vit_for_small_dataset import ViT as SmallDatasetViT

import lowlevel as vit
from lowlevel.locality import shifted_images
from paper.formats.huggingface import hf_config
from paper.formats.npz import to_npz
from paper.formats.timm import to_timm
from paper.formats.torchvision import check_expressible
from tests.helpers import random_images, random_params

# float64: the same arithmetic in another order, ~1e-15 relative; 1e-10 leaves room for depth.
F64 = dict(rtol=0, atol=1e-10)


@st.composite
def small_dataset_configs(draw):
    """What vit-pytorch's ViT computes: SPT with one-pixel shifts, LSA in every block, no qkv bias, LayerNorm eps
    1e-5, exact GELU, the class token read by LN and a linear head; 1-3 channels, patches of 1-4, square or not."""
    heads = draw(st.integers(1, 3))
    patch = draw(st.integers(1, 4))
    return vit.ViTConfig(image_size=(patch * draw(st.integers(1, 3)), patch * draw(st.integers(1, 3))),
                         patch_size=patch, in_channels=draw(st.integers(1, 3)), dim=heads * draw(st.integers(2, 4)),
                         depth=draw(st.integers(1, 2)), num_heads=heads, mlp_dim=draw(st.integers(1, 8)),
                         num_classes=draw(st.integers(1, 4)), qkv_bias=False, layer_norm_eps=1e-5,
                         patch_embed="spt", spt_shift="cardinal", attention="lsa")


def spt_order(cfg) -> torch.Tensor:
    """vit-pytorch flattens a patch of the 5C-channel image as (p1 p2 c), we as (c p1 p2): its element t is our
    element order[t]."""
    p, c5 = cfg.patch_size, 5 * cfg.in_channels
    return torch.arange(c5 * p * p).view(c5, p, p).permute(1, 2, 0).flatten()


def their_names(cfg) -> dict[str, str]:
    """Our parameter names -> vit-pytorch's (vit_for_small_dataset.ViT's state_dict). q, k and v are the rows of one
    matrix in both, head-major; its Transformer has no final LN, its mlp_head's LN is our eq. (4)'s."""
    names = {"patch_norm.weight": "to_patch_embedding.to_patch_tokens.1.weight",
             "patch_norm.bias": "to_patch_embedding.to_patch_tokens.1.bias",
             "patch.weight": "to_patch_embedding.to_patch_tokens.2.weight",
             "patch.bias": "to_patch_embedding.to_patch_tokens.2.bias", "pos": "pos_embedding", "cls": "cls_token",
             "norm.weight": "mlp_head.0.weight", "norm.bias": "mlp_head.0.bias",
             "head.weight": "mlp_head.1.weight", "head.bias": "mlp_head.1.bias"}
    blocks = {"log_scale": "0.temperature", "ln1.weight": "0.norm.weight", "ln1.bias": "0.norm.bias",
              "qkv.weight": "0.to_qkv.weight", "proj.weight": "0.to_out.0.weight", "proj.bias": "0.to_out.0.bias",
              "ln2.weight": "1.net.0.weight", "ln2.bias": "1.net.0.bias", "fc1.weight": "1.net.1.weight",
              "fc1.bias": "1.net.1.bias", "fc2.weight": "1.net.4.weight", "fc2.bias": "1.net.4.bias"}
    for i in range(cfg.depth):
        names.update({f"blocks.{i}.{ours}": f"transformer.layers.{i}.{theirs}" for ours, theirs in blocks.items()})
    return names


# The SPT tensors whose last axis runs over a flattened patch, in each code's own order (spt_order).
PATCH_ORDERED = ("patch_norm.weight", "patch_norm.bias", "patch.weight")


def theirs_from_ours(params, cfg) -> dict:
    """Our params as vit-pytorch's state_dict."""
    order = spt_order(cfg)
    return {theirs: (params[ours][..., order] if ours in PATCH_ORDERED else params[ours]).detach().clone()
            for ours, theirs in their_names(cfg).items()}


def small_dataset_vit(params, cfg):
    """vit-pytorch's ViT for `cfg` holding our weights, float64, in eval mode."""
    model = SmallDatasetViT(image_size=cfg.image_size, patch_size=cfg.patch_size, num_classes=cfg.num_classes,
                            dim=cfg.dim, depth=cfg.depth, heads=cfg.num_heads, mlp_dim=cfg.mlp_dim, pool="cls",
                            channels=cfg.in_channels, dim_head=cfg.head_dim).double().eval()
    model.load_state_dict(theirs_from_ours(params, cfg))
    return model


def official_patch_shifting(x, patch_size):
    """The paper's shifts as its official code computes them (SPT_LSA_ViT models/SPT.py, PatchShifting.forward): pad
    by P/2 on every side, then take the four corner windows."""
    s = int(patch_size * (1 / 2))
    x_pad = F.pad(x, (s, s, s, s))
    h, w = x.shape[-2:]
    x_lu, x_ru = x_pad[:, :, :h, :w], x_pad[:, :, :h, 2 * s:]
    x_lb, x_rb = x_pad[:, :, 2 * s:, :w], x_pad[:, :, 2 * s:, 2 * s:]
    return torch.cat([x, x_lu, x_ru, x_lb, x_rb], dim=1)


def grads_in_our_names(model, cfg) -> dict:
    """vit-pytorch's gradients under our names, the SPT ones put back into our patch order."""
    back = torch.argsort(spt_order(cfg))
    grads = dict(model.named_parameters())
    return {ours: grads[theirs].grad[..., back] if ours in PATCH_ORDERED else grads[theirs].grad
            for ours, theirs in their_names(cfg).items()}


@given(small_dataset_configs(), st.integers(0, 2 ** 16))
def test_spt_and_lsa_equal_vit_pytorch_vit_for_small_dataset(cfg, seed):
    """SPT (one-pixel shifts) and LSA in every block: the logits, and the gradients w.r.t. the images and every
    parameter (the temperatures included) equal vit-pytorch's on the same weights."""
    params = {k: v.requires_grad_(True) for k, v in random_params(cfg, seed, scale=0.3).items()}
    model = small_dataset_vit(params, cfg)
    images = random_images(cfg, 2, seed)
    ours_in, theirs_in = images.clone().requires_grad_(True), images.clone().requires_grad_(True)
    ours, theirs = vit.forward(params, ours_in, cfg), model(theirs_in)
    torch.testing.assert_close(ours, theirs, **F64)

    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad((ours * weights).sum(), [ours_in, *params.values()])
    (theirs * weights).sum().backward()
    torch.testing.assert_close(grads[0], theirs_in.grad, **F64)
    expected = grads_in_our_names(model, cfg)
    for name, grad in zip(params, grads[1:], strict=True):
        torch.testing.assert_close(grad, expected[name], **F64, msg=name)


@given(small_dataset_configs(), st.integers(0, 2 ** 16))
def test_diagonal_spt_equals_vit_pytorch_with_the_official_shifts(cfg, seed):
    """The paper's SPT: vit-pytorch's ViT with its one-pixel shifts replaced by the official code's P/2 diagonal ones
    computes our spt_shift="diagonal" model."""
    cfg = dataclasses.replace(cfg, spt_shift="diagonal")
    params = random_params(cfg, seed, scale=0.3)
    model = small_dataset_vit(params, cfg)
    spt = model.to_patch_embedding
    spt.forward = lambda x: spt.to_patch_tokens(official_patch_shifting(x, cfg.patch_size))
    images = random_images(cfg, 2, seed)
    torch.testing.assert_close(vit.forward(params, images, cfg), model(images), **F64)
    assert torch.equal(shifted_images(images, cfg.patch_size, "diagonal"), official_patch_shifting(images, cfg.patch_size))


def test_diagonal_shifts_move_the_image_half_a_patch_towards_each_corner():
    """Copy 1 at (i, j) is x at (i − P/2, j − P/2), copy 2 x(i − P/2, j + P/2), copy 3 x(i + P/2, j − P/2), copy 4
    x(i + P/2, j + P/2), zero where that lies outside the image."""
    p, h, w = 4, 8, 12
    x = torch.arange(1.0, 1 + h * w).view(1, 1, h, w)
    out = shifted_images(x, p, "diagonal")
    assert out.shape == (1, 5, h, w) and torch.equal(out[:, 0], x[:, 0])
    for copy, (di, dj) in enumerate([(-2, -2), (-2, 2), (2, -2), (2, 2)], start=1):
        for i in range(h):
            for j in range(w):
                inside = 0 <= i + di < h and 0 <= j + dj < w
                assert out[0, copy, i, j] == (x[0, 0, i + di, j + dj] if inside else 0)


@given(st.integers(1, 3), st.integers(2, 6), st.integers(0, 2 ** 16))
def test_lsa_is_standard_attention_without_the_diagonal_at_the_initial_temperature(heads, n, seed):
    """At log_scale = log(1/√D_h) each token's LSA weights are its standard attention weights over the other tokens,
    renormalised: p_LSA(i, j) = p(i, j) / (1 − p(i, i)) for j ≠ i, and p_LSA(i, i) = 0."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, heads, n, 4, generator=g, dtype=torch.float64) for _ in range(3))
    _, standard = vit.scaled_dot_product_attention(q, k, v)
    mask = torch.zeros(n, n, dtype=torch.float64).fill_diagonal_(-math.inf)
    _, lsa = vit.scaled_dot_product_attention(q, k, v, mask, torch.tensor(4 ** -0.5, dtype=torch.float64))
    eye = torch.eye(n, dtype=torch.bool)
    assert (lsa[..., eye] == 0).all()
    expected = standard / (1 - standard.diagonal(dim1=-2, dim2=-1)).unsqueeze(-1)
    torch.testing.assert_close(lsa[..., ~eye], expected[..., ~eye], rtol=1e-12, atol=1e-14)


@given(small_dataset_configs(), st.sampled_from(["token", "avg"]), st.integers(0, 2 ** 16))
def test_fast_path_equals_explicit_path_with_spt_and_lsa(cfg, pool, seed):
    """forward(fast=True) with LSA (the mask to the fused kernel, the learned scale on q; with token pooling the last
    block for the class token alone) gives the explicit path's logits and gradients; no token attends to itself."""
    cfg = dataclasses.replace(cfg, pool=pool, depth=2)
    params = {k: v.requires_grad_(True) for k, v in random_params(cfg, seed, scale=0.3).items()}
    images = random_images(cfg, 2, seed)
    explicit, out = vit.forward_intermediates(params, images, cfg)
    fast = vit.forward(params, images, cfg, fast=True)
    torch.testing.assert_close(fast, explicit, **F64)
    for probs in out["attention"]:
        assert (probs.diagonal(dim1=-2, dim2=-1) == 0).all()
    weights = torch.randn(fast.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((explicit * weights).sum(), list(params.values())),
                    torch.autograd.grad((fast * weights).sum(), list(params.values())), strict=True):
        torch.testing.assert_close(a, b, **F64)


def test_initial_parameters_of_spt_and_lsa():
    """SPT's LayerNorm starts at 1 and 0 over 5C·P·P values and E_S is (D, 5C·P·P); each block's log(1/τ) starts at
    log(1/√D_h), vit-pytorch's initial temperature."""
    cfg = vit.ViTConfig(image_size=8, patch_size=4, in_channels=3, dim=16, depth=2, num_heads=2, mlp_dim=8,
                        patch_embed="spt", attention="lsa")
    params = vit.init_params(cfg, torch.Generator().manual_seed(0))
    assert params["patch.weight"].shape == (16, 240)
    assert torch.equal(params["patch_norm.weight"], torch.ones(240))
    assert torch.equal(params["patch_norm.bias"], torch.zeros(240))
    theirs = SmallDatasetViT(image_size=8, patch_size=4, num_classes=2, dim=16, depth=2, heads=2, mlp_dim=8,
                             dim_head=8)
    for i in range(2):
        torch.testing.assert_close(params[f"blocks.{i}.log_scale"], theirs.transformer.layers[i][0].temperature.data)


@pytest.mark.parametrize("field", [dict(patch_embed="spt"), dict(attention="lsa")])
def test_formats_refuse_spt_and_lsa(field):
    """No checkpoint format holds SPT or LSA: each refuses by the field's name instead of writing another model."""
    cfg = vit.ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, num_heads=2, mlp_dim=8, num_classes=2,
                        layer_norm_eps=1e-6, **field)
    params = vit.init_params(cfg)
    name = next(iter(field))
    for refuse in (lambda: to_timm(params, cfg), lambda: hf_config(cfg), lambda: to_npz(params, cfg),
                   lambda: check_expressible(cfg)):
        with pytest.raises(ValueError, match=name):
            refuse()


def test_lsa_needs_another_token():
    with pytest.raises(ValueError, match="attention"):
        vit.ViTConfig(image_size=4, patch_size=4, dim=8, depth=1, num_heads=2, mlp_dim=8, class_token=False,
                      pool="avg", attention="lsa")
