"""The Swin Transformer's hyper-parameters (Liu et al. 2021, arXiv:2103.14030), every convention where its
implementations compute differently named as a field.

Paper §3.3 gives C, the stage depths, the window M = 7, d = 32 per head and the MLP ratio α = 4. Three choices are
the implementations' own, and each changes what the model computes at some image sizes (at 224 px with M = 7 every
stage is a whole number of windows and all of them agree):

- `padding`: a stage whose side is not a multiple of the window is zero-padded bottom-right ("bottom-right padding",
  §3.2 footnote 4). timm rolls the map for the shifted windows first and pads after ("after_shift",
  timm/models/swin_transformer.py `_attn`); torchvision and transformers pad first and roll the padded map
  ("before_shift", torchvision `shifted_window_attention`, transformers `SwinLayer.forward`). The original code never
  pads: its sizes are multiples of M.
- `small_window`: a stage side no larger than M. timm shrinks the window along that axis to the side and does not
  shift along it ("shrink", `_calc_window_shift`); torchvision keeps M, pads the side up to M and does not shift along
  it ("pad"); the original and transformers shrink both axes to the shorter side and shift along neither
  ("shrink_min", microsoft/Swin-Transformer `SwinTransformerBlock.__init__`, transformers `set_shift_and_window_size`).
  A shrunk window has a smaller relative-position table, so the parameter shapes depend on the image size.
- `merge_position`: patch merging (§3.1) opens stages 1..3 in timm ("start") and closes stages 0..2 in the original,
  torchvision and transformers ("end"). The logits are the same; the parameter names (`stages.{s}.merge.*`) and the
  stage outputs of `forward_intermediates` differ.
"""
import math
from dataclasses import dataclass

from .config import image_size_pair, is_integer, is_real

PADDING = ("after_shift", "before_shift")
SMALL_WINDOW = ("shrink", "pad", "shrink_min")
MERGE_POSITION = ("start", "end")


@dataclass(frozen=True)
class SwinConfig:
    """A Swin Transformer: §3.3's sizes, and each implementation's conventions named (this module's docstring)."""
    image_size: tuple[int, int] = (224, 224)      # (H, W); an int means a square image
    patch_size: int = 4                           # P: "4 × 4 ... feature dimension of each patch is 4×4×3 = 48" (§3.1)
    in_channels: int = 3
    dim: int = 96                                 # C, stage 0's width; stage s has 2^s·C (§3.1)
    depths: tuple[int, ...] = (2, 2, 6, 2)        # Swin blocks per stage (§3.3: Swin-T)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)   # per stage; "the query dimension of each head is d = 32" (§3.3)
    window_size: int = 7                          # M: "M = 7 by default" (§3.3)
    mlp_ratio: float = 4.0                        # α: MLP hidden width α·C (§3.3)
    num_classes: int = 1000                       # K; 0 means no head (the model returns the pooled features)
    qkv_bias: bool = True                         # biases on q, k, v (all implementations' default)
    layer_norm_eps: float = 1e-5                  # PyTorch's LayerNorm default, which every Swin code uses (ViT: 1e-6)
    gelu: str = "exact"                           # "exact" erf, as every Swin code; "tanh" approximation
    drop_path: float = 0.0                        # stochastic depth at the last block, 0 at the first, linear between
                                                  # (timm, torchvision); §4.1 trains T/S/B with 0.2/0.3/0.5
    padding: str = "after_shift"                  # timm; "before_shift": torchvision, transformers (see above)
    small_window: str = "shrink"                  # timm; "pad": torchvision; "shrink_min": original, transformers
    merge_position: str = "start"                 # timm; "end": original, torchvision, transformers

    def __post_init__(self):
        object.__setattr__(self, "image_size", image_size_pair(self.image_size))
        for name in ("depths", "num_heads"):
            if not isinstance(getattr(self, name), tuple | list):
                raise ValueError(f"{name}: expected one integer per stage, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("patch_size", "in_channels", "dim", "window_size"):
            if not is_integer(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if not self.depths or not all(is_integer(d) and d >= 1 for d in self.depths):
            raise ValueError(f"depths: expected one positive block count per stage, got {self.depths}")
        if len(self.num_heads) != len(self.depths):
            raise ValueError(f"num_heads: expected one head count per stage ({len(self.depths)} stages), "
                             f"got {self.num_heads}")
        for s, (width, heads) in enumerate(zip(self.stage_dims, self.num_heads, strict=True)):
            if not is_integer(heads) or heads < 1 or width % heads:
                raise ValueError(f"num_heads: expected stage {s}'s count to divide its width {width}, got {heads!r}")
        if not is_integer(self.num_classes) or self.num_classes < 0:
            raise ValueError(f"num_classes: expected a non-negative integer (0: no head), got {self.num_classes!r}")
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias: expected True or False, got {self.qkv_bias!r}")
        if not is_real(self.layer_norm_eps) or not 0 < self.layer_norm_eps < math.inf:
            raise ValueError(f"layer_norm_eps: expected a finite number > 0, got {self.layer_norm_eps!r}")
        h, w = self.image_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image_size: expected height and width divisible by patch_size={self.patch_size}, "
                             f"got {(h, w)}")
        if not is_real(self.mlp_ratio) or self.mlp_ratio <= 0 or min(self.mlp_dims) < 1:
            raise ValueError(f"mlp_ratio: expected a ratio giving every stage an MLP width ≥ 1, got {self.mlp_ratio!r}")
        if not is_real(self.drop_path) or not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path: expected a rate in [0, 1), got {self.drop_path!r}")
        choices = {"gelu": ("exact", "tanh"), "padding": PADDING, "small_window": SMALL_WINDOW,
                   "merge_position": MERGE_POSITION}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """(H/P, W/P): stage 0's token grid."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Stage 0's tokens, HW/P²."""
        return math.prod(self.grid_size)

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def depth(self) -> int:
        """All Swin blocks, over every stage."""
        return sum(self.depths)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """C, 2C, 4C, 8C: patch merging doubles the width (§3.1)."""
        return tuple(self.dim * 2 ** s for s in range(self.num_stages))

    @property
    def mlp_dims(self) -> tuple[int, ...]:
        """α·C per stage, rounded down as every implementation does (`int(dim * mlp_ratio)`)."""
        return tuple(int(c * self.mlp_ratio) for c in self.stage_dims)

    @property
    def stage_sizes(self) -> tuple[tuple[int, int], ...]:
        """(H_s, W_s), the token grid each stage's blocks see: H/4, H/8, H/16, H/32 (§3.1), an odd side rounded up,
        since patch merging pads it by one (all implementations)."""
        sizes = [self.grid_size]
        for _ in range(self.num_stages - 1):
            sizes.append(tuple(-(-side // 2) for side in sizes[-1]))
        return tuple(sizes)

    @property
    def num_features(self) -> int:
        """The last stage's width, what the pooling hands the classifier."""
        return self.stage_dims[-1]

    def window_and_shift(self, size: tuple[int, int], shifted: bool) -> tuple[tuple[int, int], tuple[int, int]]:
        """((M_h, M_w), (s_h, s_w)): the window and the cyclic shift of a W-MSA (shifted=False) or SW-MSA block on
        a (H_s, W_s) grid, by `small_window`. The shift is ⌊M/2⌋ (§3.2: "displacing the windows by (⌊M/2⌋, ⌊M/2⌋)")."""
        m = self.window_size
        if self.small_window == "shrink_min":
            if min(size) <= m:
                side = min(size)
                return (side, side), (0, 0)
            return (m, m), (m // 2, m // 2) if shifted else (0, 0)
        window = tuple(min(side, m) if self.small_window == "shrink" else m for side in size)
        shift = tuple(m // 2 if shifted and side > m else 0 for side in size)
        return window, shift


def convention_difference(cfg: SwinConfig, other: SwinConfig) -> str | None:
    """None when `other` computes the same function as `cfg` at cfg.image_size (they may differ in conventions that
    no stage of that size exercises); else where they first differ, in words. merge_position never changes the
    function, only the parameter names and the stage outputs."""
    for s, size in enumerate(cfg.stage_sizes):
        for shifted in sorted({j % 2 == 1 for j in range(cfg.depths[s])}):
            mine, theirs = cfg.window_and_shift(size, shifted), other.window_and_shift(size, shifted)
            kind = "shifted" if shifted else "unshifted"
            if mine != theirs:
                return (f"stage {s}'s {size[0]}×{size[1]} map gets window and shift {mine} in {kind} blocks with "
                        f"small_window={cfg.small_window!r}, {theirs} with {other.small_window!r}")
            window, shift = mine
            if any(shift) and any(side % m for side, m in zip(size, window, strict=True)) \
                    and cfg.padding != other.padding:
                return (f"stage {s}'s {size[0]}×{size[1]} map is padded to whole {window[0]}×{window[1]} windows and "
                        f"shifted, and padding={cfg.padding!r} and {other.padding!r} give different results")
    return None
