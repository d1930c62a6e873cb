"""peft's LoRA adapter directories (`save_pretrained`): adapter_config.json + adapter_model.safetensors.

Our adapter        transformers module (ViTForImageClassification;     timm module (VisionTransformer)
                   a ViTModel has no "vit." and no classifier; a
                   distilled DeiT has "deit." and cls_classifier)
blocks.i.q         vit.layers.i.attention.q_proj                        -  (peft adapts timm's fused qkv only whole,
blocks.i.k         vit.layers.i.attention.k_proj                        -   peft#691)
blocks.i.v         vit.layers.i.attention.v_proj                        -
blocks.i.qkv       -  (three modules in transformers)                   blocks.i.attn.qkv
blocks.i.proj      vit.layers.i.attention.o_proj                        blocks.i.attn.proj
blocks.i.fc1, fc2  vit.layers.i.mlp.fc1, fc2                            blocks.i.mlp.fc1, fc2
head               classifier                                           head

Tensors: base_model.model.{module}.lora_A.weight (r, in) and .lora_B.weight (out, r), as ours, no transform (peft
strips the adapter name "default" on saving, save_and_load.py). A head trained whole, peft's `modules_to_save`, is
saved as base_model.model.{classifier|cls_classifier|head}.{weight,bias}.

peft finds modules by their names in memory, so the transformers names are transformers 5's; an adapter saved against
transformers 4 names vit.encoder.layer.i.attention.attention.query and is read too. target_modules is written as the
exact module names: a bare "proj" would also match timm's patch_embed.proj (peft's rule: the name ends with "." +
target, tuners_utils.py:2376) and put a conv LoRA there. Everything our LoRA cannot express (DoRA, per-module ranks
or alphas, LoRA biases, fan_in_fan_out weights, a conv adapter) is refused, never dropped.
"""
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

from lowlevel import ViTConfig, check_params
from lowlevel.lora import BLOCK_TARGETS, LoRAConfig, adapted_layers, adapter_shapes, merge
from paper.formats.fields import agree, require, said
from paper.formats.files import json_value, load_tensors, naming, read_json, save_directory
from paper.formats.huggingface import backbone, hf_names, memory_name, without_backbone
from paper.formats.timm import timm_key

LIBRARIES = ("transformers", "timm")
CONFIG, WEIGHTS, PREFIX = "adapter_config.json", "adapter_model.safetensors", "base_model.model."
# peft options our LoRA has no counterpart for, and the one value it can read (peft/tuners/lora/config.py defaults).
UNSUPPORTED = {"use_dora": False, "lora_bias": False, "bias": "none", "fan_in_fan_out": False, "rank_pattern": {},
               "alpha_pattern": {}, "target_parameters": None}


def head_module(cfg: ViTConfig, library: str) -> str:
    """The classifier's module name in `library`: transformers' classifier (a DeiT's cls_classifier), timm's head."""
    return hf_names("head.weight", cfg)[0].removesuffix(".weight") if library == "transformers" else "head"


def module_names(name: str, cfg: ViTConfig, library: str) -> list[str]:
    """Our adapter name -> the module names, without the backbone's prefix ("vit.", "deit."), that peft gives it in
    `library`: the one written first, then an older spelling that is also read. [] where the library has no such
    module."""
    if name == "head":
        return [head_module(cfg, library)]
    _, i, target = name.split(".")
    if library == "timm":
        return [] if target in ("q", "k", "v") else [timm_key(f"blocks.{i}.{target}.weight", cfg).removesuffix(".weight")]
    if target == "qkv":
        return []
    part, pick = ("qkv", ("q", "k", "v").index(target)) if target in ("q", "k", "v") else (target, 0)
    saved = hf_names(f"blocks.{i}.{part}.weight", cfg)[pick]                       # transformers 4's name
    return [memory_name(saved).removesuffix(".weight"), saved.removesuffix(".weight")]


def adapter_names(cfg: ViTConfig, library: str) -> dict[str, str]:
    """Every module name (without the backbone's prefix) peft may save an adapter under in `library` -> our adapter name."""
    layers = [f"blocks.{i}.{t}" for i in range(cfg.depth) for t in BLOCK_TARGETS] + ["head"] * bool(cfg.num_classes)
    return {m: name for name in layers for m in module_names(name, cfg, library)}


def write_peft(adapters: dict, cfg: ViTConfig, lora: LoRAConfig, directory, library: str,
               head: dict | None = None) -> None:
    """Our adapters (and a head trained whole, {"head.weight", "head.bias"}) -> a peft adapter directory for
    `library`'s model of `cfg`, which `PeftModel.from_pretrained(model, directory)` loads. Atomic; nothing is written
    if anything is refused."""
    if library not in LIBRARIES:
        raise ValueError(f"library: expected one of {LIBRARIES}, got {library!r}")
    check_params(adapters, adapter_shapes(cfg, lora), what="adapters")
    prefix = f"{backbone(cfg)}." if library == "transformers" and cfg.num_classes else ""
    modules, sd = [], {}
    for name in adapted_layers(cfg, lora):
        found = module_names(name, cfg, library)
        if not found:
            other = "transformers" if library == "timm" else "timm"
            raise ValueError(f"targets: peft on the {library} ViT has no module for adapter {name!r} (timm fuses q, k, v "
                             f"into one qkv that peft adapts only whole; transformers keeps them apart); write it "
                             f"for {other}, or merge it into the weights (lora.merge)")
        module = found[0] if name == "head" else prefix + found[0]
        modules.append(module)
        sd.update({f"{PREFIX}{module}.{ab}.weight": adapters[f"{name}.{ab}"] for ab in ("lora_A", "lora_B")})
    if head is not None:
        width, classes = cfg.representation_size or cfg.dim, head["head.weight"].shape[0]
        check_params(head, {"head.weight": (classes, width), "head.bias": (classes,)}, what="head")
        sd.update({f"{PREFIX}{head_module(cfg, library)}.{leaf}": head[f"head.{leaf}"] for leaf in ("weight", "bias")})
    alpha = int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
              "r": lora.rank, "lora_alpha": alpha, "use_rslora": lora.rslora, "lora_dropout": lora.dropout,
              "target_modules": modules, "modules_to_save": None if head is None else [head_module(cfg, library)],
              "init_lora_weights": True, **UNSUPPORTED}

    save_directory(directory, WEIGHTS, sd, {CONFIG: json.dumps(config, indent=2, sort_keys=True) + "\n"})


def peft_matches(config: dict, module: str) -> bool:
    """Whether peft puts an adapter on `module` (its name in the model, as the adapter file spells it), by peft's own
    rule (tuners_utils.check_target_module_exists: exclude_modules and modules_to_save win; a string target_modules is
    a regex the whole name must match, a list names modules exactly or as the name's last dotted parts, and then
    layers_to_transform keeps the modules of those layers)."""
    from peft.tuners.tuners_utils import check_target_module_exists  # seconds to import: only when an adapter is read
    fields = ("exclude_modules", "modules_to_save", "target_modules", "layers_to_transform", "layers_pattern")
    return bool(check_target_module_exists(SimpleNamespace(target_parameters=None, **{k: config.get(k) for k in fields}),
                                           module))


TARGETING = {"target_modules": ("a string (a regex) or a list of strings", lambda v: isinstance(v, str) or (
                 isinstance(v, list) and all(isinstance(x, str) for x in v))),
             "exclude_modules": ("null, a string or a list of strings", lambda v: v is None or isinstance(v, str) or (
                 isinstance(v, list) and all(isinstance(x, str) for x in v))),
             "modules_to_save": ("null or a list of strings", lambda v: v is None or (
                 isinstance(v, list) and all(isinstance(x, str) for x in v))),
             "layers_to_transform": ("null, an integer or a list of integers", lambda v: v is None or (
                 isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, list) and all(
                 isinstance(x, int) and not isinstance(x, bool) for x in v))),
             "layers_pattern": ("null, a string or a list of strings", lambda v: v is None or isinstance(v, str) or (
                 isinstance(v, list) and all(isinstance(x, str) for x in v)))}


def check_targeting(config: dict, spelled: dict, adapted: set, head: str | None, where) -> None:
    """Refuse an adapter_config.json whose target_modules (with exclude_modules, modules_to_save, layers_to_transform
    and layers_pattern, by peft's rules: `peft_matches`) picks other modules than those holding adapter tensors, or
    whose modules_to_save disagrees with the head saved whole. `spelled` maps each of our adapter names to its module
    name as the file spells it, `head` is the classifier's module name when its weights are saved whole."""
    for key, (kind, test) in TARGETING.items():
        if key in config and not test(config[key]):
            raise ValueError(f"{where}: {key}: expected {kind}, got {config[key]!r}")
    if config.get("target_modules") is None:
        return
    used = [k for k in ("exclude_modules", "layers_to_transform", "layers_pattern") if config.get(k)]
    key = "target_modules" + (f" (with {', '.join(used)})" if used else "")
    for name, module in spelled.items():
        if peft_matches(config, module) != (name in adapted):
            held = "no adapter of it" if name not in adapted else "its adapter, which it does not match"
            raise ValueError(f"{where}: {key} says {said(config['target_modules'])}, which "
                             f"{'matches' if name not in adapted else 'leaves out'} {module}; the weights hold {held}")
    saves = config.get("modules_to_save") or []
    classifier = spelled.get("head") or head
    if head is not None and not any(head.endswith(m) for m in saves):
        raise ValueError(f"{where}: modules_to_save says {said(config.get('modules_to_save'))}, the weights hold {head} "
                         f"saved whole")
    for m in saves:
        if head is None or not head.endswith(m):
            raise ValueError(f"{where}: modules_to_save says {said(config['modules_to_save'])}, the weights hold no "
                             f"module {m!r} saved whole" + (f" (the classifier is {classifier})" if classifier else ""))


def read_peft(directory, cfg: ViTConfig) -> tuple[LoRAConfig, dict, dict | None]:
    """A peft LoRA directory for a transformers or timm ViT of `cfg` -> (LoRA config, adapters, the head trained
    whole or None). Every tensor must map to one of our adapters or to the head, every option must be one we compute;
    anything else is refused, naming it."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise ValueError(f"{directory}: expected a peft adapter directory with {CONFIG} and {WEIGHTS}")
    config = read_json(directory / CONFIG)
    fmt = f"{directory / CONFIG}: this project's LoRA"
    require(fmt, SimpleNamespace(peft_type=config.get("peft_type")), peft_type="LORA")
    require(fmt, SimpleNamespace(**{k: config.get(k, v) for k, v in UNSUPPORTED.items()}), **UNSUPPORTED)
    sd = load_tensors(directory / WEIGHTS)
    keys = {saved: without_backbone(saved.removeprefix(PREFIX)) for saved in sd}   # module names as in memory
    library = "timm" if any(k.startswith("blocks.") for k in keys.values()) else "transformers"
    classifier = head_module(cfg, library)
    names, heads = adapter_names(cfg, library), {f"{classifier}.{leaf}": f"head.{leaf}" for leaf in ("weight", "bias")}
    adapters, head = {}, {}
    for saved, tensor in sd.items():
        key = keys[saved]
        module, _, leaf = key.rpartition(".lora_")
        if module in names and leaf in ("A.weight", "B.weight"):
            adapters[f"{names[module]}.lora_{leaf[0]}"] = tensor
        elif key in heads:
            head[heads[key]] = tensor
        else:
            trap = " (peft's bare target 'proj' also matches timm's patch_embed.proj)" if "patch_embed" in key else ""
            raise ValueError(f"{directory / WEIGHTS}: expected LoRA tensors of the linear layers of the {library} ViT "
                             f"of this config, or its {classifier}, got {saved!r}{trap}")
    layers = {k.rsplit(".", 1)[0] for k in adapters}
    targets = tuple(t for t in (*BLOCK_TARGETS, "head") if any(n.rsplit(".", 1)[-1] == t for n in layers))
    blocks = sorted({int(n.split(".")[1]) for n in layers if n.startswith("blocks.")})
    def value(key, kind, default):                                                  # peft's defaults
        return json_value(config, key, kind, directory / CONFIG, default)

    with naming(directory / CONFIG):
        lora = LoRAConfig(rank=value("r", "an integer", 8), alpha=value("lora_alpha", "a finite number", 8),
                          targets=targets, blocks=None if blocks == list(range(cfg.depth)) else tuple(blocks),
                          rslora=value("use_rslora", "true or false", False),
                          dropout=value("lora_dropout", "a finite number", 0.0))
        shapes = adapter_shapes(cfg, lora)
    ranks = {t.shape[0] for k, t in adapters.items() if k.endswith(".lora_A") and t.dim() == 2}
    if len(ranks) == 1:
        agree(directory / CONFIG, [("rank", "r", lora.rank, lora.rank)], {"rank": ranks.pop()})
    modules = {names[keys[saved].rpartition(".lora_")[0]]: saved.removeprefix(PREFIX).rpartition(".lora_")[0]
               for saved in sd if keys[saved].rpartition(".lora_")[0] in names}
    prefix = next((p for p in (f"{b}." for b in ("vit", "deit")) if any(k.startswith(PREFIX + p) for k in sd)), "")
    old = any("encoder.layer." in k for k in sd)                        # transformers 4's spelling
    spelled = {name: (found[0] if name == "head" else prefix + found[min(old, len(found) - 1)])
               for name in dict.fromkeys(names.values()) if (found := module_names(name, cfg, library))}
    check_targeting(config, {**spelled, **modules}, set(modules), classifier if head else None, directory / CONFIG)
    check_params(adapters, shapes, what=f"{directory / WEIGHTS}: adapters")
    if head and len(head) != 2:
        raise ValueError(f"{directory / WEIGHTS}: expected the head's weight and bias, got only {sorted(head)}")
    return lora, adapters, head or None


def apply_peft(params: dict, cfg: ViTConfig, directory) -> tuple[ViTConfig, dict]:
    """A base model and a peft adapter directory -> (cfg, params) of the fine-tuned model: the adapters merged into
    the weights (lora.merge) and, if the directory has one, the head trained whole in place of the base's."""
    if not isinstance(cfg, ViTConfig):
        raise ValueError(f"--adapter: expected a ViT or DeiT base (our LoRA adapts the ViT's dense layers), "
                         f"got a {type(cfg).__name__}")
    lora, adapters, head = read_peft(directory, cfg)
    dtype = params["norm.weight"].dtype                       # the base's: peft merges ΔW into the weight's dtype
    params = merge(params, {k: v.to(dtype) for k, v in adapters.items()}, cfg, lora)
    if head is not None:
        cfg = dataclasses.replace(cfg, num_classes=head["head.weight"].shape[0])
        params = {**params, **{k: v.to(dtype) for k, v in head.items()}}
    return cfg, params
