"""paper/formats/architectures.py: the committed tables of known architectures equal timm's registry and
torchvision's builders (rebuilt here on the meta device), no shapes map to two head counts or two Swin image sizes,
and a head count or Swin image size the tables cannot give is refused, never guessed."""
import pytest
import timm
import torch
import torch.nn as nn
import torchvision.models as tvm
from timm.models.vision_transformer import VisionTransformer

import paper.formats.architectures as architectures
from paper.formats.architectures import KNOWN, PAPER, SWIN_KNOWN, SWIN_PAPER, SWIN_TIMM, TIMM, TORCHVISION, matching, swin_matching
from paper.formats.fields import num_heads_for, swin_image_size_for
from paper.formats.timm import from_timm
from paper.formats.timm_swin import from_timm_swin


def timm_row(model) -> tuple[int, int, int, int, int]:
    block = model.blocks[0]
    return (model.embed_dim, len(model.blocks), block.mlp.fc1.out_features, model.patch_embed.patch_size[0],
            block.attn.num_heads)


def readable(model) -> bool:
    """Whether paper/formats/timm.py reads this model's bare state_dict when told the head count and image size."""
    if not hasattr(model.blocks[0], "attn"):            # timm's parallel blocks: another layout altogether
        return False
    try:
        from_timm(model.state_dict(), num_heads=model.blocks[0].attn.num_heads,
                  image_size=tuple(model.patch_embed.img_size))
    except ValueError:
        return False
    return True


def test_timm_rows_are_every_readable_timm_vit_and_equal_the_registry():
    """Every model of timm's vision_transformer.py, deit.py and vision_transformer_hybrid.py whose state_dict we read
    is in the table (a hybrid's patch size on its ResNet's feature map), with its timm shapes and head count; every
    timm row of the table is such a model. Built on the meta device, weights never initialised."""
    built, found = {}, {}
    for name in timm.list_models(module=["vision_transformer", "deit", "vision_transformer_hybrid"]):
        with torch.device("meta"):
            model = timm.create_model(name, weight_init="skip")
        if isinstance(model, VisionTransformer):
            built[name] = model
            if readable(model):
                found[name] = timm_row(model)
    missing = {n: row for n, row in found.items() if n not in TIMM}
    assert not missing, f"readable timm ViTs missing from architectures.TIMM: {missing}"
    assert {n: timm_row(built[n]) for n in TIMM} == TIMM           # distilled DeiTs included, readable or not yet
    for name in found:   # the numerics a hub directory naming one of them is read with: LayerNorm 1e-6, exact GELU
        model = built[name]
        norm = model.norm if model.global_pool == "token" else model.fc_norm
        assert norm.eps == 1e-6 and type(model.blocks[0].mlp.act) is nn.GELU, name
        assert model.blocks[0].mlp.act.approximate == "none", name


def test_torchvision_rows_equal_torchvision_builders():
    for name, row in TORCHVISION.items():
        with torch.device("meta"):
            model = getattr(tvm, name)()
        layer = model.encoder.layers[0]
        assert (model.hidden_dim, len(model.encoder.layers), model.mlp_dim, model.patch_size,
                layer.self_attention.num_heads) == row, name


def test_no_shapes_map_to_two_head_counts():
    conflicts = {}
    for *shapes, _ in KNOWN.values():
        found = matching(*shapes)
        if len(found) > 1:
            conflicts[tuple(shapes)] = found
    assert not conflicts, f"(D, depth, MLP, patch) with two head counts: {conflicts}"


def test_vit_h14_gets_its_16_heads_where_d_h_64_gave_20():
    """The paper's ViT-H/14: D = 1280 and 16 heads, D_h = 80 (the old guess 1280 // 64 gave 20)."""
    assert num_heads_for(1280, 32, 5120, 14) == 16
    assert {"ViT-H/14", "vit_h_14", "vit_huge_patch14_224"} <= set(matching(1280, 32, 5120, 14)[16])
    assert PAPER["ViT-H/14"] == TORCHVISION["vit_h_14"] == TIMM["vit_huge_patch14_224"]


def test_unknown_or_ambiguous_shapes_are_refused_naming_the_flag(monkeypatch):
    with pytest.raises(ValueError, match=r"num_heads: .*no known architecture has their shapes \(D=64, depth 1, "
                                         r"MLP 128, patch 8\); pass it with --num-heads"):
        num_heads_for(64, 1, 128, 8)
    monkeypatch.setattr(architectures, "KNOWN", {**KNOWN, "a": (64, 1, 128, 8, 2), "b": (64, 1, 128, 8, 4)})
    with pytest.raises(ValueError, match=r"differ in it \(2 in a; 4 in b\); pass it with --num-heads"):
        num_heads_for(64, 1, 128, 8)


def test_swin_rows_are_timms_swins_with_one_window_and_torchvisions_builders():
    """timm's Swins (swin_transformer.py), but the swin_s3_* with a window per stage, and torchvision's swin_t/s/b:
    (patch, C, depths, heads, M, image side) as their modules hold them, built on the meta device."""
    found = {}
    for name in timm.list_models(module="swin_transformer"):
        with torch.device("meta"):
            model = timm.create_model(name)
        windows = {tuple(layer.blocks[0].attn.window_size) for layer in model.layers}
        if len(windows) == 1:
            (m, _), = windows
            found[name] = (model.patch_embed.patch_size[0], model.embed_dim, tuple(len(s.blocks) for s in model.layers),
                           tuple(s.blocks[0].attn.num_heads for s in model.layers), m, model.patch_embed.img_size[0])
    assert found == SWIN_TIMM
    for name in ("swin_t", "swin_s", "swin_b"):
        with torch.device("meta"):
            model = getattr(tvm, name)()
        stages = model.features[1::2]
        assert (model.features[0][0].stride[0], model.features[0][0].out_channels, tuple(len(s) for s in stages),
                tuple(s[0].attn.num_heads for s in stages), stages[0][0].attn.window_size[0], 224) == SWIN_PAPER[name], name


def test_no_swin_shapes_map_to_two_image_sizes():
    assert all(len(swin_matching(*shapes)) == 1 for *shapes, _ in SWIN_KNOWN.values())


def test_a_swins_image_size_comes_from_a_known_swin_or_is_refused_naming_the_flag(monkeypatch):
    """A known Swin's file reads at its size (384 for swin_base_patch4_window12_384, from the weights alone); one that
    no known Swin has the shapes of is refused: a Swin built at 40 px, taken for 32, was written to a config.json
    saying 32."""
    with torch.device("meta"):
        model = timm.create_model("swin_base_patch4_window12_384")
    assert from_timm_swin(model.state_dict())[0].image_size == (384, 384)
    assert swin_image_size_for(4, 96, (2, 2, 6, 2), (3, 6, 12, 24), 7) == 224                    # Swin-T, swin_t
    with pytest.raises(ValueError, match=r"image_size: .*no known Swin has their shapes \(P=4, C=8, depths \(2, 2, "
                                         r"2\), heads \(1, 2, 2\), M=2\); pass it with --image-size H W"):
        swin_image_size_for(4, 8, (2, 2, 2), (1, 2, 2), 2)
    monkeypatch.setattr(architectures, "SWIN_KNOWN", {"a": (4, 8, (2,), (1,), 2, 32), "b": (4, 8, (2,), (1,), 2, 64)})
    with pytest.raises(ValueError, match=r"differ in it \(32 in a; 64 in b\); pass it with --image-size"):
        swin_image_size_for(4, 8, (2,), (1,), 2)
