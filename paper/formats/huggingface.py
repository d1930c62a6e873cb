"""Hugging Face transformers' ViT (`ViTModel`, `ViTForImageClassification`): separate q, k, v and its own names.

Our name                 transformers name (as `save_pretrained` writes it; "vit." before all but the classifier
                         in a ViTForImageClassification)            transform
patch.weight (D, C·P·P)  embeddings.patch_embeddings.projection.weight  reshape to the conv kernel (D, C, P, P)
patch.bias               embeddings.patch_embeddings.projection.bias    -
cls                      embeddings.cls_token                           -
pos                      embeddings.position_embeddings                 -
blocks.i.ln1             encoder.layer.i.layernorm_before               -
blocks.i.qkv             encoder.layer.i.attention.attention.query,     rows [q; k; v]: split into three (D, D)
                           .key, .value                                 (each head-major, as ours)
blocks.i.proj            encoder.layer.i.attention.output.dense         -
blocks.i.ln2             encoder.layer.i.layernorm_after                -
blocks.i.fc1 / fc2       encoder.layer.i.intermediate.dense / output.dense  -
norm                     layernorm                                      -
pre_logits               pooler.dense (ViTModel; pooler_act "tanh")     -
head                     classifier (ViTForImageClassification)         -

transformers 5 names the modules differently in memory (`layers.i.attention.q_proj`, `.o_proj`, `mlp.fc1`, ...) and
renames on load (transformers/conversion_mapping.py); both spellings are read, the one above is written.
transformers' config defaults differ from the paper's model (eps 1e-12, not 1e-6), so the config written beside the
weights always carries the model's real eps and activation.
"""
import json
from pathlib import Path

import torch

from lowlevel import ViTConfig, check_params, param_shapes
from paper.atomic import write_atomically
from paper.reference_models import HF_ACTIVATIONS, hf_config

from .fields import num_heads_for, square_image_size
from .files import load_tensors, save_tensors

BLOCK_NAMES = {"ln1": "layernorm_before", "proj": "attention.output.dense", "ln2": "layernorm_after",
               "fc1": "intermediate.dense", "fc2": "output.dense"}
QKV = ("query", "key", "value")
GLOBAL_NAMES = {"patch": "embeddings.patch_embeddings.projection", "norm": "layernorm", "pre_logits": "pooler.dense"}
# transformers 5's in-memory names <-> the saved names above (conversion_mapping.py's "ViTModel" renames), as
# (saved, in memory) pieces of a name without "vit."
MEMORY_NAMES = [("encoder.layer.", "layers."),
                (".attention.attention.query.", ".attention.q_proj."),
                (".attention.attention.key.", ".attention.k_proj."),
                (".attention.attention.value.", ".attention.v_proj."),
                (".attention.output.dense.", ".attention.o_proj."),
                (".intermediate.dense.", ".mlp.fc1."),
                (".output.dense.", ".mlp.fc2.")]


def hf_names(name: str) -> list[str]:
    """Our parameter name -> its transformers name(s), without the "vit." prefix (three for a qkv tensor)."""
    if name.startswith("blocks."):
        _, i, part, leaf = name.split(".")
        if part == "qkv":
            return [f"encoder.layer.{i}.attention.attention.{n}.{leaf}" for n in QKV]
        return [f"encoder.layer.{i}.{BLOCK_NAMES[part]}.{leaf}"]
    part, _, leaf = name.partition(".")
    if part == "head":
        return [f"classifier.{leaf}"]
    if part in GLOBAL_NAMES:
        return [f"{GLOBAL_NAMES[part]}.{leaf}"]
    return [{"cls": "embeddings.cls_token", "pos": "embeddings.position_embeddings"}[name]]


def hf_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Every transformers tensor name (without "vit.") and its shape for `cfg`."""
    shapes = {}
    for name, shape in param_shapes(cfg).items():
        names = hf_names(name)
        if name == "patch.weight":
            shape = (cfg.dim, cfg.in_channels, cfg.patch_size, cfg.patch_size)
        elif len(names) == 3:
            shape = (shape[0] // 3, *shape[1:])
        shapes.update({n: shape for n in names})
    return shapes


def saved_name(name: str) -> str:
    """A transformers name, either spelling, with or without "vit." -> the saved spelling without "vit."."""
    name = name.removeprefix("vit.")
    for saved, memory in MEMORY_NAMES:
        name = name.replace(memory, saved)
    return name


def memory_name(name: str) -> str:
    """A saved name without "vit." -> transformers 5's in-memory spelling (without "vit.")."""
    for saved, memory in MEMORY_NAMES:
        name = name.replace(saved, memory)
    return name


def is_hf_state_dict(sd: dict) -> bool:
    return any(k.removeprefix("vit.") == "embeddings.patch_embeddings.projection.weight" for k in sd)


def config_from_hf_config(config: dict) -> dict:
    """Our config fields from a transformers config.json."""
    act = config.get("hidden_act", "gelu")
    gelu = {v: k for k, v in HF_ACTIVATIONS.items()}.get(act)
    if gelu is None:
        raise ValueError(f"hidden_act: expected one of {sorted(HF_ACTIVATIONS.values())}, got {act!r}")
    return {"image_size": config.get("image_size", 224), "patch_size": config.get("patch_size", 16),
            "in_channels": config.get("num_channels", 3), "dim": config["hidden_size"],
            "depth": config["num_hidden_layers"], "num_heads": config["num_attention_heads"],
            "mlp_dim": config["intermediate_size"], "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
            "qkv_bias": config.get("qkv_bias", True), "gelu": gelu}


def config_from_hf_state_dict(sd: dict, known: dict) -> dict:
    """What the shapes say, with `known` fields (config.json's, the caller's) taking precedence; `fields.py`
    supplies what neither tells. `sd` has normalised names."""
    d, c, p, _ = sd["embeddings.patch_embeddings.projection.weight"].shape
    has_pooler = "pooler.dense.weight" in sd and "classifier.weight" not in sd
    fields = {"patch_size": p, "in_channels": c, "dim": d,
              "depth": len({k.split(".")[2] for k in sd if k.startswith("encoder.layer.")}),
              "mlp_dim": sd["encoder.layer.0.intermediate.dense.weight"].shape[0],
              "qkv_bias": "encoder.layer.0.attention.attention.query.bias" in sd,
              "num_classes": sd["classifier.weight"].shape[0] if "classifier.weight" in sd else 0,
              "representation_size": sd["pooler.dense.weight"].shape[0] if has_pooler else None, **known}
    if "num_heads" not in fields:
        fields["num_heads"] = num_heads_for(d)
    if "image_size" not in fields:
        fields["image_size"] = square_image_size(sd["embeddings.position_embeddings"].shape[1], 1, fields["patch_size"])
    return fields


def from_hf(state_dict: dict, config: dict | None = None, **overrides) -> tuple[ViTConfig, dict]:
    """A transformers ViT state_dict (either naming, with or without "vit.") and optionally its config.json dict
    -> (cfg, params). All keys are checked (missing, unexpected, mis-shaped) before anything is converted."""
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
        parts = [sd[n].detach().clone() for n in hf_names(name)]
        params[name] = (torch.cat(parts) if len(parts) == 3 else parts[0]).reshape(shape)
    return cfg, params


def saved_state_dict(params: dict, cfg: ViTConfig) -> dict:
    """(params, cfg) -> the state_dict as `save_pretrained` writes it, names without "vit."."""
    check_params(params, param_shapes(cfg))
    sd = {}
    for name, value in params.items():
        names = hf_names(name)
        if name == "patch.weight":
            value = value.reshape(cfg.dim, cfg.in_channels, cfg.patch_size, cfg.patch_size)
        parts = value.chunk(3) if len(names) == 3 else [value]              # rows [q; k; v] -> q, k, v
        sd.update({n: t.detach().clone() for n, t in zip(names, parts, strict=True)})
    return sd


def with_prefix(sd: dict, cfg: ViTConfig) -> dict:
    """ViTForImageClassification keeps the backbone under "vit."; a ViTModel has no prefix."""
    prefix = "vit." if cfg.num_classes else ""
    return {(k if k.startswith("classifier.") else prefix + k): v for k, v in sd.items()}


def to_hf(params: dict, cfg: ViTConfig) -> tuple[dict, object]:
    """(params, cfg) -> (state_dict, transformers.ViTConfig): the state_dict in transformers 5's in-memory names,
    for `paper.reference_models.hf_vit(cfg).load_state_dict`."""
    config = hf_config(cfg)
    sd = saved_state_dict(params, cfg)
    return with_prefix({memory_name(k): v for k, v in sd.items()}, cfg), config


def pretrained_files(path) -> tuple[dict | None, Path]:
    """A `save_pretrained` directory -> (its config.json as a dict, its weights file: model.safetensors or
    pytorch_model.bin); a file -> (None, the file)."""
    path = Path(path)
    if not path.is_dir():
        return None, path
    weights = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()]
    if not (path / "config.json").exists() or not weights:
        raise ValueError(f"{path}: expected a save_pretrained directory with config.json and model.safetensors")
    try:
        return json.loads((path / "config.json").read_text()), weights[0]
    except (OSError, ValueError) as e:
        raise ValueError(f"{path / 'config.json'}: expected a JSON transformers config, got an unreadable file "
                         f"({e})") from e


def read_hf(path, **overrides) -> tuple[ViTConfig, dict]:
    """A `save_pretrained` directory (config.json + model.safetensors or pytorch_model.bin), or a bare state_dict
    file (then eps is 1e-6 and GELU exact unless overridden) -> (cfg, params)."""
    config, path = pretrained_files(path)
    if config is None:
        overrides = {"layer_norm_eps": 1e-6, **overrides}
    sd = load_tensors(path)
    try:
        return from_hf(sd, config, **overrides)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def write_hf(params: dict, cfg: ViTConfig, directory) -> None:
    """(params, cfg) -> a `save_pretrained` directory: config.json (with the real eps and activation) and
    model.safetensors, loadable offline by `transformers.ViTForImageClassification.from_pretrained(directory)`.
    Both are built and checked before anything is written, and the directory appears whole or not at all."""
    config = hf_config(cfg)
    sd = with_prefix(saved_state_dict(params, cfg), cfg)
    text = config.to_json_string(use_diff=False)

    def write(tmp):
        save_tensors(sd, Path(tmp) / "model.safetensors")
        (Path(tmp) / "config.json").write_text(text)
    write_atomically(directory, write, directory=True)
