"""Checks for 01_patch_embedding.md, against lowlevel/patches.py, lowlevel/params.py and paper/analysis.py."""
import math
import numbers
import random

import torch
import torch.nn.functional as F

import lowlevel as vit
from paper.analysis import patch_grid

from .common import Mistake, call, expect, expect_png


def image_cases(seed: int, n: int = 4):
    """(B, C, P, gh, gw) with non-square grids, one and three channels, and D = C·P·P in one case."""
    rng = random.Random(seed)
    cases = [(2, 3, 4, 3, 5), (1, 1, 2, 4, 2)]
    cases += [(rng.randint(1, 3), rng.choice([1, 3]), rng.randint(2, 5), rng.randint(1, 4), rng.randint(2, 5))
              for _ in range(n - 2)]
    return cases


def images_for(case, g):
    b, c, p, gh, gw = case
    return torch.randn(b, c, gh * p, gw * p, generator=g)


def patches_in_order(images, p, order):
    """Deliberately wrong patchify variants: `order` is the permutation of (B, C, gh, P, gw, P) before flattening."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).permute(*order)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def task_patchify(ns, output_dir):
    g = torch.Generator().manual_seed(101)
    for case in image_cases(1):
        images, p = images_for(case, g), case[2]
        b, c, h, w = images.shape
        want = vit.patchify(images, p)
        expect(call(ns, "patchify", images.clone(), p), want, f"patchify of a {tuple(images.shape)} batch, P={p}", {
            "each patch is flattened in (P, P, C) order; flatten it channel first, (C, P, P), like a conv kernel":
                patches_in_order(images, p, (0, 2, 4, 3, 5, 1)),
            "the patches are in column-major order; number them row by row: (B, gh, gw, ...), not (B, gw, gh, ...)":
                patches_in_order(images, p, (0, 4, 2, 1, 3, 5)),
            "a plain reshape does not cut P×P patches: reshape to (B, C, gh, P, gw, P) and permute to "
            "(B, gh, gw, C, P, P) before flattening": images.reshape(b, -1, c * p * p),
            "this is F.unfold's layout (B, C·P·P, N), patches as columns: transpose the last two axes":
                want.transpose(1, 2),
        }, hint="compare one patch, e.g. images[0, :, :P, P:2P], with row 1 of your output")


def task_patch_embedding(ns, output_dir):
    g = torch.Generator().manual_seed(102)
    for case in image_cases(2):
        images, p, c = images_for(case, g), case[2], case[1]
        d = c * p * p if case == (2, 3, 4, 3, 5) else 7   # D = C·P·P once, so that E and Eᵀ both fit
        weight, bias = torch.randn(d, c * p * p, generator=g), torch.randn(d, generator=g)
        patches = vit.patchify(images, p)
        mistakes = {"the bias is missing: x_p E + b": patches @ weight.T}
        if d == c * p * p:
            mistakes["weight is stored (D, C·P·P) as F.linear expects: use x @ weight.T (or F.linear), "
                     "not x @ weight"] = patches @ weight + bias
        got = call(ns, "patch_embedding", images.clone(), weight.clone(), bias.clone(), p)
        expect(got, vit.patch_embedding(images, weight, bias, p), f"patch_embedding with D={d}, P={p}", mistakes,
               hint="patch_embedding is patchify, then one linear map: F.linear(patchify(images, P), weight, bias)")


def task_patch_embedding_conv(ns, output_dir):
    g = torch.Generator().manual_seed(103)
    for case in image_cases(3):
        images, p, c = images_for(case, g), case[2], case[1]
        d = 6
        weight, bias = torch.randn(d, c * p * p, generator=g), torch.randn(d, generator=g)
        want = vit.patch_embedding(images, weight, bias, p)
        hwc_kernel = weight.reshape(d, p, p, c).permute(0, 3, 1, 2)
        got = call(ns, "patch_embedding_conv", images.clone(), weight.clone(), bias.clone(), p)
        expect(got, want, f"patch_embedding_conv with P={p}", {
            "the conv output (B, D, gh, gw) must become tokens (B, N, D): flatten(2) then transpose(1, 2)":
                want.transpose(1, 2),
            "the kernel is the weight reshaped to (D, C, P, P); reshaping it as (D, P, P, C) mixes up the channels":
                F.conv2d(images, hwc_kernel, bias, stride=p).flatten(2).transpose(1, 2),
        }, hint="kernel size and stride are both P: F.conv2d(images, weight.reshape(D, C, P, P), bias, stride=P)")


def task_count(ns, output_dir):
    rng = random.Random(4)
    sizes = [((224, 224), 16), ((384, 384), 16), ((224, 320), 32), ((518, 518), 14)]
    sizes += [((rng.randint(1, 9) * 8, rng.randint(1, 9) * 8), 8) for _ in range(2)]
    for image_size, p in sizes:
        n = (image_size[0] // p) * (image_size[1] // p)
        got = call(ns, "count_tokens", image_size, p)
        if not isinstance(got, numbers.Integral):
            raise Mistake(f"count_tokens returned {type(got).__name__}, expected an integer", "return an int")
        if got != n + 1:
            hint = ("the class token is a token too: N + 1" if got == n else
                    "N = HW/P²: the patch area is P², and non-square images have (H/P)·(W/P) patches")
            raise Mistake(f"count_tokens{image_size, p}: expected {n + 1}, got {got}", hint)
    cfgs = [vit.ViTConfig(), vit.ViTConfig(image_size=(64, 96), patch_size=8, dim=48, depth=3, num_heads=4,
                                           mlp_dim=80, num_classes=7, in_channels=1)]
    for cfg in cfgs:
        want = sum(math.prod(s) for s in vit.param_shapes(cfg).values())
        got = call(ns, "count_params", cfg)
        if not isinstance(got, numbers.Integral):
            raise Mistake(f"count_params returned {type(got).__name__}, expected an integer", "return an int")
        if got != want:
            d = cfg.dim
            hints = {want - d: "x_class has D parameters and E_pos has N+1 rows (one for the class token)",
                     want - 2 * d: "the final LayerNorm (eq. 4) has 2D parameters",
                     want - cfg.depth * (6 * d + cfg.mlp_dim): "count the biases: q, k, v, projection, MLP",
                     want - cfg.depth * 4 * d: "each block has two LayerNorms, 2D parameters each"}
            raise Mistake(f"count_params for D={d}, L={cfg.depth}, MLP={cfg.mlp_dim}, K={cfg.num_classes}: expected "
                          f"{want:,}, got {got:,}",
                          hints.get(got, "per block: 4D² + 2D·MLP + 9D + MLP; add patch embedding, x_class, E_pos, "
                                         "the final LN and the head"))


def task_patch_grid(ns, output_dir):
    g = torch.Generator().manual_seed(105)
    for (h, w, p, gap) in [(12, 20, 4, 2), (9, 9, 3, 1), (16, 8, 8, 3)]:
        image = torch.rand(h, w, 3, generator=g)
        want = patch_grid(image, p, gap)
        swapped = patch_grid(image.transpose(0, 1), p, gap).transpose(0, 1)
        expect(call(ns, "patch_grid", image.clone(), p, gap), want, f"patch_grid of a {(h, w)} image, P={p}, gap={gap}",
               {"tiles are at transposed places: patch (i, j) starts at row i·(P+gap), column j·(P+gap)": swapped},
               hint=f"the output is (gh·P + (gh-1)·gap, gw·P + (gw-1)·gap, C) filled with 1.0 between tiles; "
                    f"here {tuple(want.shape)}")
    expect_png(output_dir / "patch_grid.png", "the patch grid of the photo")


TASKS = {1: task_patchify, 2: task_patch_embedding, 3: task_patch_embedding_conv, 4: task_count, 5: task_patch_grid}
