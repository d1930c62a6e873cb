"""Fig. 7 left (App. D.7): "the top principal components of the learned embedding filters", as pure functions of
`patch.weight`, the E of eq. (1). Workbook 11 builds the same two functions step by step."""
import torch


def embedding_filters(weight: torch.Tensor, in_channels: int, patch_size: int) -> torch.Tensor:
    """patch.weight (D, C·P·P), each row flattened in (C, P, P) order like a patch (eq. (1)'s x_p) -> the D filters
    (D, C, P, P): filter d's pixel (c, i, j) multiplies the patch's pixel (c, i, j)."""
    if weight.ndim != 2 or weight.shape[1] != in_channels * patch_size ** 2:
        raise ValueError(f"weight: expected (D, {in_channels}·{patch_size}·{patch_size}), got {tuple(weight.shape)}")
    return weight.reshape(weight.shape[0], in_channels, patch_size, patch_size)


def principal_components(filters: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """filters (D, C, P, P) -> (components (k, C, P, P), shares (min(D, C·P·P),)): the top-k principal components of
    the D filters (subtract the mean filter, then the right singular vectors of the centred (D, C·P·P) matrix, in
    order of decreasing singular value s_i), each of unit length and signed so that its largest-magnitude entry is
    positive (the sign of a component is arbitrary); and every component's share s_i² / Σ_j s_j² of the variance."""
    d = filters.shape[0]
    x = filters.reshape(d, -1)
    if not 1 <= k <= min(x.shape):
        raise ValueError(f"k: expected 1 to min(D, C·P·P) = {min(x.shape)} components, got {k}")
    x = x - x.mean(dim=0)                                              # centre: PCA of the deviations
    _, s, vt = torch.linalg.svd(x, full_matrices=False)                # rows of vt: components, s descending
    top = vt[:k]
    signs = torch.sign(top.gather(1, top.abs().argmax(dim=1, keepdim=True)))
    return (top * signs).reshape(k, *filters.shape[1:]), s ** 2 / (s ** 2).sum()
