"""Checks for 01_patch_embedding.md, against lowlevel/patches.py, lowlevel/params.py and paper/analysis/maps.py."""
import math
import random

import torch
import torch.nn.functional as F

import lowlevel as vit
from paper.analysis import maps as analysis

from .common import call, expect, expect_integer, expect_png

HINTS = {
    "pcp order": "each patch is flattened in (P, P, C) order; flatten it channel first, (C, P, P), like a conv kernel",
    "patch transposed": "each patch is flattened column by column; flatten its rows in order: (C, P_row, P_col)",
    "column major": "the patches are in column-major order; number them row by row: (B, gh, gw, ...), not "
                    "(B, gw, gh, ...)",
    "plain reshape": "a plain reshape does not cut P×P patches: reshape to (B, C, gh, P, gw, P) and permute to "
                     "(B, gh, gw, C, P, P) before flattening",
    "unfold layout": "this is F.unfold's layout (B, C·P·P, N), patches as columns: transpose the last two axes",
    "no bias": "the bias is missing: x_p E + b",
    "weight not transposed": "weight is stored (D, C·P·P) as F.linear expects: use x @ weight.T (or F.linear), "
                             "not x @ weight",
    "conv tokens": "the conv output (B, D, gh, gw) must become tokens (B, N, D): flatten(2) then transpose(1, 2)",
    "conv kernel": "the kernel is the weight reshaped to (D, C, P, P); reshaping it as (D, P, P, C) mixes up the "
                   "channels",
    "no class token": "the class token is a token too: N + 1",
    "square grid": "image_size is a tuple (H, W): a non-square image has (H/P)·(W/P) patches, not (H/P)²",
    "patch area": "N = HW/P²: each patch covers P² pixels, not P",
    "count cls pos": "x_class has D parameters and E_pos has N+1 rows (one for the class token)",
    "count final ln": "the final LayerNorm (eq. 4) has 2D parameters",
    "count biases": "count the linear layers' biases: q, k, v (3D), the projection (D), the MLP (MLP + D)",
    "count one ln": "each block has two LayerNorms, 2D parameters each",
    "grid transposed": "tiles are at transposed places: patch (i, j) starts at row i·(P+gap), column j·(P+gap)",
    "gap colour": "the gaps between the tiles are white: fill them with 1.0 (torch.ones), not 0",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def count_tokens(image_size: tuple[int, int], patch_size: int) -> int:
    h, w = image_size
    return (h // patch_size) * (w // patch_size) + 1


def count_params(cfg) -> int:
    return sum(math.prod(shape) for shape in vit.param_shapes(cfg).values())


REFERENCE = {"patchify": vit.patchify, "patch_embedding": vit.patch_embedding,
             "patch_embedding_conv": vit.patch_embedding, "count_tokens": count_tokens, "count_params": count_params,
             "patch_grid": analysis.patch_grid}


# ---- checks ----------------------------------------------------------------------------------------------------

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
        # patchify only moves numbers: the right answer is exact (atol = rtol = 0)
        expect(call(ns, "patchify", images, p), want, f"patchify of a {tuple(images.shape)} batch, P={p}", {
            HINTS["pcp order"]: patches_in_order(images, p, (0, 2, 4, 3, 5, 1)),
            HINTS["patch transposed"]: patches_in_order(images, p, (0, 2, 4, 1, 5, 3)),
            HINTS["column major"]: patches_in_order(images, p, (0, 4, 2, 1, 3, 5)),
            HINTS["plain reshape"]: images.reshape(b, -1, c * p * p),
            HINTS["unfold layout"]: want.transpose(1, 2),
        }, hint="compare one patch, e.g. images[0, :, :P, P:2P], with row 1 of your output", atol=0, rtol=0)


def task_patch_embedding(ns, output_dir):
    g = torch.Generator().manual_seed(102)
    for case in image_cases(2):
        images, p, c = images_for(case, g), case[2], case[1]
        d = c * p * p if case == (2, 3, 4, 3, 5) else 7   # D = C·P·P once, so that E and Eᵀ both fit
        weight, bias = torch.randn(d, c * p * p, generator=g), torch.randn(d, generator=g)
        patches = vit.patchify(images, p)
        mistakes = {HINTS["no bias"]: patches @ weight.T}
        if d == c * p * p:
            mistakes[HINTS["weight not transposed"]] = patches @ weight + bias
        expect(call(ns, "patch_embedding", images, weight, bias, p), vit.patch_embedding(images, weight, bias, p),
               f"patch_embedding with D={d}, P={p}", mistakes,
               hint="patch_embedding is patchify, then one linear map: F.linear(patchify(images, P), weight, bias)")


def task_patch_embedding_conv(ns, output_dir):
    g = torch.Generator().manual_seed(103)
    for case in image_cases(3):
        images, p, c = images_for(case, g), case[2], case[1]
        d = 6
        weight, bias = torch.randn(d, c * p * p, generator=g), torch.randn(d, generator=g)
        want = vit.patch_embedding(images, weight, bias, p)
        hwc_kernel = weight.reshape(d, p, p, c).permute(0, 3, 1, 2)
        expect(call(ns, "patch_embedding_conv", images, weight, bias, p), want, f"patch_embedding_conv with P={p}", {
            HINTS["conv tokens"]: want.transpose(1, 2),
            HINTS["conv kernel"]: F.conv2d(images, hwc_kernel, bias, stride=p).flatten(2).transpose(1, 2),
        }, hint="kernel size and stride are both P: F.conv2d(images, weight.reshape(D, C, P, P), bias, stride=P)")


def task_count(ns, output_dir):
    rng = random.Random(4)
    sizes = [((224, 224), 16), ((384, 384), 16), ((224, 320), 32), ((518, 518), 14), ((64, 96), 8)]
    sizes += [((rng.randint(1, 9) * 8, rng.randint(1, 9) * 8), 8) for _ in range(2)]
    for (h, w), p in sizes:
        n = (h // p) * (w // p)
        mistakes = {n: HINTS["no class token"], (h * w) // p + 1: HINTS["patch area"]}
        if h != w:   # only a non-square image tells (H/P)² from (H/P)·(W/P)
            mistakes[(h // p) ** 2 + 1] = HINTS["square grid"]
        expect_integer(call(ns, "count_tokens", (h, w), p), n + 1, f"count_tokens({(h, w)}, {p})", mistakes,
                       "N = HW/P² patches, plus one class token")
    cfgs = [vit.ViTConfig(), vit.ViTConfig(image_size=(64, 96), patch_size=8, dim=48, depth=3, num_heads=4,
                                           mlp_dim=80, num_classes=7, in_channels=1)]
    for cfg in cfgs:
        want, d = count_params(cfg), cfg.dim
        mistakes = {want - d: HINTS["count cls pos"], want - 2 * d: HINTS["count final ln"],
                    want - cfg.depth * (5 * d + cfg.mlp_dim): HINTS["count biases"],
                    want - cfg.depth * 2 * d: HINTS["count one ln"]}
        expect_integer(call(ns, "count_params", cfg), want,
                       f"count_params for D={d}, L={cfg.depth}, MLP={cfg.mlp_dim}, K={cfg.num_classes}", mistakes,
                       "per block: 4D² + 2D·MLP + 9D + MLP; add patch embedding, x_class, E_pos, the final LN and "
                       "the head")


def tiles_transposed(image: torch.Tensor, p: int, gap: int) -> torch.Tensor:
    """Tile (i, j) drawn at place (j, i): a square grid's mistake (a non-square one would not fit)."""
    out = analysis.patch_grid(image, p, gap)
    for i in range(image.shape[0] // p):
        for j in range(image.shape[1] // p):
            out[j * (p + gap):j * (p + gap) + p, i * (p + gap):i * (p + gap) + p] = image[i * p:(i + 1) * p,
                                                                                         j * p:(j + 1) * p]
    return out


def task_patch_grid(ns, output_dir):
    g = torch.Generator().manual_seed(105)
    for (h, w, p, gap) in [(9, 9, 3, 1), (12, 20, 4, 2), (16, 8, 8, 3)]:   # square first: it shows transposed tiles
        image = torch.rand(h, w, 3, generator=g)
        want = analysis.patch_grid(image, p, gap)
        mistakes = {HINTS["gap colour"]: analysis.patch_grid(image, p, gap, fill=0.0)}
        if h == w:
            mistakes[HINTS["grid transposed"]] = tiles_transposed(image, p, gap)
        # only copies and a constant fill: exact
        expect(call(ns, "patch_grid", image, p, gap), want, f"patch_grid of a {(h, w)} image, P={p}, gap={gap}",
               mistakes,
               hint=f"the output is (gh·P + (gh-1)·gap, gw·P + (gw-1)·gap, C) filled with 1.0 between tiles; "
                    f"here {tuple(want.shape)}", atol=0, rtol=0)
    expect_png(output_dir / "patch_grid.png", "the patch grid of the photo")


TASKS = {1: task_patchify, 2: task_patch_embedding, 3: task_patch_embedding_conv, 4: task_count, 5: task_patch_grid}
