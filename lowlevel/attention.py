"""Multi-head self-attention, eq. (2)'s MSA, written out as in paper App. A, eqs. (5)-(8):

    [q, k, v] = z U_qkv                      U_qkv ∈ R^{D×3D_h} per head
    A = softmax(q kᵀ / √D_h)                 A ∈ R^{N×N}
    SA(z) = A v
    MSA(z) = [SA_1(z); …; SA_k(z)] U_msa     U_msa ∈ R^{k·D_h×D}

Weights use the layout of PyTorch's `MultiheadAttention` module and timm: `w_qkv` (3D, D) holds the rows of q, then
k, then v, each block head-major (head 0's D_h rows first); `w_out` (D, D) is the output projection.
"""
import torch

from .checks import check_num_heads, weight_shape
from .linear import Weight, linear


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                                 scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. (6)-(7): softmax(q kᵀ/√D_h) v. q, k, v: (B, H, N, D_h) -> output (B, H, N, D_h), probabilities (B, H, N, N).
    Leading axes beyond B broadcast. `bias`, broadcastable to the (…, H, N, N) logits, is added after the scaling:
    Swin's eq. (4), softmax(q kᵀ/√d + B) v, with B the relative position bias plus the shifted windows' mask, or LSA's
    diagonal mask. `scale`, a tensor, replaces 1/√D_h: LSA's learned 1/τ (locality.py)."""
    scores = q @ k.transpose(-2, -1)                        # (B, H, N, N); row i: query i against every key
    scores = scores / q.shape[-1] ** 0.5 if scale is None else scores * scale
    if bias is not None:
        scores = scores + bias
    probs = scores.softmax(dim=-1)                          # each query's weights over the keys sum to 1
    return probs @ v, probs


def qkv_heads(x: torch.Tensor, w_qkv: Weight, b_qkv: torch.Tensor | None,
              num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. (5) for every head at once: x (B, N, D) -> q, k, v, each (B, H, N, D_h), views of one projection. Each is
    taken apart along the projection's own axis before its heads are moved forward, so that in the backward the
    gradients of q, k and v (laid out (B, N, H, D_h) by the fused attention) stack straight into the projection's
    (B, N, 3, H, D_h) layout, with no strided copy."""
    b, n, d = x.shape
    check_num_heads(d, num_heads)
    if weight_shape(w_qkv) != (3 * d, d):
        raise ValueError(f"w_qkv: expected (3·D, D) = {(3 * d, d)} for inputs of D = {d}, got {weight_shape(w_qkv)}")
    qkv = linear(x, w_qkv, b_qkv).view(b, n, 3, num_heads, d // num_heads)  # (B, N, 3·D) -> (B, N, 3, H, D_h)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))                     # 3 × (B, H, N, D_h)
    return q, k, v


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D_h) -> (B, N, D): [SA_1; …; SA_k], heads concatenated in order."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


def multi_head_attention(x: torch.Tensor, w_qkv: Weight, b_qkv: torch.Tensor | None, w_out: Weight,
                         b_out: torch.Tensor | None, num_heads: int, bias: torch.Tensor | None = None,
                         scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (8): MSA(x). x (B, N, D) -> (output (B, N, D), probabilities (B, H, N, N)); `bias` and `scale` as
    `scaled_dot_product_attention` takes them."""
    out, probs = scaled_dot_product_attention(*qkv_heads(x, w_qkv, b_qkv, num_heads), bias, scale)
    return linear(merge_heads(out), w_out, b_out), probs
