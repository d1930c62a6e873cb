"""The Transformer encoder: L pre-norm blocks, eqs. (2)-(3).

"Layernorm (LN) is applied before every block, and residual connections after every block" (paper §3.1).
"""
import torch
import torch.nn.functional as F

from .attention import multi_head_attention
from .mlp import mlp_block


def layer_norm(x: torch.Tensor, p: dict, name: str, eps: float) -> torch.Tensor:
    """LN over the last axis with p[name.weight], p[name.bias]; eps is a config field (1e-6 Flax/timm, 1e-12 HF)."""
    return F.layer_norm(x, x.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"], eps)


def block_params(params: dict, i: int) -> dict:
    """The parameters of block i with the `blocks.{i}.` prefix removed."""
    prefix = f"blocks.{i}."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def encoder_block(z: torch.Tensor, p: dict, cfg, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. (2)-(3) for one block. z (B, N, D) -> (z_ℓ (B, N, D), attention probabilities (B, H, N, N))."""
    a, probs = multi_head_attention(layer_norm(z, p, "ln1", cfg.layer_norm_eps), p["qkv.weight"], p.get("qkv.bias"),
                                    p["proj.weight"], p["proj.bias"], cfg.num_heads, return_attention=True)
    z = z + F.dropout(a, cfg.dropout, train)                                   # eq. (2): z' = MSA(LN(z)) + z
    z = z + mlp_block(layer_norm(z, p, "ln2", cfg.layer_norm_eps), p,         # eq. (3): z = MLP(LN(z')) + z'
                      cfg.gelu, cfg.dropout, train)
    return z, probs


def encoder(z: torch.Tensor, params: dict, cfg, train: bool = False, out: dict | None = None) -> torch.Tensor:
    """z_0 -> z_L through cfg.depth blocks; records each block's attention and output in `out` when given."""
    for i in range(cfg.depth):
        z, probs = encoder_block(z, block_params(params, i), cfg, train)
        if out is not None:
            out["attention"].append(probs)
            out["hidden"].append(z)
    return z
