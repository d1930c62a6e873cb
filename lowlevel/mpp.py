"""Masked patch prediction, the paper's self-supervised pre-training (§4.6, App. B.1.2).

BERT's masked language modelling (Devlin et al. 2019) applied to patches: 50% of the patch embeddings x_pⁱE are
chosen; of those, 80% are replaced by a learned [mask] embedding, 10% by another patch's embedding, 10% kept. The
corrupted sequence then goes through eq. (1)'s second half (x_class, E_pos) and the encoder as usual, and each chosen
patch predicts a target computed from the uncorrupted image from its own output token; the loss counts the chosen
patches only. The paper tried three targets (App. B.1.2), mpp.target:

    "mean_colour"  the patch's mean colour in 3 bits per channel: one class of 2^(3C), 512 for RGB (8 for a single
                   channel, where 3 bits per channel leave 8 colours); the paper reports this one (§4.6)
    "downsized"    the patch average-pooled to 4×4 cells (of a 16×16 patch), each cell's colour in 3 bits per
                   channel: 16 classes of 2^(3C) predicted in parallel
    "pixels"       the full patch, regressed with an L2 loss ("slightly worse", App. B.1.2)

Its parameters sit in the params dict beside the ViT's:

    mask_token       (1, 1, D)   the learned [mask] embedding, put in place of x_pⁱE before x_class and E_pos
    mpp_head.weight  (O, D)      the prediction head, on each patch token's LN(z_L^i) (eq. (4)'s LN, per token)
    mpp_head.bias    (O,)        O = 2^(bits·C), cells²·2^(bits·C) or C·P·P, as the target needs

Where the references differ: vit-pytorch's MPP (vit_pytorch/mpp.py) chooses BERT's 15% of the patches and gives half
of them its mask token and half another patch (none kept), and it masks pixels before the patch projection, not
embeddings; the three fractions are config fields here, the paper's by default. transformers' ViTForMaskedImageModeling
(SimMIM) puts its mask token where the paper does (ViTEmbeddings with bool_masked_pos), but predicts pixels through a
convolutional decoder with an L1 loss.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_config, check_images, check_model_inputs
from .config import ViTConfig, is_integer, is_real
from .encoder import encoder
from .linear import linear
from .model import tokens
from .norm import layer_norm
from .params import param_shapes as vit_param_shapes
from .patches import patchify
from .position import embed_positions

__all__ = ["MPPConfig", "param_shapes", "init_params", "corrupt", "targets", "predict", "loss", "forward"]

TARGETS = ("mean_colour", "downsized", "pixels")


@dataclass(frozen=True)
class MPPConfig:
    """What is corrupted and what is predicted. Defaults: the paper's (App. B.1.2)."""
    target: str = "mean_colour"      # among TARGETS
    corruption_rate: float = 0.5     # the patches chosen per image (BERT and vit-pytorch's mask_prob: 0.15)
    mask_token_rate: float = 0.8     # of the chosen, those given the [mask] embedding (vit-pytorch: 0.5)
    random_patch_rate: float = 0.1   # of the chosen, those given another patch's embedding (vit-pytorch: 0.5); the
                                     # rest keep their own
    bits: int = 3                    # per colour channel: 2^bits levels
    cells: int = 4                   # "downsized": the side of the downsized patch, which P must be a multiple of
    max_pixel_value: float = 1.0     # the colour targets read pixels in [0, max_pixel_value] (vit-pytorch's max_pixel_val)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target: expected one of {TARGETS}, got {self.target!r}")
        if not is_real(self.corruption_rate) or not 0 < self.corruption_rate <= 1:
            raise ValueError(f"corruption_rate: expected a fraction in (0, 1], got {self.corruption_rate!r}")
        for name in ("mask_token_rate", "random_patch_rate"):
            if not is_real(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: expected a fraction in [0, 1], got {getattr(self, name)!r}")
        if self.mask_token_rate + self.random_patch_rate > 1:
            raise ValueError(f"mask_token_rate + random_patch_rate: expected at most 1 (the rest are kept), got "
                             f"{self.mask_token_rate} + {self.random_patch_rate}")
        for name in ("bits", "cells"):
            if not is_integer(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if not is_real(self.max_pixel_value) or not 0 < self.max_pixel_value < math.inf:
            raise ValueError(f"max_pixel_value: expected a finite number > 0, got {self.max_pixel_value!r}")


def check_mpp(cfg: ViTConfig, mpp: MPPConfig) -> None:
    """A config pair the objective can be computed for."""
    check_config(cfg, ViTConfig)
    check_config(mpp, MPPConfig, "mpp")
    if mpp.target == "downsized" and cfg.patch_size % mpp.cells:
        raise ValueError(f"cells: the downsized target needs patch_size={cfg.patch_size} to be a multiple of it, got "
                         f"{mpp.cells}")
    if mpp.random_patch_rate and cfg.num_patches < 2:
        raise ValueError(f"random_patch_rate: replacing a patch by another needs two patches or more, got "
                         f"{cfg.num_patches} with random_patch_rate={mpp.random_patch_rate}")


def num_outputs(cfg: ViTConfig, mpp: MPPConfig) -> int:
    """O, the head's width: 2^(bits·C) colour classes, one set per cell when downsized, or the C·P·P pixels."""
    if mpp.target == "pixels":
        return cfg.in_channels * cfg.patch_size ** 2
    colours = 2 ** (mpp.bits * cfg.in_channels)
    return colours * mpp.cells ** 2 if mpp.target == "downsized" else colours


def param_shapes(cfg: ViTConfig, mpp: MPPConfig) -> dict[str, tuple[int, ...]]:
    """The objective's own parameters' names and shapes (the ViT's are lowlevel.param_shapes')."""
    check_mpp(cfg, mpp)
    o = num_outputs(cfg, mpp)
    return {"mask_token": (1, 1, cfg.dim), "mpp_head.weight": (o, cfg.dim), "mpp_head.bias": (o,)}


def init_params(cfg: ViTConfig, mpp: MPPConfig, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Float32 parameters of the objective, to put beside the ViT's: the [mask] embedding N(0, 0.02), like E_pos (the
    paper gives none; BEiT's pre-training code draws its mask token trunc_normal_(std=0.02), transformers' starts at 0,
    vit-pytorch's at N(0, 1)), the head 0 like the ViT's heads (the official Flax code's zero kernel_init)."""
    shapes = param_shapes(cfg, mpp)
    return {"mask_token": torch.empty(shapes["mask_token"]).normal_(0.0, 0.02, generator=generator),
            "mpp_head.weight": torch.zeros(shapes["mpp_head.weight"]), "mpp_head.bias": torch.zeros(shapes["mpp_head.bias"])}


def num_corrupted(n: int, mpp: MPPConfig) -> int:
    """The patches chosen in an image of n: corruption_rate · n rounded half up, at least one."""
    return max(1, math.floor(mpp.corruption_rate * n + 0.5))


def other_patches(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x (B, N, D) -> for every position i, the embedding at a uniformly drawn other position j ≠ i of the same image,
    (B, N, D)."""
    b, n, d = x.shape
    j = torch.randint(n - 1, (b, n), generator=generator, device=x.device)  # among the n − 1 others ...
    j = j + (j >= torch.arange(n, device=x.device))                         # ... by skipping i itself
    return x.gather(1, j.unsqueeze(-1).expand(b, n, d))


def corrupt(x: torch.Tensor, mask_token: torch.Tensor, mpp: MPPConfig,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """App. B.1.2: patch embeddings x (B, N, D) -> (corrupted (B, N, D), chosen (B, N) bool). In each image the same
    number of patches is chosen (`num_corrupted`), uniformly; each chosen one independently gets the [mask] embedding
    (mask_token (1, 1, D)) with probability mask_token_rate, another patch's embedding with random_patch_rate, and
    otherwise keeps its own. Every draw comes from `generator`, which lives on x's device."""
    b, n, _ = x.shape
    order = torch.rand(b, n, generator=generator, device=x.device).argsort(dim=1)   # a random permutation per image
    chosen = torch.zeros(b, n, dtype=torch.bool, device=x.device).scatter(1, order[:, :num_corrupted(n, mpp)], True)
    fate = torch.rand(b, n, generator=generator, device=x.device)                    # [0, mask) [mask, +random) rest
    to_mask = chosen & (fate < mpp.mask_token_rate)
    to_random = chosen & (fate >= mpp.mask_token_rate) & (fate < mpp.mask_token_rate + mpp.random_patch_rate)
    if mpp.random_patch_rate:
        x = torch.where(to_random.unsqueeze(-1), other_patches(x, generator), x)
    return torch.where(to_mask.unsqueeze(-1), mask_token, x), chosen


def colour_classes(images: torch.Tensor, cell_size: int, mpp: MPPConfig) -> torch.Tensor:
    """The mean colour of every cell_size × cell_size cell, each channel in `bits` bits, as one class:
    images (B, C, H, W) -> (B, H/cell_size, W/cell_size) in [0, 2^(bits·C)). vit-pytorch's MPPLoss target: pixels
    clamped (it clamps above max_pixel_value only; pixels below 0 are not colours), channel c's level k such that
    k·max/2^bits < mean ≤ (k+1)·max/2^bits (torch.bucketize), and channel c's level the c-th digit in base 2^bits,
    channel 0 the least significant."""
    levels = 2 ** mpp.bits
    means = F.avg_pool2d(images.clamp(0, mpp.max_pixel_value), cell_size)             # (B, C, H/s, W/s)
    edges = torch.arange(1, levels, dtype=images.dtype, device=images.device) * (mpp.max_pixel_value / levels)
    digits = torch.bucketize(means, edges)                                         # (B, C, H/s, W/s) in [0, levels)
    place = levels ** torch.arange(images.shape[1], device=images.device)            # (C,): 1, 2^bits, 2^(2·bits), …
    return (digits * place.view(-1, 1, 1)).sum(dim=1)


def targets(images: torch.Tensor, cfg: ViTConfig, mpp: MPPConfig) -> torch.Tensor:
    """What each patch predicts, from the uncorrupted images (B, C, H, W) in pixel values ([0, max_pixel_value] for the
    colour targets: undo any normalisation first):
    "mean_colour" (B, N) class indices; "downsized" (B, N, cells²) class indices, cells in row-major order;
    "pixels" (B, N, C·P·P), the patches as patchify flattens them."""
    check_mpp(cfg, mpp)
    check_images(images, patch_size=cfg.patch_size, channels=cfg.in_channels, size=cfg.image_size)
    if mpp.target == "pixels":
        return patchify(images, cfg.patch_size)
    if mpp.target == "mean_colour":
        return colour_classes(images, cfg.patch_size, mpp).flatten(1)                # (B, N)
    s = mpp.cells
    classes = colour_classes(images, cfg.patch_size // s, mpp).unsqueeze(1)          # (B, 1, gh·s, gw·s)
    return patchify(classes, s)                                                      # (B, N, s²)


def predict(params: dict, z: torch.Tensor, cfg: ViTConfig, mpp: MPPConfig) -> torch.Tensor:
    """Every patch's prediction from its own output token: z_L (B, P+N, D) -> LN -> mpp_head, (B, N, O), for
    "downsized" (B, N, cells², 2^(bits·C)). The prefix tokens predict nothing."""
    check_mpp(cfg, mpp)
    y = layer_norm(z[:, cfg.num_prefix_tokens:], params["norm.weight"], params["norm.bias"], cfg.layer_norm_eps)
    out = linear(y, params["mpp_head.weight"], params["mpp_head.bias"])             # (B, N, O)
    return out.unflatten(-1, (mpp.cells ** 2, -1)) if mpp.target == "downsized" else out


def loss(predictions: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor, mpp: MPPConfig) -> torch.Tensor:
    """The objective over the chosen patches only, a scalar: cross-entropy of the colour classes (the mean over the
    chosen patches, and over their cells when downsized), or the mean squared error of the pixels (L2).
    predictions (B, N, …) as `predict` gives, targets (B, N, …) as `targets` gives, chosen (B, N) bool."""
    p, t = predictions[chosen], targets[chosen]                                     # (S, …): the chosen patches
    if mpp.target == "pixels":
        return F.mse_loss(p, t)
    return F.cross_entropy(p.flatten(0, -2), t.flatten())                           # (S·cells², colours)


def forward(params: dict, images: torch.Tensor, cfg: ViTConfig, mpp: MPPConfig, *, generator: torch.Generator,
            train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, C, H, W) as the model reads them -> (predictions (B, N, …) of every patch, chosen (B, N) bool):
    eq. (1) with the patch embeddings (x_p E, or SPT's) corrupted between its two halves, the encoder, `predict`. The
    loss reads the predictions at the chosen patches: loss(predictions, targets(pixels, cfg, mpp), chosen, mpp)."""
    check_mpp(cfg, mpp)
    check_images(images, patch_size=cfg.patch_size, channels=cfg.in_channels, size=cfg.image_size)
    check_model_inputs(params, images, {**vit_param_shapes(cfg), **param_shapes(cfg, mpp)})
    x = tokens(params, images, cfg)                                                             # (B, N, D)
    x, chosen = corrupt(x, params["mask_token"], mpp, generator)
    z = F.dropout(embed_positions(params, x, cfg), cfg.dropout, train)                           # z_0, as model.embed
    return predict(params, encoder(params, z, cfg, train), cfg, mpp), chosen
