"""The dense layer x Wᵀ + b: the one function every dense layer of the model calls.

A weight is a tensor, or a `LowRank`: a frozen W₀ with LoRA's update on some of its output rows (Hu et al. 2021,
arXiv:2106.09685, eq. (3) with the α/r scaling of §4.1):

    h = W₀x + (α/r)·B A x,      B ∈ R^{d×r}, A ∈ R^{r×k}

computed as x W₀ᵀ + b + (α/r)·dropout(x) Aᵀ Bᵀ, never forming W₀ + BA, so that the backward reaches A and B through
two thin matmuls and W₀ needs no gradient. `lora.adapt` builds these weights from the params and the adapters dict
for one forward; `lora.merge` folds them into plain tensors for inference.
"""
from typing import NamedTuple, Union

import torch
import torch.nn.functional as F


class LowRank(NamedTuple):
    """W₀ with the low-rank update (α/r)·B A on output rows [start, stop): all of them, or one of q, k, v's thirds of
    the fused qkv matrix (the paper adapts W_q and W_v, §4.2). `weight` may itself be a LowRank adapting other rows
    of the same matrix (q and v of one qkv)."""
    weight: Union[torch.Tensor, "LowRank"]  # W₀ (out, in), frozen
    lora_A: torch.Tensor                    # A (r, in)
    lora_B: torch.Tensor                    # B (stop − start, r)
    scaling: float                          # α/r (LoRA), or α/√r (rsLoRA, Kalajdzievski 2023)
    dropout: float                          # on the adapter's input only (loralib, peft); 0 outside training
    rows: tuple[int, int]                   # (start, stop): the output rows B A adapts


Weight = torch.Tensor | LowRank


def linear(x: torch.Tensor, weight: Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x Wᵀ + b. x (..., in), weight (out, in) or a LowRank of that shape, bias (out,) -> (..., out)."""
    if isinstance(weight, torch.Tensor):
        return F.linear(x, weight, bias)
    out = linear(x, weight.weight, bias)                                     # (..., out): x W₀ᵀ + b
    h = F.dropout(x, weight.dropout) if weight.dropout else x
    update = F.linear(F.linear(h, weight.lora_A), weight.lora_B) * weight.scaling   # (..., in) -> (..., r) -> (..., rows)
    start, stop = weight.rows
    if (start, stop) == (0, out.shape[-1]):
        return out + update
    return out + F.pad(update, (start, out.shape[-1] - stop))               # zeros outside the adapted rows
