"""paper/formats/torchvision.py and timm hub directories (paper/formats/timm.py): read and written, equal to the
libraries' own models and loaders."""
import json

import pytest
import timm
import torch
from timm.models._hub import save_for_hf
from torchvision.models.vision_transformer import VisionTransformer

import lowlevel as vit
from paper.formats.checkpoints import detect_format, read_checkpoint, read_preprocessing, write_checkpoint
from paper.formats.fields import Preprocessing
from paper.formats.timm import from_timm
from paper.formats.torchvision import from_torchvision, to_torchvision
from tests.helpers import random_images, random_params, randomised

F64 = dict(rtol=0, atol=1e-12)   # float64, the same arithmetic in another order (measured ≤ 1e-15 on these sizes)


def torchvision_model(representation_size=None, image=32) -> VisionTransformer:
    model = VisionTransformer(image_size=image, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=96,
                              num_classes=7, representation_size=representation_size).double().eval()
    return randomised(model)                    # torchvision zeroes the head: randomise everything


@pytest.mark.parametrize("representation_size", [None, 10], ids=["linear head", "pre-logits"])
def test_torchvision_state_dict_round_trip_equals_torchvision(tmp_path, representation_size):
    model = torchvision_model(representation_size)
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    cfg, params, fmt = read_checkpoint(tmp_path / "tv.pth", num_heads=4)
    assert fmt == "torchvision" and cfg.representation_size == representation_size
    assert cfg.layer_norm_eps == 1e-6 and cfg.gelu == "exact"          # what torchvision's model computes
    x = random_images(cfg, 2, seed=1)
    torch.testing.assert_close(vit.forward(params, x, cfg), model(x), **F64)

    ours = random_params(cfg, seed=2, scale=0.3)
    write_checkpoint(ours, cfg, tmp_path / "ours.pth", fmt="torchvision")
    theirs = torchvision_model(representation_size)
    theirs.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True))     # strict: every key
    torch.testing.assert_close(vit.forward(ours, x, cfg), theirs(x), **F64)
    assert from_torchvision(theirs.state_dict(), num_heads=4)[0] == cfg


def test_torchvision_names_before_0_13_are_read():
    """MLPBlock._load_from_state_dict renames mlp.linear_1 / linear_2 (older checkpoints) to mlp.0 / mlp.3."""
    model = torchvision_model()
    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
           for k, v in model.state_dict().items()}
    cfg, params = from_torchvision(old, num_heads=4)
    x = random_images(cfg, 1, seed=3)
    torch.testing.assert_close(vit.forward(params, x, cfg), model(x), **F64)


@pytest.mark.parametrize("field, value", [("gelu", "tanh"), ("layer_norm_eps", 1e-12), ("in_channels", 1),
                                          ("image_size", (32, 48)), ("num_classes", 0), ("qkv_bias", False)])
def test_torchvision_refuses_what_it_cannot_compute(field, value):
    cfg = vit.ViTConfig(**{**dict(image_size=32, patch_size=8, dim=64, depth=1, num_heads=4, mlp_dim=96,
                                  num_classes=7), field: value})
    with pytest.raises(ValueError, match=f"{field}: torchvision's VisionTransformer cannot express"):
        to_torchvision(random_params(cfg), cfg)


def test_our_timm_hub_directory_loads_in_timm_with_its_preprocessing(tmp_path):
    """timm.create_model("local-dir:…") builds the model from our config.json alone (a config no timm architecture
    has: 4 heads of 16, GELU tanh, non-square) and computes our logits; pretrained_cfg carries the preprocessing."""
    cfg = vit.ViTConfig(image_size=(16, 24), patch_size=8, dim=64, depth=2, num_heads=4, mlp_dim=88, num_classes=5,
                        gelu="tanh")
    params = random_params(cfg, seed=4, scale=0.3)
    preprocessing = Preprocessing((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 0.95, "test")
    write_checkpoint(params, cfg, tmp_path / "hub", fmt="timm-hub", preprocessing=preprocessing)
    torch.set_default_dtype(torch.float64)
    try:
        model = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    x = random_images(cfg, 2, seed=5)
    torch.testing.assert_close(vit.forward(params, x, cfg), model(x), **F64)
    data = timm.data.resolve_data_config({}, model=model)
    assert (tuple(data["mean"]), tuple(data["std"]), data["crop_pct"]) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 0.95)
    assert detect_format(tmp_path / "hub") == "timm-hub"
    cfg2, params2, _ = read_checkpoint(tmp_path / "hub")                    # heads and size from config.json
    assert cfg2 == cfg and all(torch.equal(params2[k], params[k]) for k in params)
    prep = read_preprocessing(tmp_path / "hub", "timm-hub")
    assert (prep.mean, prep.std, prep.crop_pct) == (preprocessing.mean, preprocessing.std, preprocessing.crop_pct)


def test_timms_own_hub_directory_reads_with_heads_from_its_architecture(tmp_path):
    """save_for_hf writes architecture "vit_tiny_patch16_224" and only the arguments that differ from it
    (img_size, depth, num_classes): the 3 heads come from the architecture's row of the table."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=5)
    model = randomised(model.double().eval())
    save_for_hf(model, str(tmp_path / "theirs"), safe_serialization=True)
    config = json.loads((tmp_path / "theirs" / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and "num_heads" not in config["model_args"]
    cfg, params, fmt = read_checkpoint(tmp_path / "theirs")
    assert fmt == "timm-hub" and cfg.num_heads == 3 and cfg.depth == 2 and cfg.image_size == (32, 32)
    x = random_images(cfg, 2, seed=6)
    torch.testing.assert_close(vit.forward(params, x, cfg), model(x), **F64)
    prep = read_preprocessing(tmp_path / "theirs", fmt)
    assert (prep.mean, prep.std, prep.crop_pct) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.9)   # augreg's, as saved


def test_from_timm_reads_timms_gelu_modules_and_refuses_other_activations_and_norms():
    """A timm model built from a hub config.json has timm's own GELU classes ("gelu", "gelu_tanh"); a CLIP model's
    QuickGELU or the official GAP models' Identity after the pooling is refused, not read as an exact GELU and an LN."""
    built = {}
    for name, kw in (("tanh", dict(act_layer="gelu_tanh")), ("exact", dict(act_layer="gelu")),
                     ("quick", dict(act_layer="quick_gelu")), ("gap", dict(class_token=False, global_pool="avg",
                                                                          fc_norm=False))):
        with torch.device("meta"):
            built[name] = timm.create_model("vit_tiny_patch16_224", weight_init="skip", depth=1, **kw)
    assert from_timm(built["tanh"])[0].gelu == "tanh" and from_timm(built["exact"])[0].gelu == "exact"
    with pytest.raises(ValueError, match="act_layer: expected a GELU .*, got QuickGELU"):
        from_timm(built["quick"])
    with pytest.raises(ValueError, match="norm: expected the LayerNorm of eq. \\(4\\) after the pooling, got Identity"):
        from_timm(built["gap"])
