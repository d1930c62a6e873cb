"""paper/models/vit_configs.py and paper/models/heads.py: the exact paper models, counted against timm and the official code."""
import math

import pytest
import timm
import torch

import lowlevel as vit
from paper.models.family import model_name, paper_config, param_count
from paper.models.heads import finetuning_head, pretraining_head
from paper.models.vit_configs import PAPER_MODELS, TABLE1_PARAMS, VARIANTS, timm_model_name

# vit_jax/models_test.py MODEL_SIZES (224 px, 1000 classes).
OFFICIAL_MODEL_SIZES = {"ViT-Ti/16": 5_717_416, "ViT-S/16": 22_050_664, "ViT-S/32": 22_878_952,
                        "ViT-B/16": 86_567_656, "ViT-B/32": 88_224_232, "ViT-B/8": 86_576_872,
                        "ViT-L/16": 304_326_632, "ViT-L/32": 306_535_400, "ViT-H/14": 632_045_800}


def timm_count(name: str, **kwargs) -> int:
    """timm's own count; the model is built on the meta device, so even H/14 allocates nothing."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_param_count_equals_timm_create_model(name):
    assert param_count(paper_config(name)) == timm_count(timm_model_name(name), num_classes=1000)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_param_count_equals_official_model_sizes(name):
    assert param_count(paper_config(name)) == OFFICIAL_MODEL_SIZES[name]


def test_param_count_at_384_equals_timm():
    for name in ("vit_base_patch16_384", "vit_large_patch16_384"):
        assert param_count(paper_config(name)) == timm_count(name)


@pytest.mark.parametrize("variant", sorted(TABLE1_PARAMS))
def test_table1_counts_within_one_percent(variant):
    """Table 1 rounds loosely (86M for B/16's 86.57M; 307M for L/16's 304.33M): the exact counts are pinned above by
    the official MODEL_SIZES, here only agreement with the paper's rounded figure to 1% is claimed."""
    name = {"B": "ViT-B/16", "L": "ViT-L/16", "H": "ViT-H/14"}[variant]
    stated = float(TABLE1_PARAMS[variant].rstrip("M")) * 1e6
    assert math.isclose(param_count(paper_config(name)), stated, rel_tol=0.01)


def test_param_count_does_not_allocate():
    """Counting is pure arithmetic on shapes: it works for a model far bigger than memory."""
    huge = vit.ViTConfig(dim=65536, depth=64, num_heads=1024, mlp_dim=262144)
    assert param_count(huge) > 10**12


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_config_fields_equal_timm_model(name):
    """Every architectural field equals the timm model of the same name, built on the meta device."""
    cfg = paper_config(name)
    with torch.device("meta"):
        model = timm.create_model(timm_model_name(name), pretrained=False, num_classes=1000)
    block = model.blocks[0]
    assert (cfg.dim, cfg.depth, cfg.num_heads) == (model.embed_dim, len(model.blocks), block.attn.num_heads)
    assert cfg.mlp_dim == block.mlp.fc1.out_features
    assert cfg.patch_size == model.patch_embed.patch_size[0] and cfg.image_size == tuple(model.patch_embed.img_size)
    assert cfg.layer_norm_eps == block.norm1.eps == 1e-6


def test_paper_and_timm_names_give_the_same_config():
    assert paper_config("ViT-L/16", image_size=384) == paper_config("vit_large_patch16_384")
    assert paper_config("vit_base_patch16_224.augreg_in21k") == paper_config("ViT-B/16")
    assert timm_model_name("ViT-H/14") == "vit_huge_patch14_224" and timm_model_name("ViT-S/32", 384) == "vit_small_patch32_384"


def test_model_name_inverts_paper_config():
    for name in PAPER_MODELS:
        assert model_name(paper_config(name)) == name
    assert model_name(vit.ViTConfig(dim=64, depth=2, num_heads=2, mlp_dim=128)) is None


def test_table1_variants_are_the_papers():
    assert VARIANTS["B"] == (768, 12, 3072, 12) and VARIANTS["L"] == (1024, 24, 4096, 16)
    assert VARIANTS["H"] == (1280, 32, 5120, 16)


@pytest.mark.parametrize("bad", ["ViT-X/16", "vit_base_patch16", "ViT-B/15", "resnet50"])
def test_bad_names_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="name: expected"):
        paper_config(bad)


def test_pretraining_head_counts_equal_reference():
    """21,843-class in21k head with the pre-logits layer (R = D), from the closed-form count 4D² + 2DM + 9D + M per block."""
    assert param_count(pretraining_head(paper_config("ViT-B/16"), 21843)) == 103_186_515
    assert param_count(pretraining_head(paper_config("ViT-H/14"), 21843)) == 660_385_363


def test_pretraining_head_is_tanh_mlp():
    cfg = pretraining_head(vit.ViTConfig(image_size=32, dim=32, depth=1, num_heads=2, mlp_dim=64), num_classes=7)
    g = torch.Generator().manual_seed(0)
    params = {k: torch.randn(s, generator=g) for k, s in vit.param_shapes(cfg).items()}
    x = torch.randn(2, 3, 32, 32, generator=g)
    logits, out = vit.forward_intermediates(params, x, cfg)
    y = torch.nn.functional.layer_norm(out["hidden"][-1][:, 0], (32,), params["norm.weight"], params["norm.bias"], 1e-6)
    hidden = torch.tanh(y @ params["pre_logits.weight"].T + params["pre_logits.bias"])
    torch.testing.assert_close(logits, hidden @ params["head.weight"].T + params["head.bias"])


def test_finetuning_head_replaces_both_layers_with_zero_linear():
    cfg = pretraining_head(vit.ViTConfig(image_size=32, dim=32, depth=1, num_heads=2, mlp_dim=64), num_classes=7)
    params = {k: torch.randn(s) for k, s in vit.param_shapes(cfg).items()}
    new, new_cfg = finetuning_head(params, cfg, num_classes=10)
    vit.check_params(new, vit.param_shapes(new_cfg))
    assert new_cfg.representation_size is None and "pre_logits.weight" not in new
    assert not new["head.weight"].any() and not new["head.bias"].any()
    assert not vit.forward(new, torch.randn(2, 3, 32, 32), new_cfg).any()   # zero-initialised: logits start at 0
    assert all(torch.equal(new[k], params[k]) for k in new if not k.startswith("head."))
