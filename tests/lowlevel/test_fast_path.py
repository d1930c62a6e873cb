"""The fast path (lowlevel/fast.py) computes the same function as the explicit one, and as timm's fused-attention
model: logits, gradients, dropout masks; it compiles with torch.compile. The benchmark command runs end to end."""
import dataclasses
import functools
import json
import shutil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from lowlevel import ViTConfig, forward
from paper import bench
from paper.formats.timm import to_timm
from paper.models.explicit_params import ExplicitParams
from paper.models.family import paper_config
from paper.references.vit import timm_vit
from paper.reports import measure
from paper.reports.contenders import build
from tests.helpers import random_images, random_params, vit_configs


def timm_fused(params: dict, cfg: ViTConfig):
    """timm's VisionTransformer with its default fused attention (F.scaled_dot_product_attention), float64."""
    model = timm_vit(cfg).to(torch.float64).eval()
    model.load_state_dict(to_timm(params, cfg))
    assert all(block.attn.fused_attn for block in model.blocks)
    return model


@given(vit_configs(), st.integers(1, 3))
def test_fast_path_equals_explicit_and_timm(cfg, batch):
    """float64: the rearrangements change only rounding, ~1e-16 per operation."""
    params = random_params(cfg, seed=batch)
    images = random_images(cfg, batch, seed=batch)
    with torch.no_grad():
        fast = forward(params, images, cfg, fast=True)
        explicit = forward(params, images, cfg)
        ref = timm_fused(params, cfg)(images)
    assert fast.shape == explicit.shape == (batch, cfg.num_classes or cfg.dim)
    torch.testing.assert_close(fast, explicit, rtol=0, atol=1e-10)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-10)


@given(vit_configs(max_depth=2), st.integers(1, 2))
def test_fast_gradients_equal_explicit(cfg, batch):
    """d loss / d images and d loss / d every parameter, through the fused kernel's backward and the in-place GEMM."""
    grads = []
    for fast in (False, True):
        params = {k: v.requires_grad_(True) for k, v in random_params(cfg, seed=5).items()}
        images = random_images(cfg, batch, seed=6).requires_grad_(True)
        weights = torch.randn(batch, cfg.num_classes or cfg.dim, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(7))     # a loss touching every output
        (forward(params, images, cfg, fast=fast) * weights).sum().backward()
        grads.append({"images": images.grad, **{k: v.grad for k, v in params.items()}})
    explicit, fast = grads
    assert explicit.keys() == fast.keys()
    for name in explicit:
        assert fast[name] is not None, name
        torch.testing.assert_close(fast[name], explicit[name], rtol=0, atol=1e-10, msg=name)


def bf16_step(model, images: torch.Tensor, labels: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, dict]:
    """Logits and every parameter's gradient (by the model's names) of one cross-entropy step, under bf16 autocast or
    not."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(images)
    torch.nn.functional.cross_entropy(logits.float(), labels).backward()
    return logits.detach().float(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_bf16_autocast_training_step_equals_explicit_and_is_as_exact_as_timm():
    """Under bfloat16 autocast (paper.train --bf16, the benchmark's --bf16) the fast path computes attention as the
    explicit path does on the CPU (the fused kernel is slow there, lowlevel/fast.py): attention's two products in
    bfloat16, the softmax, LayerNorm and the residual stream in float32. The logits come out the same; the gradients
    sum some products in another order (the last block's rows), and bfloat16 keeps 8 significant bits, so they agree
    to 2% of each tensor's largest entry. Against timm's fused-attention model under autocast, whose kernel rounds
    otherwise, the check is one of precision: our step is as far from the float32 step as timm's is, within four times,
    for the logits and every gradient (1.5 times in the median gradient here)."""
    cfg = ViTConfig(image_size=28, patch_size=4, in_channels=1, dim=64, depth=2, num_heads=4, mlp_dim=128,
                    num_classes=10)
    params = random_params(cfg, seed=3, dtype=torch.float32, scale=0.3)
    images, labels = random_images(cfg, 8, seed=4, dtype=torch.float32), torch.arange(8) % 10
    timm_model = timm_vit(cfg).train()
    timm_model.load_state_dict(to_timm(params, cfg))
    def timm_names(grads: dict) -> dict:              # ExplicitParams' 'params.blocks/0/qkv/weight' as timm names it
        return to_timm({k.removeprefix("params.").replace("/", "."): g for k, g in grads.items()}, cfg)

    runs = {}
    for name, model, named in [("timm", timm_model, dict), ("fast", ExplicitParams(params, cfg, fast=True), timm_names),
                               ("explicit", ExplicitParams(params, cfg), timm_names)]:
        for bf16 in (False, True):
            logits, grads = bf16_step(model.train(), images, labels, bf16)
            runs[name, bf16] = logits, named(grads)
    (timm, timm_grads), (fast, fast_grads) = runs["timm", True], runs["fast", True]
    exact, exact_grads = runs["explicit", False]
    explicit, explicit_grads = runs["explicit", True]
    torch.testing.assert_close(fast, explicit, rtol=0, atol=1e-3 * explicit.abs().max().item())
    for name, grad in explicit_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=0, atol=2e-2 * grad.abs().max().item(), msg=name)
    assert (explicit - exact).abs().max() <= 4 * (timm - exact).abs().max()
    for name, grad in exact_grads.items():
        assert (explicit_grads[name] - grad).abs().max() <= 4 * (timm_grads[name] - grad).abs().max(), name


@given(st.integers(0, 2 ** 16))
def test_fast_dropout_draws_the_same_masks(seed):
    """With dropout on, both paths draw their masks in the same order, so under one seed they agree exactly up to
    rounding; a dropout placed elsewhere or skipped would change the result by O(1)."""
    cfg = ViTConfig(image_size=8, patch_size=4, dim=16, depth=2, num_heads=2, mlp_dim=24, num_classes=3, dropout=0.3)
    params = random_params(cfg, seed=0)
    images = random_images(cfg, 2, seed=1)
    out = []
    for fast in (False, True):
        torch.manual_seed(seed)
        out.append(forward(params, images, cfg, train=True, fast=fast))
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=1e-10)
    torch.manual_seed(seed)
    assert not torch.allclose(forward(params, images, cfg, fast=True), out[1])   # dropout did act


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None,
                    reason="torch.compile's CPU backend (inductor) needs a C++ compiler; none on PATH")
def test_compiled_forward_and_backward_equal_eager():
    """torch.compile (inductor) of the fast forward, and through AOTAutograd of its backward, on a small float32
    model: the in-place GEMM and the fused kernel trace and compile. Inductor fuses and reorders float32
    arithmetic, so results agree to float32 rounding over two layers with values ~1: 1e-5. (The cold compile takes
    about half a minute on two cores, so the explicit path, plain tensor operations, is not compiled here.)"""
    cfg = ViTConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=4, mlp_dim=64, num_classes=5)
    params = {k: v.float().requires_grad_(True) for k, v in random_params(cfg, seed=0).items()}
    images = random_images(cfg, 2, seed=1, dtype=torch.float32)
    labels = torch.tensor([1, 4])
    torch._dynamo.reset()
    eager = functools.partial(forward, fast=True)
    compiled = torch.compile(eager)
    results = []
    for run in (eager, compiled):
        logits = run(params, images, cfg, train=True)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, list(params.values()))
        results.append((logits.detach(), grads))
    (eager, eager_grads), (comp, comp_grads) = results
    assert eager.abs().max() > 1e-3
    torch.testing.assert_close(comp, eager, rtol=0, atol=1e-5)
    for name, a, b in zip(params, comp_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


# PyTorch's FLOP counter knows neither the in-place GEMM nor the CPU flash-attention kernel: give them the formulas
# it uses for their out-of-place and GPU counterparts.
FLOP_FORMULAS = {torch.ops.aten.addmm_: flop_registry[torch.ops.aten.addmm].__wrapped__,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                 flop_registry[torch.ops.aten._scaled_dot_product_flash_attention].__wrapped__}


@pytest.mark.parametrize("resolution", [224, 384])
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_flop_count_equals_pytorchs_count_of_the_executed_operations(resolution, pool):
    """The benchmark's analytic FLOPs (ViT-B/16: 17.564 GMACs at 224, 55.484 at 384) equal what
    torch.utils.flop_counter counts over the matmuls each contender really runs, the fast path's skipped work
    included (with class-token pooling its last block computes the class token alone: 1.215 GMACs fewer at 224)."""
    cfg = paper_config("ViT-B/16", image_size=resolution, pool=pool)
    images = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    for name in ("ours explicit", "ours fast", "timm"):
        contender = build(name, measure.weights(cfg), cfg, dtype=torch.float32, device="cpu")
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
            contender.infer(images)
        assert counter.get_total_flops() == measure.executed_flops(name, cfg), name
    fast_saves = measure.forward_flops(cfg) - measure.vit_forward_flops(cfg, class_token_only=True)
    assert (fast_saves if pool == "token" else 0) == measure.forward_flops(cfg) - measure.executed_flops("ours fast", cfg)


@pytest.mark.slow
def test_bench_command_runs_and_contenders_agree(tmp_path):
    """The command end to end on a tiny model, one round: JSON, table and chart written; ours and timm hold the same
    weights, so their float32 logits agree to rounding; the sweep ran both attention paths."""
    result = bench.main(["--model", "ViT-Ti/16", "--resolution", "32", "--batch", "2", "--repeats", "1",
                         "--only", "ours fast,timm", "--sweep", "16", "--no-memory", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["main"]["contenders"].keys() == {"ours fast", "timm"}
    for c in saved["main"]["contenders"].values():
        assert c["infer_images_per_s"] > 0 and c["train_images_per_s"] > 0
        assert c["max_abs_logit"] > 1e-2 and c["max_abs_logit_diff_vs_first"] < 1e-5
        assert c["saved_activations_mib"] > 0
        assert c["vs_timm"]["infer"]["median"] > 0
        assert len(c["matmul_peak_gflops"]) == 1                              # one peak, timed before each call
        assert c["infer_fraction_of_peak"]["median"] >= c["infer_fraction_of_run_peak"] > 0
    assert saved["main"]["contenders"]["timm"]["vs_timm"]["train"]["median"] == 1.0
    assert [list(p["contenders"]) for p in saved["sweep"]] == [["ours explicit", "ours fast"]]
    assert saved["sweep"][0]["tokens"] == 2                                   # 16 px: one patch and the class token
    table = (tmp_path / "bench.md").read_text()
    assert "| ours fast |" in table and "| timm |" in table and "| 16 | 2 | ours explicit |" in table
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["run"]["batch"] == 2


def test_fast_path_saves_fewer_activations_than_timm():
    """ViT-B/16: the tensors kept for the backward. Per layer the explicit path keeps the (B, H, N, N)
    probabilities and the fused kernel only their log-normaliser (B, H, N); with average pooling, which reads every
    token, nothing else differs. With the paper's class-token pooling the fast path also skips the last block's
    patch-token work, and keeps less than timm (which normalises every token before taking the class token)."""
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    def saved(name, cfg):
        return measure.activation_bytes(build(name, measure.weights(cfg), cfg, dtype=torch.float32, device="cpu"), images)

    cfg = paper_config("ViT-B/16")
    avg = dataclasses.replace(cfg, pool="avg")
    probabilities, logsumexp = (cfg.depth * cfg.num_heads * cfg.num_tokens ** k * 4 for k in (2, 1))
    assert saved("ours explicit", avg) - saved("ours fast", avg) == probabilities - logsumexp
    fast = saved("ours fast", cfg)
    assert fast < saved("ours fast", avg) and fast < saved("timm", cfg)


@pytest.mark.slow
def test_training_memory_counts_gradients_and_momentum():
    """Measured in a fresh process, a training step's memory must hold at least the gradients and SGD's momentum
    buffers, each as large as the parameters; and it is not wildly more for a model this small."""
    cfg = paper_config("ViT-Ti/16", image_size=32)
    param_bytes = 4 * sum(v.numel() for v in measure.weights(cfg).values())
    measured = measure.training_memory("ours fast", cfg, 2, torch.float32, "cpu", threads=1, compile=False)
    assert 2 * param_bytes <= measured <= 2 * param_bytes + 100 * measure.MIB


def test_bench_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--only"):
        bench.main(["--only", "timm,mine", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--batch"):
        bench.main(["--batch", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--sweep"):
        bench.main(["--sweep", "224,big", "--out", str(tmp_path)])
