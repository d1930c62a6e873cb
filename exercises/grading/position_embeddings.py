"""Checks for 03_position_embeddings.md, against lowlevel/position.py, paper/analysis/maps.py and paper/models/resolution.py; the
trained MNIST model's panel (paper/training/trained.py) is checked for being drawn, its numbers in the tests."""
import torch
import torch.nn.functional as F

import lowlevel as vit
from lowlevel.position import prepend_prefix_tokens
from paper.analysis import maps as analysis
from paper.models.resolution import METHODS, resample_pos_embed
from paper.training.trained import PICTURES_MODEL, trained_model

from .common import Mistake, call, close, expect, expect_png

HINTS = {
    "omega": "ω_k = temperature^(-k/(D/4 - 1)), k = 0 … D/4-1: divide by D/4 - 1, so the last frequency is "
             "1/temperature",
    "y first": "the column (x) half comes first: [sin x·ω, cos x·ω, sin y·ω, cos y·ω], x the column index and y "
               "the row index (meshgrid(rows, cols, indexing='ij') gives y, x)",
    "sin cos interleaved": "sin(x·ω) and cos(x·ω) are blocks of D/4 each, side by side (torch.cat), not interleaved "
                           "sin, cos frequency by frequency",
    "column major": "patches are numbered row by row: meshgrid(rows, cols, indexing='ij'), not indexing='xy'",
    "class last": "the class token goes first: [x_class; x_p¹E; …]",
    "pos patches only": "E_pos has a row for the class token too: add pos to all N+1 tokens",
    "not normalised": "cosine similarity divides by both norms: normalise each embedding to unit length",
    "last row": "leave out the class token's row 0, not the last row",
    "plain reshape": "the grid must be (1, D, gh, gw) for F.interpolate: reshape to (gh, gw, D), then "
                     "permute(2, 0, 1); a plain reshape to (D, gh, gw) scrambles the embeddings",
    "align corners": "use align_corners=False (the pixel-centre convention of timm and Hugging Face)",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def embed_positions(x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return prepend_prefix_tokens(x, cls) + pos


def plot_similarity(similarity: torch.Tensor, ax_grid, title: str) -> None:
    gh, gw = similarity.shape[:2]
    for r in range(gh):
        for c in range(gw):
            ax_grid[r, c].imshow(similarity[r, c].numpy(), cmap="viridis")
            ax_grid[r, c].set_xticks([])
            ax_grid[r, c].set_yticks([])
    ax_grid[0, 0].set_title(title, loc="left")


def interpolate_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    return resample_pos_embed(pos, old_grid, new_grid, 1, "hf")


REFERENCE = {"sincos_2d": vit.sincos_2d, "embed_positions": embed_positions,
             "position_similarity": analysis.position_similarity, "plot_similarity": plot_similarity,
             "resample_pos_embed": interpolate_pos_embed}


def prepare() -> None:
    """The MNIST model whose E_pos Task 3 draws, trained by `python -m paper.train` on first use (not under the
    task's time limit, and not inside the learner's limited process)."""
    trained_model(*PICTURES_MODEL)


# ---- checks ----------------------------------------------------------------------------------------------------


GRIDS = [((3, 5), 8), ((4, 4), 12), ((2, 6), 16)]   # (grid, D)


def task_sincos(ns, output_dir):
    for grid, d in GRIDS:
        want = vit.sincos_2d(grid, d)
        gh, gw = grid
        quarter = d // 4
        y, x = torch.meshgrid(torch.arange(gh).float(), torch.arange(gw).float(), indexing="ij")
        omega_wrong = 1.0 / 10_000 ** (torch.arange(quarter) / quarter)
        xw, yw = x.reshape(-1, 1) * omega_wrong, y.reshape(-1, 1) * omega_wrong
        yx = want.reshape(gh * gw, 2, quarter * 2).flip(1).reshape(gh * gw, d)
        interleaved = want.reshape(gh * gw, 2, 2, quarter).transpose(2, 3).reshape(gh * gw, d)   # (axis, ω, sin/cos)
        expect(call(ns, "sincos_2d", grid, d), want, f"sincos_2d for grid {grid}, D={d}", {
            HINTS["omega"]: torch.cat([xw.sin(), xw.cos(), yw.sin(), yw.cos()], dim=1),
            HINTS["y first"]: yx,
            HINTS["sin cos interleaved"]: interleaved,
            HINTS["column major"]: want.reshape(gh, gw, d).transpose(0, 1).reshape(-1, d),
        }, hint="(N, D) in row-major patch order: [sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)], each (N, D/4)")


def task_embed_positions(ns, output_dir):
    g = torch.Generator().manual_seed(302)
    for b, n, d in [(2, 6, 8), (1, 4, 4), (3, 9, 12)]:
        x, cls, pos = torch.randn(b, n, d, generator=g), torch.randn(1, 1, d, generator=g), \
            torch.randn(1, n + 1, d, generator=g)
        want = prepend_prefix_tokens(x, cls) + pos
        expect(call(ns, "embed_positions", x, cls, pos), want,
               f"embed_positions of x {(b, n, d)}", {
                   HINTS["class last"]: torch.cat([x, cls.expand(b, -1, -1)], 1) + pos,
                   HINTS["pos patches only"]: torch.cat([cls.expand(b, -1, -1), x + pos[:, 1:]], 1)},
               hint="z_0 = [x_class; x] + E_pos: (B, N+1, D)")


def task_similarity(ns, output_dir):
    g = torch.Generator().manual_seed(303)
    for grid, d in GRIDS:
        pos = torch.randn(1, 1 + grid[0] * grid[1], d, generator=g)
        e = pos[0, 1:]
        want = analysis.position_similarity(pos, grid)
        expect(call(ns, "position_similarity", pos, grid), want, f"position_similarity for grid {grid}", {
            HINTS["not normalised"]: (e @ e.T).reshape(*grid, *grid),
            HINTS["last row"]: analysis.position_similarity(pos[:, :-1], grid, num_prefix_tokens=0)},
            hint="(gh, gw, gh, gw): entry [r, c, r', c'] = cos(E_pos of patch (r, c), E_pos of patch (r', c'))")
    expect_png(output_dir / "position_similarity.png", "the position-embedding similarity figure")


def task_resample(ns, output_dir):
    g = torch.Generator().manual_seed(304)
    for old, new, d in [((3, 4), (6, 8), 5), ((4, 4), (7, 7), 6), ((6, 4), (3, 2), 4)]:
        pos = torch.randn(1, 1 + old[0] * old[1], d, generator=g)
        got = call(ns, "resample_pos_embed", pos, old, new)
        # the task asks for the pixel-centre convention: torchvision's align_corners=True is the known mistake below
        wants = {m: resample_pos_embed(pos, old, new, 1, m) for m in METHODS if m != "torchvision"}
        if any(close(got, w, 1e-4, 1e-4) for w in wants.values()):
            continue
        grid = pos[0, 1:]
        plain_reshape = F.interpolate(grid.reshape(1, d, *old), size=new, mode="bicubic", align_corners=False)
        corners = F.interpolate(grid.reshape(*old, d).permute(2, 0, 1)[None], size=new, mode="bicubic",
                                align_corners=True)[0].permute(1, 2, 0)
        expect(got, wants["hf"], f"resample_pos_embed {old} -> {new}", {
            HINTS["plain reshape"]: torch.cat([pos[:, :1], plain_reshape.flatten(2).transpose(1, 2)], 1),
            HINTS["align corners"]: torch.cat([pos[:, :1], corners.reshape(1, -1, d)], 1)},
            hint="keep the class token's row 0 as it is; interpolate only the (gh, gw) grid of patch rows, bicubic")
        raise Mistake(f"resample_pos_embed {old} -> {new}: matches none of the reference methods {tuple(wants)}",
                      "bicubic F.interpolate with align_corners=False on the (1, D, gh, gw) grid")


TASKS = {1: task_sincos, 2: task_embed_positions, 3: task_similarity, 4: task_resample}

