"""The Transformer encoder: L pre-norm blocks, eqs. (2)-(3).

"Layernorm (LN) is applied before every block, and residual connections after every block" (paper §3.1). Each
residual line carries its dropout (App. B.1: after every dense layer, so after the output projection and after the
MLP's second layer), then DeiT's stochastic depth (drop_path.py), in timm's order. With Locality Self-Attention
(cfg.attention = "lsa", locality.py) each block's attention logits are masked on the diagonal and scaled by a learned
temperature.
"""
import torch
import torch.nn.functional as F

from .attention import multi_head_attention
from .checks import check_config
from .config import ViTConfig
from .drop_path import drop_path, drop_path_rates
from .locality import masking_and_temperature
from .mlp import mlp
from .norm import layer_norm


def params_under(params: dict, prefix: str) -> dict:
    """The parameters whose names start with `prefix`, the prefix removed."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def block_params(params: dict, i: int) -> dict:
    """The parameters of block i with the `blocks.{i}.` prefix removed: ln1, qkv, proj, ln2, fc1, fc2."""
    return params_under(params, f"blocks.{i}.")


def encoder_block(params: dict, z: torch.Tensor, cfg: ViTConfig, train: bool = False,
                  drop_path_rate: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. (2)-(3) for one block, `params` as `block_params` gives them, its residual branches dropped per sample
    with probability `drop_path_rate` in training. z (B, N, D) -> (z_ℓ (B, N, D), attention probs (B, H, N, N))."""
    check_config(cfg, ViTConfig)
    p, eps = params, cfg.layer_norm_eps
    a, probs = multi_head_attention(layer_norm(z, p["ln1.weight"], p["ln1.bias"], eps), p["qkv.weight"],
                                    p.get("qkv.bias"), p["proj.weight"], p["proj.bias"], cfg.num_heads,
                                    *masking_and_temperature(p, z, cfg))          # LSA's, or none
    z = z + drop_path(F.dropout(a, cfg.dropout, train), drop_path_rate, train)  # eq. (2): z' = MSA(LN(z)) + z
    m = mlp(layer_norm(z, p["ln2.weight"], p["ln2.bias"], eps), p["fc1.weight"], p["fc1.bias"], p["fc2.weight"],
            p["fc2.bias"], cfg.gelu, cfg.dropout, train)
    z = z + drop_path(F.dropout(m, cfg.dropout, train), drop_path_rate, train)  # eq. (3): z = MLP(LN(z')) + z'
    return z, probs


def encoder(params: dict, z: torch.Tensor, cfg: ViTConfig, train: bool = False) -> torch.Tensor:
    """z_0 -> z_L through cfg.depth blocks. (B, N, D) -> (B, N, D)."""
    check_config(cfg, ViTConfig)
    for i, rate in enumerate(drop_path_rates(cfg.drop_path, cfg.depth)):
        z, _ = encoder_block(block_params(params, i), z, cfg, train, rate)
    return z
