"""Checks for 08_windows_and_relative_positions.md, against lowlevel/windows.py, lowlevel/relative_position.py and
lowlevel/attention.py."""
import numbers
import random

import torch

from lowlevel.attention import scaled_dot_product_attention
from lowlevel.relative_position import relative_position_bias, relative_position_index
from lowlevel.windows import MASKED, shift_mask, window_partition

from .common import Mistake, call, expect, expect_png

MAPS = [(2, 14, 21, 3, 7), (1, 8, 8, 2, 4), (3, 6, 9, 5, 3)]       # (B, H, W, C, M), non-square grids included


def task_partition(ns, output_dir):
    g = torch.Generator().manual_seed(801)
    for b, h, w, c, m in MAPS:
        x = torch.randn(b, h, w, c, generator=g)
        want = window_partition(x, (m, m))
        grid = x.view(b, h // m, m, w // m, m, c)
        expect(call(ns, "window_partition", x.clone(), m), want, f"window_partition of {(b, h, w, c)}, M={m}", {
            "a plain reshape does not cut M×M windows: view as (B, H/M, M, W/M, M, C) and permute the two window "
            "indices to the front, (0, 1, 3, 2, 4, 5), before reshaping": x.reshape(-1, m, m, c),
            "the windows are numbered column by column: permute to (B, H/M, W/M, M, M, C), the window row first":
                grid.permute(0, 3, 1, 2, 4, 5).reshape(-1, m, m, c),
            "inside a window the tokens are transposed: keep (row, column) order, permute (0, 1, 3, 2, 4, 5)":
                grid.permute(0, 1, 3, 4, 2, 5).reshape(-1, m, m, c),
        }, hint="(B·nW, M, M, C): windows row by row over each image's (H/M, W/M) grid, images one after another")
        expect(call(ns, "window_reverse", want.clone(), m, h, w), x, f"window_reverse back to {(b, h, w, c)}", {
            "a plain reshape does not put the windows back: view as (B, H/M, W/M, M, M, C), then permute "
            "(0, 1, 3, 2, 4, 5) so that each window row's tokens meet their rows": want.reshape(b, h, w, c),
        }, hint="window_reverse(window_partition(x, M), M, H, W) must give x back exactly")


def reference_attention(q, k, table, m, bias_sign=1, scale_bias=False, transpose=False):
    """Attn with deliberate variants: the offset j − i (transposed bias), the bias inside the scaling."""
    bias = relative_position_bias(table, (m, m))
    bias = bias.transpose(-2, -1) if transpose else bias
    d = q.shape[-1]
    if scale_bias:
        return ((q @ k.transpose(-2, -1) + bias) / d ** 0.5).softmax(-1)
    return scaled_dot_product_attention(q, k, k, bias_sign * bias)[1]


def task_relative_position(ns, output_dir):
    for m in (7, 2, 4):
        want = relative_position_index((m, m))
        got = call(ns, "relative_position_index", m)
        if isinstance(got, torch.Tensor) and got.is_floating_point():
            raise Mistake(f"relative_position_index({m}) is {got.dtype}, expected integers",
                          "an index selects rows of B̂: return a long tensor (torch.arange gives one)")
        expect(got, want, f"relative_position_index({m})", {
            "the offset is query minus key, i − j (Swin §3.2; Shaw et al. use j − i): index[i, j] uses h_i − h_j":
                want.T.contiguous(),
            "the row offset is multiplied by 2M − 1, the number of column offsets, not by M":
                want // (2 * m - 1) * m + want % (2 * m - 1),
        }, hint="index[i, j] = (h_i − h_j + M − 1)·(2M − 1) + (w_i − w_j + M − 1), token t at row t // M, column t % M",
           atol=0, rtol=0)
    g = torch.Generator().manual_seed(802)
    for b, heads, m, d in [(2, 3, 4, 8), (1, 2, 7, 4), (3, 1, 2, 16)]:
        q, k = (2 * torch.randn(b, heads, m * m, d, generator=g) for _ in range(2))
        table = torch.randn((2 * m - 1) ** 2, heads, generator=g)
        expect(call(ns, "relative_attention", q.clone(), k.clone(), table.clone(), m),
               reference_attention(q, k, table, m), f"relative_attention for q {(b, heads, m * m, d)}, M={m}", {
                   "the bias is added after the scaling: softmax(q kᵀ/√d + B), eq. (4)":
                       reference_attention(q, k, table, m, scale_bias=True),
                   "r is indexed by i − j (query minus key): B[i, j] = table[index[i, j]], not table[index[j, i]]":
                       reference_attention(q, k, table, m, transpose=True),
                   "the relative position bias is missing: add B to the logits":
                       reference_attention(q, k, table, m, bias_sign=0),
               }, hint="Attn = softmax over the keys of q kᵀ/√d + B, B[h, i, j] = table[index[i, j], h]")


def task_shift_mask(ns, output_dir):
    for h, w, m, s in [(14, 14, 7, 3), (8, 12, 4, 2), (9, 6, 3, 1), (6, 6, 6, 3)]:
        want = shift_mask((h, w), (m, m), (s, s))
        ids = call(ns, "region_ids", h, w, m, s)
        if not isinstance(ids, torch.Tensor) or tuple(ids.shape) != (h, w):
            raise Mistake(f"region_ids({h}, {w}, {m}, {s}) returned {getattr(ids, 'shape', type(ids).__name__)}, "
                          f"expected an ({h}, {w}) tensor", "one integer per token of the rolled map")
        windows = window_partition(ids[None, :, :, None], (m, m)).flatten(1)
        same = windows[:, :, None] == windows[:, None, :]
        if not torch.equal(same, want == 0):
            raise Mistake(f"region_ids({h}, {w}, {m}, {s}): tokens in one window share an id that were not neighbours "
                          f"before the roll (or the other way round)",
                          "after rolling by −s the regions are at the bottom and right: rows [0, H−M), [H−M, H−s), "
                          "[H−s, H) along each axis, 3 × 3 = 9 ids")
        top_left = shift_mask((h, w), (m, m), (m - s, m - s))          # the last window split at M − s from its end
        expect(call(ns, "shift_mask", h, w, m, s), want, f"shift_mask({h}, {w}, {m}, {s})", {
            "every implementation adds −100, not −inf: a finite value that still underflows to 0 in the softmax":
                want.masked_fill(want < 0, float("-inf")),
            "the mask is inverted: 0 where two tokens share a region (they may attend), −100 where they do not":
                torch.where(want == 0, MASKED, 0.0),
            "the last window along each axis splits after its first M − s rows, where the s rows the roll brought "
            "round from the top begin: at H − s, not at H − M + s": top_left,
        }, hint="(nW, M², M²): partition the region ids like the map, then compare each window's ids pairwise")
    expect_png(output_dir / "shift_mask.png", "the region ids and the shifted windows' masks")


def cost_cases():
    rng = random.Random(8)
    return [(56, 56, 96, 7), (7, 7, 768, 7), (14, 28, 192, 7), (12, 12, 64, 12)] + \
        [(rng.randint(1, 40), rng.randint(1, 40), rng.choice([8, 32, 96]), rng.randint(2, 9)) for _ in range(3)]


def expect_count(got, want: int, what: str, hints: dict[int, str], hint: str) -> None:
    if not isinstance(got, numbers.Integral):
        raise Mistake(f"{what} returned {type(got).__name__}, expected an integer", "return an int")
    if got != want:
        raise Mistake(f"{what}: expected {want:,}, got {got:,}", hints.get(got, hint))


def task_cost(ns, output_dir):
    for h, w, c, m in cost_cases():
        hw = h * w
        projections = 4 * hw * c * c
        expect_count(call(ns, "msa_flops", h, w, c), projections + 2 * hw * hw * c, f"msa_flops({h}, {w}, {c})", {
            projections + hw * hw * c: "q kᵀ and A v cost (hw)²C each: 2(hw)²C",
            3 * hw * c * c + 2 * hw * hw * c: "four projections, 4hwC²: q, k, v and the output",
            projections + 2 * hw * hw * c * c: "the attention term is 2(hw)²C, linear in C"},
            hint="Ω(MSA) = 4hwC² + 2(hw)²C (Swin eq. (1))")
        expect_count(call(ns, "wmsa_flops", h, w, c, m), projections + 2 * m * m * hw * c,
                     f"wmsa_flops({h}, {w}, {c}, {m})", {
                         projections + 2 * m * hw * c: "a window holds M² tokens: each query meets M² keys",
                         projections + m * m * hw * c: "q kᵀ and A v cost M²hwC each: 2M²hwC",
                         projections + 2 * hw * hw * c: "that is global attention: inside windows each token meets "
                                                        "M² keys, not hw"},
                     hint="Ω(W-MSA) = 4hwC² + 2M²hwC (Swin eq. (2))")
    expect_png(output_dir / "attention_cost.png", "global vs windowed attention cost")


TASKS = {1: task_partition, 2: task_relative_position, 3: task_shift_mask, 4: task_cost}
