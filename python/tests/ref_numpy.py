"""Independent numpy reference for the fa3c Python tests, in the style of FA3's
test_util.attention_ref: padded batches, per-sequence lengths, masks built per sequence with
bottom-right alignment, math in float64 (or, for FA3's pass rule, emulated at the input precision).

Shape legend: b, s_q, s_k, h, h_k, d, dv as in include/fa3c.h.
"""

import numpy as np

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
    E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
except ImportError:  # the tests that need them are skipped
    BF16 = E4M3 = None

F16 = np.dtype(np.float16)


def rand(rng, shape, dtype, scale=1.0):
    """Normal values rounded to dtype."""
    return (rng.standard_normal(shape) * scale).astype(np.float32).astype(dtype)


def f64(x):
    return np.asarray(x).astype(np.float64)


def rnd(x, dtype):
    """x rounded to dtype, returned as float32."""
    return np.asarray(x, dtype=np.float32).astype(dtype).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Masks


def visible_mask(seqlen_q, seqlen_k, causal=False, window_size=(-1, -1), attention_chunk=0):
    """(seqlen_q, seqlen_k) bool, True where query i sees key j. Bottom-right aligned: query i sits
    at key position i + seqlen_k - seqlen_q. A negative window side is unbounded; causal is a
    right window of 0; a chunk keeps the keys of the query position's chunk (floor division)."""
    wl, wr = window_size
    if causal:
        wr = 0
    i = np.arange(seqlen_q)[:, None]
    j = np.arange(seqlen_k)[None, :]
    pos = i + seqlen_k - seqlen_q
    vis = np.ones((seqlen_q, seqlen_k), dtype=bool)
    if wr >= 0:
        vis &= j <= pos + wr
    if wl >= 0:
        vis &= j >= pos - wl
    if attention_chunk > 0:
        start = np.floor_divide(pos, attention_chunk) * attention_chunk
        vis &= (j >= start) & (j < start + attention_chunk)
    return vis


# ---------------------------------------------------------------------------------------------
# Attention


def attention_ref(q, k, v, seqlen_q=None, seqlen_k=None, *, causal=False, window_size=(-1, -1),
                  attention_chunk=0, softcap=0.0, scale=None, qv=None, q_descale=None, k_descale=None,
                  v_descale=None, sinks=None, lowp=None):
    """q (b, s_q, h, d), k (b, s_k, h_k, d), v (b, s_k, h_k, dv), qv (b, s_q, h, dv): padded;
    sequence i uses q rows [0, seqlen_q[i]) and keys [0, seqlen_k[i]) (default: all).
    Descales (b, h_k); sinks (h,).

    lowp None: float64 math on the given (already dtype-rounded) values. lowp = a dtype: the
    "same precision" computation of FA3's tests (scores, probabilities and output rounded to
    lowp, accumulation in float32, scale folded into k).
    Returns out (b, s_q, h, dv) float64 (padded rows 0) and lse (b, h, s_q) float64 (padded rows NaN).
    """
    b, s_q, h, d = q.shape
    h_k, dv = k.shape[2], v.shape[-1]
    g = h // h_k
    if scale is None:
        scale = (d + (qv.shape[-1] if qv is not None else 0)) ** -0.5
    seqlen_q = np.full(b, s_q) if seqlen_q is None else np.asarray(seqlen_q)
    seqlen_k = np.full(b, k.shape[1]) if seqlen_k is None else np.asarray(seqlen_k)
    heads_k = np.arange(h) // g
    work = np.float64 if lowp is None else np.float32
    r = (lambda x: x) if lowp is None else (lambda x: rnd(x, lowp))
    out = np.zeros((b, s_q, h, dv))
    lse = np.full((b, h, s_q), np.nan)
    for bi in range(b):
        sq, sk = int(seqlen_q[bi]), int(seqlen_k[bi])
        qb = q[bi, :sq].astype(work).transpose(1, 0, 2)                     # (h, sq, d)
        kb = k[bi, :sk][:, heads_k].astype(work).transpose(1, 0, 2)         # (h, sk, d)
        vb = v[bi, :sk][:, heads_k].astype(work).transpose(1, 0, 2)         # (h, sk, dv)
        qd = kd = vd = np.ones((h, 1, 1), dtype=work)
        if q_descale is not None:
            qd = f64(q_descale)[bi, heads_k].astype(work)[:, None, None]
            kd = f64(k_descale)[bi, heads_k].astype(work)[:, None, None]
            vd = f64(v_descale)[bi, heads_k].astype(work)[:, None, None]
        if lowp is None:
            s = scale * (qd * kd * (qb @ kb.transpose(0, 2, 1)))
            if qv is not None:
                s = s + scale * (qv[bi, :sq].astype(work).transpose(1, 0, 2) @ vb.transpose(0, 2, 1))
        else:
            s = r(qb @ r(kb * (qd * kd * scale)).transpose(0, 2, 1))
            if qv is not None:
                s = r(s + r(qv[bi, :sq].astype(work).transpose(1, 0, 2) @ r(vb * scale).transpose(0, 2, 1)))
        if softcap > 0:
            s = r(softcap * np.tanh(s / softcap))
        vis = visible_mask(sq, sk, causal, window_size, attention_chunk)
        s = np.where(vis[None], s, -np.inf)
        m = s.max(axis=-1, initial=-np.inf)                                  # (h, sq)
        sink = None
        if sinks is not None:
            sink = f64(sinks).astype(work)[:, None]
            m = np.maximum(m, sink)
        m_safe = np.where(np.isfinite(m), m, 0)
        p = np.exp(s - m_safe[..., None])
        l = p.sum(axis=-1)
        if sink is not None:
            l = l + np.exp(sink - m_safe)
        with np.errstate(divide="ignore", invalid="ignore"):
            o = np.where(l[..., None] > 0, r(p / l[..., None]) @ vb, 0) * vd
            lse[bi, :, :sq] = np.where(l > 0, m_safe + np.log(l), -np.inf)
        out[bi, :sq] = r(o).transpose(1, 0, 2)
    return out, lse


def combine_ref(out_partial, lse_partial):
    """out_partial (S, ..., dv), lse_partial (S, ...): merge over the splits whose lse is finite.
    Returns out (..., dv), lse (...) float64; no finite split: out 0, lse -inf."""
    o = f64(out_partial)
    l = f64(lse_partial)
    fin = np.isfinite(l)
    m = np.where(fin, l, -np.inf).max(axis=0)
    m_safe = np.where(np.isfinite(m), m, 0)
    w = np.where(fin, np.exp(np.where(fin, l, 0) - m_safe), 0)
    tot = w.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(tot > 0, m_safe + np.log(tot), -np.inf)
        out = np.where(tot[..., None] > 0, (w[..., None] * o).sum(axis=0) / tot[..., None], 0)
    return out, lse


def rotary_ref(x, cos, sin, positions, interleaved):
    """x (n, h, d) float32, cos/sin (s_ro, rotary_dim / 2), positions (n,). Rotates the first
    rotary_dim features of row t at positions[t], in float32 (as the library does, then rounds)."""
    x = np.array(x, dtype=np.float32)
    half = cos.shape[1]
    c = cos.astype(np.float32)[positions][:, None, :]                       # (n, 1, half)
    s = sin.astype(np.float32)[positions][:, None, :]
    if interleaved:
        x0, x1 = x[..., 0:2 * half:2].copy(), x[..., 1:2 * half:2].copy()
        x[..., 0:2 * half:2] = x0 * c - x1 * s
        x[..., 1:2 * half:2] = x0 * s + x1 * c
    else:
        x0, x1 = x[..., :half].copy(), x[..., half:2 * half].copy()
        x[..., :half] = x0 * c - x1 * s
        x[..., half:2 * half] = x0 * s + x1 * c
    return x


# ---------------------------------------------------------------------------------------------
# Packing


def pack(x, seqlens):
    """Padded (b, s, ...) -> packed (sum seqlens, ...) and cu_seqlens (b + 1,) int32."""
    cu = np.zeros(len(seqlens) + 1, dtype=np.int32)
    cu[1:] = np.cumsum(seqlens)
    return np.concatenate([x[i, :n] for i, n in enumerate(seqlens)], axis=0), cu


def unpack(x, cu, s):
    """Packed (total, ...) -> padded (b, s, ...) (zeros past each length)."""
    out = np.zeros((len(cu) - 1, s) + x.shape[1:], dtype=x.dtype)
    for i in range(len(cu) - 1):
        out[i, :cu[i + 1] - cu[i]] = x[cu[i]:cu[i + 1]]
    return out


# ---------------------------------------------------------------------------------------------
# Tolerances

_MANT = {"bfloat16": 7, "float16": 10, "float32": 23}
_EMIN = {"bfloat16": -126, "float16": -14, "float32": -126}


def ulp(x, dtype):
    """Unit in the last place of |x| in dtype (bfloat16, float16, float32)."""
    name = np.dtype(dtype).name
    a = np.abs(f64(x))
    e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    e = np.maximum(np.where(a > 0, e, _EMIN[name]), _EMIN[name])
    return 2.0 ** (e - _MANT[name])


def assert_out_ulp(out, ref, valid=None, atol=1e-6):
    """|out - ref| <= 1 ulp of out's dtype at ref + atol, where valid (broadcast to out) holds: the
    library computes in fp32 and rounds once to the out dtype."""
    o, r = f64(out), f64(ref)
    assert np.all(np.isfinite(o[valid] if valid is not None else o)), "non-finite output"
    err = np.abs(o - r)
    tol = ulp(r, out.dtype) + atol
    bad = err > tol
    if valid is not None:
        bad &= np.broadcast_to(valid, bad.shape)
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{int(bad.sum())} of {bad.size} elements off by more than 1 ulp + {atol}: first at {idx}: "
            f"out {o[idx]!r} ref {r[idx]!r} (max err {err[bad].max():.3g})"
        )


def assert_out_fa3(out, ref, naive, mult=2.0, valid=None):
    """FA3's rule: max|out - ref| <= mult * max|naive - ref| + 2 ulp(ref) (fwd_atol)."""
    o, r, n = f64(out), f64(ref), f64(naive)
    if valid is not None:
        o, r, n = o[valid], r[valid], n[valid]
    atol = 2 * np.abs(rnd(rnd(r + 0.3, out.dtype) - 0.3, out.dtype) - r).max(initial=0) + 1e-6
    err, nerr = np.abs(o - r).max(initial=0), np.abs(n - r).max(initial=0)
    assert err <= mult * nerr + atol, f"max err {err:.4g} > {mult} * naive err {nerr:.4g} + {atol:.3g}"


def assert_lse(lse, ref, valid=None, tol=1e-5):
    """lse (fp32) against the float64 reference: infinities equal, finite values within tol (abs + rel)."""
    l, r = f64(lse), f64(ref)
    if valid is not None:
        l, r = l[valid], r[valid]
    inf = ~np.isfinite(r)
    assert np.array_equal(l[inf], r[inf]), f"lse infinities differ: {l[inf][:8]} vs {r[inf][:8]}"
    err = np.abs(l[~inf] - r[~inf])
    lim = tol * (1 + np.abs(r[~inf]))
    assert np.all(err <= lim), f"lse max err {err.max():.3g}"
