"""Normalisation: layer normalisation, the LN of eqs. (2)-(4): "Layernorm (LN) is applied before every block" (paper
§3.1); and group normalisation (Wu & He 2018, arXiv:1803.08494), the hybrid's ResNet's (resnet.py).

eps is not a constant of the method but of each implementation (1e-6 in Flax, timm and the official checkpoints,
1e-12 in Hugging Face configs), so it is a config field and an argument here."""
import torch
import torch.nn.functional as F


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LN over the last axis: (x − mean) / √(var + eps) · weight + bias. x (..., D), weight and bias (D,)."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def group_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float) -> torch.Tensor:
    """GN: each image's C channels in `num_groups` groups of C/num_groups, each group normalised over its channels and
    positions, (x − mean) / √(var + eps), then · weight + bias per channel. x (B, C, H, W), weight and bias (C,)."""
    return F.group_norm(x, num_groups, weight, bias, eps)
