"""Hugging Face transformers' ViT (`ViTModel`, `ViTForImageClassification`) and distilled DeiT
(`DeiTForImageClassificationWithTeacher`, `DeiTModel`): separate q, k, v and its own names.

Our name                 transformers name (as `save_pretrained` writes it; "vit." before all but the classifier
                         in a ViTForImageClassification, "deit." before all but the two classifiers of a
                         DeiTForImageClassificationWithTeacher)     transform
patch.weight (D, C·P·P)  embeddings.patch_embeddings.projection.weight  reshape to the conv kernel (D, C, P, P)
patch.bias               embeddings.patch_embeddings.projection.bias    -
cls                      embeddings.cls_token                           -
dist                     embeddings.distillation_token (DeiT)           -
pos                      embeddings.position_embeddings                 - (DeiT: rows cls, dist, patches, as ours)
blocks.i.ln1             encoder.layer.i.layernorm_before               -
blocks.i.qkv             encoder.layer.i.attention.attention.query,     rows [q; k; v]: split into three (D, D)
                           .key, .value                                 (each head-major, as ours)
blocks.i.proj            encoder.layer.i.attention.output.dense         -
blocks.i.ln2             encoder.layer.i.layernorm_after                -
blocks.i.fc1 / fc2       encoder.layer.i.intermediate.dense / output.dense  -
norm                     layernorm                                      -
pre_logits               pooler.dense (ViTModel; pooler_act "tanh")     -
head                     classifier (ViTForImageClassification)         -
                         cls_classifier (DeiT)                          -
head_dist                distillation_classifier (DeiT)                 -

transformers 5 names the modules differently in memory (`layers.i.attention.q_proj`, `.o_proj`, `mlp.fc1`, ...) and
renames on load (transformers/conversion_mapping.py, where "DeiTModel" takes the "ViTModel" rules); both spellings
are read, the one above is written. transformers' config defaults differ from the paper's model (eps 1e-12, not
1e-6), so the config written beside the weights always carries the model's real eps and activation. The
preprocessing lives in preprocessor_config.json (ViTImageProcessor: resize straight to the image size, then
(x − image_mean) / image_std), read when present and written when known.

A DeiT without the distillation token is a plain ViT, and transformers stores it as one (the hub's non-distilled
facebook/deit-* models say "model_type": "vit"); its DeiTForImageClassification keeps a distillation token but no
distillation head, which our models cannot express (its keys are refused by name). transformers' DeiT is
inference-only: it computes the mean of the two heads' logits, our fusion "mean_logits".
"""
import json
from pathlib import Path

import torch

from lowlevel import ViTConfig, check_params, param_shapes
from lowlevel.checks import check_config
from paper.formats.fields import Preprocessing, agree, num_heads_for, require, square_image_size, whole_heads
from paper.formats.files import REQUIRED, json_value, load_tensors, naming, read_json, save_directory
from paper.formats.renaming import respelled

BLOCK_NAMES = {"ln1": "layernorm_before", "proj": "attention.output.dense", "ln2": "layernorm_after",
               "fc1": "intermediate.dense", "fc2": "output.dense"}
QKV = ("query", "key", "value")
GLOBAL_NAMES = {"patch": "embeddings.patch_embeddings.projection", "norm": "layernorm", "pre_logits": "pooler.dense",
                "cls": "embeddings.cls_token", "dist": "embeddings.distillation_token",
                "pos": "embeddings.position_embeddings"}
# The backbone's prefix and the classifiers outside it, per model family: ViT's one head, DeiT's two.
BACKBONES = ("vit", "deit")
HEAD_NAMES = {"vit": {"head": "classifier"}, "deit": {"head": "cls_classifier", "head_dist": "distillation_classifier"}}
# transformers 5's in-memory names <-> the saved names above (conversion_mapping.py's "ViTModel" renames), as
# (saved, in memory) pieces of a name without "vit." or "deit."
# ViTImageProcessor's defaults (IMAGENET_STANDARD_MEAN/STD, resize to `size` without a crop)
PREPROCESSING = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), None, "transformers' ViTImageProcessor defaults")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")      # save_pretrained's, in the order transformers prefers
MEMORY_NAMES = [("encoder.layer.", "layers."),
                (".attention.attention.query.", ".attention.q_proj."),
                (".attention.attention.key.", ".attention.k_proj."),
                (".attention.attention.value.", ".attention.v_proj."),
                (".attention.output.dense.", ".attention.o_proj."),
                (".intermediate.dense.", ".mlp.fc1."),
                (".output.dense.", ".mlp.fc2.")]


def backbone(cfg: ViTConfig) -> str:
    """The transformers model family computing `cfg`: "deit" for a distilled model, else "vit"."""
    return "deit" if cfg.distilled else "vit"


def hf_names(name: str, cfg: ViTConfig) -> list[str]:
    """Our parameter name -> its transformers name(s), without the backbone's prefix (three for a qkv tensor)."""
    if name.startswith("blocks."):
        _, i, part, leaf = name.split(".")
        if part == "qkv":
            return [f"encoder.layer.{i}.attention.attention.{n}.{leaf}" for n in QKV]
        return [f"encoder.layer.{i}.{BLOCK_NAMES[part]}.{leaf}"]
    part, _, leaf = name.partition(".")
    heads = HEAD_NAMES[backbone(cfg)]
    transformers_name = heads.get(part) or GLOBAL_NAMES[part]
    return [f"{transformers_name}.{leaf}" if leaf else transformers_name]


def hf_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Every transformers tensor name (without the backbone's prefix) and its shape for `cfg`."""
    shapes = {}
    for name, shape in param_shapes(cfg).items():
        names = hf_names(name, cfg)
        if name == "patch.weight":
            shape = (cfg.dim, cfg.in_channels, cfg.patch_size, cfg.patch_size)
        elif len(names) == 3:
            shape = (shape[0] // 3, *shape[1:])
        shapes.update({n: shape for n in names})
    return shapes


def without_backbone(name: str) -> str:
    """A transformers name without its "vit." or "deit." prefix."""
    first, _, rest = name.partition(".")
    return rest if first in BACKBONES else name


def saved_name(name: str) -> str:
    """A transformers name, either spelling, with or without the backbone's prefix -> the saved spelling without
    it."""
    return respelled(without_backbone(name), MEMORY_NAMES, to_saved=True)


def memory_name(name: str) -> str:
    """A saved name without the backbone's prefix -> transformers 5's in-memory spelling (without it)."""
    return respelled(name, MEMORY_NAMES, to_saved=False)


def is_hf_state_dict(sd: dict) -> bool:
    return any(without_backbone(k) == "embeddings.patch_embeddings.projection.weight" for k in sd)


# Our GELU flavour -> transformers' ACT2FN name: "gelu" is erf GELU, "gelu_pytorch_tanh" F.gelu(approximate="tanh").
HF_ACTIVATIONS = {"exact": "gelu", "tanh": "gelu_pytorch_tanh"}


def hf_config(cfg: ViTConfig):
    """transformers' ViTConfig computing the same model as `cfg`, its DeiTConfig for a distilled one. Its layer-norm
    eps and activation are set to ours: transformers' defaults (eps 1e-12) differ from the official 1e-6 by ~7e-4 in
    the logits of ViT-B/16. The pre-logits layer maps to ViTModel's pooler (Dense + tanh), which has no classifier
    after it. In training mode the two differ: transformers drops out after the embeddings, attention and MLP but
    not after the GELU, and has no stochastic depth (drop_path)."""
    check_config(cfg, ViTConfig)
    from transformers import DeiTConfig
    from transformers import ViTConfig as HFViTConfig
    require("transformers' ViT", cfg, class_token=True, pool="token", pos_embed="learned", backbone=None,
            patch_embed="linear", attention="standard")
    if cfg.num_classes or cfg.distilled:                    # the pooler (pre-logits) has no classifier after it
        require("transformers' ViTForImageClassification and DeiT", cfg, representation_size=None)
    h, w = cfg.image_size
    config_class = DeiTConfig if cfg.distilled else HFViTConfig
    config = config_class(hidden_size=cfg.dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                          intermediate_size=cfg.mlp_dim, hidden_act=HF_ACTIVATIONS[cfg.gelu],
                          hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=0.0,
                          layer_norm_eps=cfg.layer_norm_eps, image_size=h if h == w else [h, w],
                          patch_size=cfg.patch_size, num_channels=cfg.in_channels, qkv_bias=cfg.qkv_bias,
                          num_labels=cfg.num_classes, pooler_output_size=cfg.representation_size or cfg.dim,
                          pooler_act="tanh")
    config.architectures = [hf_architecture(cfg)]
    return config


def hf_architecture(cfg: ViTConfig) -> str:
    """The transformers class computing `cfg`: a distilled DeiT is DeiTForImageClassificationWithTeacher (its two
    heads cls_classifier and distillation_classifier), a ViT ViTForImageClassification; without a classifier the
    backbone alone (ViTModel's pooler is the pre-logits layer)."""
    if cfg.distilled:
        return "DeiTForImageClassificationWithTeacher" if cfg.num_classes else "DeiTModel"
    return "ViTForImageClassification" if cfg.num_classes else "ViTModel"


def config_from_hf_config(config: dict, where="config") -> dict:
    """Our config fields from a transformers config.json dict; a field of the wrong type is a ValueError naming
    `where` (the file) and the field."""
    def value(key, kind, default=REQUIRED):
        return json_value(config, key, kind, where, default)

    whole_heads(where, "num_attention_heads", value("num_attention_heads", "an integer"), "hidden_size",
                value("hidden_size", "an integer"))
    return {"image_size": value("image_size", "an integer or [height, width]", 224),
            "patch_size": value("patch_size", "an integer", 16), "in_channels": value("num_channels", "an integer", 3),
            "dim": value("hidden_size", "an integer"), "depth": value("num_hidden_layers", "an integer"),
            "num_heads": value("num_attention_heads", "an integer"),
            "mlp_dim": value("intermediate_size", "an integer"),
            "layer_norm_eps": value("layer_norm_eps", "a finite number", 1e-12),
            "qkv_bias": value("qkv_bias", "true or false", True), "gelu": gelu_from_hf_config(config, where)}


# config.json keys that state a field the weights fix (the defaults are transformers' ViTConfig's)
CLAIMED = {"image_size": "image_size", "patch_size": "patch_size", "in_channels": "num_channels", "dim": "hidden_size",
           "depth": "num_hidden_layers", "mlp_dim": "intermediate_size", "qkv_bias": "qkv_bias"}
MODEL_TYPES = {"vit": False, "deit": True}                   # model_type -> whether it has a distillation token


def classifier_claims(config: dict, where, bare: str) -> list[tuple]:
    """What a transformers config.json says of the classifier (claims for fields.agree): `bare` (ViTModel, SwinModel)
    has none; a classifier class has as many rows as id2label (label2id, num_labels) has labels. A bare model's labels
    mean nothing (the hub's in21k ViTModel keeps transformers' default two)."""
    archs = json_value(config, "architectures", "a list of strings", where, None)
    if archs and archs[0].endswith("Model"):
        return [("num_classes", "architectures", archs[0], 0)] if archs[0] == bare else []
    claims = [("num_classes", key, f"{len(labels)} labels", len(labels)) for key in ("id2label", "label2id")
              if (labels := json_value(config, key, "an object", where, None)) is not None]
    if "num_labels" in config:
        claims.append(("num_classes", "num_labels", config["num_labels"],
                       json_value(config, "num_labels", "an integer", where)))
    return claims


def hf_claims(config: dict, where) -> list[tuple]:
    """Everything a ViT's config.json says that its weights fix, as claims for fields.agree."""
    fields = config_from_hf_config(config, where)
    claims = [(field, key, config.get(key, fields[field]), fields[field]) for field, key in CLAIMED.items()]
    model_type = json_value(config, "model_type", "a string", where, None)
    if model_type is not None:
        if model_type not in MODEL_TYPES:
            raise ValueError(f"{where}: model_type: expected one of {sorted(MODEL_TYPES)} (transformers' ViT or DeiT), "
                             f"got {model_type!r}")
        claims.append(("distilled", "model_type", model_type, MODEL_TYPES[model_type]))
    archs = json_value(config, "architectures", "a list of strings", where, None)
    if archs and archs[0].startswith(("ViT", "DeiT")):
        claims.append(("distilled", "architectures", archs[0], archs[0].startswith("DeiT")))
    bare = "DeiTModel" if archs and archs[0].startswith("DeiT") else "ViTModel"
    return claims + classifier_claims(config, where, bare)


def gelu_from_hf_config(config: dict, where="config") -> str:
    """Our `gelu` from a transformers config.json's hidden_act (default "gelu", the exact erf), a ViT's or a Swin's."""
    act = json_value(config, "hidden_act", "a string", where, "gelu")
    gelu = {v: k for k, v in HF_ACTIVATIONS.items()}.get(act)
    if gelu is None:
        raise ValueError(f"{where}: hidden_act: expected one of {sorted(HF_ACTIVATIONS.values())}, got {act!r}")
    return gelu


def hf_weight_fields(sd: dict) -> dict:
    """The config fields a transformers ViT state_dict's shapes fix (normalised names)."""
    d, c, p, _ = sd["embeddings.patch_embeddings.projection.weight"].shape
    distilled = "embeddings.distillation_token" in sd
    head = f"{HEAD_NAMES['deit' if distilled else 'vit']['head']}.weight"
    has_pooler = "pooler.dense.weight" in sd and head not in sd
    if distilled and has_pooler:
        raise ValueError("pooler.dense: a DeiT's pooler reads the class token alone, which no model of ours computes "
                         "(timm's and the official DeiT have none); expected a DeiTModel saved without it")
    return {"patch_size": p, "in_channels": c, "dim": d, "distilled": distilled,
            "depth": len({k.split(".")[2] for k in sd if k.startswith("encoder.layer.")}),
            "mlp_dim": sd["encoder.layer.0.intermediate.dense.weight"].shape[0],
            "qkv_bias": "encoder.layer.0.attention.attention.query.bias" in sd,
            "num_classes": sd[head].shape[0] if head in sd else 0,
            "representation_size": sd["pooler.dense.weight"].shape[0] if has_pooler else None}


def check_hf_config(config: dict, state_dict: dict, where) -> None:
    """Refuse a config.json that its weights contradict (fields.agree), naming the file and the key. Weights whose
    keys do not tell (missing ones) are left to from_hf, which names them."""
    sd = {saved_name(k): v for k, v in state_dict.items()}
    try:
        weights = hf_weight_fields(sd)
        weights["patches"] = sd["embeddings.position_embeddings"].shape[1] - 1 - weights["distilled"]
    except (KeyError, IndexError, ValueError):
        return
    agree(where, hf_claims(config, where), weights)


def config_from_hf_state_dict(sd: dict, known: dict) -> dict:
    """What the shapes say, with `known` fields (config.json's, the caller's) taking precedence; `fields.py`
    supplies what neither tells. `sd` has normalised names."""
    fields = {**hf_weight_fields(sd), **known}
    if "num_heads" not in fields:
        fields["num_heads"] = num_heads_for(fields["dim"], fields["depth"], fields["mlp_dim"], fields["patch_size"])
    if "image_size" not in fields:
        fields["image_size"] = square_image_size(sd["embeddings.position_embeddings"].shape[1], 1 + fields["distilled"],
                                                 fields["patch_size"])
    return fields


def from_hf(state_dict: dict, config: dict | None = None, **overrides) -> tuple[ViTConfig, dict]:
    """A transformers ViT or DeiT state_dict (either naming, with or without "vit." or "deit.") and optionally its
    config.json dict -> (cfg, params). All keys are checked (missing, unexpected, mis-shaped) before anything is
    converted."""
    sd = {saved_name(k): v for k, v in state_dict.items()}
    if "embeddings.patch_embeddings.projection.weight" not in sd:
        raise ValueError("state_dict: expected a transformers ViT state_dict, missing key "
                         "'embeddings.patch_embeddings.projection.weight'")
    if "classifier.weight" in sd:    # ViTForImageClassification computes no pooler: one saved beside it goes unused
        sd = {k: v for k, v in sd.items() if not k.startswith("pooler.")}
    try:
        known = {**(config_from_hf_config(config) if config is not None else {}), **overrides}
        cfg = ViTConfig(**config_from_hf_state_dict(sd, known))
    except KeyError as e:
        raise ValueError(f"transformers checkpoint: missing key {e.args[0]!r}, needed to infer the config") from e
    check_params(sd, hf_shapes(cfg), what="transformers state_dict")
    params = {}
    for name, shape in param_shapes(cfg).items():
        parts = [sd[n].detach().clone() for n in hf_names(name, cfg)]
        params[name] = (torch.cat(parts) if len(parts) == 3 else parts[0]).reshape(shape)
    return cfg, params


def saved_state_dict(params: dict, cfg: ViTConfig) -> dict:
    """(params, cfg) -> the state_dict as `save_pretrained` writes it, names without the backbone's prefix."""
    check_params(params, param_shapes(cfg))
    sd = {}
    for name, value in params.items():
        names = hf_names(name, cfg)
        if name == "patch.weight":
            value = value.reshape(cfg.dim, cfg.in_channels, cfg.patch_size, cfg.patch_size)
        parts = value.chunk(3) if len(names) == 3 else [value]              # rows [q; k; v] -> q, k, v
        sd.update({n: t.detach().clone() for n, t in zip(names, parts, strict=True)})
    return sd


def with_prefix(sd: dict, cfg: ViTConfig) -> dict:
    """ViTForImageClassification keeps the backbone under "vit.", DeiTForImageClassificationWithTeacher under
    "deit."; their classifiers sit beside it. A ViTModel or DeiTModel has no prefix."""
    prefix = f"{backbone(cfg)}." if cfg.num_classes else ""
    heads = tuple(f"{n}." for n in HEAD_NAMES[backbone(cfg)].values())
    return {(k if k.startswith(heads) else prefix + k): v for k, v in sd.items()}


def to_hf(params: dict, cfg: ViTConfig) -> tuple[dict, object]:
    """(params, cfg) -> (state_dict, transformers config): the state_dict in transformers 5's in-memory names,
    for `paper.references.vit.hf_vit(cfg).load_state_dict`."""
    config = hf_config(cfg)
    sd = saved_state_dict(params, cfg)
    return with_prefix({memory_name(k): v for k, v in sd.items()}, cfg), config


def pretrained_files(path) -> tuple[dict | None, Path]:
    """A `save_pretrained` directory -> (its config.json as a dict, its weights file: model.safetensors or
    pytorch_model.bin); a file -> (None, the file). A ViT's and a Swin's directories alike."""
    path = Path(path)
    if not path.is_dir():
        return None, path
    weights = [path / n for n in WEIGHT_FILES if (path / n).exists()]
    if not (path / "config.json").exists() or not weights:
        raise ValueError(f"{path}: expected a save_pretrained directory with config.json and model.safetensors")
    return read_json(path / "config.json"), weights[0]


def read_hf(path, **overrides) -> tuple[ViTConfig, dict]:
    """A `save_pretrained` directory (config.json + model.safetensors or pytorch_model.bin), or a bare state_dict
    file (then eps is 1e-6 and GELU exact unless overridden) -> (cfg, params). config.json is checked before the
    weights are read."""
    config, path = pretrained_files(path)
    if config is not None:
        config_from_hf_config(config, path.parent / "config.json")
    else:
        overrides = {"layer_norm_eps": 1e-6, **overrides}
    sd = load_tensors(path)
    if config is not None:
        check_hf_config(config, sd, path.parent / "config.json")
    with naming(path):
        return from_hf(sd, config, **overrides)


def read_hf_preprocessing(path) -> Preprocessing:
    """preprocessor_config.json's image_mean and image_std (and its centre crop, if it has one) when the directory
    holds one, else ViTImageProcessor's defaults."""
    file = Path(path) / "preprocessor_config.json"
    if not file.exists():
        return PREPROCESSING
    config = read_json(file)
    crop_pct = None
    if config.get("do_center_crop"):      # e.g. DeiTImageProcessor: resize to `size`, then crop `crop_size`
        size = json_value(json_value(config, "size", "an object", file), "height", "an integer", f"{file} size")
        crop = json_value(json_value(config, "crop_size", "an object", file), "height", "an integer", f"{file} crop_size")
        crop_pct = crop / size
    return Preprocessing(tuple(json_value(config, "image_mean", "a list of numbers", file)),
                         tuple(json_value(config, "image_std", "a list of numbers", file)), crop_pct, str(file))


def preprocessor_config(cfg: ViTConfig, preprocessing: Preprocessing) -> dict:
    """A ViTImageProcessor's preprocessor_config.json: resize to the image size (a crop_pct cannot be expressed:
    ViTImageProcessor does not crop), rescale to [0, 1], normalise."""
    h, w = cfg.image_size
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": h, "width": w},
            "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(preprocessing.mean), "image_std": list(preprocessing.std)}


def write_hf(params: dict, cfg: ViTConfig, directory, preprocessing: Preprocessing | None = None) -> None:
    """(params, cfg) -> a `save_pretrained` directory: config.json (with the real eps and activation),
    model.safetensors and, when the preprocessing is known, preprocessor_config.json; loadable offline by
    `from_pretrained(directory)` of transformers' ViTForImageClassification (DeiTForImageClassificationWithTeacher
    for a distilled model). Everything is built and checked before
    anything is written, beside the destination, and renamed: the directory appears whole or not at all."""
    config = hf_config(cfg)
    sd = with_prefix(saved_state_dict(params, cfg), cfg)
    texts = {"config.json": config.to_json_string(use_diff=False)}
    if preprocessing is not None:
        texts["preprocessor_config.json"] = json.dumps(preprocessor_config(cfg, preprocessing), indent=2)
    save_directory(directory, WEIGHT_FILES[0], sd, texts)
