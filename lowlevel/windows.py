"""Windows, Swin §3.2: self-attention "within local windows ... arranged to evenly partition the image in a
non-overlapping manner", and the shifted configuration of the next block.

    window_partition   (B, H, W, C) -> (B·nW, M_h, M_w, C)   windows in row-major order, tokens row-major inside
    window_reverse     the inverse
    cyclic_shift       torch.roll by (−s_h, −s_w): "cyclic-shifting toward the top-left direction" (§3.2, Fig. 4)
    region_map         which tokens of the rolled map were neighbours before the roll
    shift_mask         which pairs of tokens in a shifted window were not neighbours before the roll

The layouts are the original's (microsoft/Swin-Transformer `window_partition`, `window_reverse`), which timm keeps;
torchvision and transformers write the same reshapes inline.
"""
import torch

# The logit added to a masked pair. Every implementation adds -100, not -inf: exp(-100) ≈ 4e-44 underflows in the
# softmax for any real logit, and a finite value keeps a fully masked row (none exists here) from turning into NaN.
MASKED = -100.0


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """x (B, H, W, C) with H, W multiples of the window -> (B·nW, M_h, M_w, C), nW = (H/M_h)·(W/M_w)."""
    b, h, w, c = x.shape
    mh, mw = window
    x = x.view(b, h // mh, mh, w // mw, mw, c)                   # (B, H/M_h, M_h, W/M_w, M_w, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, mh, mw, c)    # window row, window column, then inside


def window_reverse(windows: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B·nW, M_h, M_w, C) -> (B, H, W, C) for a (H, W) map: the inverse of `window_partition`."""
    _, mh, mw, c = windows.shape
    h, w = size
    x = windows.view(-1, h // mh, w // mw, mh, mw, c)            # (B, H/M_h, W/M_w, M_h, M_w, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def cyclic_shift(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) rolled by (−s_h, −s_w): row s_h becomes row 0, and rows 0..s_h−1 wrap to the bottom.
    cyclic_shift(x, (−s_h, −s_w)) undoes it."""
    if not any(shift):
        return x
    return torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))


def region_ids(length: int, window: int, shift: int) -> torch.Tensor:
    """(length,) per row (or column) of a rolled, whole-window map: 0 before the last window, 1 in the last window's
    first M − s rows, 2 in its last s rows, which are the rows the roll brought round from the top."""
    i = torch.arange(length)
    return (i >= length - window).long() + (i >= length - shift).long()


def region_map(size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """(H, W) long for a rolled (H, W) map of whole windows: tokens with one id were neighbours before the roll.
    The 3 × 3 row and column bands of `region_ids`, numbered row-major as the original's `cnt` loop does."""
    return region_ids(size[0], window[0], shift[0])[:, None] * 3 + region_ids(size[1], window[1], shift[1])


def shift_mask(size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], dtype=torch.float32,
               device=None) -> torch.Tensor:
    """§3.2, "a masking mechanism is employed to limit self-attention computation to within each sub-window":
    (nW, N, N), N = M_h·M_w, for a (H, W) map of whole windows; 0 where query i and key j lie in the same region of
    the unrolled map (`region_map`), MASKED where they do not."""
    ids = window_partition(region_map(size, window, shift)[None, :, :, None], window).flatten(1)  # (nW, N)
    same = ids[:, :, None] == ids[:, None, :]                             # (nW, N, N), query i against key j
    mask = torch.zeros(same.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~same.to(mask.device), MASKED)
