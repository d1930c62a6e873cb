"""Checks for 04_fine_tuning.md, against paper/heads.py, paper/resolution.py, torch.optim.SGD with
clip_grad_norm_ (the official optimiser, vision_transformer train.py) and a held-out split of the digits."""
import dataclasses

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import lowlevel as vit
from paper.heads import finetuning_head
from paper.resolution import METHODS, change_resolution
from paper.weights import perturbed

from .common import Mistake, call, close, expect, expect_png


def tiny(seed: int, **overrides):
    fields = dict(image_size=(8, 12), patch_size=4, in_channels=1, dim=16, depth=2, num_heads=2, mlp_dim=24,
                  num_classes=3)
    cfg = vit.ViTConfig(**{**fields, **overrides})
    g = torch.Generator().manual_seed(seed)
    params = perturbed(vit.init_params(cfg, g), seed, torch.float32, scale=0.2)
    return cfg, params, g


def task_head(ns, output_dir):
    for seed, representation in ((1, None), (2, 16)):
        cfg, params, g = tiny(seed, representation_size=representation)
        got = call(ns, "finetuning_head", dict(params), cfg, 7)
        if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], dict)):
            raise Mistake("finetuning_head must return (params, cfg)", "return the new params dict and config")
        got_params, got_cfg = got
        want_params, want_cfg = finetuning_head(params, cfg, 7)
        if got_cfg != want_cfg:
            raise Mistake(f"config: expected num_classes=7, representation_size=None, got num_classes="
                          f"{getattr(got_cfg, 'num_classes', '?')}, representation_size="
                          f"{getattr(got_cfg, 'representation_size', '?')}",
                          "dataclasses.replace(cfg, num_classes=K, representation_size=None): the whole head goes")
        if "pre_logits.weight" in got_params:
            raise Mistake("pre_logits is still there", "remove the whole head, both layers (App. B.1.1): drop "
                                                       "pre_logits.* as well as head.*")
        if set(got_params) != set(want_params):
            raise Mistake(f"keys differ from the reference: missing {sorted(set(want_params) - set(got_params))}, "
                          f"unexpected {sorted(set(got_params) - set(want_params))}",
                          "keep every backbone parameter; replace only head.weight and head.bias")
        w = want_params["head.weight"]
        expect(got_params["head.weight"], w, "head.weight", {
            "head.weight is an F.linear weight, (K, D), not (D, K)": w.T},
            hint="the new head is zero-initialised: torch.zeros(K, D)")
        expect(got_params["head.bias"], want_params["head.bias"], "head.bias", hint="the bias starts at zero too")
        for k in want_params:
            expect(got_params[k], want_params[k], k, hint="the backbone must be kept unchanged")


def task_resolution(ns, output_dir):
    for seed, (old, new) in ((3, ((8, 12), (16, 24))), (4, ((8, 8), (12, 20)))):
        cfg, params, g = tiny(seed, image_size=old)
        got = call(ns, "change_resolution", dict(params), cfg, new)
        if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], dict)):
            raise Mistake("change_resolution must return (params, cfg)", "return the new params dict and config")
        got_params, got_cfg = got
        want_cfg = dataclasses.replace(cfg, image_size=new)
        if got_cfg != want_cfg:
            raise Mistake(f"config: expected image_size {new} and everything else unchanged, got "
                          f"{getattr(got_cfg, 'image_size', got_cfg)}",
                          "dataclasses.replace(cfg, image_size=...): keep the patch size, the sequence grows (§3.2)")
        pos = got_params.get("pos")
        wants = [change_resolution(params, cfg, new, m)[0]["pos"] for m in METHODS]
        if not any(close(pos, w, 1e-4, 1e-4) for w in wants):
            expect(pos, wants[2], "pos", hint="interpolate the patch rows of E_pos on their 2-D grid (your "
                                              "resample_pos_embed from 03), keeping the class token's row")
        for k in params:
            if k != "pos":
                expect(got_params.get(k), params[k], k, hint="only E_pos changes with the resolution")


def reference_steps(params, images, labels, cfg, lr, steps, mistake=None):
    """`steps` steps of the official optimiser written with torch.optim: clip the global gradient norm to 1,
    then SGD with momentum 0.9; or with one deliberate mistake."""
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.SGD(p.values(), lr=lr, momentum=0.0 if mistake == "no momentum" else 0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(vit.forward(p, images, cfg), labels)
        loss.backward()
        if mistake == "per tensor":
            for v in p.values():
                torch.nn.utils.clip_grad_norm_([v], 1.0)
        elif mistake != "no clip":
            torch.nn.utils.clip_grad_norm_(p.values(), 1.0)
        opt.step()
        losses.append(loss.item())
    return {k: v.detach() for k, v in p.items()}, losses


def task_sgd_step(ns, output_dir):
    hints = {"no clip": "clip the gradients first: scale them all by min(1, 1/‖g‖) with ‖g‖ the norm over ALL "
                        "parameters together",
             "per tensor": "the clipping norm is global: one norm over all gradients together, not one per tensor",
             "no momentum": "momentum: v = 0.9·v + g, then p = p − lr·v, and return v for the next step"}
    for seed in (5, 6):
        cfg, params, g = tiny(seed)
        images = torch.randn(4, 1, *cfg.image_size, generator=g)
        labels = torch.randint(cfg.num_classes, (4,), generator=g)
        lr = 0.5   # large enough that every mistake shows
        p, v = dict(params), {k: torch.zeros_like(t) for k, t in params.items()}
        losses = []
        for _ in range(2):
            out = call(ns, "sgd_step", p, v, images, labels, cfg, lr)
            if not (isinstance(out, tuple) and len(out) == 3 and isinstance(out[0], dict) and isinstance(out[1], dict)):
                raise Mistake("sgd_step must return (params, velocity, loss)", "return the three, as documented")
            p, v, loss = out
            losses.append(float(loss))
        want, want_losses = reference_steps(params, images, labels, cfg, lr, 2)
        if abs(losses[0] - want_losses[0]) > 1e-4:
            raise Mistake(f"loss of the first step: expected {want_losses[0]:.5f}, got {losses[0]:.5f}",
                          "the loss is the mean cross-entropy of the logits: F.cross_entropy(forward(...), labels)")
        for k in ("head.weight", "blocks.0.qkv.weight", "patch.weight"):
            expect(p.get(k), want[k], f"{k} after two steps",
                   {hints[m]: reference_steps(params, images, labels, cfg, lr, 2, m)[0][k] for m in hints},
                   hint="per step: gradients of the loss, clip their global norm to 1, v = 0.9·v + g, p = p − lr·v",
                   atol=1e-4, rtol=1e-3)


def digits(first_class: int, size: int, split: str):
    """The held-out half of the workbook's split: the same preprocessing as its setup block."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0          # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    idx = order[:1400] if split == "train" else order[1400:]
    idx = idx[(y[idx] >= first_class) & (y[idx] < first_class + 5)]
    x = F.interpolate(x[idx], size=(size, size), mode="bilinear", align_corners=False) if size != 8 else x[idx]
    return (x - 0.5) / 0.5, y[idx] - first_class


def task_fine_tune(ns, output_dir):
    params, cfg = ns.get("fine_tuned_params"), ns.get("fine_tuned_cfg")
    if not isinstance(params, dict) or not isinstance(cfg, vit.ViTConfig):
        raise Mistake("the run did not leave `fine_tuned_params` (a dict) and `fine_tuned_cfg` (a ViTConfig)",
                      "keep the last lines of the task's code block")
    if cfg.image_size != (16, 16) or cfg.num_classes != 5:
        raise Mistake(f"the fine-tuned model is {cfg.image_size} with {cfg.num_classes} classes, expected 16×16 "
                      "with 5", "fine-tune at 16×16 on the digits 5-9 with a new 5-way head")
    images, labels = digits(5, 16, "test")
    with torch.no_grad():
        accuracy = (vit.forward({k: v.detach() for k, v in params.items()}, images, cfg).argmax(-1) == labels)
    accuracy = accuracy.float().mean().item()
    if accuracy < 0.8:
        raise Mistake(f"held-out accuracy on the digits 5-9 is {accuracy:.1%}, expected at least 80%",
                      "check the loss goes down during the run; a learning rate far too large or too small, or "
                      "gradients that are never applied, stall it")
    expect_png(output_dir / "fine_tuned_attention_distance.png", "the attention distance of the fine-tuned model")


TASKS = {1: task_head, 2: task_resolution, 3: task_sgd_step, 4: task_fine_tune}
