"""Checks for 04_fine_tuning.md, against paper/models/heads.py, paper/models/resolution.py,
paper/training/schedules.py, torch.optim.SGD with clip_grad_norm_ (the official optimiser, vision_transformer
train.py) and a held-out split of the digits.

The optimiser is checked in float64, so that its tolerance (1e-7) sits far below the smallest effect of a known
mistake (a weight decay of 1e-4 moves the parameters by ~1e-5 in two steps) and far above rounding (~1e-15)."""
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch.nn.utils import clip_grad_norm_

import lowlevel as vit
from paper.models.heads import finetuning_head
from paper.models.resolution import METHODS, change_resolution, resample_pos_embed
from paper.models.weights import perturbed
from paper.training import schedules
from paper.training.trained import PICTURES_MODEL, trained_model

from .common import Mistake, call, close, expect, expect_png, type_name

HINTS = {
    "representation kept": "the whole head goes, its hidden layer included: dataclasses.replace(cfg, num_classes=K, "
                           "representation_size=None)",
    "pre_logits": "remove the whole head, both layers (App. B.1.1): drop pre_logits.* as well as head.*",
    "head transposed": "head.weight is an F.linear weight, (K, D), not (D, K)",
    "head not zero": "the new head is zero-initialised (§3.2): torch.zeros(K, D) and torch.zeros(K), so that every "
                     "logit starts at 0 and the first loss is log K",
    "not resampled": "E_pos must be interpolated to the new grid: resample_pos_embed(pos, cfg.grid_size, "
                     "new_cfg.grid_size, ...), from the old grid to the new one",
    "swapped grid": "E_pos's patch rows run row by row over a (gh, gw) = cfg.grid_size grid, height first: pass "
                    "cfg.grid_size and the new config's grid_size as they are, not (gw, gh)",
    "half-pixel linear": "linear interpolation on the grid aligns its corners in the official code "
                         "(scipy.ndimage.zoom, order 1); the other implementations are bicubic: use "
                         "resample_pos_embed with one of its methods",
    "patch size": "keep the patch size (§3.2): only image_size changes, and the sequence grows",
    "no clip": "clip the gradients first: scale them all by min(1, max_norm / ‖g‖), ‖g‖ the norm over ALL "
               "parameters together",
    "always rescale": "clip only when the norm is above max_norm: the scale is min(1, max_norm / ‖g‖), so small "
                      "gradients are left as they are",
    "per tensor": "the clipping norm is global: one norm over all gradients together, not one per tensor",
    "no momentum": "momentum: v = 0.9·v + g, then p = p − lr·v, and return v for the next step",
    "weight decay": "fine-tuning uses no weight decay (Table 4 caption): p = p − lr·v and nothing else",
    "loss sum": "the loss is the mean cross-entropy over the batch: F.cross_entropy(logits, labels), not the sum",
    "no warmup": "warm up first: multiply by min(1, t / warmup_steps)",
    "step from 0": "steps are counted from 1: the first step's rate is base_lr / warmup_steps, not 0",
    "progress unclipped": "progress = max(0, (t − warmup) / (total − warmup)): during the warm-up the cosine factor "
                          "is 1",
    "linear decay": "the decay is a cosine: ½(1 + cos(π·progress)), not 1 − progress",
    "no decay": "after the warm-up the rate decays: multiply by ½(1 + cos(π·progress)), 0 at the last step",
    "velocity reset": "the velocity carries from one step to the next: start from zeros once, before the loop, and "
                      "use the one sgd_step returns",
    "constant lr": "each step has its own rate: lr = learning_rate(t, base_lr, steps, warmup_steps)",
    "loop from 0": "steps are counted from 1: call learning_rate(t, ...) for t = 1 … steps",
    "reused head": "fine-tune from the zero head: params, cfg = finetuning_head(pretrained, cfg, 5) before "
                   "change_resolution and fine_tune",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def resolution(params: dict, cfg, image_size: int):
    return change_resolution(params, cfg, image_size, "hf")


def optimiser_step(params: dict, velocity: dict, images, labels, cfg, lr: float, momentum: float, max_norm: float,
                   mistake: str | None = None):
    """One step of the official fine-tuning optimiser made of torch's own pieces: clip_grad_norm_, then
    torch.optim.SGD with its momentum buffer set to `velocity`; or the same step with one deliberate mistake.
    -> (params, velocity, loss)."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    tensors = list(p.values())
    loss = F.cross_entropy(vit.forward(p, images, cfg), labels, reduction="sum" if mistake == "loss sum" else "mean")
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.grad) for t in tensors]))
    if mistake == "per tensor":
        for t in tensors:
            clip_grad_norm_([t], max_norm)
    elif mistake == "always rescale":
        for t in tensors:
            t.grad.mul_(max_norm / (norm + 1e-6))
    elif mistake != "no clip":
        clip_grad_norm_(tensors, max_norm)
    opt = torch.optim.SGD(tensors, lr=lr, momentum=0.0 if mistake == "no momentum" else momentum,
                          weight_decay=1e-4 if mistake == "weight decay" else 0.0)
    for k, t in p.items():
        opt.state[t]["momentum_buffer"] = velocity[k].detach().clone()
    opt.step()
    new_velocity = {k: opt.state[t].get("momentum_buffer", t.grad).detach() for k, t in p.items()}
    return {k: t.detach() for k, t in p.items()}, new_velocity, loss.item()


def sgd_step(params: dict, velocity: dict, images, labels, cfg, lr: float, momentum: float = 0.9,
             max_norm: float = 1.0):
    return optimiser_step(params, velocity, images, labels, cfg, lr, momentum, max_norm)


def fine_tuning_run(params: dict, cfg, images, labels, steps: int, base_lr: float, batch_size: int,
                    warmup_steps: int, seed: int, mistake: str | None = None) -> dict:
    """The workbook's run with torch's pieces: the same batches, torch.optim.SGD and clip_grad_norm_ each step, the
    rate set by LambdaLR with paper.training.schedules.Schedule; or with one deliberate mistake."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.SGD(p.values(), lr=base_lr, momentum=0.9)
    schedule = schedules.Schedule(base_lr, steps, warmup_steps, "cosine")
    rate = {"constant lr": lambda i: 1.0, "loop from 0": lambda i: schedule(i - 1)}.get(mistake, schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(labels), (batch_size,), generator=g)
        opt.zero_grad()
        F.cross_entropy(vit.forward(p, images[batch], cfg), labels[batch]).backward()
        clip_grad_norm_(p.values(), 1.0)
        if mistake == "velocity reset":
            opt.state.clear()
        opt.step()
        scheduler.step()
    return {k: v.detach() for k, v in p.items()}


def fine_tune(params: dict, cfg, images, labels, steps: int, base_lr: float, batch_size: int = 32,
              warmup_steps: int = 20, seed: int = 0) -> dict:
    return fine_tuning_run(params, cfg, images, labels, steps, base_lr, batch_size, warmup_steps, seed)


REFERENCE = {"finetuning_head": finetuning_head, "change_resolution": resolution, "sgd_step": sgd_step,
             "learning_rate": schedules.learning_rate, "fine_tune": fine_tune}


def prepare() -> None:
    """The MNIST model whose attention distances Task 4 plots beside the run's, trained by `python -m paper.train`
    on first use (not under the task's time limit, and not inside the learner's limited process)."""
    trained_model(*PICTURES_MODEL)


# ---- checks ----------------------------------------------------------------------------------------------------

def tiny(seed: int, dtype=torch.float32, **overrides):
    fields = dict(image_size=(8, 12), patch_size=4, in_channels=1, dim=16, depth=2, num_heads=2, mlp_dim=24,
                  num_classes=3)
    cfg = vit.ViTConfig(**{**fields, **overrides})
    g = torch.Generator().manual_seed(seed)
    params = perturbed(vit.init_params(cfg, g), seed, dtype, scale=0.2)
    return cfg, params, g


def pair(got, what: str) -> tuple[dict, vit.ViTConfig]:
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], dict)):
        raise Mistake(f"{what} returned {type_name(got)}, not (params, cfg)", "return the new params dict and config")
    return got


def task_head(ns, output_dir):
    for seed, representation in ((1, None), (2, 16)):
        cfg, params, g = tiny(seed, representation_size=representation)
        got_params, got_cfg = pair(call(ns, "finetuning_head", params, cfg, 7), "finetuning_head")
        want_params, want_cfg = finetuning_head(params, cfg, 7)
        if getattr(got_cfg, "representation_size", None) is not None:
            raise Mistake(f"config: expected representation_size=None, got {got_cfg.representation_size}",
                          HINTS["representation kept"])
        if got_cfg != want_cfg:
            raise Mistake(f"config: expected num_classes=7 and everything else unchanged, got "
                          f"{getattr(got_cfg, 'num_classes', type_name(got_cfg))}",
                          "dataclasses.replace(cfg, num_classes=K, representation_size=None)")
        if "pre_logits.weight" in got_params:
            raise Mistake("pre_logits is still there", HINTS["pre_logits"])
        if set(got_params) != set(want_params):
            raise Mistake(f"keys differ from the reference: missing {sorted(set(want_params) - set(got_params))}, "
                          f"unexpected {sorted(set(got_params) - set(want_params))}",
                          "keep every backbone parameter; replace only head.weight and head.bias")
        w = want_params["head.weight"]
        head = got_params["head.weight"]
        if isinstance(head, torch.Tensor) and head.shape == w.shape and head.abs().max() > 0:
            raise Mistake(f"head.weight: expected zeros, got values up to {head.abs().max():.3g}",
                          HINTS["head not zero"])
        expect(head, w, "head.weight", {HINTS["head transposed"]: w.T}, hint=HINTS["head not zero"], atol=0, rtol=0)
        expect(got_params["head.bias"], want_params["head.bias"], "head.bias", hint=HINTS["head not zero"],
               atol=0, rtol=0)
        for k in want_params:
            if k not in ("head.weight", "head.bias"):   # copied, never computed: exact
                expect(got_params[k], want_params[k], k, hint="the backbone must be kept unchanged", atol=0, rtol=0)


def wrong_resamplings(pos: torch.Tensor, cfg, new_cfg):
    """E_pos resampled in the ways a learner gets wrong, each with its hint: the rows read as a (gw, gh) grid (any
    method), and linear interpolation with half-pixel centres (the official zoom aligns the corners)."""
    (gh, gw), (nh, nw) = cfg.grid_size, new_cfg.grid_size
    for method in METHODS:
        yield HINTS["swapped grid"], resample_pos_embed(pos, (gw, gh), (nw, nh), 1, method)
    grid = pos[:, 1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)                      # (1, D, gh, gw)
    grid = F.interpolate(grid, size=(nh, nw), mode="bilinear", align_corners=False)
    yield HINTS["half-pixel linear"], torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, nh * nw, -1)], 1)


def task_resolution(ns, output_dir):
    for seed, (old, new) in ((3, ((8, 12), (16, 24))), (4, ((8, 8), (12, 20)))):
        cfg, params, g = tiny(seed, image_size=old)
        got_params, got_cfg = pair(call(ns, "change_resolution", params, cfg, new), "change_resolution")
        want_cfg = dataclasses.replace(cfg, image_size=new)
        if got_cfg != want_cfg:
            patch = getattr(got_cfg, "patch_size", cfg.patch_size)
            raise Mistake(f"config: expected image_size {new}, patch_size {cfg.patch_size} and everything else "
                          f"unchanged, got image_size {getattr(got_cfg, 'image_size', type_name(got_cfg))}, "
                          f"patch_size {patch}",
                          HINTS["patch size"] if patch != cfg.patch_size else
                          "dataclasses.replace(cfg, image_size=...): the grid grows (§3.2)")
        pos = got_params.get("pos")
        wants = [change_resolution(params, cfg, new, m)[0]["pos"] for m in METHODS]
        if not any(close(pos, w, 1e-4, 1e-4) for w in wants):      # float32 bicubic sums in any order
            for hint, wrong in wrong_resamplings(params["pos"], cfg, want_cfg):
                if close(pos, wrong, 1e-4, 1e-4):
                    raise Mistake("pos: the grid is interpolated, but not as the paper's implementations do", hint)
            expect(pos, wants[2], "pos", {HINTS["not resampled"]: params["pos"]},
                   hint="interpolate the patch rows of E_pos on their 2-D grid (resample_pos_embed, imported in the "
                        "setup), keeping the class token's row")
        for k in params:
            if k != "pos":
                expect(got_params.get(k), params[k], k, hint="only E_pos changes with the resolution", atol=0, rtol=0)


def task_sgd_step(ns, output_dir):
    known = ("no clip", "always rescale", "per tensor", "no momentum", "weight decay", "loss sum")
    # one case on each side of the clipping threshold: these gradients' norm is ~1, far above 0.05, far below 1000
    for seed, max_norm in ((5, 0.05), (6, 1000.0)):
        cfg, params, g = tiny(seed, torch.float64)
        images = torch.randn(4, 1, *cfg.image_size, generator=g, dtype=torch.float64)
        labels = torch.randint(cfg.num_classes, (4,), generator=g)
        lr = 0.5   # large enough that every mistake shows
        zeros = {k: torch.zeros_like(t) for k, t in params.items()}
        got, want = (params, zeros), {m: (params, zeros) for m in (None, *known)}
        for step in (1, 2):
            out = call(ns, "sgd_step", got[0], got[1], images, labels, cfg, lr, 0.9, max_norm)
            if not (isinstance(out, tuple) and len(out) == 3 and isinstance(out[0], dict) and isinstance(out[1], dict)):
                raise Mistake(f"sgd_step returned {type_name(out)}, not (params, velocity, loss)",
                              "return the three, as documented")
            want = {m: optimiser_step(*want[m][:2], images, labels, cfg, lr, 0.9, max_norm, m) for m in want}
            with torch.no_grad():                  # the loss of the params this step was given
                logits = vit.forward(got[0], images, cfg)
            mean, total = F.cross_entropy(logits, labels).item(), F.cross_entropy(logits, labels, reduction="sum").item()
            loss = as_float(out[2])
            if loss is None or abs(loss - mean) > 1e-9:   # float64 rounding: ~1e-16
                raise Mistake(f"loss of step {step}: expected {mean:.6f}, got {loss if loss is not None else out[2]}",
                              HINTS["loss sum"] if loss is not None and abs(loss - total) < 1e-9
                              else "the loss is the mean cross-entropy of the logits: F.cross_entropy(forward(...), "
                                   "labels), as a float")
            got = out[:2]
        for k in ("head.weight", "blocks.0.qkv.weight", "patch.weight", "norm.bias"):
            # 1e-7: above the 1e-6 in the clipping scale (≤ 1e-8 here) and rounding, below a 1e-4 weight decay (~1e-5)
            expect(got[0].get(k), want[None][0][k], f"{k} after two steps with max_norm={max_norm}",
                   {HINTS[m]: want[m][0][k] for m in known},
                   hint="per step: gradients of the loss, clip their global norm to max_norm, v = 0.9·v + g, "
                        "p = p − lr·v", atol=1e-7, rtol=0)


def as_float(x) -> float | None:
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def schedule_mistake(step: int, base: float, total: int, warmup: int, mistake: str) -> float:
    """The learning rate with one deliberate mistake."""
    progress = (step - warmup) / (total - warmup)
    if mistake == "step from 0":
        return schedules.learning_rate(step - 1, base, total, warmup)
    decay = {"progress unclipped": 0.5 * (1 + math.cos(math.pi * progress)),
             "linear decay": 1 - max(0.0, progress), "no decay": 1.0}.get(mistake)
    if decay is None:                                            # "no warmup"
        return base * 0.5 * (1 + math.cos(math.pi * max(0.0, progress)))
    return base * min(1.0, step / warmup) * decay


def check_learning_rate(ns) -> None:
    known = ("no warmup", "step from 0", "progress unclipped", "linear decay", "no decay")
    for base, total, warmup in ((0.1, 10, 3), (0.03, 7, 1)):
        steps = range(1, total + 1)
        got = [as_float(call(ns, "learning_rate", t, base, total, warmup)) for t in steps]
        if None in got:
            raise Mistake(f"learning_rate returned {got}, expected numbers", "return the rate as a float")
        want = torch.tensor([schedules.learning_rate(t, base, total, warmup) for t in steps], dtype=torch.float64)
        expect(torch.tensor(got, dtype=torch.float64), want,
               f"learning_rate for steps 1…{total}, base {base}, warm-up {warmup}",
               {HINTS[m]: torch.tensor([schedule_mistake(t, base, total, warmup, m) for t in steps], dtype=torch.float64)
                for m in known},
               hint="lr(t) = base_lr · min(1, t/warmup) · ½(1 + cos(π·max(0, (t − warmup)/(total − warmup))))",
               atol=1e-12, rtol=1e-9)     # a formula of a few float64 operations


def check_fine_tune(ns) -> None:
    known = ("velocity reset", "constant lr", "loop from 0")
    cfg, params, g = tiny(7, torch.float64)
    images = torch.randn(10, 1, *cfg.image_size, generator=g, dtype=torch.float64)
    labels = torch.randint(cfg.num_classes, (10,), generator=g)
    args = (params, cfg, images, labels, 5, 0.5)
    got = call(ns, "fine_tune", *args, batch_size=4, warmup_steps=2, seed=3)
    if not isinstance(got, dict):
        raise Mistake(f"fine_tune returned {type_name(got)}, expected the params dict", "return the params")
    want = {m: fine_tuning_run(*args, 4, 2, 3, m) for m in (None, *known)}
    for k in ("head.weight", "blocks.1.fc2.weight"):
        expect(got.get(k), want[None][k], f"{k} after 5 steps of fine_tune",
               {HINTS[m]: want[m][k] for m in known}, atol=1e-9, rtol=0,   # float64, same operations in order
               hint="per step t = 1 … steps: the t-th batch from the seeded generator, sgd_step with "
                    "learning_rate(t, …), the velocity carried over")


def digits(first_class: int, size: int, split: str):
    """The held-out half of the workbook's split: the same preprocessing as its setup block."""
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0          # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    idx = order[:1400] if split == "train" else order[1400:]
    idx = idx[(y[idx] >= first_class) & (y[idx] < first_class + 5)]
    x = F.interpolate(x[idx], size=(size, size), mode="bilinear", align_corners=False) if size != 8 else x[idx]
    return (x - 0.5) / 0.5, y[idx] - first_class


def task_fine_tune(ns, output_dir):
    check_learning_rate(ns)
    check_fine_tune(ns)
    start, params, cfg = ns.get("params"), ns.get("fine_tuned_params"), ns.get("fine_tuned_cfg")
    if not isinstance(params, dict) or not isinstance(cfg, vit.ViTConfig) or not isinstance(start, dict):
        raise Mistake("the run did not leave `params` and `fine_tuned_params` (dicts) and `fine_tuned_cfg` (a "
                      "ViTConfig)", "keep the task's code block after the two functions as it is")
    head = start.get("head.weight")
    if "pre_logits.weight" in start or not isinstance(head, torch.Tensor) or head.abs().max() > 0:
        raise Mistake("the model handed to fine_tune does not have a zero-initialised head", HINTS["reused head"])
    if cfg.image_size != (16, 16) or cfg.num_classes != 5:
        raise Mistake(f"the fine-tuned model is {cfg.image_size} with {cfg.num_classes} classes, expected 16×16 "
                      "with 5", "fine-tune at 16×16 on the digits 5-9 with a new 5-way head")
    images, labels = digits(5, 16, "test")
    with torch.no_grad():
        accuracy = (vit.forward(params, images, cfg).argmax(-1) == labels).float().mean().item()
    if accuracy < 0.8:
        raise Mistake(f"held-out accuracy on the digits 5-9 is {accuracy:.1%}, expected at least 80%",
                      "check the loss goes down during the run; a learning rate far too large or too small, or "
                      "gradients that are never applied, stall it")
    expect_png(output_dir / "fine_tuned_attention_distance.png", "the attention distance of the fine-tuned model")


TASKS = {1: task_head, 2: task_resolution, 3: task_sgd_step, 4: task_fine_tune}
