"""Layer normalisation, the LN of eqs. (2)-(4): "Layernorm (LN) is applied before every block" (paper §3.1).

eps is not a constant of the method but of each implementation (1e-6 in Flax, timm and the official checkpoints,
1e-12 in Hugging Face configs), so it is a config field and an argument here."""
import torch
import torch.nn.functional as F


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LN over the last axis: (x − mean) / √(var + eps) · weight + bias. x (..., D), weight and bias (D,)."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
