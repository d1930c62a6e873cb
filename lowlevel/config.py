"""The model's hyper-parameters, with every numerical choice that differs between implementations named.

Paper Table 1 gives D, L, MLP size and heads; the rest is what the official code and timm choose, written
out so that nothing hides in a library default (the comment on each field names its source). `distilled`, `fusion`
and `drop_path` are DeiT's (Touvron et al. 2021, arXiv:2012.12877). `backbone` makes the model the paper's hybrid
(§3.1): its patches are cut from a ResNet's feature map (`BackboneConfig`, computed by resnet.py) instead of the image.
`patch_embed`, `spt_shift` and `attention` are the two additions of "Vision Transformer for Small-Size Datasets"
(Lee, Lee & Song 2021, arXiv:2112.13492).
"""
import math
import numbers
from dataclasses import dataclass


def is_integer(value) -> bool:
    """An integer, not a bool (True is an int to Python, never a size to us) nor a float like 16.0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def image_size_pair(size) -> tuple[int, int]:
    """A config's image_size as (height, width), an integer meaning a square image; each side a positive integer."""
    if is_integer(size):
        size = (size, size)
    elif not (isinstance(size, tuple | list) and len(size) == 2):
        raise ValueError(f"image_size: expected an integer or (height, width), got {size!r}")
    if not all(is_integer(s) and s >= 1 for s in size):
        raise ValueError(f"image_size: expected positive integers (height, width), got {tuple(size)!r}")
    return tuple(size)


@dataclass(frozen=True)
class BackboneConfig:
    """The hybrid's CNN (§3.1; §4.1: "we feed the intermediate feature maps into ViT with patch size of one 'pixel'"):
    BiT's ResNet-v2 (Kolesnikov et al. 2020) without pre-activation, as the official code (vit_jax/models_vit.py
    `VisionTransformer`, models_resnet.py) and timm (vision_transformer_hybrid.py `_resnetv2`) build it: a stem of
    one 7×7/2 convolution and a 3×3/2 max-pool, then stages of bottleneck units, stage s of bottleneck width
    width·2^s and output width 4·width·2^s, every stage after the first halving the map; TF "SAME" padding
    throughout. The defaults are timm's hybrid: its numerics differ from the official code's, which standardises a
    kernel as (W − μ)/(σ + 1e-5) and normalises groups with Flax's eps 1e-6."""
    layers: tuple[int, ...] = (3, 4, 9)     # bottleneck units per stage; () = the stem alone (R+ViT-Ti/16)
    width: int = 64                         # the stem's channels and the first stage's bottleneck width (R50x1: 64)
    num_groups: int = 32                    # GroupNorm groups (BiT; timm GroupNormAct(num_groups=32))
    group_norm_eps: float = 1e-5            # timm GroupNormAct (torch's GroupNorm default); Flax GroupNorm 1e-6
    std_eps: float = 1e-8                   # weight standardisation (W − μ)/√(σ² + eps): timm _resnetv2's
                                            # StdConv2dSame(eps=1e-8)

    def __post_init__(self):
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if not (isinstance(self.layers, tuple) and len(self.layers) <= 4
                and all(is_integer(n) and n >= 1 for n in self.layers)):
            raise ValueError(f"layers: expected up to 4 stages of at least one unit each (timm dilates a fifth "
                             f"instead of striding), got {self.layers!r}")
        for name in ("width", "num_groups"):
            if not is_integer(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.width % self.num_groups:
            raise ValueError(f"num_groups: expected a divisor of every normalised width, the smallest being "
                             f"width={self.width}, got {self.num_groups}")
        for name in ("group_norm_eps", "std_eps"):
            if not is_real(getattr(self, name)) or not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name}: expected a finite number > 0, got {getattr(self, name)!r}")

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Each stage's bottleneck width, width·2^s; a unit's output is four times it."""
        return tuple(self.width * 2 ** s for s in range(len(self.layers)))

    @property
    def out_channels(self) -> int:
        """The channels of the feature map the patches are cut from."""
        return 4 * self.stage_widths[-1] if self.layers else self.width

    @property
    def stride(self) -> int:
        """Image pixels per feature-map cell: 4 from the stem's convolution and max-pool, ×2 for every stage after the
        first (4 for the stem alone, 16 for three stages, 32 for four)."""
        return 4 * 2 ** max(len(self.layers) - 1, 0)

    def feature_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the feature map for an image: (⌈H/stride⌉, ⌈W/stride⌉), since each stride-2 step with "SAME"
        padding gives ⌈n/2⌉, and ⌈⌈n/2⌉/2⌉ = ⌈n/4⌉."""
        return tuple(-(-side // self.stride) for side in image_size)


@dataclass(frozen=True)
class ViTConfig:
    image_size: tuple[int, int] = (224, 224)  # (H, W); an int means a square image
    patch_size: int = 16                      # P
    in_channels: int = 3                      # C
    dim: int = 768                            # D, the hidden size
    depth: int = 12                           # L, encoder blocks
    num_heads: int = 12                       # k heads, D_h = D / k
    mlp_dim: int = 3072                       # MLP size
    num_classes: int = 1000                   # K; 0 means no head (the model returns features)
    representation_size: int | None = None    # pre-training head's hidden "pre-logits" layer (tanh); None = linear head
    class_token: bool = True                  # prepend x_class (paper) or not (GAP-only models)
    pool: str = "token"                       # "token": y = LN(z_L^0) (eq. 4); "avg": mean of patch tokens, then LN (timm fc_norm)
    pos_embed: str = "learned"                # "learned" 1-D (paper), "sincos2d" fixed (big_vision), "none"
    qkv_bias: bool = True                     # biases on q, k, v (timm, HF and Flax have them)
    layer_norm_eps: float = 1e-6              # Flax and timm 1e-6; Hugging Face configs 1e-12
    gelu: str = "exact"                       # "exact" erf (timm, HF) or "tanh" approximation (Flax nn.gelu, official JAX)
    dropout: float = 0.0                      # after pos-add, attention out-proj, GELU and fc2 (paper App. B.1)
    drop_path: float = 0.0                    # stochastic depth: per-sample drop rate of the last block's residual
                                              # branches, 0 at the first block, linear between (DeiT Table 9; timm)
    distilled: bool = False                   # DeiT §4: a distillation token after x_class (own E_pos row, own head)
    fusion: str = "mean_logits"               # a distilled model's prediction from its two heads: "mean_logits"
                                              # (timm, transformers, official code) or "softmax_sum" (DeiT §4's text)
    backbone: BackboneConfig | None = None    # §3.1 hybrid: patches of P×P of this CNN's feature map; None: of the image
    patch_embed: str = "linear"               # "linear": eq. (1)'s x_p E; "spt": Shifted Patch Tokenization (Lee et al.
                                              # §3.2): the image and four shifted copies, patchified, LN, linear
    spt_shift: str = "diagonal"               # SPT's four shifts: "diagonal" by P/2 (the paper, its official code),
                                              # "cardinal" by one pixel (vit-pytorch's vit_for_small_dataset)
    attention: str = "standard"               # "standard": softmax(q kᵀ/√D_h) (App. A); "lsa": Locality Self-Attention
                                              # (Lee et al. §3.3): a learned temperature, each token's own logit masked

    def __post_init__(self):
        object.__setattr__(self, "image_size", image_size_pair(self.image_size))
        if isinstance(self.backbone, dict):     # what dataclasses.asdict and a JSON file give back
            object.__setattr__(self, "backbone", BackboneConfig(**self.backbone))
        if not (self.backbone is None or isinstance(self.backbone, BackboneConfig)):
            raise ValueError(f"backbone: expected None or a BackboneConfig, got {type(self.backbone).__name__}")
        for name in ("patch_size", "in_channels", "dim", "depth", "num_heads", "mlp_dim"):
            if not is_integer(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if not is_integer(self.num_classes) or self.num_classes < 0:
            raise ValueError(f"num_classes: expected a non-negative integer (0: no head), got {self.num_classes!r}")
        if self.representation_size is not None and (not is_integer(self.representation_size)
                                                     or self.representation_size < 1):
            raise ValueError(f"representation_size: expected None or a positive integer, got "
                             f"{self.representation_size!r}")
        for name in ("class_token", "qkv_bias", "distilled"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        if not is_real(self.layer_norm_eps) or not 0 < self.layer_norm_eps < math.inf:
            raise ValueError(f"layer_norm_eps: expected a finite number > 0, got {self.layer_norm_eps!r}")
        if not is_real(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        h, w = self.feature_size
        p = self.patch_size
        if h % p or w % p:
            source = f"the backbone's feature map of {(h, w)}" if self.backbone else "height and width"
            raise ValueError(f"image_size: expected {source} divisible by patch_size={p}, got {self.image_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim: expected a multiple of num_heads={self.num_heads}, got dim={self.dim}")
        choices = {"pool": ("token", "avg"), "pos_embed": ("learned", "sincos2d", "none"), "gelu": ("exact", "tanh"),
                   "fusion": ("mean_logits", "softmax_sum"), "patch_embed": ("linear", "spt"),
                   "spt_shift": ("diagonal", "cardinal"), "attention": ("standard", "lsa")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.backbone and self.patch_embed == "spt":
            raise ValueError("patch_embed: 'spt' shifts the image, and a hybrid's patches come from its backbone's "
                             "feature map: expected 'linear' with a backbone, got 'spt'")
        if self.pool == "token" and not self.class_token:
            raise ValueError("pool: 'token' pooling needs class_token=True, got class_token=False")
        if self.distilled and not (self.class_token and self.pool == "token"):
            raise ValueError(f"distilled: the distillation head reads the class and distillation tokens, so it needs "
                             f"class_token=True and pool='token', got class_token={self.class_token}, "
                             f"pool={self.pool!r}")
        if not is_real(self.drop_path) or not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path: expected a rate in [0, 1), got {self.drop_path}")
        if self.attention == "lsa" and self.num_tokens < 2:
            raise ValueError(f"attention: 'lsa' masks each token's attention to itself, so it needs two tokens or more, "
                             f"got {self.num_tokens}")
        if self.pos_embed == "sincos2d" and self.dim % 4:
            raise ValueError(f"dim: 2-D sin-cos position embeddings need a multiple of 4, got {self.dim}")
        if self.pos_embed == "sincos2d" and self.dim < 8:       # ω_k = T^(-k/(D/4 - 1)) (position.py) needs D/4 > 1
            raise ValueError(f"dim: 2-D sin-cos position embeddings need D/4 - 1 > 0, so at least 8, got {self.dim}")

    @property
    def feature_size(self) -> tuple[int, int]:
        """(H, W) of what the patches are cut from: the image, or a hybrid's feature map."""
        return self.backbone.feature_size(self.image_size) if self.backbone else self.image_size

    @property
    def patch_channels(self) -> int:
        """C of what the patches are cut from: the image's channels, or a hybrid's feature map's."""
        return self.backbone.out_channels if self.backbone else self.in_channels

    @property
    def grid_size(self) -> tuple[int, int]:
        """(H/P, W/P) of the image or the feature map: the patch grid."""
        return self.feature_size[0] // self.patch_size, self.feature_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        """N = HW/P²."""
        gh, gw = self.grid_size
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        """The tokens before the patches: x_class (paper), then DeiT's distillation token. 0, 1 or 2."""
        return int(self.class_token) + int(self.distilled)

    @property
    def num_tokens(self) -> int:
        """N plus the prefix tokens."""
        return self.num_patches + self.num_prefix_tokens

    @property
    def head_dim(self) -> int:
        """D_h = D / k (paper App. A)."""
        return self.dim // self.num_heads
