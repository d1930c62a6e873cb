"""The whole Vision Transformer, eqs. (1)-(4), as pure functions of (params, images).

    z_0 = [x_class; x_p¹E; …; x_pᴺE] + E_pos        eq. (1)
    z'_ℓ = MSA(LN(z_{ℓ-1})) + z_{ℓ-1}                eq. (2)
    z_ℓ = MLP(LN(z'_ℓ)) + z'_ℓ                        eq. (3)
    y = LN(z_L^0)                                     eq. (4)
    logits = head(y)

Three entry points, one return shape each: `forward` (logits), `forward_intermediates` (logits and what the model
computed on the way: every layer's attention, every hidden state, the features), and `fast_forward` (logits, the
same function through fast.py's fused blocks). Nothing is stored between calls, so each composes with torch.func
(`vmap`, `grad`, `jvp`) as a function of (params, images).
"""
import torch
import torch.nn.functional as F

from .checks import check_images
from .config import ViTConfig
from .encoder import block_params, encoder, encoder_block
from .fast import fast_encoder
from .linear import linear
from .norm import layer_norm
from .patches import patch_embedding
from .position import embed_positions


def embed(params: dict, images: torch.Tensor, cfg: ViTConfig, train: bool = False) -> torch.Tensor:
    """Eq. (1): (B, C, H, W) -> z_0 (B, N+1, D); dropout "directly after adding positional- to patch embeddings"."""
    check_images(images, patch_size=cfg.patch_size, channels=cfg.in_channels, size=cfg.image_size)
    x = patch_embedding(images, params["patch.weight"], params["patch.bias"], cfg.patch_size)  # (B, N, D)
    return F.dropout(embed_positions(params, x, cfg), cfg.dropout, train)


def pool(params: dict, z: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """Eq. (4): z_L (B, N+1, D) -> y (B, D).
    "token": y = LN(z_L^0), the class token's final state (paper).
    "avg": mean over the patch tokens, then LN: timm's global_pool='avg' with its LN moved after pooling (fc_norm)."""
    y = z[:, 0] if cfg.pool == "token" else z[:, int(cfg.class_token):].mean(dim=1)   # class token left out of the mean
    return layer_norm(y, params["norm.weight"], params["norm.bias"], cfg.layer_norm_eps)


def pre_logits(params: dict, y: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """The pre-training head's hidden layer (paper §3.1: "a MLP with one hidden layer at pre-training time",
    tanh per App. D.3) when cfg.representation_size is set; the identity for the fine-tuning head. (B, D) -> (B, R)."""
    if not cfg.representation_size:
        return y
    return torch.tanh(linear(y, params["pre_logits.weight"], params["pre_logits.bias"]))


def classifier(params: dict, features: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """The final linear layer, (B, R) -> (B, K); with num_classes=0 there is none and features pass through."""
    if not cfg.num_classes:
        return features
    return linear(features, params["head.weight"], params["head.bias"])


def forward(params: dict, images: torch.Tensor, cfg: ViTConfig, *, train: bool = False) -> torch.Tensor:
    """images (B, C, H, W) -> logits (B, K) (features (B, D) when num_classes=0). `train` turns dropout on."""
    z = encoder(params, embed(params, images, cfg, train), cfg, train)
    return classifier(params, pre_logits(params, pool(params, z, cfg), cfg), cfg)


def forward_intermediates(params: dict, images: torch.Tensor, cfg: ViTConfig, *,
                          train: bool = False) -> tuple[torch.Tensor, dict]:
    """`forward`, also returning what it computed on the way (big_vision's `out` dict), so nothing needs a hook:
      "attention": per layer, the probabilities (B, H, N+1, N+1),
      "hidden":    z_0 … z_L, each (B, N+1, D),
      "features":  the pooled representation the classifier reads, (B, D) (or (B, R) after pre-logits).
    -> (logits, intermediates)."""
    z = embed(params, images, cfg, train)
    attention, hidden = [], [z]
    for i in range(cfg.depth):
        z, probs = encoder_block(block_params(params, i), z, cfg, train)
        attention.append(probs)
        hidden.append(z)
    features = pre_logits(params, pool(params, z, cfg), cfg)
    return classifier(params, features, cfg), {"attention": attention, "hidden": hidden, "features": features}


def fast_forward(params: dict, images: torch.Tensor, cfg: ViTConfig, *, train: bool = False) -> torch.Tensor:
    """`forward` computed by fast.py: fused attention that never forms the probabilities, each residual add inside
    its GEMM, and, with class-token pooling, the last block for the class token alone. Same logits."""
    z = fast_encoder(params, embed(params, images, cfg, train), cfg, train)
    return classifier(params, pre_logits(params, pool(params, z, cfg), cfg), cfg)
