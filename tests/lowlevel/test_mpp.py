"""Masked patch prediction (lowlevel.mpp; paper §4.6, App. B.1.2): the corruption's fractions and what it changes,
the loss reading the chosen patches and only those, the mean-colour target against vit-pytorch's MPPLoss, the other
two targets against their definitions, and the [mask] embedding against transformers' ViTForMaskedImageModeling,
gradients included, in float64."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binom
from transformers import ViTForMaskedImageModeling
from vit_pytorch.mpp import MPPLoss

import lowlevel as vit
from lowlevel import mpp
from lowlevel.position import embed_positions
from paper.formats.huggingface import hf_config, to_hf
from paper.models.weights import perturbed
from tests.helpers import random_params

# float64: the same arithmetic in another order, ~1e-15 relative; 1e-10 leaves room for depth.
F64 = dict(rtol=0, atol=1e-10)
# A fraction drawn outside its binomial interval at this probability fails the test (the draws are seeded, so a
# passing test keeps passing; the level says how unlikely a correct corruption is to fail a new seed).
FAILURE_PROBABILITY = 1e-6


@st.composite
def small_configs(draw, max_grid=4):
    """Small ViTs of two patches or more (another patch must exist to swap in), square and not, 1-4 channels."""
    patch = draw(st.sampled_from([2, 4]))
    grid = draw(st.tuples(st.integers(1, max_grid), st.integers(1, max_grid)).filter(lambda g: g[0] * g[1] >= 2))
    heads = draw(st.integers(1, 2))
    return vit.ViTConfig(image_size=(patch * grid[0], patch * grid[1]), patch_size=patch,
                         in_channels=draw(st.integers(1, 4)), dim=heads * draw(st.integers(2, 4)), depth=1,
                         num_heads=heads, mlp_dim=8, num_classes=0)


def all_params(cfg, objective, seed=0):
    """The ViT's and the objective's parameters, every tensor perturbed away from its initial value."""
    own = perturbed(mpp.init_params(cfg, objective, torch.Generator().manual_seed(seed)), seed + 1, scale=0.3)
    return {**random_params(cfg, seed, scale=0.3), **own}


def pixels(cfg, batch, seed, top=1.0):
    """Images of uniform pixels in [0, top]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, cfg.in_channels, *cfg.image_size, generator=g, dtype=torch.float64) * top


def interval(successes: int, trials: int, p: float, tests: int = 1) -> bool:
    """successes within the two-sided binomial interval of Binomial(trials, p), at FAILURE_PROBABILITY over `tests`."""
    lo, hi = binom.interval(1 - FAILURE_PROBABILITY / tests, trials, p)
    return lo <= successes <= hi


# ---------------------------------------------------------------- the corruption

RATES = [(0.5, 0.8, 0.1), (0.15, 0.5, 0.5), (0.5, 1.0, 0.0), (0.3, 0.0, 0.0), (1.0, 0.2, 0.7)]


@given(st.integers(2, 40), st.sampled_from(RATES), st.integers(0, 2 ** 16))
def test_corruption_changes_the_chosen_patches_only_in_the_paper_fractions(n, rates, seed):
    """Every image has its share of chosen patches, each position equally likely; each chosen patch gets the [mask]
    embedding, another patch of its image or its own, at the configured rates (binomial bounds); nothing else
    changes."""
    corruption_rate, mask_rate, random_rate = rates
    objective = mpp.MPPConfig(corruption_rate=corruption_rate, mask_token_rate=mask_rate, random_patch_rate=random_rate)
    g = torch.Generator().manual_seed(seed)
    b, d = 400, 3
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    token = torch.full((1, 1, d), 7.0, dtype=torch.float64)              # no randn draw equals it
    out, chosen = mpp.corrupt(x, token, objective, g)

    expected = max(1, math.floor(corruption_rate * n + 0.5))
    assert (chosen.sum(dim=1) == expected).all()
    assert all(interval(int(c), b, expected / n, tests=n) for c in chosen.sum(dim=0))   # uniform over positions
    assert torch.equal(out[~chosen], x[~chosen])

    masked = (out == token).all(dim=-1)
    kept = (out == x).all(dim=-1)
    same = (out.unsqueeze(2) == x.unsqueeze(1)).all(dim=-1)              # (B, N, N): out[i] equals x[j]
    other = (same & ~torch.eye(n, dtype=torch.bool)).any(dim=-1)
    assert torch.equal(masked | kept | other, torch.ones_like(chosen))  # nothing from elsewhere
    assert not (masked & (kept | other)).any()
    swapped = chosen & other & ~kept
    trials = int(chosen.sum())
    assert interval(int((chosen & masked).sum()), trials, mask_rate, tests=3)
    assert interval(int(swapped.sum()), trials, random_rate, tests=3)
    assert interval(int((chosen & kept).sum()), trials, 1 - mask_rate - random_rate, tests=3)


def test_corruption_is_the_generators():
    """The same seed corrupts the same patches the same way; another seed chooses others."""
    objective = mpp.MPPConfig()
    x = torch.randn(4, 16, 3, dtype=torch.float64)
    token = torch.zeros(1, 1, 3, dtype=torch.float64)
    first, again, other = (mpp.corrupt(x, token, objective, torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


# ---------------------------------------------------------------- the loss reads the chosen patches only

@given(small_configs(), st.sampled_from(mpp.TARGETS), st.integers(0, 2 ** 16))
def test_only_the_chosen_patches_enter_the_loss(cfg, target, seed):
    """Changing every unchosen patch's prediction or target leaves the loss as it was, bit for bit; changing one
    chosen patch's prediction changes it; its gradient is zero at the unchosen patches and not at the chosen."""
    objective = mpp.MPPConfig(target=target, cells=2)
    g = torch.Generator().manual_seed(seed)
    images = pixels(cfg, 3, seed)
    truth = mpp.targets(images, cfg, objective)
    b, n = truth.shape[:2]
    _, chosen = mpp.corrupt(torch.zeros(b, n, 1, dtype=torch.float64), torch.ones(1, 1, 1, dtype=torch.float64),
                            objective, g)
    width = mpp.param_shapes(cfg, objective)["mpp_head.bias"][0]
    predictions = torch.randn(b, n, width, generator=g, dtype=torch.float64)
    if target == "downsized":
        predictions = predictions.unflatten(-1, (4, -1))
    predictions.requires_grad_(True)
    value = mpp.loss(predictions, truth, chosen, objective)

    noise = torch.randn(predictions.shape, generator=g, dtype=torch.float64)
    elsewhere = ~chosen.view(b, n, *[1] * (predictions.ndim - 2))
    assert torch.equal(mpp.loss(predictions + noise * elsewhere, truth, chosen, objective), value)
    other_truth = mpp.targets(pixels(cfg, 3, seed + 1), cfg, objective)
    assert torch.equal(mpp.loss(predictions, torch.where(chosen.view(b, n, *[1] * (truth.ndim - 2)), truth,
                                                         other_truth), chosen, objective), value)
    one = torch.zeros_like(chosen)
    one.view(-1)[chosen.view(-1).nonzero()[0]] = True
    assert not torch.equal(mpp.loss(predictions + noise * one.view_as(elsewhere), truth, chosen, objective), value)

    grad = torch.autograd.grad(value, predictions)[0].flatten(2).abs().sum(dim=-1)   # (B, N)
    assert (grad[~chosen] == 0).all() and (grad[chosen] > 0).all()


# ---------------------------------------------------------------- the targets

def mpploss_labels(images, cfg, objective, mean=None, std=None):
    """vit-pytorch's MPPLoss's class index of every patch (B, N). MPPLoss returns only its loss,
    cross_entropy(predictions[mask], label[mask]); with the logits 0, 1, …, K−1 at one patch that loss is
    logsumexp(0 … K−1) − label, so each label is read back exactly."""
    colours = 2 ** (objective.bits * cfg.in_channels)
    criterion = MPPLoss(cfg.patch_size, cfg.in_channels, objective.bits, objective.max_pixel_value, mean, std)
    b, n = images.shape[0], cfg.num_patches
    logits = torch.arange(colours, dtype=torch.float64).expand(b, n, colours)
    labels = torch.empty(b, n, dtype=torch.long)
    for i in range(b):
        for j in range(n):
            one = torch.zeros(b, n, dtype=torch.bool)
            one[i, j] = True
            labels[i, j] = round(float(logits[0, 0].logsumexp(0) - criterion(logits, images, one)))
    return labels


@given(small_configs(max_grid=3), st.integers(1, 4), st.sampled_from([1.0, 255.0]), st.booleans(),
       st.integers(0, 2 ** 16))
def test_mean_colour_target_equals_vit_pytorch_mpploss(cfg, bits, top, normalised, seed):
    """Our mean-colour class of every patch is MPPLoss's (vit_pytorch/mpp.py), on pixels up to 20% above the maximum
    (both clamp), with and without its de-normalisation (ours is given the pixels it computes); and so is the loss
    over the patches `corrupt` chooses."""
    objective = mpp.MPPConfig(bits=bits, max_pixel_value=top)
    images = pixels(cfg, 2, seed, top=1.2 * top)
    mean = std = None
    theirs_input = images
    if normalised:
        g = torch.Generator().manual_seed(seed)
        mean = (torch.rand(cfg.in_channels, generator=g) * top).tolist()
        std = (torch.rand(cfg.in_channels, generator=g) * top + 0.1).tolist()
        # MPPLoss holds mean and std as float32 tensors: un-normalising with those values gives the pixels it reads
        m32, s32 = (torch.tensor(v).double().view(-1, 1, 1) for v in (mean, std))
        theirs_input = (images - m32) / s32
        images = theirs_input * s32 + m32
    labels = mpp.targets(images, cfg, objective)
    assert labels.min() >= 0 and labels.max() < 2 ** (bits * cfg.in_channels)
    assert torch.equal(labels, mpploss_labels(theirs_input, cfg, objective, mean, std))

    g = torch.Generator().manual_seed(seed)
    _, chosen = mpp.corrupt(torch.zeros(2, cfg.num_patches, 1, dtype=torch.float64),
                            torch.ones(1, 1, 1, dtype=torch.float64), objective, g)
    predictions = torch.randn(2, cfg.num_patches, 2 ** (bits * cfg.in_channels), generator=g, dtype=torch.float64)
    criterion = MPPLoss(cfg.patch_size, cfg.in_channels, bits, top, mean, std)
    torch.testing.assert_close(mpp.loss(predictions, labels, chosen, objective),
                               criterion(predictions, theirs_input, chosen), rtol=0, atol=1e-12)


@pytest.mark.parametrize("top", [1.0, 255.0])
def test_mean_colours_on_the_level_edges_fall_as_in_mpploss(top):
    """A mean exactly on an edge k·max/2^bits is in level k − 1 (0 in level 0, max in the top level), as
    torch.bucketize puts it in MPPLoss: patches of one colour, each channel a random multiple of max/8."""
    cfg = vit.ViTConfig(image_size=(8, 12), patch_size=2, in_channels=3, dim=4, depth=1, num_heads=1, mlp_dim=4)
    objective = mpp.MPPConfig(max_pixel_value=top)
    edges = torch.randint(0, 9, (2, 3, *cfg.grid_size), generator=torch.Generator().manual_seed(0)) * (top / 8)
    images = edges.double().repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    labels = mpp.targets(images, cfg, objective)
    assert torch.equal(labels, mpploss_labels(images, cfg, objective))
    digits = ((edges.flatten(2) * 8 / top).long() - 1).clamp(min=0)                      # (B, C, N)
    assert torch.equal(labels, (digits * torch.tensor([1, 8, 64]).view(1, 3, 1)).sum(1))


def test_one_channel_has_eight_mean_colours():
    """3 bits per channel: 512 classes for RGB (the paper's), 8 for a single channel."""
    rgb = vit.ViTConfig(image_size=8, patch_size=4, in_channels=3, dim=4, depth=1, num_heads=1, mlp_dim=4)
    grey = dataclasses.replace(rgb, in_channels=1)
    assert mpp.param_shapes(rgb, mpp.MPPConfig())["mpp_head.weight"] == (512, 4)
    assert mpp.param_shapes(grey, mpp.MPPConfig())["mpp_head.weight"] == (8, 4)
    levels = torch.linspace(0, 1, 64, dtype=torch.float64).view(1, 1, 8, 8)       # every level present
    assert set(mpp.targets(levels.repeat(1, 1, 1, 1), grey, mpp.MPPConfig()).flatten().tolist()) <= set(range(8))


@given(small_configs(max_grid=3), st.sampled_from([1, 2]), st.integers(0, 2 ** 16))
def test_downsized_target_is_each_cells_mean_colour(cfg, cells, seed):
    """The downsized target of a patch is the mean-colour target of each of its cells × cells cells (patches of side
    P/cells), row-major within the patch; with one cell it is the mean colour."""
    cfg = dataclasses.replace(cfg, image_size=tuple(2 * s for s in cfg.image_size), patch_size=2 * cfg.patch_size)
    images = pixels(cfg, 2, seed)
    downsized = mpp.targets(images, cfg, mpp.MPPConfig(target="downsized", cells=cells))
    fine = mpp.targets(images, dataclasses.replace(cfg, patch_size=cfg.patch_size // cells), mpp.MPPConfig())
    gh, gw = cfg.grid_size
    per_patch = fine.view(2, gh, cells, gw, cells).permute(0, 1, 3, 2, 4).reshape(2, gh * gw, cells * cells)
    assert torch.equal(downsized, per_patch)
    if cells == 1:
        assert torch.equal(downsized[..., 0], mpp.targets(images, cfg, mpp.MPPConfig()))


def test_downsized_to_single_pixels_is_each_pixels_colour():
    """With cells = P each cell is one pixel: its class is Σ_c ⌈x_c·2^bits⌉ − 1 (levels from 1) times (2^bits)^c."""
    cfg = vit.ViTConfig(image_size=8, patch_size=4, in_channels=3, dim=4, depth=1, num_heads=1, mlp_dim=4)
    images = pixels(cfg, 2, 0)
    classes = mpp.targets(images, cfg, mpp.MPPConfig(target="downsized", cells=4))
    levels = (images * 8).ceil().long() - 1                                          # (B, C, H, W), levels 0 … 7
    expected = vit.patchify((levels * torch.tensor([1, 8, 64]).view(1, 3, 1, 1)).sum(1, keepdim=True), 4)
    assert torch.equal(classes, expected)


@given(small_configs(), st.integers(0, 2 ** 16))
def test_pixel_target_is_the_patch_and_its_loss_the_mean_squared_error(cfg, seed):
    """L2 regression on the full patch: the target is the patch as patchify flattens it, the loss the mean of the
    squared errors over the chosen patches' pixels."""
    objective = mpp.MPPConfig(target="pixels")
    images = pixels(cfg, 2, seed)
    truth = mpp.targets(images, cfg, objective)
    assert torch.equal(truth, vit.patchify(images, cfg.patch_size))
    g = torch.Generator().manual_seed(seed)
    predictions = torch.randn(truth.shape, generator=g, dtype=torch.float64)
    chosen = torch.rand(truth.shape[:2], generator=g) < 0.5
    chosen.view(-1)[0] = True
    errors = [(predictions[i, j] - truth[i, j]).pow(2) for i, j in chosen.nonzero().tolist()]
    torch.testing.assert_close(mpp.loss(predictions, truth, chosen, objective), torch.cat(errors).mean(), **F64)


def test_a_fresh_head_predicts_uniform_colours():
    """The head starts at zero: every colour equally likely, so the loss is ln 2^(bits·C) = bits·C·ln 2."""
    cfg = vit.ViTConfig(image_size=8, patch_size=4, in_channels=3, dim=8, depth=1, num_heads=2, mlp_dim=8, num_classes=0)
    g = torch.Generator().manual_seed(0)
    for objective in (mpp.MPPConfig(), mpp.MPPConfig(target="downsized", cells=2)):
        params = {**vit.init_params(cfg, g), **mpp.init_params(cfg, objective, g)}
        images = pixels(cfg, 2, 0).float()
        predictions, chosen = mpp.forward(params, images, cfg, objective, generator=g)
        value = mpp.loss(predictions, mpp.targets(images, cfg, objective), chosen, objective)
        torch.testing.assert_close(value, torch.tensor(9 * math.log(2)))


# ---------------------------------------------------------------- the [mask] embedding against transformers

@given(small_configs(max_grid=3), st.integers(0, 2 ** 16))
def test_mask_token_equals_transformers_vit_for_masked_image_modeling(cfg, seed):
    """With every chosen patch given the [mask] embedding, our corrupted z_0 is transformers' ViTEmbeddings with
    bool_masked_pos at the chosen patches (the mask token in place of the patch embedding, then the class token and
    E_pos), the encoder's LN(z_L) is ViTModel's last_hidden_state, and the gradients of a loss on the predictions
    reach the mask token, E and the head as they reach transformers'."""
    cfg = dataclasses.replace(cfg, depth=2, gelu="exact")
    objective = mpp.MPPConfig(mask_token_rate=1.0, random_patch_rate=0.0)
    params = {k: v.requires_grad_(True) for k, v in all_params(cfg, objective, seed).items()}
    images = torch.randn(2, cfg.in_channels, *cfg.image_size, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
    model = ViTForMaskedImageModeling(hf_config(cfg)).double().eval()
    state, _ = to_hf({k: v for k, v in params.items() if k in vit.param_shapes(cfg)}, cfg)
    model.vit.load_state_dict({**state, "embeddings.mask_token": params["mask_token"].detach().clone()})

    predictions, chosen = mpp.forward(params, images, cfg, objective, generator=torch.Generator().manual_seed(seed))
    x = vit.patch_embedding(images, params["patch.weight"], params["patch.bias"], cfg.patch_size)
    x, again = mpp.corrupt(x, params["mask_token"], objective, torch.Generator().manual_seed(seed))
    assert torch.equal(again, chosen)
    out = model.vit(images, bool_masked_pos=chosen, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[0], embed_positions(params, x, cfg), **F64)
    theirs = F.linear(out.last_hidden_state[:, 1:], params["mpp_head.weight"], params["mpp_head.bias"])
    torch.testing.assert_close(predictions, theirs, **F64)

    weights = torch.randn(predictions.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ours = torch.autograd.grad((predictions * weights).sum(), [params["mask_token"], params["patch.weight"],
                                                               params["mpp_head.weight"]])
    (theirs * weights).sum().backward()
    emb = model.vit.embeddings
    torch.testing.assert_close(ours[0], emb.mask_token.grad, **F64)
    torch.testing.assert_close(ours[1], emb.patch_embeddings.projection.weight.grad.flatten(1), **F64)
    torch.testing.assert_close(ours[2], params["mpp_head.weight"].grad, **F64)          # theirs read our head
    assert chosen.any() and ours[0].abs().sum() > 0


# ---------------------------------------------------------------- bad configs

@pytest.mark.parametrize("fields, message", [
    (dict(target="colour"), "target"),
    (dict(corruption_rate=0.0), "corruption_rate"),
    (dict(mask_token_rate=0.8, random_patch_rate=0.3), r"mask_token_rate \+ random_patch_rate"),
    (dict(bits=0), "bits"),
    (dict(max_pixel_value=float("inf")), "max_pixel_value"),
])
def test_bad_mpp_config_names_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        mpp.MPPConfig(**fields)


def test_config_pairs_the_objective_cannot_use_are_refused():
    cfg = vit.ViTConfig(image_size=6, patch_size=6, dim=4, depth=1, num_heads=1, mlp_dim=4)
    with pytest.raises(ValueError, match="cells"):
        mpp.param_shapes(cfg, mpp.MPPConfig(target="downsized", cells=4))
    with pytest.raises(ValueError, match="random_patch_rate"):                      # one patch, none other to swap in
        mpp.param_shapes(cfg, mpp.MPPConfig())
    assert mpp.param_shapes(cfg, mpp.MPPConfig(random_patch_rate=0.0))["mpp_head.bias"] == (512,)


def test_mpp_runs_on_a_vit_with_spt_and_lsa():
    """The objective corrupts whatever eq. (1)'s first half gives, SPT's tokens too, and the encoder may use LSA: the
    mask token and the head get gradients, and the same seed gives the same predictions."""
    cfg = vit.ViTConfig(image_size=8, patch_size=2, in_channels=1, dim=8, depth=1, num_heads=2, mlp_dim=8,
                        num_classes=0, patch_embed="spt", attention="lsa")
    objective = mpp.MPPConfig()
    params = {k: v.requires_grad_(True) for k, v in all_params(cfg, objective).items()}
    images = pixels(cfg, 2, 0)
    first, chosen = mpp.forward(params, images, cfg, objective, generator=torch.Generator().manual_seed(0))
    again, _ = mpp.forward(params, images, cfg, objective, generator=torch.Generator().manual_seed(0))
    assert first.shape == (2, 16, 8) and torch.equal(first, again)
    value = mpp.loss(first, mpp.targets(images, cfg, objective), chosen, objective)
    grads = torch.autograd.grad(value, [params["mask_token"], params["mpp_head.weight"], params["patch_norm.weight"]])
    assert all(g.abs().sum() > 0 for g in grads)
