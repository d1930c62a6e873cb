"""Relative position bias, Swin §3.2, eq. (4): Attention(Q, K, V) = SoftMax(QKᵀ/√d + B) V.

"Since the relative position along each axis lies in the range [−M + 1, M − 1], we parameterize a smaller-sized
bias matrix B̂ ∈ R^{(2M−1)×(2M−1)}, and values in B are taken from B̂", one table per head and block. ViT adds
where a token is to its embedding (lowlevel/position.py); Swin adds where a key is relative to the query to the
attention logit, a scalar per head that does not depend on the content:

    Attn(i, j) = softmax_j(q_i·k_j/√d + r_{i−j}),   r_{i−j} = B̂[h_i − h_j + M_h − 1, w_i − w_j + M_w − 1]

Offsets are query minus key, as in the original, timm, torchvision and transformers (Shaw et al. 2018 write key
minus query). B̂ is stored flattened row-major, ((2M_h−1)·(2M_w−1), heads), the layout of every Swin checkpoint.
"""
import torch


def relative_position_index(window: tuple[int, int], device=None) -> torch.Tensor:
    """(N, N) long, N = M_h·M_w, tokens row-major in the window (t = h·M_w + w): entry [i, j] is the row of the
    flattened B̂ for query i and key j, (h_i − h_j + M_h − 1)·(2M_w − 1) + (w_i − w_j + M_w − 1)."""
    mh, mw = window
    h, w = torch.meshgrid(torch.arange(mh, device=device), torch.arange(mw, device=device), indexing="ij")
    h, w = h.flatten(), w.flatten()                                          # (N,) each token's row and column
    dh = h[:, None] - h[None, :] + mh - 1                                    # (N, N) in [0, 2M_h − 2]
    dw = w[:, None] - w[None, :] + mw - 1
    return dh * (2 * mw - 1) + dw


def relative_position_bias(table: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """B of eq. (4) for every head: table B̂ ((2M_h−1)·(2M_w−1), heads) -> (heads, N, N)."""
    rows = (2 * window[0] - 1) * (2 * window[1] - 1)
    if table.shape[0] != rows:
        raise ValueError(f"table: expected {rows} rows for window {tuple(window)}, got shape {tuple(table.shape)}")
    n = window[0] * window[1]
    index = relative_position_index(window, table.device)
    return table[index.flatten()].view(n, n, -1).permute(2, 0, 1)             # (N·N, heads) -> (heads, N, N)
