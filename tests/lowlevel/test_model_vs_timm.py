"""The whole model, eqs. (1)-(4), equals timm's VisionTransformer holding the same weights: logits, pre-logit
features, every layer's attention probabilities, and the gradients w.r.t. the input and every parameter."""
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowlevel import forward, forward_intermediates
from paper.formats.timm import to_timm
from paper.models.family import paper_config
from tests.helpers import random_images, random_params, timm_twin, vit_configs


@given(vit_configs(), st.integers(1, 3))
def test_forward_equals_timm(cfg, batch):
    params = random_params(cfg, seed=batch)
    images = random_images(cfg, batch, seed=batch)
    model = timm_twin(params, cfg)
    with torch.no_grad():
        logits, out = forward_intermediates(params, images, cfg)
        ref_logits = model(images)
        ref_features = model.forward_head(model.forward_features(images), pre_logits=True)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(out["features"], ref_features, rtol=0, atol=1e-10)
    assert len(out["attention"]) == cfg.depth == len(model.recorded) // 2   # timm ran twice above
    for ours, ref in zip(out["attention"], model.recorded[:cfg.depth], strict=True):
        assert ours.shape == (batch, cfg.num_heads, cfg.num_tokens, cfg.num_tokens)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    assert len(out["hidden"]) == cfg.depth + 1


@given(vit_configs(max_depth=2), st.integers(1, 2))
def test_gradients_equal_timm(cfg, batch):
    """Backward equivalence: d loss / d input and d loss / d every parameter."""
    params = {k: v.requires_grad_(True) for k, v in random_params(cfg, seed=7).items()}
    model = timm_twin({k: v.detach() for k, v in params.items()}, cfg)
    images = random_images(cfg, batch, seed=3).requires_grad_(True)
    images_ref = images.detach().clone().requires_grad_(True)
    weights = torch.randn(batch, cfg.num_classes or cfg.dim, dtype=torch.float64)  # a loss touching every output
    (forward(params, images, cfg) * weights).sum().backward()
    (model(images_ref) * weights).sum().backward()
    torch.testing.assert_close(images.grad, images_ref.grad, rtol=0, atol=1e-10)
    ref_grads = {name: p.grad for name, p in model.named_parameters()}
    for key, grad in to_timm({k: v.grad for k, v in params.items()}, cfg).items():
        torch.testing.assert_close(grad, ref_grads[key], rtol=0, atol=1e-10, msg=key)


def test_vit_b16_equals_timm_float64_and_float32():
    """ViT-B/16 at 224 with random weights. float64 agrees to ~1e-13. In float32 the two sum 768-wide dot products
    in different orders (timm scales q before QKᵀ, we scale the scores; conv vs unfold+matmul in the patch
    embedding), so each of the 12 blocks adds ~1e-6 of rounding; 1e-4 on logits of size ~1 is what independent
    implementations agree to (Hugging Face's own ViT integration test uses 1e-4)."""
    cfg = paper_config("ViT-B/16")
    params = random_params(cfg, seed=0)
    images = random_images(cfg, 1, seed=0)
    for dtype, atol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        p = {k: v.to(dtype) for k, v in params.items()}
        model = timm_twin(p, cfg, dtype)
        with torch.no_grad():
            logits, out = forward_intermediates(p, images.to(dtype), cfg)
            ref = model(images.to(dtype))
        assert logits.abs().max() > 0.1                              # not a trivially zero output
        torch.testing.assert_close(logits, ref, rtol=0, atol=atol)
        torch.testing.assert_close(out["attention"][-1], model.recorded[-1], rtol=0, atol=atol / 10)
