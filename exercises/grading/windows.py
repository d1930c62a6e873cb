"""Checks for 08_windows_and_relative_positions.md, against lowlevel/windows.py, lowlevel/relative_position.py and
lowlevel/attention.py."""
import random

import torch

from lowlevel.attention import scaled_dot_product_attention
from lowlevel.relative_position import relative_position_bias, relative_position_index
from lowlevel.windows import MASKED, region_map, shift_mask, window_partition, window_reverse

from .common import Mistake, call, expect, expect_integer, expect_png, type_name

HINTS = {
    "plain reshape": "a plain reshape does not cut M×M windows: view as (B, H/M, M, W/M, M, C) and permute the two "
                     "window indices to the front, (0, 1, 3, 2, 4, 5), before reshaping",
    "windows column major": "the windows are numbered column by column: permute to (B, H/M, W/M, M, M, C), the "
                            "window row first",
    "tokens transposed": "inside a window the tokens are transposed: keep (row, column) order, permute "
                         "(0, 1, 3, 2, 4, 5)",
    "reverse plain reshape": "a plain reshape does not put the windows back: view as (B, H/M, W/M, M, M, C), then "
                             "permute (0, 1, 3, 2, 4, 5) so that each window row's tokens meet their rows",
    "float index": "an index selects rows of B̂: return a long tensor (torch.arange gives one)",
    "key minus query": "the offset is query minus key, i − j (Swin §3.2; Shaw et al. use j − i): index[i, j] uses "
                       "h_i − h_j",
    "no offset": "add M − 1 to both offsets, h_i − h_j + M − 1 and w_i − w_j + M − 1, so that each runs over "
                 "0 … 2M − 2: unshifted, the index is negative",
    "row stride": "the row offset is multiplied by 2M − 1, the number of column offsets, not by M",
    "bias scaled": "the bias is added after the scaling: softmax(q kᵀ/√d + B), eq. (4)",
    "bias transposed": "r is indexed by i − j (query minus key): B[i, j] = table[index[i, j]], not table[index[j, i]]",
    "no bias": "the relative position bias is missing: add B to the logits",
    "regions": "after rolling by −s the regions are at the bottom and right: rows [0, H−M), [H−M, H−s), [H−s, H) "
               "along each axis, 3 × 3 = 9 ids",
    "-inf": "every implementation adds −100, not −inf: a finite value that still underflows to 0 in the softmax",
    "inverted": "the mask is inverted: 0 where two tokens share a region (they may attend), −100 where they do not",
    "split at M - s": "the last window along each axis splits after its first M − s rows, where the s rows the roll "
                      "brought round from the top begin: at H − s, not at H − M + s",
    "one product": "q kᵀ and A v cost (hw)²C each: 2(hw)²C",
    "three projections": "four projections, 4hwC²: q, k, v and the output",
    "attention C²": "the attention term is 2(hw)²C, linear in C",
    "M keys": "a window holds M² tokens: each query meets M² keys",
    "one window product": "q kᵀ and A v cost M²hwC each: 2M²hwC",
    "global": "that is global attention: inside windows each token meets M² keys, not hw",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def partition(x: torch.Tensor, m: int) -> torch.Tensor:
    return window_partition(x, (m, m))


def reverse(windows: torch.Tensor, m: int, h: int, w: int) -> torch.Tensor:
    return window_reverse(windows, (h, w))


def index(m: int) -> torch.Tensor:
    return relative_position_index((m, m))


def relative_attention(q: torch.Tensor, k: torch.Tensor, table: torch.Tensor, m: int) -> torch.Tensor:
    return scaled_dot_product_attention(q, k, k, relative_position_bias(table, (m, m)))[1]   # v unused: the probs


def region_ids(h: int, w: int, m: int, s: int) -> torch.Tensor:
    return region_map((h, w), (m, m), (s, s))


def mask(h: int, w: int, m: int, s: int) -> torch.Tensor:
    return shift_mask((h, w), (m, m), (s, s))


def msa_flops(h: int, w: int, c: int) -> int:
    return 4 * h * w * c * c + 2 * (h * w) ** 2 * c              # Swin eq. (1)


def wmsa_flops(h: int, w: int, c: int, m: int) -> int:
    return 4 * h * w * c * c + 2 * m * m * h * w * c              # Swin eq. (2)


REFERENCE = {"window_partition": partition, "window_reverse": reverse, "relative_position_index": index,
             "relative_attention": relative_attention, "region_ids": region_ids, "shift_mask": mask,
             "msa_flops": msa_flops, "wmsa_flops": wmsa_flops}


# ---- checks ----------------------------------------------------------------------------------------------------

MAPS = [(2, 14, 21, 3, 7), (1, 8, 8, 2, 4), (3, 6, 9, 5, 3)]       # (B, H, W, C, M), non-square grids included


def task_partition(ns, output_dir):
    g = torch.Generator().manual_seed(801)
    for b, h, w, c, m in MAPS:
        x = torch.randn(b, h, w, c, generator=g)
        want = partition(x, m)
        grid = x.view(b, h // m, m, w // m, m, c)
        expect(call(ns, "window_partition", x, m), want, f"window_partition of {(b, h, w, c)}, M={m}", {
            HINTS["plain reshape"]: x.reshape(-1, m, m, c),
            HINTS["windows column major"]: grid.permute(0, 3, 1, 2, 4, 5).reshape(-1, m, m, c),
            HINTS["tokens transposed"]: grid.permute(0, 1, 3, 4, 2, 5).reshape(-1, m, m, c),
        }, hint="(B·nW, M, M, C): windows row by row over each image's (H/M, W/M) grid, images one after another")
        expect(call(ns, "window_reverse", want, m, h, w), x, f"window_reverse back to {(b, h, w, c)}", {
            HINTS["reverse plain reshape"]: want.reshape(b, h, w, c),
        }, hint="window_reverse(window_partition(x, M), M, H, W) must give x back exactly")


def wrong_attention(q, k, table, m, mistake):
    """`relative_attention` with one deliberate mistake, for recognising what the learner did."""
    bias = relative_position_bias(table, (m, m))
    if mistake == "bias scaled":
        return ((q @ k.transpose(-2, -1) + bias) / q.shape[-1] ** 0.5).softmax(-1)
    bias = {"bias transposed": bias.transpose(-2, -1), "no bias": torch.zeros_like(bias)}[mistake]
    return scaled_dot_product_attention(q, k, k, bias)[1]


def task_relative_position(ns, output_dir):
    for m in (7, 2, 4):
        want = index(m)
        got = call(ns, "relative_position_index", m)
        if isinstance(got, torch.Tensor) and got.is_floating_point():
            raise Mistake(f"relative_position_index({m}) is {got.dtype}, expected integers", HINTS["float index"])
        expect(got, want, f"relative_position_index({m})", {
            HINTS["key minus query"]: want.T.contiguous(),
            HINTS["row stride"]: want // (2 * m - 1) * m + want % (2 * m - 1),
            HINTS["no offset"]: want - want[0, 0],     # less the centre, index[i, i] = (M − 1)·(2M − 1) + M − 1
        }, hint="index[i, j] = (h_i − h_j + M − 1)·(2M − 1) + (w_i − w_j + M − 1), token t at row t // M, column t % M",
           atol=0, rtol=0)
    g = torch.Generator().manual_seed(802)
    for b, heads, m, d in [(2, 3, 4, 8), (1, 2, 7, 4), (3, 1, 2, 16)]:
        q, k = (2 * torch.randn(b, heads, m * m, d, generator=g) for _ in range(2))
        table = torch.randn((2 * m - 1) ** 2, heads, generator=g)
        expect(call(ns, "relative_attention", q, k, table, m), relative_attention(q, k, table, m),
               f"relative_attention for q {(b, heads, m * m, d)}, M={m}",
               {HINTS[w]: wrong_attention(q, k, table, m, w) for w in ("bias scaled", "bias transposed", "no bias")},
               hint="Attn = softmax over the keys of q kᵀ/√d + B, B[h, i, j] = table[index[i, j], h]")


def task_shift_mask(ns, output_dir):
    for h, w, m, s in [(14, 14, 7, 3), (8, 12, 4, 2), (9, 6, 3, 1), (6, 6, 6, 3)]:
        want = mask(h, w, m, s)
        ids = call(ns, "region_ids", h, w, m, s)
        if not isinstance(ids, torch.Tensor) or tuple(ids.shape) != (h, w):
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type_name(ids)
            raise Mistake(f"region_ids({h}, {w}, {m}, {s}) returned {shape}, expected an ({h}, {w}) tensor",
                          "one integer per token of the rolled map")
        windows = partition(ids[None, :, :, None], m).flatten(1)
        if not torch.equal(windows[:, :, None] == windows[:, None, :], want == 0):
            raise Mistake(f"region_ids({h}, {w}, {m}, {s}): tokens in one window share an id that were not neighbours "
                          f"before the roll (or the other way round)", HINTS["regions"])
        expect(call(ns, "shift_mask", h, w, m, s), want, f"shift_mask({h}, {w}, {m}, {s})", {
            HINTS["-inf"]: want.masked_fill(want < 0, float("-inf")),
            HINTS["inverted"]: torch.where(want == 0, MASKED, 0.0),
            HINTS["split at M - s"]: mask(h, w, m, m - s),       # the last window split at M − s from its end
        }, hint="(nW, M², M²): partition the region ids like the map, then compare each window's ids pairwise")
    expect_png(output_dir / "shift_mask.png", "the region ids and the shifted windows' masks")


def cost_cases():
    rng = random.Random(8)
    return [(56, 56, 96, 7), (7, 7, 768, 7), (14, 28, 192, 7), (12, 12, 64, 12)] + \
        [(rng.randint(1, 40), rng.randint(1, 40), rng.choice([8, 32, 96]), rng.randint(2, 9)) for _ in range(3)]


def task_cost(ns, output_dir):
    for h, w, c, m in cost_cases():
        hw = h * w
        projections = 4 * hw * c * c
        expect_integer(call(ns, "msa_flops", h, w, c), msa_flops(h, w, c), f"msa_flops({h}, {w}, {c})", {
            projections + hw * hw * c: HINTS["one product"],
            3 * hw * c * c + 2 * hw * hw * c: HINTS["three projections"],
            projections + 2 * hw * hw * c * c: HINTS["attention C²"]},
            hint="Ω(MSA) = 4hwC² + 2(hw)²C (Swin eq. (1))")
        expect_integer(call(ns, "wmsa_flops", h, w, c, m), wmsa_flops(h, w, c, m), f"wmsa_flops({h}, {w}, {c}, {m})", {
            projections + 2 * m * hw * c: HINTS["M keys"],
            projections + m * m * hw * c: HINTS["one window product"],
            msa_flops(h, w, c): HINTS["global"]},
            hint="Ω(W-MSA) = 4hwC² + 2M²hwC (Swin eq. (2))")
    expect_png(output_dir / "attention_cost.png", "global vs windowed attention cost")


TASKS = {1: task_partition, 2: task_relative_position, 3: task_shift_mask, 4: task_cost}
