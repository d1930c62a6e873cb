"""Bad input raises a ValueError that names the parameter, what was expected and what was got."""
import pytest
import torch

from lowlevel import ViTConfig, forward, init_params, patchify
from paper.formats.timm import from_timm, to_timm

CFG = ViTConfig(image_size=(8, 12), patch_size=4, dim=8, depth=1, num_heads=2, mlp_dim=8, num_classes=3)


@pytest.mark.parametrize("shape, message", [
    ((2, 3, 8), r"images: expected rank 4 \(B, C, H, W\), got rank 3"),
    ((2, 1, 8, 12), r"images: expected 3 channels \(cfg.in_channels\), got 1"),
    ((2, 3, 12, 8), r"images: expected height and width \(8, 12\) \(cfg.image_size\), got \(12, 8\)"),
])
def test_forward_rejects_bad_images(shape, message):
    with pytest.raises(ValueError, match=message):
        forward(init_params(CFG), torch.zeros(shape), CFG)


def test_patchify_rejects_sizes_not_divisible_by_the_patch():
    with pytest.raises(ValueError, match=r"divisible by patch_size=4, got \(8, 10\)"):
        patchify(torch.zeros(1, 3, 8, 10), 4)


@pytest.mark.parametrize("fields, message", [
    (dict(image_size=(8, 10), patch_size=4), r"image_size: expected height and width divisible by patch_size=4, got \(8, 10\)"),
    (dict(dim=10, num_heads=4), "dim: expected a multiple of num_heads=4, got dim=10"),
    (dict(depth=0), "depth: expected a positive integer, got 0"),
    (dict(num_heads=0), "num_heads: expected a positive integer, got 0"),
    (dict(pool="max"), r"pool: expected one of \('token', 'avg'\), got 'max'"),
    (dict(gelu="relu"), r"gelu: expected one of \('exact', 'tanh'\), got 'relu'"),
    (dict(class_token=False), "pool: 'token' pooling needs class_token=True"),
    (dict(pos_embed="sincos2d", dim=6, num_heads=1), "dim: 2-D sin-cos position embeddings need a multiple of 4, got 6"),
])
def test_config_rejects_inconsistent_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        ViTConfig(**{**dict(image_size=8, patch_size=4, dim=8, num_heads=2), **fields})


def test_state_dict_errors_list_every_bad_key():
    sd = to_timm(init_params(CFG), CFG)
    del sd["blocks.0.norm1.weight"], sd["norm.bias"]
    sd["blocks.0.attn.proj.weight"] = torch.zeros(8, 7)
    sd["head.weight"] = torch.zeros(4, 8)
    sd["blocks.0.ls1.gamma"] = torch.zeros(8)
    with pytest.raises(ValueError) as err:
        from_timm(sd, num_heads=2, image_size=(8, 12))
    text = str(err.value)
    for line in ["missing key: blocks.0.norm1.weight", "missing key: norm.bias", "unexpected key: blocks.0.ls1.gamma",
                 "mis-shaped key blocks.0.attn.proj.weight: expected (8, 8), got (8, 7)"]:
        assert line in text
    # the head's class count is read from the weights, so a (4, 8) head gives a 4-class config whose bias is wrong
    assert "mis-shaped key head.bias: expected (4,), got (3,)" in text


def test_to_timm_rejects_params_of_another_config():
    params = init_params(CFG)
    params["pos"] = torch.zeros(1, 5, 8)
    with pytest.raises(ValueError, match=r"mis-shaped key pos: expected \(1, 7, 8\), got \(1, 5, 8\)"):
        to_timm(params, CFG)


def test_from_timm_rejects_something_else():
    with pytest.raises(ValueError, match="state_dict: expected a timm VisionTransformer state_dict, missing key"):
        from_timm({"weight": torch.zeros(3)})
