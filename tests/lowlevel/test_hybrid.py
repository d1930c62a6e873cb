"""The hybrid (§3.1) equals timm's (vision_transformer_hybrid.py: VisionTransformer with HybridEmbed over ResNetV2)
holding the same weights: the ResNet's pieces against timm's layers, then the whole model on random small hybrids
(logits, features, every attention map, the gradients w.r.t. the images and every parameter, ResNet included), and
R50+ViT-B/16 and R+ViT-Ti/16 whole; the ResNet also against transformers' BitModel. Float64; 1e-10 absolute unless
stated."""
import dataclasses
import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowlevel import BackboneConfig, ViTConfig, forward, forward_intermediates, init_params, param_shapes, resnet
from paper.formats.timm import timm_key, to_timm
from paper.models.family import paper_config
from paper.references.vit import timm_backbone
from paper.training.recipes import MNIST_HYBRID
from tests.helpers import hybrid_configs, random_images, random_params, timm_twin

SCALE = 0.2          # weight noise: large enough that every unit's last GroupNorm (initialised to 0) matters


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 7), st.integers(1, 3))
def test_same_padding_and_max_pool_equal_timm(h, w, kernel, stride):
    """TF "SAME" padding, smaller half first, for every size, kernel and stride (timm padding.py pad_same), and the
    stem's max-pool padded with −∞ (MaxPool2dSame)."""
    from timm.layers.padding import pad_same
    from timm.layers.pool2d_same import MaxPool2dSame

    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    assert torch.equal(resnet.same_padding(x, kernel, stride), pad_same(x, (kernel, kernel), (stride, stride)))
    assert torch.equal(resnet.max_pool(x), MaxPool2dSame(3, 2)(x))
    assert resnet.max_pool(x).shape[-2:] == (math.ceil(h / 2), math.ceil(w / 2))


@given(st.sampled_from([1, 3, 7]), st.integers(1, 2), st.sampled_from([1e-8, 1e-5]), st.integers(5, 12))
def test_std_conv_equals_timm_std_conv2d_same(kernel, stride, eps, side):
    """Weight standardisation (timm computes it with F.batch_norm over the kernel) and the convolution after it,
    values and gradients."""
    from timm.layers import StdConv2dSame

    conv = StdConv2dSame(4, 6, kernel, stride=stride, eps=eps).double()
    weight = (torch.randn(6, 4, kernel, kernel, dtype=torch.float64) * 0.3 + 0.1).requires_grad_(True)
    with torch.no_grad():
        conv.weight.copy_(weight)
    x = torch.randn(2, 4, side, side + 1, dtype=torch.float64)
    y = resnet.std_conv(x, weight, stride, eps)
    ref = conv(x)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    (ref * grad).sum().backward()
    torch.testing.assert_close(weight.grad, conv.weight.grad, rtol=0, atol=1e-10)
    standardised = resnet.weight_standardization(weight.detach(), eps).flatten(1)
    torch.testing.assert_close(standardised.mean(1), torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-12)


@given(hybrid_configs(max_stages=2), st.integers(1, 2))
def test_feature_map_equals_timm_resnetv2(cfg, batch):
    """The backbone alone, with timm's own randomised weights read into ours by the converter's names."""
    model = timm_backbone(cfg).double().eval()
    g = torch.Generator().manual_seed(batch)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * SCALE + (1.0 if p.ndim == 1 else 0.0))
    sd = model.state_dict()
    params = {k: sd[timm_key(f"backbone.{k}", cfg).removeprefix("patch_embed.backbone.")]
              for k in resnet.param_shapes(cfg.backbone, cfg.in_channels)}
    assert len(params) == len(sd)
    images = random_images(cfg, batch, seed=batch)
    ours = resnet.feature_map(params, images, cfg.backbone)
    with torch.no_grad():
        ref = model(images)
    assert ours.shape == (batch, cfg.patch_channels, *cfg.feature_size) == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


def bit_key(name: str) -> str:
    """transformers' BitModel key -> ours (resnet.py): embedder.convolution is the stem's conv, encoder.stages.s.layers.u
    a unit, downsample.conv/norm the projection, normK gnK."""
    for theirs, ours in (("embedder.convolution", "stem.conv"), ("embedder.norm", "stem.gn"), ("encoder.", ""),
                         ("layers.", "units."), ("downsample.conv", "conv_proj"), ("downsample.norm", "gn_proj")):
        name = name.replace(theirs, ours)
    return re.sub(r"norm(\d)", r"gn\1", name)


@given(hybrid_configs(max_stages=3).filter(lambda cfg: cfg.backbone.layers), st.integers(1, 2))
def test_feature_map_equals_transformers_bit_model(cfg, batch):
    """transformers 5's BitModel, configured as its removed ViTHybrid configured it (layer_type="bottleneck",
    global_padding="same", embedding_dynamic_padding=True): its standardisation eps (1e-8) and GroupNorm eps (1e-5) are
    fixed in its code, and its max-pool pads with 0 rather than −∞, the same maximum after the stem's ReLU. With
    BitConfig's defaults (no SAME padding, an unpadded max-pool) it computes another function."""
    from transformers import BitConfig, BitModel

    backbone = dataclasses.replace(cfg.backbone, group_norm_eps=1e-5, std_eps=1e-8)
    config = BitConfig(num_channels=cfg.in_channels, embedding_size=backbone.width, depths=list(backbone.layers),
                       hidden_sizes=[4 * w for w in backbone.stage_widths], num_groups=backbone.num_groups,
                       layer_type="bottleneck", global_padding="same", embedding_dynamic_padding=True)
    model = BitModel(config).double().eval()
    g = torch.Generator().manual_seed(batch)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * SCALE + (1.0 if p.ndim == 1 else 0.0))
    params = {bit_key(k): v for k, v in model.state_dict().items()}
    assert params.keys() == resnet.param_shapes(backbone, cfg.in_channels).keys()
    images = random_images(cfg, batch, seed=batch)
    with torch.no_grad():
        ref = model(images).last_hidden_state
    torch.testing.assert_close(resnet.feature_map(params, images, backbone), ref, rtol=0, atol=1e-10)


@given(hybrid_configs(), st.integers(1, 2))
def test_hybrid_forward_equals_timm(cfg, batch):
    params = random_params(cfg, seed=batch, scale=SCALE)
    images = random_images(cfg, batch, seed=batch)
    model = timm_twin(params, cfg)
    with torch.no_grad():
        logits, out = forward_intermediates(params, images, cfg)
        fast = forward(params, images, cfg, fast=True)
        ref_logits = model(images)
        ref_features = model.forward_head(model.forward_features(images), pre_logits=True)
    assert logits.abs().max() > 1e-3                                 # not a trivially small output
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(fast, ref_logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(out["features"], ref_features, rtol=0, atol=1e-10)
    for ours, ref in zip(out["attention"], model.recorded[:cfg.depth], strict=True):
        assert ours.shape == (batch, cfg.num_heads, cfg.num_tokens, cfg.num_tokens)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


@given(hybrid_configs(max_stages=2), st.integers(1, 2))
def test_hybrid_gradients_equal_timm(cfg, batch):
    """d loss / d images and d loss / d every parameter, the ResNet's included, under one loss touching every
    output; our gradients mapped to timm's names by the converter."""
    params = {k: v.requires_grad_(True) for k, v in random_params(cfg, seed=5, scale=SCALE).items()}
    model = timm_twin({k: v.detach() for k, v in params.items()}, cfg)
    images = random_images(cfg, batch, seed=3).requires_grad_(True)
    images_ref = images.detach().clone().requires_grad_(True)
    weights = torch.randn(batch, cfg.num_classes or cfg.dim, dtype=torch.float64)
    (forward(params, images, cfg) * weights).sum().backward()
    (model(images_ref) * weights).sum().backward()
    torch.testing.assert_close(images.grad, images_ref.grad, rtol=0, atol=1e-10)
    ref_grads = dict(model.named_parameters())
    grads = to_timm({k: v.grad for k, v in params.items()}, cfg)
    assert grads.keys() == ref_grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[key].grad, rtol=0, atol=1e-10, msg=key)


@pytest.mark.parametrize("name, fields", [("R50+ViT-B/16", dict(image_size=64, depth=1)), ("R+ViT-Ti/16", {})])
def test_paper_hybrids_equal_timm_float64_and_float32(name, fields):
    """The real ResNets (R50's 3, 4, 9 units of bottleneck widths 64-256 in 32 groups; the stem alone with 8×8
    patches), R50+ViT-B/16 at 64 px (a 4×4 grid) with one encoder block to stay quick (ViT-B/16's twelve are
    test_model_vs_timm.py's). Measured: float64 agrees to ~1e-14, float32 to ~2e-6 on logits of size ~1; 1e-4 is
    the float32 tolerance of ViT-B/16 (the two sum in different orders)."""
    cfg = paper_config(name, **fields)
    params = random_params(cfg, seed=0)
    images = random_images(cfg, 1, seed=0)
    for dtype, atol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        p = {k: v.to(dtype) for k, v in params.items()}
        model = timm_twin(p, cfg, dtype)
        with torch.no_grad():
            logits = forward(p, images.to(dtype), cfg)
            ref = model(images.to(dtype))
        assert logits.abs().max() > 0.1
        torch.testing.assert_close(logits, ref, rtol=0, atol=atol)


def test_mnist_hybrid_equals_timm():
    """The digits-sized hybrid (paper.training.recipes) in timm, its parameter count too, on a batch of 28×28 digits."""
    params = random_params(MNIST_HYBRID, seed=1, scale=SCALE)
    model = timm_twin(params, MNIST_HYBRID)
    images = random_images(MNIST_HYBRID, 2, seed=1)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in params.values())
    with torch.no_grad():
        torch.testing.assert_close(forward(params, images, MNIST_HYBRID), model(images), rtol=0, atol=1e-10)


def test_init_is_the_official_resnets():
    """vit_jax models_resnet.py: kernels lecun_normal (Flax's Conv default, std √(1/fan_in)), GroupNorm scale 1 and
    bias 0, except each unit's gn3 scale, 0."""
    cfg = ViTConfig(image_size=32, patch_size=1, dim=8, depth=1, num_heads=1, mlp_dim=8, backbone=BackboneConfig())
    params = init_params(cfg, torch.Generator().manual_seed(0))
    kernel = params["backbone.stages.2.units.0.conv2.weight"]                       # (256, 256, 3, 3)
    assert math.isclose(kernel.std().item(), math.sqrt(1 / (256 * 9)), rel_tol=0.02)
    assert torch.equal(params["backbone.stages.1.units.2.gn3.weight"], torch.zeros(512))
    assert torch.equal(params["backbone.stages.1.units.2.gn2.weight"], torch.ones(128))
    assert torch.equal(params["backbone.stem.gn.bias"], torch.zeros(64))


def test_grid_and_parameter_names_of_a_hybrid():
    cfg = paper_config("R50+ViT-B/16")
    assert (cfg.feature_size, cfg.grid_size, cfg.patch_channels, cfg.backbone.stride) == ((14, 14), (14, 14), 1024, 16)
    shapes = param_shapes(cfg)
    assert shapes["patch.weight"] == (768, 1024) and shapes["pos"] == (1, 197, 768)
    assert shapes["backbone.stem.conv.weight"] == (64, 3, 7, 7)
    assert shapes["backbone.stages.2.units.0.conv_proj.weight"] == (1024, 512, 1, 1)
    assert "backbone.stages.2.units.1.conv_proj.weight" not in shapes
    assert paper_config("R+ViT-Ti/16").grid_size == (7, 7)              # the stem's 4× times 8×8 patches: /32


def test_backbone_config_round_trips_through_asdict():
    """A checkpoint stores its config as dataclasses.asdict; the backbone comes back as a BackboneConfig."""
    cfg = paper_config("R26+ViT-S/32")
    assert ViTConfig(**dataclasses.asdict(cfg)) == cfg
    assert ViTConfig(**{**dataclasses.asdict(cfg), "backbone": {**dataclasses.asdict(cfg.backbone),
                                                               "layers": [2, 2, 2, 2]}}) == cfg


@pytest.mark.parametrize("fields, message", [
    (dict(backbone=BackboneConfig(layers=()), patch_size=3, image_size=224), "feature map of (56, 56)"),
    (dict(backbone="R50"), "backbone: expected None or a BackboneConfig"),
])
def test_bad_hybrid_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ViTConfig(**{"dim": 8, "num_heads": 2, "mlp_dim": 8, "depth": 1, **fields})


@pytest.mark.parametrize("fields, message", [
    (dict(layers=(1, 1, 1, 1, 1)), "layers: expected up to 4 stages"), (dict(layers=(0,)), "layers"),
    (dict(width=12, num_groups=8), "num_groups: expected a divisor"), (dict(std_eps=0.0), "std_eps"),
])
def test_bad_backbone_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        BackboneConfig(**fields)


def test_images_of_another_size_are_refused():
    cfg = paper_config("R+ViT-Ti/16", image_size=64, num_classes=3)
    params = random_params(cfg)
    with pytest.raises(ValueError, match=r"images: expected height and width \(64, 64\)"):
        forward(params, torch.zeros(1, 3, 63, 64, dtype=torch.float64), cfg)
    assert forward(params, torch.zeros(1, 3, 64, 64, dtype=torch.float64), cfg).shape == (1, 3)
