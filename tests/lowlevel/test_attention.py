"""App. A, eqs. (5)-(8): our multi-head self-attention equals torch.nn.MultiheadAttention, probabilities included."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lowlevel import multi_head_attention, scaled_dot_product_attention

cases = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 4), st.integers(1, 6), st.booleans(),
                  st.integers(0, 2**16))


def mha_twin(batch, length, heads, head_dim, bias, seed, dtype):
    """Random input and an nn.MultiheadAttention with random weights (biases too, which it zero-initialises)."""
    torch.manual_seed(seed)
    dim = heads * head_dim
    mha = torch.nn.MultiheadAttention(dim, heads, bias=bias, batch_first=True, dtype=dtype).eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(batch, length, dim, dtype=dtype)
    return x, mha


def ours(x, mha, heads):
    return multi_head_attention(x, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias,
                                heads)


@given(cases)
def test_multi_head_attention_equals_nn_multihead(case):
    x, mha = mha_twin(*case, dtype=torch.float64)
    heads = case[2]
    ref_out, ref_probs = mha(x, x, x, need_weights=True, average_attn_weights=False)  # probs (B, H, N, N)
    out, probs = ours(x, mha, heads)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-10)
    torch.testing.assert_close(probs, ref_probs, rtol=0, atol=1e-12)


@given(cases)
def test_multi_head_attention_equals_nn_multihead_float32(case):
    """float32: both sides round each matmul and the softmax differently (scaling before or after QKᵀ, fused
    kernels); with O(1) weights and ≤ 24 features the outputs agree to ~1e-6, so 1e-5 leaves margin."""
    x, mha = mha_twin(*case, dtype=torch.float32)
    ref_out, ref_probs = mha(x, x, x, need_weights=True, average_attn_weights=False)
    out, probs = ours(x, mha, case[2])
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probs, ref_probs, rtol=1e-5, atol=1e-6)


@given(cases)
def test_multi_head_attention_gradients_equal_nn_multihead(case):
    x, mha = mha_twin(*case, dtype=torch.float64)
    x_ref = x.clone().requires_grad_(True)
    x_ours = x.clone().requires_grad_(True)
    ref_out, _ = mha(x_ref, x_ref, x_ref, need_weights=False)
    weights = [p.detach().clone().requires_grad_(True) for p in
               (mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias) if p is not None]
    if case[4]:
        w_qkv, b_qkv, w_out, b_out = weights
    else:
        (w_qkv, w_out), b_qkv, b_out = weights, None, None
    out, _ = multi_head_attention(x_ours, w_qkv, b_qkv, w_out, b_out, case[2])
    g = torch.randn_like(out)
    (ref_out * g).sum().backward()
    (out * g).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=0, atol=1e-10)
    refs = [p for p in (mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias) if p is not None]
    for ours_w, ref_w in zip(weights, refs, strict=True):
        torch.testing.assert_close(ours_w.grad, ref_w.grad, rtol=0, atol=1e-10)


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 8))
def test_scaled_dot_product_attention_equals_torch_sdpa(batch, heads, length, head_dim):
    g = torch.Generator().manual_seed(batch * 1000 + heads * 100 + length * 10 + head_dim)
    q, k, v = (torch.randn(batch, heads, length, head_dim, generator=g, dtype=torch.float64) for _ in range(3))
    out, probs = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-12)
    torch.testing.assert_close(probs.sum(-1), torch.ones(batch, heads, length, dtype=torch.float64))


def test_heads_must_divide_the_dim():
    x = torch.randn(1, 3, 10)
    with pytest.raises(ValueError, match="num_heads: expected a positive divisor of the input dim 10, got 3"):
        multi_head_attention(x, torch.randn(30, 10), None, torch.randn(10, 10), None, 3)
