"""`forward`, explicit and with `fast=True`, is a pure function of (params, images), so torch.func's transforms apply
to it directly: per-sample gradients (vmap of grad), ensembles (vmap over stacked params), forward-mode jvp and
Hessian-vector products. Each is checked in float64 against a computation that does not use torch.func: a Python
loop, or torch.autograd.functional (reverse-mode double backward). And `functional_call` of timm's module with our
converted params equals ours."""
import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from lowlevel import ViTConfig, forward
from paper.formats.timm import to_timm
from paper.references.vit import timm_vit
from tests.helpers import random_images, random_params

CFGS = [ViTConfig(image_size=8, patch_size=4, dim=16, depth=2, num_heads=2, mlp_dim=24, num_classes=3),
        ViTConfig(image_size=(8, 12), patch_size=4, in_channels=1, dim=12, depth=1, num_heads=3, mlp_dim=8,
                  num_classes=4, pool="avg", class_token=False, gelu="tanh")]
PATHS = {"explicit": forward, "fast": functools.partial(forward, fast=True)}


@pytest.fixture(autouse=True)
def quiet_fallback():
    """vmap of the fused CPU attention kernel falls back to a loop (no batching rule in torch 2.14) and warns."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        yield


def loss_fn(model, cfg):
    """Cross-entropy of one image and its label, as a function of (params, image (C, H, W), label ())."""
    return lambda params, image, label: F.cross_entropy(model(params, image[None], cfg), label[None])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cfg", CFGS, ids=["token", "avg"])
def test_per_sample_gradients_equal_a_loop_over_samples(cfg, path):
    params, images = random_params(cfg, seed=0), random_images(cfg, 5, seed=1)
    labels = torch.arange(5) % cfg.num_classes
    loss = loss_fn(PATHS[path], cfg)
    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, images, labels)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    for i in range(len(labels)):
        expected = torch.autograd.grad(loss(leaves, images[i], labels[i]), list(leaves.values()))
        for name, g in zip(leaves, expected, strict=True):
            torch.testing.assert_close(per_sample[name][i], g, rtol=0, atol=1e-10, msg=f"{name}, sample {i}")


@pytest.mark.parametrize("path", PATHS)
def test_an_ensemble_by_vmap_over_stacked_params_equals_a_loop_over_models(path):
    cfg = CFGS[0]
    members = [random_params(cfg, seed=s) for s in range(3)]
    stacked = {k: torch.stack([m[k] for m in members]) for k in members[0]}
    images = random_images(cfg, 2, seed=9)
    model = functools.partial(PATHS[path], cfg=cfg)
    together = vmap(model, in_dims=(0, None))(stacked, images)            # (M, B, K)
    for m, params in enumerate(members):
        torch.testing.assert_close(together[m], model(params, images), rtol=0, atol=1e-12)


def as_tuple_function(fn, names):
    """fn(params dict) -> f(*tensors), the form torch.autograd.functional takes."""
    return lambda *tensors: fn(dict(zip(names, tensors, strict=True)))


@pytest.mark.parametrize("path", PATHS)
def test_jvp_and_hessian_vector_products_equal_torch_autograd_functional(path):
    """Forward-mode jvp (torch.func) against reverse-mode double backward (torch.autograd.functional). The fused CPU
    attention kernel has no forward-mode or double-backward derivative in torch 2.14 (see the test below), so the
    fast path runs with SDPA's math backend here: the same function, with differentiable parts."""
    cfg = CFGS[0]
    params, tangent = random_params(cfg, seed=2), random_params(cfg, seed=3)
    images, labels = random_images(cfg, 3, seed=4), torch.tensor([0, 2, 1])
    model = PATHS[path]

    def logits_of(p):
        return model(p, images, cfg)

    def loss_of(p):
        return F.cross_entropy(model(p, images, cfg), labels)

    names, primals, tangents = list(params), tuple(params.values()), tuple(tangent.values())
    with sdpa_kernel(SDPBackend.MATH):
        _, jvp_func = jvp(logits_of, (params,), (tangent,))
        _, jvp_ref = torch.autograd.functional.jvp(as_tuple_function(logits_of, names), primals, tangents)
        _, hvp_func = jvp(grad(loss_of), (params,), (tangent,))         # forward-over-reverse
        _, hvp_ref = torch.autograd.functional.hvp(as_tuple_function(loss_of, names), primals, tangents)
    assert jvp_func.abs().max() > 1e-3
    torch.testing.assert_close(jvp_func, jvp_ref, rtol=0, atol=1e-10)
    for name, ref in zip(names, hvp_ref, strict=True):
        torch.testing.assert_close(hvp_func[name], ref, rtol=0, atol=1e-10, msg=name)


def test_the_fused_cpu_kernel_has_no_forward_mode_derivative():
    """What lowlevel/README.md says about the fast path and jvp: without the math backend, forward mode is refused."""
    cfg = CFGS[0]
    params, images = random_params(cfg, seed=2), random_images(cfg, 1, seed=4)
    with pytest.raises(NotImplementedError, match="forward AD"):
        jvp(lambda p: forward(p, images, cfg, fast=True), (params,), (params,))


@pytest.mark.parametrize("cfg", CFGS, ids=["token", "avg"])
def test_functional_call_of_timm_with_our_params_equals_ours(cfg):
    """timm's VisionTransformer as a function of a state dict: torch.func.functional_call swaps our converted
    params in for the module's own, which are left untouched."""
    model = timm_vit(cfg).to(torch.float64).eval()
    own = {k: v.clone() for k, v in model.state_dict().items()}
    params, images = random_params(cfg, seed=5), random_images(cfg, 3, seed=6)
    theirs = functional_call(model, to_timm(params, cfg), (images,))
    torch.testing.assert_close(theirs, forward(params, images, cfg), rtol=0, atol=1e-10)
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())


def test_per_example_gradient_norms_equal_norms_of_a_loop_of_gradients():
    """`paper.gradient_norms`'s one vmap call against one torch.autograd.grad per image."""
    from paper.analysis.gradient_norms import per_example_gradient_norms
    cfg = CFGS[0]
    params, images = random_params(cfg, seed=7), random_images(cfg, 6, seed=8)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    expected = []
    for image, label in zip(images, labels, strict=True):
        grads = torch.autograd.grad(F.cross_entropy(forward(leaves, image[None], cfg), label[None]),
                                    list(leaves.values()))
        expected.append(torch.cat([g.flatten() for g in grads]).norm())
    torch.testing.assert_close(per_example_gradient_norms(params, images, labels, cfg, chunk=4),
                               torch.stack(expected), rtol=0, atol=1e-10)
