"""The whole Vision Transformer, eqs. (1)-(4), as pure functions of (params, images).

    z_0 = [x_class; x_p¹E; …; x_pᴺE] + E_pos        eq. (1); a hybrid's x_p are patches of a CNN feature map (§3.1)
    z'_ℓ = MSA(LN(z_{ℓ-1})) + z_{ℓ-1}                eq. (2)
    z_ℓ = MLP(LN(z'_ℓ)) + z'_ℓ                        eq. (3)
    y = LN(z_L^0)                                     eq. (4)
    logits = head(y)

A distilled DeiT (Touvron et al. 2021, §4) has a second prefix token, the distillation token z^1, and a second head;
eq. (4)'s LN is applied to each token's final state:

    Z_cls = head(LN(z_L^0)),   Z_dist = head_dist(LN(z_L^1))

Training fits Z_cls to the true labels and Z_dist to the teacher (paper/training/distillation.py); at evaluation the two
make one prediction as cfg.fusion says (`fuse`).

Entry points, one return shape each: `forward` (logits), `forward_intermediates` (logits and what the model
computed on the way: every layer's attention, every hidden state, the features), and for a distilled model
`forward_heads` (both heads' logits (Z_cls, Z_dist), what distillation trains). `forward` and `forward_heads` take
`fast`: True runs fast.py's fused blocks instead of encoder.py's, the same function in fewer passes, which never
forms the attention probabilities (so `forward_intermediates` has no such flag). Nothing is stored between calls, so
each composes with torch.func (`vmap`, `grad`, `jvp`) as a function of (params, images).
"""
import math

import torch
import torch.nn.functional as F

from .checks import check_config, check_images, check_model_inputs
from .config import ViTConfig
from .drop_path import drop_path_rates
from .encoder import block_params, encoder, encoder_block, params_under
from .fast import fast_encoder
from .linear import linear
from .locality import shifted_patch_tokenization
from .norm import layer_norm
from .params import param_shapes
from .patches import patch_embedding
from .position import embed_positions
from .resnet import feature_map


def check_inputs(params: dict, images: torch.Tensor, cfg: ViTConfig) -> None:
    """Images of cfg's shape; every parameter cfg needs, of its shape, on the images' device and in their dtype."""
    check_config(cfg, ViTConfig)
    divides = 1 if cfg.backbone else cfg.patch_size     # a hybrid's patches divide the feature map, which cfg checked
    check_images(images, patch_size=divides, channels=cfg.in_channels, size=cfg.image_size)
    check_model_inputs(params, images, param_shapes(cfg))


def patch_source(params: dict, images: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """What eq. (1)'s patches are cut from: the image, or for the hybrid (§3.1: "the patch embedding projection E
    (Eq. 1) is applied to patches extracted from a CNN feature map") the ResNet's feature map.
    (B, C, H, W) -> (B, cfg.patch_channels, *cfg.feature_size)."""
    if cfg.backbone is None:
        return images
    return feature_map(params_under(params, "backbone."), images, cfg.backbone)


def tokens(params: dict, images: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """Eq. (1)'s first half, (B, C, H, W) -> (B, N, D): x_p E of the image's (or the hybrid's feature map's) patches,
    or Shifted Patch Tokenization (locality.py)."""
    if cfg.patch_embed == "spt":
        return shifted_patch_tokenization(images, params["patch_norm.weight"], params["patch_norm.bias"],
                                          params["patch.weight"], params["patch.bias"], cfg.patch_size, cfg.spt_shift,
                                          cfg.layer_norm_eps)
    return patch_embedding(patch_source(params, images, cfg), params["patch.weight"], params["patch.bias"],
                           cfg.patch_size)


def embed(params: dict, images: torch.Tensor, cfg: ViTConfig, train: bool = False) -> torch.Tensor:
    """Eq. (1): (B, C, H, W) -> z_0 (B, P+N, D); dropout "directly after adding positional- to patch embeddings"."""
    check_config(cfg, ViTConfig)
    return F.dropout(embed_positions(params, tokens(params, images, cfg), cfg), cfg.dropout, train)


def pool(params: dict, z: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """Eq. (4): z_L (B, P+N, D) -> y (B, D).
    "token": y = LN(z_L^0), the class token's final state (paper).
    "avg": mean over the patch tokens, then LN: timm's global_pool='avg' with its LN moved after pooling (fc_norm)."""
    check_config(cfg, ViTConfig)
    y = z[:, 0] if cfg.pool == "token" else z[:, cfg.num_prefix_tokens:].mean(dim=1)  # prefix tokens left out
    return layer_norm(y, params["norm.weight"], params["norm.bias"], cfg.layer_norm_eps)


def distilled_pool(params: dict, z: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """DeiT §4: eq. (4)'s LN on the class and the distillation token's final states. z_L (B, T, D) -> (B, 2, D)."""
    return layer_norm(z[:, :2], params["norm.weight"], params["norm.bias"], cfg.layer_norm_eps)


def pre_logits(params: dict, y: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """The pre-training head's hidden layer (paper §3.1: "a MLP with one hidden layer at pre-training time",
    tanh per App. D.3) when cfg.representation_size is set; the identity for the fine-tuning head. (…, D) -> (…, R)."""
    if not cfg.representation_size:
        return y
    return torch.tanh(linear(y, params["pre_logits.weight"], params["pre_logits.bias"]))


def classifier(params: dict, features: torch.Tensor, cfg: ViTConfig, head: str = "head") -> torch.Tensor:
    """A final linear layer, `head` or DeiT's `head_dist`: (B, R) -> (B, K); with num_classes=0 there is none and
    features pass through."""
    if not cfg.num_classes:
        return features
    return linear(features, params[f"{head}.weight"], params[f"{head}.bias"])


def heads(params: dict, z: torch.Tensor, cfg: ViTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """DeiT §4: both heads' logits, Z_cls from the class token and Z_dist from the distillation token.
    z_L (B, T, D) -> ((B, K), (B, K))."""
    y = pre_logits(params, distilled_pool(params, z, cfg), cfg)                     # (B, 2, R)
    return classifier(params, y[:, 0], cfg), classifier(params, y[:, 1], cfg, "head_dist")


def fuse(class_logits: torch.Tensor, distillation_logits: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """A distilled model's prediction from its two heads, (B, K) twice -> (B, K), as cfg.fusion says:
    "mean_logits": (Z_cls + Z_dist) / 2, what timm (deit.py forward_head), transformers
      (DeiTForImageClassificationWithTeacher) and the official code (deit models.py) compute;
    "softmax_sum": the paper's joint classifier, "the late fusion of these two separate heads, for which we add the
      softmax output by the two classifiers" (§4), as log(½ (ψ(Z_cls) + ψ(Z_dist))): logits whose softmax is the
      mean of the two heads' softmaxes and whose argmax is the argmax of their sum. The two can rank differently."""
    check_config(cfg, ViTConfig)
    if cfg.fusion == "mean_logits":
        return (class_logits + distillation_logits) / 2
    log_probs = torch.stack([class_logits.log_softmax(dim=-1), distillation_logits.log_softmax(dim=-1)])
    return log_probs.logsumexp(dim=0) - math.log(2)                                # log ½ Σ ψ, without overflow


def output(params: dict, z: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """z_L -> the model's logits (B, K): the classifier's, or a distilled model's two heads fused."""
    if cfg.distilled:
        return fuse(*heads(params, z, cfg), cfg)
    return classifier(params, pre_logits(params, pool(params, z, cfg), cfg), cfg)


def features(params: dict, z: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """The pooled representation (B, D) (or (B, R) after pre-logits): what the classifier reads; for a distilled
    model the mean of its two tokens', as timm's forward_head(pre_logits=True) (deit.py)."""
    if cfg.distilled:
        return pre_logits(params, distilled_pool(params, z, cfg), cfg).mean(dim=1)
    return pre_logits(params, pool(params, z, cfg), cfg)


def check_distilled(cfg: ViTConfig, function: str) -> None:
    """Only a distilled model has two heads to return."""
    if not cfg.distilled:
        raise ValueError(f"distilled: {function} returns the two heads of a distilled model (cfg.distilled=True), got "
                         f"distilled=False; use forward for a model with one head")


def encode(params: dict, images: torch.Tensor, cfg: ViTConfig, train: bool, fast: bool) -> torch.Tensor:
    """Eqs. (1)-(3): images (B, C, H, W) -> z_L (B, P+N, D), checked first. With `fast`, fast.py's `fast_encoder`:
    fused attention that never forms the probabilities, each residual add inside its GEMM, and, with class-token
    pooling, the last block for the prefix tokens alone (then z_L^{0…P−1}, (B, P, D), all that eq. (4) reads)."""
    check_inputs(params, images, cfg)
    blocks = fast_encoder if fast else encoder
    return blocks(params, embed(params, images, cfg, train), cfg, train)


def forward(params: dict, images: torch.Tensor, cfg: ViTConfig, *, train: bool = False,
            fast: bool = False) -> torch.Tensor:
    """images (B, C, H, W) -> logits (B, K) (features (B, D) when num_classes=0). `train` turns dropout and drop path
    on; `fast` computes the same logits through fast.py (`encode`)."""
    return output(params, encode(params, images, cfg, train, fast), cfg)


def forward_heads(params: dict, images: torch.Tensor, cfg: ViTConfig, *, train: bool = False,
                  fast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A distilled model's two heads: images (B, C, H, W) -> (Z_cls (B, K), Z_dist (B, K)), what DeiT trains; `fast`
    as for `forward`."""
    check_config(cfg, ViTConfig)
    check_distilled(cfg, "forward_heads")
    return heads(params, encode(params, images, cfg, train, fast), cfg)


def forward_intermediates(params: dict, images: torch.Tensor, cfg: ViTConfig, *,
                          train: bool = False) -> tuple[torch.Tensor, dict]:
    """`forward`, also returning what it computed on the way (big_vision's `out` dict), so nothing needs a hook:
      "attention": per layer, the probabilities (B, H, T, T), T = P+N tokens,
      "hidden":    z_0 … z_L, each (B, T, D),
      "features":  the pooled representation the classifier reads (`features`), (B, D) (or (B, R) after pre-logits).
    -> (logits, intermediates)."""
    check_inputs(params, images, cfg)
    z = embed(params, images, cfg, train)
    attention, hidden = [], [z]
    for i, rate in enumerate(drop_path_rates(cfg.drop_path, cfg.depth)):
        z, probs = encoder_block(block_params(params, i), z, cfg, train, rate)
        attention.append(probs)
        hidden.append(z)
    return output(params, z, cfg), {"attention": attention, "hidden": hidden, "features": features(params, z, cfg)}
