"""The CNN baseline: torchvision's ResNet-18 with one input channel, counted exactly, and multiply-adds counted by
torch.utils.flop_counter for both models, checked against the ViT's closed form and an independent count over the
ResNet's layers."""
import dataclasses

import pytest
import torch
import torch.nn as nn
import torchvision

import lowlevel as vit
from paper.models.cnn import ResNetConfig, resnet18
from paper.reports import compare_summary, measure
from paper.training import comparison


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("stem, channels, expected", [
    ("stock", 1, 11_175_370),    # ../shared/FAMILY.md §6: "stock 7×7/s2 stem with 1-ch conv, no other change"
    ("cifar", 1, 11_172_810),    # "+ CIFAR stem, 1-ch"
    ("cifar", 3, 11_173_962),    # "+ CIFAR stem (3×3/s1 conv, no maxpool), 3-ch": kuangliu's ResNet18()
])
def test_parameter_counts_equal_the_family_notes(stem, channels, expected):
    with torch.device("meta"):
        assert count(resnet18(ResNetConfig(stem=stem, in_channels=channels))) == expected


def test_the_stock_stem_with_three_channels_is_torchvisions_resnet18_itself():
    """Only conv1 is replaced: with 3 channels the stock stem rebuilds torchvision's own layer, weights included
    (the same seed, torchvision's own initialisation)."""
    ours = resnet18(ResNetConfig(stem="stock", in_channels=3), seed=4)
    torch.manual_seed(4)
    theirs = torchvision.models.resnet18(num_classes=10)
    assert count(ours) == count(theirs) == 11_181_642
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items() if k != "conv1.weight")
    assert ours.conv1.weight.std().item() == pytest.approx(theirs.conv1.weight.std().item(), rel=0.05)


def test_initialisation_is_a_function_of_the_seed_and_leaves_the_global_stream_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = (resnet18(ResNetConfig(), seed) for seed in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_stems_give_the_feature_maps_of_the_family_notes():
    """layer4's map for a 28×28 digit: 1×1 with the stock stem (32× down-sampling), 4×4 with the CIFAR stem."""
    for stem, side in (("stock", 1), ("cifar", 4)):
        net = resnet18(ResNetConfig(stem=stem)).eval()
        seen = {}
        net.layer4.register_forward_hook(lambda m, i, out, seen=seen: seen.update(shape=out.shape))
        assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        assert seen["shape"] == (2, 512, side, side)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match=r"stem: expected one of \('stock', 'cifar'\), got 'imagenet'"):
        ResNetConfig(stem="imagenet")
    with pytest.raises(ValueError, match="in_channels: expected a positive integer, got 0"):
        ResNetConfig(in_channels=0)


@pytest.mark.parametrize("name", ["vit", "vit-large", "vit-no-pos"])
def test_vit_multiply_adds_counted_by_the_library_equal_the_closed_form(name):
    """torch.utils.flop_counter over our ViT's forward equals paper.bench's closed form (patch embedding, per block
    q/k/v, q kᵀ, A v, projection and MLP, head), which tests/lowlevel/test_fast_path.py checks on ViT-B/16."""
    cfg = comparison.VITS[name]
    model = comparison.build(name, 0)
    assert compare_summary.multiply_adds(model, cfg) == measure.forward_flops(cfg) / 2
    # by hand for the digits-sized ViT: 49 patches of 16 pixels -> D = 64; 4 blocks of 50 tokens; head 64 -> 10
    if name == "vit":
        t, d, m = 50, 64, 128
        assert compare_summary.multiply_adds(model, cfg) == 49 * 16 * 64 + 4 * (t * 4 * d * d + 2 * t * t * d + 2 * t * d * m) \
            + 64 * 10


def layer_by_layer_multiply_adds(net: nn.Module, images: torch.Tensor) -> int:
    """Every convolution's and linear layer's multiply-adds from the shapes it saw: output elements × the inputs each
    one reads (C_in/groups · k_h · k_w for a convolution, in_features for a linear layer)."""
    total = []

    def conv(m, inputs, out):
        total.append(out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    def linear(m, inputs, out):
        total.append(out[0].numel() * m.in_features)

    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(conv)
        elif isinstance(module, nn.Linear):
            module.register_forward_hook(linear)
    with torch.no_grad():
        net(images)
    return sum(total)


# By hand, with a layer's map side s: "stock": conv1 14²·64·49, layer1 4 convs of 7²·64·64·9, then layers 2-4 each
# s²·(2C·C·9 + 3·2C·2C·9 + 2C·C) at s = 4, 2, 1 (= 8,388,608 each, the first conv and the 1×1 shortcut halve the map),
# fc 512·10. "cifar": conv1 28²·64·9, layer1 4 of 28²·64·64·9, layers 2-4 at s = 14, 7, 4 (4 = ⌈7/2⌉).
@pytest.mark.parametrize("stem, expected", [("stock", 33_010_944), ("cifar", 455_800_832)])
def test_cnn_multiply_adds_counted_by_the_library_equal_a_count_over_its_layers(stem, expected):
    name = "cnn" if stem == "stock" else "cnn-cifar"
    model = comparison.build(name, 0).eval()
    cfg = comparison.CNNS[name]
    assert cfg.stem == stem
    counted = compare_summary.multiply_adds(model, cfg)
    assert counted == layer_by_layer_multiply_adds(model.net, torch.zeros(1, 1, 28, 28)) == expected


def test_vit_without_position_embeddings_has_no_pos_parameter():
    cfg = comparison.VITS["vit-no-pos"]
    assert "pos" not in vit.param_shapes(cfg)
    assert count(comparison.build("vit-no-pos", 0)) == count(comparison.build("vit", 0)) - 50 * 64
    assert dataclasses.replace(cfg, pos_embed="learned") == comparison.VITS["vit"]
