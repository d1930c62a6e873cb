"""paper/models/hybrid_configs.py and the MNIST hybrid: the paper's hybrids by name, counted against timm (built on the
meta device) and the official code, and their architecture fields against timm's models."""
import dataclasses

import pytest
import timm
import torch

import lowlevel as vit
from paper.models.family import model_name, paper_config, paper_params, param_count
from paper.models.hybrid_configs import HYBRID_MODELS, timm_hybrid_name
from paper.training.recipes import MNIST_HYBRID, MNIST_MODEL

# vit_jax/models_test.py MODEL_SIZES (224 px, 1000 classes), under the official names ("_" for "/")
OFFICIAL_MODEL_SIZES = {"R+ViT-Ti/16": 6_337_704, "R26+ViT-S/32": 36_431_912, "R50+ViT-B/16": 98_659_112,
                        "R50+ViT-L/32": 328_994_856}


def timm_model(name: str, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", HYBRID_MODELS)
def test_param_count_equals_timm_and_official(name):
    cfg = paper_config(name)
    assert param_count(cfg) == count(timm_model(timm_hybrid_name(name), num_classes=1000))
    assert param_count(cfg) == OFFICIAL_MODEL_SIZES[name]


def test_timm_default_r50_b16_has_no_head():
    """timm builds vit_base_r50_s16_224 without a head by default (its default cfg says num_classes=0): 97,890,112
    parameters, the official count less the 768 × 1000 + 1000 of the head."""
    assert count(timm_model("vit_base_r50_s16_224")) == 97_890_112
    assert param_count(paper_config("R50+ViT-B/16", num_classes=0)) == 97_890_112 == 98_659_112 - 768 * 1000 - 1000


@pytest.mark.parametrize("name", HYBRID_MODELS)
def test_config_fields_equal_timm_model(name):
    """Stages, units, widths, groups and eps of the ResNet, the patch and the grid, against timm's model."""
    cfg = paper_config(name)
    model = timm_model(timm_hybrid_name(name), num_classes=1000)
    embed = model.patch_embed
    assert (cfg.dim, cfg.depth, model.blocks[0].attn.num_heads) == (model.embed_dim, len(model.blocks), cfg.num_heads)
    assert cfg.patch_size == embed.patch_size[0] and cfg.grid_size == tuple(embed.grid_size)
    assert (cfg.patch_channels, cfg.backbone.stride) == (embed.feature_dim, embed.feature_ratio[0])
    stem = getattr(embed.backbone, "stem", embed.backbone)
    stages = getattr(embed.backbone, "stages", [])
    assert cfg.backbone.layers == tuple(len(s.blocks) for s in stages)
    assert cfg.backbone.stage_widths == tuple(s.blocks[0].conv1.out_channels for s in stages)
    assert (cfg.backbone.width, cfg.backbone.num_groups) == (stem.conv.out_channels, stem.norm.num_groups)
    assert (cfg.backbone.group_norm_eps, cfg.backbone.std_eps) == (stem.norm.eps, stem.conv.eps) == (1e-5, 1e-8)


def test_names_paper_and_timm_give_the_same_config():
    assert paper_config("vit_base_r50_s16_224.orig_in21k") == paper_config("R50+ViT-B/16")
    assert paper_config("vit_large_r50_s32_384") == paper_config("R50+ViT-L/32", image_size=384)
    assert paper_config("R+ViT-Ti/16", image_size=384).grid_size == (12, 12)
    for name in HYBRID_MODELS:
        assert model_name(paper_config(name)) == name and paper_params(name) == "-"
        assert model_name(paper_config(timm_hybrid_name(name))) == name
    assert model_name(paper_config("R50+ViT-B/16", patch_size=2)) is None


@pytest.mark.parametrize("name, size", [("R50+ViT-B/16", 224), ("R50+ViT-B/16", 97), ("R26+ViT-S/32", 224),
                                        ("R+ViT-Ti/16", 224), ("R50+ViT-L/32", 129)])
def test_the_multiply_add_count_holds_the_resnet(name, size):
    """paper.reports.measure's count of a hybrid (its ResNet's convolutions, then the ViT's matmuls) against
    torch.utils.flop_counter's count of what lowlevel.forward runs, its parameters on the meta device (shapes
    only): equal, at sizes that are multiples of the stride and sizes that "SAME" padding rounds up."""
    from torch.utils.flop_counter import FlopCounterMode

    from paper.reports.measure import forward_flops

    cfg = paper_config(name, image_size=size)
    with torch.device("meta"):
        params = vit.init_params(cfg)
        images = torch.empty(1, cfg.in_channels, *cfg.image_size)
    with FlopCounterMode(display=False) as counter:
        vit.forward(params, images, cfg)
    assert forward_flops(cfg) == counter.get_total_flops()


def test_mnist_hybrid_is_the_mnist_vit_on_a_7x7_feature_map():
    """The MNIST ViT's encoder, grid and head, fed by the stem and one bottleneck unit instead of 4×4 pixel patches;
    at the pre-training size, 16 px, the ViT's 4×4 grid as well."""
    assert dataclasses.replace(MNIST_HYBRID, patch_size=MNIST_MODEL.patch_size, backbone=None) == MNIST_MODEL
    assert MNIST_HYBRID.grid_size == MNIST_MODEL.grid_size == (7, 7)
    assert dataclasses.replace(MNIST_HYBRID, image_size=16).grid_size == dataclasses.replace(MNIST_MODEL,
                                                                                             image_size=16).grid_size
    assert MNIST_HYBRID.patch_channels == MNIST_HYBRID.dim
    assert param_count(MNIST_HYBRID) == 147_834
