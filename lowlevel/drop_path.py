"""Stochastic depth ("drop path", Huang et al. 2016), with which DeiT trains (Touvron et al. 2021, Table 9: 0.1).

In training, each residual branch of block ℓ is dropped for a whole sample with probability r_ℓ and otherwise scaled
by 1/(1 − r_ℓ), so that its expectation is unchanged; at evaluation it is the identity:

    z' = z + m · F(z) / (1 − r_ℓ),     m ~ Bernoulli(1 − r_ℓ), one draw per sample and branch
    r_ℓ = r · ℓ / (L − 1),             ℓ = 0 … L−1: 0 at the first block, r at the last

This is timm's `DropPath` (timm/layers/drop.py `drop_path`) and torchvision's `ops.stochastic_depth(mode="row")`,
with the rates of timm and the official DeiT code (`torch.linspace(0, drop_path_rate, depth)`, deit models.py).
"""
import torch


def drop_path(x: torch.Tensor, rate: float, train: bool) -> torch.Tensor:
    """x (B, ...) -> each sample's x kept with probability 1 − rate and scaled by 1/(1 − rate), or zeroed."""
    if not train or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, …, 1), drawn as timm draws it
    return x * mask.div_(keep)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """r_ℓ for ℓ = 0 … depth−1, linear from 0 to `rate`. Computed as timm and the official code compute it (a float32
    linspace), so that a seeded run draws the same masks and scales by the same 1/(1 − r_ℓ). Without stochastic depth
    no tensor is made, so the model's forward stays one graph for torch.compile."""
    if not rate:
        return [0.0] * depth
    return torch.linspace(0, rate, depth).tolist()
