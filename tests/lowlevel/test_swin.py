"""The Swin Transformer of lowlevel/ equals timm's SwinTransformer and torchvision's SwinTransformer (swin_t/s/b)
holding the same weights, each computed with its own conventions: logits, pooled features, every block's attention
in every window, every stage's output, and the gradients w.r.t. the images and every parameter (float64, 1e-10).
Its pieces equal theirs; the conventions give different functions exactly where FAMILY.md §3.4 says; the fast path
computes the same function; the paper's models have timm's and torchvision's exact parameter counts."""
import dataclasses
import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowlevel import SwinConfig, swin
from lowlevel.relative_position import relative_position_bias, relative_position_index
from lowlevel.windows import shift_mask, window_partition, window_reverse
from paper.formats.huggingface_swin import TRANSFORMERS_CONVENTIONS, to_hf_swin
from paper.formats.timm_swin import TIMM_CONVENTIONS, to_timm_swin
from paper.formats.torchvision_swin import TORCHVISION_CONVENTIONS, to_torchvision_swin
from paper.models.swin_configs import swin_config
from paper.references.swin import hf_swin, timm_swin, torchvision_swin, with_weights
from tests.helpers import random_images, random_params, swin_configs

TINY = dict(dim=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4), num_classes=5)   # Swin-T's code paths, M = 7


def timm_twin(params: dict, cfg: SwinConfig):
    """timm's SwinTransformer holding our weights, float64, eval; model.recorded collects every block's attention
    probabilities (B·nW, heads, N, N) from timm's explicit attention, its default for Swin."""
    model = timm_swin(cfg).double().eval()
    model.load_state_dict(to_timm_swin(params, cfg))
    model.recorded = []
    for stage in model.layers:
        for block in stage.blocks:
            assert not block.attn.fused_attn
            block.attn.attn_drop.register_forward_hook(lambda mod, inp, out: model.recorded.append(out))
    return model


def torchvision_twin(params: dict, cfg: SwinConfig):
    model = torchvision_swin(cfg).double().eval()
    model.load_state_dict(to_torchvision_swin(params, cfg))
    return model


def torchvision_stages(model, images: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's `features` alternates stages and mergings: each stage's output is taken after the merging that
    closes it (the last stage has none)."""
    x, outs = model.features[0](images), []
    for i, layer in enumerate(model.features[1:], start=1):
        x = layer(x)
        if i % 2 == 0 or i == len(model.features) - 1:
            outs.append(x)
    return outs


def loss_weights(cfg: SwinConfig, batch: int) -> torch.Tensor:
    """A loss that touches every output: sum(logits · w)."""
    return torch.randn(batch, cfg.num_classes or cfg.num_features, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(11))


def assert_gradients_equal(params: dict, cfg: SwinConfig, images: torch.Tensor, model, to_format) -> None:
    """d loss / d images and d loss / d every parameter, ours against `model`'s, mapped by `to_format`."""
    params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    images, images_ref = images.clone().requires_grad_(True), images.clone().requires_grad_(True)
    w = loss_weights(cfg, images.shape[0])
    (swin.forward(params, images, cfg) * w).sum().backward()
    out = model(images_ref)
    (getattr(out, "logits", out) * w).sum().backward()                   # transformers returns an output object
    torch.testing.assert_close(images.grad, images_ref.grad, rtol=0, atol=1e-10)
    ref = dict(model.named_parameters())
    grads = to_format({k: v.grad for k, v in params.items()}, cfg)
    assert set(ref) <= set(grads)
    for key in ref:
        torch.testing.assert_close(grads[key], ref[key].grad, rtol=0, atol=1e-10, msg=key)


@given(swin_configs(TIMM_CONVENTIONS), st.integers(1, 2))
def test_forward_attention_and_stages_equal_timm(cfg, batch):
    params = random_params(cfg, seed=batch)
    images = random_images(cfg, batch, seed=batch)
    model = timm_twin(params, cfg)
    with torch.no_grad():
        logits, out = swin.forward_intermediates(params, images, cfg)
        ref = model(images)
        ref_features = model.forward_head(model.forward_features(images), pre_logits=True)
        _, ref_stages = model.forward_intermediates(images)                      # NCHW, after each stage's blocks
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(out["features"], ref_features, rtol=0, atol=1e-10)
    for ours, theirs in zip(out["stages"], ref_stages, strict=True):
        torch.testing.assert_close(ours, theirs.permute(0, 2, 3, 1), rtol=0, atol=1e-10)
    assert len(out["attention"]) == cfg.depth and len(out["hidden"]) == cfg.depth + 1
    for ours, theirs in zip(out["attention"], model.recorded[:cfg.depth], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


@given(swin_configs(TIMM_CONVENTIONS, max_stages=2), st.integers(1, 2))
def test_gradients_equal_timm(cfg, batch):
    params = random_params(cfg, seed=3)
    assert_gradients_equal(params, cfg, random_images(cfg, batch, seed=4), timm_twin(params, cfg), to_timm_swin)


@given(swin_configs(TORCHVISION_CONVENTIONS, torchvision=True), st.integers(1, 2))
def test_forward_stages_and_gradients_equal_torchvision(cfg, batch):
    params = random_params(cfg, seed=batch)
    images = random_images(cfg, batch, seed=batch)
    model = torchvision_twin(params, cfg)
    with torch.no_grad():
        logits, out = swin.forward_intermediates(params, images, cfg)
        ref = model(images)
        ref_stages = torchvision_stages(model, images)
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-10)
    for ours, theirs in zip(out["stages"], ref_stages, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    assert_gradients_equal(params, cfg, images, model, to_torchvision_swin)


@pytest.mark.slow
def test_swin_t_at_224_equals_timm_and_torchvision():
    """The whole Swin-T (28,288,354 parameters) at 224 px, float64: at this size every stage is whole 7×7 windows,
    so timm's and torchvision's conventions agree and one set of weights gives the three of us the same logits."""
    cfg = swin_config("Swin-T")
    params = random_params(cfg, seed=0)
    images = random_images(cfg, 1, seed=0)
    with torch.no_grad():
        logits = swin.forward(params, images, cfg)
        assert logits.abs().max() > 0.1                                  # not a trivially small output
        for reference, to_format in ((timm_swin, to_timm_swin), (torchvision_swin, to_torchvision_swin)):
            model = with_weights(reference, cfg, to_format(params, cfg))    # no time spent initialising 28M weights
            torch.testing.assert_close(logits, model(images), rtol=0, atol=1e-10)


CONVENTIONS = ((TIMM_CONVENTIONS, timm_swin, to_timm_swin), (TORCHVISION_CONVENTIONS, torchvision_swin,
                                                                  to_torchvision_swin),
               (TRANSFORMERS_CONVENTIONS, hf_swin, to_hf_swin))


@pytest.mark.parametrize("size", [64, (56, 80)])
def test_where_the_codes_differ_each_convention_equals_its_original(size):
    """Swin's code paths with M = 7 (two stages of two blocks) at sizes where the three codes compute three
    functions. 64 px: the 16×16 and 8×8 stages are padded to whole windows, and timm rolls before padding, the others
    after (FAMILY.md §3.6 measured 1.4e-2 between timm and torchvision on Swin-T at 256 px, the same mechanism).
    56×80: the last stage is 7×10; timm and torchvision shift its windows along the 10 side, transformers (like the
    original) along neither. Each of ours equals its original; they differ from each other by far more than
    rounding."""
    logits = []
    for conventions, reference, to_format in CONVENTIONS:
        cfg = SwinConfig(image_size=size, dim=12, depths=(2, 2), num_heads=(1, 2), num_classes=5, **conventions)
        params = random_params(cfg, seed=0, scale=0.2)
        images = random_images(cfg, 2, seed=0)
        model = reference(cfg).double().eval()
        model.load_state_dict(to_format(params, cfg))
        with torch.no_grad():
            ours, ref = swin.forward(params, images, cfg), model(images)
        torch.testing.assert_close(ours, getattr(ref, "logits", ref), rtol=0, atol=1e-10)
        logits.append(ours)
    differences = [(a - b).abs().max() for k, a in enumerate(logits) for b in logits[k + 1:]]
    if size == 64:                                          # transformers and torchvision both pad, then roll
        assert differences[0] > 1e-3 and differences[1] > 1e-3 and differences[2] < 1e-10
    else:
        assert min(differences) > 1e-3


def test_small_window_conventions_shrink_or_pad():
    """At a stage no larger than M: timm shrinks the window to the side along that axis (so its relative-position
    table shrinks), torchvision keeps M and pads, the original shrinks both axes to the shorter side."""
    size = (5, 10)                                                                # a 5×10 stage, M = 7
    for small_window, window, shift in (("shrink", (5, 7), (0, 3)), ("pad", (7, 7), (0, 3)),
                                        ("shrink_min", (5, 5), (0, 0))):
        cfg = SwinConfig(small_window=small_window)
        assert cfg.window_and_shift(size, shifted=True) == (window, shift)
    cfg = SwinConfig(image_size=160, **TINY)                                    # last stage 5×5
    assert swin.param_shapes(cfg)["stages.3.blocks.0.relative_position_bias_table"] == (81, 4)
    assert swin.param_shapes(dataclasses.replace(cfg, small_window="pad"))[
        "stages.3.blocks.0.relative_position_bias_table"] == (169, 4)


def test_merge_position_moves_the_merging_not_the_function():
    cfg = SwinConfig(image_size=(56, 84), **TINY)
    end = dataclasses.replace(cfg, merge_position="end")
    params = random_params(cfg, seed=1)
    moved = {k.replace("stages.1.merge", "stages.0.merge").replace("stages.2.merge", "stages.1.merge")
             .replace("stages.3.merge", "stages.2.merge"): v for k, v in params.items()}
    assert moved.keys() == swin.param_shapes(end).keys()
    images = random_images(cfg, 1, seed=1)
    logits, out = swin.forward_intermediates(params, images, cfg)
    logits_end, out_end = swin.forward_intermediates(moved, images, end)
    assert torch.equal(logits, logits_end)
    assert [s.shape[1:3] for s in out["stages"]] == [(14, 21), (7, 11), (4, 6), (2, 3)]      # before the next merge
    assert [s.shape[1:3] for s in out_end["stages"]] == [(7, 11), (4, 6), (2, 3), (2, 3)]    # after this one


@pytest.mark.parametrize("name, timm_name, tv_name, count", [
    ("Swin-T", "swin_tiny_patch4_window7_224", "swin_t", 28_288_354),
    ("Swin-S", "swin_small_patch4_window7_224", "swin_s", 49_606_258),
    ("Swin-B", "swin_base_patch4_window7_224", "swin_b", 87_768_224),
    ("swin_base_patch4_window12_384", "swin_base_patch4_window12_384", None, None)])
def test_parameter_counts_equal_timm_and_torchvision(name, timm_name, tv_name, count):
    """Counted on the meta device: nothing is allocated. The counts are the torchvision weights' own meta
    (`num_params`, 28,288,354 for Swin-T) and paper Table 1's 29M, 50M, 88M rounded."""
    import timm
    import torchvision
    ours = sum(math.prod(s) for s in swin.param_shapes(swin_config(name)).values())
    with torch.device("meta"):
        assert ours == sum(p.numel() for p in timm.create_model(timm_name).parameters())
        if tv_name:
            assert ours == count == sum(p.numel() for p in getattr(torchvision.models, tv_name)().parameters())
    if tv_name:
        assert getattr(torchvision.models, f"Swin_{tv_name[-1].upper()}_Weights").IMAGENET1K_V1.meta["num_params"] == count


@pytest.mark.parametrize("window", [(7, 7), (3, 5), (1, 4)])
def test_relative_position_index_equals_timm_and_torchvision(window):
    from timm.models.swin_transformer import get_relative_position_index
    from torchvision.models.swin_transformer import ShiftedWindowAttention
    ours = relative_position_index(window)
    assert torch.equal(ours, get_relative_position_index(*window))
    tv = ShiftedWindowAttention(8, list(window), [0, 0], num_heads=2)
    assert torch.equal(ours.flatten(), tv.relative_position_index)
    assert torch.equal(relative_position_bias(tv.relative_position_bias_table, window)[None],
                       tv.get_relative_position_bias())


def test_relative_position_index_reads_query_minus_key():
    """Swin §3.2's B̂ indexed by (Δh + M − 1, Δw + M − 1), Δ = query − key; tokens row-major in a 7×7 window."""
    index = relative_position_index((7, 7)).view(49, 49)
    assert index[0, 48] == 0                   # query (0, 0), key (6, 6): Δ = (−6, −6), B̂'s first row
    assert index[48, 0] == 168                 # Δ = (6, 6), the last row
    assert (index.diagonal() == 84).all()      # Δ = (0, 0), the centre of the 13 × 13 table
    assert index[0, 1] == 83                   # key one to the right: Δw = −1


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3))
def test_window_partition_and_reverse_equal_timm(rows, cols, mh, mw, batch):
    from timm.models.swin_transformer import window_partition as timm_partition
    from timm.models.swin_transformer import window_reverse as timm_reverse
    x = torch.randn(batch, rows * mh, cols * mw, 5)
    windows = window_partition(x, (mh, mw))
    assert torch.equal(windows, timm_partition(x, (mh, mw)))
    assert torch.equal(window_reverse(windows, x.shape[1:3]), x)
    assert torch.equal(timm_reverse(windows, (mh, mw), *x.shape[1:3]), x)


@pytest.mark.parametrize("resolution, window, shift", [((14, 14), 7, 3), ((8, 12), 4, 2), ((9, 6), 3, 1), ((5, 7), 7, 3)])
def test_shift_mask_equals_timm(resolution, window, shift):
    """timm precomputes each shifted block's mask (`attn_mask`, 0 or −100) for its padded map; so do we."""
    from timm.models.swin_transformer import SwinTransformerBlock
    block = SwinTransformerBlock(dim=4, input_resolution=resolution, num_heads=1, window_size=window,
                                 shift_size=shift, always_partition=True)
    padded = tuple(-(-r // window) * window for r in resolution)
    assert torch.equal(shift_mask(padded, (window, window), (shift, shift)), block.attn_mask)


@given(st.integers(1, 7), st.integers(1, 7), st.integers(1, 2))
def test_patch_merging_equals_timm_and_torchvision(h, w, batch):
    """Odd sides included: every implementation pads them by one and concatenates in the same order."""
    from timm.models.swin_transformer import PatchMerging as TimmMerging
    from torchvision.models.swin_transformer import PatchMerging as TorchvisionMerging
    cfg = SwinConfig(dim=6, depths=(1, 1), num_heads=(1, 1))
    params = {k.removeprefix("stages.1.merge."): v for k, v in random_params(cfg, seed=h + w).items()
              if k.startswith("stages.1.merge.")}
    x = torch.randn(batch, h, w, 6, dtype=torch.float64)
    ours = swin.patch_merging(params, x, cfg)
    for reference in (TimmMerging(6), TorchvisionMerging(6)):
        reference = reference.double()
        reference.load_state_dict(params)
        with torch.no_grad():
            torch.testing.assert_close(ours, reference(x), rtol=0, atol=1e-12)


@given(st.sampled_from([TIMM_CONVENTIONS, TORCHVISION_CONVENTIONS]).flatmap(swin_configs), st.integers(1, 2))
def test_fast_path_equals_explicit_values_and_gradients(cfg, batch):
    """Fused window attention with the bias as its mask, the projection after the windows are put back: the same
    function, to rounding, in both conventions."""
    grads, outs = [], []
    for fast in (False, True):
        params = {k: v.requires_grad_(True) for k, v in random_params(cfg, seed=5).items()}
        images = random_images(cfg, batch, seed=6).requires_grad_(True)
        out = swin.forward(params, images, cfg, fast=fast)
        (out * loss_weights(cfg, batch)).sum().backward()
        outs.append(out.detach())
        grads.append({"images": images.grad, **{k: v.grad for k, v in params.items()}})
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-10)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("reference", ["timm", "torchvision"])
def test_stochastic_depth_draws_timms_and_torchvisions_masks(reference):
    """In training, with stochastic depth at rate 0.5, the explicit and fast paths and timm's or torchvision's model
    under the same seed drop the same residual branches: one Bernoulli draw per image and branch, in block order.
    Five blocks, so that the rates 0, 1/8, …, 1/2 are exact in the float32 torch.linspace timm takes them from."""
    conventions = TIMM_CONVENTIONS if reference == "timm" else TORCHVISION_CONVENTIONS
    cfg = SwinConfig(image_size=(32, 40), dim=12, depths=(2, 3), num_heads=(1, 2), window_size=4, num_classes=5,
                     drop_path=0.5, **conventions)
    params = random_params(cfg, seed=2)
    images = random_images(cfg, 4, seed=2)
    model = timm_twin(params, cfg) if reference == "timm" else torchvision_twin(params, cfg)
    model.train()
    outs = []
    for run in (swin.forward, functools.partial(swin.forward, fast=True), None):
        torch.manual_seed(0)
        with torch.no_grad():
            outs.append(model(images) if run is None else run(params, images, cfg, train=True))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(outs[2], outs[0], rtol=0, atol=1e-10)
    assert not torch.allclose(outs[0], swin.forward(params, images, cfg))       # the branches were dropped


def test_bad_images_and_configs_raise_errors_naming_the_field():
    cfg = SwinConfig(image_size=32, **TINY)
    with pytest.raises(ValueError, match=r"images: expected height and width \(32, 32\) \(cfg.image_size\), got \(32, 36\)"):
        swin.forward(swin.init_params(cfg), torch.zeros(1, 3, 32, 36), cfg)
    params, images = swin.init_params(cfg), torch.zeros(1, 3, 32, 32)
    # params checked as the ViT's are
    for run in (swin.forward, swin.forward_intermediates, functools.partial(swin.forward, fast=True)):
        with pytest.raises(ValueError, match=r"missing key: head.weight"):
            run({k: v for k, v in params.items() if k != "head.weight"}, images, cfg)
        with pytest.raises(ValueError, match=r"params: expected every tensor on the images' device and dtype"):
            run(params, images.double(), cfg)
    with pytest.raises(ValueError, match=r"num_heads: expected stage 1's count to divide its width 24, got 5"):
        SwinConfig(num_heads=(3, 5, 12, 24), dim=12)
    with pytest.raises(ValueError, match=r"num_heads: expected one head count per stage \(4 stages\), got \(3, 6\)"):
        SwinConfig(num_heads=(3, 6))
    with pytest.raises(ValueError, match=r"padding: expected one of \('after_shift', 'before_shift'\), got 'none'"):
        SwinConfig(padding="none")
    for field, value, message in (("dim", 96.0, r"dim: expected a positive integer, got 96.0"),
                                  ("depths", (2, 2, 6.0, 2), r"depths: expected one positive block count per stage"),
                                  ("depths", 3, r"depths: expected one integer per stage, got 3"),
                                  ("image_size", True, r"image_size: expected an integer or \(height, width\)"),
                                  ("layer_norm_eps", 0, r"layer_norm_eps: expected a finite number > 0, got 0"),
                                  ("qkv_bias", 1, r"qkv_bias: expected True or False, got 1")):
        with pytest.raises(ValueError, match=message):                # as ViTConfig refuses them
            SwinConfig(**{field: value})
    with pytest.raises(ValueError, match=r"table: expected 169 rows for window \(7, 7\), got shape \(81, 3\)"):
        relative_position_bias(torch.zeros(81, 3), (7, 7))


def test_benchmark_flop_count_equals_pytorchs_count_of_the_executed_operations():
    """The benchmark's analytic Swin FLOPs equal torch.utils.flop_counter's count of the matmuls each path runs, on
    Swin-T's code paths at 256 px, where every stage is padded to whole windows and the fast path, projecting after
    the crop, does less. Swin-T at 224 counts 4.49 GMACs: paper Table 1's "4.5G FLOPs" counts multiply-adds."""
    from torch.utils.flop_counter import FlopCounterMode

    from paper.reports import measure
    from paper.reports.contenders import build
    from tests.lowlevel.test_fast_path import FLOP_FORMULAS
    cfg = SwinConfig(image_size=256, **TINY)
    images = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    weights = random_params(cfg, dtype=torch.float32)
    for name in ("ours explicit", "ours fast"):
        contender = build(name, weights, cfg, dtype=torch.float32, device="cpu")
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
            contender.infer(images)
        assert counter.get_total_flops() == measure.executed_flops(name, cfg), name
    assert measure.executed_flops("ours fast", cfg) < measure.executed_flops("ours explicit", cfg)
    assert round(measure.forward_flops(swin_config("Swin-T")) / 2e9, 1) == 4.5        # Table 1: "4.5G" FLOPs


def hf_twin(params: dict, cfg: SwinConfig):
    """transformers' SwinForImageClassification holding our weights, float64, eval."""
    model = hf_swin(cfg).double().eval()
    model.load_state_dict(to_hf_swin(params, cfg))
    return model


@given(swin_configs(TRANSFORMERS_CONVENTIONS, transformers=True), st.integers(1, 2))
def test_forward_attention_and_gradients_equal_transformers(cfg, batch):
    """transformers computes the original's conventions: a stage no larger than the window gets one window of its
    shorter side and no shift along either axis ("shrink_min")."""
    params = random_params(cfg, seed=batch)
    images = random_images(cfg, batch, seed=batch)
    model = hf_twin(params, cfg)
    with torch.no_grad():
        logits, out = swin.forward_intermediates(params, images, cfg)
        torch.testing.assert_close(logits, model(images).logits, rtol=0, atol=1e-10)
        model.set_attn_implementation("eager")                                # the one that returns probabilities
        attentions = model(images, output_attentions=True).attentions        # each stage's last block's
    assert len(attentions) == cfg.num_stages
    for s, theirs in enumerate(attentions):
        # transformers' eager attention takes its softmax in float32 (eager_attention_forward, dtype=torch.float32):
        # its probabilities carry float32 rounding, ~6e-8 relative, whatever the model's dtype
        torch.testing.assert_close(out["attention"][sum(cfg.depths[:s + 1]) - 1], theirs, rtol=0, atol=1e-6)
    model.set_attn_implementation("sdpa")
    assert_gradients_equal(params, cfg, images, model, to_hf_swin)


def test_bench_report_growth_slopes():
    """The sweep's growth table: time against pixels on log-log axes, slope 1 for cost linear in the tokens and 2 for
    quadratic; one row per model and attention path, from its smallest image to its largest."""
    from paper.reports.bench_report import growth

    def point(model, side, seconds):
        return {"model": model, "image_size": [side, side],
                "contenders": {"ours fast": {"infer_s": [seconds], "train_s": [3 * seconds]}}}
    sweep = [point("ViT", 224, 1.0), point("ViT", 448, 16.0), point("Swin", 224, 1.0), point("Swin", 448, 4.0)]
    assert growth(sweep)[3:] == ["| ViT | ours fast | 4.0 | 16.0× (2.00) | 16.0× (2.00) |",
                                 "| Swin | ours fast | 4.0 | 4.0× (1.00) | 4.0× (1.00) |"]
