"""Checks for 10_reading_timm_and_transformers.md, against this project's own name tables (paper/formats/timm.py,
paper/formats/huggingface.py), models built by timm and transformers, and lowlevel.forward_intermediates.
timm and transformers are imported on use: loading transformers takes seconds, and only this workbook needs it."""
import dataclasses

import torch

import lowlevel as vit
from paper.formats.huggingface import HF_ACTIVATIONS, from_hf, memory_name
from paper.formats.huggingface import hf_names as saved_hf_names
from paper.formats.timm import config_from_timm_model, from_timm, timm_key
from paper.models.weights import perturbed
from paper.references.vit import hf_vit, timm_vit

from .common import Mistake, call, expect, type_name

HINTS = {
    "norms swapped": "norm1 is the LN before attention (our ln1), norm2 the one before the MLP (our ln2)",
    "attn prefix": "the attention's layers live under attn: blocks.i.attn.qkv and blocks.i.attn.proj",
    "mlp prefix": "the MLP's layers live under mlp: blocks.i.mlp.fc1 and blocks.i.mlp.fc2",
    "kernel not reshaped": "timm's and transformers' patch embeddings are Conv2d kernels (D, C, P, P): reshape them to our "
                           "(D, C·P·P), the same numbers in the same order",
    "layernorms swapped": "layernorm_before is the LN before attention (our ln1), layernorm_after the one before the MLP "
                          "(our ln2)",
    "qkv order": "the rows of qkv are q, then k, then v: concatenate q_proj, k_proj, v_proj in that order, whatever "
                 "order the keys are listed in",
    "qkv columns": "stack q, k and v as rows: torch.cat([q, k, v], dim=0) gives (3D, D)",
    "gelu names": "transformers' \"gelu_new\" and \"gelu_pytorch_tanh\" are the tanh formula; only \"gelu\" is erf",
    "shift mean": "the largest |difference|: (a - b).abs().max(), not the mean",
    "fused": "timm computed attention with F.scaled_dot_product_attention (fused_attn is True), which never forms the "
             "probabilities, so hooks on attn_drop never ran: set block.attn.fused_attn = False first",
    "sdpa": "transformers' default \"sdpa\" attention returns no maps: switch the model to eager attention first, "
            "model.set_attn_implementation(\"eager\")",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def timm_name(name: str) -> str:
    return timm_key(name, vit.ViTConfig())


def load_timm(state_dict: dict, cfg) -> dict:
    return from_timm(state_dict, num_heads=cfg.num_heads, image_size=cfg.image_size)[1]


def hf_names(name: str) -> list[str]:
    return [memory_name(n) for n in saved_hf_names(name, vit.ViTConfig())]   # a ViT: no distillation token


def load_hf(state_dict: dict, cfg) -> dict:
    return from_hf(state_dict, num_heads=cfg.num_heads, image_size=cfg.image_size)[1]


def numerical_choices(timm_model, hf_model) -> dict:
    timm = config_from_timm_model(timm_model)
    tanh = {v: k for k, v in HF_ACTIVATIONS.items()} | {"gelu_new": "tanh"}
    return {"timm": {"layer_norm_eps": timm["layer_norm_eps"], "gelu": timm["gelu"]},
            "transformers": {"layer_norm_eps": hf_model.config.layer_norm_eps, "gelu": tanh[hf_model.config.hidden_act]}}


def logit_shift(params: dict, cfg, images, **changes) -> float:
    with torch.no_grad():
        return (vit.forward(params, images, cfg) - vit.forward(params, images, dataclasses.replace(cfg, **changes))
                ).abs().max().item()


def timm_attention_maps(model, images) -> list:
    cfg, params = from_timm(model)
    return attention_of(params, images, cfg)


def hf_attention_maps(model, images) -> list:
    cfg, params = from_hf(model.state_dict(), model.config.to_dict())
    return attention_of(params, images, cfg)


REFERENCE = {"timm_name": timm_name, "load_timm": load_timm, "hf_names": hf_names, "load_hf": load_hf,
             "numerical_choices": numerical_choices, "logit_shift": logit_shift,
             "timm_attention_maps": timm_attention_maps, "hf_attention_maps": hf_attention_maps}


# ---- checks ----------------------------------------------------------------------------------------------------

CONFIG = dict(image_size=(8, 12), patch_size=4, in_channels=3, dim=16, depth=2, num_heads=2, mlp_dim=24,
              num_classes=0)


def built(library: str, seed: int, **overrides):
    """A timm VisionTransformer or a transformers ViTModel for a small config, every weight random (float64)."""
    cfg = vit.ViTConfig(**{**CONFIG, **overrides})
    model = (timm_vit if library == "timm" else hf_vit)(cfg).double().eval()
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed * 100 + i), dtype=p.dtype))
    return cfg, model


def attention_of(params: dict, images, cfg) -> list:
    with torch.no_grad():
        return vit.forward_intermediates(params, images, cfg)[1]["attention"]


def expect_params(got, want: dict, what: str, mistakes: dict[str, dict]) -> None:
    """Converted weights: every name, every tensor exactly (a conversion copies numbers, it computes nothing)."""
    if not isinstance(got, dict) or set(got) != set(want):
        names = sorted(got) if isinstance(got, dict) else type_name(got)
        raise Mistake(f"{what}: expected the keys {sorted(want)}, got {names}", "one entry per name of "
                      "vit.param_shapes(cfg)")
    for name in want:
        expect(got[name], want[name], f"{what}: {name}", {hint: wrong[name] for hint, wrong in mistakes.items()},
               hint="find the tensor of the same role and shape in their state_dict", atol=0, rtol=0)


def expect_names(ns, function: str, names: list[str], want, wrong) -> None:
    """`function`(name) for every name, each against want(name); wrong(name) -> {wrong answer: hint}."""
    for name in names:
        got = call(ns, function, name)
        if got != want(name):
            raise Mistake(f"{function}({name!r}): expected {want(name)!r}, got {got!r}",
                          wrong(name).get(repr(got), "open the library's file: find the module that holds this "
                                                     "tensor, then its attribute name"))


def timm_wrong_names(name: str) -> dict[str, str]:
    right = timm_key(name, vit.ViTConfig())
    return {repr(right.replace("norm1", "norm2")): HINTS["norms swapped"],
            repr(right.replace("norm2", "norm1")): HINTS["norms swapped"],
            repr(right.replace("attn.", "")): HINTS["attn prefix"], repr(right.replace("mlp.", "")): HINTS["mlp prefix"]}


def task_timm(ns, output_dir):
    cfg = vit.ViTConfig(**{**CONFIG, "num_classes": 5})
    expect_names(ns, "timm_name", list(vit.param_shapes(cfg)), timm_name, timm_wrong_names)
    for seed in (11, 12):
        cfg, model = built("timm", seed)
        want = load_timm(model.state_dict(), cfg)
        kernel = {k: (v.reshape(cfg.dim, cfg.in_channels, cfg.patch_size, cfg.patch_size) if k == "patch.weight" else v)
                  for k, v in want.items()}
        swapped = {k: want[k.replace("ln1", "LN").replace("ln2", "ln1").replace("LN", "ln2")] for k in want}
        expect_params(call(ns, "load_timm", model.state_dict(), cfg), want, "load_timm",
                      {HINTS["kernel not reshaped"]: kernel, HINTS["norms swapped"]: swapped})


def task_transformers(ns, output_dir):
    cfg = vit.ViTConfig(**CONFIG)

    def wrong(name):
        right = hf_names(name)
        return {repr([n.replace("before", "X").replace("after", "before").replace("X", "after") for n in right]):
                HINTS["layernorms swapped"]}

    expect_names(ns, "hf_names", list(vit.param_shapes(cfg)), hf_names, wrong)
    for seed in (13, 14):
        cfg, model = built("transformers", seed)
        sd = model.state_dict()
        want = load_hf(sd, cfg)
        d = cfg.dim
        mistakes = {HINTS["qkv order"]: {k: (torch.cat([v[d:2 * d], v[:d], v[2 * d:]]) if ".qkv." in k else v)
                                         for k, v in want.items()},
                    HINTS["qkv columns"]: {k: (torch.cat(v.chunk(3), dim=-1).reshape(v.shape) if k.endswith("qkv.weight")
                                               else v) for k, v in want.items()},
                    HINTS["layernorms swapped"]: {k: want[k.replace("ln1", "LN").replace("ln2", "ln1")
                                                         .replace("LN", "ln2")] for k in want}}
        expect_params(call(ns, "load_hf", sd, cfg), want, "load_hf", mistakes)


def task_choices(ns, output_dir):
    for seed, eps, gelu, hf_eps, hidden_act in ((15, 1e-5, "tanh", 1e-12, "gelu_new"),
                                                (16, 1e-6, "exact", 1e-7, "gelu")):
        cfg, timm_model = built("timm", seed, layer_norm_eps=eps, gelu=gelu)
        _, hf_model = built("transformers", seed)
        hf_model.config.layer_norm_eps, hf_model.config.hidden_act = hf_eps, hidden_act
        want = numerical_choices(timm_model, hf_model)
        got = call(ns, "numerical_choices", timm_model, hf_model)
        if got != want:
            hf_gelu = got.get("transformers", {}).get("gelu") if isinstance(got, dict) and \
                isinstance(got.get("transformers"), dict) else None
            raise Mistake(f"numerical_choices: expected {want}, got {got}",
                          HINTS["gelu names"] if hidden_act == "gelu_new" and hf_gelu == "exact" else
                          "read each value from the objects: timm_model.norm.eps, timm_model.blocks[0].mlp.act, "
                          "hf_model.config.layer_norm_eps, hf_model.config.hidden_act")
    for seed, changes in ((17, {"layer_norm_eps": 0.1}), (18, {"gelu": "tanh"})):
        cfg = vit.ViTConfig(**{**CONFIG, "num_classes": 4})
        params = perturbed(vit.init_params(cfg, torch.Generator().manual_seed(seed)), seed, torch.float64, 0.3)
        images = torch.randn(3, 3, *cfg.image_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        got = call(ns, "logit_shift", params, cfg, images, **changes)
        want = logit_shift(params, cfg, images, **changes)
        with torch.no_grad():
            mean = (vit.forward(params, images, cfg) - vit.forward(params, images, dataclasses.replace(cfg, **changes))
                    ).abs().mean().item()
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, float) or abs(got - want) > 1e-9 * want:    # float64: rounding is ~1e-16 of it
            raise Mistake(f"logit_shift with {changes}: expected {want:.6g}, got {got}",
                          HINTS["shift mean"] if isinstance(got, float) and abs(got - mean) <= 1e-9 * mean else
                          "forward twice, with cfg and with dataclasses.replace(cfg, **changes); the largest |Δ|")


def expect_maps(got, want: list, what: str, mistakes: dict[str, list], atol: float) -> None:
    if not (isinstance(got, (list, tuple)) and all(isinstance(a, torch.Tensor) for a in got)):
        raise Mistake(f"{what}: expected a list of tensors, got {type_name(got)}", "return a list, one map per block")
    for hint, wrong in mistakes.items():
        if len(got) == len(wrong) != len(want):
            raise Mistake(f"{what}: expected {len(want)} maps, one per block, got {len(got)}", hint)
    if len(got) != len(want):
        raise Mistake(f"{what}: expected {len(want)} maps, one per block, got {len(got)}",
                      "record one (B, H, N, N) map per block")
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        expect(a, b, f"{what}, block {i}", hint="record the softmax probabilities, after the scaling: what "
               "attn_drop receives", atol=atol, rtol=0)


def task_hooks(ns, output_dir):
    cfg, model = built("timm", 19)
    images = torch.randn(2, 3, *cfg.image_size, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    expect_maps(call(ns, "timm_attention_maps", model, images), timm_attention_maps(model, images),
                "timm_attention_maps", {HINTS["fused"]: []}, atol=1e-10)     # a float64 model: rounding ~1e-16

    cfg, model = built("transformers", 20)
    # transformers' eager attention takes its softmax in float32 even in a float64 model: ~1e-8
    expect_maps(call(ns, "hf_attention_maps", model, images), hf_attention_maps(model, images), "hf_attention_maps",
                {HINTS["sdpa"]: []}, atol=1e-6)


TASKS = {1: task_timm, 2: task_transformers, 3: task_choices, 4: task_hooks}
