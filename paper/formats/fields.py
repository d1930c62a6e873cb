"""What a checkpoint's weights cannot tell, and what a format cannot hold: one place for each, used by every format.

The shapes of the weights fix most of a ViTConfig: patch size, channels, D, depth, MLP size, classes, biases. They do
not fix
- the head count: timm, torchvision and transformers store q, k and v of all heads as (D, D) matrices, so any
  divisor of D fits (the official .npz keeps the head axis, (D, H, D_h); transformers' config.json states it; a timm
  hub directory's config.json names its architecture);
- a non-square image size: E_pos has N = gh·gw rows, and N factors many ways;
- the layer-norm eps and the GELU flavour (numerics, not shapes);
- the preprocessing the model was trained with (`Preprocessing`).
A reader takes these from the file where the format stores them, else from the caller's overrides, else from the
functions below, which never guess: the head count comes from a known architecture with the same shapes or not at all.
A Swin's weights tell the head counts (the relative-position tables have a column per head) but not the image size,
nor the conventions of the code that computed with them (`lowlevel.swin_config`): the size comes from the file where
the format stores it, else from the caller, else from a known Swin with the same shapes or not at all; each format's
reader sets its code's conventions, and a writer refuses a config whose function its code would change.
"""
import json
import math
from dataclasses import dataclass, replace

from lowlevel.swin_config import SwinConfig, convention_difference
from paper.formats.architectures import described, matching, swin_matching


def known_value(found: dict, field: str, quantity: str, kind: str, shapes: str, remedy: str) -> int:
    """The one value of `field` that the known `kind`s with the weights' shapes agree on (`found`: value -> names).
    None, or two values: a ValueError saying which, and the flag that supplies it (`remedy`)."""
    if len(found) == 1:
        return next(iter(found))
    if found:
        options = "; ".join(f"{value} in {described(names)}" for value, names in sorted(found.items()))
        got = f"the known {kind}s with their shapes ({shapes}) differ in it ({options})"
    else:
        got = f"no known {kind} has their shapes ({shapes})"
    raise ValueError(f"{field}: expected {quantity}, but the weights do not store it and {got}; pass it with {remedy}")


def num_heads_for(dim: int, depth: int, mlp_dim: int, patch_size: int) -> int:
    """The head count of a model whose file does not store it: that of the known architecture with the same
    (D, depth, MLP size, patch size) (architectures.py). None, or two head counts: a ValueError naming --num-heads."""
    return known_value(matching(dim, depth, mlp_dim, patch_size), "num_heads", "a head count", "architecture",
                       f"D={dim}, depth {depth}, MLP {mlp_dim}, patch {patch_size}",
                       "--num-heads (num_heads=... in the API)")


def square_image_size(rows: int, prefix_tokens: int, patch_size: int) -> int:
    """The side of a square image whose patch grid, with `prefix_tokens` class rows, gives E_pos `rows` rows."""
    n = rows - prefix_tokens
    side = math.isqrt(max(n, 0))
    if n < 1 or side * side != n:
        raise ValueError(f"image_size: expected a square patch grid, got {n} position rows (after {prefix_tokens} "
                         f"prefix rows), which is no square; pass the image size explicitly with --image-size H W")
    return side * patch_size


def require(fmt: str, cfg, **allowed) -> None:
    """Refuse, before anything is written, a config that `fmt` cannot express: each keyword names a config field
    and the value, or tuple of values, the format can hold."""
    for field, values in allowed.items():
        values = values if isinstance(values, tuple) else (values,)
        value = getattr(cfg, field)
        if value not in values:
            expected = values[0] if len(values) == 1 else f"one of {values}"
            raise ValueError(f"{field}: {fmt} cannot express {field}={value!r}; it holds {field}={expected!r}")


@dataclass(frozen=True)
class Preprocessing:
    """How a checkpoint's images are prepared: resize the shorter side to (image size) / crop_pct and centre-crop
    to the image size (crop_pct None: resize straight to the image size), scale to [0, 1], then (x − mean) / std per
    channel. `source` says where these numbers came from."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float | None
    source: str


def swin_image_size(window_size: int, patch_size: int, num_stages: int) -> int:
    """The smallest image side whose last stage holds one whole window, M·P·2^(S−1) (224 for M = 7, 384 for M = 12):
    there every stage is a whole number of windows and all Swin codes compute alike."""
    return window_size * patch_size * 2 ** (num_stages - 1)


def swin_image_size_for(patch_size: int, dim: int, depths: tuple, num_heads: tuple, window_size: int) -> int:
    """The image side of a Swin whose file does not store it: that of the known Swin with the same shapes
    (architectures.py: the paper's, timm's and torchvision's). A Swin's weights fit any size, and a Swin built at 40 px
    read as 32 would be written to a config.json that says 32: none, or two sizes, is a ValueError naming
    --image-size."""
    return known_value(swin_matching(patch_size, dim, depths, num_heads, window_size), "image_size", "an image size",
                       "Swin", f"P={patch_size}, C={dim}, depths {tuple(depths)}, heads {tuple(num_heads)}, "
                       f"M={window_size}", "--image-size H W (image_size=... in the API) or name the model with --model")


def window_from_tables(tables: list) -> int:
    """M, from the stages' relative-position tables B̂, (2M−1)² rows at full size; a checkpoint whose largest table is
    shrunk or non-square (timm at small images) does not tell M."""
    rows = max(t.shape[0] for t in tables)
    side = math.isqrt(rows)
    if side * side != rows or side % 2 == 0:
        raise ValueError(f"window_size: expected a (2M−1)²-row relative-position table, got {rows} rows; pass the "
                         f"model (--model, e.g. swin_tiny_patch4_window7_224)")
    return (side + 1) // 2


def swin_fields(sd: dict, key, known: dict) -> dict:
    """The SwinConfig fields a Swin state dict's shapes tell, whatever the format: `key` maps our parameter names to
    the format's (blocks and global names only), `known` (a format's conventions, the caller's fields) takes
    precedence. B̂ has a column per head and, at full size, (2M−1)² rows; the image size, unless known, is a known
    Swin's (swin_image_size_for)."""
    fields = {**swin_shape_fields(sd, key), **known}
    if "window_size" not in fields:
        fields["window_size"] = window_from_tables(swin_tables(sd, key))
    if "image_size" not in fields:
        fields["image_size"] = swin_image_size_for(fields["patch_size"], fields["dim"], fields["depths"],
                                                   fields["num_heads"], fields["window_size"])
    return fields


def swin_tables(sd: dict, key) -> list:
    """Each stage's first relative-position table."""
    stages = next(s for s in range(len(sd) + 1) if key(f"stages.{s}.blocks.0.relative_position_bias_table") not in sd)
    return [sd[key(f"stages.{s}.blocks.0.relative_position_bias_table")] for s in range(stages)]


def swin_shape_fields(sd: dict, key) -> dict:
    """The SwinConfig fields a Swin state dict's shapes fix, whatever the format (`key` as in swin_fields)."""
    c, channels, p, _ = sd[key("patch.weight")].shape
    tables = swin_tables(sd, key)
    return {"patch_size": p, "in_channels": channels, "dim": c,
            "depths": tuple(next(j for j in range(len(sd) + 1) if key(f"stages.{s}.blocks.{j}.ln1.weight") not in sd)
                            for s in range(len(tables))),
            "num_heads": tuple(t.shape[1] for t in tables),
            "mlp_ratio": sd[key("stages.0.blocks.0.fc1.weight")].shape[0] / c,
            "qkv_bias": key("stages.0.blocks.0.qkv.bias") in sd,
            "num_classes": sd[key("head.weight")].shape[0] if key("head.weight") in sd else 0}


def require_conventions(fmt: str, cfg: SwinConfig, **conventions) -> SwinConfig:
    """The Swin config `cfg` as the code behind `fmt` computes it (its padding, small_window and merge_position),
    refused when that would change the model's function at cfg.image_size: conventions are what code does, not what
    weights hold, so weights moved to other code are right only where the two compute alike."""
    theirs = replace(cfg, **conventions)
    difference = convention_difference(cfg, theirs)
    if difference is not None:
        changed = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in ("padding", "small_window")   # merge_position
                            if k in conventions and getattr(cfg, k) != conventions[k])       # changes no number
        side = swin_image_size(cfg.window_size, cfg.patch_size, cfg.num_stages)
        raise ValueError(f"{changed}: {fmt} cannot express it at image_size {cfg.image_size}, where {difference}; "
                         f"convert at an image size whose stages are whole windows (e.g. {side}×{side}) or keep the "
                         f"format")
    return theirs


# What the weights hold of a config field, as a message says it: "num_hidden_layers says 12, the weights hold 6 blocks"
HELD = {"pool": "{} pooling", "dim": "D={}", "depth": "{} blocks", "mlp_dim": "MLPs of {} units", "patch_size": "{}-pixel patches",
        "in_channels": "{} input channels", "num_classes": "{} classes", "patches": "{} patch rows in E_pos",
        "depths": "stages of {} blocks", "num_heads": "{} heads (the relative-position tables' columns)",
        "window_size": "windows of side {}", "mlp_ratio": "an MLP ratio of {}", "rank": "adapters of rank {}"}
HELD_OR_NOT = {"qkv_bias": ("q, k, v biases", "no q, k, v biases"),
               "distilled": ("a distillation token", "no distillation token"),
               "class_token": ("a class token", "no class token")}


def held(field: str, value) -> str:
    if field in HELD_OR_NOT:
        return HELD_OR_NOT[field][not value]
    return HELD[field].format(value) if field in HELD else f"{field} {value!r}"


def said(value) -> str:
    """A metadata value as the file spells it (a string as it is: a name, or words such as "7 labels")."""
    return value if isinstance(value, str) else json.dumps(list(value) if isinstance(value, tuple) else value)


def patch_rows(image_size, patch_size: int) -> int | None:
    """E_pos's patch rows for an image size ([h, w] or a side) at this patch size; None where it does not tile."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return (h // patch_size) * (w // patch_size) if h % patch_size == 0 and w % patch_size == 0 else None


def agree(where, claims: list[tuple], weights: dict) -> None:
    """Refuse metadata that contradicts itself or the weights. Each claim is (config field, the file's key, the value
    the file says, the value it means for the field); `weights` holds the fields the tensors' shapes fix. Two keys
    that mean the same field must agree, and each must agree with the weights: what metadata states and the
    tensors show is never believed over them, nor ignored. An image size is held as E_pos's patch rows."""
    first = {}
    for field, key, says, value in claims:
        if field in first and first[field][2] != value:
            other, other_says, _ = first[field]
            raise ValueError(f"{where}: {key} says {said(says)}, but {other} says {said(other_says)}")
        first.setdefault(field, (key, says, value))
        if field == "image_size" and "patches" in weights:
            field, value = "patches", patch_rows(value, weights["patch_size"])
        if field in weights and value != weights[field]:
            raise ValueError(f"{where}: {key} says {said(says)}, the weights hold {held(field, weights[field])}")


def whole_heads(where, heads_key: str, heads: int, dim_key: str, dim: int) -> None:
    """A head count that does not divide its width, refused naming the file's keys."""
    if heads < 1 or dim % heads:
        raise ValueError(f"{where}: {heads_key}: expected a divisor of {dim_key} {dim}, got {heads}")


def checked_preprocessing(prep: Preprocessing, channels: int | None,
                          keys: tuple[str, str, str] = ("mean", "std", "crop_pct")) -> Preprocessing:
    """Preprocessing numbers no tensor can check, refused where they cannot be right: a mean or std of another length
    than the model's `channels`, a std or crop_pct that is not positive. `source` names the file, `keys` its keys
    for mean, std and crop_pct."""
    for key, values in zip(keys, (prep.mean, prep.std), strict=False):
        if channels is not None and len(values) != channels:
            raise ValueError(f"{prep.source}: {key}: expected one number per channel ({channels}), got {list(values)}")
    if any(s <= 0 for s in prep.std):
        raise ValueError(f"{prep.source}: {keys[1]}: expected positive numbers, got {list(prep.std)}")
    if prep.crop_pct is not None and prep.crop_pct <= 0:
        raise ValueError(f"{prep.source}: {keys[2]}: expected a positive fraction, got {prep.crop_pct}")
    return prep
