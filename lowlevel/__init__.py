"""A functional Vision Transformer (Dosovitskiy et al. 2020) over explicit parameter tensors, and its windowed
sibling the Swin Transformer (Liu et al. 2021) in `lowlevel.swin` with `SwinConfig`.

Tensor ops and torch.nn.functional only: params in, tensors out. Primitives take tensors; block-level functions take
(params, x, cfg); `forward` and `forward_intermediates` take (params, images, cfg), and so does `forward_heads`, the
two heads of a distilled DeiT (Touvron et al. 2021). `forward` and `forward_heads` take `fast=True` to compute the
same function through fast.py's fused blocks. `lora` adapts the params with low-rank updates kept in a dict of their
own (Hu et al. 2021). ViTConfig's patch_embed="spt" and attention="lsa" are Shifted Patch Tokenization and Locality
Self-Attention (Lee et al. 2021, locality.py). `mpp` is the paper's self-supervised objective, masked patch
prediction (§4.6). The Swin Transformer's entry points have the same names and arguments in `lowlevel.swin`. The
hybrid (§3.1) is a ViTConfig with a `backbone`, a BackboneConfig: its patches are cut from the feature map of the ResNet
in `lowlevel.resnet`."""
from . import lora, mpp, resnet, swin
from .attention import merge_heads, multi_head_attention, qkv_heads, scaled_dot_product_attention
from .checks import check_params
from .config import BackboneConfig, ViTConfig
from .drop_path import drop_path, drop_path_rates
from .encoder import block_params, encoder, encoder_block
from .fast import fast_encoder, fast_encoder_block
from .linear import LowRank, linear
from .locality import shifted_patch_tokenization
from .mlp import mlp
from .model import embed, forward, forward_heads, forward_intermediates, fuse, pool
from .norm import group_norm, layer_norm
from .params import init_params, param_shapes
from .patches import patch_embedding, patchify, unpatchify
from .position import sincos_2d
from .swin_config import SwinConfig

__all__ = ["ViTConfig", "BackboneConfig", "SwinConfig", "swin", "resnet", "init_params", "param_shapes", "check_params",
           "forward", "forward_intermediates", "forward_heads",
           "embed", "encoder", "encoder_block", "block_params", "fast_encoder", "fast_encoder_block", "pool",
           "fuse", "drop_path", "drop_path_rates",
           "layer_norm", "group_norm", "linear", "LowRank", "lora", "mpp", "mlp", "multi_head_attention",
           "scaled_dot_product_attention",
           "qkv_heads", "merge_heads",
           "patchify", "unpatchify", "patch_embedding", "shifted_patch_tokenization", "sincos_2d"]
