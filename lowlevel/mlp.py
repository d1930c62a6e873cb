"""The MLP block of eq. (3): "two layers with a GELU non-linearity" (paper §3.1), dropout after each dense
layer (App. B.1). GELU flavour is a config field: exact erf (timm, Hugging Face) or the tanh approximation
(Flax's `nn.gelu` default, so the official JAX checkpoints were trained with it)."""
import torch
import torch.nn.functional as F

GELU_APPROXIMATE = {"exact": "none", "tanh": "tanh"}


def mlp_block(x: torch.Tensor, p: dict, gelu: str = "exact", dropout: float = 0.0, train: bool = False) -> torch.Tensor:
    """(B, N, D) -> (B, N, M) -> (B, N, D) with p holding fc1.weight (M, D), fc1.bias, fc2.weight (D, M), fc2.bias."""
    h = F.gelu(F.linear(x, p["fc1.weight"], p["fc1.bias"]), approximate=GELU_APPROXIMATE[gelu])
    h = F.dropout(h, dropout, train)
    return F.dropout(F.linear(h, p["fc2.weight"], p["fc2.bias"]), dropout, train)
