"""What a checkpoint's weights cannot tell, and what a format cannot hold: one place for each, used by every format.

The shapes of the weights fix most of a ViTConfig: patch size, channels, D, depth, MLP size, classes, biases. They do
not fix
- the head count: timm, torchvision and transformers store q, k and v of all heads as (D, D) matrices, so any
  divisor of D fits (the official .npz keeps the head axis, (D, H, D_h); transformers' config.json states it; a timm
  hub directory's config.json names its architecture);
- a non-square image size: E_pos has N = gh·gw rows, and N factors many ways;
- the layer-norm eps and the GELU flavour (numerics, not shapes);
- the preprocessing the model was trained with (`Preprocessing`).
A reader takes these from the file where the format stores them, else from the caller's overrides, else from the
functions below, which never guess: the head count comes from a known architecture with the same shapes or not at all.
"""
import math
from dataclasses import dataclass

from .architectures import described, matching


def num_heads_for(dim: int, depth: int, mlp_dim: int, patch_size: int) -> int:
    """The head count of a model whose file does not store it: that of the known architecture with the same
    (D, depth, MLP size, patch size) (architectures.py). None, or two head counts: a ValueError naming --num-heads."""
    found = matching(dim, depth, mlp_dim, patch_size)
    if len(found) == 1:
        return next(iter(found))
    shapes = f"D={dim}, depth {depth}, MLP {mlp_dim}, patch {patch_size}"
    if found:
        options = "; ".join(f"{heads} in {described(names)}" for heads, names in sorted(found.items()))
        got = f"the known architectures with their shapes ({shapes}) differ in it ({options})"
    else:
        got = f"no known architecture has their shapes ({shapes})"
    raise ValueError(f"num_heads: expected a head count, but the weights do not store it and {got}; pass it with "
                     f"--num-heads (num_heads=... in the API)")


def square_image_size(rows: int, prefix_tokens: int, patch_size: int) -> int:
    """The side of a square image whose patch grid, with `prefix_tokens` class rows, gives E_pos `rows` rows."""
    n = rows - prefix_tokens
    side = math.isqrt(max(n, 0))
    if n < 1 or side * side != n:
        raise ValueError(f"image_size: expected a square patch grid, got {n} position rows (after {prefix_tokens} "
                         f"prefix rows), which is no square; pass the image size explicitly with --image-size H W")
    return side * patch_size


def require(fmt: str, cfg, **allowed) -> None:
    """Refuse, before anything is written, a config that `fmt` cannot express: each keyword names a config field
    and the value, or tuple of values, the format can hold."""
    for field, values in allowed.items():
        values = values if isinstance(values, tuple) else (values,)
        value = getattr(cfg, field)
        if value not in values:
            expected = values[0] if len(values) == 1 else f"one of {values}"
            raise ValueError(f"{field}: {fmt} cannot express {field}={value!r}; it holds {field}={expected!r}")


@dataclass(frozen=True)
class Preprocessing:
    """How a checkpoint's images are prepared: resize the shorter side to (image size) / crop_pct and centre-crop
    to the image size (crop_pct None: resize straight to the image size), scale to [0, 1], then (x − mean) / std per
    channel. `source` says where these numbers came from."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float | None
    source: str
