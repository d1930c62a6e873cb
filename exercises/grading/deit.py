"""Checks for 06_deit.md, against lowlevel's distilled model (position.py, model.py `heads` and `fuse`),
paper/distillation.py and torch.optim.AdamW; the short run against a least-squares teacher on a held-out split of the
digits."""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import lowlevel as vit
from lowlevel.model import heads
from lowlevel.position import prepend_prefix_tokens
from paper import distillation as kd

from .common import Mistake, call, expect


def task_token(ns, output_dir):
    g = torch.Generator().manual_seed(601)
    for b, n, d in [(2, 6, 8), (1, 4, 4), (3, 9, 12)]:
        x, cls, dist = torch.randn(b, n, d, generator=g), torch.randn(1, 1, d, generator=g), \
            torch.randn(1, 1, d, generator=g)
        pos = torch.randn(1, n + 2, d, generator=g)
        want = prepend_prefix_tokens(x, torch.cat([cls, dist], dim=1)) + pos
        cls_b, dist_b = cls.expand(b, -1, -1), dist.expand(b, -1, -1)
        expect(call(ns, "embed_tokens", x.clone(), cls.clone(), dist.clone(), pos.clone()), want,
               f"embed_tokens of x {(b, n, d)}", {
                   "the class token comes first, the distillation token second": torch.cat([dist_b, cls_b, x], 1) + pos,
                   "the distillation token goes right after the class token, with its own row of E_pos (timm, "
                   "transformers and the official code; lucidrains' vit-pytorch appends it last, without one)":
                       torch.cat([cls_b + pos[:, :1], x + pos[:, 1:n + 1], dist_b], 1),
                   "the distillation token goes right after the class token (lucidrains' vit-pytorch appends it "
                   "last)": torch.cat([cls_b, x, dist_b], 1) + pos},
               hint="z_0 = [x_class; x_distil; x] + E_pos: (B, N+2, D)")


def random_heads(seed: int, b: int, t: int, d: int, k: int):
    g = torch.Generator().manual_seed(seed)
    cfg = vit.ViTConfig(image_size=2, patch_size=2, in_channels=1, dim=d, depth=1, num_heads=1, mlp_dim=1,
                        num_classes=k, distilled=True, layer_norm_eps=1e-6)
    params = {"norm.weight": 1 + torch.randn(d, generator=g), "norm.bias": torch.randn(d, generator=g),
              "head.weight": torch.randn(k, d, generator=g), "head.bias": torch.randn(k, generator=g),
              "head_dist.weight": torch.randn(k, d, generator=g), "head_dist.bias": torch.randn(k, generator=g)}
    return cfg, params, 3 * torch.randn(b, t, d, generator=g)


def task_heads(ns, output_dir):
    for seed, (b, t, d, k) in enumerate([(2, 7, 8, 5), (1, 4, 6, 3), (3, 11, 16, 10)]):
        cfg, params, z = random_heads(602 + seed, b, t, d, k)
        got = call(ns, "deit_heads", z.clone(), dict(params), 1e-6)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Mistake("deit_heads must return (class logits, distillation logits)", "return the two, in order")
        want = heads(params, z, cfg)
        normed = F.layer_norm(z, (d,), params["norm.weight"], params["norm.bias"], 1e-6)
        for i, (name, head) in enumerate((("class", "head"), ("distillation", "head_dist"))):
            other = 1 - i
            expect(got[i], want[i], f"the {name} logits of z {(b, t, d)}", {
                "apply the final LN (eq. (4)) to the tokens before the heads":
                    F.linear(z[:, i], params[f"{head}.weight"], params[f"{head}.bias"]),
                "the class head reads token 0 and the distillation head token 1":
                    F.linear(normed[:, other], params[f"{head}.weight"], params[f"{head}.bias"]),
                "each token has its own head: head for the class token, head_dist for the distillation token":
                    F.linear(normed[:, i], params[f"{('head', 'head_dist')[other]}.weight"],
                             params[f"{('head', 'head_dist')[other]}.bias"])},
                hint="Z = LN(z_L[:, i]) Wᵀ + b with the token's own head, LN over the last axis with the eps given")
        class_logits, distillation_logits = want
        expect(call(ns, "evaluation_logits", class_logits.clone(), distillation_logits.clone()),
               vit.fuse(class_logits, distillation_logits, cfg), "evaluation_logits", {
                   "average the two heads' logits, (Z_cls + Z_dist)/2: summed, their scale doubles":
                       class_logits + distillation_logits,
                   "both heads take part in the prediction": class_logits},
               hint="the mean of the two heads' logits, as timm, transformers and the official code compute it")


def teacher_and_labels(seed: int, b: int = 8, k: int = 6):
    g = torch.Generator().manual_seed(seed)
    logits = [3 * torch.randn(b, k, generator=g) for _ in range(3)]
    return (*logits, torch.randint(0, k, (b,), generator=g))


def task_losses(ns, output_dir):
    for seed in (603, 604):
        class_logits, distillation_logits, teacher_logits, labels = teacher_and_labels(seed)
        args = (class_logits, distillation_logits, teacher_logits, labels)
        hard = kd.distillation_loss(*args, kd.Distillation("hard"))
        teacher_labels = teacher_logits.argmax(-1)
        expect(call(ns, "hard_distillation_loss", *(a.clone() for a in args)), hard, "hard_distillation_loss", {
            "the distillation head learns the teacher's decision y_t = argmax Z_t, not the true labels":
                0.5 * F.cross_entropy(class_logits, labels) + 0.5 * F.cross_entropy(distillation_logits, labels),
            "the class head learns the true labels and the distillation head the teacher, not the other way round":
                0.5 * F.cross_entropy(class_logits, teacher_labels) + 0.5 * F.cross_entropy(distillation_logits,
                                                                                            labels),
            "hard distillation uses the teacher's argmax as a label, not its probabilities":
                0.5 * F.cross_entropy(class_logits, labels) +
                0.5 * F.cross_entropy(distillation_logits, teacher_logits.softmax(-1))},
            hint="eq. (3): ½ CE(Z_cls, y) + ½ CE(Z_dist, argmax Z_t)")
        for tau, lam in ((3.0, 0.1), (2.0, 0.5)):
            soft = kd.distillation_loss(*args, kd.Distillation("soft", lam, tau))
            ce = F.cross_entropy(class_logits, labels)
            log_t, log_s = F.log_softmax(teacher_logits / tau, -1), F.log_softmax(distillation_logits / tau, -1)
            kl = (log_t.exp() * (log_t - log_s)).sum(-1)                             # (B,)
            expect(call(ns, "soft_distillation_loss", *(a.clone() for a in args), tau, lam), soft,
                   f"soft_distillation_loss with τ = {tau}, λ = {lam}", {
                       "multiply the KL by τ², which keeps its gradients' scale as τ changes":
                           (1 - lam) * ce + lam * kl.mean(),
                       "average the KL over the batch only (sum over the classes): dividing by batch × classes is the "
                       "official code's legacy reduction, K times smaller": (1 - lam) * ce + lam * tau ** 2 * kl.mean()
                       / teacher_logits.shape[-1],
                       "the KL is KL(teacher ‖ student) = Σ p_t (log p_t − log p_s), the teacher's probabilities "
                       "weighing the terms": (1 - lam) * ce + lam * tau ** 2 * (log_s.exp() * (log_s - log_t))
                       .sum(-1).mean(),
                       "divide both logits by τ before the softmax":
                           (1 - lam) * ce + lam * tau ** 2 * kd.soft_distillation_loss(distillation_logits,
                                                                                       teacher_logits, 1.0)},
                   hint="eq. (2): (1 − λ) CE(Z_cls, y) + λ τ² KL(ψ(Z_t/τ) ‖ ψ(Z_dist/τ)), batch-averaged")


def reference_distill(params, cfg, teacher, images, labels, steps, lr, kind, tau=3.0, lam=0.1, mistake=None):
    """`steps` full-batch AdamW steps on the paper's objective; or with one deliberate mistake."""
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    optimizer = torch.optim.AdamW(p.values(), lr=lr, weight_decay=0.05)
    with torch.no_grad():
        teacher_logits = teacher(images)
    for _ in range(steps):
        if mistake != "no zero_grad":
            optimizer.zero_grad()
        class_logits, distillation_logits = vit.forward_heads(p, images, cfg, train=True)
        if mistake == "no teacher":
            loss = F.cross_entropy(class_logits, labels) + F.cross_entropy(distillation_logits, labels)
        else:
            loss = kd.distillation_loss(class_logits, distillation_logits, teacher_logits, labels,
                                        kd.Distillation(kind, lam if kind == "soft" else None, tau))
        loss.backward()
        optimizer.step()
    return {k: v.detach() for k, v in p.items()}


def held_out_digits():
    """Digits in [-1, 1], 600 to train on and 397 held out (the workbook's test split)."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8.0 - 1
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return (x[order[:600]], y[order[:600]]), (x[order[1400:]], y[order[1400:]]), (x[order[:1400]], y[order[:1400]])


def least_squares_teacher(images, labels):
    """A teacher the learner has not seen: a linear classifier fitted by least squares to the one-hot labels."""
    features = torch.cat([images.flatten(1), torch.ones(len(images), 1)], dim=1)
    w = torch.linalg.lstsq(features, F.one_hot(labels, 10).float()).solution
    return lambda x: 10 * torch.cat([x.flatten(1), torch.ones(len(x), 1)], dim=1) @ w


def task_distill(ns, output_dir):
    hints = {"no zero_grad": "zero the gradients before each step (optimizer.zero_grad()): they accumulate otherwise",
             "no teacher": "the distillation head learns the teacher's outputs, through your loss of Task 3"}
    g = torch.Generator().manual_seed(605)
    cfg = vit.ViTConfig(image_size=8, patch_size=4, in_channels=1, dim=16, depth=1, num_heads=2, mlp_dim=24,
                        num_classes=3, distilled=True)
    params = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in vit.init_params(cfg, g).items()}
    w = torch.randn(64, 3, generator=g)
    teacher = lambda x: 4 * x.flatten(1) @ w                                         # noqa: E731
    images, labels = torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)
    for kind in ("hard", "soft"):
        before = {k: v.clone() for k, v in params.items()}
        got = call(ns, "distill", dict(params), cfg, teacher, images.clone(), labels.clone(), 2, 0.01, kind, 2.0, 0.3)
        if not isinstance(got, dict):
            raise Mistake(f"distill must return the trained params dict, got {type(got).__name__}",
                          "return {name: tensor} like the params it was given")
        if any(not torch.equal(params[k], before[k]) for k in params):
            raise Mistake("distill changed the params it was given", "train copies: v.detach().clone()")
        want = reference_distill(params, cfg, teacher, images, labels, 2, 0.01, kind, 2.0, 0.3)
        for k in ("head.weight", "head_dist.weight", "dist", "blocks.0.qkv.weight"):
            expect(got.get(k), want[k], f"{k} after two {kind} distillation steps",
                   {hints[m]: reference_distill(params, cfg, teacher, images, labels, 2, 0.01, kind, 2.0, 0.3, m)[k]
                    for m in hints},
                   hint="per step: zero_grad, both heads from vit.forward_heads(..., train=True), your loss against "
                        "the teacher's logits, backward, AdamW(lr, weight_decay=0.05).step()", atol=1e-5, rtol=1e-4)
    (train_x, train_y), (test_x, test_y), (fit_x, fit_y) = held_out_digits()
    teacher = least_squares_teacher(fit_x, fit_y)
    cfg = vit.ViTConfig(image_size=8, patch_size=2, in_channels=1, dim=32, depth=2, num_heads=4, mlp_dim=64,
                        num_classes=10, distilled=True)
    student = call(ns, "distill", vit.init_params(cfg, torch.Generator().manual_seed(0)), cfg, teacher, train_x,
                   train_y, 100, 3e-3, "hard")
    with torch.no_grad():
        class_logits, distillation_logits = vit.forward_heads(student, test_x, cfg)
        agreement = (distillation_logits.argmax(-1) == teacher(test_x).argmax(-1)).float().mean().item()
        correct = (vit.fuse(class_logits, distillation_logits, cfg).argmax(-1) == test_y).float().mean().item()
    if agreement < 0.7 or correct < 0.7:
        raise Mistake(f"after 100 steps of hard distillation from a linear teacher, the distillation head agrees with "
                      f"it on {agreement:.1%} of held-out digits and the prediction is right on {correct:.1%}; "
                      f"expected at least 70% each", "check that the loss goes down during the run")


TASKS = {1: task_token, 2: task_heads, 3: task_losses, 4: task_distill}
