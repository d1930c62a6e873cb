"""timm's `VisionTransformer`, the de facto PyTorch state-dict layout, as `.pth` (torch.save) or `.safetensors`; its
`VisionTransformerDistilled` (deit.py), the distilled DeiT, in the same layout with three more tensors; and its hybrids
(vision_transformer_hybrid.py: the same class with a `HybridEmbed`, whose ResNet-v2 is `patch_embed.backbone`).

Our name                 timm name                        transform
patch.weight (D, C·P·P)  patch_embed.proj.weight          reshape to the conv kernel (D, C, P, P): same numbers
                                                          (a hybrid's C: its feature map's)
patch.bias               patch_embed.proj.bias            -
cls                      cls_token                        -
dist                     dist_token (DeiT)                -
pos                      pos_embed                        - (DeiT: rows cls, dist, patches, as ours)
blocks.i.ln1 / ln2       blocks.i.norm1 / norm2           -
blocks.i.qkv             blocks.i.attn.qkv                - (rows [q; k; v], head-major: the same layout)
blocks.i.proj            blocks.i.attn.proj               -
blocks.i.fc1 / fc2       blocks.i.mlp.fc1 / fc2           -
norm                     norm (pool "token")              - ; with pool "avg" timm applies this LN after the
                         fc_norm (pool "avg")               mean and calls it fc_norm
head                     head                             -
head_dist                head_dist (DeiT)                 -

A hybrid's ResNet (lowlevel/resnet.py), under patch_embed.backbone. (its stem alone: the stem's names without stem.):
backbone.stem.conv                      stem.conv                         - (StdConv2dSame)
backbone.stem.gn                        stem.norm                         - (GroupNormAct, with its ReLU)
backbone.stages.s.units.u.conv1..3      stages.s.blocks.u.conv1..3        -
backbone.stages.s.units.u.gn1..3        stages.s.blocks.u.norm1..3        -
backbone.stages.s.units.0.conv_proj     stages.s.blocks.0.downsample.conv -
backbone.stages.s.units.0.gn_proj       stages.s.blocks.0.downsample.norm -
The weights do not hold the GroupNorm groups, the two eps or the padding: read from a model, they are its own
(a model whose convolutions do not pad "SAME" is refused); from a bare state_dict, timm's hybrids' (32, 1e-5, 1e-8).

timm has no pre-logits layer and no fixed sin-cos position embedding, so configs with either cannot be written.
A DeiT without the distillation token is timm's plain VisionTransformer (deit.py builds deit_tiny_patch16_224 so).

Hub directories (what timm's `save_for_hf` writes and `create_model("local-dir:DIR")` or "hf-hub:…" reads):
model.safetensors (or pytorch_model.bin) with the state_dict above, and config.json naming the `architecture` (a timm
model name), the `model_args` it was built with (each overriding the architecture's default) and the
`pretrained_cfg` (input_size, mean, std, crop_pct: the preprocessing). The architecture and model_args give the head
count and the image size that the weights cannot; this file writes every model_arg, so timm rebuilds exactly our
config whatever the architecture named. A hybrid's ResNet is the one exception: no model_arg changes it (the
registered function builds it, `_resnetv2(layers)`, width 64, timm's numerics), so the architecture written is the
timm hybrid with cfg's ResNet (vit_tiny_r_s16_p8_224 for the stem alone, vit_small_r26_s32_224, vit_base_r50_s16_224,
vit_large_r50_s32_224), and any other ResNet is refused; read, a hybrid architecture fixes the ResNet the weights
are checked against.
"""
import json
from pathlib import Path

import torch
import torch.nn as nn

from lowlevel import BackboneConfig, ViTConfig, param_shapes
from lowlevel.checks import check_config
from paper.formats.architectures import TIMM
from paper.formats.fields import Preprocessing, agree, num_heads_for, require, square_image_size, whole_heads
from paper.formats.files import json_value, load_tensors, naming, read_json, save_directory, save_tensors
from paper.formats.renaming import renamed, unrenamed
from paper.models.hybrid_configs import HYBRID_MODELS, hybrid_config, is_hybrid_name, timm_hybrid_name

FORMAT = "timm's VisionTransformer"
# timm's preprocessing for its ViTs (vision_transformer.py _cfg: IMAGENET_INCEPTION_MEAN/STD, crop_pct 0.9), and what
# timm.data.resolve_data_config takes when a hub config.json leaves a field out (timm/data/constants.py)
PREPROCESSING = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.9, "timm's default for its ViTs (_cfg)")
DATA_DEFAULTS = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 0.875}
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")          # timm/models/_hub.py _PREFERRED_FILES, in order
# model_args (VisionTransformer arguments) that are config fields as they are, with their JSON type
MODEL_ARGS = {"img_size": ("image_size", "an integer or [height, width]"), "patch_size": ("patch_size", "an integer"),
              "in_chans": ("in_channels", "an integer"), "embed_dim": ("dim", "an integer"),
              "depth": ("depth", "an integer"), "num_heads": ("num_heads", "an integer"),
              "num_classes": ("num_classes", "an integer"), "class_token": ("class_token", "true or false"),
              "qkv_bias": ("qkv_bias", "true or false")}
# model_args whose string values map onto a config field's
MODEL_ARG_CHOICES = {"global_pool": ("pool", {"token": "token", "avg": "avg"}),
                     "pos_embed": ("pos_embed", {"learn": "learned", "none": "none"}),
                     "act_layer": ("gelu", {"gelu": "exact", "gelu_tanh": "tanh"})}
ANY_VIT = "vit_base_patch16_224"      # the architecture written when no known one has the config: model_args set all
BLOCK_NAMES = {"ln1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "ln2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
BACKBONE_NAMES = {"units": "blocks", "gn": "norm", "gn1": "norm1", "gn2": "norm2", "gn3": "norm3",
                  "conv_proj": "downsample.conv", "gn_proj": "downsample.norm"}
BACKBONE = "patch_embed.backbone."
STEM_KEYS = (BACKBONE + "stem.conv.weight", BACKBONE + "conv.weight")     # with stages, and the stem alone


def timm_backbone_key(name: str, backbone: BackboneConfig) -> str:
    """A hybrid's ResNet parameter, named without `backbone.` -> timm's key. With no stages timm's backbone is the
    stem itself (vision_transformer_hybrid.py `_resnetv2`), so its names lose `stem.`."""
    parts = [BACKBONE_NAMES.get(part, part) for part in name.split(".")]
    return BACKBONE + ".".join(parts if backbone.layers else parts[1:])


def timm_key(name: str, cfg: ViTConfig) -> str:
    """Our parameter name -> timm's state-dict key."""
    if name.startswith("backbone."):
        return timm_backbone_key(name.removeprefix("backbone."), cfg.backbone)
    if name.startswith("blocks."):
        _, i, part, leaf = name.split(".")
        return f"blocks.{i}.{BLOCK_NAMES[part]}.{leaf}"
    part, _, leaf = name.partition(".")
    if part == "norm" and cfg.pool == "avg":
        return f"fc_norm.{leaf}"
    return {"patch": f"patch_embed.proj.{leaf}", "cls": "cls_token", "dist": "dist_token", "pos": "pos_embed"}.get(
        part, name)


def is_timm_state_dict(sd: dict) -> bool:
    return "patch_embed.proj.weight" in sd


def config_from_timm_model(model) -> dict:
    """What a timm model says about itself that its weights do not: image size, heads, eps, GELU, pooling; a hybrid's
    ResNet numerics (`backbone_numerics`)."""
    block = model.blocks[0]
    norm = model.norm if model.global_pool == "token" else model.fc_norm
    if not isinstance(norm, nn.LayerNorm):       # e.g. the official GAP models: LN before the mean, Identity after it
        raise ValueError(f"norm: expected the LayerNorm of eq. (4) after the pooling, got {type(norm).__name__}")
    fields = {"image_size": tuple(model.patch_embed.img_size), "num_heads": block.attn.num_heads,
              "layer_norm_eps": norm.eps, "gelu": gelu_of(block.mlp.act),
              "pool": "avg" if model.global_pool == "avg" else "token"}
    if hasattr(model.patch_embed, "backbone"):
        fields["backbone"] = backbone_numerics(model.patch_embed.backbone)
    return fields


def backbone_numerics(backbone) -> dict:
    """A timm hybrid's ResNet's GroupNorm groups and eps and its standardisation eps. Only BiT's ResNet-v2 with "SAME"
    padding (StdConv2dSame, `_resnetv2`'s default) computes what lowlevel/resnet.py does; anything else is refused."""
    from timm.layers import GroupNormAct, StdConv2dSame

    stem = getattr(backbone, "stem", backbone)
    conv, norm = getattr(stem, "conv", None), getattr(stem, "norm", None)
    if not (isinstance(conv, StdConv2dSame) and isinstance(norm, GroupNormAct)):
        raise ValueError(f"backbone: expected BiT's ResNet-v2 with SAME padding (timm's StdConv2dSame and GroupNormAct, "
                         f"vision_transformer_hybrid.py _resnetv2), got a {type(backbone).__name__} whose stem holds "
                         f"{type(conv).__name__} and {type(norm).__name__}")
    return {"num_groups": norm.num_groups, "group_norm_eps": norm.eps, "std_eps": conv.eps}


def stem_kernel(sd: dict) -> torch.Tensor | None:
    """A timm hybrid's first convolution kernel (width, C, 7, 7); None in a plain ViT's state_dict."""
    return next((sd[k] for k in STEM_KEYS if k in sd), None)


def backbone_from_timm_state_dict(sd: dict, known: dict) -> BackboneConfig | None:
    """A hybrid's ResNet from timm's keys (its stem's width, its units per stage), None for a plain ViT. A known
    backbone, None or a BackboneConfig (a model name's), is taken as it is and checked against the keys with the rest;
    a dict holds the numerics the weights do not (`backbone_numerics`)."""
    if not isinstance(known.get("backbone", {}), dict):
        return known["backbone"]
    stem = stem_kernel(sd)
    if stem is None:
        return None
    stages = {k.split(".")[3] for k in sd if k.startswith(BACKBONE + "stages.")}
    layers = tuple(len({k.split(".")[5] for k in sd if k.startswith(f"{BACKBONE}stages.{s}.blocks.")})
                   for s in range(len(stages)))
    return BackboneConfig(layers=layers, width=stem.shape[0], **known.get("backbone", {}))


def gelu_of(act) -> str:
    """"exact" or "tanh" for the GELU modules timm builds (torch's, or its own from act_layer="gelu"/"gelu_tanh");
    any other activation (QuickGELU, say) is refused rather than read as a GELU."""
    from timm.layers.activations import GELU, GELUTanh

    if isinstance(act, nn.GELU):
        return "tanh" if act.approximate == "tanh" else "exact"
    if isinstance(act, GELU | GELUTanh):
        return "tanh" if isinstance(act, GELUTanh) else "exact"
    raise ValueError(f"act_layer: expected a GELU (exact or tanh), got {type(act).__name__}")


def timm_weight_fields(sd: dict) -> dict:
    """The config fields a timm state_dict's shapes fix (a hybrid's backbone aside)."""
    d, c, p, _ = sd["patch_embed.proj.weight"].shape
    if stem_kernel(sd) is not None:           # the projection's C is the feature map's; the image's is the stem's
        c = stem_kernel(sd).shape[1]
    return {"patch_size": p, "in_channels": c, "dim": d, "class_token": "cls_token" in sd,
            "distilled": "dist_token" in sd, "depth": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
            "mlp_dim": sd["blocks.0.mlp.fc1.weight"].shape[0], "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
            "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
            "pool": "avg" if "fc_norm.weight" in sd else "token"}


def config_from_timm_state_dict(sd: dict, known: dict) -> dict:
    """The config fields a timm state_dict's shapes determine, with `known` fields (the caller's, or the model's)
    taking precedence; `fields.py` supplies what neither tells."""
    backbone = backbone_from_timm_state_dict(sd, known)
    fields = {**timm_weight_fields(sd), **known, "backbone": backbone}
    class_token, distilled, p = fields["class_token"], fields["distilled"], fields["patch_size"]
    if "num_heads" not in fields:
        fields["num_heads"] = num_heads_for(fields["dim"], fields["depth"], fields["mlp_dim"], fields["patch_size"])
    if "pos_embed" not in sd:
        fields.setdefault("pos_embed", "none")
    elif "image_size" not in fields:                 # a hybrid's grid is of its feature map, `stride` times smaller
        stride = backbone.stride if backbone else 1
        fields["image_size"] = square_image_size(sd["pos_embed"].shape[1], class_token + distilled, p) * stride
    return fields


def from_timm(model_or_state_dict, **overrides) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """A timm VisionTransformer or VisionTransformerDistilled (or its state_dict) -> (cfg, params). Keyword overrides
    set config fields the weights cannot tell (num_heads, image_size, layer_norm_eps, gelu) when a bare state_dict is
    given."""
    if hasattr(model_or_state_dict, "blocks"):  # a timm model, not a bare state_dict
        sd = model_or_state_dict.state_dict()
        known = {**config_from_timm_model(model_or_state_dict), **overrides}
    else:
        sd = dict(model_or_state_dict)
        missing = [k for k in ("patch_embed.proj.weight", "blocks.0.mlp.fc1.weight") if k not in sd]
        if missing:
            raise ValueError(f"state_dict: expected a timm VisionTransformer state_dict, missing key(s) {missing}")
        known = overrides
    cfg = ViTConfig(**config_from_timm_state_dict(sd, known))
    return cfg, unrenamed(sd, param_shapes(cfg), cfg, lambda name: timm_key(name, cfg), "timm state_dict")


def to_timm(params: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """(params, cfg) -> a timm VisionTransformer (VisionTransformerDistilled) state_dict
    (`paper.references.vit.timm_vit(cfg)` builds the model)."""
    check_config(cfg, ViTConfig)
    require(FORMAT, cfg, representation_size=None, pos_embed=("learned", "none"), patch_embed="linear",
            attention="standard")
    if cfg.distilled:                               # VisionTransformerDistilled always learns E_pos (deit.py)
        require("timm's VisionTransformerDistilled", cfg, pos_embed="learned")
    return renamed(params, param_shapes(cfg), cfg, lambda name: timm_key(name, cfg))


def read_timm(path, **overrides) -> tuple[ViTConfig, dict]:
    """A timm state_dict file -> (cfg, params); overrides set what the weights cannot tell and are checked against
    the shapes."""
    sd = load_tensors(path)
    if not is_timm_state_dict(sd):
        raise ValueError(f"{path}: expected a timm VisionTransformer state_dict with 'patch_embed.proj.weight', "
                         f"got keys {sorted(sd)[:4]}...")
    with naming(path):
        return from_timm(sd, **overrides)


def write_timm(params: dict, cfg: ViTConfig, path) -> None:
    """(params, cfg) -> a timm state_dict at `path` (.safetensors by suffix, torch.save otherwise). Everything is
    checked before the file is written."""
    save_tensors(to_timm(params, cfg), path)


def mlp_ratio(dim: int, mlp_dim: int) -> float:
    """The mlp_ratio for which timm builds an MLP of mlp_dim units: timm takes int(dim * mlp_ratio), and
    int(11 * (15 / 11)) is 14, so when mlp_dim / dim does not come back exactly the ratio aims at mid-unit."""
    ratio = mlp_dim / dim
    return ratio if int(dim * ratio) == mlp_dim else (mlp_dim + 0.5) / dim


def config_from_hub_config(config: dict, where) -> dict:
    """The config fields a timm hub config.json fixes: the named architecture's shapes and head count
    (architectures.TIMM), each overridden by model_args, and the image size of pretrained_cfg's input_size. A value
    of the wrong type, or a model_arg that would build another kind of model, is a ValueError naming `where`."""
    arch = json_value(config, "architecture", "a string", where)
    args = json_value(config, "model_args", "an object", where, {})
    pretrained = json_value(config, "pretrained_cfg", "an object", where, {})
    known = dict(zip(("dim", "depth", "mlp_dim", "patch_size", "num_heads"), TIMM[arch], strict=True)) \
        if arch in TIMM else {}
    if is_hybrid_name(arch):                                    # the ResNet its registered function builds
        known["backbone"] = hybrid_config(arch).backbone
    if "num_classes" in config:
        known["num_classes"] = json_value(config, "num_classes", "an integer", where)
    size = json_value(pretrained, "input_size", "a list of numbers", f"{where} pretrained_cfg", None)
    if size is not None:
        if len(size) != 3 or not all(isinstance(x, int) for x in size):
            raise ValueError(f"{where} pretrained_cfg: input_size: expected [channels, height, width], got {size!r}")
        known.update(in_channels=size[0], image_size=tuple(size[1:]))
    where_args = f"{where} model_args"
    for key in args:
        if key in MODEL_ARGS:
            field, kind = MODEL_ARGS[key]
            known[field] = json_value(args, key, kind, where_args)
        elif key in MODEL_ARG_CHOICES:
            field, choices = MODEL_ARG_CHOICES[key]
            value = json_value(args, key, "a string", where_args)
            if value not in choices:
                raise ValueError(f"{where_args}: {key}: expected one of {sorted(choices)}, got {value!r}")
            known[field] = choices[value]
        elif key != "mlp_ratio" and not key.endswith("drop_rate"):     # dropout rates do not change the function
            raise ValueError(f"{where_args}: {key}: expected only arguments this reader maps ({sorted(MODEL_ARGS)}, "
                             f"{sorted(MODEL_ARG_CHOICES)}, mlp_ratio, drop rates), got {key}={args[key]!r}")
    if "mlp_ratio" in args and "dim" in known:
        known["mlp_dim"] = int(known["dim"] * json_value(args, "mlp_ratio", "a finite number", where_args))
    if isinstance(known.get("image_size"), list):
        known["image_size"] = tuple(known["image_size"])
    return known


def hub_claims(config: dict, where) -> list[tuple]:
    """Everything a hub config.json says that the weights fix, as claims for fields.agree: model_args (what timm
    builds), the named architecture's shapes where model_args leave them, and the statements beside them (num_classes,
    num_features and global_pool at the top and pretrained_cfg's num_classes and input_size), which must agree."""
    known = config_from_hub_config(config, where)
    arch, args = config["architecture"], config.get("model_args", {})
    pretrained = config.get("pretrained_cfg", {})
    claims = [(field, f"model_args {key}", args[key], known[field]) for key, (field, _) in MODEL_ARGS.items()
              if key in args]
    claims += [(field, f"model_args {key}", args[key], known[field]) for key, (field, _) in MODEL_ARG_CHOICES.items()
               if key in args]
    if "mlp_ratio" in args and "dim" in known:
        claims.append(("mlp_dim", "model_args mlp_ratio", args["mlp_ratio"], known["mlp_dim"]))
    if arch in TIMM:
        set_by_args = {claim[0] for claim in claims}
        claims += [(field, "architecture", arch, value) for field, value in
                   zip(("dim", "depth", "mlp_dim", "patch_size"), TIMM[arch], strict=False) if field not in set_by_args]
    tops = {"num_classes": ("num_classes", "an integer", int), "num_features": ("dim", "an integer", int),
            "global_pool": ("pool", "a string", lambda v: "avg" if v == "avg" else "token")}
    claims += [(field, key, config[key], meaning(json_value(config, key, kind, where)))
               for key, (field, kind, meaning) in tops.items() if key in config]
    if "num_classes" in pretrained:
        n = json_value(pretrained, "num_classes", "an integer", f"{where} pretrained_cfg")
        claims.append(("num_classes", "pretrained_cfg num_classes", n, n))
    if "input_size" in pretrained:
        size = pretrained["input_size"]                  # checked by config_from_hub_config
        claims += [("in_channels", "pretrained_cfg input_size", size, size[0]),
                   ("image_size", "pretrained_cfg input_size", size, tuple(size[1:]))]
    if "num_heads" in known and "dim" in known:
        whole_heads(where, "model_args num_heads" if "num_heads" in args else "architecture", known["num_heads"],
                    "model_args embed_dim" if "embed_dim" in args else "architecture", known["dim"])
    return [(f, k, s, tuple(v) if isinstance(v, list) else v) for f, k, s, v in claims]


def check_hub_config(config: dict, sd: dict, where) -> None:
    """Refuse a hub config.json that its weights contradict (fields.agree), naming the file and the key. Weights
    whose keys do not tell (missing ones) are left to from_timm, which names them."""
    try:
        weights = {**timm_weight_fields(sd), "pos_embed": "learned" if "pos_embed" in sd else "none"}
        if "pos_embed" in sd and stem_kernel(sd) is None:
            weights["patches"] = sd["pos_embed"].shape[1] - weights["class_token"] - weights["distilled"]
    except (KeyError, IndexError, ValueError):
        return
    agree(where, hub_claims(config, where), weights)


def hub_preprocessing(config: dict, where) -> Preprocessing:
    """pretrained_cfg's mean, std and crop_pct; a field it leaves out takes timm.data's default, as timm would."""
    pretrained = json_value(config, "pretrained_cfg", "an object", where, {})
    found = {k: json_value(pretrained, k, "a list of numbers" if k != "crop_pct" else "a finite number",
                           f"{where} pretrained_cfg", None) for k in DATA_DEFAULTS}
    missing = [k for k, v in found.items() if v is None]
    source = f"{where} pretrained_cfg" + (f" (timm's defaults for {', '.join(missing)})" if missing else "")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in found.items() if v is not None}
    return Preprocessing(**{**DATA_DEFAULTS, **values, "source": source})


def hub_weights(directory: Path) -> Path:
    weights = [directory / n for n in HUB_WEIGHTS if (directory / n).exists()]
    if not (directory / "config.json").exists() or not weights:
        raise ValueError(f"{directory}: expected a timm hub directory with config.json and {' or '.join(HUB_WEIGHTS)}")
    return weights[0]


def read_timm_hub(directory, **overrides) -> tuple[ViTConfig, dict]:
    """A timm hub directory -> (cfg, params); config.json is checked before the weights are read."""
    directory = Path(directory)
    weights = hub_weights(directory)
    config = read_json(directory / "config.json")
    known = {**config_from_hub_config(config, directory / "config.json"), **overrides}
    sd = load_tensors(weights)
    check_hub_config(config, sd, directory / "config.json")
    with naming(weights):
        return from_timm(sd, **known)


def read_hub_preprocessing(directory) -> Preprocessing:
    directory = Path(directory)
    return hub_preprocessing(read_json(directory / "config.json"), directory / "config.json")


def hub_architecture(cfg: ViTConfig) -> str:
    """The timm model config.json names: a known one with cfg's shapes, else ANY_VIT (model_args set them all); for a
    hybrid, the registered hybrid building cfg's ResNet (with cfg's shapes if one has them), which nothing else can
    change."""
    shapes = (cfg.dim, cfg.depth, cfg.mlp_dim, cfg.patch_size, cfg.num_heads)
    if cfg.backbone is None:
        return next((name for name, row in TIMM.items() if row == shapes), ANY_VIT)
    builds = [timm_hybrid_name(name) for name in HYBRID_MODELS if hybrid_config(name).backbone == cfg.backbone]
    if not builds:
        resnets = ", ".join(f"{timm_hybrid_name(n)} {hybrid_config(n).backbone.layers}" for n in HYBRID_MODELS)
        raise ValueError(f"backbone: {FORMAT} hub directory cannot express backbone={cfg.backbone!r}; its "
                         f"architectures build the ResNets of width 64 with timm's numerics: {resnets}")
    return next((name for name in builds if TIMM[name] == shapes), builds[0])


def first_conv(cfg: ViTConfig) -> str:
    """The module taking the image (pretrained_cfg's first_conv, which timm adapts to other channel counts): a
    hybrid's stem convolution, else the patch projection."""
    return timm_key("backbone.stem.conv.weight", cfg).removesuffix(".weight") if cfg.backbone else "patch_embed.proj"


def hub_config(cfg: ViTConfig, preprocessing: Preprocessing | None) -> dict:
    """config.json of a hub directory for `cfg`: every model_arg spelled out, so that timm builds exactly this
    model; the preprocessing, when known, in pretrained_cfg."""
    check_config(cfg, ViTConfig)
    require(FORMAT + " hub directory", cfg, representation_size=None, pos_embed=("learned", "none"), layer_norm_eps=1e-6,
            patch_embed="linear", attention="standard")
    arch = hub_architecture(cfg)
    pool = "avg" if cfg.pool == "avg" else "token"
    args = {"img_size": list(cfg.image_size), "patch_size": cfg.patch_size, "in_chans": cfg.in_channels,
            "embed_dim": cfg.dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
            "mlp_ratio": mlp_ratio(cfg.dim, cfg.mlp_dim),
            "num_classes": cfg.num_classes, "global_pool": pool, "class_token": cfg.class_token,
            "qkv_bias": cfg.qkv_bias, "pos_embed": "learn" if cfg.pos_embed == "learned" else "none",
            "act_layer": "gelu_tanh" if cfg.gelu == "tanh" else "gelu"}
    pretrained = {"input_size": [cfg.in_channels, *cfg.image_size], "fixed_input_size": True,
                  "num_classes": cfg.num_classes, "first_conv": first_conv(cfg), "classifier": "head"}
    if preprocessing is not None:
        pretrained.update(mean=list(preprocessing.mean), std=list(preprocessing.std))
        if preprocessing.crop_pct is not None:
            pretrained["crop_pct"] = preprocessing.crop_pct
    return {"architecture": arch, "num_classes": cfg.num_classes, "num_features": cfg.dim, "global_pool": pool,
            "model_args": args, "pretrained_cfg": pretrained}


def write_timm_hub(params: dict, cfg: ViTConfig, directory, preprocessing: Preprocessing | None = None) -> None:
    """(params, cfg) -> a timm hub directory (config.json + model.safetensors) that
    `timm.create_model("local-dir:DIR", pretrained=True)` loads; built beside the destination and renamed, so it
    appears whole or not at all."""
    text = json.dumps(hub_config(cfg, preprocessing), indent=2)
    save_directory(directory, HUB_WEIGHTS[0], to_timm(params, cfg), {"config.json": text})
