"""A hybrid (§3.1) through the commands. `python -m paper.convert`: every format that holds one (timm's state dict, a
timm hub directory, the official .npz) round-trips it bit for bit and is loaded by timm's own loader for the format,
computing our logits; every format that cannot (transformers' ViT: transformers 5 has no ViT hybrid; torchvision's ViT)
refuses it with one line and writes nothing. `python -m paper.verify`: a hybrid's rows, in a table of their own."""
import re

import pytest
import timm
import torch
from timm.models.vision_transformer import _load_weights

import paper.verify
from lowlevel import BackboneConfig, ViTConfig, forward
from paper import cli
from paper.convert import main as convert_main
from paper.formats.checkpoints import read_checkpoint, write_checkpoint
from paper.models.family import paper_config, param_count
from paper.references.equivalence import verify_config
from tests.helpers import random_images, random_params

F64 = dict(rtol=0, atol=1e-10)
# timm's registered hybrids, their ResNets whole, the encoder made small: (paper name, timm name, image side)
HYBRIDS = [("R+ViT-Ti/16", "vit_tiny_r_s16_p8_224", 64), ("R50+ViT-B/16", "vit_base_r50_s16_224", 32)]
ENCODER = dict(depth=1, dim=32, num_heads=2, mlp_dim=64, num_classes=3)


def timm_logits(path, fmt: str, timm_name: str, cfg, images) -> torch.Tensor:
    """timm's logits for a written file, loaded by timm's own loader of its format, in float64: a hub directory by
    create_model("local-dir:…"), an .npz by `_load_weights`, a state dict strictly by load_state_dict."""
    if fmt == "timm-hub":
        model = timm.create_model(f"local-dir:{path}", pretrained=True)
    else:
        model = timm.create_model(timm_name, pretrained=False, img_size=cfg.image_size, patch_size=cfg.patch_size,
                                  embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads,
                                  mlp_ratio=cfg.mlp_dim / cfg.dim, num_classes=cfg.num_classes)
        if fmt == "npz":
            _load_weights(model, str(path))
        else:
            model.load_state_dict(torch.load(path), strict=True)
    with torch.no_grad():
        return model.double().eval()(images)


@pytest.mark.parametrize("name, timm_name, side", HYBRIDS)
def test_a_hybrid_converts_through_every_format_that_holds_one(tmp_path, capsys, name, timm_name, side):
    """timm .pth -> .npz -> timm hub directory -> .pth: each step the same config and tensors (a state dict read with
    --num-heads and the .npz with --gelu exact, which they cannot record), and timm, loading each file its own way,
    computes our logits."""
    cfg = paper_config(name, image_size=side, **ENCODER)
    params = random_params(cfg, dtype=torch.float32)          # what timm's models hold: loaded without rounding
    images = random_images(cfg, 2, seed=1)
    ours = forward({k: v.double() for k, v in params.items()}, images, cfg)
    write_checkpoint(params, cfg, tmp_path / "a.pth")
    unrecorded = {"timm": {"num_heads": 2}, "npz": {"gelu": "exact"}, "timm-hub": {}}
    chain = [("a.pth", "timm", []), ("b.npz", "npz", []), ("c_hub", "timm-hub", ["--to", "timm-hub"]),
             ("d.pth", "timm", [])]
    for (src, src_fmt, _), (dst, fmt, flags) in zip(chain, chain[1:], strict=False):
        told = [f"--{k.replace('_', '-')}={v}" for k, v in unrecorded[src_fmt].items()]
        convert_main([str(tmp_path / src), str(tmp_path / dst), *flags, *told])
        assert f"-> {tmp_path / dst} ({fmt})" in capsys.readouterr().out
        read_cfg, read, read_fmt = read_checkpoint(tmp_path / dst, **unrecorded[fmt])
        assert (read_cfg, read_fmt) == (cfg, fmt) and all(torch.equal(read[k], params[k]) for k in params), dst
        torch.testing.assert_close(timm_logits(tmp_path / dst, fmt, timm_name, cfg, images), ours, **F64)


@pytest.mark.parametrize("dst, flags, words", [
    ("hf", [], "transformers' ViT cannot express backbone="),
    ("tv.pth", ["--to", "torchvision"], "torchvision"),
])
def test_a_format_without_a_resnet_refuses_a_hybrid_in_one_line(tmp_path, capsys, dst, flags, words):
    cfg = paper_config("R+ViT-Ti/16", image_size=64, **ENCODER)
    write_checkpoint(random_params(cfg, dtype=torch.float32), cfg, tmp_path / "r.pth")
    with pytest.raises(SystemExit) as ended:
        cli.run(convert_main, [str(tmp_path / "r.pth"), str(tmp_path / dst), "--num-heads", "2", *flags])
    line = capsys.readouterr().err.strip().splitlines()[-1]                     # (above it, the progress bar)
    assert ended.value.code == 2 and line.startswith("error: backbone: ") and words in line, line
    assert not (tmp_path / dst).exists()


def test_verify_config_finds_equality_on_a_tiny_hybrid():
    """Our hybrid against timm's holding our state dict and holding what its npz loader reads from our .npz."""
    cfg = ViTConfig(image_size=(45, 32), patch_size=1, dim=8, depth=2, num_heads=2, mlp_dim=12, num_classes=3,
                    backbone=BackboneConfig(layers=(1, 2), width=8, num_groups=4))
    row64, row32 = (verify_config(cfg, dtype, batch=2) for dtype in (torch.float64, torch.float32))
    for key in ("timm_logits", "timm_features", "npz_logits", "npz_features"):
        assert 0 <= row64[key][0] < 1e-10 and row32[key][0] < 1e-5, key
    assert row64["ours"] == row64["timm"] == row64["npz"] == param_count(cfg)


@pytest.mark.slow
def test_verify_prints_the_hybrids_in_a_table_of_their_own(capsys):
    """R+ViT-Ti/16, the whole model at 224 px (about 7 s): its second reference is timm's npz loader, not
    transformers; in float64 every difference is rounding."""
    paper.verify.main(["--models", "R+ViT-Ti/16", "--dtypes", "float64"])
    out = capsys.readouterr().out
    assert "logits vs timm from .npz" in out and "| R+ViT-Ti/16 | float64 |" in out and "6,337,704" in out
    row = next(line for line in out.splitlines() if line.startswith("| R+ViT-Ti/16"))
    assert all(float(d) < 1e-10 for d in re.findall(r"(\d\.\de-\d+) /", row)), row
