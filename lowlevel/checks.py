"""Input checks that fail early with an error naming the parameter, what was expected and what was got."""
import re

import torch

from .config import is_integer
from .linear import LowRank


def check_images(images: torch.Tensor, *, patch_size: int, channels: int | None = None,
                 size: tuple[int, int] | None = None) -> None:
    """Images must be (B, C, H, W), with C and (H, W) as the config says and H, W multiples of P."""
    if not is_integer(patch_size) or patch_size < 1:
        raise ValueError(f"patch_size: expected a positive integer, got {patch_size!r}")
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images: expected a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images: expected rank 4 (B, C, H, W), got rank {images.ndim} with shape {tuple(images.shape)}")
    _, c, h, w = images.shape
    if channels is not None and c != channels:
        raise ValueError(f"images: expected {channels} channels (cfg.in_channels), got {c} in shape {tuple(images.shape)}")
    if size is not None and (h, w) != tuple(size):
        raise ValueError(f"images: expected height and width {tuple(size)} (cfg.image_size), got {(h, w)}")
    if h % patch_size or w % patch_size:
        raise ValueError(f"images: expected height and width divisible by patch_size={patch_size}, got {(h, w)}")


def check_params(params: dict, expected: dict[str, tuple[int, ...]], what: str = "params") -> None:
    """`params` must have exactly the keys of `expected`, each of the expected shape; lists every bad key."""
    if not isinstance(params, dict):
        raise ValueError(f"{what}: expected a dict of tensors, got {type(params).__name__}")
    if not isinstance(expected, dict):
        raise ValueError(f"expected: expected a dict of names to shapes (param_shapes(cfg)), got "
                         f"{type(expected).__name__}")
    shapeless = sorted(k for k, v in params.items() if not hasattr(v, "shape"))
    if shapeless:
        raise ValueError(f"{what}: expected tensors, got {type(params[shapeless[0]]).__name__} at {shapeless[:3]}")
    missing = sorted(set(expected) - set(params), key=in_block_order)
    unexpected = sorted(set(params) - set(expected), key=in_block_order)
    misshaped = [f"{k}: expected {tuple(expected[k])}, got {tuple(params[k].shape)}"
                 for k in sorted((k for k in set(expected) & set(params) if tuple(params[k].shape) != tuple(expected[k])),
                                 key=in_block_order)]
    if missing or unexpected or misshaped:
        lines = [f"{what} do not match the config:"]
        lines += bad_keys("missing key:", missing) + bad_keys("unexpected key:", unexpected)
        lines += bad_keys("mis-shaped key", misshaped)
        raise ValueError("\n".join(lines))


def in_block_order(key: str) -> list:
    """A sort key that reads the numbers in a name as numbers: blocks.2 before blocks.10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", key)]


def bad_keys(kind: str, entries: list[str], listed: int = 5) -> list[str]:
    """One line per bad key, or for more than `listed` one line with their count and the first three: an error stays
    short when a whole other model's weights were given."""
    if len(entries) <= listed:
        return [f"  {kind} {e}" for e in entries]
    return [f"  {len(entries)} {kind.rstrip(':')}s, the first: {'; '.join(entries[:3])}; …"]


def check_config(cfg, kind: type, what: str = "cfg") -> None:
    """A config of the model's own type: a dict or another model's config fails here, naming it, not deep inside."""
    if not isinstance(cfg, kind):
        raise ValueError(f"{what}: expected a {kind.__name__}, got {type(cfg).__name__}")


def check_num_heads(dim: int, num_heads: int) -> None:
    if not is_integer(num_heads) or num_heads < 1 or dim % num_heads:
        raise ValueError(f"num_heads: expected a positive divisor of the input dim {dim}, got {num_heads!r}")


def weight_shape(weight) -> tuple[int, ...]:
    """A weight's (out, in): its own, or for LoRA's LowRank its W₀'s."""
    while isinstance(weight, LowRank):
        weight = weight.weight
    return tuple(weight.shape)


def weight_tensors(name: str, weight) -> dict[str, torch.Tensor]:
    """A parameter's tensors by name, the frozen one first: itself, or for LoRA's LowRank (linear.py) W₀ and each
    update's A and B, named by the rows they adapt."""
    updates = {}
    while isinstance(weight, LowRank):
        start, stop = weight.rows
        updates.update({f"{name}[{start}:{stop}].lora_A": weight.lora_A, f"{name}[{start}:{stop}].lora_B": weight.lora_B})
        weight = weight.weight
    return {name: weight, **updates}


def check_model_inputs(params: dict, images: torch.Tensor, expected: dict[str, tuple[int, ...]]) -> None:
    """Before a forward pass: every parameter the model reads is there with its shape (keys it does not read are
    ignored), and on the images' device in their dtype. A LoRA weight (linear.LowRank) is checked by its W₀'s shape
    (lora.adapt checked the adapters') and by the device and dtype of W₀, A and B. A mismatch is a ValueError naming
    both sides (otherwise torch raises a RuntimeError deep in the model, or a weight left on the meta device gives NaN
    logits)."""
    if not isinstance(params, dict):
        raise ValueError(f"params: expected a dict of tensors, got {type(params).__name__}")
    tensors = {k: weight_tensors(k, v) for k, v in params.items() if k in expected}
    check_params({k: t[k] for k, t in tensors.items()}, expected)
    for parts in tensors.values():
        for k, v in parts.items():
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"params: expected {k} to be a tensor, got {type(v).__name__}")
            if v.device != images.device or v.dtype != images.dtype:
                raise ValueError(f"params: expected every tensor on the images' device and dtype ({images.device}, "
                                 f"{images.dtype}), got {k} on {v.device} as {v.dtype}")
