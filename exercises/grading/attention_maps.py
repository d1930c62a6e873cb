"""Checks for 02_attention_maps.md, against lowlevel/attention.py, lowlevel.forward and paper/analysis/maps.py; Task 6's
pictures of the trained MNIST model (paper/training/trained.py) are checked for being written, their numbers in the tests."""
import torch

import lowlevel as vit
from lowlevel.attention import merge_heads
from paper.analysis import maps as analysis
from paper.models.weights import perturbed
from paper.training.trained import PICTURES_MODEL, trained_model

from .common import Mistake, call, expect, expect_png, type_name

HINTS = {
    "unscaled": "the scores are not scaled: divide q kᵀ by √D_h",
    "scale 1/D_h": "the scale is 1/√D_h, not 1/D_h",
    "scale √D": "scale by 1/√D_h, the width of one head, not by 1/√D of the whole model",
    "softmax axis": "softmax is over the wrong axis: each query's weights over the keys (the last axis) sum to 1",
    "k q^T": "the scores are k qᵀ, transposed: use q @ k.transpose(-2, -1)",
    "split": "heads are split wrongly: reshape (B, N, D) to (B, N, H, D_h), then transpose(1, 2); a reshape straight "
             "to (B, H, N, D_h) mixes tokens and heads",
    "merge": "heads are merged wrongly: transpose (B, H, N, D_h) back to (B, N, H, D_h) before reshaping to (B, N, D)",
    "qkv order": "the rows of w_qkv are q, then k, then v: chunk(3, dim=-1) gives them in that order",
    "qkv per head": "the rows of w_qkv are all of q, then all of k, then all of v: chunk(3, dim=-1) first, then split "
                    "each into heads; reshaping to (B, N, H, 3·D_h) reads them as q, k, v interleaved per head",
    "no projection": "the output projection U_msa is missing: apply w_out, b_out after merging the heads",
    "no attention residual": "the residual connection of eq. (2) is missing: z' = MSA(LN(z)) + z",
    "no mlp residual": "the residual connection of eq. (3) is missing: z = MLP(LN(z')) + z'",
    "no ln": "LN comes before attention (pre-norm): MSA(LN(z)), not MSA(z)",
    "ln1 twice": "the MLP's LayerNorm has its own weights: LN2 uses ln2.weight and ln2.bias, not ln1's",
    "column 0": "this is column 0, what the patches draw from the class token; the map is row 0, what the class token "
                "draws from each patch",
    "one head": "average over the heads (dim 1) first",
    "class column": "drop the class token's own column: keep columns 1…N",
    "no identity": "the residual is missing: add the identity, Â = ½W + ½I (Abnar & Zuidema)",
    "unnormalised": "re-normalise after adding the identity: ½(W + I), so rows still sum to 1",
    "max heads": "average the heads, not the maximum",
    "order": "multiply later layers from the left: Ã_ℓ = Â_ℓ Ã_(ℓ-1)",
    "patches": "the distance is in pixels: multiply the grid distance by the patch size P",
    "manhattan": "the distance is Euclidean, √(Δrow² + Δcol²), not |Δrow| + |Δcol|",
    "class kept": "drop the class token, index 0, as a query and as a key: attention[:, :, 1:, 1:], not the last "
                  "patch's row and column",
    "renormalised": "do not re-normalise the rows after dropping the class token (as the common reimplementation does)",
}


# ---- reference versions of the workbook's functions (the checker binds them after each task) -------------------

def attention_per_layer(params: dict, images: torch.Tensor, cfg) -> list:
    return vit.forward_intermediates(params, images, cfg)[1]["attention"]


REFERENCE = {"scaled_dot_product_attention": vit.scaled_dot_product_attention,
             "multi_head_attention": vit.multi_head_attention, "attention_per_layer": attention_per_layer,
             "class_token_map": analysis.class_token_map, "attention_rollout": analysis.attention_rollout,
             "mean_attention_distance": analysis.mean_attention_distance}


def prepare() -> None:
    """The MNIST model Task 6's pictures read, trained by `python -m paper.train` on first use (not under the task's
    time limit, and not inside the learner's limited process)."""
    trained_model(*PICTURES_MODEL)


# ---- checks ----------------------------------------------------------------------------------------------------

SHAPES = [(2, 3, 5, 4), (1, 2, 7, 7), (3, 1, 4, 6)]   # (B, H, N, D_h); N = D_h once so that kᵀ and k both fit


def softmax_attention(q, k, v, scale, dim=-1):
    probs = (q @ k.transpose(-2, -1) * scale).softmax(dim=dim)
    return probs @ v, probs


def task_scaled_dot_product(ns, output_dir):
    g = torch.Generator().manual_seed(201)
    for b, h, n, dh in SHAPES:
        q, k, v = (3 * torch.randn(b, h, n, dh, generator=g) for _ in range(3))
        got = call(ns, "scaled_dot_product_attention", q, k, v)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Mistake(f"scaled_dot_product_attention returned {type_name(got)}, not (output, probabilities)",
                          "return a pair: (probs @ v, probs)")
        want_out, want_probs = vit.scaled_dot_product_attention(q, k, v)
        mistakes = {HINTS["unscaled"]: softmax_attention(q, k, v, 1.0),
                    HINTS["scale 1/D_h"]: softmax_attention(q, k, v, 1 / dh),
                    HINTS["softmax axis"]: softmax_attention(q, k, v, dh ** -0.5, dim=-2),
                    HINTS["k q^T"]: softmax_attention(k, q, v, dh ** -0.5)}
        expect(got[1], want_probs, f"probabilities for q (B, H, N, D_h) = {(b, h, n, dh)}",
               {hint: probs for hint, (_, probs) in mistakes.items()},
               hint="probabilities = softmax(q kᵀ / √D_h) over the keys")
        expect(got[0], want_out, f"output for {(b, h, n, dh)}", {hint: out for hint, (out, _) in mistakes.items()},
               hint="the output is probabilities @ v")


def wrong_mha(x, w_qkv, b_qkv, w_out, b_out, heads, mistake):
    """The reference MSA with one deliberate mistake, for recognising what the learner did."""
    b, n, d = x.shape
    qkv = torch.nn.functional.linear(x, w_qkv, b_qkv)
    if mistake == "qkv per head":                                   # (B, N, H, 3·D_h): [q_h; k_h; v_h] per head
        qkv = qkv.reshape(b, n, heads, 3, d // heads).transpose(2, 3).reshape(b, n, 3 * d)
    q, k, v = qkv.chunk(3, dim=-1)
    if mistake == "qkv order":
        v, k, q = q, k, v
    if mistake == "split":
        split = lambda t: t.reshape(b, heads, n, d // heads)                        # noqa: E731
    else:
        split = lambda t: t.reshape(b, n, heads, d // heads).transpose(1, 2)        # noqa: E731
    scale = d ** -0.5 if mistake == "scale √D" else (d // heads) ** -0.5
    out, probs = softmax_attention(split(q), split(k), split(v), scale)
    out = out.reshape(b, n, d) if mistake == "merge" else merge_heads(out)
    return (out if mistake == "no projection" else torch.nn.functional.linear(out, w_out, b_out)), probs


def task_multi_head(ns, output_dir):
    g = torch.Generator().manual_seed(202)
    known = ("split", "merge", "qkv order", "qkv per head", "scale √D", "no projection")
    for b, n, d, heads in [(2, 5, 12, 3), (1, 4, 8, 2), (3, 6, 16, 4)]:
        x = torch.randn(b, n, d, generator=g)
        w_qkv, b_qkv = torch.randn(3 * d, d, generator=g) / d ** 0.5, torch.randn(3 * d, generator=g)
        w_out, b_out = torch.randn(d, d, generator=g) / d ** 0.5, torch.randn(d, generator=g)
        args = (x, w_qkv, b_qkv, w_out, b_out, heads)
        got = call(ns, "multi_head_attention", *args)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Mistake(f"multi_head_attention returned {type_name(got)}, not (output, probabilities)",
                          "return (out, probs)")
        want = vit.multi_head_attention(*args)
        wrong = {m: wrong_mha(*args, m) for m in known}
        expect(got[1], want[1], f"probabilities for x {(b, n, d)}, {heads} heads",
               {HINTS[m]: w[1] for m, w in wrong.items()}, hint="probabilities are (B, H, N, N), one map per head")
        expect(got[0], want[0], f"output for x {(b, n, d)}, {heads} heads",
               {HINTS[m]: w[0] for m, w in wrong.items()}, hint="MSA(z) = [SA_1(z); …; SA_k(z)] U_msa + b")


def tiny_model(seed: int, **overrides):
    fields = dict(image_size=(8, 12), patch_size=4, in_channels=3, dim=16, depth=3, num_heads=2, mlp_dim=24,
                  num_classes=5)
    cfg = vit.ViTConfig(**{**fields, **overrides})
    g = torch.Generator().manual_seed(seed)
    params = perturbed(vit.init_params(cfg, g), seed, torch.float32, scale=0.3)   # no zero head, no unit LN
    return cfg, params, torch.randn(2, 3, *cfg.image_size, generator=g)


def wrong_encoder(params, images, cfg, mistake):
    """Every layer's attention through an encoder with one deliberate mistake."""
    z, maps, eps = vit.embed(params, images, cfg), [], cfg.layer_norm_eps
    for i in range(cfg.depth):
        p = vit.block_params(params, i)
        h = z if mistake == "no ln" else vit.layer_norm(z, p["ln1.weight"], p["ln1.bias"], eps)
        a, probs = vit.multi_head_attention(h, p["qkv.weight"], p["qkv.bias"], p["proj.weight"],
                                            p["proj.bias"], cfg.num_heads)
        maps.append(probs)
        z = a if mistake == "no attention residual" else z + a
        ln2 = "ln1" if mistake == "ln1 twice" else "ln2"
        m = vit.mlp(vit.layer_norm(z, p[f"{ln2}.weight"], p[f"{ln2}.bias"], eps), p["fc1.weight"], p["fc1.bias"],
                    p["fc2.weight"], p["fc2.bias"], cfg.gelu)
        z = m if mistake == "no mlp residual" else z + m
    return torch.stack(maps)


def task_per_layer(ns, output_dir):
    known = ("no attention residual", "no mlp residual", "no ln", "ln1 twice")
    for seed in (3, 4):
        cfg, params, images = tiny_model(seed)
        got = call(ns, "attention_per_layer", params, images, cfg)
        if not isinstance(got, (list, tuple)) or len(got) != cfg.depth or not all(torch.is_tensor(a) for a in got):
            raise Mistake(f"attention_per_layer must return a list of {cfg.depth} tensors, one per layer",
                          "append each block's probabilities to a list and return it")
        want = torch.stack(vit.forward_intermediates(params, images, cfg)[1]["attention"])
        expect(torch.stack(list(got)) if len({a.shape for a in got}) == 1 else got[0], want,
               f"the {cfg.depth} layers' attention (stacked)",
               {HINTS[m]: wrong_encoder(params, images, cfg, m) for m in known},
               hint="each block: a, probs = MSA(LN1(z)); z = z + a; z = z + MLP(LN2(z)); keep probs")


def attention_cases(g):
    for b, h, (gh, gw) in [(2, 3, (2, 3)), (1, 2, (3, 3)), (3, 4, (4, 2))]:
        t = 1 + gh * gw
        yield torch.randn(b, h, t, t, generator=g).mul(2).softmax(-1), (gh, gw)


def task_class_token_map(ns, output_dir):
    g = torch.Generator().manual_seed(204)
    for a, grid in attention_cases(g):
        mean = a.mean(1)
        expect(call(ns, "class_token_map", a, grid), analysis.class_token_map(a, grid),
               f"class_token_map of attention {tuple(a.shape)}, grid {grid}", {
                   HINTS["column 0"]: mean[:, 1:, 0].reshape(-1, *grid),
                   HINTS["one head"]: a[:, 0, 0, 1:].reshape(-1, *grid),
                   HINTS["class column"]: mean[:, 0, :-1].reshape(-1, *grid)},
               hint="mean over heads, then row 0, columns 1: (the patches), reshaped to the (gh, gw) grid")
    expect_png(output_dir / "class_token_attention.png", "the class-token attention map over the photo")


def task_rollout(ns, output_dir):
    g = torch.Generator().manual_seed(205)
    for layers in (1, 3, 4):
        a, _ = next(attention_cases(g))
        maps = [torch.randn(a.shape, generator=g).mul(2).softmax(-1) for _ in range(layers)]
        eye = torch.eye(a.shape[-1])
        no_identity, reversed_order, unnormalised, max_heads = None, None, None, None
        for m in maps:
            w = m.mean(1)
            no_identity = w if no_identity is None else w @ no_identity
            reversed_order = 0.5 * w + 0.5 * eye if reversed_order is None else reversed_order @ (0.5 * w + 0.5 * eye)
            unnormalised = w + eye if unnormalised is None else (w + eye) @ unnormalised
            mx = 0.5 * m.amax(1) + 0.5 * eye
            max_heads = mx if max_heads is None else mx @ max_heads
        mistakes = {HINTS["no identity"]: no_identity, HINTS["unnormalised"]: unnormalised,
                    HINTS["max heads"]: max_heads}
        if layers > 1:
            mistakes[HINTS["order"]] = reversed_order
        expect(call(ns, "attention_rollout", maps), analysis.attention_rollout(maps),
               f"attention_rollout of {layers} layer(s) of {tuple(a.shape)}", mistakes,
               hint="W = mean over heads; Â = ½W + ½I; Ã = Â_L ⋯ Â_2 Â_1")
    expect_png(output_dir / "attention_rollout.png", "the attention rollout map over the photo")


def task_distance(ns, output_dir):
    g = torch.Generator().manual_seed(206)
    for a, grid in attention_cases(g):
        p = 16
        want = analysis.mean_attention_distance(a, grid, p)
        gh, gw = grid
        rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        r, c = rows.reshape(-1).double(), cols.reshape(-1).double()
        manhattan = ((r[:, None] - r[None]).abs() + (c[:, None] - c[None]).abs()) * p
        patch_a = a[:, :, 1:, 1:].double()
        expect(call(ns, "mean_attention_distance", a, grid, p), want,
               f"mean_attention_distance of {tuple(a.shape)}, grid {grid}, P={p}", {
                   HINTS["patches"]: want / p,
                   HINTS["manhattan"]: (patch_a * manhattan).sum(-1).mean(-1).mean(0),
                   HINTS["class kept"]: analysis.mean_attention_distance(a[:, :, :-1, :-1], grid, p, num_prefix_tokens=0),
                   HINTS["renormalised"]: (patch_a / patch_a.sum(-1, keepdim=True) * analysis.patch_distances(grid, p))
                   .sum(-1).mean(-1).mean(0)},
               hint="per head: mean over images and query patches of Σ_j A[i, j]·dist(i, j), patches only")
    expect_png(output_dir / "attention_distance.png", "the mean attention distance per head and layer")
    expect_png(output_dir / "mnist_attention_maps.png", "the trained MNIST model's rollout and class-token maps")
    expect_png(output_dir / "mnist_attention_distance.png", "the trained MNIST model's attention distances")


TASKS = {1: task_scaled_dot_product, 2: task_multi_head, 3: task_per_layer, 4: task_class_token_map,
         5: task_rollout, 6: task_distance}
