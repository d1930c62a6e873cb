"""Checks for 12_masked_patch_prediction.md, against lowlevel/mpp.py (its mean-colour target proven equal to
vit-pytorch's MPPLoss, tests/lowlevel/test_mpp.py) and a held-out split of the digits.

The corruption is checked by its properties, so that any order of drawing passes: on 16,000 patches the chosen
fraction and, among the chosen, the [mask], swapped and kept fractions must each lie within six binomial standard
deviations of the paper's (a correct answer fails with a probability below 1e-8; BERT's 15%, or all the chosen
given [mask], misses by more than 40 of them). Swapping in a patch drawn among all N, itself included, passes: it
keeps 1/N of the swapped, 0.6% of the chosen at N = 16."""
import functools
import math

import torch
import torch.nn.functional as F

import lowlevel as vit
from lowlevel import mpp
from lowlevel.model import tokens
from lowlevel.mpp import MPPConfig
from lowlevel.position import embed_positions

from .common import Mistake, call, call_unchanged, expect, type_name

HINTS = {
    "bert 15%": "the paper corrupts 50% of the patch embeddings (App. B.1.2), not BERT's 15%",
    "all masked": "of the chosen patches 80% get the [mask] embedding, 10% another patch's and 10% keep their own "
                  "(App. B.1.2): not all of them [mask]",
    "unchosen changed": "only the chosen patches change: draw the [mask] / other patch / keep fate for the chosen ones "
                        "(chosen & (fate < 0.8)), the others keep their embeddings exactly",
    "chosen is masked": "`chosen` is every chosen patch, the swapped and the kept ones too: the loss reads them all",
    "noise": "a random patch is another patch's embedding from the same image (x[b, j], j ≠ i), not noise",
    "global generator": "draw everything from `generator` (torch.rand(..., generator=generator)), not from the global "
                        "random number generator: the same seed must give the same corruption",
    "edge": "a mean exactly on an edge k/8 belongs to the level below (k/8 < m ≤ (k+1)/8: torch.bucketize with "
            "right=False, as vit-pytorch's MPPLoss); floor(8·m) puts it one level up",
    "channels reversed": "channel 0 is the least significant digit: class = Σ_c level_c · 8^c (red + 8·green + "
                         "64·blue), as vit-pytorch's MPPLoss",
    "mean axis": "vit.patchify flattens each patch as (C, P, P): unflatten its last axis to (C, P·P) and average over "
                 "the P·P pixels, not (P·P, C)",
    "float classes": "return the classes as integers (long): cross-entropy reads them as class indices",
    "all positions": "the loss counts the chosen patches only: index logits[chosen] and targets[chosen] before the "
                     "cross-entropy",
    "mean over all": "average over the chosen patches, not over all B·N (the unchosen add zeros, but also to the count)",
    "sum": "average over the chosen patches (cross-entropy's default reduction), not their sum",
    "no corruption": "corrupt the patch embeddings before the encoder: a model that sees the patches it predicts "
                     "learns nothing of their context",
    "class token predicts": "drop z_L's first token: the class token predicts nothing, each patch predicts from its "
                            "own output",
    "no final ln": "apply eq. (4)'s final LN (norm.weight, norm.bias) to each patch token before the head",
    "mask token frozen": "the [mask] embedding is learned (App. B.1.2): train it with every other tensor",
    "normalised targets": "compute the targets from the pixels in [0, 1], before normalise(...): the model predicts "
                          "the mean colours of the clean image",
}

MPP = MPPConfig()                              # the paper's: 50%, of them 80% [mask], 10% another patch, 10% kept


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def corrupt(x: torch.Tensor, mask_token: torch.Tensor, generator: torch.Generator):
    return mpp.corrupt(x, mask_token, MPP, generator)


def mean_colour_classes(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    return mpp.colour_classes(pixels, patch_size, MPP).flatten(1)


def mpp_loss(logits: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    return mpp.loss(logits, targets, chosen, MPP)


def mpp_forward(params: dict, images: torch.Tensor, cfg, generator: torch.Generator):
    return mpp.forward(params, images, cfg, MPP, generator=generator)


REFERENCE = {"corrupt": corrupt, "mean_colour_classes": mean_colour_classes, "mpp_loss": mpp_loss,
             "mpp_forward": mpp_forward}


# ---- task 1 ----------------------------------------------------------------------------------------------------

def within(count: int, trials: int, p: float) -> bool:
    """count of `trials` within six binomial standard deviations of trials·p."""
    return abs(count - trials * p) <= 6 * math.sqrt(trials * p * (1 - p))


def task_corrupt(ns, output_dir):
    b, n, d = 1000, 16, 8
    g = torch.Generator().manual_seed(1201)
    x, mask_token = torch.randn(b, n, d, generator=g), torch.randn(1, 1, d, generator=g)
    got = call_unchanged(ns, "corrupt", x, mask_token, torch.Generator().manual_seed(7))
    if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
        raise Mistake(f"corrupt returned {type_name(got)}, not (corrupted, chosen)", "return the two tensors")
    corrupted, chosen = got
    if tuple(corrupted.shape) != (b, n, d) or tuple(chosen.shape) != (b, n) or chosen.dtype != torch.bool:
        raise Mistake(f"corrupt of x {(b, n, d)}: expected corrupted {(b, n, d)} and chosen {(b, n)} bool, got "
                      f"{tuple(corrupted.shape)} and {tuple(chosen.shape)} {chosen.dtype}",
                      "corrupted has x's shape; chosen is one bool per patch")
    same = (corrupted[:, :, None, :] == x[:, None, :, :]).all(-1)           # (B, N, N): corrupted i equals x j
    kept = same.diagonal(dim1=1, dim2=2)                                      # (B, N)
    swapped = (same & ~torch.eye(n, dtype=torch.bool)).any(-1) & ~kept
    masked = (corrupted == mask_token).all(-1)
    changed = ~kept
    if (changed & ~chosen).any():
        hint = HINTS["chosen is masked"] if torch.equal(chosen, masked) else HINTS["unchosen changed"]
        raise Mistake(f"corrupt changed {(changed & ~chosen).sum().item()} patches that are not in `chosen`", hint)
    if (chosen & ~(kept | swapped | masked)).any():
        raise Mistake(f"{(chosen & ~(kept | swapped | masked)).sum().item()} chosen patches hold neither the [mask] "
                      "embedding, nor their own, nor another patch's of the same image", HINTS["noise"])
    picked = chosen.sum().item()
    if not within(picked, b * n, 0.5):
        raise Mistake(f"corrupt chose {picked / (b * n):.1%} of {b * n:,} patches, expected 50%",
                      HINTS["bert 15%"] if 0.1 <= picked / (b * n) <= 0.2 else "choose half of each image's patches")
    fractions = {what: (t & chosen).sum().item() for what, t in (("mask", masked), ("swap", swapped), ("kept", kept))}
    if fractions["mask"] == picked:
        raise Mistake("every chosen patch holds the [mask] embedding", HINTS["all masked"])
    for what, p in (("mask", 0.8), ("swap", 0.1), ("kept", 0.1)):
        if not within(fractions[what], picked, p):
            raise Mistake(f"of {picked:,} chosen patches: [mask] {fractions['mask'] / picked:.1%}, another patch "
                          f"{fractions['swap'] / picked:.1%}, kept {fractions['kept'] / picked:.1%}; expected 80%, "
                          f"10%, 10%", "of the chosen: [mask] with probability 0.8, another patch's embedding with "
                                       "0.1, their own with 0.1")
    again = call(ns, "corrupt", x, mask_token, torch.Generator().manual_seed(7))
    if not (isinstance(again, tuple) and torch.equal(again[0], corrupted) and torch.equal(again[1], chosen)):
        raise Mistake("two calls with generators seeded the same gave different corruptions", HINTS["global generator"])
    other = call(ns, "corrupt", x, mask_token, torch.Generator().manual_seed(8))
    if torch.equal(other[1], chosen):
        raise Mistake("generators seeded differently chose the same patches", "draw the choice from `generator`")


# ---- task 2 ----------------------------------------------------------------------------------------------------

def wrong_classes(pixels: torch.Tensor, p: int, mistake: str) -> torch.Tensor:
    """`mean_colour_classes` with one deliberate mistake, for recognising what the learner did."""
    c = pixels.shape[1]
    flat = vit.patchify(pixels, p)
    means = flat.unflatten(-1, (-1, c)).mean(-2) if mistake == "mean axis" else flat.unflatten(-1, (c, -1)).mean(-1)
    edges = torch.arange(1, 8, dtype=pixels.dtype) / 8
    levels = (8 * means).floor().long().clamp(max=7) if mistake == "edge" else torch.bucketize(means, edges)
    place = 8 ** torch.arange(c)
    return (levels * (place.flip(0) if mistake == "channels reversed" else place)).sum(-1)


def colour_cases():
    """(pixels, patch size): random RGB; RGB and grey patches of constant k/8 (every mean on an edge, exact in any
    order of summation); pure red, green and blue; the digits."""
    g = torch.Generator().manual_seed(1202)
    rgb = torch.rand(3, 3, 8, 12, generator=g, dtype=torch.float64)
    levels = torch.randint(0, 9, (4, 3, 3, 4), generator=g) / 8.0
    edges = levels.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)           # (4, 3, 6, 8): 2×2 patches
    pure = torch.eye(3)[:, :, None, None].expand(3, 3, 4, 4).clone()
    grey = pixels("train")[:50]
    return [(rgb, 4), (edges, 2), (edges[:, :1], 2), (pure, 2), (grey, 2)]


def task_colours(ns, output_dir):
    for pixels, p in colour_cases():
        want = mean_colour_classes(pixels, p)
        got = call(ns, "mean_colour_classes", pixels, p)
        what = f"mean_colour_classes of pixels {tuple(pixels.shape)}, patch size {p}"
        if isinstance(got, torch.Tensor) and got.is_floating_point():
            raise Mistake(f"{what} is {got.dtype}, expected integers", HINTS["float classes"])
        expect(got, want, what, {HINTS[m]: wrong_classes(pixels, p, m)
                                 for m in ("edge", "channels reversed", "mean axis")},
               hint="each channel's mean over the patch, in 8 levels k/8 < m ≤ (k+1)/8, class Σ_c level_c · 8^c",
               atol=0, rtol=0)


# ---- task 3 ----------------------------------------------------------------------------------------------------

def task_loss(ns, output_dir):
    g = torch.Generator().manual_seed(1203)
    for b, n, k in ((4, 16, 8), (3, 9, 512)):
        logits = 3 * torch.randn(b, n, k, generator=g, dtype=torch.float64)
        targets = torch.randint(k, (b, n), generator=g)
        chosen = torch.rand(b, n, generator=g) < 0.5
        chosen[0, 0], chosen[0, 1] = True, False
        got = call(ns, "mpp_loss", logits, targets, chosen)
        moved = logits + 5 * torch.randn(b, n, k, generator=g, dtype=torch.float64) * (~chosen)[..., None]
        again = call(ns, "mpp_loss", moved, targets, chosen)
        if isinstance(got, torch.Tensor) and isinstance(again, torch.Tensor) and not torch.allclose(got, again):
            raise Mistake(f"mpp_loss changed from {got.item():.4f} to {again.item():.4f} when only the predictions of "
                          "patches that were not chosen changed", HINTS["all positions"])
        each = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")       # (B, N)
        expect(got, mpp_loss(logits, targets, chosen), f"mpp_loss of logits {(b, n, k)}", {
            HINTS["mean over all"]: (each * chosen).mean(),
            HINTS["sum"]: each[chosen].sum()},
            hint="the cross-entropy of logits[chosen] against targets[chosen], averaged: a 0-dim tensor",
            atol=1e-10, rtol=1e-10)


# ---- task 4 ----------------------------------------------------------------------------------------------------

CFG = vit.ViTConfig(image_size=8, patch_size=2, in_channels=1, dim=32, depth=4, num_heads=4, mlp_dim=64,
                    num_classes=10)
STEPS, LR = 400, 3e-3        # the workbook's pre-training


@functools.cache
def pixels(split: str) -> torch.Tensor:
    """The workbook's split of the digits' pixels, (B, 1, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits
    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[order[:1400] if split == "train" else order[1400:]]


def start(seed: int) -> dict:
    return {**vit.init_params(CFG, torch.Generator().manual_seed(seed)),
            **mpp.init_params(CFG, MPP, torch.Generator().manual_seed(seed))}


@functools.cache
def reference_pretrained(seed: int) -> dict:
    """The reference pre-training of the workbook's task 4, as the workbook's setup runs it (a few seconds)."""
    params = {k: v.requires_grad_() for k, v in start(seed).items()}
    train = pixels("train")
    targets = mpp.targets(train, CFG, MPP)
    optimizer = torch.optim.Adam(params.values(), lr=LR)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        batch = torch.randint(len(train), (64,), generator=generator)
        optimizer.zero_grad()
        predictions, chosen = mpp.forward(params, (train[batch] - 0.5) / 0.5, CFG, MPP, generator=generator)
        mpp.loss(predictions, targets[batch], chosen, MPP).backward()
        optimizer.step()
    return {k: v.detach() for k, v in params.items()}


def colour_hits(params: dict, against: torch.Tensor) -> float:
    """How often the model's top colour for a held-out chosen patch is `against`'s class, one corruption drawn."""
    test = pixels("test")
    with torch.no_grad():
        predictions, chosen = mpp.forward(params, (test - 0.5) / 0.5, CFG, MPP,
                                          generator=torch.Generator().manual_seed(1204))
    return (predictions.argmax(-1) == against)[chosen].float().mean().item()


def task_pretrain(ns, output_dir):
    params = reference_pretrained(3)                                   # a model whose every output token differs
    images = 2 * torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1205)) - 1
    got = call(ns, "mpp_forward", params, images, CFG, torch.Generator().manual_seed(9))
    if not (isinstance(got, tuple) and len(got) == 2):
        raise Mistake(f"mpp_forward returned {type_name(got)}, not (logits, chosen)", "return the two tensors")
    want, chosen = mpp_forward(params, images, CFG, torch.Generator().manual_seed(9))
    x = tokens(params, images, CFG)
    clean = vit.encoder(params, embed_positions(params, x, CFG), CFG)
    corrupted_x, _ = corrupt(x, params["mask_token"], torch.Generator().manual_seed(9))
    z = vit.encoder(params, embed_positions(params, corrupted_x, CFG), CFG)
    head = params["mpp_head.weight"], params["mpp_head.bias"]
    expect(got[0], want, "mpp_forward's logits", {
        HINTS["no corruption"]: mpp.predict(params, clean, CFG, MPP),
        HINTS["class token predicts"]: F.linear(vit.layer_norm(z, params["norm.weight"], params["norm.bias"],
                                                               CFG.layer_norm_eps), *head),
        HINTS["no final ln"]: F.linear(z[:, 1:], *head)},
        hint="corrupt(patch_embeddings(...)), encoder_outputs, the patch tokens z_L[:, 1:], LN, then the head")
    expect(got[1], chosen, "mpp_forward's chosen", hint="return corrupt's `chosen` as it is", atol=0, rtol=0)

    initial = start(5)
    trained = call_unchanged(ns, "mpp_pretrain", initial, CFG, pixels("train"), STEPS, LR, 5)
    if not isinstance(trained, dict) or set(trained) != set(initial):
        keys = sorted(trained)[:4] if isinstance(trained, dict) else type_name(trained)
        raise Mistake(f"mpp_pretrain returned {keys}, expected the params' keys {sorted(initial)[:4]}, …",
                      "return every tensor trained, under the keys it came with")
    if torch.equal(trained["mask_token"], initial["mask_token"]):
        raise Mistake("the [mask] embedding never moved", HINTS["mask token frozen"])
    test = pixels("test")
    true, normalised = (mpp.targets(t, CFG, MPP) for t in (test, (test - 0.5) / 0.5))
    hits, reference = colour_hits(trained, true), colour_hits(reference_pretrained(5), true)
    if hits < reference - 0.05:   # the solution's seeds 0-2: 54.9 ± 0.7%; colour 0: 44%
        hint = HINTS["normalised targets"] if colour_hits(trained, normalised) > hits else \
            "pre-train every tensor with adam on mpp_loss of mpp_forward(normalise(pixels)), targets the clean pixels'"
        raise Mistake(f"the pre-trained model names the mean colour of {hits:.1%} of the held-out chosen patches, "
                      f"the reference {reference:.1%}", hint)


def prepare() -> None:
    """Task 4's reference pre-trainings, run in the checker's process before the learner's starts."""
    reference_pretrained(3)
    reference_pretrained(5)


TASKS = {1: task_corrupt, 2: task_colours, 3: task_loss, 4: task_pretrain}
SECONDS = {4: 600}     # task 4 pre-trains three models and fine-tunes six: about a minute on one core
