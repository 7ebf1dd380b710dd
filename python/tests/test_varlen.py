"""flash_attn_varlen_func against the float64 reference (packed sequences, seqused, empty sequences)."""

import numpy as np
import pytest

pytest.importorskip("ml_dtypes")

from fa3c.flash_attn_interface import flash_attn_varlen_func  # noqa: E402
from ref_numpy import BF16, F16, assert_lse, assert_out_ulp, attention_ref, pack, rand  # noqa: E402

MASKS = {
    "none": {},
    "causal": {"causal": True},
    "local": {"window_size": (4, 3)},
    "chunk": {"causal": True, "attention_chunk": 6},
    "softcap": {"softcap": 2.5},
}


def make_case(rng, dt, b, s_q, s_k, h, h_k, d, dv, zero_k, unused):
    """Padded q/k/v plus the per-sequence lengths used and the packed allocation lengths
    (allocated >= used when unused tokens are exercised through seqused)."""
    q, k, v = rand(rng, (b, s_q, h, d), dt), rand(rng, (b, s_k, h_k, d), dt), rand(rng, (b, s_k, h_k, dv), dt)
    used_q = rng.integers(max(1, s_q - 9), s_q + 1, size=b)
    used_k = rng.integers(max(1, s_k - 9), s_k + 1, size=b)
    if zero_k:  # FA3's zero_lengths: every 3rd sequence and the last one have no keys
        used_k[::3] = 0
        used_k[-1] = 0
        used_q[1] = 0
    alloc_q = np.minimum(used_q + (rng.integers(0, 4, size=b) if unused else 0), s_q)
    alloc_k = np.minimum(used_k + (rng.integers(0, 4, size=b) if unused else 0), s_k)
    return q, k, v, used_q, used_k, alloc_q, alloc_k


@pytest.mark.parametrize("unused", [False, True])
@pytest.mark.parametrize("zero_k", [False, True])
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)], ids=str)
@pytest.mark.parametrize("seqlens", [(1, 3), (17, 29), (40, 23)], ids=str)
def test_varlen(rng, ctx132, seqlens, heads, mask, zero_k, unused):
    (s_q, s_k), (h, h_k), kw = seqlens, heads, MASKS[mask]
    b, d = 5, 64
    q, k, v, used_q, used_k, alloc_q, alloc_k = make_case(rng, BF16, b, s_q, s_k, h, h_k, d, d, zero_k, unused)
    q_p, cu_q = pack(q, alloc_q)
    k_p, cu_k = pack(k, alloc_k)
    v_p, _ = pack(v, alloc_k)
    seqused = {"seqused_q": used_q.astype(np.int32), "seqused_k": used_k.astype(np.int32)} if unused else {}
    ref, ref_lse = attention_ref(q, k, v, used_q if unused else alloc_q, used_k if unused else alloc_k, **kw)
    sentinel = np.float32(1024.0)  # exact in bf16
    for pack_gqa in (False, True):
        for num_splits in (1, 3, 0):
            out = np.full(q_p.shape[:-1] + (d,), sentinel, dtype=BF16)
            res, lse = flash_attn_varlen_func(
                q_p, k_p, v_p, cu_q, cu_k, s_q, s_k, num_splits=num_splits, pack_gqa=pack_gqa,
                return_attn_probs=True, out=out, context=ctx132, **seqused, **kw,
            )
            assert res is out and lse.shape == (h, q_p.shape[0])
            for i in range(b):
                rows = slice(cu_q[i], cu_q[i] + (used_q[i] if unused else alloc_q[i]))
                n = rows.stop - rows.start
                assert_out_ulp(out[rows], ref[i, :n])
                assert_lse(lse[:, rows], ref_lse[i, :, :n])
                # rows past seqused_q are never written
                assert np.all(out[rows.stop:cu_q[i + 1]].astype(np.float32) == sentinel)


def test_varlen_return_softmax_lse(rng, ctx132):
    """sgl-kernel's return_softmax_lse: (out, lse, out_accum, lse_accum), the partials filled
    when the resolved split count exceeds 1."""
    b, s_q, s_k, h, h_k, d = 3, 4, 700, 4, 1, 64
    q, k, v, _, _, alloc_q, alloc_k = make_case(rng, F16, b, s_q, s_k, h, h_k, d, d, False, False)
    q_p, cu_q = pack(q, alloc_q)
    k_p, cu_k = pack(k, alloc_k)
    v_p, _ = pack(v, alloc_k)
    ref, ref_lse = attention_ref(q, k, v, alloc_q, alloc_k)
    for num_splits, split in ((1, False), (4, True)):
        out, lse, out_accum, lse_accum = flash_attn_varlen_func(
            q_p, k_p, v_p, cu_q, cu_k, s_q, s_k, num_splits=num_splits, return_softmax_lse=True, context=ctx132)
        total_q = q_p.shape[0]
        if split:
            S = out_accum.shape[0]
            assert 1 < S <= 4
            assert out_accum.shape == (S, h, total_q, d) and lse_accum.shape == (S, h, total_q)
            assert out_accum.dtype == np.float32 and lse_accum.dtype == np.float32
        else:
            assert out_accum.size == 0 and lse_accum.size == 0
        for i in range(b):
            rows = slice(cu_q[i], cu_q[i + 1])
            assert_out_ulp(out[rows], ref[i, :alloc_q[i]])
            assert_lse(lse[:, rows], ref_lse[i, :, :alloc_q[i]])


def test_varlen_empty_keys_is_plus_inf(rng):
    """No keys at all (static total_k == 0): out 0 and lse +inf (FA3's empty-cache rule)."""
    b, h, d = 3, 2, 64
    q = rand(rng, (5, h, d), BF16)
    k = np.zeros((0, h, d), dtype=BF16)
    cu_q = np.array([0, 2, 2, 5], dtype=np.int32)
    cu_k = np.zeros(b + 1, dtype=np.int32)
    out, lse = flash_attn_varlen_func(q, k, k, cu_q, cu_k, 3, 0, return_attn_probs=True)
    assert np.all(out.astype(np.float32) == 0)
    assert np.all(lse == np.inf)
