"""Swin checkpoints: timm's and torchvision's state dicts read and written losslessly, recognised from the file, and
`python -m paper.convert` turning a torchvision swin_t into a state dict timm's swin_tiny_patch4_window7_224 loads
with equal outputs, and back; a conversion that would change the function is refused and writes nothing."""
import dataclasses
import json

import pytest
import timm
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st

from lowlevel import SwinConfig, swin
from paper import cli
from paper.convert import main as convert_main
from paper.formats.checkpoints import detect_format, read_checkpoint, write_checkpoint
from paper.formats.huggingface_swin import TRANSFORMERS_CONVENTIONS, from_hf_swin, to_hf_swin
from paper.formats.timm import write_timm
from paper.formats.timm_swin import TIMM_CONVENTIONS, from_timm_swin, to_timm_swin
from paper.formats.torchvision_swin import TORCHVISION_CONVENTIONS, from_torchvision_swin, to_torchvision_swin
from tests import helpers

FORMATS = {"timm": (TIMM_CONVENTIONS, to_timm_swin, from_timm_swin),
           "torchvision": (TORCHVISION_CONVENTIONS, to_torchvision_swin, from_torchvision_swin),
           "transformers": (TRANSFORMERS_CONVENTIONS, to_hf_swin, from_hf_swin)}


def untold(cfg: SwinConfig) -> dict:
    """What a Swin state dict does not hold: the image size, eps, stochastic depth, and M where every table is
    shrunk."""
    return dict(image_size=cfg.image_size, window_size=cfg.window_size, layer_norm_eps=cfg.layer_norm_eps,
                drop_path=cfg.drop_path)


@given(st.sampled_from(sorted(FORMATS)).flatmap(
    lambda f: st.tuples(st.just(f), helpers.swin_configs(FORMATS[f][0], torchvision=f == "torchvision",
                                                         transformers=f == "transformers"))))
def test_state_dict_round_trip_is_lossless(format_and_cfg):
    fmt, cfg = format_and_cfg
    _, to_format, from_format = FORMATS[fmt]
    params = helpers.random_params(cfg, seed=1)
    cfg2, params2 = from_format(to_format(params, cfg), **untold(cfg))
    assert cfg2 == cfg
    assert list(params2) == list(params) and all(torch.equal(params2[k], params[k]) for k in params)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("fmt", ["timm", "torchvision"])
def test_files_are_recognised_and_read_back(tmp_path, fmt, suffix):
    cfg = SwinConfig(image_size=224, dim=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4), num_classes=5,
                     **FORMATS[fmt][0])
    params = helpers.random_params(cfg, seed=2)
    path = tmp_path / f"m{suffix}"
    assert write_checkpoint(params, cfg, path, fmt=fmt) == f"{fmt}-swin"
    assert detect_format(path) == f"{fmt}-swin"
    with pytest.raises(ValueError, match=r"image_size: .*no known Swin has their shapes \(P=4, C=12, depths "
                                         r"\(2, 2, 2, 2\), heads \(1, 2, 3, 4\), M=7\); pass it with --image-size H W"):
        read_checkpoint(path)                                        # no key tells 224
    cfg2, params2, _ = read_checkpoint(path, image_size=224)
    assert cfg2 == cfg and all(torch.equal(params2[k], params[k]) for k in params)
    vit_cfg = helpers.ViTConfig(image_size=32, patch_size=8, dim=64, depth=1, num_heads=1, mlp_dim=8)
    write_timm(helpers.random_params(vit_cfg), vit_cfg, tmp_path / f"vit{suffix}")
    assert detect_format(tmp_path / f"vit{suffix}") == "timm"        # a ViT's patch_embed.proj.weight stays a ViT


def test_transformers_directory_is_written_read_back_and_loaded_by_from_pretrained(tmp_path):
    """A save_pretrained directory: recognised by its config.json's model_type, read back bit for bit, and
    `SwinForImageClassification.from_pretrained` (offline) computes our logits from it; stochastic depth and eps
    travel in config.json. torchvision's conventions are written where transformers computes the same (224 px: whole
    windows, a last stage of exactly M) and refused where it does not (56×84: its 7×11 last stage is shifted along
    the 11 side by torchvision, along neither side by transformers)."""
    from transformers import SwinForImageClassification
    tiny = dict(dim=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4), num_classes=5)
    transformers_cfg = SwinConfig(image_size=(56, 84), **{**tiny, "depths": (2, 2), "num_heads": (1, 2)},
                                  drop_path=0.2, **TRANSFORMERS_CONVENTIONS)
    torchvision_cfg = SwinConfig(image_size=224, **tiny, **TORCHVISION_CONVENTIONS)
    for cfg in (transformers_cfg, torchvision_cfg):
        params = helpers.random_params(cfg, seed=3)
        assert write_checkpoint(params, cfg, tmp_path / "hf") == "hf-swin"
        assert detect_format(tmp_path / "hf") == "hf-swin"
        cfg2, params2, _ = read_checkpoint(tmp_path / "hf")
        assert cfg2 == dataclasses.replace(cfg, **TRANSFORMERS_CONVENTIONS)
        assert all(torch.equal(params2[k], params[k]) for k in params)
        model = SwinForImageClassification.from_pretrained(tmp_path / "hf", local_files_only=True).double().eval()
        images = helpers.random_images(cfg, 2, seed=3)
        with torch.no_grad():
            torch.testing.assert_close(model(images).logits, swin.forward(params, images, cfg), rtol=0, atol=1e-10)
    wide = dataclasses.replace(torchvision_cfg, image_size=(56, 84), depths=(2, 2), num_heads=(1, 2))
    with pytest.raises(ValueError, match=r"small_window='pad': transformers' Swin cannot express it at image_size "
                                         r"\(56, 84\), where stage 1's 7×11 map gets window and shift"):
        write_checkpoint(helpers.random_params(wide), wide, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_an_image_size_the_file_cannot_tell_is_asked_for_and_kept_where_a_format_records_it(tmp_path, capsys):
    """The issue's Swin built at another size than M·P·2^(S−1) (here 64 px, not 32) in timm's state dict, which has no
    place for the size: converted to a transformers directory, whose config.json would say 32, it is refused naming
    --image-size and nothing is written; told, config.json says 64 and reads back as 64. Back to timm's or
    torchvision's state dict the summary says how to read it, and read so, the round trip keeps size and weights."""
    cfg = SwinConfig(image_size=64, dim=8, depths=(2, 2, 2), num_heads=(1, 2, 2), window_size=2, num_classes=3,
                     **TIMM_CONVENTIONS)
    params = helpers.random_params(cfg)
    write_checkpoint(params, cfg, tmp_path / "m.pth")

    def convert(*args) -> tuple[int, str]:
        with pytest.raises(SystemExit) as ended:
            cli.run(convert_main, [str(a) for a in args])
        out, err = capsys.readouterr()
        return ended.value.code, out + err

    code, text = convert(tmp_path / "m.pth", tmp_path / "hf")
    assert code == 2 and "image_size: expected an image size, but the weights do not store it" in text
    assert "pass it with --image-size H W" in text and not (tmp_path / "hf").exists()
    assert convert(tmp_path / "m.pth", tmp_path / "hf", "--image-size", 64, 64)[0] == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["image_size"] == 64
    assert read_checkpoint(tmp_path / "hf")[0].image_size == (64, 64)
    for fmt in ("timm", "torchvision"):
        code, text = convert(tmp_path / "hf", tmp_path / f"{fmt}.pth", "--to", fmt)
        assert code == 0 and "the file cannot record image size 64x64: read it back with --image-size 64 64" in text
        back, tensors, _ = read_checkpoint(tmp_path / f"{fmt}.pth", image_size=(64, 64))
        assert back == dataclasses.replace(cfg, **FORMATS[fmt][0])
        images = helpers.random_images(cfg, 2, seed=5)              # merging is named per convention: compare outputs
        torch.testing.assert_close(swin.forward(tensors, images, back), swin.forward(params, images, cfg), rtol=0,
                                   atol=1e-12)


@pytest.fixture(scope="module")
def swin_t_file(tmp_path_factory):
    """torchvision's own swin_t (its builder, not ours), every tensor perturbed, float64, saved as torch.save does."""
    torch.manual_seed(0)
    model = torchvision.models.swin_t().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("swin") / "swin_t.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.mark.slow
def test_convert_turns_torchvision_swin_t_into_timm_and_back(swin_t_file, tmp_path, capsys):
    """The command, on torchvision's swin_t: timm's swin_tiny_patch4_window7_224 loads the result strictly and computes
    the same logits in float64; converting back gives torchvision's state dict bit for bit, index buffers included."""
    src, tv = swin_t_file
    convert_main([str(src), str(tmp_path / "timm.pth")])
    assert "(torchvision-swin) -> " in capsys.readouterr().out
    model = timm.create_model("swin_tiny_patch4_window7_224").double().eval()
    model.load_state_dict(torch.load(tmp_path / "timm.pth"))
    images = torch.randn(2, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(images), tv(images), rtol=0, atol=1e-10)
    convert_main([str(tmp_path / "timm.pth"), str(tmp_path / "back.pth"), "--to", "torchvision"])
    back, original = torch.load(tmp_path / "back.pth"), tv.state_dict()
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)


@pytest.mark.slow
def test_convert_refuses_a_size_where_the_codes_differ_and_a_wrong_model(swin_t_file, tmp_path, capsys):
    """At 256 px stage 0 is 64×64, not whole 7×7 windows: timm's weights would compute another function, so the
    conversion is refused and nothing is written. --model Swin-S is refused, naming the missing blocks; a LoRA
    adapter, which adapts only the ViT's layers, is refused."""
    src, _ = swin_t_file
    for argv, message in (([str(tmp_path / "out.pth"), "--model", "swin_tiny_patch4_window7_256"],
                           "padding='before_shift', small_window='pad': timm's SwinTransformer cannot express it at "
                           "image_size (256, 256), where stage 0's 64×64 map is padded to whole 7×7 windows"),
                          ([str(tmp_path / "out.pth"), "--model", "Swin-S"],
                           "missing keys, the first: features.5.6.attn.proj.bias;"),
                          ([str(tmp_path / "out.pth"), "--adapter", str(tmp_path)],
                           "--adapter: expected a ViT or DeiT base (our LoRA adapts the ViT's dense layers), got a "
                           "SwinConfig")):
        with pytest.raises(SystemExit) as exit_:
            cli.run(convert_main, [str(src), *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_index_buffers_are_written_where_persistent_and_checked_where_found():
    """torchvision's persistent (M⁴,) buffers are written and checked; transformers 4 files held (M², M²) ones, which
    are checked and dropped (transformers 5 computes them)."""
    cfg = SwinConfig(dim=12, num_heads=(1, 2, 3, 4), **TORCHVISION_CONVENTIONS)
    sd = to_torchvision_swin(helpers.random_params(cfg), cfg)
    index = sd["features.5.3.attn.relative_position_index"]
    assert index.dtype == torch.long and index.shape == (7 ** 4,)
    sd["features.5.3.attn.relative_position_index"] = index.flip(0)
    with pytest.raises(ValueError, match=r"features.5.3.attn.relative_position_index: expected the relative position "
                                         r"index of a 7×7 window"):
        from_torchvision_swin(sd, image_size=224)
    hf_cfg = dataclasses.replace(cfg, **TRANSFORMERS_CONVENTIONS)
    params = helpers.random_params(hf_cfg)
    old = {**to_hf_swin(params, hf_cfg), "swin.encoder.layers.1.blocks.0.attention.self.relative_position_index":
           index.view(49, 49)}
    cfg2, params2 = from_hf_swin(old, image_size=224)
    assert cfg2 == hf_cfg and all(torch.equal(params2[k], params[k]) for k in params)
    old["swin.encoder.layers.1.blocks.0.attention.self.relative_position_index"] = index.view(49, 49).T
    with pytest.raises(ValueError, match=r"relative_position_index: expected the relative position index of a 7×7"):
        from_hf_swin(old, image_size=224)


def test_formats_refuse_what_their_code_cannot_compute(tmp_path):
    cfg = SwinConfig(image_size=112, dim=12, num_heads=(1, 2, 3, 4), num_classes=5)     # stages 28, 14, 7, 4
    params = helpers.random_params(cfg)
    with pytest.raises(ValueError, match=r"format: npz cannot hold a Swin \(got .*swin.npz\); a Swin is written as "
                                         r"timm, torchvision, hf"):
        write_checkpoint(params, cfg, tmp_path / "swin.npz")
    with pytest.raises(ValueError, match=r"image_size: transformers' Swin cannot compute image_size \(112, 112\), "
                                         r"where stage 3 is 4×4, smaller than the window M=7"):
        to_hf_swin(params, dataclasses.replace(cfg, **TRANSFORMERS_CONVENTIONS))
    with pytest.raises(ValueError, match=r"in_channels: torchvision's SwinTransformer cannot express in_channels=1"):
        one = dataclasses.replace(cfg, in_channels=1)
        to_torchvision_swin(helpers.random_params(one), one)
    with pytest.raises(ValueError, match=r"small_window='shrink': torchvision's SwinTransformer cannot express it at "
                                         r"image_size \(112, 112\), where stage 3's 4×4 map gets window and shift "
                                         r"\(\(4, 4\), \(0, 0\)\) in unshifted blocks"):
        to_torchvision_swin(params, cfg)
    wide = dataclasses.replace(cfg, image_size=(20, 36))                  # stage 0 is 5×9: a 5×7 window, 9·13 rows
    with pytest.raises(ValueError, match=r"window_size: expected a \(2M−1\)²-row relative-position table, got 117"):
        from_timm_swin(to_timm_swin(helpers.random_params(wide), wide))
    assert list(tmp_path.iterdir()) == []


def test_verify_covers_swin(monkeypatch, capsys):
    """paper.verify's Swin rows: a small Swin with Swin-T's code paths equals timm and torchvision in float64; a
    model that does not fit gets a row saying so, in the Swin table beside the ViT's."""
    import paper.verify
    from paper.references import equivalence
    cfg = SwinConfig(dim=12, num_heads=(1, 2, 3, 4), num_classes=7)
    row = equivalence.verify_config(cfg, torch.float64, batch=2)
    for key in ("timm_logits", "timm_features", "torchvision_logits", "torchvision_features"):
        assert 0 <= row[key][0] < 1e-10
    assert row["ours"] == row["timm"] == row["torchvision"] == 443_283
    monkeypatch.setattr(equivalence, "available_bytes", lambda: 0)
    paper.verify.main(["--models", "ViT-Ti/16", "Swin-B", "--dtypes", "float64"])
    out = capsys.readouterr().out
    assert "| ViT-Ti/16 | float64 | not run: needs ~" in out
    assert "logits vs torchvision" in out and "| Swin-B | float64 | not run: needs ~" in out and "87,768,224" in out


def test_verify_checkpoint_runs_a_swin_through_timm_transformers_and_torchvision(tmp_path):
    """`python -m paper.verify --checkpoint` on a torchvision-saved Swin: ours, timm's, transformers' and
    torchvision's models agree on the photo, and the torchvision row holds the difference to torchvision's own model
    holding the file, computed here; the photo is prepared with swin_t's preset."""
    from torchvision.models.swin_transformer import SwinTransformer

    from paper.references.on_photo import verify_checkpoint
    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=12, depths=[2, 2, 2, 2], num_heads=[1, 2, 3, 4],
                            window_size=[7, 7], num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "swin.pth")
    result = verify_checkpoint(tmp_path / "swin.pth", image_size=(224, 224))       # no known Swin: the size is told
    assert "(torchvision-swin), custom, 224x224, (1, 2, 3, 4) heads (the relative-position tables" in result["header"][0]
    assert "swin_t weights" in result["header"][1]
    assert [r["implementation"] for r in result["rows"]] == ["ours", "timm", "transformers", "torchvision"] * 2
    with torch.no_grad():
        theirs = model.double()(result["image"])
    cfg, params, _ = read_checkpoint(tmp_path / "swin.pth", image_size=224)
    with torch.no_grad():
        ours = swin.forward({k: v.double() for k, v in params.items()}, result["image"], cfg)
    row = next(r for r in result["rows"] if r["implementation"] == "torchvision" and r["dtype"] == "float64")
    assert row["max_abs"] == (ours - theirs).abs().max().item() < 1e-12
    assert all(r["max_abs"] < (1e-5 if r["dtype"] == "float32" else 1e-12) for r in result["rows"] if "max_abs" in r)
