"""Checks for 05_vit_vs_cnn.md, against paper.models.vit_configs.param_count, torchvision's ResNet-18 (paper/models/cnn.py),
torch.utils.flop_counter, paper/analysis/probes.py and a plain torch.optim.AdamW loop. The known mistakes are computed by
the hand formulas below with one term wrong, so each gets the hint it deserves. The learner's functions get and
return plain values only (tensors, numbers, strings, dicts, ViTConfig), so that they can be called across a process
boundary."""
import math

import torch
import torch.nn.functional as F

import lowlevel as vit
from paper.analysis.probes import DIRECTIONS, accuracy
from paper.analysis.probes import shift as shifted
from paper.models.cnn import ResNetConfig, resnet18
from paper.models.family import param_count
from paper.reports.compare_summary import multiply_adds
from paper.training.comparison import build, stratified_subset

from .common import Mistake, call, expect, expect_png, type_name

HINTS = {
    # Task 1
    "no cls pos": "x_class is a parameter (D), and E_pos has a row for it: N + 1 rows",
    "no norms": "every block has two LayerNorms (a scale and a shift of D each), and one more comes before the head",
    "no biases": "every dense layer has a bias: q, k, v, the projection, both MLP layers, the patch embedding and the "
                 "head",
    "bn buffers": "BatchNorm's running mean and variance are buffers, not parameters: 2 per channel",
    "no bn": "every BatchNorm has a weight and a bias per channel",
    "no shortcuts": "layers 2-4 begin with a 1×1 stride-2 shortcut convolution and its BatchNorm",
    "stem kernel": "the stem's kernel: 7×7 for the stock stem, 3×3 for the CIFAR stem",
    # Task 2
    "no attention products": "attention itself multiplies too: q kᵀ and A v are T·T·D multiply-adds each, per block",
    "no class token": "the class token is a token: T = N + 1 in every block",
    "no head": "the head is a D × K matrix product too",
    "vit flops": "count multiply-adds, not FLOPs: one multiplication and its addition are one multiply-add",
    "floor": "a stride-2 convolution with padding (and the max-pool) gives ⌈s/2⌉, not ⌊s/2⌋: 7 -> 4",
    "no maxpool": "the stock stem's max-pool halves the map again before layer1",
    "no strides": "layers 2-4 each halve the map (their first conv has stride 2): count their convolutions at the "
                  "smaller size",
    "resnet flops": "count multiply-adds, not FLOPs: a convolution's multiply-adds are its output pixels · C_out · "
                    "C_in · k², not twice that",
    # Task 3
    "replacement": "draw without replacement: a random permutation of each class's indices",
    "not stratified": "stratify: n/10 images of every class, so that a small subset still shows every digit",
    "not seeded": "draw from torch.Generator().manual_seed(seed): the same seed, the same subset; another seed, "
                  "another",
    "weight decay": "AdamW's default weight decay is 0.01: pass weight_decay=0",
    "no zero_grad": "zero the gradients before each backward pass: they accumulate otherwise",
    "reseeded": "one generator for the whole run, seeded once: a new one each step draws the same batch every time",
    "no schedule": "decay the learning rate along a cosine: CosineAnnealingLR(optimizer, steps), its step() after "
                   "each optimizer.step()",
    # Task 4
    "roll": "pixels that leave must not come back on the other side (torch.roll wraps around): what comes in is 0, "
            "MNIST's black",
    "shift sign": "dy > 0 moves the digit down: out[..., i, j] = in[..., i - dy, j - dx]",
    "dy dx swapped": "dy is the row (height) offset and dx the column (width) offset",
    "one direction": "all four directions, each its own copy: down, up, right, left",
    "direction order": "in the order down, up, right, left",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def vit_params(cfg: vit.ViTConfig) -> int:
    return param_count(cfg)


def resnet18_params(stem: str, in_channels: int, num_classes: int) -> int:
    with torch.device("meta"):                                   # counted, nothing allocated
        return sum(p.numel() for p in resnet18(ResNetConfig(stem, in_channels, num_classes)).parameters())


def vit_multiply_adds(cfg: vit.ViTConfig) -> int:
    params = vit.init_params(cfg)
    return multiply_adds(lambda x: vit.forward(params, x, cfg), cfg)


def resnet18_multiply_adds(stem: str, in_channels: int, num_classes: int, image_size: int) -> int:
    cfg = ResNetConfig(stem, in_channels, num_classes, image_size)
    return multiply_adds(resnet18(cfg).eval(), cfg)


def subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return stratified_subset(labels, n, seed)


def training_run(name: str, images, labels, steps: int, batch_size: int, lr: float, seed: int,
                 mistake: str | None = None) -> dict:
    """The workbook's loop with torch.optim.AdamW and a cosine decay, or with one deliberate mistake (a HINTS key).
    -> the state_dict."""
    model = build(name, seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01 if mistake == "weight decay" else 0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        if mistake == "reseeded":
            g = torch.Generator().manual_seed(seed)
        batch = torch.randint(len(labels), (batch_size,), generator=g)
        if mistake != "no zero_grad":
            optimizer.zero_grad()
        F.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()
        if mistake != "no schedule":
            schedule.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(name: str, images, labels, steps: int, batch_size: int = 32, lr: float = 3e-3, seed: int = 0) -> dict:
    return training_run(name, images, labels, steps, batch_size, lr, seed)


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    return shifted(images, dy, dx)


def four_shifts(images: torch.Tensor, k: int) -> torch.Tensor:
    return torch.stack([shifted(images, k * dy, k * dx) for dy, dx in DIRECTIONS])


def shift_accuracy(classify, images: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    return sum(accuracy(classify, x, labels) for x in four_shifts(images, k)) / len(DIRECTIONS)


REFERENCE = {"vit_params": vit_params, "resnet18_params": resnet18_params, "vit_multiply_adds": vit_multiply_adds,
             "resnet18_multiply_adds": resnet18_multiply_adds, "subset": subset, "train": train, "shift": shift,
             "four_shifts": four_shifts, "shift_accuracy": shift_accuracy}


# ---- checks ----------------------------------------------------------------------------------------------------

VIT_CASES = [vit.ViTConfig(image_size=28, patch_size=4, in_channels=1, dim=64, depth=4, num_heads=4, mlp_dim=128,
                           num_classes=10),
             vit.ViTConfig(image_size=(12, 20), patch_size=4, in_channels=3, dim=24, depth=2, num_heads=2, mlp_dim=40,
                           num_classes=7)]
CNN_CASES = [ResNetConfig(stem="stock", in_channels=1, num_classes=10, image_size=28),   # (stem, C, K, size)
             ResNetConfig(stem="cifar", in_channels=3, num_classes=5, image_size=12),
             ResNetConfig(stem="stock", in_channels=2, num_classes=3, image_size=36)]


def expect_count(got, want: int, what: str, mistakes: dict[str, int], hint: str) -> None:
    """A count is an int; compared as a tensor so that the wrong variants name their mistake."""
    if not isinstance(got, int):
        raise Mistake(f"{what}: expected an int, got {type_name(got)}", "return a Python int, e.g. int(total)")

    def exact(n: int) -> torch.Tensor:   # float64 holds every count below 2⁵³ exactly (float32 only below 2²⁴)
        return torch.tensor(n, dtype=torch.float64)

    expect(exact(got), exact(want), what, {h: exact(v) for h, v in mistakes.items()}, hint=hint, atol=0.5, rtol=0)


def vit_params_by_hand(cfg, *, class_token=True, norms=True, biases=True) -> int:
    d, m, n, k = cfg.dim, cfg.mlp_dim, cfg.num_patches, cfg.num_classes
    b = int(biases)
    total = cfg.in_channels * cfg.patch_size ** 2 * d + b * d                       # E and its bias
    total += (d + (n + 1) * d) if class_token else n * d                             # x_class, E_pos
    block = 4 * d * d + 2 * d * m + b * (3 * d + d + m + d) + (4 * d if norms else 0)
    return total + cfg.depth * block + (2 * d if norms else 0) + d * k + b * k


def task_params(ns, output_dir):
    for cfg in VIT_CASES:
        expect_count(call(ns, "vit_params", cfg), param_count(cfg), f"vit_params for {cfg.image_size}, D {cfg.dim}", {
            HINTS["no cls pos"]: vit_params_by_hand(cfg, class_token=False),
            HINTS["no norms"]: vit_params_by_hand(cfg, norms=False),
            HINTS["no biases"]: vit_params_by_hand(cfg, biases=False)},
            hint="sum eq. (1)'s E and bias, x_class and E_pos, L blocks of (LN, qkv, projection, LN, MLP), the "
                 "final LN and the head")
    for cfg in CNN_CASES:
        want = resnet18_params(cfg.stem, cfg.in_channels, cfg.num_classes)
        got = call(ns, "resnet18_params", cfg.stem, cfg.in_channels, cfg.num_classes)
        expect_count(got, want, f"resnet18_params('{cfg.stem}', {cfg.in_channels}, {cfg.num_classes})", {
            HINTS["bn buffers"]: resnet_params_by_hand(cfg, bn=4),
            HINTS["no bn"]: resnet_params_by_hand(cfg, bn=0),
            HINTS["no shortcuts"]: resnet_params_by_hand(cfg, shortcuts=False),
            HINTS["stem kernel"]: resnet_params_by_hand(cfg, kernel=3 if cfg.stem == "stock" else 7)},
            hint="conv1 (no bias) + BN, 4 layers of 2 basic blocks (two 3×3 convs + BNs each, a 1×1 shortcut + BN "
                 "in the first block of layers 2-4), then fc (512·K + K)")


def resnet_params_by_hand(cfg, *, bn=2, shortcuts=True, kernel=None) -> int:
    kernel = kernel or (7 if cfg.stem == "stock" else 3)
    total = cfg.in_channels * 64 * kernel ** 2 + bn * 64
    total += 2 * 2 * (64 * 64 * 9 + bn * 64)                                        # layer1
    for c in (64, 128, 256):                                                         # layers 2-4: c -> 2c
        total += c * 2 * c * 9 + 3 * (2 * c) ** 2 * 9 + 4 * bn * 2 * c
        total += (c * 2 * c + bn * 2 * c) if shortcuts else 0
    return total + 512 * cfg.num_classes + cfg.num_classes


def vit_macs_by_hand(cfg, *, tokens=None, attention=True, head=True, flops=False) -> int:
    n, d, m = cfg.num_patches, cfg.dim, cfg.mlp_dim
    t = cfg.num_tokens if tokens is None else tokens
    total = n * cfg.in_channels * cfg.patch_size ** 2 * d
    total += cfg.depth * (t * (4 * d * d + 2 * d * m) + (2 * t * t * d if attention else 0))
    total += d * cfg.num_classes if head else 0
    return 2 * total if flops else total


def resnet_macs_by_hand(cfg, *, half=lambda s: math.ceil(s / 2), maxpool=True, strides=True, flops=False) -> int:
    s, c_in = cfg.image_size[0], cfg.in_channels
    if cfg.stem == "stock":
        s = half(s)
        total = s * s * c_in * 64 * 49
        s = half(s) if maxpool else s
    else:
        total = s * s * c_in * 64 * 9
    total += 4 * s * s * 64 * 64 * 9                                                 # layer1
    for c in (64, 128, 256):
        s = half(s) if strides else s
        total += s * s * (c * 2 * c * 9 + 3 * (2 * c) ** 2 * 9 + c * 2 * c)
    total += 512 * cfg.num_classes
    return 2 * total if flops else total


def task_multiply_adds(ns, output_dir):
    for cfg in VIT_CASES:
        what = f"vit_multiply_adds for {cfg.image_size}, D {cfg.dim}"
        expect_count(call(ns, "vit_multiply_adds", cfg), vit_multiply_adds(cfg), what, {
            HINTS["no attention products"]: vit_macs_by_hand(cfg, attention=False),
            HINTS["no class token"]: vit_macs_by_hand(cfg, tokens=cfg.num_patches),
            HINTS["no head"]: vit_macs_by_hand(cfg, head=False),
            HINTS["vit flops"]: vit_macs_by_hand(cfg, flops=True)},
            hint="per image: the patch embedding N·C·P²·D; per block T·(4D² + 2DM) + 2·T²·D; the head D·K")
    for cfg in CNN_CASES:
        args = cfg.stem, cfg.in_channels, cfg.num_classes, cfg.image_size[0]
        what = f"resnet18_multiply_adds('{cfg.stem}', {cfg.in_channels}, {cfg.num_classes}, {cfg.image_size[0]})"
        expect_count(call(ns, "resnet18_multiply_adds", *args), resnet18_multiply_adds(*args), what, {
            HINTS["floor"]: resnet_macs_by_hand(cfg, half=lambda s: s // 2),
            HINTS["no maxpool"]: resnet_macs_by_hand(cfg, maxpool=False),
            HINTS["no strides"]: resnet_macs_by_hand(cfg, strides=False),
            HINTS["resnet flops"]: resnet_macs_by_hand(cfg, flops=True)},
            hint="a convolution costs (output pixels) · C_out · C_in · k²; follow the map side s through the stem, "
                 "layer1 and layers 2-4 (which halve it), and add fc's 512·K")


def task_sweep(ns, output_dir):
    labels = torch.arange(600) % 10
    labels = labels[torch.randperm(600, generator=torch.Generator().manual_seed(0))]
    for n, seed in ((100, 0), (250, 3)):
        got = call(ns, "subset", labels, n, seed)
        if not isinstance(got, torch.Tensor) or got.dtype != torch.long or got.shape != (n,):
            raise Mistake(f"subset(labels, {n}, {seed}): expected {n} long indices, got "
                          f"{getattr(got, 'shape', type_name(got))}", "return a LongTensor of n indices")
        if got.min() < 0 or got.max() >= len(labels):
            raise Mistake(f"subset(labels, {n}, {seed}): indices fall outside the labels",
                          "return indices into labels, 0 to len(labels) - 1")
        if len(set(got.tolist())) != n:
            raise Mistake(f"subset(labels, {n}, {seed}): indices repeat", HINTS["replacement"])
        per_class = torch.bincount(labels[got], minlength=10)
        if not (per_class == n // 10).all():
            raise Mistake(f"subset(labels, {n}, {seed}): classes hold {per_class.tolist()} images",
                          HINTS["not stratified"])
        if not torch.equal(call(ns, "subset", labels, n, seed), got):
            raise Mistake("subset gave another answer for the same seed", HINTS["not seeded"])
    if torch.equal(call(ns, "subset", labels, 100, 0).sort().values, call(ns, "subset", labels, 100, 1).sort().values):
        raise Mistake("subset gave the same images for seeds 0 and 1", HINTS["not seeded"])

    g = torch.Generator().manual_seed(4)
    images, targets = torch.rand(24, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (24,), generator=g)
    run = dict(steps=3, batch_size=8, lr=0.05, seed=2)
    got = call(ns, "train", "vit", images, targets, **run)
    want = training_run("vit", images, targets, **run)
    if not isinstance(got, dict) or set(got) != set(want):
        raise Mistake(f"train must return the model's state_dict(), got {type_name(got)}",
                      "return model.state_dict() at the end")
    wrong = {HINTS[m]: training_run("vit", images, targets, **run, mistake=m)
             for m in ("weight decay", "no zero_grad", "reseeded", "no schedule")}
    for key in ("params.patch/weight", "params.blocks/0/qkv/weight", "params.head/weight"):
        # float32, the same operations in the same order: equal to rounding; the smallest mistake (weight decay)
        # moves a weight by lr·0.01·|w| ≈ 1e-4 a step
        expect(got[key], want[key], f"{key} after 3 steps", {h: w[key] for h, w in wrong.items()},
               hint="per step: indices torch.randint(len(labels), (batch_size,), generator=g) with one generator "
                    "seeded once, the mean cross-entropy of the model's logits, backward, an AdamW step, then the "
                    "cosine schedule's step",
               atol=1e-6, rtol=0)
    expect_png(output_dir / "data_size_sweep.png", "the data-size sweep")


def task_shift(ns, output_dir):
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for dy, dx in ((2, 0), (0, -3), (-1, 4), (5, 5)):
        expect(call(ns, "shift", images, dy, dx), shifted(images, dy, dx), f"shift(images, {dy}, {dx})", {
            HINTS["roll"]: torch.roll(images, (dy, dx), dims=(-2, -1)),
            HINTS["shift sign"]: shifted(images, -dy, -dx),
            HINTS["dy dx swapped"]: shifted(images, dx, dy)},
            hint="pad with zeros on the side the image moves away from, then crop back to H × W", atol=0, rtol=0)
    for k in (1, 3):
        want = four_shifts(images, k)
        expect(call(ns, "four_shifts", images, k), want, f"four_shifts(images, {k})", {
            HINTS["one direction"]: shifted(images, k, 0).expand_as(want),
            HINTS["direction order"]: want[[2, 3, 0, 1]]},
            hint="torch.stack of shift(images, k·dy, k·dx) for (dy, dx) in (1, 0), (-1, 0), (0, 1), (0, -1)",
            atol=0, rtol=0)
    expect_png(output_dir / "shift_probe.png", "the shift probe")


TASKS = {1: task_params, 2: task_multiply_adds, 3: task_sweep, 4: task_shift}
SECONDS = {3: 900}     # task 3 trains twelve models: about five minutes on one core
