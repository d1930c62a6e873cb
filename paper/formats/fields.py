"""What a checkpoint's weights cannot tell, and what a format cannot hold: one place for each, used by every format.

The shapes of the weights fix most of a ViTConfig: patch size, channels, D, depth, MLP size, classes, biases. They do
not fix
- the head count: timm and transformers store q, k and v of all heads as (D, D) matrices, so any divisor of D fits
  (the official .npz keeps the head axis, (D, H, D_h), and transformers' config.json states it);
- a non-square image size: E_pos has N = gh·gw rows, and N factors many ways;
- the layer-norm eps and the GELU flavour (numerics, not shapes).
A reader takes these from the file where the format stores them, else from the caller's overrides, else from the
functions below.
"""
import math


def num_heads_for(dim: int) -> int:
    """The head count of a D-wide model whose file does not store it: D_h = 64, as in every paper model but ViT-H."""
    return max(dim // 64, 1)


def square_image_size(rows: int, prefix_tokens: int, patch_size: int) -> int:
    """The side of a square image whose patch grid, with `prefix_tokens` class rows, gives E_pos `rows` rows."""
    n = rows - prefix_tokens
    side = math.isqrt(max(n, 0))
    if n < 1 or side * side != n:
        raise ValueError(f"image_size: expected a square patch grid, got {n} position rows (after {prefix_tokens} "
                         f"prefix rows), which is no square; pass the image size explicitly (--image-size H W)")
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
