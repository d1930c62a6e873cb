"""Checks for 11_patch_embedding_filters.md, against torch.linalg.eigh of the filters' covariance (the workbook's
recipe uses the SVD) and the model paper/training/trained.py trains with `python -m paper.train`.

The principal components are checked in float64 (tolerance 1e-9: eigh and SVD agree to ~1e-13 on these matrices,
and every known mistake changes them by more than 1e-2)."""
import torch

import lowlevel as vit
from paper.training.trained import EXERCISE_MODEL, trained_model

from .common import Mistake, call, expect, expect_png, type_name

HINTS = {
    "filters hwc": "each row is flattened in (C, P, P) order, like a patch: reshape(D, C, P, P), not (D, P, P, C)",
    "filters transposed": "each filter is a row of patch.weight (D, C·P·P): reshape the weight itself, not weight.T",
    "not centred": "subtract the mean filter first: the components are those of the deviations from the mean",
    "ascending": "largest variance first: torch.linalg.eigh returns eigenvalues in ascending order, so take its last "
                 "k eigenvectors, reversed",
    "singular values": "a component's share of the variance is s_i² / Σ_j s_j²: square the singular values",
    "top k only": "divide by the variance of all the components, Σ_j s_j² over every j, not only the top k",
    "sign": "sign each component so that its largest-magnitude entry is positive (the sign of a component is "
            "arbitrary, the workbook fixes it)",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def embedding_filters(weight: torch.Tensor, in_channels: int, patch_size: int) -> torch.Tensor:
    return weight.reshape(weight.shape[0], in_channels, patch_size, patch_size)


def principal_components(filters: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pca(filters, k)


REFERENCE = {"embedding_filters": embedding_filters, "principal_components": principal_components}


def prepare() -> None:
    """The model the workbook reads, trained by `python -m paper.train` on first use (not under the task's time
    limit, and not inside the learner's limited process)."""
    trained_model(*EXERCISE_MODEL)


# ---- checks ----------------------------------------------------------------------------------------------------

def signed(vectors: torch.Tensor) -> torch.Tensor:
    """Each row signed so that its largest-magnitude entry is positive."""
    return vectors * torch.sign(vectors.gather(1, vectors.abs().argmax(dim=1, keepdim=True)))


def pca(filters: torch.Tensor, k: int, mistake: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k principal components of the filters from the eigenvectors of their covariance; or with one
    deliberate mistake."""
    x = filters.reshape(filters.shape[0], -1)
    if mistake != "not centred":
        x = x - x.mean(dim=0)
    values, vectors = torch.linalg.eigh(x.T @ x)                  # ascending eigenvalues s_i², columns
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1).T
    if mistake == "ascending":
        values, vectors = values.flip(0), vectors.flip(0)
    top = signed(vectors[:k]).reshape(k, *filters.shape[1:])
    fractions = {"singular values": values[:k].sqrt() / values.sqrt().sum(),
                 "top k only": values[:k] / values[:k].sum()}.get(mistake, values[:k] / values.sum())
    return top, fractions


def task_filters(ns, output_dir):
    g = torch.Generator().manual_seed(1101)
    for d, c, p in ((6, 3, 2), (5, 1, 3), (12, 3, 4)):
        weight = torch.randn(d, c * p * p, generator=g, dtype=torch.float64)
        want = embedding_filters(weight, c, p)
        mistakes = {HINTS["filters transposed"]: weight.T.reshape(d, c, p, p)}
        if c > 1:
            mistakes[HINTS["filters hwc"]] = weight.reshape(d, p, p, c).permute(0, 3, 1, 2)
        expect(call(ns, "embedding_filters", weight, c, p), want, f"embedding_filters of a ({d}, {c}·{p}·{p}) weight",
               mistakes, hint="(D, C·P·P) -> (D, C, P, P)", atol=0, rtol=0)          # a reshape: exact


def task_components(ns, output_dir):
    g = torch.Generator().manual_seed(1102)
    for d, c, p, k in ((24, 3, 2, 5), (10, 1, 3, 4)):
        # unequal spreads along the axes, and an offset: the components and their order are well defined
        filters = (torch.randn(d, c * p * p, generator=g, dtype=torch.float64)
                   * torch.linspace(3, 0.5, c * p * p, dtype=torch.float64) + 2).reshape(d, c, p, p)
        got = call(ns, "principal_components", filters, k)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Mistake(f"principal_components returned {type_name(got)}, not (components, fractions)",
                          "return the pair")
        want = pca(filters, k)
        known = ("not centred", "ascending", "singular values", "top k only")
        wrong = {m: pca(filters, k, m) for m in known}
        components = got[0]
        if isinstance(components, torch.Tensor) and components.shape == want[0].shape:
            flat = components.reshape(k, -1)
            if not torch.allclose(flat, signed(flat), atol=1e-9) and \
                    torch.allclose(signed(flat), want[0].reshape(k, -1), atol=1e-9):
                raise Mistake(f"components of {d} filters ({c}, {p}, {p}): right up to their signs", HINTS["sign"])
        expect(components, want[0], f"components of {d} filters ({c}, {p}, {p}), k={k}",
               {HINTS[m]: w[0] for m, w in wrong.items()}, hint="centre, SVD, the top k right singular vectors",
               atol=1e-9, rtol=0)
        expect(got[1], want[1], f"fractions of the variance, {d} filters, k={k}",
               {HINTS[m]: w[1] for m, w in wrong.items()}, hint="s_i² / Σ_j s_j²", atol=1e-9, rtol=0)


def task_picture(ns, output_dir):
    trained, cfg = trained_model(*EXERCISE_MODEL)
    initial = vit.init_params(cfg, torch.Generator().manual_seed(0))
    k = cfg.in_channels * cfg.patch_size ** 2
    for name, params in (("initial_fractions", initial), ("trained_fractions", trained)):
        filters = embedding_filters(params["patch.weight"].double(), cfg.in_channels, cfg.patch_size)
        # the learner's PCA ran in float32 on float32 weights: ~1e-7
        expect(ns.get(name), pca(filters, k)[1], f"`{name}`", hint="keep the task's code block after the function "
               "as it is: it computes both models' components", atol=1e-5, rtol=0)
    expect_png(output_dir / "embedding_filters_pca.png", "the principal components, initial and trained")


TASKS = {1: task_filters, 2: task_components, 3: task_picture}
