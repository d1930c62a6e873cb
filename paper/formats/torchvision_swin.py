"""torchvision's `SwinTransformer` state dict (`swin_t`, `swin_s`, `swin_b`), as `.pth` or `.safetensors`.

Our name                                   torchvision name                              transform
patch.weight (C, in·P·P)                   features.0.0.weight                           reshape to the conv kernel
patch.bias                                 features.0.0.bias                             -
patch_norm                                 features.0.2                                  - (features.0.1 is a Permute)
stages.s.blocks.j.ln1 / ln2                features.{2s+1}.j.norm1 / norm2               -
stages.s.blocks.j.qkv                      features.{2s+1}.j.attn.qkv                    - (rows [q; k; v], head-major)
stages.s.blocks.j.proj                     features.{2s+1}.j.attn.proj                   -
stages.s.blocks.j.relative_position_bias_table                                           - ((2M−1)², heads)
                                           features.{2s+1}.j.attn.relative_position_bias_table
(computed)                                 features.{2s+1}.j.attn.relative_position_index   written; checked on read
stages.s.blocks.j.fc1 / fc2                features.{2s+1}.j.mlp.0 / mlp.3               - (mlp.1 GELU, mlp.2 and
                                                                                           mlp.4 dropout)
stages.s.merge (the k-th merging)          features.{2k+2}                               - (merging ends stages 0..2)
norm                                       norm                                          -
head                                       head                                          -

Stages and mergings alternate in one `features` Sequential, hence the 2s+1 and 2k+2. torchvision registers
`relative_position_index` as a persistent buffer, flattened to (M⁴,): every torchvision checkpoint holds it. It is
not a parameter (relative_position.py computes it from M), so a reader checks it equals the computed one and refuses a
file where it does not, and a writer writes it so that `load_state_dict` finds every key. torchvision computes with its
conventions (padding "before_shift", small_window "pad"), set on reading and required of a config on writing.
"""
import torch

from lowlevel import SwinConfig
from lowlevel.checks import check_config
from lowlevel.relative_position import relative_position_index
from lowlevel.swin import param_shapes
from lowlevel.swin_params import merge_index
from paper.formats.fields import Preprocessing, require, require_conventions, swin_fields
from paper.formats.files import read_state_dict, save_tensors
from paper.formats.renaming import renamed, unrenamed

BLOCK_NAMES = {"ln1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "ln2": "norm2", "fc1": "mlp.0", "fc2": "mlp.3",
               "relative_position_bias_table": "attn.relative_position_bias_table"}
TABLE = "features.{}.0.attn.relative_position_bias_table"
INDEX = "relative_position_index"
# swin_t's weights' transforms (ImageClassification): resize to 232, centre crop 224, ImageNet mean and std, bicubic;
# swin_s resizes to 246, swin_b to 238
PREPROCESSING = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224 / 232,
                              "torchvision's ImageClassification preset for its swin_t weights")


def torchvision_swin_key(name: str, cfg: SwinConfig | None) -> str:
    """Our parameter name -> torchvision's state-dict key (the config tells where the mergings are; no other name
    needs it)."""
    parts = name.split(".")
    if parts[0] == "stages" and parts[2] == "blocks":
        s, j, part = int(parts[1]), parts[3], ".".join(parts[4:])
        piece, _, leaf = part.partition(".")
        return f"features.{2 * s + 1}.{j}.{BLOCK_NAMES[piece]}" + (f".{leaf}" if leaf else "")
    if parts[0] == "stages":                                   # stages.s.merge.{norm,reduction}.leaf
        return f"features.{2 * merge_index(cfg, int(parts[1])) + 2}.{'.'.join(parts[3:])}"
    head, _, leaf = name.partition(".")
    return {"patch": f"features.0.0.{leaf}", "patch_norm": f"features.0.2.{leaf}"}.get(head, name)


def index_keys(cfg: SwinConfig) -> dict[str, torch.Tensor]:
    """Every block's `relative_position_index` buffer, as torchvision computes it: (M⁴,) long, one tensor each (a
    file format such as safetensors refuses tensors that share memory)."""
    index = relative_position_index((cfg.window_size, cfg.window_size)).flatten()
    return {f"features.{2 * s + 1}.{j}.attn.{INDEX}": index.clone()
            for s in range(cfg.num_stages) for j in range(cfg.depths[s])}


def is_torchvision_swin_state_dict(sd: dict) -> bool:
    return "features.0.0.weight" in sd and TABLE.format(1) in sd


def from_torchvision_swin(state_dict: dict, **overrides) -> tuple[SwinConfig, dict[str, torch.Tensor]]:
    """A torchvision SwinTransformer state dict -> (cfg, params). Every key is checked (missing, unexpected,
    mis-shaped), and every relative_position_index against the computed one, before anything is converted."""
    sd = dict(state_dict)
    missing = [k for k in ("features.0.0.weight", TABLE.format(1), "features.1.0.mlp.0.weight") if k not in sd]
    if missing:
        raise ValueError(f"state_dict: expected a torchvision SwinTransformer state_dict, missing key(s) {missing}")
    cfg = SwinConfig(**swin_fields(sd, lambda k: torchvision_swin_key(k, None),
                                   {**TORCHVISION_CONVENTIONS, **overrides}))
    indices = index_keys(cfg)
    params = unrenamed(sd, param_shapes(cfg), cfg, lambda k: torchvision_swin_key(k, cfg), "torchvision Swin state_dict",
                       buffers={k: tuple(v.shape) for k, v in indices.items()})
    wrong = [k for k, v in indices.items() if not torch.equal(sd[k].long(), v)]
    if wrong:
        raise ValueError(f"{wrong[0]}: expected the relative position index of a {cfg.window_size}×{cfg.window_size} "
                         f"window (query minus key offsets, Swin §3.2), got different values in {len(wrong)} block(s)")
    return cfg, params


def to_torchvision_swin(params: dict[str, torch.Tensor], cfg: SwinConfig) -> dict[str, torch.Tensor]:
    """(params, cfg) -> a torchvision SwinTransformer state dict, index buffers included
    (`paper.references.swin.torchvision_swin(cfg)` builds the model)."""
    require_torchvision(cfg)
    sd = renamed(params, param_shapes(cfg), cfg, lambda k: torchvision_swin_key(k, cfg))
    device = params["patch.weight"].device
    sd.update({k: v.to(device) for k, v in index_keys(cfg).items()})
    return sd


def read_torchvision_swin(path, **overrides) -> tuple[SwinConfig, dict]:
    """A torchvision Swin state-dict file -> (cfg, params)."""
    return read_state_dict(path, from_torchvision_swin, **overrides)


def write_torchvision_swin(params: dict, cfg: SwinConfig, path) -> None:
    """(params, cfg) -> a torchvision Swin state dict at `path` (.safetensors by suffix, torch.save otherwise),
    checked before anything is written."""
    save_tensors(to_torchvision_swin(params, cfg), path)


TORCHVISION = "torchvision's SwinTransformer"


TORCHVISION_CONVENTIONS = dict(padding="before_shift", small_window="pad", merge_position="end")


def require_torchvision(cfg: SwinConfig) -> None:
    """Refuse a config torchvision's code does not compute: its patch projection takes 3 channels, its q/k/v always
    have biases, its GELU is nn.GELU, it always has a classifier and two blocks or more, its conventions are its
    own."""
    check_config(cfg, SwinConfig)
    require(TORCHVISION, cfg, in_channels=3, qkv_bias=True, gelu="exact")
    if cfg.num_classes < 1:
        raise ValueError(f"num_classes: {TORCHVISION} cannot express num_classes={cfg.num_classes}; it always has a "
                         f"classifier (num_classes ≥ 1)")
    if cfg.depth < 2:
        raise ValueError(f"depths: {TORCHVISION} cannot build depths={cfg.depths}; it divides by the block count − 1 "
                         f"for its stochastic depth rates, so it needs two blocks or more")
    require_conventions(TORCHVISION, cfg, **TORCHVISION_CONVENTIONS)
