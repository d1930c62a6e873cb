"""Eq. (1), first half: cut the image into patches and project each one linearly.

    x ∈ R^{H×W×C}  ->  x_p ∈ R^{N×(P²·C)},  N = HW/P²,   then  x_p E  with  E ∈ R^{(P²·C)×D}.

Each patch is flattened in (C, P, P) order, the order of PyTorch's NCHW layout and of `F.unfold`, so the
projection's weight is a conv kernel (D, C, P, P) reshaped to (D, C·P·P): patch embedding *is* a
convolution with kernel size = stride = P.
"""
import torch

from .checks import check_images
from .linear import linear


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C·P·P), patches in row-major order over the (H/P, W/P) grid."""
    check_images(images, patch_size=patch_size)
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)          # (B, C, gh, P, gw, P)
    x = x.permute(0, 2, 4, 1, 3, 5)                          # (B, gh, gw, C, P, P)
    return x.reshape(b, (h // p) * (w // p), c * p * p)      # (B, N, C·P·P)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """(B, N, C·P·P) -> (B, C, H, W): the inverse of `patchify`."""
    b, n, cpp = patches.shape
    gh, gw = grid_size
    p = patch_size
    if n != gh * gw or cpp % (p * p):
        raise ValueError(f"patches: expected (B, {gh * gw}, C·{p}·{p}) for grid {grid_size}, got {tuple(patches.shape)}")
    c = cpp // (p * p)
    x = patches.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, P, gw, P)
    return x.reshape(b, c, gh * p, gw * p)


def patch_embedding(images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Eq. (1): x_p E. (B, C, H, W) -> (B, N, D), with weight E as (D, C·P·P) and bias (D,)."""
    return linear(patchify(images, patch_size), weight, bias)
