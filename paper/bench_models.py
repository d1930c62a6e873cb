"""The contenders of the benchmark (`python -m paper.bench`): one model, four implementations, the same weights.

Each contender offers `infer(images) -> logits`, `train_logits(images)` (dropout mode, autograd recording) and
`train_step(images, labels)` (forward, cross-entropy, backward, SGD with momentum 0.9 as in the official fine-tuning
recipe), so the benchmark times all of them the same way.
"""
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from lowlevel import ViTConfig, forward, to_timm

from .reference_models import timm_vit

CONTENDERS = ("ours explicit", "ours fast", "timm", "transformers eager", "transformers sdpa")
LEARNING_RATE = 1e-3  # any small value; the benchmark measures time, not learning


@dataclass
class Contender:
    name: str
    infer: Callable[[torch.Tensor], torch.Tensor]
    train_logits: Callable[[torch.Tensor], torch.Tensor]
    parameters: list
    optimizer: torch.optim.Optimizer

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One step: logits, cross-entropy, backward, update."""
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.train_logits(images), labels).backward()
        self.optimizer.step()


def sgd(parameters: list) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=LEARNING_RATE, momentum=0.9)


def hf_config(cfg: ViTConfig):
    """transformers' ViTConfig for the same model (its default eps 1e-12 replaced by ours)."""
    from transformers import ViTConfig as HFViTConfig
    if cfg.pool != "token" or cfg.pos_embed != "learned" or cfg.representation_size or not cfg.num_classes:
        raise ValueError("cfg: transformers' ViT needs a class token, learned E_pos, a linear head and num_classes > 0")
    return HFViTConfig(hidden_size=cfg.dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                       intermediate_size=cfg.mlp_dim, hidden_act="gelu" if cfg.gelu == "exact" else "gelu_pytorch_tanh",
                       layer_norm_eps=cfg.layer_norm_eps, image_size=cfg.image_size[0], patch_size=cfg.patch_size,
                       num_channels=cfg.in_channels, qkv_bias=cfg.qkv_bias, num_labels=cfg.num_classes,
                       hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=0.0)


def hf_state_dict(params: dict, cfg: ViTConfig) -> dict:
    """Our params -> `ViTForImageClassification` (transformers 5.x names): the qkv rows split into q, k and v."""
    sd = {"vit.embeddings.cls_token": params["cls"], "vit.embeddings.position_embeddings": params["pos"],
          "vit.embeddings.patch_embeddings.projection.weight":
              params["patch.weight"].reshape(cfg.dim, cfg.in_channels, cfg.patch_size, cfg.patch_size),
          "vit.embeddings.patch_embeddings.projection.bias": params["patch.bias"],
          "vit.layernorm.weight": params["norm.weight"], "vit.layernorm.bias": params["norm.bias"],
          "classifier.weight": params["head.weight"], "classifier.bias": params["head.bias"]}
    names = {"ln1": "layernorm_before", "ln2": "layernorm_after", "proj": "attention.o_proj", "fc1": "mlp.fc1",
             "fc2": "mlp.fc2"}
    for i in range(cfg.depth):
        ours, theirs = f"blocks.{i}.", f"vit.layers.{i}."
        for part, name in names.items():
            for leaf in ("weight", "bias"):
                sd[f"{theirs}{name}.{leaf}"] = params[f"{ours}{part}.{leaf}"]
        for leaf in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            for which, tensor in zip("qkv", params[f"{ours}qkv.{leaf}"].chunk(3), strict=True):
                sd[f"{theirs}attention.{which}_proj.{leaf}"] = tensor
    return {k: v.detach().clone() for k, v in sd.items()}


def ours(params: dict, cfg: ViTConfig, fast: bool, compile: bool) -> Contender:
    params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    run = partial(forward, params, cfg=cfg, fast=fast)
    train = partial(forward, params, cfg=cfg, fast=fast, train=True)
    if compile:
        run, train = torch.compile(run), torch.compile(train)
    return Contender(f"ours {'fast' if fast else 'explicit'}", run, train, list(params.values()),
                     sgd(list(params.values())))


def module_contender(name: str, model: torch.nn.Module, compile: bool, logits_of=lambda out: out) -> Contender:
    """A torch.nn.Module contender, in eval mode for inference and train mode for the step (as our `train` flag)."""
    call = torch.compile(model) if compile else model

    def infer(images):
        model.eval()
        return logits_of(call(images))

    def logits(images):
        model.train()
        return logits_of(call(images))

    return Contender(name, infer, logits, list(model.parameters()), sgd(list(model.parameters())))


def build(name: str, params: dict, cfg: ViTConfig, *, dtype: torch.dtype, device: str, compile: bool = False):
    """The contender `name` holding `params` (float32) in `dtype` on `device`."""
    params = {k: v.to(device=device, dtype=dtype) for k, v in params.items()}
    if name in ("ours explicit", "ours fast"):
        return ours(params, cfg, fast=name == "ours fast", compile=compile)
    if name == "timm":
        model = timm_vit(cfg).to(device=device, dtype=dtype)
        model.load_state_dict(to_timm(params, cfg))
        return module_contender(name, model, compile)
    if name in ("transformers eager", "transformers sdpa"):
        from transformers import ViTForImageClassification
        config = hf_config(cfg)
        config._attn_implementation = name.split()[1]                        # "eager" or "sdpa"
        model = ViTForImageClassification(config)
        model = model.to(device=device, dtype=dtype)
        model.load_state_dict(hf_state_dict(params, cfg))
        return module_contender(name, model, compile, logits_of=lambda out: out.logits)
    raise ValueError(f"name: expected one of {CONTENDERS}, got {name!r}")
