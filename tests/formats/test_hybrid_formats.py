"""A hybrid's weights in timm's layout (paper/formats/timm.py, the backbone rows of its table): read from a timm model
or a bare state_dict and written back bit for bit, a written file loaded strictly by timm's registered model, and
every format that cannot hold a ResNet refusing one before writing."""
from functools import partial

import pytest
import timm
import torch
from hypothesis import given
from safetensors.torch import load_file

from lowlevel import forward
from paper.formats.checkpoints import read_checkpoint, write_checkpoint
from paper.formats.timm import from_timm, to_timm
from paper.models.family import paper_config
from tests.helpers import hybrid_configs, random_images, random_params, timm_twin


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
    for name, fmt in (("r50.npz", None), ("r50_hf", None), ("r50_tv.pth", "torchvision"), ("r50_hub", "timm-hub")):
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
