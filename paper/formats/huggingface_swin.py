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
import json
from pathlib import Path

import torch

from lowlevel import SwinConfig, check_params
from lowlevel.relative_position import relative_position_index
from lowlevel.swin import param_shapes
from lowlevel.swin_params import merge_index
from paper.atomic import write_atomically

from ..reference_models import HF_ACTIVATIONS
from ..reference_swin import TRANSFORMERS_CONVENTIONS, hf_swin_config, require_transformers
from .fields import swin_image_size, window_from_tables
from .files import load_tensors, save_tensors
from .renaming import conv_shape

BLOCK_NAMES = {"ln1": "layernorm_before", "proj": "attention.output.dense", "ln2": "layernorm_after",
               "fc1": "intermediate.dense", "fc2": "output.dense",
               "relative_position_bias_table": "attention.self.relative_position_bias_table"}
QKV = ("query", "key", "value")
PATCH = "embeddings.patch_embeddings.projection.weight"
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


def hf_swin_names(name: str, cfg: SwinConfig) -> list[str]:
    """Our parameter name -> its saved transformers name(s), without "swin." (three for a qkv tensor)."""
    parts = name.split(".")
    if parts[0] == "stages" and parts[2] == "blocks":
        block = f"encoder.layers.{parts[1]}.blocks.{parts[3]}."
        piece, leaf = parts[4], ".".join(parts[5:])
        if piece == "qkv":
            return [f"{block}attention.self.{n}.{leaf}" for n in QKV]
        return [block + BLOCK_NAMES[piece] + (f".{leaf}" if leaf else "")]
    if parts[0] == "stages":                                   # stages.s.merge.{norm,reduction}.leaf
        return [f"encoder.layers.{merge_index(cfg, int(parts[1]))}.downsample.{'.'.join(parts[3:])}"]
    head, _, leaf = name.partition(".")
    return [{"patch": f"embeddings.patch_embeddings.projection.{leaf}", "patch_norm": f"embeddings.norm.{leaf}",
             "norm": f"layernorm.{leaf}", "head": f"classifier.{leaf}"}[head]]


def saved_name(name: str) -> str:
    """A transformers Swin name, either spelling, with or without "swin." -> the saved spelling without "swin."."""
    name = name.removeprefix("swin.")
    for saved, memory in MEMORY_NAMES:
        name = name.replace(memory, saved)
    return name


def memory_name(name: str) -> str:
    """A saved name -> transformers 5's in-memory spelling."""
    for saved, memory in MEMORY_NAMES:
        name = name.replace(saved, memory)
    return name


def is_hf_swin_state_dict(sd: dict) -> bool:
    return any(saved_name(k) == PATCH for k in sd) and any("relative_position_bias_table" in k for k in sd)


def config_from_hf_swin_config(config: dict) -> dict:
    """Our config fields from a transformers Swin config.json."""
    if config.get("use_absolute_embeddings"):
        raise ValueError("use_absolute_embeddings: expected False (no Swin in the paper's tables uses them), got True")
    act = config.get("hidden_act", "gelu")
    gelu = {v: k for k, v in HF_ACTIVATIONS.items()}.get(act)
    if gelu is None:
        raise ValueError(f"hidden_act: expected one of {sorted(HF_ACTIVATIONS.values())}, got {act!r}")
    return {"image_size": config.get("image_size", 224), "patch_size": config.get("patch_size", 4),
            "in_channels": config.get("num_channels", 3), "dim": config["embed_dim"], "depths": config["depths"],
            "num_heads": config["num_heads"], "window_size": config.get("window_size", 7),
            "mlp_ratio": config.get("mlp_ratio", 4.0), "qkv_bias": config.get("qkv_bias", True),
            "layer_norm_eps": config.get("layer_norm_eps", 1e-5), "gelu": gelu,
            "drop_path": config.get("drop_path_rate", 0.1)}


def config_from_hf_swin_state_dict(sd: dict, known: dict) -> dict:
    """What the shapes say, with `known` fields (config.json's, the caller's) taking precedence; `sd` has saved names
    without "swin."."""
    c, channels, p, _ = sd[PATCH].shape
    stages = len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")})
    table = "encoder.layers.{}.blocks.0.attention.self.relative_position_bias_table"
    fields = {"patch_size": p, "in_channels": channels, "dim": c,
              "depths": tuple(len({k.split(".")[4] for k in sd if k.startswith(f"encoder.layers.{s}.blocks.")})
                              for s in range(stages)),
              "num_heads": tuple(sd[table.format(s)].shape[1] for s in range(stages)),
              "mlp_ratio": sd["encoder.layers.0.blocks.0.intermediate.dense.weight"].shape[0] / c,
              "qkv_bias": "encoder.layers.0.blocks.0.attention.self.query.bias" in sd,
              "num_classes": sd["classifier.weight"].shape[0] if "classifier.weight" in sd else 0,
              **TRANSFORMERS_CONVENTIONS, **known}
    if "window_size" not in fields:                           # transformers' tables are always M×M ones
        fields["window_size"] = window_from_tables([sd[table.format(s)] for s in range(stages)])
    if "image_size" not in fields:
        fields["image_size"] = swin_image_size(fields["window_size"], p, stages)
    return fields


def hf_shapes(cfg: SwinConfig) -> dict[str, tuple[int, ...]]:
    """Every saved transformers name (without "swin.") and its shape for `cfg`."""
    shapes = {}
    for name, shape in param_shapes(cfg).items():
        names = hf_swin_names(name, cfg)
        if name == "patch.weight":
            shape = conv_shape(cfg)
        elif len(names) == 3:
            shape = (shape[0] // 3, *shape[1:])
        shapes.update({n: shape for n in names})
    return shapes


def from_hf_swin(state_dict: dict, config: dict | None = None, **overrides) -> tuple[SwinConfig, dict]:
    """A transformers Swin state dict (either naming, with or without "swin.") and optionally its config.json dict
    -> (cfg, params). Every key is checked (missing, unexpected, mis-shaped) before anything is converted."""
    sd = {saved_name(k): v for k, v in state_dict.items()}
    if PATCH not in sd:
        raise ValueError(f"state_dict: expected a transformers Swin state_dict, missing key 'swin.{PATCH}'")
    known = {**(config_from_hf_swin_config(config) if config is not None else {}), **overrides}
    cfg = SwinConfig(**config_from_hf_swin_state_dict(sd, known))
    index = relative_position_index((cfg.window_size, cfg.window_size))
    for key in [k for k in sd if k.endswith("relative_position_index")]:    # transformers 4 saved it; 5 computes it
        if not torch.equal(sd.pop(key).long().view(index.shape), index):
            raise ValueError(f"{key}: expected the relative position index of a {cfg.window_size}×{cfg.window_size} "
                             f"window, got different values")
    check_params(sd, hf_shapes(cfg), what="transformers Swin state_dict")
    params = {}
    for name, shape in param_shapes(cfg).items():
        parts = [sd[n].detach().clone() for n in hf_swin_names(name, cfg)]
        params[name] = (torch.cat(parts) if len(parts) == 3 else parts[0]).reshape(shape)
    return cfg, params


def saved_state_dict(params: dict, cfg: SwinConfig) -> dict:
    """(params, cfg) -> the state dict as `save_pretrained` writes it: "swin." before all but the classifier."""
    require_transformers(cfg)
    check_params(params, param_shapes(cfg))
    sd = {}
    for name, value in params.items():
        names = hf_swin_names(name, cfg)
        value = value.reshape(conv_shape(cfg)) if name == "patch.weight" else value
        parts = value.chunk(3) if len(names) == 3 else [value]                # rows [q; k; v] -> q, k, v
        sd.update({n if n.startswith("classifier.") else f"swin.{n}": t.detach().clone()
                   for n, t in zip(names, parts, strict=True)})
    return sd


def to_hf_swin(params: dict, cfg: SwinConfig) -> dict:
    """(params, cfg) -> the state dict in transformers 5's in-memory names, for
    `paper.reference_swin.hf_swin(cfg).load_state_dict`."""
    return {memory_name(k): v for k, v in saved_state_dict(params, cfg).items()}


def read_hf_config(path: Path) -> dict:
    """A save_pretrained directory's config.json, as a dict."""
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path / 'config.json'}: expected a JSON transformers config, got an unreadable file "
                         f"({e})") from e


def read_hf_swin(path, **overrides) -> tuple[SwinConfig, dict]:
    """A `save_pretrained` directory of a Swin (config.json + model.safetensors or pytorch_model.bin), or a bare
    state-dict file (then eps 1e-5, GELU exact and no stochastic depth unless overridden) -> (cfg, params)."""
    path = Path(path)
    config = None
    if path.is_dir():
        weights = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()]
        if not (path / "config.json").exists() or not weights:
            raise ValueError(f"{path}: expected a save_pretrained directory with config.json and model.safetensors")
        config = read_hf_config(path)
        path = weights[0]
    sd = load_tensors(path)
    try:
        return from_hf_swin(sd, config, **overrides)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: {e}") from e


def write_hf_swin(params: dict, cfg: SwinConfig, directory) -> None:
    """(params, cfg) -> a `save_pretrained` directory that `SwinForImageClassification.from_pretrained` loads
    offline: config.json (eps, activation, stochastic depth) and model.safetensors, built and checked first, the
    directory written whole or not at all."""
    sd = saved_state_dict(params, cfg)
    text = hf_swin_config(cfg).to_json_string(use_diff=False)

    def write(tmp):
        save_tensors(sd, Path(tmp) / "model.safetensors")
        (Path(tmp) / "config.json").write_text(text)
    write_atomically(directory, write, directory=True)
