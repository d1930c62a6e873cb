"""Eq. (1), second half: prepend the class token and add position embeddings.

    z_0 = [x_class; x_p¹E; …; x_pᴺE] + E_pos,   E_pos ∈ R^{(N+1)×D}

A distilled DeiT prepends a second prefix token, the distillation token, after the class token and with its own
row of E_pos: z_0 = [x_class; x_distil; x_p¹E; …] + E_pos, E_pos ∈ R^{(N+2)×D} (Touvron et al. 2021, §4; timm
deit.py `_pos_embed`, the official deit models.py and transformers' DeiTEmbeddings all order them so).

Three kinds of E_pos (cfg.pos_embed):
- "learned": the paper's "standard learnable 1D position embeddings", a parameter with a row for the class token.
- "sincos2d": fixed 2-D sin-cos embeddings (big_vision `posemb_sincos_2d`, used by "Better plain ViT
  baselines"); the prefix tokens get none, which is the same as adding zero rows.
- "none": no position information (paper Table 8, first row).
"""
import torch

from .config import ViTConfig, is_integer

PREFIX_TOKENS = ("cls", "dist")   # the prefix tokens' parameters, in sequence order


def prepend_prefix_tokens(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[x_class; x] (or [x_class; x_distil; x]): (B, N, D) with tokens (1, P, D) -> (B, P+N, D)."""
    return torch.cat([tokens.expand(x.shape[0], -1, -1), x], dim=1)


def sincos_2d(grid_size: tuple[int, int], dim: int, temperature: float = 10_000.0,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fixed 2-D embedding, (gh·gw, D) in row-major patch order: [sin x·ω, cos x·ω, sin y·ω, cos y·ω],
    ω_k = temperature^(-k/(D/4 - 1)) for k = 0 … D/4-1, exactly as big_vision's `posemb_sincos_2d`."""
    if not (isinstance(grid_size, (tuple, list)) and len(grid_size) == 2 and all(is_integer(g) and g > 0
                                                                                 for g in grid_size)):
        raise ValueError(f"grid_size: expected (rows, columns) of positive integers, got {grid_size!r}")
    if not is_integer(dim) or dim < 8 or dim % 4:
        raise ValueError(f"dim: expected a multiple of 4 of at least 8 (a quarter of D per sin/cos of x/y, and D/4 - 1 "
                         f"> 0 frequencies' spacing), got {dim!r}")
    gh, gw = grid_size
    y, x = torch.meshgrid(torch.arange(gh, dtype=dtype), torch.arange(gw, dtype=dtype), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=dtype) / (quarter - 1))  # (D/4,)
    x = x.reshape(-1, 1) * omega                                                        # (N, D/4)
    y = y.reshape(-1, 1) * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)                        # (N, D)


def embed_positions(params: dict, x: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """(B, N, D) patch embeddings -> z_0, (B, P+N, D) with the config's P = 0, 1 or 2 prefix tokens."""
    if cfg.pos_embed == "sincos2d":
        x = x + sincos_2d(cfg.grid_size, cfg.dim, dtype=x.dtype).to(x.device)
    if cfg.num_prefix_tokens:
        tokens = torch.cat([params[k] for k in PREFIX_TOKENS[:cfg.num_prefix_tokens]], dim=1)  # (1, P, D)
        x = prepend_prefix_tokens(x, tokens)
    if cfg.pos_embed == "learned":
        x = x + params["pos"]
    return x
