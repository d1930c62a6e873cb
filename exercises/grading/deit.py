"""Checks for 06_deit.md, against lowlevel's distilled model (position.py, model.py `heads` and `fuse`),
paper/training/distillation.py and torch.optim.AdamW, and the workbook's own run on a held-out split of the digits.

The functions of tasks 1-4 are checked on float64 inputs, so that each tolerance sits far below the smallest effect
of a known mistake (LN's default eps 1e-5 in place of the 1e-6 given, AdamW's default weight decay 0.01 in place of
0.05) and far above rounding (~1e-15; Adam divides by √v + 1e-8, which raises the rounding of a near-zero gradient
to ~1e-11 at most)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import lowlevel as vit
from lowlevel.model import heads
from lowlevel.position import prepend_prefix_tokens
from paper.models.weights import perturbed
from paper.training import distillation as kd

from .common import Mistake, call, close, expect, type_name

HINTS = {
    # Task 1
    "dist first": "the class token comes first, the distillation token second: [x_class; x_distil; x]",
    "dist last": "the distillation token goes right after the class token, not after the patches (lucidrains' "
                 "vit-pytorch appends it last)",
    "dist last no pos": "the distillation token goes right after the class token, with its own row of E_pos "
                        "(timm, transformers and the official code); lucidrains' vit-pytorch appends it last, "
                        "without one",
    # Task 2
    "no final ln": "apply the final LN (eq. (4)) to the two tokens before the heads",
    "tokens swapped": "the class head reads token 0 (x_class) and the distillation head token 1 (x_distil)",
    "heads swapped": "each token has its own head: head for the class token, head_dist for the distillation token",
    "default eps": "LN takes the eps given: F.layer_norm(..., eps=eps), not its default 1e-5",
    "logits summed": "average the two heads' logits, (Z_cls + Z_dist)/2: summed, their scale doubles",
    "one head": "both heads take part in the prediction: (Z_cls + Z_dist)/2, not one of them alone",
    "softmax fusion": "at test time timm, transformers and the official code average the logits, (Z_cls + Z_dist)/2; "
                      "the paper's sum of the two softmaxes (ViTConfig(fusion=\"softmax_sum\")) is another function",
    # Task 3
    "hard true labels": "the distillation head learns the teacher's decision y_t = argmax Z_t, not the true labels",
    "hard swapped": "the class head learns the true labels and the distillation head the teacher, not the other way "
                    "round",
    "hard probabilities": "hard distillation uses the teacher's argmax as a label, not its probabilities",
    "hard unweighted": "eq. (3) weighs the two cross-entropies ½ each: ½ CE(Z_cls, y) + ½ CE(Z_dist, y_t)",
    "no tau squared": "multiply the KL by τ², which keeps its gradients' scale as τ changes",
    "kl numel": "average the KL over the batch only (sum over the classes): dividing by batch × classes "
                "(F.kl_div's reduction=\"mean\") is the official code's legacy reduction, K times smaller",
    "kl summed": "average the KL over the batch: summed over it (reduction=\"sum\"), it grows with the batch size",
    "kl reversed": "the KL is KL(teacher ‖ student) = Σ p_t (log p_t − log p_s), the teacher's probabilities weighing "
                   "the terms",
    "no temperature": "divide both logits by τ before the softmax: ψ(Z_t/τ) and ψ(Z_dist/τ)",
    "lambda swapped": "λ weighs the teacher's term: (1 − λ) CE(Z_cls, y) + λ τ² KL, not λ CE + (1 − λ) τ² KL",
    "soft swapped": "the soft term compares the distillation head with the teacher, and the class head learns the "
                    "true labels",
    # Task 4
    "no zero_grad": "zero the gradients before each step (optimizer.zero_grad()): they accumulate otherwise",
    "no teacher": "the distillation head learns the teacher's outputs, through your loss of Task 3",
    "kind ignored": "kind chooses the loss: hard_distillation_loss for kind=\"hard\", soft_distillation_loss(…, tau, "
                    "lam) for kind=\"soft\"",
    "tau lam dropped": "pass tau and lam on to soft_distillation_loss: its defaults are the paper's τ = 3, λ = 0.1, "
                       "not the ones distill was given",
    "weight decay": "AdamW(lr=lr, weight_decay=0.05), DeiT's weight decay: AdamW's default is 0.01",
    "no schedule": "decay the learning rate along a cosine: CosineAnnealingLR(optimizer, steps), its step() after "
                   "each optimizer.step()",
    "adam": "AdamW, not Adam: AdamW's weight decay is decoupled, p ← p − lr·0.05·p, where Adam adds 0.05·p to the "
            "gradient",
    "optimizer per step": "make the optimizer once, before the loop: a new AdamW each step forgets its moments",
    "params modified": "leave the params given as they were: train copies, v.detach().clone().requires_grad_(True)",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def embed_tokens(x: torch.Tensor, cls: torch.Tensor, dist: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return prepend_prefix_tokens(x, torch.cat([cls, dist], dim=1)) + pos


def heads_config(params: dict, eps: float) -> vit.ViTConfig:
    """A distilled config whose `heads` reads these params: only dim, num_classes and the eps matter."""
    k, d = params["head.weight"].shape
    return vit.ViTConfig(image_size=1, patch_size=1, in_channels=1, dim=d, depth=1, num_heads=1, mlp_dim=1,
                         num_classes=k, distilled=True, layer_norm_eps=eps)


def deit_heads(z: torch.Tensor, params: dict, eps: float):
    return heads(params, z, heads_config(params, eps))


def evaluation_logits(class_logits: torch.Tensor, distillation_logits: torch.Tensor) -> torch.Tensor:
    cfg = vit.ViTConfig(image_size=1, patch_size=1, in_channels=1, dim=1, depth=1, num_heads=1, mlp_dim=1,
                        num_classes=class_logits.shape[-1], distilled=True)      # fusion="mean_logits", the default
    return vit.fuse(class_logits, distillation_logits, cfg)


def hard_distillation_loss(class_logits, distillation_logits, teacher_logits, labels) -> torch.Tensor:
    return kd.distillation_loss(class_logits, distillation_logits, teacher_logits, labels, kd.Distillation("hard"))


def soft_distillation_loss(class_logits, distillation_logits, teacher_logits, labels, tau: float = 3.0,
                           lam: float = 0.1) -> torch.Tensor:
    return kd.distillation_loss(class_logits, distillation_logits, teacher_logits, labels,
                                kd.Distillation("soft", lam, tau))


def make_optimizer(p: dict, lr: float, mistake: str | None) -> torch.optim.Optimizer:
    if mistake == "adam":
        return torch.optim.Adam(p.values(), lr=lr, weight_decay=0.05)
    return torch.optim.AdamW(p.values(), lr=lr, weight_decay=0.01 if mistake == "weight decay" else 0.05)


def distillation_run(params: dict, cfg, teacher, images, labels, steps: int, lr: float, kind: str, tau: float,
                     lam: float, batch_size: int, seed: int, mistake: str | None = None) -> dict:
    """`steps` AdamW steps on random batches, the learning rate decaying along a cosine, on the paper's objective as
    paper/training/distillation.py writes it; or the same run with one deliberate mistake (a HINTS key)."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    optimizer = make_optimizer(p, lr, mistake)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    with torch.no_grad():
        teacher_logits = teacher(images)
    if mistake == "kind ignored":
        kind = "soft" if kind == "hard" else "hard"
    if mistake == "tau lam dropped":
        tau, lam = kd.PAPER_TAU, kd.PAPER_LAMBDA["soft"]
    distillation = kd.Distillation(kind, lam if kind == "soft" else None, tau)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        if mistake == "optimizer per step" and step > 0:  # a fresh AdamW at lr each step (the first step's is the one
            optimizer = make_optimizer(p, lr, mistake)   # made above); the schedule steps that first one alone
        batch = torch.randint(len(labels), (batch_size,), generator=g)
        if mistake != "no zero_grad":
            optimizer.zero_grad()
        class_logits, distillation_logits = vit.forward_heads(p, images[batch], cfg, train=True)
        if mistake == "no teacher":
            loss = F.cross_entropy(class_logits, labels[batch]) + F.cross_entropy(distillation_logits, labels[batch])
        else:
            loss = kd.distillation_loss(class_logits, distillation_logits, teacher_logits[batch], labels[batch],
                                        distillation)
        loss.backward()
        optimizer.step()
        if mistake != "no schedule":
            schedule.step()
    return {k: v.detach() for k, v in p.items()}


def distill(params: dict, cfg, teacher, images, labels, steps: int, lr: float = 3e-3, kind: str = "hard",
            tau: float = 3.0, lam: float = 0.1, batch_size: int = 128, seed: int = 0) -> dict:
    return distillation_run(params, cfg, teacher, images, labels, steps, lr, kind, tau, lam, batch_size, seed)


REFERENCE = {"embed_tokens": embed_tokens, "deit_heads": deit_heads, "evaluation_logits": evaluation_logits,
             "hard_distillation_loss": hard_distillation_loss, "soft_distillation_loss": soft_distillation_loss,
             "distill": distill}


# ---- checks ----------------------------------------------------------------------------------------------------

EXACT = dict(atol=1e-12, rtol=0)       # float64 concatenations and sums of two terms: exact up to rounding


def expect_one_of(got, want, what: str, mistakes: list[tuple[str, torch.Tensor]], *, hint: str, **tolerance):
    """`expect` with several wrong variants per hint: the first variant `got` equals names the mistake."""
    if close(got, want, tolerance["atol"], tolerance["rtol"]):
        return
    for mistake_hint, wrong in mistakes:
        if close(got, wrong, tolerance["atol"], tolerance["rtol"]):
            expect(got, want, what, {mistake_hint: wrong}, hint=hint, **tolerance)
    expect(got, want, what, hint=hint, **tolerance)


def task_token(ns, output_dir):
    g = torch.Generator().manual_seed(601)
    for b, n, d in [(2, 6, 8), (1, 4, 4), (3, 9, 12)]:
        x, cls, dist = (torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((b, n, d), (1, 1, d),
                                                                                           (1, 1, d)))
        pos = torch.randn(1, n + 2, d, generator=g, dtype=torch.float64)
        cls_b, dist_b = cls.expand(b, -1, -1), dist.expand(b, -1, -1)
        expect(call(ns, "embed_tokens", x, cls, dist, pos), embed_tokens(x, cls, dist, pos),
               f"embed_tokens of x {(b, n, d)}", {
                   HINTS["dist first"]: torch.cat([dist_b, cls_b, x], 1) + pos,
                   HINTS["dist last no pos"]: torch.cat([cls_b + pos[:, :1], x + pos[:, 1:n + 1], dist_b], 1),
                   HINTS["dist last"]: torch.cat([cls_b, x, dist_b], 1) + pos},
               hint="z_0 = [x_class; x_distil; x] + E_pos: (B, N+2, D)", **EXACT)


def random_heads(seed: int, b: int, t: int, d: int, k: int, scale: float):
    """Final-LN and head parameters, and z_L with features of spread `scale`, float64."""
    g = torch.Generator().manual_seed(seed)
    params = {name: torch.randn(shape, generator=g, dtype=torch.float64)
              for name, shape in (("norm.weight", (d,)), ("norm.bias", (d,)), ("head.weight", (k, d)),
                                  ("head.bias", (k,)), ("head_dist.weight", (k, d)), ("head_dist.bias", (k,)))}
    params["norm.weight"] += 1
    return params, scale * torch.randn(b, t, d, generator=g, dtype=torch.float64)


def linear_head(params: dict, name: str, tokens: torch.Tensor) -> torch.Tensor:
    return F.linear(tokens, params[f"{name}.weight"], params[f"{name}.bias"])


def task_heads(ns, output_dir):
    # the spread 0.05 gives a variance of 0.0025, where LN's default eps 1e-5 in place of 1e-6 moves the logits by
    # ~1e-3; the tolerance, 1e-10, is far below that and far above float64 rounding
    tolerance = dict(atol=1e-10, rtol=0)
    for seed, (b, t, d, k, scale) in enumerate([(2, 7, 8, 5, 3.0), (1, 4, 6, 3, 0.05), (3, 11, 16, 10, 1.0)]):
        params, z = random_heads(602 + seed, b, t, d, k, scale)
        got = call(ns, "deit_heads", z, params, 1e-6)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Mistake(f"deit_heads returned {type_name(got)}, not (class logits, distillation logits)",
                          "return the two, in order: (Z_cls, Z_dist)")
        want = deit_heads(z, params, 1e-6)
        normed = F.layer_norm(z, (d,), params["norm.weight"], params["norm.bias"], 1e-6)
        default_eps = F.layer_norm(z, (d,), params["norm.weight"], params["norm.bias"])
        for i, (what, name, other) in enumerate((("class", "head", "head_dist"), ("distillation", "head_dist", "head"))):
            expect(got[i], want[i], f"the {what} logits of z {(b, t, d)}", {
                HINTS["no final ln"]: linear_head(params, name, z[:, i]),
                HINTS["tokens swapped"]: linear_head(params, name, normed[:, 1 - i]),
                HINTS["heads swapped"]: linear_head(params, other, normed[:, i]),
                HINTS["default eps"]: linear_head(params, name, default_eps[:, i])},
                hint="Z = LN(z_L[:, i]) Wᵀ + b with the token's own head, LN over the last axis with the eps given",
                **tolerance)
        class_logits, distillation_logits = want
        probs = class_logits.softmax(-1), distillation_logits.softmax(-1)
        softmax_cfg = vit.ViTConfig(image_size=1, patch_size=1, in_channels=1, dim=1, depth=1, num_heads=1, mlp_dim=1,
                                    num_classes=k, distilled=True, fusion="softmax_sum")
        expect_one_of(call(ns, "evaluation_logits", class_logits, distillation_logits),
                      evaluation_logits(class_logits, distillation_logits), f"evaluation_logits of (B, K) = {(b, k)}", [
                          (HINTS["logits summed"], class_logits + distillation_logits),
                          (HINTS["one head"], class_logits),
                          (HINTS["one head"], distillation_logits),
                          (HINTS["softmax fusion"], probs[0] + probs[1]),
                          (HINTS["softmax fusion"], (probs[0] + probs[1]) / 2),
                          (HINTS["softmax fusion"], vit.fuse(class_logits, distillation_logits, softmax_cfg))],
                      hint="the mean of the two heads' logits, as timm, transformers and the official code compute it",
                      **tolerance)


def teacher_and_labels(seed: int, b: int = 8, k: int = 6):
    g = torch.Generator().manual_seed(seed)
    logits = [3 * torch.randn(b, k, generator=g, dtype=torch.float64) for _ in range(3)]
    return (*logits, torch.randint(0, k, (b,), generator=g))


def kl_per_sample(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """Σ_c p_t (log p_t − log p_s) at temperature τ: (B, K) twice -> (B,)."""
    log_t, log_s = F.log_softmax(teacher / tau, -1), F.log_softmax(student / tau, -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1)


def task_losses(ns, output_dir):
    # every mistake changes the loss by a factor (½, τ², K, B, λ/(1 − λ)) or is another function: by 1e-2 or more
    # here; the tolerance, 1e-10, is far below that and far above float64 rounding
    tolerance = dict(atol=1e-10, rtol=0)
    for seed in (603, 604):
        class_logits, distillation_logits, teacher_logits, labels = args = teacher_and_labels(seed)
        teacher_labels = teacher_logits.argmax(-1)
        ce_class, ce_dist = (F.cross_entropy(z, labels) for z in (class_logits, distillation_logits))
        ce_class_teacher, ce_dist_teacher = (F.cross_entropy(z, teacher_labels)
                                             for z in (class_logits, distillation_logits))
        expect(call(ns, "hard_distillation_loss", *args), hard_distillation_loss(*args), "hard_distillation_loss", {
            HINTS["hard true labels"]: 0.5 * ce_class + 0.5 * ce_dist,
            HINTS["hard swapped"]: 0.5 * ce_class_teacher + 0.5 * ce_dist,
            HINTS["hard probabilities"]: 0.5 * ce_class + 0.5 * F.cross_entropy(distillation_logits,
                                                                                teacher_logits.softmax(-1)),
            HINTS["hard unweighted"]: ce_class + ce_dist_teacher},
            hint="eq. (3): ½ CE(Z_cls, y) + ½ CE(Z_dist, argmax Z_t)", **tolerance)
        k = teacher_logits.shape[-1]
        for tau, lam in ((3.0, 0.1), (2.0, 0.3)):
            kl = kl_per_sample(distillation_logits, teacher_logits, tau)
            expect(call(ns, "soft_distillation_loss", *args, tau, lam), soft_distillation_loss(*args, tau, lam),
                   f"soft_distillation_loss with τ = {tau}, λ = {lam}", {
                       HINTS["no tau squared"]: (1 - lam) * ce_class + lam * kl.mean(),
                       HINTS["kl numel"]: (1 - lam) * ce_class + lam * tau ** 2 * kl.mean() / k,
                       HINTS["kl summed"]: (1 - lam) * ce_class + lam * tau ** 2 * kl.sum(),
                       HINTS["kl reversed"]: (1 - lam) * ce_class + lam * tau ** 2 *
                       kl_per_sample(teacher_logits, distillation_logits, tau).mean(),
                       HINTS["no temperature"]: (1 - lam) * ce_class + lam * tau ** 2 *
                       kl_per_sample(distillation_logits, teacher_logits, 1.0).mean(),
                       HINTS["lambda swapped"]: lam * ce_class + (1 - lam) * tau ** 2 * kl.mean(),
                       HINTS["soft swapped"]: (1 - lam) * ce_dist + lam * tau ** 2 *
                       kl_per_sample(class_logits, teacher_logits, tau).mean()},
                   hint="eq. (2): (1 − λ) CE(Z_cls, y) + λ τ² KL(ψ(Z_t/τ) ‖ ψ(Z_dist/τ)), batch-averaged",
                   **tolerance)


def linear_teacher(w: torch.Tensor) -> nn.Module:
    """A frozen teacher the learner has not seen: a linear map of the flattened images, (B, 1, 8, 8) -> (B, K)."""
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(w.shape[0], w.shape[1], bias=False)).to(w.dtype)
    with torch.no_grad():
        teacher[1].weight.copy_(w.T)
    teacher.eval()
    return teacher.requires_grad_(False)


RUN_MISTAKES = ("no zero_grad", "no teacher", "kind ignored", "tau lam dropped", "weight decay", "adam",
                "optimizer per step", "no schedule")


def check_distill(ns) -> None:
    """Three steps of each kind on batches of 4 of 6 images of a tiny float64 model, parameter by parameter, against
    the reference and every known mistake. Adam's first steps are nearly sign(g)·lr, whatever the loss's scale: the
    parameters that both heads' gradients reach (the distillation token, the blocks) are compared too, where the
    balance of the two terms shows. 1e-9: far above rounding (≤ 1e-11, module docstring), far below the smallest
    effect of a known mistake (the weight decay 0.01 for 0.05, lr · 0.04 · |p| a step, moves each of these tensors by
    1e-4 to 7e-4 in the three steps of the cosine schedule; every other mistake by 1e-3 or more)."""
    g = torch.Generator().manual_seed(605)
    cfg = vit.ViTConfig(image_size=8, patch_size=4, in_channels=1, dim=16, depth=1, num_heads=2, mlp_dim=24,
                        num_classes=3, distilled=True)
    params = perturbed(vit.init_params(cfg, g), 605, torch.float64, scale=0.1)
    teacher = linear_teacher(4 * torch.randn(64, 3, generator=g, dtype=torch.float64))
    images = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (6,), generator=g)
    for kind in ("hard", "soft"):
        # τ and λ not the defaults: passing them shows; batches of 4 of the 6 images
        run = dict(steps=3, lr=0.01, kind=kind, tau=2.0, lam=0.3, batch_size=4, seed=1)
        got = call(ns, "distill", params, cfg, teacher, images, labels, **run)
        if not isinstance(got, dict):
            raise Mistake(f"distill returned {type_name(got)}, expected the trained params dict",
                          "return {name: tensor} like the params it was given")
        want = {m: distillation_run(params, cfg, teacher, images, labels, mistake=m, **run)
                for m in (None, *RUN_MISTAKES)}
        for k in ("head.weight", "head_dist.weight", "dist", "cls", "blocks.0.qkv.weight", "patch.weight"):
            expect(got.get(k), want[None][k], f"{k} after three {kind} distillation steps",
                   {HINTS[m]: want[m][k] for m in RUN_MISTAKES},
                   hint="per step: a batch from the generator, zero_grad, both heads from vit.forward_heads(..., "
                        "train=True), your loss against the teacher's logits of the batch, backward, AdamW(lr, "
                        "weight_decay=0.05).step(), the schedule's step()", atol=1e-9, rtol=0)
        if set(got) != set(params):
            raise Mistake(f"distill returned the keys {sorted(map(str, got))}, expected those of the params given",
                          "return every parameter, under its own name")
        for k in params:
            expect(got[k], want[None][k], f"{k} after three {kind} distillation steps",
                   hint="train every parameter: AdamW over all of them", atol=1e-9, rtol=0)


def digits(split: str):
    """The workbook's split of the digits, with the same preprocessing as its setup block."""
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0          # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    idx = order[:1400] if split == "train" else order[1400:]
    return (x[idx] - 0.5) / 0.5, y[idx]


def task_distill(ns, output_dir):
    check_distill(ns)
    cfg = vit.ViTConfig(image_size=8, patch_size=2, in_channels=1, dim=32, depth=2, num_heads=4, mlp_dim=64,
                        num_classes=10, distilled=True)
    start, student, seeds = ns.get("start"), ns.get("student"), ns.get("seeds")
    if ns.get("cfg") != cfg or not isinstance(start, dict) or not isinstance(student, dict) \
            or not (isinstance(seeds, tuple) and seeds and all(isinstance(s, int) for s in seeds)):
        raise Mistake("the run did not leave `cfg` (the workbook's), `start` and `student` (dicts) and `seeds`",
                      "keep the task's code block after the function as it is")
    initial = vit.init_params(cfg, torch.Generator().manual_seed(seeds[-1]))     # the last seed's start
    if set(start) != set(initial) or any(not close(start[k], initial[k], 0, 0) for k in initial):
        raise Mistake("after the three runs, `start` is no longer the initial params: distill trained them in place",
                      HINTS["params modified"])
    images, labels = digits("test")
    teacher_decisions = call(ns, "teacher", images)
    if not isinstance(teacher_decisions, torch.Tensor) or teacher_decisions.shape != (len(labels), 10):
        raise Mistake(f"the workbook's teacher returned {type_name(teacher_decisions)}, not logits (B, 10)",
                      "keep the setup's train_teacher and the task's code block as they are")
    with torch.no_grad():
        class_logits, distillation_logits = vit.forward_heads(student, images, cfg)
    agreement = (distillation_logits.argmax(-1) == teacher_decisions.argmax(-1)).double().mean().item()
    correct = (evaluation_logits(class_logits, distillation_logits).argmax(-1) == labels).double().mean().item()
    # the solution's last run (soft, τ = 3, λ = 0.1) classifies about 94% and agrees with the teacher on about 94%;
    # chance is 10%
    if agreement < 0.85 or correct < 0.85:
        raise Mistake(f"the last run's student agrees with the teacher on {agreement:.1%} of the held-out digits and "
                      f"classifies {correct:.1%} of them, expected at least 85% each",
                      "your distill gives the reference's steps: keep the task's code block after it as it is, "
                      "400 steps of each run from `start`")


TASKS = {1: task_token, 2: task_heads, 3: task_losses, 4: task_distill}
SECONDS = {4: 600}     # task 4 trains a teacher and nine students: about a minute on one core
