"""flash_attn_func against the float64 reference."""

import numpy as np
import pytest

pytest.importorskip("ml_dtypes")

from fa3c.flash_attn_interface import flash_attn_func, flash_attn_qkvpacked_func  # noqa: E402
from ref_numpy import BF16, E4M3, F16, assert_lse, assert_out_ulp, attention_ref, rand  # noqa: E402

DTYPES = {"bf16": BF16, "fp16": F16}
HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}
MASKS = {
    "none": {},
    "causal": {"causal": True},
    "local": {"window_size": (5, 2)},
    "causal_local": {"causal": True, "window_size": (6, -1)},
    "left_only": {"window_size": (-1, 3)},
    "chunk": {"attention_chunk": 8},
    "causal_chunk": {"causal": True, "attention_chunk": 5},
    "softcap": {"softcap": 2.0},
    "causal_softcap": {"causal": True, "softcap": 2.0},
}
SEQLENS = [(1, 1), (7, 19), (33, 17), (48, 80)]


def check(q, k, v, out, lse, **kw):
    ref, ref_lse = attention_ref(q, k, v, **kw)
    assert out.shape == ref.shape and lse.shape == ref_lse.shape
    assert_out_ulp(out, ref)
    assert_lse(lse, ref_lse)


@pytest.mark.parametrize("seqlens", SEQLENS, ids=str)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_func(rng, dtype, heads, mask, seqlens):
    (h, h_k), (s_q, s_k), dt, kw = HEADS[heads], seqlens, DTYPES[dtype], MASKS[mask]
    b, d = 2, 64
    q, k, v = rand(rng, (b, s_q, h, d), dt), rand(rng, (b, s_k, h_k, d), dt), rand(rng, (b, s_k, h_k, d), dt)
    for pack_gqa in (False, True):
        for num_splits in (1, 3):
            out, lse = flash_attn_func(q, k, v, num_splits=num_splits, pack_gqa=pack_gqa, return_attn_probs=True, **kw)
            assert out.dtype == dt and lse.dtype == np.float32
            check(q, k, v, out, lse, **kw)


@pytest.mark.parametrize("d", [8, 40, 96, 128, 256])
def test_func_headdims(rng, d):
    q, k, v = rand(rng, (2, 9, 2, d), BF16), rand(rng, (2, 21, 1, d), BF16), rand(rng, (2, 21, 1, d), BF16)
    out, lse = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    check(q, k, v, out, lse, causal=True)


@pytest.mark.parametrize("dv", [256, 512])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_func_qv(rng, dtype, causal, dv):
    dt, b, s_q, s_k, h, h_k, d = DTYPES[dtype], 2, 5, 23, 2, 1, 64
    q, k, v = rand(rng, (b, s_q, h, d), dt), rand(rng, (b, s_k, h_k, d), dt), rand(rng, (b, s_k, h_k, dv), dt)
    qv = rand(rng, (b, s_q, h, dv), dt)
    for num_splits in (1, 3):
        out, lse = flash_attn_func(q, k, v, causal=causal, qv=qv, num_splits=num_splits, return_attn_probs=True)
        assert out.shape == (b, s_q, h, dv)
        # default scale (d + dv)^-0.5, computed in the wrapper as FA3 does
        check(q, k, v, out, lse, causal=causal, qv=qv, scale=(d + dv) ** -0.5)


@pytest.mark.parametrize("causal", [False, True])
def test_func_d192_dv128(rng, causal):
    q, k, v = rand(rng, (2, 17, 4, 192), BF16), rand(rng, (2, 29, 2, 192), BF16), rand(rng, (2, 29, 2, 128), BF16)
    out, lse = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
    assert out.shape == (2, 17, 4, 128)
    check(q, k, v, out, lse, causal=causal)


@pytest.mark.parametrize("descale", ["none", "full", "broadcast"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
def test_func_fp8(rng, d, causal, descale):
    b, s_q, s_k, h, h_k = 2, 13, 37, 4, 2
    q, k, v = rand(rng, (b, s_q, h, d), E4M3), rand(rng, (b, s_k, h_k, d), E4M3), rand(rng, (b, s_k, h_k, d), E4M3)
    ds = {}
    if descale == "full":
        ds = {n: (rng.random((b, h_k)) * 2).astype(np.float32) for n in ("q_descale", "k_descale", "v_descale")}
    elif descale == "broadcast":  # stride-0 views, as torch's expand gives
        names = ("q_descale", "k_descale", "v_descale")
        ds = {n: np.broadcast_to(np.float32(rng.random() * 2), (b, h_k)) for n in names}
    for num_splits in (1, 3):
        out, lse = flash_attn_func(q, k, v, causal=causal, num_splits=num_splits, return_attn_probs=True, **ds)
        assert out.dtype == BF16
        check(q, k, v, out, lse, causal=causal, **ds)


@pytest.mark.parametrize("sink_dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("causal", [False, True])
def test_func_sinks(rng, sink_dtype, causal):
    b, s_q, s_k, h, h_k, d = 2, 11, 6, 4, 2, 64  # s_q > s_k: causal leaves rows with no key
    q, k, v = rand(rng, (b, s_q, h, d), BF16), rand(rng, (b, s_k, h_k, d), BF16), rand(rng, (b, s_k, h_k, d), BF16)
    sinks = rand(rng, (h,), BF16 if sink_dtype == "bf16" else np.float32)
    for num_splits in (1, 3):
        out, lse = flash_attn_func(q, k, v, causal=causal, sinks=sinks, num_splits=num_splits, return_attn_probs=True)
        check(q, k, v, out, lse, causal=causal, sinks=sinks)
        if causal:  # no visible key with a sink: out 0, lse = sink
            assert np.all(out[:, : s_q - s_k].astype(np.float32) == 0)
            assert np.array_equal(lse[:, :, 0], np.broadcast_to(sinks.astype(np.float32), (b, h)))


def test_func_fully_masked_rows(rng):
    b, s_q, s_k, h, d = 2, 9, 4, 2, 64
    q, k, v = rand(rng, (b, s_q, h, d), F16), rand(rng, (b, s_k, h, d), F16), rand(rng, (b, s_k, h, d), F16)
    out, lse = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    masked = s_q - s_k  # bottom-right causal: rows i < s_q - s_k see no key
    assert np.all(out[:, :masked] == 0)
    assert np.all(lse[:, :, :masked] == -np.inf)
    check(q, k, v, out, lse, causal=True)


def test_func_noncontiguous_inputs(rng):
    b, s_q, s_k, h, h_k, d = 2, 7, 15, 4, 2, 64
    q_big = rand(rng, (b, s_q, h, 2 * d), BF16)
    q = q_big[..., ::2]                               # last stride 2: copied as FA3's maybe_contiguous does
    kv = rand(rng, (b, s_k, 2, h_k, d), BF16)         # k and v as views into one buffer
    k, v = kv[:, :, 0], kv[:, :, 1]
    out, lse = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    check(np.ascontiguousarray(q), k, v, out, lse, causal=True)


def test_func_returns_and_defaults(rng):
    b, s, h, d = 1, 5, 2, 32
    q, k, v = (rand(rng, (b, s, h, d), BF16) for _ in range(3))
    out = flash_attn_func(q, k, v)
    assert isinstance(out, np.ndarray) and out.shape == (b, s, h, d)
    out2, lse = flash_attn_func(q, k, v, softmax_scale=d ** -0.5, return_attn_probs=True)
    assert np.array_equal(out.view(np.uint16), out2.view(np.uint16))
    assert lse.shape == (b, h, s)
    given = np.zeros((b, s, h, d), dtype=BF16)
    res = flash_attn_func(q, k, v, out=given, deterministic=True)
    assert res is given and np.array_equal(given.view(np.uint16), out.view(np.uint16))


@pytest.mark.parametrize("gqa", [False, True])
def test_qkvpacked(rng, gqa):
    """FA3's packed entry point: q, k, v as views of one (b, s, 3, h, d) array, or of (b, s, h + 2 h_k, d)
    with num_heads_q; the same answer as flash_attn_func on the three views."""
    b, s, h, hk, d = 2, 37, 4, (2 if gqa else 4), 64
    if gqa:
        qkv = rand(rng, (b, s, h + 2 * hk, d), BF16)
        q, k, v = qkv[:, :, :h], qkv[:, :, h:h + hk], qkv[:, :, h + hk:]
        out, lse = flash_attn_qkvpacked_func(qkv, causal=True, num_heads_q=h, return_attn_probs=True)
    else:
        qkv = rand(rng, (b, s, 3, h, d), BF16)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out, lse = flash_attn_qkvpacked_func(qkv, causal=True, return_attn_probs=True)
    check(q, k, v, out, lse, causal=True)
    ref = flash_attn_func(q, k, v, causal=True)
    assert np.array_equal(np.asarray(out).view(np.uint16), np.asarray(ref).view(np.uint16))
    with pytest.raises(Exception, match="num_heads_q"):
        flash_attn_qkvpacked_func(rand(rng, (b, s, h + 2 * hk, d), BF16))
