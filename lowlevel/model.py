"""The whole Vision Transformer, eqs. (1)-(4), as one pure function of (params, images, cfg).

    z_0 = [x_class; x_p¹E; …; x_pᴺE] + E_pos        eq. (1)
    z'_ℓ = MSA(LN(z_{ℓ-1})) + z_{ℓ-1}                eq. (2)
    z_ℓ = MLP(LN(z'_ℓ)) + z'_ℓ                        eq. (3)
    y = LN(z_L^0)                                     eq. (4)
    logits = head(y)
"""
import torch
import torch.nn.functional as F

from .checks import check_images
from .encoder import encoder, layer_norm
from .fast import fast_encoder
from .patches import patch_embedding
from .position import embed_positions


def embed(params: dict, images: torch.Tensor, cfg, train: bool = False) -> torch.Tensor:
    """Eq. (1): (B, C, H, W) -> z_0 (B, N+1, D); dropout "directly after adding positional- to patch embeddings"."""
    check_images(images, patch_size=cfg.patch_size, channels=cfg.in_channels, size=cfg.image_size)
    x = patch_embedding(images, params["patch.weight"], params["patch.bias"], cfg.patch_size)  # (B, N, D)
    return F.dropout(embed_positions(x, params, cfg), cfg.dropout, train)


def pool(params: dict, z: torch.Tensor, cfg) -> torch.Tensor:
    """Eq. (4): z_L (B, N+1, D) -> y (B, D).
    "token": y = LN(z_L^0), the class token's final state (paper).
    "avg": mean over the patch tokens, then LN: timm's global_pool='avg' with its LN moved after pooling (fc_norm)."""
    if cfg.pool == "token":
        return layer_norm(z[:, 0], params, "norm", cfg.layer_norm_eps)
    patches = z[:, int(cfg.class_token):]                                    # (B, N, D), class token left out
    return layer_norm(patches.mean(dim=1), params, "norm", cfg.layer_norm_eps)


def pre_logits(params: dict, y: torch.Tensor, cfg) -> torch.Tensor:
    """The pre-training head's hidden layer (paper §3.1: "a MLP with one hidden layer at pre-training time",
    tanh per App. D.3) when cfg.representation_size is set; the identity for the fine-tuning head. (B, D) -> (B, R)."""
    if not cfg.representation_size:
        return y
    return torch.tanh(F.linear(y, params["pre_logits.weight"], params["pre_logits.bias"]))


def classifier(params: dict, features: torch.Tensor, cfg) -> torch.Tensor:
    """The final linear layer, (B, R) -> (B, K); with num_classes=0 there is none and features pass through."""
    if not cfg.num_classes:
        return features
    return F.linear(features, params["head.weight"], params["head.bias"])


def forward(params: dict, images: torch.Tensor, cfg, *, train: bool = False, return_attention: bool = False,
            fast: bool = False):
    """images (B, C, H, W) -> logits (B, K).

    With return_attention=True returns (logits, out), where out holds
      "attention": per layer, the probabilities (B, H, N+1, N+1),
      "hidden":    z_0 … z_L, each (B, N+1, D),
      "features":  the pooled representation the classifier reads, (B, D) (or (B, R) after pre-logits).
    `train` turns dropout on (cfg.dropout). `fast` runs the encoder of fast.py: the same function computed with a
    fused attention kernel that never forms the probabilities, so it cannot be combined with return_attention, and,
    with class-token pooling, the last block for the class token alone."""
    if fast and return_attention:
        raise ValueError("return_attention: the fast path never forms the attention probabilities; "
                         "expected fast=False to get them, got fast=True")
    out = {"attention": [], "hidden": []} if return_attention else None
    z = embed(params, images, cfg, train)
    if out is not None:
        out["hidden"].append(z)
    z = fast_encoder(z, params, cfg, train) if fast else encoder(z, params, cfg, train, out)
    features = pre_logits(params, pool(params, z, cfg), cfg)
    logits = classifier(params, features, cfg)
    if out is None:
        return logits
    out["features"] = features
    return logits, out
