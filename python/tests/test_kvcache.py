"""flash_attn_with_kvcache and get_scheduler_metadata against the float64 reference: paged and
non-paged caches, batch indirection, left padding, in-place append (batched and varlen), rotary,
splits, the return_softmax_lse four-tuple and scheduler-metadata reuse."""

import numpy as np
import pytest

pytest.importorskip("ml_dtypes")

import fa3c  # noqa: E402
from fa3c.flash_attn_interface import flash_attn_func, flash_attn_with_kvcache, get_scheduler_metadata  # noqa: E402
from ref_numpy import (  # noqa: E402
    BF16, E4M3, F16, assert_lse, assert_out_fa3, assert_out_ulp, attention_ref, combine_ref, f64, pack, rand, rnd,
    rotary_ref, ulp,
)


class Case:
    """A kvcache call and its expected results.

    Cache: non-paged (b_k, s_k, h_k, d/dv), or paged (num_pages, page_size, h_k, d/dv) with a
    random page table (b_k, ceil(s_k / page_size)); b_k = 2b with cache_batch_idx.
    q: (b, s_q, h, d), or packed (total_q, h, d) with cu_seqlens_q (varlen, 0..s_q rows each).
    append: k/v (b, s_new, h_k, d/dv), or packed with cu_seqlens_k_new (0..s_new rows each).
    """

    def __init__(self, rng, *, dt=BF16, b=3, s_q=4, s_k=40, h=4, h_k=2, d=64, dv=None, page_size=None,
                 append=None, varlen_q=False, batch_idx=False, leftpad=False, rotary=None, rotary_fraction=1.0,
                 rotary_seqlens=False, causal=False, window_size=(-1, -1), attention_chunk=0, softcap=0.0,
                 qv=False, sinks=False):
        dv = d if dv is None else dv
        self.kw = dict(causal=causal, window_size=window_size, attention_chunk=attention_chunk, softcap=softcap)
        self.dt, self.b, self.h, self.h_k, self.d, self.dv = dt, b, h, h_k, d, dv
        self.batch_idx, self.has_leftpad = batch_idx, leftpad
        b_k = 2 * b if batch_idx else b
        self.batch_row = rng.permutation(b_k)[:b].astype(np.int32) if batch_idx else np.arange(b, dtype=np.int32)
        # cache
        if page_size is None:
            self.s_k_static = s_k
            self.k_cache, self.v_cache = rand(rng, (b_k, s_k, h_k, d), dt), rand(rng, (b_k, s_k, h_k, dv), dt)
            self.page_table = None
        else:
            pages = -(-s_k // page_size)
            self.s_k_static = pages * page_size
            num_pages = 2 * b_k * pages
            self.k_cache = rand(rng, (num_pages, page_size, h_k, d), dt)
            self.v_cache = rand(rng, (num_pages, page_size, h_k, dv), dt)
            self.page_table = rng.permutation(num_pages)[: b_k * pages].reshape(b_k, pages).astype(np.int32)
        self.page_size = page_size
        # lengths
        s_new = 0 if append is None else min(5, self.s_k_static)
        if append == "varlen":
            self.new_len = rng.integers(0, s_new + 1, size=b)
        else:
            self.new_len = np.full(b, s_new)
        lo = 0 if append else 1
        self.cache_seqlens = rng.integers(lo, self.s_k_static - s_new + 1, size=b).astype(np.int32)
        self.leftpad = (rng.integers(0, self.cache_seqlens + 1) if leftpad else np.zeros(b, int)).astype(np.int32)
        self.q_len = rng.integers(0, s_q + 1, size=b) if varlen_q else np.full(b, s_q)
        self.s_q = s_q
        self.varlen_q = varlen_q
        q = rand(rng, (b, s_q, h, d), dt)
        self.q_pad = q
        self.qv_pad = rand(rng, (b, s_q, h, dv), dt) if qv else None
        self.k_new_pad = rand(rng, (b, s_new, h_k, d), dt) if append else None
        self.v_new_pad = rand(rng, (b, s_new, h_k, dv), dt) if append else None
        self.sinks = rand(rng, (h,), BF16) if sinks else None
        # rotary
        self.rotary = rotary
        self.rot_base = self.cache_seqlens.copy()
        if rotary:
            rotary_dim = int(d * rotary_fraction) // 16 * 16
            s_ro = self.s_k_static + s_q
            inv = 1.0 / (10000.0 ** (np.arange(0, rotary_dim, 2) / rotary_dim))
            ang = np.arange(s_ro)[:, None] * inv[None, :]
            self.cos, self.sin = np.cos(ang).astype(dt), np.sin(ang).astype(dt)
            if rotary_seqlens:
                self.rot_base = rng.integers(0, s_ro - max(s_q, s_new) + 1, size=b).astype(np.int32)
        self.rotary_seqlens = rotary_seqlens

    # -- call -----------------------------------------------------------------------------------

    def args(self):
        """Positional q, k_cache, v_cache and the keyword arguments of the call."""
        kw = dict(self.kw, cache_seqlens=self.cache_seqlens, page_table=self.page_table, sinks=self.sinks)
        q = self.q_pad
        if self.varlen_q:
            q, cu = pack(self.q_pad, self.q_len)
            kw.update(cu_seqlens_q=cu, max_seqlen_q=self.s_q)
        if self.qv_pad is not None:
            kw["qv"] = pack(self.qv_pad, self.q_len)[0] if self.varlen_q else self.qv_pad
        if self.k_new_pad is not None:
            if self.varlen_new:
                kw["k"], kw["cu_seqlens_k_new"] = pack(self.k_new_pad, self.new_len)
                kw["v"] = pack(self.v_new_pad, self.new_len)[0]
            else:
                kw["k"], kw["v"] = self.k_new_pad, self.v_new_pad
        if self.batch_idx:
            kw["cache_batch_idx"] = self.batch_row
        if self.has_leftpad:
            kw["cache_leftpad"] = self.leftpad
        if self.rotary:
            kw.update(rotary_cos=self.cos, rotary_sin=self.sin, rotary_interleaved=self.rotary == "interleaved")
            if self.rotary_seqlens:
                kw["rotary_seqlens"] = self.rot_base
        return q, self.k_cache, self.v_cache, kw

    @property
    def varlen_new(self):
        return self.k_new_pad is not None and self.varlen_q

    # -- reference ------------------------------------------------------------------------------

    def _rows(self, i):
        """Cache (array index) rows of sequence i's logical key positions 0 .. s_k_static - 1."""
        r = self.batch_row[i]
        pos = np.arange(self.s_k_static)
        if self.page_table is None:
            return (np.full_like(pos, r), pos)
        return (self.page_table[r][pos // self.page_size], pos % self.page_size)

    def expected(self):
        """Expected caches after the call, and the reference (out, lse) in padded form (+ the
        low-precision naive out for FA3's rule)."""
        k_exp, v_exp = self.k_cache.copy(), self.v_cache.copy()
        b, dt = self.b, self.dt
        local = self.kw["causal"] or min(self.kw["window_size"]) >= 0 or max(self.kw["window_size"]) >= 0 \
            or self.kw["attention_chunk"] > 0
        # FA3 runs no kernel, so appends nothing, when total_q == 0
        new_len = self.new_len if self.q_len.sum() > 0 else np.zeros_like(self.new_len)
        seqlen_k = self.cache_seqlens - self.leftpad + new_len
        s_k_max = max(int(seqlen_k.max()), 1)
        K = np.zeros((b, s_k_max, self.h_k, self.d), dtype=dt)
        V = np.zeros((b, s_k_max, self.h_k, self.dv), dtype=dt)
        Q = self.q_pad.copy()
        for i in range(b):
            rows = self._rows(i)
            cs, n = int(self.cache_seqlens[i]), int(new_len[i])
            base = int(self.rot_base[i])
            if n:
                kn = self.k_new_pad[i, :n]
                if self.rotary:
                    kn = rnd(rotary_ref(kn.astype(np.float32), self.cos, self.sin, base + np.arange(n),
                                        self.rotary == "interleaved"), dt).astype(dt)
                dst = tuple(x[cs:cs + n] for x in rows)
                k_exp[dst] = kn
                v_exp[dst] = self.v_new_pad[i, :n]
            src = tuple(x[self.leftpad[i]:cs + n] for x in rows)
            K[i, :seqlen_k[i]] = k_exp[src]
            V[i, :seqlen_k[i]] = v_exp[src]
            if self.rotary and self.k_new_pad is not None:
                pos = base + np.arange(self.s_q) if local else np.full(self.s_q, base)
                Q[i] = rnd(rotary_ref(Q[i].astype(np.float32), self.cos, self.sin, pos,
                                      self.rotary == "interleaved"), dt).astype(dt)
        common = dict(self.kw, qv=self.qv_pad, sinks=self.sinks)
        ref = attention_ref(Q, K, V, self.q_len, seqlen_k, **common)
        naive = attention_ref(Q, K, V, self.q_len, seqlen_k, lowp=dt, **common)[0] if self.rotary else None
        return k_exp, v_exp, ref, naive

    def check(self, out, lse, ref, naive):
        (ref_out, ref_lse) = ref
        if self.varlen_q:
            cu = np.concatenate([[0], np.cumsum(self.q_len)])
            assert out.shape == (cu[-1], self.h, self.dv) and lse.shape == (self.h, cu[-1])
            for i in range(self.b):
                n = self.q_len[i]
                self._check_rows(out[cu[i]:cu[i] + n], ref_out[i, :n], None if naive is None else naive[i, :n])
                assert_lse(lse[:, cu[i]:cu[i] + n], ref_lse[i, :, :n])
        else:
            assert out.shape == (self.b, self.s_q, self.h, self.dv) and lse.shape == (self.b, self.h, self.s_q)
            self._check_rows(out, ref_out, naive)
            assert_lse(lse, ref_lse)

    @staticmethod
    def _check_rows(out, ref, naive):
        if naive is None:
            assert_out_ulp(out, ref)
        else:
            assert_out_fa3(out, ref, naive)


def check_caches(case, k_exp, v_exp):
    if case.rotary and case.k_new_pad is not None:  # rotated keys: fp32 rotation, rounded once
        diff = np.abs(f64(case.k_cache) - f64(k_exp))
        assert np.all(diff <= ulp(f64(k_exp), case.dt)), "rotated k_cache differs by more than 1 ulp"
    else:
        assert np.array_equal(case.k_cache.view(np.uint8), k_exp.view(np.uint8)), "k_cache"
    assert np.array_equal(case.v_cache.view(np.uint8), v_exp.view(np.uint8)), "v_cache"


def run(case, context, **extra):
    q, k_cache, v_cache, kw = case.args()
    k_exp, v_exp, ref, naive = case.expected()
    out, lse, *rest = flash_attn_with_kvcache(q, k_cache, v_cache, return_softmax_lse=True, context=context,
                                              **kw, **extra)
    check_caches(case, k_exp, v_exp)
    case.check(out, lse, ref, naive)
    return out, lse, rest


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("leftpad", [False, True])
@pytest.mark.parametrize("batch_idx", [False, True])
@pytest.mark.parametrize("mask", ["none", "causal", "local"])
@pytest.mark.parametrize("append", [None, "batched", "varlen"])
@pytest.mark.parametrize("page_size", [None, 1, 3, 16])
def test_kvcache(rng, ctx132, page_size, append, mask, batch_idx, leftpad):
    kw = {"none": {}, "causal": {"causal": True}, "local": {"window_size": (6, 2)}}[mask]
    for num_splits in (1, 3, 0):
        case = Case(rng, page_size=page_size, append=append, varlen_q=append == "varlen", batch_idx=batch_idx,
                    leftpad=leftpad, **kw)
        run(case, ctx132, num_splits=num_splits)


@pytest.mark.parametrize("rotary_seqlens", [False, True])
@pytest.mark.parametrize("fraction", [0.5, 1.0])
@pytest.mark.parametrize("rotary", ["interleaved", "half"])
@pytest.mark.parametrize("mask", ["none", "causal", "local"])
@pytest.mark.parametrize("page_size", [None, 3])
def test_kvcache_rotary(rng, page_size, mask, rotary, fraction, rotary_seqlens):
    kw = {"none": {}, "causal": {"causal": True}, "local": {"window_size": (5, 1)}}[mask]
    case = Case(rng, page_size=page_size, append="batched", rotary=rotary, rotary_fraction=fraction,
                rotary_seqlens=rotary_seqlens, leftpad=True, **kw)
    run(case, None)


def test_kvcache_rotary_varlen(rng):
    case = Case(rng, s_q=3, page_size=16, append="varlen", varlen_q=True, rotary="half", causal=True)
    run(case, None)


@pytest.mark.parametrize("append", [None, "batched"])
def test_kvcache_fp8(rng, append):
    case = Case(rng, dt=E4M3, append=append, causal=True, page_size=3)
    q, k_cache, v_cache, kw = case.args()
    k_exp, v_exp, ref, _ = case.expected()
    out = flash_attn_with_kvcache(q, k_cache, v_cache, **kw)
    assert out.dtype == BF16
    check_caches(case, k_exp, v_exp)
    assert_out_ulp(out, ref[0])


@pytest.mark.parametrize("page_size", [None, 16])
def test_kvcache_mla_qv(rng, ctx132, page_size):
    """MLA absorbed decode: d = 64 rope dims, dv = 512 latent, qv = q_nope . W."""
    for num_splits in (1, 0):
        case = Case(rng, b=2, s_q=1, s_k=300, h=4, h_k=1, d=64, dv=512, page_size=page_size, qv=True)
        run(case, ctx132, num_splits=num_splits)


@pytest.mark.parametrize("page_size", [1, 64])
def test_kvcache_mla_fused_pool(rng, page_size):
    """SGLang's MLA call: one pool row per token [c_kv (512) | k_rope (64)], passed as the views
    k_cache = pool[..., 512:] and v_cache = pool[..., :512] (row stride 576, not contiguous), with
    q = q_rope, qv = q_nope, a page table and cache_seqlens; against contiguous copies."""
    b, h, s_k = 3, 16, 130
    pages_per_seq = -(-s_k // page_size)
    num_pages = b * pages_per_seq + 1
    pool = rand(rng, (num_pages, page_size, 1, 576), BF16)
    table = rng.permutation(num_pages)[:b * pages_per_seq].reshape(b, pages_per_seq).astype(np.int32)
    lens = np.array([s_k, 1, 77], dtype=np.int32)
    q_rope, q_nope = rand(rng, (b, 1, h, 64), BF16), rand(rng, (b, 1, h, 512), BF16)
    out = flash_attn_with_kvcache(q_rope, pool[..., 512:], pool[..., :512], qv=q_nope, page_table=table,
                                  cache_seqlens=lens, causal=True)
    rows = pool[table].reshape(b, pages_per_seq * page_size, 1, 576)  # (b, s, 1, 576) in sequence order
    ref, _ = attention_ref(q_rope, np.ascontiguousarray(rows[..., 512:]), np.ascontiguousarray(rows[..., :512]),
                           seqlen_k=lens, causal=True, qv=q_nope)
    assert_out_ulp(out, ref)


@pytest.mark.parametrize("sinks_dtype", [BF16, np.float32])
def test_kvcache_sinks(rng, ctx132, sinks_dtype):
    for num_splits in (1, 3):
        case = Case(rng, s_k=200, page_size=16, append="batched", causal=True, sinks=True)
        case.sinks = case.sinks.astype(sinks_dtype)
        run(case, ctx132, num_splits=num_splits)


def test_kvcache_softcap_chunk(rng):
    case = Case(rng, s_q=6, s_k=60, append="batched", causal=True, attention_chunk=16, softcap=3.0)
    run(case, None, num_splits=3)


def test_kvcache_return_softmax_lse_partials(rng, ctx132):
    """The four-tuple: partials (S, b, h, s_q, dv) / (S, b, h, s_q) when the resolved S > 1, whose
    combination is the output; empty arrays without splits."""
    case = Case(rng, b=3, s_q=2, s_k=1200, h=4, h_k=1)
    _, _, rest = run(case, ctx132, num_splits=0)
    out_accum, lse_accum = rest
    S = out_accum.shape[0]
    assert S > 1, "num_splits=0 with 132 SMs and a 1200-key cache should split"
    assert out_accum.shape == (S, 3, 4, 2, 64) and lse_accum.shape == (S, 3, 4, 2)
    assert out_accum.dtype == np.float32 and lse_accum.dtype == np.float32
    k_exp, v_exp, (ref_out, ref_lse), _ = case.expected()
    comb_out, comb_lse = combine_ref(out_accum, lse_accum)               # (b, h, s_q, dv), (b, h, s_q)
    assert np.allclose(comb_out.transpose(0, 2, 1, 3), ref_out, atol=1e-5, rtol=1e-5)
    assert_lse(comb_lse, ref_lse)
    _, _, rest = run(case, ctx132, num_splits=1)
    assert rest[0].size == 0 and rest[1].size == 0


def test_kvcache_int_cache_seqlens(rng):
    b, s_q, s_k, h, d = 3, 2, 17, 2, 64
    q, k, v = rand(rng, (b, s_q, h, d), BF16), rand(rng, (b, s_k, h, d), BF16), rand(rng, (b, s_k, h, d), BF16)
    out = flash_attn_with_kvcache(q, k, v, cache_seqlens=11, causal=True)
    assert_out_ulp(out, attention_ref(q, k[:, :11], v[:, :11], causal=True)[0])
    # With cu_seqlens_q, the int expands to (b,) = len(cu_seqlens_q) - 1, not q.shape[0] tokens.
    q_p, cu = pack(q, [2, 1, 2])
    out = flash_attn_with_kvcache(q_p, k, v, cache_seqlens=11, cu_seqlens_q=cu, max_seqlen_q=s_q, causal=True)
    ref, _ = attention_ref(q, k[:, :11], v[:, :11], [2, 1, 2], causal=True)
    for i in range(b):
        assert_out_ulp(out[cu[i]:cu[i + 1]], ref[i, : cu[i + 1] - cu[i]])


def test_kvcache_without_cache_seqlens(rng):
    """No cache_seqlens: every k_cache.shape[1] key is attended, as flash_attn_func would."""
    q, k, v = rand(rng, (2, 3, 4, 64), F16), rand(rng, (2, 9, 2, 64), F16), rand(rng, (2, 9, 2, 64), F16)
    a = flash_attn_with_kvcache(q, k, v, causal=True)
    b = flash_attn_func(q, k, v, causal=True)
    assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_kvcache_empty_cache_plus_inf(rng):
    """Static total_k + total_new == 0 (non-paged cache of length 0): out 0, lse +inf. A cache with
    rows but cache_seqlens 0 (or a paged cache) gives fully masked rows instead: out 0, lse -inf."""
    b, h, d = 2, 2, 64
    q = rand(rng, (b, 1, h, d), BF16)
    empty = np.zeros((b, 0, h, d), dtype=BF16)
    for seqlens in (None, np.zeros(b, dtype=np.int32)):
        out, lse, *_ = flash_attn_with_kvcache(q, empty, empty, cache_seqlens=seqlens, return_softmax_lse=True)
        assert np.all(out.astype(np.float32) == 0) and np.all(lse == np.inf)
    cache = rand(rng, (b, 8, h, d), BF16)
    out, lse, *_ = flash_attn_with_kvcache(q, cache, cache, cache_seqlens=np.zeros(b, dtype=np.int32),
                                           return_softmax_lse=True)
    assert np.all(out.astype(np.float32) == 0) and np.all(lse == -np.inf)
    pages = rand(rng, (4, 2, h, d), BF16)
    out, lse, *_ = flash_attn_with_kvcache(q, pages, pages, cache_seqlens=np.zeros(b, dtype=np.int32),
                                           page_table=np.arange(4, dtype=np.int32).reshape(b, 2),
                                           return_softmax_lse=True)
    assert np.all(out.astype(np.float32) == 0) and np.all(lse == -np.inf)


# ---------------------------------------------------------------------------------------------
# Scheduler metadata


def metadata_for(case, context, **over):
    q, k_cache, v_cache, kw = case.args()
    args = dict(
        batch_size=case.b, max_seqlen_q=case.s_q, max_seqlen_k=case.s_k_static, num_heads_q=case.h,
        num_heads_kv=case.h_k, headdim=case.d, cache_seqlens=case.cache_seqlens, qkv_dtype=case.dt,
        headdim_v=case.dv, cu_seqlens_q=kw.get("cu_seqlens_q"), cu_seqlens_k_new=kw.get("cu_seqlens_k_new"),
        cache_leftpad=kw.get("cache_leftpad"), page_size=case.page_size,
        max_seqlen_k_new=case.k_new_pad.shape[1] if case.k_new_pad is not None else 0,
        causal=case.kw["causal"], window_size=case.kw["window_size"], attention_chunk=case.kw["attention_chunk"],
        has_softcap=case.kw["softcap"] > 0, num_splits=over.pop("num_splits", 0), context=context,
    )
    args.update(over)
    return get_scheduler_metadata(**args)


@pytest.mark.parametrize("append", [None, "varlen"])
@pytest.mark.parametrize("page_size", [None, 16])
def test_scheduler_metadata_reuse(rng, ctx132, page_size, append):
    case = Case(rng, s_k=900, page_size=page_size, append=append, varlen_q=append == "varlen", leftpad=True,
                causal=True)
    meta = metadata_for(case, ctx132)
    assert meta.dtype == np.int32 and meta.ndim == 1
    first = run(case, ctx132, scheduler_metadata=meta)
    second = run(case, ctx132, scheduler_metadata=meta)  # reused: same results
    assert np.array_equal(first[0].view(np.uint16), second[0].view(np.uint16))
    plain = run(case, ctx132)
    assert np.array_equal(first[0].view(np.uint16), plain[0].view(np.uint16))


def test_scheduler_metadata_mismatch_raises(rng, ctx132):
    case = Case(rng, s_k=300, page_size=16, append="batched", causal=True)
    q, k_cache, v_cache, kw = case.args()
    for over in ({"num_heads_q": 2 * case.h}, {"causal": False}, {"headdim": 128, "headdim_v": 128},
                 {"cache_seqlens": np.where(case.cache_seqlens > 0, case.cache_seqlens - 1, 1).astype(np.int32)}):
        meta = metadata_for(case, ctx132, **over)
        with pytest.raises(fa3c.Fa3cError, match="scheduler_metadata") as e:
            flash_attn_with_kvcache(q, k_cache, v_cache, scheduler_metadata=meta, context=ctx132, **kw)
        assert e.value.status == fa3c.Status.INVALID_ARGUMENT
