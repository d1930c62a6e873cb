"""Vision Transformer for Small-Size Datasets (Lee, Lee & Song 2021, arXiv:2112.13492): two changes that give the
ViT a bias towards locality, each a config switch on the same model.

Shifted Patch Tokenization (§3.2), cfg.patch_embed = "spt", in place of eq. (1)'s x_p E: the image is shifted in four
directions (zeros where a shift uncovers it), the four copies are concatenated with it along the channels, and the
5C-channel image is cut into patches, flattened, layer-normalised and projected, so that each token also sees the
pixels around its patch:

    S(x) = LN(P([x; s¹; s²; s³; s⁴])) E_S,       P: patchify, (B, 5C, H, W) -> (B, N, 5C·P·P);  E_S ∈ R^{5C·P·P×D}

The four shifts, cfg.spt_shift:
    "diagonal"  by P/2 towards the four corners: the paper's, in its official code's order (SPT_LSA_ViT
                models/SPT.py, PatchShifting: the windows of the zero-padded image at its top-left, top-right,
                bottom-left and bottom-right corners, i.e. the image moved down-right, down-left, up-right, up-left)
    "cardinal"  by one pixel right, left, down, up: vit-pytorch's (vit_pytorch/vit_for_small_dataset.py, SPT)

Locality Self-Attention (§3.3), cfg.attention = "lsa", in place of eq. (6)'s softmax(q kᵀ/√D_h): the logits' scale is
learned (a learnable temperature τ) and each token's logit to itself is masked (diagonal masking), so that attention
goes to the other tokens:

    LSA(z) = softmax(M(q kᵀ) / τ) v,     M sets the diagonal to −∞;  1/τ = exp(log_scale), at first 1/√D_h

log_scale is one scalar per block (`blocks.{i}.log_scale`), as vit-pytorch holds it (its LSA.temperature,
log(dim_head^−0.5), applied as `dots * temperature.exp()`); the official code learns one scale per head, directly.
"""
import math

import torch
import torch.nn.functional as F

from .config import ViTConfig
from .linear import linear
from .norm import layer_norm
from .patches import patchify


def shifts(kind: str, patch_size: int) -> list[tuple[int, int]]:
    """SPT's four shifts (down, right) in pixels, negative for up and left, in the order their copies are stacked."""
    if kind == "cardinal":
        return [(0, 1), (0, -1), (1, 0), (-1, 0)]
    h = patch_size // 2
    return [(h, h), (h, -h), (-h, h), (-h, -h)]


def shift(images: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """(B, C, H, W) moved `down` and `right` pixels, zeros where it uncovers the frame: out[i, j] = x[i − down,
    j − right]. F.pad pads one side and crops the other (a negative pad crops)."""
    return F.pad(images, (right, -right, down, -down))


def shifted_images(images: torch.Tensor, patch_size: int, kind: str) -> torch.Tensor:
    """[x; s¹; s²; s³; s⁴] along the channels: (B, C, H, W) -> (B, 5C, H, W)."""
    return torch.cat([images, *(shift(images, d, r) for d, r in shifts(kind, patch_size))], dim=1)


def shifted_patch_tokenization(images: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                               weight: torch.Tensor, bias: torch.Tensor, patch_size: int, shift_kind: str,
                               eps: float) -> torch.Tensor:
    """SPT (§3.2): S(x) = LN(P([x; s¹; s²; s³; s⁴])) E_S. images (B, C, H, W) -> (B, N, D); the LN's weight and bias
    (5C·P·P,), E_S as weight (D, 5C·P·P), each patch flattened as `patchify` does, in (5C, P, P) order."""
    x = patchify(shifted_images(images, patch_size, shift_kind), patch_size)   # (B, N, 5C·P·P)
    return linear(layer_norm(x, norm_weight, norm_bias, eps), weight, bias)    # (B, N, D)


def diagonal_mask(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """LSA's diagonal masking as an additive bias on the logits: (n, n), −∞ on the diagonal, 0 elsewhere."""
    return torch.zeros(n, n, dtype=dtype, device=device).fill_diagonal_(-math.inf)


def masking_and_temperature(params: dict, z: torch.Tensor,
                            cfg: ViTConfig) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """What block `params` changes in eq. (6)'s logits for the tokens z (B, T, D), as (bias, scale): with standard
    attention nothing, (None, None), so the scale stays 1/√D_h; with LSA the diagonal mask (T, T) and the learned
    1/τ = exp(log_scale)."""
    if cfg.attention == "standard":
        return None, None
    return diagonal_mask(z.shape[1], z.dtype, z.device), params["log_scale"].exp()
