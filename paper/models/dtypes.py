"""The one vocabulary for floating-point types, shared by every command and function that takes one by name."""
import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def dtype_named(name: str, allowed: tuple[str, ...] = tuple(DTYPES)) -> torch.dtype:
    """"float32" -> torch.float32; a name outside `allowed` is a ValueError naming the choices."""
    if name not in allowed:
        raise ValueError(f"dtype: expected one of {allowed}, got {name!r}")
    return DTYPES[name]
