"""Hugging Face transformers' Swin (`SwinForImageClassification`, `SwinModel`): a `save_pretrained` directory.

Our name                                   transformers name (as `save_pretrained` writes it)        transform
patch.weight (C, in·P·P)                   swin.embeddings.patch_embeddings.projection.weight        conv kernel
patch.bias                                 swin.embeddings.patch_embeddings.projection.bias          -
patch_norm                                 swin.embeddings.norm                                      -
stages.s.blocks.j.ln1 / ln2                swin.encoder.layers.s.blocks.j.layernorm_before / _after  -
stages.s.blocks.j.qkv                      ….attention.self.query, .key, .value                      rows [q; k; v]:
                                                                                                       split in three
stages.s.blocks.j.proj                     ….attention.output.dense                                  -
stages.s.blocks.j.relative_position_bias_table                                                       -
                                           ….attention.self.relative_position_bias_table
stages.s.blocks.j.fc1 / fc2                ….intermediate.dense / ….output.dense                     -
stages.s.merge (the k-th merging)          swin.encoder.layers.k.downsample                          - (merging ends
                                                                                                       stages 0..2)
norm                                       swin.layernorm                                            -
head                                       classifier                                                -

A SwinModel (no classifier) has the same names without "swin.". transformers 5 names the modules differently in
memory (`attention.q_proj`, `.o_proj`, `attention.relative_position_bias.relative_position_bias_table`, `mlp.fc1`,
`mlp.fc2`) and renames on load (transformers/conversion_mapping.py, "swin"); both spellings are read, the saved one
is written. The relative-position index is a non-persistent buffer in transformers 5 (older files hold it as
`attention.self.relative_position_index`; such a key is checked against the computed index and dropped).
transformers computes with the original's conventions: padding "before_shift", small_window "shrink_min" (one
window of the shorter side, no shift, once a stage is no larger than M); the config written beside the weights
carries eps, activation and stochastic depth.
"""
import contextlib

import torch

from lowlevel import SwinConfig
from lowlevel.checks import check_config
from lowlevel.relative_position import relative_position_index
from lowlevel.swin import param_shapes
from lowlevel.swin_params import merge_index
from paper.formats.fields import (
    agree,
    require,
    require_conventions,
    swin_fields,
    swin_shape_fields,
    swin_tables,
    whole_heads,
    window_from_tables,
)
from paper.formats.files import REQUIRED, json_value, load_tensors, naming, save_directory
from paper.formats.huggingface import HF_ACTIVATIONS, WEIGHT_FILES, classifier_claims, gelu_from_hf_config, pretrained_files
from paper.formats.renaming import renamed, respelled, unrenamed

PATCH = "embeddings.patch_embeddings.projection.weight"

BLOCK_NAMES = {"ln1": "layernorm_before", "qkv": "attention.self.qkv", "proj": "attention.output.dense",
               "ln2": "layernorm_after", "fc1": "intermediate.dense", "fc2": "output.dense",
               "relative_position_bias_table": "attention.self.relative_position_bias_table"}
QKV = ("query", "key", "value")
# transformers 5's in-memory names <-> the saved ones (conversion_mapping.py's "swin" renames), (saved, in memory);
# ".attention.output.dense." before ".output.dense.", as there.
MEMORY_NAMES = [(".attention.self.query.", ".attention.q_proj."),
                (".attention.self.key.", ".attention.k_proj."),
                (".attention.self.value.", ".attention.v_proj."),
                (".attention.self.relative_position_bias_table",
                 ".attention.relative_position_bias.relative_position_bias_table"),
                (".attention.output.dense.", ".attention.o_proj."),
                (".intermediate.dense.", ".mlp.fc1."),
                (".output.dense.", ".mlp.fc2.")]


def hf_swin_key(name: str, cfg: SwinConfig | None) -> str:
    """Our parameter name -> its saved transformers name without "swin.", q, k and v as one fused
    "attention.self.qkv" that `split_qkv` cuts in three (the config tells where the mergings are)."""
    parts = name.split(".")
    if parts[0] == "stages" and parts[2] == "blocks":
        leaf = ".".join(parts[5:])
        return f"encoder.layers.{parts[1]}.blocks.{parts[3]}.{BLOCK_NAMES[parts[4]]}" + (f".{leaf}" if leaf else "")
    if parts[0] == "stages":                                   # stages.s.merge.{norm,reduction}.leaf
        return f"encoder.layers.{merge_index(cfg, int(parts[1]))}.downsample.{'.'.join(parts[3:])}"
    head, _, leaf = name.partition(".")
    return {"patch": f"embeddings.patch_embeddings.projection.{leaf}", "patch_norm": f"embeddings.norm.{leaf}",
            "norm": f"layernorm.{leaf}", "head": f"classifier.{leaf}"}[head]


def split_qkv(sd: dict) -> dict:
    """Every fused "….attention.self.qkv.{weight,bias}" (rows [q; k; v]) -> ….query, ….key, ….value."""
    out = {}
    for k, v in sd.items():
        if ".attention.self.qkv." in k:
            out.update({k.replace(".qkv.", f".{n}."): t for n, t in zip(QKV, v.chunk(3), strict=True)})
        else:
            out[k] = v
    return out


def fuse_qkv(sd: dict) -> dict:
    """The inverse of `split_qkv`, where all three of q, k and v are there (the checks name what is missing)."""
    out = dict(sd)
    for k in [k for k in sd if ".attention.self.query." in k]:
        parts = [k.replace(".query.", f".{n}.") for n in QKV]
        if all(p in out for p in parts):
            out[k.replace(".query.", ".qkv.")] = torch.cat([out.pop(p) for p in parts])
    return out


def saved_name(name: str) -> str:
    """A transformers Swin name, either spelling, with or without "swin." -> the saved spelling without "swin."."""
    return respelled(name.removeprefix("swin."), MEMORY_NAMES, to_saved=True)


def is_hf_swin_state_dict(sd: dict) -> bool:
    return any(saved_name(k) == PATCH for k in sd) and any("relative_position_bias_table" in k for k in sd)


def config_from_hf_swin_config(config: dict, where="config") -> dict:
    """Our config fields from a transformers Swin config.json dict (transformers' SwinConfig defaults for what it
    leaves out); a field of the wrong type is a ValueError naming `where` (the file) and the field."""
    def value(key, kind, default=REQUIRED):
        return json_value(config, key, kind, where, default)

    if value("use_absolute_embeddings", "true or false", False):
        raise ValueError(f"{where}: use_absolute_embeddings: expected False (no Swin in the paper's tables uses them), "
                         f"got True")
    return {"image_size": value("image_size", "an integer or [height, width]", 224),
            "patch_size": value("patch_size", "an integer", 4), "in_channels": value("num_channels", "an integer", 3),
            "dim": value("embed_dim", "an integer"), "depths": value("depths", "a list of integers"),
            "num_heads": value("num_heads", "a list of integers"), "window_size": value("window_size", "an integer", 7),
            "mlp_ratio": value("mlp_ratio", "a finite number", 4.0), "qkv_bias": value("qkv_bias", "true or false", True),
            "layer_norm_eps": value("layer_norm_eps", "a finite number", 1e-5), "gelu": gelu_from_hf_config(config, where),
            "drop_path": value("drop_path_rate", "a finite number", 0.1)}


# config.json keys that state a field the weights fix (the defaults are transformers' SwinConfig's)
CLAIMED = {"patch_size": "patch_size", "in_channels": "num_channels", "dim": "embed_dim", "depths": "depths",
           "num_heads": "num_heads", "window_size": "window_size", "mlp_ratio": "mlp_ratio", "qkv_bias": "qkv_bias"}


def check_hf_swin_config(config: dict, state_dict: dict, where) -> None:
    """Refuse a Swin's config.json that its weights contradict (fields.agree), naming the file and the key; its
    image size is believed (a Swin's weights fit any). Weights whose keys do not tell are left to from_hf_swin."""
    fields = config_from_hf_swin_config(config, where)
    sd = fuse_qkv({saved_name(k): v for k, v in state_dict.items()})
    key = lambda k: hf_swin_key(k, None)                                             # noqa: E731
    try:
        weights = swin_shape_fields(sd, key)
        with contextlib.suppress(ValueError):                   # a shrunk table does not tell M
            weights["window_size"] = window_from_tables(swin_tables(sd, key))
    except (KeyError, IndexError, ValueError, StopIteration):
        return
    for s, (heads, width) in enumerate(zip(fields["num_heads"], (fields["dim"] * 2 ** s for s in range(99)),
                                           strict=False)):
        whole_heads(where, f"num_heads[{s}]", heads, f"stage {s}'s width (embed_dim·2^{s})", width)
    claims = [(field, key, config.get(key, fields[field]), fields[field]) for field, key in CLAIMED.items()]
    claims = [(f, k, s, tuple(v) if isinstance(v, list) else v) for f, k, s, v in claims]
    agree(where, claims + classifier_claims(config, where, "SwinModel"), weights)


def from_hf_swin(state_dict: dict, config: dict | None = None, **overrides) -> tuple[SwinConfig, dict]:
    """A transformers Swin state dict (either naming, with or without "swin.") and optionally its config.json dict
    -> (cfg, params). Every key is checked (missing, unexpected, mis-shaped; q, k and v as the qkv they form) before
    anything is converted."""
    sd = fuse_qkv({saved_name(k): v for k, v in state_dict.items()})
    if PATCH not in sd:
        raise ValueError(f"state_dict: expected a transformers Swin state_dict, missing key 'swin.{PATCH}'")
    known = {**TRANSFORMERS_CONVENTIONS, **(config_from_hf_swin_config(config) if config is not None else {}),
             **overrides}
    cfg = SwinConfig(**swin_fields(sd, lambda k: hf_swin_key(k, None), known))
    index = relative_position_index((cfg.window_size, cfg.window_size))
    for key in [k for k in sd if k.endswith("relative_position_index")]:    # transformers 4 saved it; 5 computes it
        if not torch.equal(sd.pop(key).long().view(index.shape), index):
            raise ValueError(f"{key}: expected the relative position index of a {cfg.window_size}×{cfg.window_size} "
                             f"window, got different values")
    return cfg, unrenamed(sd, param_shapes(cfg), cfg, lambda k: hf_swin_key(k, cfg), "transformers Swin state_dict")


def saved_state_dict(params: dict, cfg: SwinConfig) -> dict:
    """(params, cfg) -> the state dict as `save_pretrained` writes it: "swin." before all but the classifier."""
    require_transformers(cfg)
    sd = split_qkv(renamed(params, param_shapes(cfg), cfg, lambda k: hf_swin_key(k, cfg)))
    return {k if k.startswith("classifier.") else f"swin.{k}": v for k, v in sd.items()}


def to_hf_swin(params: dict, cfg: SwinConfig) -> dict:
    """(params, cfg) -> the state dict in transformers 5's in-memory names, for
    `paper.references.swin.hf_swin(cfg).load_state_dict`."""
    return {respelled(k, MEMORY_NAMES, to_saved=False): v for k, v in saved_state_dict(params, cfg).items()}


def read_hf_swin(path, **overrides) -> tuple[SwinConfig, dict]:
    """A `save_pretrained` directory of a Swin (config.json + model.safetensors or pytorch_model.bin), or a bare
    state-dict file (then eps 1e-5, GELU exact and no stochastic depth unless overridden) -> (cfg, params)."""
    config, path = pretrained_files(path)
    if config is not None:
        config_from_hf_swin_config(config, path.parent / "config.json")
    sd = load_tensors(path)
    if config is not None:
        check_hf_swin_config(config, sd, path.parent / "config.json")
    with naming(path):
        return from_hf_swin(sd, config, **overrides)


def write_hf_swin(params: dict, cfg: SwinConfig, directory) -> None:
    """(params, cfg) -> a `save_pretrained` directory that `SwinForImageClassification.from_pretrained` loads
    offline: config.json (eps, activation, stochastic depth) and model.safetensors, built and checked first, the
    directory written whole or not at all."""
    sd = saved_state_dict(params, cfg)
    save_directory(directory, WEIGHT_FILES[0], sd, {"config.json": hf_swin_config(cfg).to_json_string(use_diff=False)})


TRANSFORMERS = "transformers' Swin"


TRANSFORMERS_CONVENTIONS = dict(padding="before_shift", small_window="shrink_min", merge_position="end")


def require_transformers(cfg: SwinConfig) -> None:
    """Refuse a config transformers' code does not compute: its patch-embedding and patch-merging LayerNorms keep
    PyTorch's eps 1e-5 whatever `layer_norm_eps` says (modeling_swin.py `SwinEmbeddings`, `SwinPatchMerging`); its
    conventions are the original's; and (measured with transformers 5.23) a stage smaller than the window fails: it
    shrinks the window but keeps the M×M relative-position table (RuntimeError: the size of tensor a (25) must
    match the size of tensor b (49))."""
    check_config(cfg, SwinConfig)
    require(TRANSFORMERS, cfg, layer_norm_eps=1e-5)
    require_conventions(TRANSFORMERS, cfg, **TRANSFORMERS_CONVENTIONS)
    for s, size in enumerate(cfg.stage_sizes):
        if min(size) < cfg.window_size:
            raise ValueError(f"image_size: {TRANSFORMERS} cannot compute image_size {cfg.image_size}, where stage {s} "
                             f"is {size[0]}×{size[1]}, smaller than the window M={cfg.window_size}: it shrinks the "
                             f"window but keeps the M×M relative-position table (transformers 5.23)")


def hf_swin_config(cfg: SwinConfig):
    """transformers' SwinConfig computing the same model as `cfg`: eps, activation and stochastic depth set to ours
    (its default drop_path_rate is 0.1), no absolute position embeddings, no dropout."""
    from transformers import SwinConfig as HFSwinConfig

    require_transformers(cfg)
    h, w = cfg.image_size
    config = HFSwinConfig(image_size=h if h == w else [h, w], patch_size=cfg.patch_size, num_channels=cfg.in_channels,
                          embed_dim=cfg.dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads),
                          window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                          hidden_act=HF_ACTIVATIONS[cfg.gelu], layer_norm_eps=cfg.layer_norm_eps,
                          drop_path_rate=cfg.drop_path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                          use_absolute_embeddings=False, num_labels=cfg.num_classes)
    config.architectures = ["SwinForImageClassification"]
    return config
