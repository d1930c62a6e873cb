"""paper/analysis/maps.py against independent references: an explicit loop over layers for rollout, scikit-learn's
cosine similarity, brute-force pixel distances, and hand-built attention patterns with known answers."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics.pairwise import cosine_similarity

import lowlevel as vit
from paper.analysis import maps as analysis


def random_attention(b, h, t, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(b, h, t, t, generator=g, dtype=dtype)).softmax(-1)


@given(layers=st.integers(1, 5), heads=st.integers(1, 4), grid=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_rollout_equals_recursive_product_written_out_and_rows_sum_to_one(layers, heads, grid, seed):
    t = 1 + grid * grid
    maps = [random_attention(2, heads, t, seed + i) for i in range(layers)]
    # Abnar & Zuidema written out per element: Â = (W + I) / rowsum(W + I), Ã_ℓ[i, j] = Σ_k Â_ℓ[i, k] Ã_{ℓ-1}[k, j]
    expected = None
    for a in maps:
        w = a.mean(1).numpy() + np.eye(t)
        w = w / w.sum(-1, keepdims=True)
        if expected is None:
            expected = w
        else:
            expected = np.einsum("bik,bkj->bij", w, expected)
    got = analysis.attention_rollout(maps)
    assert np.allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)   # float64: only rounding differs
    assert torch.allclose(got.sum(-1), torch.ones(2, t, dtype=torch.float64), atol=1e-12)


def test_rollout_of_identity_attention_is_the_identity_and_of_uniform_is_mixing():
    t = 5
    eye = torch.eye(t, dtype=torch.float64).expand(1, 2, t, t)
    assert torch.equal(analysis.attention_rollout([eye, eye, eye])[0], torch.eye(t, dtype=torch.float64))
    uniform = torch.full((1, 1, t, t), 1 / t, dtype=torch.float64)
    # ½U + ½I applied L times: the identity's weight is (½)^L, the rest spreads uniformly
    got = analysis.attention_rollout([uniform] * 3)[0]
    expected = 0.5 ** 3 * torch.eye(t, dtype=torch.float64) + (1 - 0.5 ** 3) / t
    assert torch.allclose(got, expected, atol=1e-12)


def test_rollout_rejects_an_empty_list():
    with pytest.raises(ValueError, match="attentions"):
        analysis.attention_rollout([])


def test_patch_distances_match_brute_force_pixels():
    gh, gw, p = 3, 4, 16
    got = analysis.patch_distances((gh, gw), p)
    for i in range(gh * gw):
        for j in range(gh * gw):
            (ri, ci), (rj, cj) = divmod(i, gw), divmod(j, gw)
            assert got[i, j].item() == pytest.approx(p * math.hypot(ri - rj, ci - cj), abs=1e-12)


def one_hot_attention(grid, target, heads=1, prefix=1):
    """Every patch query attends only to target(row, col) -> (row', col'); the class token attends to itself."""
    gh, gw = grid
    t = prefix + gh * gw
    a = torch.zeros(1, heads, t, t, dtype=torch.float64)
    a[:, :, :prefix, :prefix] = torch.eye(prefix, dtype=torch.float64)
    for i in range(gh * gw):
        r, c = divmod(i, gw)
        r2, c2 = target(r, c)
        a[:, :, prefix + i, prefix + r2 * gw + c2] = 1.0
    return a


def test_mean_attention_distance_of_hand_built_patterns():
    grid, p = (4, 5), 16
    to_self = one_hot_attention(grid, lambda r, c: (r, c))
    assert analysis.mean_attention_distance(to_self, grid, p).item() == 0.0
    # the right neighbour, or the left one in the last column: always exactly one patch = P pixels away
    neighbour = one_hot_attention(grid, lambda r, c: (r, c + 1) if c + 1 < grid[1] else (r, c - 1))
    assert analysis.mean_attention_distance(neighbour, grid, p).item() == pytest.approx(p)
    # every query attends to patch (0, 0): the mean of P·‖(r, c)‖ over the grid
    corner = one_hot_attention(grid, lambda r, c: (0, 0))
    expected = np.mean([p * math.hypot(r, c) for r in range(grid[0]) for c in range(grid[1])])
    assert analysis.mean_attention_distance(corner, grid, p).item() == pytest.approx(expected, rel=1e-12)


def test_mean_attention_distance_is_per_head_and_ignores_the_class_token():
    grid, p = (3, 3), 8
    a = torch.cat([one_hot_attention(grid, lambda r, c: (r, c)),
                   one_hot_attention(grid, lambda r, c: (r, c + 1) if c < 2 else (r, c - 1))], dim=1)
    assert analysis.mean_attention_distance(a, grid, p).tolist() == pytest.approx([0.0, 8.0])
    to_class = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
    to_class[..., 0] = 1.0                                    # all attention on the class token: no patch distance
    assert analysis.mean_attention_distance(to_class, grid, p).item() == 0.0
    with pytest.raises(ValueError, match="attention: expected"):
        analysis.mean_attention_distance(torch.zeros(1, 1, 9, 9), grid, p)


@given(gh=st.integers(1, 4), gw=st.integers(1, 4), d=st.integers(2, 9), seed=st.integers(0, 2**16))
def test_position_similarity_equals_sklearn_cosine_similarity(gh, gw, d, seed):
    pos = torch.randn(1, 1 + gh * gw, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = cosine_similarity(pos[0, 1:].numpy()).reshape(gh, gw, gh, gw)
    assert np.allclose(analysis.position_similarity(pos, (gh, gw)).numpy(), expected, atol=1e-12)


def test_position_similarity_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match=r"pos: expected 1 \+ 3·3 rows"):
        analysis.position_similarity(torch.zeros(1, 5, 4), (3, 3))


@given(gh=st.integers(1, 4), gw=st.integers(1, 4), p=st.integers(1, 5), gap=st.integers(0, 3),
       seed=st.integers(0, 2**16))
def test_patch_grid_places_the_patches_of_patchify(gh, gw, p, gap, seed):
    image = torch.rand(gh * p, gw * p, 3, generator=torch.Generator().manual_seed(seed))
    out = analysis.patch_grid(image, p, gap)
    assert out.shape == (gh * p + (gh - 1) * gap, gw * p + (gw - 1) * gap, 3)
    patches = vit.patchify(image.permute(2, 0, 1)[None], p)[0].reshape(gh, gw, 3, p, p)   # (C, P, P) per patch
    for i in range(gh):
        for j in range(gw):
            tile = out[i * (p + gap):i * (p + gap) + p, j * (p + gap):j * (p + gap) + p]
            assert torch.equal(tile, patches[i, j].permute(1, 2, 0))
    assert int((out == 1.0).sum()) >= 3 * (out.shape[0] * out.shape[1] - gh * gw * p * p)    # the gaps are white


def test_patch_grid_rejects_a_size_not_divisible_by_the_patch():
    with pytest.raises(ValueError, match="patch_size=4"):
        analysis.patch_grid(torch.zeros(10, 8, 3), 4)


def test_class_token_map_reads_row_zero_over_the_patches():
    a = random_attention(2, 3, 1 + 6, seed=0)
    got = analysis.class_token_map(a, (2, 3))
    for b in range(2):
        for r in range(2):
            for c in range(3):
                assert got[b, r, c] == pytest.approx(float(np.mean([a[b, h, 0, 1 + r * 3 + c] for h in range(3)])))
    rollout = analysis.attention_rollout([a])
    assert torch.equal(analysis.class_token_map(rollout, (2, 3)), rollout[:, 0, 1:].reshape(2, 2, 3))
    with pytest.raises(ValueError, match="attention: expected 1 \\+ 3·3 tokens"):
        analysis.class_token_map(a, (3, 3))
