"""A hybrid's weights in timm's layout (paper/formats/timm.py, the backbone rows of its table) and in the official
.npz layout (paper/formats/npz.py, conv_root and block{s}/unit{u}): read from a timm model or a bare state_dict and
written back bit for bit, a written file loaded strictly by timm's registered model, an .npz loaded by timm's own npz
loader, and every format that cannot hold a ResNet refusing one before writing."""
import dataclasses
from functools import partial

import numpy as np
import pytest
import timm
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file
from timm.models.vision_transformer import _load_weights

from lowlevel import forward
from paper.formats.checkpoints import read_checkpoint, write_checkpoint
from paper.formats.npz import from_npz, to_npz, write_npz
from paper.formats.timm import from_timm, to_timm
from paper.models.family import paper_config
from paper.references.vit import timm_vit
from tests.helpers import hybrid_configs, random_images, random_params, timm_twin

F64 = dict(rtol=0, atol=1e-10)


@given(hybrid_configs(max_stages=2))
def test_timm_hybrid_round_trip_is_lossless(cfg):
    """From the model (its groups and eps read off its layers) and from the bare state_dict (what the weights cannot
    tell given), the same config and the same tensors; written back, timm's state_dict exactly."""
    params = random_params(cfg)
    model = timm_twin(params, cfg)
    sd = model.state_dict()
    numerics = {"num_groups": cfg.backbone.num_groups, "group_norm_eps": cfg.backbone.group_norm_eps,
                "std_eps": cfg.backbone.std_eps}
    for read in (from_timm(model), from_timm(sd, num_heads=cfg.num_heads, image_size=cfg.image_size,
                                             backbone=numerics)):
        assert read[0] == cfg
        assert read[1].keys() == params.keys() and all(torch.equal(read[1][k], params[k]) for k in params)
    written = to_timm(params, cfg)
    assert written.keys() == sd.keys() and all(torch.equal(written[k], sd[k]) for k in sd)


def test_a_written_file_is_loaded_strictly_by_timms_registered_model(tmp_path):
    """R+ViT-Ti/16 written as .safetensors: timm.create_model("vit_tiny_r_s16_p8_224") loads it strictly and computes
    our logits; read back by name, it is the same config and tensors. Its bare weights show (D, depth, MLP size,
    patch) of ViT-Ti/8, whose head count the table of known architectures gives."""
    cfg = paper_config("R+ViT-Ti/16")
    params = random_params(cfg, dtype=torch.float32)
    path = tmp_path / "r_ti.safetensors"
    assert write_checkpoint(params, cfg, path) == "timm"
    model = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False).eval()
    model.load_state_dict(load_file(path), strict=True)
    images = random_images(cfg, 1, seed=0, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(forward(params, images, cfg), model(images), rtol=0, atol=1e-4)
    for read_cfg, read_params, fmt in (read_checkpoint(path, model="R+ViT-Ti/16"), read_checkpoint(path)):
        assert (read_cfg, fmt) == (cfg, "timm")
        assert all(torch.equal(read_params[k], params[k]) for k in params)


def test_a_hybrid_is_refused_by_a_plain_vits_name_and_where_its_format_has_no_resnet(tmp_path):
    cfg = paper_config("R50+ViT-B/16", image_size=32, depth=1, num_classes=3)
    params = random_params(cfg, dtype=torch.float32)
    path = tmp_path / "r50.pth"
    write_checkpoint(params, cfg, path)
    with pytest.raises(ValueError, match="unexpected keys, the first: patch_embed.backbone"):
        read_checkpoint(path, model="ViT-B/16", image_size=32, patch_size=1, depth=1)
    with pytest.raises(ValueError, match="num-heads"):                     # (768, 1, 3072, 1) is no known ViT
        read_checkpoint(path)
    for name, fmt in (("r50_hf", None), ("r50_tv.pth", "torchvision")):
        with pytest.raises(ValueError, match="backbone: .* cannot express backbone=BackboneConfig"):
            write_checkpoint(params, cfg, tmp_path / name, fmt=fmt)
        assert not (tmp_path / name).exists()


def test_a_timm_hybrid_without_same_padding_is_refused():
    """timm's hybrids can be built with PyTorch's symmetric padding (padding_same=False: StdConv2d, a max-pool padded
    by 1), another function than the official code's SAME padding, which is what lowlevel/resnet.py computes."""
    from timm.layers import HybridEmbed, StdConv2d
    from timm.models.resnetv2 import create_resnetv2_stem
    from timm.models.vision_transformer import VisionTransformer

    stem = create_resnetv2_stem(3, 64, stem_type="", preact=False, conv_layer=partial(StdConv2d, eps=1e-8))
    model = VisionTransformer(img_size=32, patch_size=1, embed_dim=8, depth=1, num_heads=2, num_classes=0,
                              embed_layer=partial(HybridEmbed, backbone=stem))
    with pytest.raises(ValueError, match="backbone: expected BiT's ResNet-v2 with SAME padding"):
        from_timm(model)


def numerics(cfg) -> dict:
    """What neither file format records of a hybrid's ResNet, as a reader takes it (`backbone=`)."""
    return {"num_groups": cfg.backbone.num_groups, "group_norm_eps": cfg.backbone.group_norm_eps,
            "std_eps": cfg.backbone.std_eps}


@given(hybrid_configs(max_stages=3), st.sampled_from(["vit2020", "big_vision"]))
def test_a_hybrid_npz_is_read_by_timms_npz_loader_and_read_back(tmp_path_factory, cfg, layout):
    """Written as the official .npz (the ResNet's conv_root, gn_root, block{s}/unit{u}/…), timm's `_load_weights`
    fills timm's hybrid with it and computes our logits (float64); our reader gives back the config and, the class
    row of big_vision's E_pos aside, the same tensors. RGB images: timm's loader takes a stem kernel for 3 channels
    and adapts it to the model's (`adapt_input_conv`: summed in float32 for 1, refused for 2)."""
    cfg = dataclasses.replace(cfg, class_token=True, pool="token", in_channels=3)   # the official models' pooling
    params = random_params(cfg)
    path = tmp_path_factory.mktemp("npz") / "hybrid.npz"
    write_npz(params, cfg, path, layout)
    model = timm_vit(cfg, no_embed_class=layout == "big_vision").double().eval()
    _load_weights(model, str(path))
    images = random_images(cfg, 2, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(forward(params, images, cfg), model(images), **F64)
    read_cfg, read = from_npz(dict(np.load(path)), gelu=cfg.gelu, image_size=cfg.image_size, backbone=numerics(cfg))
    assert read_cfg == cfg and read.keys() == params.keys()
    folded = ("cls", "pos") if layout == "big_vision" else ()
    assert all(torch.equal(read[k], params[k]) for k in params if k not in folded)
    torch.testing.assert_close(forward(read, images, read_cfg), forward(params, images, cfg), **F64)


def test_the_npz_names_are_the_official_resnets():
    """vit_jax models_vit.py names the root conv_root and gn_root, and its stages block1… of units unit1…
    (models_resnet.py ResNetStage, ResidualUnit: conv1-3, gn1-3, and conv_proj, gn_proj where the shape changes);
    kernels HWIO, GroupNorm scales (C,)."""
    cfg = paper_config("R50+ViT-B/16", image_size=32, depth=1, num_classes=3)
    arrays = to_npz(random_params(cfg, dtype=torch.float32), cfg)
    resnet = {k: v.shape for k, v in arrays.items() if k.startswith(("conv_root", "gn_root", "block"))}
    assert resnet["conv_root/kernel"] == (7, 7, 3, 64) and resnet["gn_root/scale"] == (64,)
    assert resnet["block3/unit9/conv2/kernel"] == (3, 3, 256, 256) and resnet["block3/unit1/conv_proj/kernel"] == (
        1, 1, 512, 1024)
    assert "block1/unit2/conv_proj/kernel" not in resnet and arrays["embedding/kernel"].shape == (1, 1, 1024, 768)
    assert len(resnet) == len([k for k in random_params(cfg) if k.startswith("backbone.")]) == 3 + 16 * 9 + 3 * 3


@pytest.mark.parametrize("name, timm_name, kwargs", [
    ("R+ViT-Ti/16", "vit_tiny_r_s16_p8_224", {}),
    ("R50+ViT-B/16", "vit_base_r50_s16_224", dict(image_size=32, depth=1, dim=32, num_heads=2, mlp_dim=64)),
])
def test_an_npz_is_loaded_by_timms_registered_hybrid(tmp_path, name, timm_name, kwargs):
    """Written by write_checkpoint's name rule, our .npz fills timm.create_model(timm_name) through timm's npz loader
    (R50+ViT-B/16's encoder made small, its R50 whole) and computes our logits in float64; read back (by name where
    the model is the named one), the same config (--gelu exact: the file cannot record it) and tensors."""
    cfg = paper_config(name, num_classes=3, **kwargs)
    params = random_params(cfg)
    path = tmp_path / "hybrid.npz"
    assert write_checkpoint(params, cfg, path) == "npz"
    timm_args = dict(img_size=32, depth=1, embed_dim=32, num_heads=2, mlp_ratio=2) if kwargs else {}
    model = timm.create_model(timm_name, pretrained=False, num_classes=3, **timm_args).double().eval()
    _load_weights(model, str(path))
    images = random_images(cfg, 2, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(forward(params, images, cfg), model(images), **F64)
    read_cfg, read, fmt = read_checkpoint(path, model=None if kwargs else name, gelu="exact")
    assert (read_cfg, fmt) == (cfg, "npz") and all(torch.equal(read[k], params[k]) for k in params)


def test_what_a_format_cannot_record_of_a_hybrid_is_refused(tmp_path):
    """A hub directory names a timm architecture, and no model_arg changes its ResNet: one no timm hybrid builds
    (a stem of 32 channels) is refused. No file records the numerics, whose readers compute timm's and no flag tells
    them others: the official code's GroupNorm eps 1e-6 is refused in all three."""
    cfg = paper_config("R+ViT-Ti/16", image_size=64, depth=1, dim=32, num_heads=2, mlp_dim=64, num_classes=3)
    narrow = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, width=32))
    with pytest.raises(ValueError, match=r"backbone: timm's VisionTransformer hub directory cannot express .*"
                                         r"vit_tiny_r_s16_p8_224 \(\)"):
        write_checkpoint(random_params(narrow, dtype=torch.float32), narrow, tmp_path / "hub", fmt="timm-hub")
    official = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, group_norm_eps=1e-6))
    for name, fmt in (("r.npz", None), ("r.pth", None), ("hub", "timm-hub")):
        with pytest.raises(ValueError, match=f"backbone: {fmt or '.*'} cannot record the ResNet's numerics .*"
                                             f"group_norm_eps=1e-06.*timm's \\(32, 1e-05, 1e-08\\)"):
            write_checkpoint(random_params(official, dtype=torch.float32), official, tmp_path / name, fmt=fmt)
    assert not list(tmp_path.iterdir())
