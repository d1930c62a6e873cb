"""Weights for checking mappings and equivalences: an initialisation, then every tensor perturbed.

A fresh model hides mistakes: a zero head makes every logit 0 whatever comes before it, unit LayerNorm scales and
zero biases make a swapped scale and bias invisible. Adding N(0, scale²) noise to every tensor makes each one
matter. Tests, `paper.verify`, `paper.bench` and the exercise graders all make their weights here.
"""
import torch


def perturbed(params: dict[str, torch.Tensor], seed: int, dtype: torch.dtype = torch.float64,
              scale: float = 0.02) -> dict[str, torch.Tensor]:
    """Every tensor of `params` cast to `dtype` plus N(0, scale²) noise drawn from a generator seeded by `seed`,
    in the dict's key order."""
    g = torch.Generator().manual_seed(seed)
    return {k: v.to(dtype) + scale * torch.randn(v.shape, generator=g, dtype=dtype) for k, v in params.items()}
