"""torchvision's `VisionTransformer` (`vit_b_16`, `vit_b_32`, `vit_l_16`, `vit_l_32`, `vit_h_14`) state_dicts.

Our name                 torchvision name ("L" = encoder.layers.encoder_layer_i.)  transform
patch.weight (D, C·P·P)  conv_proj.weight (D, 3, P, P)                             reshape to the conv kernel
patch.bias               conv_proj.bias                                            -
cls                      class_token                                               -
pos                      encoder.pos_embedding (1, N+1, D)                         - (kept in the encoder, added after
                                                                                     the class token: [x_class; x] + E_pos)
blocks.i.ln1 / ln2       L ln_1 / ln_2                                             -
blocks.i.qkv             L self_attention.in_proj_weight / in_proj_bias            - (nn.MultiheadAttention's rows
                                                                                     [q; k; v], head-major: ours)
blocks.i.proj            L self_attention.out_proj                                 -
blocks.i.fc1 / fc2       L mlp.0 / mlp.3 (mlp.linear_1 / linear_2 before 0.13)     -
norm                     encoder.ln                                                -
pre_logits               heads.pre_logits (representation_size; heads.act = Tanh)  -
head                     heads.head                                                -

What the format fixes (torchvision/models/vision_transformer.py, ../shared/FAMILY.md §5): square images, 3 channels
(conv_proj is built with in_channels=3), a class token and its pooling, learned E_pos, q, k, v biases (the
MultiheadAttention default), LayerNorm eps 1e-6, exact GELU (nn.GELU) and always a classifier. So reading sets eps
1e-6 and exact GELU, and writing refuses any other config. The head count is not stored: it comes from the known
architectures (vit_b_16 … vit_h_14 are the paper's B/16, B/32, L/16, L/32, H/14) or from --num-heads.
"""
import torch

from lowlevel import ViTConfig, param_shapes
from lowlevel.checks import check_config
from paper.formats.fields import Preprocessing, num_heads_for, require, square_image_size
from paper.formats.files import read_state_dict, save_tensors
from paper.formats.renaming import renamed, unrenamed

FORMAT = "torchvision's VisionTransformer"
LAYER = "encoder.layers.encoder_layer_{}."
BLOCK_NAMES = {"ln1": "ln_1", "qkv": "self_attention.in_proj", "proj": "self_attention.out_proj", "ln2": "ln_2",
               "fc1": "mlp.0", "fc2": "mlp.3"}
GLOBAL_NAMES = {"patch": "conv_proj", "norm": "encoder.ln", "pre_logits": "heads.pre_logits", "head": "heads.head",
                "cls": "class_token", "pos": "encoder.pos_embedding"}
OLD_MLP_NAMES = {".mlp.linear_1.": ".mlp.0.", ".mlp.linear_2.": ".mlp.3."}     # MLPBlock._load_from_state_dict
# torchvision's weights' transforms (ImageClassification): resize to 256, centre crop 224, ImageNet mean and std
PREPROCESSING = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224 / 256,
                              "torchvision's ImageClassification preset for its ViT weights")


def torchvision_key(name: str) -> str:
    """Our parameter name -> torchvision's state-dict key."""
    if name.startswith("blocks."):
        _, i, part, leaf = name.split(".")
        if part == "qkv":                                   # in_proj_weight, in_proj_bias
            return f"{LAYER.format(i)}{BLOCK_NAMES[part]}_{leaf}"
        return f"{LAYER.format(i)}{BLOCK_NAMES[part]}.{leaf}"
    part, _, leaf = name.partition(".")
    return f"{GLOBAL_NAMES[part]}.{leaf}" if leaf else GLOBAL_NAMES[part]


def is_torchvision_state_dict(sd: dict) -> bool:
    return "conv_proj.weight" in sd and "encoder.pos_embedding" in sd


def check_expressible(cfg: ViTConfig) -> None:
    """Refuse what torchvision's VisionTransformer cannot compute."""
    check_config(cfg, ViTConfig)
    require(FORMAT, cfg, in_channels=3, class_token=True, pool="token", pos_embed="learned", qkv_bias=True,
            layer_norm_eps=1e-6, gelu="exact", backbone=None, patch_embed="linear", attention="standard")
    if cfg.image_size[0] != cfg.image_size[1]:
        raise ValueError(f"image_size: {FORMAT} cannot express image_size={cfg.image_size}; it holds square images")
    if not cfg.num_classes:
        raise ValueError(f"num_classes: {FORMAT} cannot express num_classes=0; it always holds a classifier (heads.head)")


def config_from_torchvision_state_dict(sd: dict, known: dict) -> dict:
    """What the shapes say, with `known` fields (the caller's) taking precedence over them and over the format's
    fixed numerics; `fields.py` supplies what neither tells."""
    d, c, p, _ = sd["conv_proj.weight"].shape
    prefix = LAYER.format("").removesuffix(".")
    fields = {"patch_size": p, "in_channels": c, "dim": d, "layer_norm_eps": 1e-6, "gelu": "exact",
              "depth": len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)}),
              "mlp_dim": sd[LAYER.format(0) + "mlp.0.weight"].shape[0], "num_classes": sd["heads.head.weight"].shape[0],
              "representation_size": sd["heads.pre_logits.weight"].shape[0] if "heads.pre_logits.weight" in sd else None,
              **known}
    if "num_heads" not in fields:
        fields["num_heads"] = num_heads_for(fields["dim"], fields["depth"], fields["mlp_dim"], fields["patch_size"])
    if "image_size" not in fields:
        fields["image_size"] = square_image_size(sd["encoder.pos_embedding"].shape[1], 1, fields["patch_size"])
    return fields


def from_torchvision(state_dict: dict, **overrides) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """A torchvision VisionTransformer state_dict -> (cfg, params). Keyword overrides set what the weights cannot
    tell (num_heads). Every key is checked (missing, unexpected, mis-shaped) before anything is converted."""
    sd = dict(state_dict)
    for old, new in OLD_MLP_NAMES.items():
        sd = {k.replace(old, new): v for k, v in sd.items()}
    missing = [k for k in ("conv_proj.weight", "encoder.pos_embedding", LAYER.format(0) + "mlp.0.weight",
                           "heads.head.weight") if k not in sd]
    if missing:
        raise ValueError(f"state_dict: expected a torchvision VisionTransformer state_dict, missing key(s) {missing}")
    cfg = ViTConfig(**config_from_torchvision_state_dict(sd, overrides))
    return cfg, unrenamed(sd, param_shapes(cfg), cfg, torchvision_key, "torchvision state_dict")


def to_torchvision(params: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """(params, cfg) -> a state_dict that torchvision's VisionTransformer(image_size, patch_size, num_layers,
    num_heads, hidden_dim, mlp_dim, num_classes=, representation_size=) loads strictly."""
    check_expressible(cfg)
    return renamed(params, param_shapes(cfg), cfg, torchvision_key)


def read_torchvision(path, **overrides) -> tuple[ViTConfig, dict]:
    """A torchvision state_dict file (torch.save or .safetensors) -> (cfg, params)."""
    return read_state_dict(path, from_torchvision, **overrides)


def write_torchvision(params: dict, cfg: ViTConfig, path) -> None:
    """(params, cfg) -> a torchvision state_dict at `path`, checked before anything is written."""
    save_tensors(to_torchvision(params, cfg), path)
