"""The Swin Transformer (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows", arXiv:2103.14030)
as pure functions of (params, images), built from the ViT's primitives: `layer_norm`, `mlp`, `qkv_heads`,
`scaled_dot_product_attention` and `merge_heads`. What the paper changed, and nothing else, is written here:

    z_0 = LN(x_p E)                              §3.1: 4×4 patches, linear embedding, no class token, no E_pos
    ẑ^l = W-MSA(LN(z^{l−1})) + z^{l−1}            eq. (3): the ViT's pre-norm block, attention inside M×M windows
    z^l = MLP(LN(ẑ^l)) + ẑ^l
    ẑ^{l+1} = SW-MSA(LN(z^l)) + z^l               eq. (3): the next block's windows shifted by ⌊M/2⌋
    z^{l+1} = MLP(LN(ẑ^{l+1})) + ẑ^{l+1}
    Attention = SoftMax(QKᵀ/√d + B) V            eq. (4): B the relative position bias (relative_position.py)
    patch merging between stages                 §3.1: 2×2 neighbours concatenated, LN, 4C -> 2C
    logits = head(mean over tokens of LN(z))     the original's head: LayerNorm, average pooling, linear

Tokens are kept as a (B, H, W, C) map, as in timm and torchvision, so that windows are reshapes (windows.py).
Two entry points, one return shape each, as for the ViT (model.py): `forward` (logits) and `forward_intermediates`
(logits and every block's attention per window, every hidden map, every stage's output, the features). `forward`,
`swin_block` and `stage_blocks` take `fast`: True computes the same function through fused window attention, which
never forms the probabilities, with each output projection joined to its residual add. `init_params` and
`param_shapes` (swin_params.py) are re-exported, so that `from lowlevel import swin` gives the whole model.
"""
import torch
import torch.nn.functional as F

from .attention import merge_heads, qkv_heads, scaled_dot_product_attention
from .checks import check_config, check_images, check_model_inputs
from .drop_path import drop_path, drop_path_rates
from .encoder import params_under
from .fast import residual_linear
from .mlp import mlp, mlp_hidden
from .model import classifier
from .norm import layer_norm
from .patches import patch_embedding
from .relative_position import relative_position_bias
from .swin_config import SwinConfig
from .swin_params import init_params, param_shapes
from .windows import cyclic_shift, shift_mask, window_partition, window_reverse

__all__ = ["init_params", "param_shapes", "forward", "forward_intermediates", "embed",
           "swin_block", "window_attention", "fused_window_attention", "patch_merging", "pool"]


def check_inputs(params: dict, images: torch.Tensor, cfg: SwinConfig) -> None:
    """As the ViT's (model.py): images of cfg's shape; every parameter cfg needs, of its shape, on the images' device
    and in their dtype."""
    check_config(cfg, SwinConfig)
    check_images(images, patch_size=cfg.patch_size, channels=cfg.in_channels, size=cfg.image_size)
    check_model_inputs(params, images, param_shapes(cfg))


def embed(params: dict, images: torch.Tensor, cfg: SwinConfig) -> torch.Tensor:
    """§3.1, "patch partition" and "linear embedding", then the LayerNorm every implementation applies:
    (B, C_in, H, W) -> z_0 (B, H/P, W/P, C)."""
    check_config(cfg, SwinConfig)
    x = patch_embedding(images, params["patch.weight"], params["patch.bias"], cfg.patch_size)   # (B, N, C)
    x = layer_norm(x, params["patch_norm.weight"], params["patch_norm.bias"], cfg.layer_norm_eps)
    return x.view(x.shape[0], *cfg.grid_size, -1)


def to_windows(x: torch.Tensor, cfg: SwinConfig, window: tuple[int, int],
               shift: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (windows (B·nW, N, C), the padded size (H_p, W_p)): zero-padded bottom-right to whole windows
    (§3.2, footnote 4) and rolled by the shift, in the order `cfg.padding` names."""
    h, w = x.shape[1:3]
    pad = (0, 0, 0, -w % window[1], 0, -h % window[0])                     # F.pad's order: C, then W, then H
    if cfg.padding == "after_shift":
        x = F.pad(cyclic_shift(x, shift), pad)                             # timm: roll the map, then pad it
    else:
        x = cyclic_shift(F.pad(x, pad), shift)                             # torchvision, transformers: pad, then roll
    return window_partition(x, window).flatten(1, 2), x.shape[1:3]


def from_windows(windows: torch.Tensor, cfg: SwinConfig, window: tuple[int, int], shift: tuple[int, int],
                 padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The inverse of `to_windows`: (B·nW, N, C) -> (B, H, W, C), the padding cut off and the roll undone."""
    x = window_reverse(windows.view(-1, *window, windows.shape[-1]), padded)
    h, w = size
    unshift = (-shift[0], -shift[1])
    if cfg.padding == "after_shift":
        return cyclic_shift(x[:, :h, :w], unshift)
    return cyclic_shift(x, unshift)[:, :h, :w]


def window_bias(table: torch.Tensor, window: tuple[int, int], shift: tuple[int, int],
                padded: tuple[int, int]) -> torch.Tensor:
    """B of eq. (4) for every window: the relative position bias (1, heads, N, N), plus, in a shifted block, each
    window's mask (windows.shift_mask), giving (nW, heads, N, N)."""
    bias = relative_position_bias(table, window)[None]
    if any(shift):
        bias = bias + shift_mask(padded, window, shift, table.dtype, table.device)[:, None]
    return bias


def window_attention(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor | None, w_out: torch.Tensor,
                     b_out: torch.Tensor | None, num_heads: int,
                     bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (4) in every window, the ViT's multi-head attention with B added to the logits.
    x (B·nW, N, C), bias (nW or 1, heads, N, N) -> (output (B·nW, N, C), probabilities (B·nW, heads, N, N))."""
    windows = bias.shape[0]
    q, k, v = (t.unflatten(0, (-1, windows)) for t in qkv_heads(x, w_qkv, b_qkv, num_heads))  # (B, nW, H, N, D_h)
    out, probs = scaled_dot_product_attention(q, k, v, bias)                # the bias broadcasts over the images
    return F.linear(merge_heads(out.flatten(0, 1)), w_out, b_out), probs.flatten(0, 1)


def fused_window_attention(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor | None, num_heads: int,
                           bias: torch.Tensor) -> torch.Tensor:
    """Eq. (4) in every window through `F.scaled_dot_product_attention`, before the output projection:
    x (B·nW, N, C) -> [SA_1; …; SA_k] (B·nW, N, C). The fused kernel takes one additive mask per (image, head);
    laying the windows beside the heads, (B, nW·heads, N, D_h), makes the (nW, heads, N, N) bias exactly that, so
    it broadcasts over the images without being copied B times. When the bias needs a gradient (training: B̂ is
    learned), PyTorch's fused CPU kernel cannot give one and `scaled_dot_product_attention` falls back to its math
    implementation, which keeps the probabilities for the backward as the explicit path does (measured, torch 2.14:
    `ScaledDotProductFlashAttentionForCpuBackward0` with a constant bias, `SafeSoftmaxBackward0` with a learned one)."""
    windows = bias.shape[0]
    q, k, v = (t.unflatten(0, (-1, windows)).flatten(1, 2) for t in qkv_heads(x, w_qkv, b_qkv, num_heads))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.flatten(0, 1)[None])  # (B, nW·H, N, D_h)
    return merge_heads(out.unflatten(1, (windows, num_heads)).flatten(0, 1))           # (B·nW, N, C)


def stage_drop_path_rates(cfg: SwinConfig, stage: int) -> list[float]:
    """Stochastic depth (§4.1) of each block of `stage`: drop_path_rates over all the model's blocks, in order, 0 at
    the first block and cfg.drop_path at the last, as the original, timm and torchvision set it."""
    start = sum(cfg.depths[:stage])
    return drop_path_rates(cfg.drop_path, cfg.depth)[start:start + cfg.depths[stage]]


def swin_block(params: dict, x: torch.Tensor, cfg: SwinConfig, stage: int, j: int, train: bool = False,
               drop_path_rate: float = 0.0, fast: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eq. (3) for block j of `stage`: W-MSA when j is even, SW-MSA when odd, then the MLP, each pre-norm with a
    residual that drop_path drops per image with probability `drop_path_rate` in training.
    x (B, H, W, C) -> (x (B, H, W, C), attention probabilities per window (B·nW, heads, N, N), None with `fast`).
    `fast` rearranges the block, same numbers: fused window attention, and the output projection after the windows
    are put back. The projection acts on each token alone, so it commutes with the window reverse, the roll and the
    crop; done after them it skips the padded tokens and joins the residual add in one GEMM (fast.py's
    residual_linear; the Swin has no dropout)."""
    check_config(cfg, SwinConfig)
    p, eps, rate = params, cfg.layer_norm_eps, drop_path_rate
    size = x.shape[1:3]
    window, shift = cfg.window_and_shift(size, shifted=j % 2 == 1)
    windows, padded = to_windows(layer_norm(x, p["ln1.weight"], p["ln1.bias"], eps), cfg, window, shift)
    bias = window_bias(p["relative_position_bias_table"], window, shift, padded)
    if fast:
        a = fused_window_attention(windows, p["qkv.weight"], p.get("qkv.bias"), cfg.num_heads[stage], bias)
        a = from_windows(a, cfg, window, shift, padded, size)                           # (B, H, W, C), unprojected
        x = residual_linear(x, a, p["proj.weight"], p["proj.bias"], 0.0, train, rate)  # ẑ = (S)W-MSA(LN(z)) + z
        h = mlp_hidden(layer_norm(x, p["ln2.weight"], p["ln2.bias"], eps), p["fc1.weight"], p["fc1.bias"], cfg.gelu)
        return residual_linear(x, h, p["fc2.weight"], p["fc2.bias"], 0.0, train, rate), None  # z = MLP(LN(ẑ)) + ẑ
    a, probs = window_attention(windows, p["qkv.weight"], p.get("qkv.bias"), p["proj.weight"], p["proj.bias"],
                                cfg.num_heads[stage], bias)
    x = x + drop_path(from_windows(a, cfg, window, shift, padded, size), rate, train)   # ẑ = (S)W-MSA(LN(z)) + z
    m = mlp(layer_norm(x, p["ln2.weight"], p["ln2.bias"], eps), p["fc1.weight"], p["fc1.bias"], p["fc2.weight"],
            p["fc2.bias"], cfg.gelu)
    return x + drop_path(m, rate, train), probs                                         # z = MLP(LN(ẑ)) + ẑ


def patch_merging(params: dict, x: torch.Tensor, cfg: SwinConfig) -> torch.Tensor:
    """§3.1: "concatenates the features of each group of 2 × 2 neighboring patches, and applies a linear layer on the
    4C-dimensional concatenated features". (B, H, W, C) -> (B, ⌈H/2⌉, ⌈W/2⌉, 2C); an odd side is zero-padded by one
    at the bottom or right (timm, torchvision, transformers); a LayerNorm precedes the projection, which has no bias."""
    check_config(cfg, SwinConfig)
    h, w = x.shape[1:3]
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)  # (B, H/2, W/2, 4C)
    x = layer_norm(x, params["norm.weight"], params["norm.bias"], cfg.layer_norm_eps)
    return F.linear(x, params["reduction.weight"])


def merge(params: dict, x: torch.Tensor, cfg: SwinConfig, stage: int, position: str) -> torch.Tensor:
    """Patch merging (§3.1) if `stage` holds one at `position` ("start" or "end", cfg.merge_position), else x."""
    has_merge = stage > 0 if cfg.merge_position == "start" else stage < cfg.num_stages - 1
    if position != cfg.merge_position or not has_merge:
        return x
    return patch_merging(params_under(params, "merge."), x, cfg)


def stage_blocks(params: dict, x: torch.Tensor, cfg: SwinConfig, stage: int, train: bool = False,
                 fast: bool = False) -> tuple[torch.Tensor, list[torch.Tensor | None], list[torch.Tensor]]:
    """One stage (§3.1, Fig. 3): its patch merging where cfg.merge_position puts it, and its Swin blocks, `fast` or
    not (`swin_block`). (B, H, W, C) -> (output, every block's attention probabilities (None each with `fast`),
    every block's output)."""
    p = params_under(params, f"stages.{stage}.")
    x = merge(p, x, cfg, stage, "start")
    attention, hidden = [], []
    for j, rate in enumerate(stage_drop_path_rates(cfg, stage)):
        x, probs = swin_block(params_under(p, f"blocks.{j}."), x, cfg, stage, j, train, rate, fast)
        attention.append(probs)
        hidden.append(x)
    return merge(p, x, cfg, stage, "end"), attention, hidden


def pool(params: dict, x: torch.Tensor, cfg: SwinConfig) -> torch.Tensor:
    """What the classifier reads, as the original computes it (`forward_features`) and timm and torchvision too:
    LayerNorm on every token, then the average over the map. (B, H, W, 8C) -> (B, 8C)."""
    check_config(cfg, SwinConfig)
    return layer_norm(x, params["norm.weight"], params["norm.bias"], cfg.layer_norm_eps).mean(dim=(1, 2))


def forward(params: dict, images: torch.Tensor, cfg: SwinConfig, *, train: bool = False,
            fast: bool = False) -> torch.Tensor:
    """images (B, C_in, H, W) -> logits (B, K) (features (B, 8C) when num_classes=0). `train` turns stochastic depth
    on; `fast` computes the same logits through fused window attention (`swin_block`)."""
    check_inputs(params, images, cfg)
    x = embed(params, images, cfg)
    for s in range(cfg.num_stages):
        x = stage_blocks(params, x, cfg, s, train, fast)[0]
    return classifier(params, pool(params, x, cfg), cfg)


def forward_intermediates(params: dict, images: torch.Tensor, cfg: SwinConfig, *,
                          train: bool = False) -> tuple[torch.Tensor, dict]:
    """`forward`, also returning what it computed on the way, so nothing needs a hook:
      "attention": per block, the probabilities in every window (B·nW, heads, N, N), N = M_h·M_w, windows of an
                   image consecutive, each window's tokens row-major (as window_partition orders them),
      "hidden":    z_0 (B, H/4, W/4, C), then every block's output (B, H_s, W_s, C_s),
      "stages":    every stage's output (B, H_s, W_s, C_s), after its merging when cfg.merge_position is "end"
                   (torchvision's `features`), before the next stage's when "start" (timm's `forward_intermediates`),
      "features":  the pooled representation the classifier reads, (B, 8C).
    -> (logits, intermediates)."""
    check_inputs(params, images, cfg)
    x = embed(params, images, cfg)
    attention, hidden, stages = [], [x], []
    for s in range(cfg.num_stages):
        x, probs, states = stage_blocks(params, x, cfg, s, train)
        attention += probs
        hidden += states
        stages.append(x)
    features = pool(params, x, cfg)
    return classifier(params, features, cfg), {"attention": attention, "hidden": hidden, "stages": stages,
                                                 "features": features}
