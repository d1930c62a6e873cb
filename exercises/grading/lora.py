"""Checks for 07_lora.md, against lowlevel/linear.py and lowlevel/lora.py (proven equal to peft, tests/lowlevel/test_lora.py),
and a held-out split of the digits.

Tasks 1 and 3 compare float32 results at common.expect's default tolerances: every known mistake moves some entry by
far more (the scalings are 0.75 to 1.75, the weights and biases of standard deviation 1)."""
import functools
import math

import torch
import torch.nn.functional as F

import lowlevel as vit
from lowlevel.linear import LowRank
from lowlevel.lora import LoRAConfig, adapt, adapter_shapes, deltas, init_adapters
from paper.models.explicit_params import ExplicitParams
from paper.models.heads import finetuning_head
from paper.training.loop import make_optimizer, train_step
from paper.training.lora import LoRAParams
from paper.training.processes import Processes
from paper.training.recipes import Recipe
from paper.training.schedules import Schedule

from .common import IN_PLACE, Mistake, call, call_unchanged, expect, type_name
from .fine_tuning import digits

HINTS = {
    "in place": IN_PLACE,
    "unscaled": "scale the update by `scaling` (α/r, §4.1): x Wᵀ + b + scaling·x Aᵀ Bᵀ",
    "update only": "the update adds to the frozen layer's output x Wᵀ + b, it does not replace it",
    "no bias": "the bias b is part of the frozen layer: x Wᵀ + b + scaling·x Aᵀ Bᵀ",
    "A transposed": "A is (rank, in_features), B is (out_features, rank): ΔW = B A is (out, in) like W",
    "both zero": "with A and B both zero no gradient ever reaches either (∂L/∂B ∝ x Aᵀ = 0, ∂L/∂A ∝ B = 0): A must "
                 "be random",
    "swapped init": "the other way round (§4.1): A random and B zero (loralib's comment says the opposite, its code "
                    "does this)",
    "B random": "B starts at zero, so that ΔW = BA = 0 and the adapted model starts as the pre-trained one",
    "A bound": "Kaiming-uniform with a = √5 is U(±1/√in): uniform_(-bound, bound) with bound = 1/√in_features",
    "global generator": "draw A from torch.Generator().manual_seed(seed) (uniform_(..., generator=...)), not from the "
                        "global random number generator",
    "merge unscaled": "scale ΔW by `scaling`: W = W₀ + scaling·B A",
    "unmerge adds": "unmerge subtracts: W₀ = W − scaling·B A",
    "extra targets": "W_q and W_v only (§5.1), in every block: LoRAConfig(targets=('q', 'v'))",
    "adapters frozen": "give lora_A and lora_B to the optimizer with the head, and build the forward with "
                       "adapt(...)",
    "head frozen": "give the head (head.weight, head.bias) to the optimizer beside the adapters: the digits 5-9 are "
                   "new classes, and the head is trained whole",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def low_rank(weight, lora_A, lora_B, scaling: float) -> LowRank:
    """The workbook's adapted layer as a lowlevel weight: the update on every output row, no dropout."""
    return LowRank(weight, lora_A, lora_B, scaling, 0.0, (0, weight.shape[0]))


def lora_linear(x, weight, bias, lora_A, lora_B, scaling: float):
    return vit.linear(x, low_rank(weight, lora_A, lora_B, scaling), bias)


def init_lora(in_features: int, out_features: int, rank: int, seed: int):
    a = torch.nn.init.kaiming_uniform_(torch.empty(rank, in_features), a=math.sqrt(5),
                                       generator=torch.Generator().manual_seed(seed))
    return a, torch.zeros(out_features, rank)


def merge(weight, lora_A, lora_B, scaling: float):
    base, (delta,) = deltas(low_rank(weight, lora_A, lora_B, scaling))
    return base + delta


def unmerge(weight, lora_A, lora_B, scaling: float):
    merged, (delta,) = deltas(low_rank(weight, lora_A, lora_B, scaling))
    return merged - delta


def sgd(model: torch.nn.Module, images, labels, steps: int, lr: float, seed: int = 0) -> None:
    """The workbook's `sgd` made of paper.train's pieces: SGD with momentum 0.9, the global gradient norm clipped to 1,
    a linear warm-up over steps // 10 then a cosine decay, on random batches of 32 drawn with `seed`."""
    recipe = Recipe(stage="finetune", optimizer="sgd", base_lr=lr, total_steps=steps, warmup_steps=max(1, steps // 10),
                    decay="cosine", batch_size=32)
    optimizer = make_optimizer(model.parameters(), recipe)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(lr, steps, recipe.warmup_steps, "cosine"))
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(labels), (recipe.batch_size,), generator=g)
        train_step(model, optimizer, schedule, images[batch], labels[batch], accum_steps=1, grad_clip=1.0,
                   procs=Processes())


def lora_fine_tune(params: dict, cfg, images, labels, rank: int, steps: int, lr: float, seed: int = 0):
    lora = LoRAConfig(rank=rank, alpha=rank, targets=("q", "v"))
    model = LoRAParams(params, init_adapters(cfg, lora, "peft", torch.Generator().manual_seed(seed)), cfg, lora)
    sgd(model, images, labels, steps, lr, seed)
    trained = {k: v.detach() for k, v in model.as_dict().items()}
    return ({k: v for k, v in trained.items() if not k.startswith("head.")},
            {k: v for k, v in trained.items() if k.startswith("head.")})


REFERENCE = {"lora_linear": lora_linear, "init_lora": init_lora, "merge": merge, "unmerge": unmerge,
             "lora_fine_tune": lora_fine_tune}


@functools.cache
def pretrained_base():
    """A digits ViT pre-trained on 0-4 as the workbook's setup trains it, then given the new zero head for 5-9: the
    model the learner's fine-tuning adapts. Deterministic, a few seconds."""
    cfg = vit.ViTConfig(image_size=8, patch_size=2, in_channels=1, dim=32, depth=4, num_heads=4, mlp_dim=64,
                        num_classes=5)
    model = ExplicitParams(vit.init_params(cfg, torch.Generator().manual_seed(0)), cfg)
    sgd(model, *digits(0, 8, "train"), steps=600, lr=0.1)
    return finetuning_head({k: v.detach() for k, v in model.as_dict().items()}, cfg, 5)


def prepare() -> None:
    """The pre-trained base of task 4, trained in the checker's process before the learner's starts (not under the
    task's time limit)."""
    pretrained_base()


# ---- checks ----------------------------------------------------------------------------------------------------

def layer(seed: int, lead: tuple, k: int, d: int, r: int):
    """x (*lead, k), W (d, k), b (d,), A (r, k), B (d, r) (B not zero, so that the update shows), scaling."""
    g = torch.Generator().manual_seed(seed)
    x, w, b = torch.randn(*lead, k, generator=g), torch.randn(d, k, generator=g), torch.randn(d, generator=g)
    a, bb = torch.randn(r, k, generator=g), torch.randn(d, r, generator=g)
    return x, w, b, a, bb, 0.5 + seed / 4


def task_lora_linear(ns, output_dir):
    for seed, lead, k, d, r in ((1, (4,), 6, 5, 2), (2, (2, 3), 8, 12, 3)):
        x, w, b, a, bb, s = layer(seed, lead, k, d, r)
        expect(call(ns, "lora_linear", x, w, b, a, bb, s), lora_linear(x, w, b, a, bb, s), "lora_linear", {
            HINTS["unscaled"]: F.linear(x, w, b) + x @ a.T @ bb.T,
            HINTS["update only"]: s * x @ a.T @ bb.T,
            HINTS["no bias"]: x @ w.T + s * x @ a.T @ bb.T},
            hint="x Wᵀ + b + scaling·(x Aᵀ) Bᵀ: A (r, k) first, then B (d, r)")


def task_init(ns, output_dir):
    k, d, r = 512, 40, 8
    got = call(ns, "init_lora", k, d, r, 3)
    if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
        raise Mistake(f"init_lora returned {type_name(got)}, not (A, B)", "return the two tensors, A first")
    a, b = got
    if tuple(a.shape) != (r, k) or tuple(b.shape) != (d, r):
        raise Mistake(f"shapes: expected A {(r, k)} and B {(d, r)}, got {tuple(a.shape)} and {tuple(b.shape)}",
                      HINTS["A transposed"])
    if not a.any() and not b.any():
        raise Mistake("A and B are both zero", HINTS["both zero"])
    if not a.any():
        raise Mistake("A is zero and B is not", HINTS["swapped init"])
    if b.any():
        raise Mistake("B is not zero", HINTS["B random"])
    bound = 1 / math.sqrt(k)
    if a.abs().max() > bound * (1 + 1e-6) or abs(a.std().item() - bound / math.sqrt(3)) > 0.1 * bound / math.sqrt(3):
        raise Mistake(f"A: expected U(±{bound:.4f}) values (std {bound / math.sqrt(3):.4f}), got max |A| "
                      f"{a.abs().max().item():.4f} and std {a.std().item():.4f}", HINTS["A bound"])
    again = call(ns, "init_lora", k, d, r, 3)[0]
    if not torch.equal(again, a):
        raise Mistake("two calls with the same seed gave different A", HINTS["global generator"])


def task_merge(ns, output_dir):
    for seed, k, d, r in ((4, 6, 5, 2), (5, 9, 7, 3)):
        x, w, b, a, bb, s = layer(seed, (3,), k, d, r)
        got = call_unchanged(ns, "merge", w, a, bb, s)
        expect(got, merge(w, a, bb, s), "merge", {HINTS["merge unscaled"]: w + bb @ a}, hint="W₀ + scaling·B A")
        expect(F.linear(x, got, b), lora_linear(x, w, b, a, bb, s), "the merged layer's output",
               hint="the merged layer must compute what lora_linear computes")
        merged = merge(w, a, bb, s)
        expect(call(ns, "unmerge", merged, a, bb, s), w, "unmerge(merge(W₀))",
               {HINTS["unmerge adds"]: 2 * merged - w}, hint="W − scaling·B A gives W₀ back")


BUDGET = (1000, 0.1)     # the workbook's fine-tuning runs: steps, learning rate


def task_lora_fine_tune(ns, output_dir):
    params, cfg = pretrained_base()
    steps, lr = ns.get("steps"), ns.get("lr")
    if not (isinstance(steps, int) and isinstance(lr, float)):
        raise Mistake(f"the run did not leave `steps` and `lr`, got {type_name(steps)} and {type_name(lr)}",
                      "keep the task's code block after the function as it is")
    got = call_unchanged(ns, "lora_fine_tune", params, cfg, *digits(5, 8, "train"), 4, steps, lr)
    if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, dict) for t in got)):
        raise Mistake(f"lora_fine_tune returned {type_name(got)}, not (adapters, head)",
                      "return the two dicts, adapters first")
    adapters, head = got
    lora = LoRAConfig(rank=4, alpha=4, targets=("q", "v"))
    want = adapter_shapes(cfg, lora)
    if set(adapters) != set(want):
        extra = sorted(set(adapters) - set(want))
        raise Mistake(f"adapters: expected {len(want)} tensors, blocks.{{i}}.q/v.lora_A/B, got "
                      f"missing {sorted(set(want) - set(adapters))[:3]}, unexpected {extra[:3]}",
                      HINTS["extra targets"] if extra else
                      "one adapter pair for q and one for v in every block, named as lowlevel.lora names them")
    for k, shape in want.items():
        if tuple(adapters[k].shape) != shape:
            raise Mistake(f"{k}: expected shape {shape}, got {tuple(adapters[k].shape)}", "rank 4: A (4, D), B (D, 4)")
    if all(torch.equal(head.get(k, params[k]), params[k]) for k in ("head.weight", "head.bias")):
        raise Mistake("the head never moved (it is still the pre-trained one)", HINTS["head frozen"])
    if not any(v.any() for k, v in adapters.items() if k.endswith("lora_B")):
        raise Mistake("the adapters never moved (every B is still 0)", HINTS["adapters frozen"])
    images, labels = digits(5, 8, "test")
    with torch.no_grad():
        logits = vit.forward(adapt({**params, **head}, adapters, cfg, lora), images, cfg)
    accuracy = (logits.argmax(-1) == labels).float().mean().item()
    if (steps, lr) != BUDGET:
        raise Mistake(f"the runs are {steps} steps at lr {lr:g}, the workbook's {BUDGET[0]} at {BUDGET[1]:g}",
                      "keep the task's code block after the function as it is")
    if accuracy < 0.88:       # the solution's three seeds: 93.9 ± 1.0%
        raise Mistake(f"held-out accuracy on the digits 5-9 is {accuracy:.1%}, expected at least 88%",
                      "train the adapters and the head together at the given learning rate, α = rank (scaling 1), "
                      "the base frozen")


TASKS = {1: task_lora_linear, 2: task_init, 3: task_merge, 4: task_lora_fine_tune}
SECONDS = {4: 600}     # task 4 fine-tunes nine models: about a minute on one core
