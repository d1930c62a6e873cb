"""init_params follows the official Flax initialisers (vit_jax/models_vit.py). Checked against independent
samplers: timm's 'jax' init (lecun-normal patch kernel, xavier-uniform MLP, N(0, 1e-6) MLP biases), timm's 'moco'
init (xavier-uniform over each of q, k, v separately, as Flax's per-projection DenseGeneral does) and scipy's
truncated normal; distributions are compared with two-sample / one-sample Kolmogorov-Smirnov tests."""
import math

import pytest
import scipy.stats
import torch

from lowlevel import ViTConfig, init_params
from paper.formats.timm import to_timm
from paper.references.vit import timm_vit

CFG = ViTConfig(image_size=32, patch_size=8, in_channels=3, dim=192, depth=2, num_heads=3, mlp_dim=384, num_classes=10)


@pytest.fixture(scope="module")
def ours():
    return to_timm(init_params(CFG, torch.Generator().manual_seed(0)), CFG)


def timm_init(mode):
    torch.manual_seed(0)
    return dict(timm_vit(CFG, weight_init=mode).state_dict())


def same_distribution(a, b):
    return scipy.stats.ks_2samp(a.flatten().numpy(), b.flatten().numpy()).pvalue > 1e-3


@pytest.mark.parametrize("name", ["patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "blocks.1.mlp.fc2.weight",
                                  "blocks.0.mlp.fc1.bias", "blocks.1.mlp.fc2.bias", "blocks.0.attn.proj.weight"])
def test_init_matches_timm_jax_mode(ours, name):
    assert same_distribution(ours[name], timm_init("jax")[name])


def test_qkv_init_matches_flax_per_projection_xavier(ours):
    """Flax initialises q, k and v as three (D, D) kernels: bound √(6/2D); timm 'moco' does the same."""
    ref = timm_init("moco")["blocks.0.attn.qkv.weight"]
    assert same_distribution(ours["blocks.0.attn.qkv.weight"], ref)
    assert ours["blocks.0.attn.qkv.weight"].abs().max() <= math.sqrt(6 / (2 * CFG.dim))
    # and it is not xavier over the fused (3D, D) matrix (timm 'jax'), whose bound √(6/4D) is smaller
    assert not same_distribution(ours["blocks.0.attn.qkv.weight"], timm_init("jax")["blocks.0.attn.qkv.weight"])


def test_patch_kernel_is_lecun_truncated_normal(ours):
    fan_in = CFG.in_channels * CFG.patch_size**2
    std = math.sqrt(1 / fan_in) / 0.87962566103423978
    w = ours["patch_embed.proj.weight"].flatten().numpy()
    assert scipy.stats.kstest(w, scipy.stats.truncnorm(-2, 2, scale=std).cdf).pvalue > 1e-3


def test_constant_inits(ours):
    """Class token 0, LayerNorms 1/0, attention biases 0, head zero-initialised (paper §3.2); E_pos ~ N(0, 0.02)."""
    assert not ours["cls_token"].any() and not ours["head.weight"].any() and not ours["head.bias"].any()
    assert not ours["blocks.0.attn.qkv.bias"].any() and not ours["blocks.0.attn.proj.bias"].any()
    assert (ours["blocks.1.norm2.weight"] == 1).all() and not ours["norm.bias"].any()
    assert scipy.stats.kstest(ours["pos_embed"].flatten().numpy(), scipy.stats.norm(scale=0.02).cdf).pvalue > 1e-3


def test_generator_makes_init_reproducible():
    a = init_params(CFG, torch.Generator().manual_seed(5))
    b = init_params(CFG, torch.Generator().manual_seed(5))
    c = init_params(CFG, torch.Generator().manual_seed(6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.qkv.weight"], c["blocks.0.qkv.weight"])


def test_pretraining_head_init():
    """The pre-logits layer is a Flax Dense: lecun-normal kernel, zero bias."""
    cfg = ViTConfig(**{**CFG.__dict__, "representation_size": 192})
    p = init_params(cfg, torch.Generator().manual_seed(0))
    std = math.sqrt(1 / 192) / 0.87962566103423978
    assert scipy.stats.kstest(p["pre_logits.weight"].flatten().numpy(),
                              scipy.stats.truncnorm(-2, 2, scale=std).cdf).pvalue > 1e-3
    assert not p["pre_logits.bias"].any()
