"""The MLP of eq. (3): "two layers with a GELU non-linearity" (paper §3.1).

Dropout follows every dense layer (App. B.1). The one after the first layer is inside the MLP; the one after the
second sits on the residual line of eq. (3), as the one after the attention's output projection sits on eq. (2)'s.
The GELU flavour is a config field: exact erf (timm, Hugging Face) or the tanh approximation (Flax's `nn.gelu`
default, so the official JAX checkpoints were trained with it)."""
import torch
import torch.nn.functional as F

from .linear import Weight, linear

GELU_APPROXIMATE = {"exact": "none", "tanh": "tanh"}


def mlp_hidden(x: torch.Tensor, fc1_weight: Weight, fc1_bias: torch.Tensor, gelu: str, dropout: float = 0.0,
               train: bool = False) -> torch.Tensor:
    """The first layer: dropout(GELU(x W₁ᵀ + b₁)). x (B, N, D), fc1_weight (M, D) -> (B, N, M)."""
    h = F.gelu(linear(x, fc1_weight, fc1_bias), approximate=GELU_APPROXIMATE[gelu])
    return F.dropout(h, dropout, train)


def mlp(x: torch.Tensor, fc1_weight: Weight, fc1_bias: torch.Tensor, fc2_weight: Weight,
        fc2_bias: torch.Tensor, gelu: str, dropout: float = 0.0, train: bool = False) -> torch.Tensor:
    """MLP(x) = GELU(x W₁ᵀ + b₁) W₂ᵀ + b₂. x (B, N, D) -> (B, N, M) -> (B, N, D)."""
    return linear(mlp_hidden(x, fc1_weight, fc1_bias, gelu, dropout, train), fc2_weight, fc2_bias)
