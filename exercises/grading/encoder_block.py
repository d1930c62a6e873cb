"""Checks for 09_encoder_block.md, against F.layer_norm, F.gelu and lowlevel/ (norm, mlp, encoder, model).

Everything is checked in float64, so that the tolerance (1e-10) sits far below the smallest effect of a known mistake
(eps outside the square root moves LN's output by ~1e-7 at eps 1e-6) and far above rounding (~1e-15)."""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import lowlevel as vit
from paper.models.weights import perturbed

from .common import Mistake, call, expect, type_name

TOLERANCE = dict(atol=1e-10, rtol=0)

HINTS = {
    "not trained": "train `steps` Adam steps on batches of 64 drawn by one generator seeded with `seed`, gradients "
                   "flowing through your forward, then return the accuracies on the training and the held-out digits",
    "accuracies by hand": "keep the task's code block after the two functions as it is: the accuracies it prints are "
                          "the ones your function returns",
    "unbiased": "the variance is the biased one, the mean of (x − mean)² (divide by D): torch.var divides by D − 1 "
                "unless told correction=0",
    "eps outside": "eps goes inside the square root: √(var + eps), not √var + eps",
    "wrong axis": "normalise each token over its own features, the last axis (dim=-1), not across tokens",
    "no affine": "scale and shift after normalising: · weight + bias",
    "swapped affine": "multiply by weight, then add bias: x̂ · weight + bias, not x̂ · bias + weight",
    "gelu tanh": "this is the tanh approximation; the exact GELU is ½ x (1 + erf(x / √2))",
    "gelu sigmoid": "x · σ(1.702 x) is an approximation; the exact GELU is x · Φ(x) = ½ x (1 + erf(x / √2))",
    "erf scale": "Φ(x) = ½ (1 + erf(x / √2)): divide x by √2 inside erf",
    "relu": "this is ReLU; GELU weighs x by Φ(x) = ½ (1 + erf(x / √2)) instead of cutting at 0",
    "gelu twice": "one GELU, between the two layers: none after the second",
    "no gelu": "the MLP has a GELU between its two layers: GELU(x W₁ᵀ + b₁) W₂ᵀ + b₂",
    "mlp no biases": "both layers of the MLP add their bias: GELU(x W₁ᵀ + b₁) W₂ᵀ + b₂",
    "mlp not transposed": "the weights are F.linear weights, (out, in): x @ fc1_weight.T, not x @ fc1_weight",
    "post-norm": "ViT is pre-norm: LN inside each branch, z + MSA(LN(z)), not LN(z + MSA(z))",
    "no attention residual": "the residual connection of eq. (2) is missing: z' = MSA(LN(z)) + z",
    "no mlp residual": "the residual connection of eq. (3) is missing: z = MLP(LN(z')) + z'",
    "ln1 twice": "the MLP's LayerNorm has its own weights: LN2 uses ln2.weight and ln2.bias, not ln1's",
    "parallel": "the MLP reads z', the output of the attention step (eq. 3): MLP(LN(z')), not MLP(LN(z))",
    "avg with class": "leave the class token out of the average: the mean of z[:, 1:] when cfg.class_token",
    "ln then mean": "average first, then LN (timm's fc_norm): LN of every token followed by the mean is another "
                    "function",
    "last token": "the class token is the first token, z[:, 0], not the last",
    "no final ln": "eq. (4) ends with a LayerNorm: y = LN(z_L^0), with params['norm.weight'] and params['norm.bias']",
    "same block": "each block has its own parameters: vit.block_params(params, i) for block i",
    "one block short": "run all cfg.depth blocks: i = 0 … cfg.depth - 1",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


def mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias) -> torch.Tensor:
    return vit.mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, "exact")


def encoder_block(p: dict, z: torch.Tensor, cfg) -> torch.Tensor:
    return vit.encoder_block(p, z, cfg)[0]


REFERENCE = {"layer_norm": vit.layer_norm, "gelu": gelu, "mlp": mlp, "encoder_block": encoder_block,
             "pool": vit.pool, "forward": vit.forward}


# ---- checks ----------------------------------------------------------------------------------------------------

def normalised(x, eps, mistake=None):
    """LayerNorm without its affine step, or with one deliberate mistake."""
    dim = 0 if mistake == "wrong axis" else -1
    mean = x.mean(dim, keepdim=True)
    var = x.var(dim, keepdim=True, correction=1 if mistake == "unbiased" else 0)
    return (x - mean) / (var.sqrt() + eps if mistake == "eps outside" else (var + eps).sqrt())


def task_layer_norm(ns, output_dir):
    g = torch.Generator().manual_seed(901)
    # a large eps on inputs of small variance first: there eps inside or outside the root differs most
    for shape, scale, eps in [((3, 4), 0.05, 0.1), ((2, 3, 5), 3.0, 1e-6), ((4, 6), 1.0, 1e-5)]:
        x = scale * torch.randn(*shape, generator=g, dtype=torch.float64) + 1
        weight, bias = (torch.randn(shape[-1], generator=g, dtype=torch.float64) for _ in range(2))
        want = F.layer_norm(x, shape[-1:], weight, bias, eps)
        mistakes = {HINTS[m]: normalised(x, eps, m) * weight + bias for m in ("unbiased", "eps outside", "wrong axis")}
        mistakes[HINTS["no affine"]] = normalised(x, eps)
        mistakes[HINTS["swapped affine"]] = normalised(x, eps) * bias + weight
        expect(call(ns, "layer_norm", x, weight, bias, eps), want, f"layer_norm of x {shape}, eps {eps:g}", mistakes,
               hint="(x − mean) / √(var + eps) · weight + bias over the last axis, var the biased variance",
               **TOLERANCE)


def task_mlp(ns, output_dir):
    g = torch.Generator().manual_seed(902)
    x = torch.cat([torch.linspace(-6, 6, 121, dtype=torch.float64), 3 * torch.randn(40, generator=g, dtype=torch.float64)])
    expect(call(ns, "gelu", x), F.gelu(x), "gelu on [-6, 6] and random inputs", {
        HINTS["gelu tanh"]: F.gelu(x, approximate="tanh"), HINTS["gelu sigmoid"]: x * torch.sigmoid(1.702 * x),
        HINTS["erf scale"]: 0.5 * x * (1 + torch.erf(x)), HINTS["relu"]: F.relu(x)},
        hint="GELU(x) = ½ x (1 + erf(x / √2))", **TOLERANCE)
    for b, n, d, m in [(1, 3, 6, 6), (2, 5, 8, 12)]:      # M = D first, so that W and Wᵀ both fit
        x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
        w1, b1 = torch.randn(m, d, generator=g, dtype=torch.float64), torch.randn(m, generator=g, dtype=torch.float64)
        w2, b2 = torch.randn(d, m, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
        mistakes = {HINTS["gelu twice"]: F.gelu(F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)),
                    HINTS["no gelu"]: F.linear(F.linear(x, w1, b1), w2, b2),
                    HINTS["mlp no biases"]: F.linear(F.gelu(F.linear(x, w1)), w2)}
        if m == d:
            mistakes[HINTS["mlp not transposed"]] = F.gelu(x @ w1 + b1) @ w2 + b2
        expect(call(ns, "mlp", x, w1, b1, w2, b2), mlp(x, w1, b1, w2, b2), f"mlp of x {(b, n, d)}, M={m}", mistakes,
               hint="MLP(x) = GELU(x W₁ᵀ + b₁) W₂ᵀ + b₂", **TOLERANCE)


def tiny(seed: int, **overrides):
    """A small float64 ViT whose every tensor is random (no unit LN, no zero head hides a mistake)."""
    fields = dict(image_size=(8, 12), patch_size=4, in_channels=3, dim=16, depth=3, num_heads=2, mlp_dim=24,
                  num_classes=5)
    cfg = vit.ViTConfig(**{**fields, **overrides})
    params = perturbed(vit.init_params(cfg, torch.Generator().manual_seed(seed)), seed, torch.float64, scale=0.3)
    return cfg, params, torch.Generator().manual_seed(seed + 100)


def wrong_block(p, z, cfg, mistake):
    """The block with one deliberate mistake."""
    eps = cfg.layer_norm_eps

    def ln(t, name):
        return vit.layer_norm(t, p[f"{name}.weight"], p[f"{name}.bias"], eps)

    def msa(t):
        return vit.multi_head_attention(t, p["qkv.weight"], p["qkv.bias"], p["proj.weight"], p["proj.bias"],
                                        cfg.num_heads)[0]

    def feed_forward(t):
        return mlp(t, p["fc1.weight"], p["fc1.bias"], p["fc2.weight"], p["fc2.bias"])

    if mistake == "post-norm":
        z = ln(z + msa(z), "ln1")
        return ln(z + feed_forward(z), "ln2")
    if mistake == "parallel":
        return z + msa(ln(z, "ln1")) + feed_forward(ln(z, "ln2"))
    a = msa(ln(z, "ln1"))
    z = a if mistake == "no attention residual" else z + a
    m = feed_forward(ln(z, "ln1" if mistake == "ln1 twice" else "ln2"))
    return m if mistake == "no mlp residual" else z + m


def task_block(ns, output_dir):
    known = ("post-norm", "no attention residual", "no mlp residual", "ln1 twice", "parallel")
    for seed in (3, 4):
        cfg, params, g = tiny(seed)
        p = vit.block_params(params, 1)
        z = torch.randn(2, 7, cfg.dim, generator=g, dtype=torch.float64)
        expect(call(ns, "encoder_block", p, z, cfg), encoder_block(p, z, cfg), f"encoder_block of z {tuple(z.shape)}",
               {HINTS[m]: wrong_block(p, z, cfg, m) for m in known},
               hint="z = z + MSA(LN1(z)); z = z + MLP(LN2(z))", **TOLERANCE)


def wrong_pool(params, z, cfg, mistake):
    """Pooling and the final LN with one deliberate mistake."""
    w, b, eps = params["norm.weight"], params["norm.bias"], cfg.layer_norm_eps
    patches = z[:, int(cfg.class_token):]
    if mistake == "ln then mean":
        return vit.layer_norm(patches, w, b, eps).mean(dim=1)
    if mistake == "no final ln":
        return z[:, 0] if cfg.pool == "token" else patches.mean(dim=1)
    return vit.layer_norm(z.mean(dim=1) if mistake == "avg with class" else z[:, -1], w, b, eps)


def task_pool(ns, output_dir):
    for seed, pool, class_token in ((5, "token", True), (6, "avg", True), (7, "avg", False)):
        cfg, params, g = tiny(seed, pool=pool, class_token=class_token)
        z = torch.randn(2, cfg.num_tokens, cfg.dim, generator=g, dtype=torch.float64)
        known = ["no final ln"] + (["last token"] if pool == "token" else ["ln then mean"]) + \
            (["avg with class"] if pool == "avg" and class_token else [])
        expect(call(ns, "pool", params, z, cfg), vit.pool(params, z, cfg),
               f"pool with cfg.pool={pool!r}, class_token={class_token}",
               {HINTS[m]: wrong_pool(params, z, cfg, m) for m in known},
               hint="token: LN(z[:, 0]); avg: LN(mean of the patch tokens)", **TOLERANCE)


def forward_through(params, images, cfg, blocks) -> torch.Tensor:
    """The model's logits through the given sequence of blocks (a deliberate mistake when not 0 … L-1)."""
    z = vit.embed(params, images, cfg)
    for i in blocks:
        z = encoder_block(vit.block_params(params, i), z, cfg)
    return F.linear(vit.pool(params, z, cfg), params["head.weight"], params["head.bias"])


def task_forward(ns, output_dir):
    for seed, pool in ((8, "token"), (9, "avg")):
        cfg, params, g = tiny(seed, pool=pool)
        images = torch.randn(2, 3, *cfg.image_size, generator=g, dtype=torch.float64)
        expect(call(ns, "forward", params, images, cfg), vit.forward(params, images, cfg),
               f"forward with cfg.pool={pool!r}",
               {HINTS["same block"]: forward_through(params, images, cfg, [0] * cfg.depth),
                HINTS["one block short"]: forward_through(params, images, cfg, range(cfg.depth - 1))},
               hint="embed, the blocks in order, pool, head", **TOLERANCE)
    accuracies, seeds = ns.get("accuracies"), ns.get("seeds")
    runs = 4 * len(seeds) if isinstance(seeds, tuple) else None      # two poolings, two learning rates, each seed
    if not (isinstance(accuracies, dict) and len(accuracies) == runs and all(pair(a) for a in accuracies.values())):
        raise Mistake(f"the run did not leave `seeds` and `accuracies`, (training, held-out) accuracies for each "
                      f"pooling, learning rate and seed, got {type_name(accuracies)}",
                      "keep the task's code block after the two functions as it is")
    # The numbers come from training, not from the page: a short run equals the workbook's loop through
    # lowlevel.forward (a float32 forward equal to the reference to ~1e-7 moves no prediction in 5 steps; one digit of
    # each split allowed), and one of the printed runs is trained again.
    short = call(ns, "train_and_test", "avg", 1e-2, steps=5, seed=3)
    want = train_and_test("avg", 1e-2, steps=5, seed=3)
    allowed = [1.5 / len(digits(split)[1]) for split in ("train", "test")]
    if not pair(short) or any(abs(a - b) > e for a, b, e in zip(short, want, allowed, strict=True)):
        raise Mistake(f"train_and_test('avg', 0.01, steps=5, seed=3) gave {short!r}, expected ({want[0]:.1%}, "
                      f"{want[1]:.1%}) (the workbook's loop)", HINTS["not trained"])
    again = call(ns, "train_and_test", "token", 1e-3)
    if again not in accuracies.values():
        raise Mistake(f"train_and_test('token', 0.001) gives {again!r}, which `accuracies` does not hold",
                      HINTS["accuracies by hand"])
    tested = [a[1] for a in accuracies.values()]
    if min(tested) < 0.5:
        raise Mistake(f"the runs reached {', '.join(f'{a:.0%}' for a in tested)} on the held-out digits, expected "
                      f"each above 50%", "gradients must flow through your forward: no detach or no_grad")


def pair(accuracies) -> bool:
    """(training accuracy, held-out accuracy), as train_and_test returns them."""
    return isinstance(accuracies, tuple) and len(accuracies) == 2 and all(isinstance(a, float) for a in accuracies)


def digits(split: str):
    """The workbook's digits (its setup): (B, 1, 8, 8) in [-1, 1], a fixed split, 1400 "train", 397 "test"."""
    data = load_digits()
    x = (torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0 - 0.5) / 0.5
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    idx = order[:1400] if split == "train" else order[1400:]
    return x[idx], y[idx]


def train_and_test(pool_kind: str, lr: float, steps: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The workbook's Task 5 loop through lowlevel.forward."""
    cfg = vit.ViTConfig(image_size=8, patch_size=2, in_channels=1, dim=32, depth=2, num_heads=4, mlp_dim=64,
                        num_classes=10, pool=pool_kind)
    params = {k: v.requires_grad_(True) for k, v in vit.init_params(cfg, torch.Generator().manual_seed(seed)).items()}
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    images, labels = digits("train")
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(labels), (64,), generator=g)
        loss = F.cross_entropy(vit.forward(params, images[batch], cfg), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    test_images, test_labels = digits("test")
    with torch.no_grad():
        return tuple((vit.forward(params, x, cfg).argmax(-1) == y).float().mean().item()
                     for x, y in ((images, labels), (test_images, test_labels)))


TASKS = {1: task_layer_norm, 2: task_mlp, 3: task_block, 4: task_pool, 5: task_forward}
SECONDS = {5: 600}     # task 5 trains twelve models: about two minutes on one core
