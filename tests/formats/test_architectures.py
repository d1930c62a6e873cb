"""paper/formats/architectures.py: the committed table of known architectures equals timm's registry and
torchvision's builders (rebuilt here on the meta device), no shapes map to two head counts, and a head count the
table cannot give is refused, never guessed."""
import pytest
import timm
import torch
import torch.nn as nn
import torchvision.models as tvm
from timm.models.vision_transformer import VisionTransformer

import paper.formats.architectures as architectures
from paper.formats.architectures import KNOWN, PAPER, TIMM, TORCHVISION, matching
from paper.formats.fields import num_heads_for
from paper.formats.timm import from_timm


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
    """Every model of timm's vision_transformer.py and deit.py whose state_dict we read is in the table, with its
    timm shapes and head count; every timm row of the table is such a model. Built on the meta device, weights
    never initialised."""
    built, found = {}, {}
    for name in timm.list_models(module=["vision_transformer", "deit"]):
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
