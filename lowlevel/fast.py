"""The fast path: the encoder block of eqs. (2)-(3) computed in fewer passes over memory, same numbers.

`forward` and `forward_heads` run this instead of encoder.py's blocks when called with `fast=True`. Every change is
a rearrangement, not an approximation (tests/lowlevel/test_fast_path.py checks outputs and gradients against the explicit path
in float64):

1. Attention, eqs. (5)-(8), through `F.scaled_dot_product_attention`: one fused kernel (flash attention on CPU and
   GPU) that never stores the (B, H, N, N) probabilities, so the fast path cannot return them (on the CPU under
   bfloat16 autocast, where that kernel is slow, the explicit path's products and softmax instead).
2. The fused kernels write their output as (B, N, H, D_h), so concatenating the heads copies nothing (q, k and v
   are views into the one qkv projection on both paths).
3. Each residual add shares its pass with the preceding projection: z + (x Wᵀ + b) is one GEMM accumulating into
   a copy of z + b (BLAS's C ← C + A·B), instead of a GEMM, a bias pass and a separate add.
4. With class-token pooling, eq. (4) reads only z_L^0 (and a distilled DeiT its distillation token's z_L^1 too), and
   in the last block the prefix tokens' outputs depend on the patch tokens only through their keys and values. So
   the last block computes keys and values for every token but the queries, the output projection and the MLP for
   the prefix tokens alone: 10 of the block's 12·D² multiply-adds per patch token are never done (ViT-B/16 at 224:
   7% of the forward's multiply-adds, and of the backward's).
"""
import torch
import torch.nn.functional as F

from .attention import merge_heads, qkv_heads, scaled_dot_product_attention
from .checks import check_config, check_num_heads
from .config import ViTConfig
from .drop_path import drop_path, drop_path_rates
from .encoder import block_params
from .linear import LowRank
from .locality import masking_and_temperature
from .mlp import mlp_hidden
from .norm import layer_norm


def fused_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                            scale: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ/√D_h + bias) v in one kernel, or with LSA's learned scale in place of 1/√D_h: (B, H, M, D_h) queries
    against (B, H, N, D_h) keys and values -> (B, H, M, D_h). The kernel takes its scale as a number, so a learned one
    multiplies q instead (q kᵀ·s = (s·q) kᵀ) and stays in the graph. On the CPU under bfloat16 autocast PyTorch's
    fused kernel, its backward above all, is slower than the two products and the softmax done one by one (timm's
    digits ViT, which keeps the kernel, trains at 0.45× its float32 speed under autocast; paper/results/loop_bf16.md),
    so there they are done one by one, as the explicit path does them."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return scaled_dot_product_attention(q, k, v, bias, scale)[0]
    if scale is not None:
        q, scale = q * scale, 1.0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def fused_attention(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor | None, num_heads: int,
                    bias: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Eqs. (5)-(7) for all heads, concatenated: x (B, N, D) -> [SA_1(x); …; SA_k(x)] (B, N, D), before U_msa;
    `bias` and `scale` as `scaled_dot_product_attention` takes them."""
    out = fused_softmax_attention(*qkv_heads(x, w_qkv, b_qkv, num_heads), bias, scale)   # (B, H, N, D_h)
    return merge_heads(out)                             # (B, N, H·D_h), a view when laid out as (B, N, H, D_h)


def residual_linear(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dropout: float = 0.0,
                    train: bool = False, drop_path_rate: float = 0.0) -> torch.Tensor:
    """z + drop_path(dropout(x Wᵀ + b)): z (B, N, D), x (B, N, M), w (D, M) -> (B, N, D), with one GEMM when neither
    is on. `z + b` is a fresh tensor that no other operation saved, so accumulating into it in place is safe for
    autograd; it is made 2-D before, not viewed after, so that the in-place product is not on a view (which autograd
    would undo with extra copies in the backward). Dropout and drop path act on the projection alone, so while
    either is on the add stays separate; under autocast too, where the product is computed in bfloat16 and added to
    the float32 residual stream, as on the explicit path."""
    if train and (dropout or drop_path_rate) or torch.is_autocast_enabled(z.device.type):
        return z + drop_path(F.dropout(F.linear(x, w, b), dropout, train), drop_path_rate, train)
    out = z.flatten(0, -2) + b                                                 # (B·N, D)
    out.addmm_(x.flatten(0, -2), w.t())                                        # += (B·N, M) @ (M, D)
    return out.view(z.shape)


def fast_encoder_block(params: dict, z: torch.Tensor, cfg: ViTConfig, train: bool = False,
                       drop_path_rate: float = 0.0) -> torch.Tensor:
    """Eqs. (2)-(3) for one block, as encoder.encoder_block computes them. z (B, N, D) -> z_ℓ (B, N, D)."""
    check_config(cfg, ViTConfig)
    p, eps = params, cfg.layer_norm_eps
    a = fused_attention(layer_norm(z, p["ln1.weight"], p["ln1.bias"], eps), p["qkv.weight"], p.get("qkv.bias"),
                        cfg.num_heads, *masking_and_temperature(p, z, cfg))
    z = residual_linear(z, a, p["proj.weight"], p["proj.bias"], cfg.dropout, train, drop_path_rate)  # eq. (2)
    h = mlp_hidden(layer_norm(z, p["ln2.weight"], p["ln2.bias"], eps), p["fc1.weight"], p["fc1.bias"], cfg.gelu,
                   cfg.dropout, train)
    return residual_linear(z, h, p["fc2.weight"], p["fc2.bias"], cfg.dropout, train, drop_path_rate)  # eq. (3)


def prefix_attention(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor | None, num_heads: int,
                     num_prefix_tokens: int, bias: torch.Tensor | None = None,
                     scale: torch.Tensor | None = None) -> torch.Tensor:
    """Eqs. (5)-(7) for the P prefix tokens' queries alone: x (B, N, D) -> [SA_1(x); …; SA_k(x)] rows 0 … P−1,
    (B, P, D); `bias` (N, N) and `scale` as for the whole sequence (the bias's rows 0 … P−1 are read)."""
    b, n, d = x.shape
    check_num_heads(d, num_heads)
    w_q, w_kv = w_qkv.split([d, 2 * d])                                      # rows of q, then of k and v
    b_q, b_kv = (None, None) if b_qkv is None else b_qkv.split([d, 2 * d])
    q = F.linear(x[:, :num_prefix_tokens], w_q, b_q)                        # (B, P, D)
    q = q.view(b, num_prefix_tokens, num_heads, d // num_heads).transpose(1, 2)  # (B, H, P, D_h)
    kv = F.linear(x, w_kv, b_kv).view(b, n, 2, num_heads, d // num_heads)  # (B, N, 2·D) -> (B, N, 2, H, D_h)
    k, v = (t.transpose(1, 2) for t in kv.unbind(2))                        # 2 × (B, H, N, D_h), views
    rows = None if bias is None else bias[:num_prefix_tokens]               # (P, N)
    return merge_heads(fused_softmax_attention(q, k, v, rows, scale))        # (B, H, P, D_h) -> (B, P, D)


def prefix_block(params: dict, z: torch.Tensor, cfg: ViTConfig, train: bool = False,
                 drop_path_rate: float = 0.0) -> torch.Tensor:
    """Eqs. (2)-(3) at the prefix tokens' positions only (item 4 above): z_{L-1} (B, N, D) -> z_L^{0…P−1} (B, P, D).
    Drop path draws one mask per sample whatever the sequence length, so it draws here what the whole block would."""
    p, eps, prefix = params, cfg.layer_norm_eps, cfg.num_prefix_tokens
    a = prefix_attention(layer_norm(z, p["ln1.weight"], p["ln1.bias"], eps), p["qkv.weight"], p.get("qkv.bias"),
                         cfg.num_heads, prefix, *masking_and_temperature(p, z, cfg))             # (B, P, D)
    z = residual_linear(z[:, :prefix], a, p["proj.weight"], p["proj.bias"], 0.0, train, drop_path_rate)  # eq. (2)
    h = mlp_hidden(layer_norm(z, p["ln2.weight"], p["ln2.bias"], eps), p["fc1.weight"], p["fc1.bias"], cfg.gelu)
    return residual_linear(z, h, p["fc2.weight"], p["fc2.bias"], 0.0, train, drop_path_rate)  # eq. (3)


def fast_encoder(params: dict, z: torch.Tensor, cfg: ViTConfig, train: bool = False) -> torch.Tensor:
    """z_0 -> z_L through cfg.depth fast blocks; only the prefix tokens' z_L, (B, P, D), when the pooling reads
    nothing else. While dropout is on the last block runs whole, so that every mask is drawn as in the explicit
    path. Weights must be plain tensors: LoRA's LowRank weights (lora.adapt) run through `encoder`, or are merged
    first."""
    check_config(cfg, ViTConfig)
    adapted = sorted(k for k, v in params.items() if isinstance(v, LowRank))
    if adapted:
        raise ValueError(f"params: the fast path expected plain weight tensors, got LoRA weights at {adapted[:3]}"
                         f"{' …' if len(adapted) > 3 else ''}; run forward instead, or fold the adapters in with "
                         "lora.merge")
    prefix_only = cfg.pool == "token" and not (train and cfg.dropout)
    rates = drop_path_rates(cfg.drop_path, cfg.depth)
    for i in range(cfg.depth - prefix_only):
        z = fast_encoder_block(block_params(params, i), z, cfg, train, rates[i])
    if prefix_only:
        z = prefix_block(block_params(params, cfg.depth - 1), z, cfg, train, rates[-1])
    return z
