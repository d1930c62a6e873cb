"""paper/formats and paper/checkpoints: every checkpoint format read and written, checked against the libraries'
own loaders (timm's npz loader, transformers' from_pretrained) and by bit-exact round trips."""
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from timm.models.vision_transformer import _load_weights
from transformers import ViTForImageClassification, ViTModel

import lowlevel as vit
from paper.formats.checkpoints import detect_format, read_checkpoint, write_checkpoint
from paper.formats.huggingface import from_hf, hf_config, read_hf, to_hf, write_hf
from paper.formats.npz import from_npz, read_npz, to_npz, write_npz
from paper.formats.timm import from_timm, to_timm, write_timm
from paper.models.heads import pretraining_head
from paper.references.vit import hf_vit, timm_vit
from tests import helpers

# Float64 comparisons: the same arithmetic in a different order, ~1e-15 relative; 1e-10 leaves room for depth.
F64 = dict(rtol=0, atol=1e-10)

# helpers.random_params' scale in these tests: every tensor perturbed well away from its initial value,
# so no mapping error can hide.
FAR = 0.3


def tiny_cfg(**kw):
    """A model no known architecture matches: a file that does not store the head count must be told it."""
    return vit.ViTConfig(**{"image_size": 32, "patch_size": 8, "dim": 128, "depth": 2, "num_heads": 2, "mlp_dim": 256,
                            "num_classes": 5, **kw})


def images(cfg, batch=2, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_channels, *cfg.image_size, generator=g, dtype=dtype)


def assert_same_params(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def no_leftovers(directory):
    return [n for n in os.listdir(directory) if n.endswith(".tmp")] == []


# ---------------------------------------------------------------- timm state_dict files

@given(helpers.vit_configs())
def test_round_trip_through_timm_is_lossless(cfg):
    params = helpers.random_params(cfg, seed=1)
    model = timm_vit(cfg).double()
    model.load_state_dict(to_timm(params, cfg))
    cfg_back, params_back = from_timm(model)
    assert cfg_back == cfg
    assert params_back.keys() == params.keys() == vit.param_shapes(cfg).keys()
    assert all(torch.equal(params_back[k], params[k]) for k in params)
    sd = model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in to_timm(params_back, cfg_back).items())


def test_from_state_dict_infers_shapes_and_takes_overrides():
    cfg = vit.ViTConfig(image_size=(16, 24), patch_size=8, dim=12, depth=2, num_heads=3, mlp_dim=20, num_classes=4,
                        layer_norm_eps=1e-12, gelu="tanh")
    sd = timm_vit(cfg).state_dict()
    cfg_back, params = from_timm(sd, num_heads=3, image_size=(16, 24), layer_norm_eps=1e-12, gelu="tanh")
    assert cfg_back == cfg
    assert all(torch.equal(v, sd[k]) for k, v in to_timm(params, cfg_back).items())



def test_timm_model_saved_by_torch_loads_with_equal_outputs(tmp_path):
    cfg = tiny_cfg()
    model = timm_vit(cfg).double().eval()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt.pth")    # timm's train.py wraps it like this
    cfg2, params = read_checkpoint(tmp_path / "ckpt.pth", num_heads=cfg.num_heads)[:2]
    x = images(cfg)
    torch.testing.assert_close(vit.forward(params, x, cfg2), model(x), **F64)


# ---------------------------------------------------------------- Hugging Face transformers

@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_forward_equals_vit_for_image_classification_float64(gelu):
    cfg = tiny_cfg(gelu=gelu)
    params = helpers.random_params(cfg, scale=FAR)
    model = hf_vit(cfg).double().eval()
    model.load_state_dict(to_hf(params, cfg)[0])
    x = images(cfg)
    torch.testing.assert_close(vit.forward(params, x, cfg), model(x).logits, **F64)


def test_forward_equals_vit_for_image_classification_float32():
    """fp32: SDPA vs our explicit softmax, and HF's conv patch embedding vs our matmul, differ by rounding (~1e-6
    on outputs of size ~1); 1e-5 is what independent implementations agree to per block on ViT-B/16."""
    cfg = tiny_cfg()
    params = helpers.random_params(cfg, dtype=torch.float32, scale=FAR)
    model = hf_vit(cfg).eval()
    model.load_state_dict(to_hf(params, cfg)[0])
    x = images(cfg, dtype=torch.float32)
    torch.testing.assert_close(vit.forward(params, x, cfg), model(x).logits, rtol=1e-5, atol=1e-5)


def test_forward_equals_vit_model_features_and_pooler():
    """ViTModel: last_hidden_state[:, 0] is eq. (4)'s y; its pooler (Dense + tanh) is the pre-training head's
    pre-logits layer, so with representation_size set its pooler_output is our features."""
    cfg = pretraining_head(tiny_cfg(), num_classes=0)
    params = helpers.random_params(cfg, scale=FAR)
    model = hf_vit(cfg).double().eval()
    assert isinstance(model, ViTModel) and model.pooler is not None
    model.load_state_dict(to_hf(params, cfg)[0])
    x = images(cfg)
    features, out = vit.forward_intermediates(params, x, cfg)
    theirs = model(x, output_hidden_states=True)
    torch.testing.assert_close(features, theirs.pooler_output, **F64)
    for ours_z, their_z in zip(out["hidden"][:-1], theirs.hidden_states[:-1], strict=True):
        torch.testing.assert_close(ours_z, their_z, **F64)


def test_hf_directory_loads_offline_in_from_pretrained(tmp_path):
    cfg = tiny_cfg(gelu="tanh", layer_norm_eps=1e-6)
    params = helpers.random_params(cfg, dtype=torch.float32, scale=FAR)
    write_hf(params, cfg, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["layer_norm_eps"] == 1e-6 and config["hidden_act"] == "gelu_pytorch_tanh"
    model = ViTForImageClassification.from_pretrained(tmp_path / "hf", local_files_only=True).double().eval()
    x = images(cfg)
    ours = vit.forward({k: v.double() for k, v in params.items()}, x, cfg)
    torch.testing.assert_close(ours, model(x).logits, **F64)
    assert no_leftovers(tmp_path / "hf")


def test_hf_save_pretrained_directory_reads_with_equal_outputs(tmp_path):
    """A directory written by transformers itself (saved names), and its in-memory state_dict (5.x names)."""
    cfg = tiny_cfg()
    model = ViTForImageClassification(hf_config(cfg)).double().eval()
    model.save_pretrained(tmp_path / "theirs")
    cfg2, params = read_hf(tmp_path / "theirs")
    assert cfg2 == cfg
    x = images(cfg)
    torch.testing.assert_close(vit.forward({k: v.double() for k, v in params.items()}, x, cfg2), model(x).logits,
                               **F64)
    cfg3, params3 = from_hf(model.state_dict(), model.config.to_dict())
    assert cfg3 == cfg
    torch.testing.assert_close(vit.forward(params3, x, cfg3), model(x).logits, **F64)


def test_hf_default_eps_and_activation_would_not_match():
    """Why the written config carries eps and activation: transformers' defaults (eps 1e-12, exact GELU) give a
    different model, far outside the float64 tolerance the equality tests use."""
    cfg = tiny_cfg(gelu="tanh")
    params = helpers.random_params(cfg, scale=FAR)
    x = images(cfg)
    ours = vit.forward(params, x, cfg)
    for change in ({"layer_norm_eps": 1e-12}, {"hidden_act": "gelu"}):
        config = hf_config(cfg)
        for k, v in change.items():
            setattr(config, k, v)
        model = ViTForImageClassification(config).double().eval()
        model.load_state_dict(to_hf(params, cfg)[0])
        assert (model(x).logits - ours).abs().max() > 1e-8


def test_hf_refuses_what_it_cannot_express():
    with pytest.raises(ValueError, match="pool"):
        hf_config(tiny_cfg(pool="avg"))
    with pytest.raises(ValueError, match="representation_size"):
        hf_config(pretraining_head(tiny_cfg(), num_classes=5))


# ---------------------------------------------------------------- the official npz format

def test_npz_we_write_loads_in_timms_own_npz_loader(tmp_path):
    """2020 layout (pre-Linen numbering, E_pos with a class row) through timm's `_load_weights`."""
    cfg = tiny_cfg()
    params = helpers.random_params(cfg, dtype=torch.float32, scale=FAR)
    write_npz(params, cfg, tmp_path / "m.npz")
    model = timm_vit(cfg).double().eval()
    _load_weights(model, str(tmp_path / "m.npz"))
    x = images(cfg)
    ours = vit.forward({k: v.double() for k, v in params.items()}, x, cfg)
    torch.testing.assert_close(ours, model(x), **F64)
    theirs = model.state_dict()
    for k, v in to_timm(params, cfg).items():                   # timm loaded exactly our numbers
        assert torch.equal(theirs[k], v.double()), k
    assert no_leftovers(tmp_path)


def test_big_vision_npz_loads_in_timms_npz_loader(tmp_path):
    """big_vision layout (Linen numbering, pos_embedding without a class row, class row folded into cls): timm reads
    it into a model that adds E_pos before the class token (no_embed_class), the big_vision computation."""
    cfg = tiny_cfg()
    params = helpers.random_params(cfg, scale=FAR)
    write_npz(params, cfg, tmp_path / "bv.npz", layout="big_vision")
    arrays = np.load(tmp_path / "bv.npz")
    assert "pos_embedding" in arrays and "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in arrays
    model = timm_vit(cfg, no_embed_class=True).double().eval()
    _load_weights(model, str(tmp_path / "bv.npz"))
    x = images(cfg)
    torch.testing.assert_close(vit.forward(params, x, cfg), model(x), **F64)
    cfg2, params2 = read_npz(tmp_path / "bv.npz", gelu="exact")
    assert cfg2 == cfg and not params2["pos"][:, 0].any()
    torch.testing.assert_close(vit.forward(params2, x, cfg2), vit.forward(params, x, cfg), rtol=0, atol=0)


def export_npz_from_timm(model) -> dict:
    """An npz exporter written from the official key list, independent of paper/formats/npz.py: timm's `_n2p`
    transforms run backwards, reading timm's modules directly."""
    d, h = model.embed_dim, model.blocks[0].attn.num_heads
    a = {"embedding/kernel": model.patch_embed.proj.weight.permute(2, 3, 1, 0),
         "embedding/bias": model.patch_embed.proj.bias,
         "cls": model.cls_token, "Transformer/posembed_input/pos_embedding": model.pos_embed,
         "Transformer/encoder_norm/scale": model.norm.weight, "Transformer/encoder_norm/bias": model.norm.bias,
         "head/kernel": model.head.weight.T, "head/bias": model.head.bias}
    for i, b in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        q, k, v = b.attn.qkv.weight.chunk(3)
        qb, kb, vb = b.attn.qkv.bias.chunk(3)
        for n, w, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            a[f"{p}MultiHeadDotProductAttention_1/{n}/kernel"] = w.T.reshape(d, h, d // h)
            a[f"{p}MultiHeadDotProductAttention_1/{n}/bias"] = bias.reshape(h, d // h)
        a[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = b.attn.proj.weight.T.reshape(h, d // h, d)
        a[f"{p}MultiHeadDotProductAttention_1/out/bias"] = b.attn.proj.bias
        for ln, m in (("LayerNorm_0", b.norm1), ("LayerNorm_2", b.norm2)):
            a[f"{p}{ln}/scale"], a[f"{p}{ln}/bias"] = m.weight, m.bias
        for j, fc in enumerate((b.mlp.fc1, b.mlp.fc2)):
            a[f"{p}MlpBlock_3/Dense_{j}/kernel"], a[f"{p}MlpBlock_3/Dense_{j}/bias"] = fc.weight.T, fc.bias
    return {k: t.detach().numpy() for k, t in a.items()}


def test_npz_written_from_timm_model_loads_into_ours(tmp_path):
    cfg = tiny_cfg()
    model = helpers.randomised(timm_vit(cfg).double().eval())   # timm's init leaves LN at 1/0 and cls ~1e-6
    np.savez(tmp_path / "timm.npz", **export_npz_from_timm(model))
    cfg2, params = read_checkpoint(tmp_path / "timm.npz", gelu="exact")[:2]
    assert cfg2 == cfg
    x = images(cfg)
    torch.testing.assert_close(vit.forward(params, x, cfg2), model(x), **F64)


def test_npz_reads_linen_numbering_prefix_and_scan_layouts(tmp_path):
    """The same weights in the other spellings Google's files use give the same params."""
    cfg = pretraining_head(tiny_cfg(), num_classes=7)
    params = helpers.random_params(cfg, dtype=torch.float32, scale=FAR)
    arrays = to_npz(params, cfg)
    assert "pre_logits/kernel" in arrays
    linen = {k.replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
              .replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0"): v for k, v in arrays.items()}
    prefixed = {f"params/{k}": v for k, v in arrays.items()}
    scan = {k: v for k, v in linen.items() if not k.startswith("Transformer/encoderblock_")}
    for k in (k for k in linen if k.startswith("Transformer/encoderblock_0/")):
        rest = k.removeprefix("Transformer/encoderblock_0/")
        scan[f"Transformer/encoderblock/{rest}"] = np.stack([linen[f"Transformer/encoderblock_{i}/{rest}"]
                                                             for i in range(cfg.depth)])
    for variant in (arrays, linen, prefixed, scan):
        cfg2, params2 = from_npz(variant, gelu="exact")
        assert cfg2 == cfg
        assert_same_params(params2, params)


def test_npz_refuses_gap_models_and_reads_tanh_gelu():
    cfg = tiny_cfg()
    arrays = to_npz(helpers.random_params(cfg, dtype=torch.float32, scale=FAR), cfg)
    assert from_npz(arrays)[0].gelu == "tanh"                      # the official numerics
    with pytest.raises(ValueError, match="class-token model"):
        from_npz({k: v for k, v in arrays.items() if k != "cls"})
    with pytest.raises(ValueError, match="class_token"):
        to_npz({}, tiny_cfg(class_token=False, pool="avg"))


# ---------------------------------------------------------------- round trips and the dispatcher

@pytest.mark.parametrize("cfg", [tiny_cfg(), tiny_cfg(num_classes=0), tiny_cfg(image_size=(32, 48), qkv_bias=True)],
                         ids=["classifier", "backbone", "non-square"])
def test_round_trip_timm_ours_hf_npz_is_lossless(tmp_path, cfg):
    params = helpers.random_params(cfg, dtype=torch.float32, scale=FAR)
    path, current = params, params
    formats = {"a.safetensors": "timm", "b_dir": "hf", "c.npz": "npz", "d.pth": "timm", "e.npz": "npz"}
    for i, (dst, expected) in enumerate(formats.items()):
        layout = "big_vision" if i == 4 else "vit2020"
        write_checkpoint(current, cfg, tmp_path / dst, npz_layout=layout)
        size = {"image_size": cfg.image_size, "gelu": cfg.gelu,    # a bare file cannot say a non-square size
                "num_heads": cfg.num_heads}                          # nor the head count
        read_cfg, current, fmt = read_checkpoint(tmp_path / dst, **size)
        assert read_cfg == cfg and fmt == detect_format(tmp_path / dst) == expected
        if layout == "vit2020":
            assert_same_params(current, path)
    x = images(cfg, dtype=torch.float32)
    torch.testing.assert_close(vit.forward(current, x, cfg), vit.forward(params, x, cfg), rtol=0, atol=0)
    assert no_leftovers(tmp_path)


def test_model_name_fixes_the_architecture_and_refuses_a_mismatch(tmp_path):
    cfg = tiny_cfg()
    write_timm(helpers.random_params(cfg, dtype=torch.float32, scale=FAR), cfg, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"mis-shaped keys, the first: blocks\.0\.attn\.proj\.bias: expected \(192,\)"):
        read_checkpoint(tmp_path / "m.pth", model="ViT-Ti/16")


# ---------------------------------------------------------------- bad checkpoints

@pytest.mark.parametrize("name", ["m.pth", "m.safetensors", "m.npz"])
def test_truncated_file_is_refused_naming_it(tmp_path, name):
    cfg = tiny_cfg()
    write_checkpoint(helpers.random_params(cfg, dtype=torch.float32, scale=FAR), cfg, tmp_path / name)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(tmp_path / name).replace(".", r"\.")):
        read_checkpoint(tmp_path / name)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    cfg = tiny_cfg()
    sd = to_timm(helpers.random_params(cfg, dtype=torch.float32, scale=FAR), cfg)
    del sd["blocks.1.norm2.bias"]
    sd["blocks.0.attn.extra"] = torch.zeros(1)
    sd["norm.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as e:
        read_checkpoint(tmp_path / "bad.pth", num_heads=2)
    for words in ("missing key: blocks.1.norm2.bias", "unexpected key: blocks.0.attn.extra",
                  "mis-shaped key norm.weight: expected (128,), got (3,)"):
        assert words in str(e.value)
    hf_sd = to_hf(helpers.random_params(cfg, scale=FAR), cfg)[0]
    hf_sd["vit.layers.0.attention.q_proj.weight"] = torch.zeros(128, 3)
    with pytest.raises(ValueError, match="mis-shaped key encoder.layer.0.attention.attention.query.weight"):
        from_hf(hf_sd, num_heads=2)
    arrays = to_npz(helpers.random_params(cfg, dtype=torch.float32, scale=FAR), cfg)
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    with pytest.raises(ValueError, match="missing key: Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"):
        from_npz(arrays)
    del arrays["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"]
    with pytest.raises(ValueError, match="missing key 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/q"):
        from_npz(arrays)
    del hf_sd["vit.embeddings.position_embeddings"]
    with pytest.raises(ValueError, match="missing key 'embeddings.position_embeddings'"):
        from_hf(hf_sd, num_heads=2)


def test_wrong_config_is_refused_before_anything_is_written(tmp_path):
    cfg = tiny_cfg()
    params = helpers.random_params(cfg, dtype=torch.float32, scale=FAR)
    wrong = tiny_cfg(depth=3)
    for dst in ("x.pth", "x.safetensors", "x.npz", "x_dir"):
        with pytest.raises(ValueError, match=r"missing keys?[:,] (the first: )?blocks\.2\."):
            write_checkpoint(params, wrong, tmp_path / dst)
    assert os.listdir(tmp_path) == []
    (tmp_path / "keep.npz").write_bytes(b"old")
    with pytest.raises(ValueError, match="pool"):
        write_checkpoint(params, tiny_cfg(pool="avg"), tmp_path / "keep.npz")
    assert (tmp_path / "keep.npz").read_bytes() == b"old"


def test_unknown_files_are_refused(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="x.pth: expected a readable"):
        detect_format(tmp_path / "x.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "y.pth")
    with pytest.raises(ValueError, match="y.pth: expected a timm, torchvision or transformers ViT or Swin state_dict"):
        detect_format(tmp_path / "y.pth")
    with pytest.raises(ValueError, match="does not exist"):
        detect_format(tmp_path / "nothing.npz")


@st.composite
def configs(draw):
    """Small configs across the fields the formats must carry: heads, widths, depth, classes, grid, bias, eps."""
    heads = draw(st.integers(1, 4))
    patch = draw(st.sampled_from([2, 4]))
    return vit.ViTConfig(image_size=(patch * draw(st.integers(1, 4)), patch * draw(st.integers(1, 4))),
                         patch_size=patch, in_channels=draw(st.integers(1, 3)), dim=heads * draw(st.integers(1, 3)) * 2,
                         depth=draw(st.integers(1, 3)), num_heads=heads, mlp_dim=draw(st.integers(1, 12)),
                         num_classes=draw(st.integers(0, 4)), qkv_bias=draw(st.booleans()),
                         layer_norm_eps=draw(st.sampled_from([1e-6, 1e-12])),
                         gelu=draw(st.sampled_from(["exact", "tanh"])))


def fields(cfg):
    """What a reader must be told when the weights cannot say it."""
    return {"num_heads": cfg.num_heads, "image_size": cfg.image_size, "layer_norm_eps": cfg.layer_norm_eps,
            "gelu": cfg.gelu}


@given(cfg=configs(), seed=st.integers(0, 2**16))
def test_in_memory_conversions_are_lossless_for_any_config(cfg, seed):
    params = helpers.random_params(cfg, seed, dtype=torch.float32, scale=FAR)
    cfg_t, params_t = from_timm(to_timm(params, cfg), **fields(cfg))
    assert cfg_t == cfg
    assert_same_params(params_t, params)
    cfg_h, params_h = from_hf(to_hf(params, cfg)[0], hf_config(cfg).to_dict())
    assert cfg_h == cfg
    assert_same_params(params_h, params)
    if cfg.qkv_bias:                                   # the official format always has q, k, v biases
        cfg_n, params_n = from_npz(to_npz(params, cfg), **fields(cfg))
        assert cfg_n == cfg
        assert_same_params(params_n, params)
        rep = pretraining_head(cfg, num_classes=3)
        rep_params = helpers.random_params(rep, seed, dtype=torch.float32, scale=FAR)
        _, back = from_npz(to_npz(rep_params, rep, "big_vision"), **fields(rep))
        moved = ("cls", "pos")                         # big_vision folds E_pos's class row into the token
        assert_same_params({k: v for k, v in back.items() if k not in moved},
                           {k: v for k, v in rep_params.items() if k not in moved})
        assert torch.equal(back["cls"], rep_params["cls"] + rep_params["pos"][:, :1]) and not back["pos"][:, 0].any()
        assert torch.equal(back["pos"][:, 1:], rep_params["pos"][:, 1:])
