"""DeiT's model (Touvron et al. 2021): the distillation token, the two heads, stochastic depth, the models by name and
their checkpoints, each checked against timm's VisionTransformerDistilled, transformers'
DeiTForImageClassificationWithTeacher, timm's and torchvision's drop path, in float64."""
import dataclasses

import pytest
import timm
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from timm.layers import calculate_drop_path_rates, resample_abs_pos_embed
from timm.models.deit import VisionTransformerDistilled
from transformers import DeiTForImageClassificationWithTeacher

import lowlevel as vit
from paper import cli
from paper.convert import main as convert_main
from paper.formats.checkpoints import read_checkpoint, write_checkpoint
from paper.formats.huggingface import read_hf, to_hf, write_hf
from paper.formats.timm import from_timm, read_timm, to_timm, write_timm
from paper.models.family import model_name, paper_config, param_count
from paper.models.heads import finetuning_head
from paper.models.resolution import change_resolution
from paper.models.vit_configs import DEIT_MODELS, timm_model_name
from paper.references.equivalence import verify_config
from paper.references.vit import hf_vit, timm_kwargs
from tests.helpers import random_images, random_params, timm_twin, vit_configs

# float64: the same arithmetic in another order, ~1e-15 relative; 1e-10 leaves room for depth.
F64 = dict(rtol=0, atol=1e-10)
# The hypothesis configs, given a distillation token (which needs the class token and token pooling; timm's
# distilled model always has a learned E_pos).
deit_configs = vit_configs(max_depth=2).map(lambda c: dataclasses.replace(c, class_token=True, pool="token",
                                                                          pos_embed="learned", distilled=True))


def tiny(**kw) -> vit.ViTConfig:
    """D_h = 64 like every DeiT; formats that do not store the head count are told it (num_heads=)."""
    return vit.ViTConfig(**{"image_size": 32, "patch_size": 8, "dim": 128, "depth": 2, "num_heads": 2,
                            "mlp_dim": 256, "num_classes": 5, "distilled": True, **kw})


def timm_distilled_training(model):
    """timm's DeiT as TokenDistillationTask trains it: train mode, returning both heads (deit.py forward_head)."""
    model.set_distilled_training(True)
    return model.train()


# ---------------------------------------------------------------- the model against timm

@given(deit_configs, st.integers(1, 3))
def test_distilled_model_equals_timm_in_evaluation_and_in_distilled_training(cfg, batch):
    """Evaluation: timm's mean of the two heads' logits; distilled training: both heads; and the features
    (timm's pre_logits: the two tokens' mean), every attention map, and the fast path's logits and heads."""
    params = random_params(cfg, seed=batch)
    images = random_images(cfg, batch, seed=batch)
    model = timm_twin(params, cfg)
    with torch.no_grad():
        logits, out = vit.forward_intermediates(params, images, cfg)
        torch.testing.assert_close(logits, model(images), **F64)
        torch.testing.assert_close(out["features"], model.forward_head(model.forward_features(images), True), **F64)
        heads = vit.forward_heads(params, images, cfg, train=True)
        their_heads = timm_distilled_training(model)(images)
        for ours, theirs in zip(heads, their_heads, strict=True):
            torch.testing.assert_close(ours, theirs, **F64)
        for ours, theirs in zip(vit.forward_heads(params, images, cfg, fast=True), their_heads, strict=True):
            torch.testing.assert_close(ours, theirs, **F64)
        torch.testing.assert_close(vit.forward(params, images, cfg, fast=True), logits, **F64)
    for ours, theirs in zip(out["attention"], model.recorded[:cfg.depth], strict=True):
        assert ours.shape == (batch, cfg.num_heads, cfg.num_patches + 2, cfg.num_patches + 2)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


@given(deit_configs, st.integers(1, 2))
def test_distilled_gradients_equal_timm(cfg, batch):
    """d loss / d input and d loss / d every parameter, through both heads."""
    params = {k: v.requires_grad_(True) for k, v in random_params(cfg, seed=5).items()}
    model = timm_distilled_training(timm_twin({k: v.detach() for k, v in params.items()}, cfg))
    images = random_images(cfg, batch, seed=6).requires_grad_(True)
    images_ref = images.detach().clone().requires_grad_(True)
    w = torch.randn(2, batch, cfg.num_classes or cfg.dim, dtype=torch.float64,   # a loss touching every output
                    generator=torch.Generator().manual_seed(batch))
    sum((w[i] * out).sum() for i, out in enumerate(vit.forward_heads(params, images, cfg))).backward()
    sum((w[i] * out).sum() for i, out in enumerate(model(images_ref))).backward()
    torch.testing.assert_close(images.grad, images_ref.grad, **F64)
    ref_grads = {name: p.grad for name, p in model.named_parameters()}
    for key, grad in to_timm({k: v.grad for k, v in params.items()}, cfg).items():
        torch.testing.assert_close(grad, ref_grads[key], **F64, msg=key)


def test_softmax_sum_fusion_is_the_papers_late_fusion_and_can_rank_otherwise():
    """"softmax_sum": softmax(logits) is the mean of the heads' softmaxes (the paper's sum, halved), its argmax the
    sum's; on logits built for it, the mean of logits (timm's) ranks the classes differently."""
    cfg = vit.ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, num_heads=2, mlp_dim=8, num_classes=3,
                        distilled=True, fusion="softmax_sum")
    # row 0: the class head is sure of class 0; the distillation head prefers 1 by more logits but splits its
    # probability between 1 and 2. Row 1: logits large enough to overflow a plain exp.
    class_logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 1.0, 30.0]], dtype=torch.float64)
    distillation_logits = torch.tensor([[0.0, 12.0, 11.9], [0.0, 800.0, 0.0]], dtype=torch.float64)
    fused = vit.fuse(class_logits, distillation_logits, cfg)
    paper = torch.softmax(class_logits, -1) + torch.softmax(distillation_logits, -1)
    torch.testing.assert_close(fused.softmax(-1), paper / 2, **F64)
    assert torch.isfinite(fused).all() and torch.equal(fused.argmax(-1), paper.argmax(-1))
    mean = vit.fuse(class_logits, distillation_logits, dataclasses.replace(cfg, fusion="mean_logits"))
    torch.testing.assert_close(mean, (class_logits + distillation_logits) / 2, **F64)
    assert fused[0].argmax() == 0 and mean[0].argmax() == 1


# ---------------------------------------------------------------- stochastic depth

@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9])
def test_drop_path_draws_the_masks_of_timm_and_torchvision(rate):
    """Seeded alike, the three agree exactly: the same per-sample Bernoulli(1 − rate) mask, scaled by 1/(1 − rate)."""
    x = torch.randn(64, 5, 7, dtype=torch.float64)
    torch.manual_seed(3)
    ours = vit.drop_path(x, rate, train=True)
    torch.manual_seed(3)
    theirs = timm.layers.drop_path(x, rate, training=True)
    torch.manual_seed(3)
    tv = torchvision.ops.stochastic_depth(x, rate, mode="row", training=True)
    assert torch.equal(ours, theirs) and torch.equal(ours, tv)
    assert vit.drop_path(x, rate, train=False) is x


def test_drop_path_drops_whole_samples_at_its_rate_and_keeps_the_expectation():
    rate, n = 0.25, 40_000
    x = torch.ones(n, 3, 4, dtype=torch.float64)
    torch.manual_seed(0)
    out = vit.drop_path(x, rate, train=True)
    per_sample = out.flatten(1)
    dropped = (per_sample == 0).all(1)
    assert ((per_sample == 1 / (1 - rate)).all(1) | dropped).all()       # a sample is dropped whole, or scaled
    sigma = (rate * (1 - rate) / n) ** 0.5
    assert abs(dropped.double().mean().item() - rate) < 5 * sigma
    assert abs(out.mean().item() - 1.0) < 5 * sigma / (1 - rate)         # E[drop_path(x)] = x


def test_drop_path_rates_are_timms_linear_rule():
    assert vit.drop_path_rates(0.1, 12) == calculate_drop_path_rates(0.1, 12)
    model = VisionTransformerDistilled(**timm_kwargs(dataclasses.replace(tiny(depth=4), drop_path=0.3)))
    timm_rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]   # block 0 has an Identity
    assert vit.drop_path_rates(0.3, 4) == timm_rates and timm_rates[0] == 0.0 and timm_rates[-1] == pytest.approx(0.3)


def test_training_forward_with_dropout_and_drop_path_equals_timm_seeded():
    """In training, seeded alike, our dropout and drop-path masks are timm's, drawn in the same order (position
    dropout, then per block: projection dropout, drop path, MLP dropouts, drop path), on the explicit and the fast
    path. timm's head dropout, which we do not have, is off."""
    cfg = tiny(dropout=0.1, drop_path=0.4, depth=3)
    params = random_params(cfg, seed=2)
    images = random_images(cfg, 4, seed=3)
    model = VisionTransformerDistilled(**{**timm_kwargs(cfg), "drop_rate": 0.0}).double()
    model.load_state_dict(to_timm(params, cfg))
    timm_distilled_training(model)
    for seed in range(3):
        torch.manual_seed(seed)
        theirs = model(images)
        torch.manual_seed(seed)
        ours = vit.forward_heads(params, images, cfg, train=True)
        torch.manual_seed(seed)
        fast = vit.forward_heads(params, images, cfg, train=True, fast=True)
        for a, b, c in zip(ours, theirs, fast, strict=True):
            torch.testing.assert_close(a, b, **F64)
            torch.testing.assert_close(c, b, **F64)
    torch.manual_seed(0)
    assert not torch.allclose(vit.forward_heads(params, images, cfg, train=True)[0],
                              vit.forward_heads(params, images, cfg)[0])   # training is stochastic here


def test_fast_path_computes_the_prefix_tokens_alone_with_drop_path():
    """Without dropout the fast path's last block computes the two prefix tokens only, drop path included: the same
    masks, so the same heads and gradients as the explicit path."""
    cfg = tiny(drop_path=0.5, depth=2)
    params = {k: v.requires_grad_(True) for k, v in random_params(cfg, seed=4).items()}
    images = random_images(cfg, 8, seed=4)
    results = []
    for fast in (False, True):
        torch.manual_seed(1)
        heads = vit.forward_heads(params, images, cfg, train=True, fast=fast)
        grads = torch.autograd.grad(heads[0].sum() + 2 * heads[1].sum(), list(params.values()))
        results.append((heads, grads))
    for ours, theirs in zip(results[0][0] + results[0][1], results[1][0] + results[1][1], strict=True):
        torch.testing.assert_close(ours, theirs, **F64)


# ---------------------------------------------------------------- models by name

def timm_count(name: str) -> int:
    """timm's own count on the meta device; names timm does not register (Ti, S at 384) are its 224 model at 384."""
    with torch.device("meta"):
        if name in timm.list_models("deit_*"):
            model = timm.create_model(name, pretrained=False)
        else:
            model = timm.create_model(name.replace("_384", "_224"), pretrained=False, img_size=384)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", [f"deit_{size}{d}_patch16_{r}" for size in ("tiny", "small", "base")
                                  for d in ("", "_distilled") for r in (224, 384)])
def test_param_counts_equal_timm(name):
    assert param_count(paper_config(name)) == timm_count(name)


def test_param_counts_of_the_issue_and_paper_names():
    """The distilled counts at 224 (timm on the meta device, FAMILY.md §1.3), by paper name and by timm name."""
    expected = {"DeiT-Ti⚗": 5_910_800, "DeiT-S⚗": 22_436_432, "DeiT-B⚗": 87_338_192, "DeiT-Ti": 5_717_416}
    for name, count in expected.items():
        assert param_count(paper_config(name)) == param_count(paper_config(timm_model_name(name))) == count
    for name in DEIT_MODELS:
        cfg = paper_config(name)
        assert paper_config(timm_model_name(name)) == cfg and cfg.distilled == ("⚗" in name)
        assert (cfg.layer_norm_eps, cfg.gelu, cfg.patch_size) == (1e-6, "exact", 16)   # deit models.py
        if cfg.distilled:
            assert model_name(cfg) == name


def test_distilled_configs_are_refused_when_inconsistent():
    with pytest.raises(ValueError, match="distilled: .*class_token=True and pool='token', got class_token=False"):
        tiny(class_token=False, pool="avg")
    with pytest.raises(ValueError, match="fusion: expected one of .*got 'sum'"):
        tiny(fusion="sum")
    with pytest.raises(ValueError, match=r"drop_path: expected a rate in \[0, 1\), got 1.0"):
        tiny(drop_path=1.0)
    with pytest.raises(ValueError, match="distilled: forward_heads returns the two heads .* got distilled=False"):
        cfg = tiny(distilled=False)
        vit.forward_heads(random_params(cfg), random_images(cfg, 1, 0), cfg)
    with pytest.raises(ValueError, match="name: expected a paper name"):
        paper_config("deit_large_patch16_224")


# ---------------------------------------------------------------- resolution change and heads

def test_resolution_change_keeps_both_prefix_rows_as_timm_does():
    cfg = tiny()
    params = random_params(cfg)
    new, new_cfg = change_resolution(params, cfg, 48, method="timm")
    theirs = resample_abs_pos_embed(params["pos"], (6, 6), (4, 4), num_prefix_tokens=2)
    assert new_cfg.num_tokens == 2 + 36
    torch.testing.assert_close(new["pos"], theirs, rtol=0, atol=1e-6)     # timm resamples in float32
    assert torch.equal(new["pos"][:, :2], params["pos"][:, :2])


def test_finetuning_head_zeroes_both_heads():
    cfg = tiny()
    params, cfg7 = finetuning_head(random_params(cfg), cfg, 7)
    assert (params["head.weight"].shape, params["head_dist.weight"].shape) == ((7, 128), (7, 128))
    assert all(params[k].abs().sum() == 0 for k in ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias"))
    vit.check_params(params, vit.param_shapes(cfg7))


# ---------------------------------------------------------------- checkpoints

def test_timm_files_round_trip_and_load_strictly_into_timm(tmp_path):
    cfg = tiny()
    params = random_params(cfg)
    write_timm(params, cfg, tmp_path / "deit.safetensors")
    cfg2, params2 = read_timm(tmp_path / "deit.safetensors", num_heads=cfg.num_heads)   # a state dict has no head count
    assert cfg2 == cfg and all(torch.equal(params[k], params2[k]) for k in params) and sorted(params) == sorted(params2)
    model = VisionTransformerDistilled(**timm_kwargs(cfg)).double().eval()
    model.load_state_dict(to_timm(params, cfg), strict=True)
    cfg3, params3 = from_timm(model)
    assert cfg3 == cfg and all(torch.equal(params[k], params3[k]) for k in params)


def test_transformers_teacher_model_equals_ours_forward_and_gradients():
    """DeiTForImageClassificationWithTeacher with SDPA attention (its eager path takes the softmax in float32,
    FAMILY.md §1.3): logits, cls_logits, distillation_logits and every gradient."""
    cfg = tiny()
    params = {k: v.requires_grad_(True) for k, v in random_params(cfg, seed=8).items()}
    model = hf_vit(cfg).double()
    assert isinstance(model, DeiTForImageClassificationWithTeacher) and model.config._attn_implementation == "sdpa"
    sd = to_hf({k: v.detach() for k, v in params.items()}, cfg)[0]
    model.load_state_dict(sd, strict=True)
    images = random_images(cfg, 3, seed=9)
    theirs = model(images)
    class_logits, distillation_logits = vit.forward_heads(params, images, cfg)
    torch.testing.assert_close(vit.forward(params, images, cfg), theirs.logits, **F64)
    torch.testing.assert_close(class_logits, theirs.cls_logits, **F64)
    torch.testing.assert_close(distillation_logits, theirs.distillation_logits, **F64)
    (class_logits.sum() + 3 * distillation_logits.sum()).backward()
    (theirs.cls_logits.sum() + 3 * theirs.distillation_logits.sum()).backward()
    grads = to_hf({k: v.grad for k, v in params.items()}, cfg)[0]
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, **F64, msg=name)


def test_transformers_directory_loads_offline_and_reads_back(tmp_path):
    cfg = tiny()
    params = random_params(cfg)
    write_hf(params, cfg, tmp_path / "deit")
    model = DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "deit", local_files_only=True,
                                                                  attn_implementation="sdpa").eval()
    images = random_images(cfg, 2, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward(params, images, cfg), model(images).logits, **F64)
    cfg2, params2 = read_hf(tmp_path / "deit")
    assert cfg2 == cfg and all(torch.equal(params[k], params2[k]) for k in params) and sorted(params) == sorted(params2)


def test_convert_command_timm_to_transformers_to_timm(tmp_path, capsys):
    cfg = tiny()
    params = random_params(cfg)
    write_checkpoint(params, cfg, tmp_path / "deit.pth")
    heads = ["--num-heads", str(cfg.num_heads)]        # a timm state dict does not store it
    convert_main([str(tmp_path / "deit.pth"), str(tmp_path / "hf"), *heads])
    convert_main([str(tmp_path / "hf"), str(tmp_path / "back.safetensors")])     # config.json stores it
    assert "(timm) ->" in capsys.readouterr().out
    cfg2, params2, fmt = read_checkpoint(tmp_path / "back.safetensors", num_heads=cfg.num_heads)
    assert (cfg2, fmt) == (cfg, "timm") and all(torch.equal(params[k], params2[k]) for k in params)
    with pytest.raises(SystemExit) as e:       # the official format has no distillation token
        cli.run(convert_main, [str(tmp_path / "deit.pth"), str(tmp_path / "deit.npz"), *heads])
    assert e.value.code == 2 and "distilled: the official npz format cannot express distilled=True" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):            # a model name fixes the distillation token too
        cli.run(convert_main, [str(tmp_path / "deit.pth"), str(tmp_path / "x.pth"), "--model", "ViT-B/16"])
    assert not (tmp_path / "deit.npz").exists() and not (tmp_path / "x.pth").exists()


def test_verify_finds_equality_on_a_small_distilled_deit():
    cfg = dataclasses.replace(paper_config("DeiT-Ti⚗", num_classes=10), depth=1, image_size=32)
    row = verify_config(cfg, torch.float64)
    assert row["ours"] == row["timm"] == row["hf"] == param_count(cfg)
    for column in ("timm_logits", "timm_features", "hf_logits", "hf_features"):
        assert row[column][0] < 1e-10, column
