"""A functional Vision Transformer (Dosovitskiy et al. 2020) over explicit parameter tensors.

Tensor ops and torch.nn.functional only: params in, tensors out."""
from .attention import multi_head_attention, scaled_dot_product_attention
from .checks import check_params
from .config import ViTConfig
from .encoder import encoder, encoder_block
from .fast import fast_encoder, fast_encoder_block
from .mlp import mlp_block
from .model import embed, forward, pool
from .params import init_params, param_shapes
from .patches import patch_embedding, patchify, unpatchify
from .position import sincos_2d
from .timm_format import from_timm, to_timm

__all__ = ["ViTConfig", "init_params", "param_shapes", "check_params", "forward", "embed", "encoder", "encoder_block",
           "fast_encoder", "fast_encoder_block", "pool", "mlp_block", "multi_head_attention",
           "scaled_dot_product_attention", "patchify", "unpatchify", "patch_embedding", "sincos_2d", "from_timm",
           "to_timm"]
