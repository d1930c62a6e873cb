"""paper/models/resolution.py: each named resampling method equals its original, on random square and non-square grids."""
import itertools

import numpy as np
import pytest
import scipy.ndimage
import torch
from hypothesis import given
from hypothesis import strategies as st
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import checkpoint_filter_fn
from torchvision.models.vision_transformer import interpolate_embeddings
from transformers.models.vit.modeling_vit import ViTEmbeddings

import lowlevel as vit
from paper.formats.huggingface import hf_config
from paper.formats.timm import to_timm
from paper.models.resolution import METHODS, change_resolution, resample_pos_embed
from paper.references.vit import hf_vit, timm_vit
from tests import helpers

grid = st.tuples(st.integers(2, 12), st.integers(2, 12))
dtypes = st.sampled_from([torch.float32, torch.float64])

# helpers.random_params' scale in these tests: E_pos far from its initial value,
# so that resampling it changes the logits visibly.
FAR = 0.5


def random_pos(old_grid, dim, dtype, seed, prefix=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, prefix + old_grid[0] * old_grid[1], dim, generator=g, dtype=dtype)


def official_zoom(posemb: np.ndarray, new_grid) -> np.ndarray:
    """vision_transformer checkpoint.py `load_pretrained` (and big_vision `resample_posemb`), as written there:
    split off the class token, reshape to the grid, scipy.ndimage.zoom with order=1, flatten, concatenate."""
    posemb_tok, posemb_grid = posemb[:, :1], posemb[0, 1:]
    gs_old = int(np.sqrt(len(posemb_grid)))
    posemb_grid = posemb_grid.reshape(gs_old, gs_old, -1)
    zoom = (new_grid[0] / gs_old, new_grid[1] / gs_old, 1)
    posemb_grid = scipy.ndimage.zoom(posemb_grid, zoom, order=1)
    posemb_grid = posemb_grid.reshape(1, new_grid[0] * new_grid[1], -1)
    return np.concatenate([posemb_tok, posemb_grid], axis=1)


@given(side=st.integers(2, 12), new=grid, dtype=dtypes, seed=st.integers(0, 2**16))
def test_official_equals_scipy_zoom_as_checkpoint_py(side, new, dtype, seed):
    pos = random_pos((side, side), 8, dtype, seed)
    ours = resample_pos_embed(pos, (side, side), new, 1, "official")
    assert ours.dtype == dtype
    np.testing.assert_array_equal(ours.numpy(), official_zoom(pos.numpy(), new))


@given(old=grid, new=grid, dtype=dtypes, seed=st.integers(0, 2**16), prefix=st.integers(0, 2))
def test_timm_equals_resample_abs_pos_embed(old, new, dtype, seed, prefix):
    pos = random_pos(old, 8, dtype, seed, prefix)
    ours = resample_pos_embed(pos, old, new, prefix, "timm")
    theirs = resample_abs_pos_embed(pos, new_size=list(new), old_size=list(old), num_prefix_tokens=prefix)
    assert ours.dtype == theirs.dtype == dtype
    assert torch.equal(ours, theirs)


@given(side=st.integers(2, 12), new=grid, dtype=dtypes, seed=st.integers(0, 2**16))
def test_hf_equals_interpolate_pos_encoding(side, new, dtype, seed):
    """transformers' ViTEmbeddings.interpolate_pos_encoding (square source grid, as it assumes; any target)."""
    p, dim = 4, 8
    cfg = vit.ViTConfig(image_size=side * p, patch_size=p, dim=dim, depth=1, num_heads=2, mlp_dim=16)
    embeddings = ViTEmbeddings(hf_config(cfg)).to(dtype)
    pos = random_pos((side, side), dim, dtype, seed)
    embeddings.position_embeddings.data.copy_(pos)
    tokens = torch.zeros(1, 1 + new[0] * new[1], dim, dtype=dtype)
    theirs = embeddings.interpolate_pos_encoding(tokens, new[0] * p, new[1] * p)
    ours = resample_pos_embed(pos, (side, side), new, 1, "hf")
    assert ours.dtype == theirs.dtype == dtype
    assert torch.equal(ours, theirs)


@given(side=st.integers(2, 12), new_side=st.integers(2, 12), dtype=dtypes, seed=st.integers(0, 2**16))
def test_torchvision_equals_interpolate_embeddings(side, new_side, dtype, seed):
    """torchvision's interpolate_embeddings, on the state_dict it takes (square grids only, as it asserts)."""
    p = 4
    pos = random_pos((side, side), 8, dtype, seed)
    theirs = interpolate_embeddings(new_side * p, p, {"encoder.pos_embedding": pos.clone()})["encoder.pos_embedding"]
    ours = resample_pos_embed(pos, (side, side), (new_side, new_side), 1, "torchvision")
    assert ours.dtype == theirs.dtype == dtype
    assert torch.equal(ours, theirs)


def test_the_methods_really_differ():
    """The reason the method is a named choice: on a 14×14 -> 24×24 grid they disagree well above rounding."""
    pos = random_pos((14, 14), 16, torch.float64, 0) * 0.02
    out = {m: resample_pos_embed(pos, (14, 14), (24, 24), 1, m) for m in METHODS}
    for a, b in itertools.combinations(METHODS, 2):
        assert (out[a] - out[b]).abs().max() > 1e-4
    for m in out:
        assert torch.equal(out[m][:, 0], pos[:, 0])            # the class token's row is kept apart


def test_same_grid_is_identity():
    pos = random_pos((5, 7), 8, torch.float64, 1)
    for m in METHODS:
        assert torch.allclose(resample_pos_embed(pos, (5, 7), (5, 7), 1, m), pos, atol=1e-6, rtol=0)


def tiny_cfg(**kw):
    return vit.ViTConfig(**{"image_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64,
                            "num_classes": 5, **kw})


@pytest.mark.parametrize("new_size", [(48, 48), (48, 64), (16, 24)])
def test_change_resolution_equals_timm_checkpoint_filter(new_size):
    """timm fine-tuning at a new size: `checkpoint_filter_fn` resamples pos_embed when loading a checkpoint. Both
    sides interpolate in float32 (timm casts there and back) and run the model in float64."""
    cfg = tiny_cfg()
    params = helpers.random_params(cfg, dtype=torch.float64, scale=FAR)
    new_params, new_cfg = change_resolution(params, cfg, new_size, "timm")
    model = timm_vit(new_cfg).double().eval()
    model.load_state_dict(checkpoint_filter_fn(to_timm(params, cfg), model))
    x = torch.randn(2, 3, *new_size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(vit.forward(new_params, x, new_cfg), model(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("new_size", [(48, 48), (48, 64)])
def test_change_resolution_equals_hf_interpolate_pos_encoding(new_size):
    """transformers fine-tuning at a new size: forward(..., interpolate_pos_encoding=True), float64."""
    cfg = tiny_cfg()
    params = helpers.random_params(cfg, dtype=torch.float64, scale=FAR)
    new_params, new_cfg = change_resolution(params, cfg, new_size, "hf")
    from paper.formats.huggingface import to_hf
    model = hf_vit(cfg).double().eval()
    model.load_state_dict(to_hf(params, cfg)[0])
    x = torch.randn(2, 3, *new_size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    theirs = model(x, interpolate_pos_encoding=True).logits
    torch.testing.assert_close(vit.forward(new_params, x, new_cfg), theirs, rtol=0, atol=1e-10)


def test_bad_pos_is_refused():
    with pytest.raises(ValueError, match="pos: expected 1 \\+ 4·4 = 17 rows"):
        resample_pos_embed(torch.zeros(1, 10, 8), (4, 4), (6, 6))
    with pytest.raises(ValueError, match="method: expected one of"):
        resample_pos_embed(torch.zeros(1, 17, 8), (4, 4), (6, 6), method="bilinear")
