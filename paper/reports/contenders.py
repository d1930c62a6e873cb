"""The contenders of the benchmark (`python -m paper.bench`): one model, four implementations, the same weights (a
Swin, in the sequence-length sweep: ours, explicit and fast).

Each contender offers `infer(images) -> logits`, `train_logits(images)` (dropout mode, autograd recording) and
`train_step(images, labels)` (forward, cross-entropy, backward, SGD with momentum 0.9 as in the official fine-tuning
recipe), so the benchmark times all of them the same way.
"""
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from lowlevel import SwinConfig, ViTConfig
from paper.formats.huggingface import to_hf
from paper.formats.timm import to_timm
from paper.models.family import family_of
from paper.references.vit import hf_vit, timm_vit

CONTENDERS = ("ours explicit", "ours fast", "timm", "transformers eager", "transformers sdpa")
# Per family (paper/models/family.py), the libraries' implementations that race ours.
LIBRARY_CONTENDERS = {"vit": CONTENDERS[2:], "swin": ()}
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


def ours(params: dict, cfg: ViTConfig | SwinConfig, fast: bool, compile: bool) -> Contender:
    params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    model = family_of(cfg).model.forward
    run = partial(model, params, cfg=cfg, fast=fast)
    train = partial(model, params, cfg=cfg, train=True, fast=fast)
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


def build(name: str, params: dict, cfg: ViTConfig | SwinConfig, *, dtype: torch.dtype, device: str,
          compile: bool = False):
    """The contender `name` holding `params` (float32) in `dtype` on `device`; a Swin has only ours."""
    params = {k: v.to(device=device, dtype=dtype) for k, v in params.items()}
    if name in ("ours explicit", "ours fast"):
        return ours(params, cfg, fast=name == "ours fast", compile=compile)
    family = family_of(cfg)
    if name not in LIBRARY_CONTENDERS[family.name]:
        raise ValueError(f"name: a {family.title} is benchmarked as one of "
                         f"{('ours explicit', 'ours fast', *LIBRARY_CONTENDERS[family.name])}, got {name!r}")
    if name == "timm":
        model = timm_vit(cfg).to(device=device, dtype=dtype)
        model.load_state_dict(to_timm(params, cfg))
        return module_contender(name, model, compile)
    model = hf_vit(cfg).to(device=device, dtype=dtype)                      # "transformers eager" or "… sdpa"
    model.load_state_dict(to_hf(params, cfg)[0])
    model.set_attn_implementation(name.split()[1])
    return module_contender(name, model, compile, logits_of=lambda out: out.logits)
