"""Checks for 07_lora.md, against lowlevel/linear.py and lowlevel/lora.py (proven equal to peft, tests/test_lora.py),
and a held-out split of the digits."""
import functools
import math

import torch
import torch.nn.functional as F

import lowlevel as vit
from lowlevel.linear import LowRank
from lowlevel.lora import LoRAConfig, adapt, adapter_shapes, deltas
from paper.heads import finetuning_head
from paper.recipes import Recipe
from paper.schedules import Schedule
from paper.train import ExplicitParams, Processes, make_optimizer, train_step

from .common import Mistake, call, expect
from .fine_tuning import digits


def layer(seed: int, lead: tuple, k: int, d: int, r: int):
    """x (*lead, k), W (d, k), b (d,), A (r, k), B (d, r) (B not zero, so that the update shows), scaling."""
    g = torch.Generator().manual_seed(seed)
    x, w, b = torch.randn(*lead, k, generator=g), torch.randn(d, k, generator=g), torch.randn(d, generator=g)
    a, bb = torch.randn(r, k, generator=g), torch.randn(d, r, generator=g)
    return x, w, b, a, bb, 0.5 + seed / 4


def task_lora_linear(ns, output_dir):
    for seed, lead, k, d, r in ((1, (4,), 6, 5, 2), (2, (2, 3), 8, 12, 3)):
        x, w, b, a, bb, s = layer(seed, lead, k, d, r)
        want = vit.linear(x, LowRank(w, a, bb, s, 0.0, (0, d)), b)
        expect(call(ns, "lora_linear", x, w, b, a, bb, s), want, "lora_linear", {
            "scale the update by `scaling` (α/r, §4.1)": F.linear(x, w, b) + x @ a.T @ bb.T,
            "the update adds to the frozen layer's output x Wᵀ + b, it does not replace it": s * x @ a.T @ bb.T,
            "the bias b is part of the frozen layer: x Wᵀ + b + scaling·x Aᵀ Bᵀ": x @ w.T + s * x @ a.T @ bb.T},
            hint="x Wᵀ + b + scaling·(x Aᵀ) Bᵀ: A (r, k) first, then B (d, r)")


def task_init(ns, output_dir):
    k, d, r = 512, 40, 8
    got = call(ns, "init_lora", k, d, r, 3)
    if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
        raise Mistake("init_lora must return (A, B)", "return the two tensors, A first")
    a, b = got
    if tuple(a.shape) != (r, k) or tuple(b.shape) != (d, r):
        raise Mistake(f"shapes: expected A {(r, k)} and B {(d, r)}, got {tuple(a.shape)} and {tuple(b.shape)}",
                      "A is (rank, in_features), B is (out_features, rank): ΔW = B A is (out, in) like W")
    if not a.any() and not b.any():
        raise Mistake("A and B are both zero", "with both zero no gradient ever reaches either (∂L/∂B ∝ x Aᵀ = 0, "
                                               "∂L/∂A ∝ B = 0): A must be random")
    if not a.any():
        raise Mistake("A is zero and B is not", "the other way round (§4.1): A random and B zero (loralib's comment "
                                                "says the opposite, its code does this)")
    if b.any():
        raise Mistake("B is not zero", "B starts at zero, so that ΔW = BA = 0 and the adapted model starts as the "
                                       "pre-trained one")
    bound = 1 / math.sqrt(k)
    if a.abs().max() > bound * (1 + 1e-6) or abs(a.std().item() - bound / math.sqrt(3)) > 0.1 * bound / math.sqrt(3):
        raise Mistake(f"A: expected U(±{bound:.4f}) values (std {bound / math.sqrt(3):.4f}), got max |A| "
                      f"{a.abs().max().item():.4f} and std {a.std().item():.4f}",
                      "Kaiming-uniform with a = √5 is U(±1/√in): uniform_(-bound, bound) with bound = 1/√in_features")
    again = call(ns, "init_lora", k, d, r, 3)[0]
    if not torch.equal(again, a):
        raise Mistake("two calls with the same seed gave different A",
                      "draw A from torch.Generator().manual_seed(seed) (uniform_(..., generator=...)), not from the "
                      "global random number generator")


def task_merge(ns, output_dir):
    for seed, k, d, r in ((4, 6, 5, 2), (5, 9, 7, 3)):
        x, w, b, a, bb, s = layer(seed, (3,), k, d, r)
        kept = w.clone()
        base, (delta,) = deltas(LowRank(w, a, bb, s, 0.0, (0, d)))
        got = call(ns, "merge", w, a, bb, s)
        expect(got, base + delta, "merge", {"scale ΔW by `scaling`": w + bb @ a}, hint="W₀ + scaling·B A")
        if not torch.equal(w, kept):
            raise Mistake("merge changed `weight` in place", "return a new tensor (weight + …), leave W₀ as it was")
        expect(F.linear(x, got, b), vit.linear(x, LowRank(w, a, bb, s, 0.0, (0, d)), b), "the merged layer's output",
               hint="the merged layer must compute what lora_linear computes")
        back = call(ns, "unmerge", base + delta, a, bb, s)
        expect(back, w, "unmerge(merge(W₀))", {"unmerge subtracts: W₀ = W − scaling·B A": base + 2 * delta},
               hint="W − scaling·B A gives W₀ back")


@functools.cache
def pretrained_base():
    """A digits ViT pre-trained on 0-4 by paper.train's step (SGD with momentum, warm-up + cosine, clipping, as the
    workbook's setup trains it), then given the new zero head for 5-9: the model the learner's fine-tuning adapts.
    Deterministic, a few seconds."""
    cfg = vit.ViTConfig(image_size=8, patch_size=2, in_channels=1, dim=32, depth=4, num_heads=4, mlp_dim=64,
                        num_classes=5)
    model = ExplicitParams(vit.init_params(cfg, torch.Generator().manual_seed(0)), cfg)
    recipe = Recipe(stage="finetune", optimizer="sgd", base_lr=0.1, total_steps=200, warmup_steps=20, decay="cosine",
                    batch_size=32)
    optimizer = make_optimizer(model.parameters(), recipe)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(0.1, 200, 20, "cosine"))
    images, labels = digits(0, 8, "train")
    g = torch.Generator().manual_seed(0)
    for _ in range(recipe.total_steps):
        batch = torch.randint(len(labels), (recipe.batch_size,), generator=g)
        train_step(model, optimizer, schedule, images[batch], labels[batch], accum_steps=1, grad_clip=1.0,
                   procs=Processes())
    return finetuning_head({k: v.detach() for k, v in model.as_dict().items()}, cfg, 5)


def task_lora_fine_tune(ns, output_dir):
    params, cfg = pretrained_base()
    kept = {k: v.clone() for k, v in params.items()}
    got = call(ns, "lora_fine_tune", dict(params), cfg, *digits(5, 8, "train"), 4, 150, 0.3)
    if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, dict) for t in got)):
        raise Mistake("lora_fine_tune must return (adapters, head)", "return the two dicts, adapters first")
    adapters, head = got
    lora = LoRAConfig(rank=4, alpha=4, targets=("q", "v"))
    want = adapter_shapes(cfg, lora)
    if set(adapters) != set(want):
        extra = sorted(set(adapters) - set(want))
        raise Mistake(f"adapters: expected {len(want)} tensors, blocks.{{i}}.q/v.lora_A/B, got "
                      f"missing {sorted(set(want) - set(adapters))[:3]}, unexpected {extra[:3]}",
                      "W_q and W_v only (§5.1), in every block: LoRAConfig(targets=('q', 'v'))" if extra else
                      "one adapter pair for q and one for v in every block, named as lowlevel.lora names them")
    for k, shape in want.items():
        if tuple(adapters[k].shape) != shape:
            raise Mistake(f"{k}: expected shape {shape}, got {tuple(adapters[k].shape)}", "rank 4: A (4, D), B (D, 4)")
    if not all(torch.equal(params[k], kept[k]) for k in kept):
        raise Mistake("the base weights changed", "freeze the base: only the adapters and the head go to the optimizer, "
                                                  "and `params` is not modified")
    if not any(v.any() for k, v in adapters.items() if k.endswith("lora_B")):
        raise Mistake("the adapters never moved (every B is still 0)",
                      "give lora_A and lora_B to the optimizer with the head, and build the forward with adapt(...)")
    images, labels = digits(5, 8, "test")
    with torch.no_grad():
        logits = vit.forward(adapt({**params, **head}, adapters, cfg, lora), images, cfg)
    accuracy = (logits.argmax(-1) == labels).float().mean().item()
    if accuracy < 0.83:
        raise Mistake(f"held-out accuracy on the digits 5-9 is {accuracy:.1%}, expected at least 83%",
                      "train the adapters and the head together at the given learning rate, α = rank (scaling 1)")


TASKS = {1: task_lora_linear, 2: task_init, 3: task_merge, 4: task_lora_fine_tune}
