"""The three defects the review of SGLang's MUSA/MATE FA3 backend found (serving-backend.md §2.4),
each reproduced as a scenario and shown not to happen with fa3c:

  (a) a process-global workspace / metadata buffer shared by every backend;
  (b) scheduler metadata looked up by a non-unique key, so one call ran on another's schedule;
  (c) cu_seqlens_k_new ignored (or forwarded where no K/V is appended).
"""

import threading

import numpy as np
import pytest

pytest.importorskip("ml_dtypes")

import fa3c  # noqa: E402
from fa3c import flash_attn_interface as fai  # noqa: E402
from fa3c.flash_attn_interface import flash_attn_with_kvcache, get_scheduler_metadata  # noqa: E402
from fa3c.serving import AttentionLayer, ForwardMode  # noqa: E402
from ref_numpy import BF16, pack, rand  # noqa: E402
from serving_sim import TRACE, Engine  # noqa: E402

SWA = AttentionLayer(num_heads_q=4, num_heads_kv=2, head_dim=64, window_size=(8, 0))
FULL = AttentionLayer(num_heads_q=4, num_heads_kv=2, head_dim=64)
MODEL = [SWA, FULL, SWA, FULL]

# Scheduler metadata layout (src/core/sched_meta.c): a 32-int32 header recording the signature,
# then the schedule itself (split counts, m-blocks, order, L2 heads per sequence).
HEADER = 32


def bits(x):
    return np.asarray(x).view(np.uint8)


# ---------------------------------------------------------------------------------------------
# (a) Two backends never share or clobber a workspace or a metadata buffer


def _engines(cpu_backend, seeds=(11, 22)):
    """Two independent model replicas: one on the scalar reference backend, one on the default
    CPU backend, with different page sizes and request tables."""
    a = Engine(np.random.default_rng(seeds[0]), MODEL, page_size=16, backend="cpu-ref")
    b = Engine(np.random.default_rng(seeds[1]), MODEL, page_size=1, backend=cpu_backend)
    return a, b


def _interleave(gens):
    """Round-robin over generators (one yield each), collecting every yielded output per generator."""
    outs = [[] for _ in gens]
    live = list(enumerate(gens))
    while live:
        for item in list(live):
            i, g = item
            try:
                out = next(g)
            except StopIteration:
                live.remove(item)
                continue
            if out is not None:
                outs[i].append(out)
    return outs


def _flatten(trace_outs):
    return [o for step in trace_outs for o in step]


def test_a_backends_own_their_context_and_buffers(cpu_backend):
    a, b = _engines(cpu_backend)
    ba, bb = a.backend, b.backend
    assert ba.context is not bb.context and ba.context._handle.value != bb.context._handle.value
    assert ba.context.backend == "cpu-ref"
    for na, xa in ba.buffers().items():
        for nb, xb in bb.buffers().items():
            assert not np.shares_memory(xa, xb), f"{na} of one backend overlaps {nb} of the other"


def test_a_interleaved_forwards_equal_serial(cpu_backend):
    """Both replicas build their batch metadata, then run their layers alternately; every output
    equals the same replica run alone, and one replica's metadata is untouched by the other's."""
    serial = [_flatten(e.run_trace(TRACE)) for e in _engines(cpu_backend)]
    a, b = _engines(cpu_backend)
    outs = [[], []]
    for step in TRACE:
        ga, gb = a.iter_step(*step), b.iter_step(*step)
        assert next(ga) is None
        snapshot = {s: m.copy() for s, m in a.fm.scheduler_metadata.items()}
        assert next(gb) is None  # b builds its metadata after a's
        for s, m in a.fm.scheduler_metadata.items():
            assert np.array_equal(m, snapshot[s])
        for i, out in enumerate(_interleave([ga, gb])):
            outs[i] += out
    for got, want in zip(outs, serial):
        assert len(got) == len(want) == len(TRACE) * len(MODEL)
        for g, w in zip(got, want):
            assert np.array_equal(bits(g), bits(w))


def test_a_concurrent_threads_equal_serial(cpu_backend):
    """The two replicas driven from two threads at once (calls on distinct contexts run
    concurrently) give the serial results."""
    serial = [_flatten(e.run_trace(TRACE)) for e in _engines(cpu_backend)]
    engines = _engines(cpu_backend)
    results, errors = [None, None], []

    def drive(i):
        try:
            results[i] = _flatten(engines[i].run_trace(TRACE))
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, serial):
        for g, w in zip(got, want):
            assert np.array_equal(bits(g), bits(w))


def test_a_one_backend_one_batch_at_a_time(rng):
    """Two micro-batches on one backend (the TBO case a global dict got wrong) cannot silently
    share buffers: building the second makes the first stale, and using it raises."""
    eng = Engine(rng, MODEL, page_size=16)
    eng.step(ForwardMode.EXTEND, [0, 1, 2], [5, 9, 13])
    first = eng.backend.init_forward_metadata(ForwardMode.DECODE, [0, 1], [6, 10])
    eng.backend.init_forward_metadata(ForwardMode.DECODE, [2], [14])
    q = np.zeros((2, 4, 64), dtype=BF16)
    kv = np.zeros((2, 2, 64), dtype=BF16)
    with pytest.raises(fa3c.Fa3cError, match="stale ForwardMetadata") as e:
        eng.backend.forward(FULL, q, eng.k_pool[1], eng.v_pool[1], kv, kv, metadata=first)
    assert "separate backends" in str(e.value)


# ---------------------------------------------------------------------------------------------
# (b) Metadata of another signature is refused, never used


class Call:
    """A paged kvcache call (packed q of b sequences) and its scheduler-metadata arguments."""

    def __init__(self, rng, b=3, h=4, h_k=2, d=64, window=(-1, -1), causal=True):
        self.b, self.h, self.h_k, self.d, self.window, self.causal = b, h, h_k, d, window, causal
        ps, pages = 16, 8
        self.k = rand(rng, (b * pages + 4, ps, h_k, d), BF16)
        self.v = rand(rng, (b * pages + 4, ps, h_k, d), BF16)
        self.page_table = rng.permutation(b * pages + 4)[: b * pages].reshape(b, pages).astype(np.int32)
        self.cache_seqlens = rng.integers(1, pages * ps, size=b).astype(np.int32)
        self.q_len = np.array([2, 1, 3, 2, 1][:b])
        self.q, self.cu = pack(rand(rng, (b, 3, h, d), BF16), self.q_len)

    def kw(self):
        return dict(cache_seqlens=self.cache_seqlens, page_table=self.page_table, cu_seqlens_q=self.cu, max_seqlen_q=3,
                    causal=self.causal, window_size=self.window)

    def metadata(self, ctx):
        return get_scheduler_metadata(self.b, 3, self.page_table.shape[1] * 16, self.h, self.h_k, self.d,
                                      self.cache_seqlens, BF16, cu_seqlens_q=self.cu, page_size=16,
                                      causal=self.causal, window_size=self.window, context=ctx)

    def run(self, ctx, meta=None):
        return flash_attn_with_kvcache(self.q, self.k, self.v, scheduler_metadata=meta, context=ctx, **self.kw())


@pytest.mark.parametrize("mine, other, field", [
    ({}, dict(b=2), "batch_size"),
    (dict(window=(16, 0)), dict(window=(8, 0)), "window_size_left"),   # two sliding-window sizes
    ({}, dict(window=(8, 0)), "causal"),       # a window makes the call local (FA3's normalisation)
    ({}, dict(causal=False), "causal"),
    ({}, dict(h=8), "num_heads_q"),
    ({}, dict(h_k=1), "num_heads_kv"),
    ({}, dict(d=128), "headdim"),
])
def test_b_foreign_metadata_raises(ctx132, mine, other, field):
    """Metadata built for a call differing in batch size, window, causal flag or head counts is
    rejected by the forward with the field named; the call's own metadata works."""
    params = dict(b=3, h=4, h_k=2, d=64, window=(-1, -1), causal=True)
    params.update(mine)
    call = Call(np.random.default_rng(5), **params)
    own = call.run(ctx132, call.metadata(ctx132))
    assert np.array_equal(bits(own), bits(call.run(ctx132)))
    params.update(other)
    foreign = Call(np.random.default_rng(6), **params).metadata(ctx132)
    with pytest.raises(fa3c.Fa3cError, match=f"scheduler_metadata: computed for {field}=") as e:
        call.run(ctx132, foreign)
    assert e.value.status == fa3c.Status.INVALID_ARGUMENT


def test_b_metadata_of_other_lengths_raises(ctx132):
    """Same shapes, other cache lengths (#24632: precomputed metadata diverging from the live
    cache_seqlens): rejected."""
    call = Call(np.random.default_rng(7))
    meta = call.metadata(ctx132)
    call.cache_seqlens = np.maximum(call.cache_seqlens - 1, 1).astype(np.int32)
    with pytest.raises(fa3c.Fa3cError, match="computed from other lengths"):
        call.run(ctx132, meta)


def test_b_each_layer_gets_its_own_metadata(rng, monkeypatch):
    """In one forward, the sliding-window and the full layers (one string key in the MATE port)
    each get the metadata computed for their own signature."""
    eng = Engine(rng, MODEL, page_size=16)
    eng.step(ForwardMode.EXTEND, [0, 1, 2], [5, 17, 40])
    passed = []
    real = fai.flash_attn_with_kvcache

    def spy(*args, **kw):
        passed.append((kw["window_size"], kw["scheduler_metadata"]))
        return real(*args, **kw)

    monkeypatch.setattr(fai, "flash_attn_with_kvcache", spy)
    eng.step(ForwardMode.DECODE, [0, 1, 2], [1, 1, 1])
    by_window = {s.window_size: m for s, m in eng.fm.scheduler_metadata.items()}
    assert len(by_window) == 2 and not np.shares_memory(by_window[(8, 0)], by_window[(-1, -1)])
    assert [w for w, _ in passed] == [l.window_size for l in MODEL]
    for window, meta in passed:
        assert meta is by_window[window]


def test_b_serving_never_hands_a_layer_foreign_metadata(rng):
    """A layer the batch built nothing for, or a call whose tensors disagree with its declared
    layer, raises naming the differing fields; metadata swapped behind the backend's back is
    caught by the library."""
    eng = Engine(rng, MODEL, page_size=16)
    eng.step(ForwardMode.EXTEND, [0, 1, 2], [5, 17, 40])
    fm = eng.begin(ForwardMode.DECODE, [0, 1, 2], [1, 1, 1])
    be = eng.backend
    q, k, v, _ = eng.make_inputs(1)
    with pytest.raises(fa3c.Fa3cError, match=r"window_size: call \(16, 0\), built") as e:
        be.forward(AttentionLayer(4, 2, 64, window_size=(16, 0)), q, eng.k_pool[1], eng.v_pool[1], k, v)
    assert "matches none of the 2 built" in str(e.value)
    q8 = np.concatenate([q, q], axis=1)
    with pytest.raises(fa3c.Fa3cError, match="num_heads_q: call 8, built 4"):
        be.forward(FULL, q8, eng.k_pool[1], eng.v_pool[1], k, v)
    with pytest.raises(fa3c.Fa3cError, match="qkv_dtype"):
        be.forward(FULL, q.astype(np.float16), eng.k_pool[1], eng.v_pool[1], k.astype(np.float16),
                   v.astype(np.float16))
    # swap the two schedules: the library sees the other window in the recorded signature
    (s1, m1), (s2, m2) = fm.scheduler_metadata.items()
    fm.scheduler_metadata[s1], fm.scheduler_metadata[s2] = m2, m1
    with pytest.raises(fa3c.Fa3cError, match="scheduler_metadata: computed for window_size_left"):
        be.forward(FULL, q, eng.k_pool[1], eng.v_pool[1], k, v)
    # a schedule of another batch (a stale cache entry of a larger batch, silently mis-sliced by MATE)
    old = {s.window_size: m.copy() for s, m in fm.scheduler_metadata.items()}
    eng.backend.init_forward_metadata(ForwardMode.DECODE, [0, 1], [6, 18])
    fm2 = eng.backend._current
    for s in fm2.scheduler_metadata:
        fm2.scheduler_metadata[s] = old[s.window_size]
    with pytest.raises(fa3c.Fa3cError, match="scheduler_metadata: computed for batch_size=3, this call has "
                                             "batch_size=2"):
        be.forward(FULL, q[:2], eng.k_pool[1], eng.v_pool[1], k[:2], v[:2])


# ---------------------------------------------------------------------------------------------
# (c) cu_seqlens_k_new: appending through the kernel == writing K/V first


class AppendCase:
    """b sequences with cached prefixes and packed new tokens (queries = new K/V, as in extend and
    verify) in a paged cache."""

    def __init__(self, rng, prefix, new, ps=16, h=4, h_k=1, d=64):
        self.prefix, self.new = np.asarray(prefix, np.int32), np.asarray(new, np.int32)
        b = len(prefix)
        pages = -(-int((self.prefix + self.new).max()) // ps)
        self.ps, self.h, self.h_k, self.d, self.b = ps, h, h_k, d, b
        num_pages = b * pages + 2
        self.page_table = rng.permutation(num_pages)[: b * pages].reshape(b, pages).astype(np.int32)
        self.k_cache = rand(rng, (num_pages, ps, h_k, d), BF16)
        self.v_cache = rand(rng, (num_pages, ps, h_k, d), BF16)
        n = int(self.new.sum())
        self.q = rand(rng, (n, h, d), BF16)
        self.k_new, self.v_new = rand(rng, (n, h_k, d), BF16), rand(rng, (n, h_k, d), BF16)
        self.cu = np.zeros(b + 1, np.int32)
        self.cu[1:] = np.cumsum(self.new)
        self.max_new = int(self.new.max())

    def written_first(self):
        """Caches with the new K/V already in their slots."""
        k, v = self.k_cache.copy(), self.v_cache.copy()
        for i in range(self.b):
            pos = self.prefix[i] + np.arange(self.new[i])
            rows = (self.page_table[i, pos // self.ps], pos % self.ps)
            k[rows] = self.k_new[self.cu[i]:self.cu[i + 1]]
            v[rows] = self.v_new[self.cu[i]:self.cu[i + 1]]
        return k, v

    def meta_kw(self, ctx, **over):
        kw = dict(batch_size=self.b, max_seqlen_q=self.max_new, max_seqlen_k=self.page_table.shape[1] * self.ps,
                  num_heads_q=self.h, num_heads_kv=self.h_k, headdim=self.d, qkv_dtype=BF16, cu_seqlens_q=self.cu,
                  page_size=self.ps, causal=True, context=ctx)
        kw.update(over)
        return kw

    def append_call(self, ctx, k, v, **kw):
        return flash_attn_with_kvcache(self.q, k, v, k=self.k_new, v=self.v_new, cache_seqlens=self.prefix,
                                       page_table=self.page_table, cu_seqlens_q=self.cu, cu_seqlens_k_new=self.cu,
                                       max_seqlen_q=self.max_new, causal=True, context=ctx, **kw)

    def plain_call(self, ctx, k, v, **kw):
        return flash_attn_with_kvcache(self.q, k, v, cache_seqlens=self.prefix + self.new, page_table=self.page_table,
                                       cu_seqlens_q=self.cu, max_seqlen_q=self.max_new, causal=True, context=ctx, **kw)


@pytest.mark.parametrize("num_splits", [1, 0])
def test_c_append_equals_written_first(ctx132, num_splits):
    case = AppendCase(np.random.default_rng(3), prefix=[0, 534, 66], new=[5, 1, 43])
    k1, v1 = case.k_cache.copy(), case.v_cache.copy()
    out_append = case.append_call(ctx132, k1, v1, num_splits=num_splits)
    k2, v2 = case.written_first()
    out_first = case.plain_call(ctx132, k2, v2, num_splits=num_splits)
    assert np.array_equal(bits(k1), bits(k2)) and np.array_equal(bits(v1), bits(v2))
    assert np.array_equal(bits(out_append), bits(out_first))
    # the same with each call's precomputed schedule
    k3, v3 = case.k_cache.copy(), case.v_cache.copy()
    meta_append = get_scheduler_metadata(cache_seqlens=case.prefix, cu_seqlens_k_new=case.cu,
                                         max_seqlen_k_new=case.max_new,
                                         **case.meta_kw(ctx132, num_splits=num_splits))
    assert np.array_equal(bits(case.append_call(ctx132, k3, v3, num_splits=num_splits,
                                                scheduler_metadata=meta_append)), bits(out_append))
    meta_first = get_scheduler_metadata(cache_seqlens=case.prefix + case.new,
                                        **case.meta_kw(ctx132, num_splits=num_splits))
    assert np.array_equal(bits(case.plain_call(ctx132, k2, v2, num_splits=num_splits,
                                               scheduler_metadata=meta_first)), bits(out_first))


def test_c_scheduler_sees_true_lengths(ctx132):
    """The schedule of the appending call (cache_seqlens = prefix, + cu_seqlens_k_new) equals the
    schedule of the written-first call (cache_seqlens = prefix + new). Counting the new tokens
    twice, as MATE's metadata kernel does when cu_seqlens_k_new is forwarded to a call that
    appends nothing, gives another schedule; fa3c ignores cu_seqlens_k_new unless the call
    appends (max_seqlen_k_new > 0), like the forward."""
    case = AppendCase(np.random.default_rng(3), prefix=[0, 534, 66], new=[5, 1, 43])
    kw = case.meta_kw(ctx132)
    full = case.prefix + case.new
    appending = get_scheduler_metadata(cache_seqlens=case.prefix, cu_seqlens_k_new=case.cu,
                                       max_seqlen_k_new=case.max_new, **kw)
    first = get_scheduler_metadata(cache_seqlens=full, **kw)
    assert appending.shape == first.shape
    assert np.array_equal(appending[HEADER:], first[HEADER:])
    doubled = get_scheduler_metadata(cache_seqlens=full, cu_seqlens_k_new=case.cu, max_seqlen_k_new=case.max_new,
                                     **kw)
    assert not np.array_equal(doubled[HEADER:], first[HEADER:]), "the lengths should change the schedule"
    stray = get_scheduler_metadata(cache_seqlens=full, cu_seqlens_k_new=case.cu, max_seqlen_k_new=0, **kw)
    assert np.array_equal(stray, first)
    # each call accepts only its own: appending or not is part of the signature
    k, v = case.written_first()
    with pytest.raises(fa3c.Fa3cError, match="appending"):
        case.plain_call(ctx132, k, v, scheduler_metadata=appending)
    with pytest.raises(fa3c.Fa3cError, match="appending"):
        case.append_call(ctx132, case.k_cache.copy(), case.v_cache.copy(), scheduler_metadata=first)
    # a stray cu_seqlens_k_new without k/v (SGLang's call sites) changes nothing
    plain = case.plain_call(ctx132, k, v)
    stray_out = flash_attn_with_kvcache(case.q, k, v, cache_seqlens=full, page_table=case.page_table,
                                        cu_seqlens_q=case.cu, cu_seqlens_k_new=case.cu, max_seqlen_q=case.max_new,
                                        causal=True, context=ctx132, scheduler_metadata=first)
    assert np.array_equal(bits(stray_out), bits(plain))


def test_c_serving_passes_cu_seqlens_k_new_iff_appending(rng, monkeypatch):
    """The backend hands cu_seqlens_k_new (and max_seqlen_k_new) to the metadata computation and
    to the attention call exactly when the layer appends K/V, the same tensor to both."""
    seen = []
    real_meta, real_fwd = fai.get_scheduler_metadata, fai.flash_attn_with_kvcache

    def meta_spy(*args, **kw):
        seen.append(("meta", kw["cu_seqlens_k_new"], kw["max_seqlen_k_new"]))
        return real_meta(*args, **kw)

    def fwd_spy(*args, **kw):
        seen.append(("fwd", kw["cu_seqlens_k_new"], kw["k"] is not None))
        return real_fwd(*args, **kw)

    monkeypatch.setattr(fai, "get_scheduler_metadata", meta_spy)
    monkeypatch.setattr(fai, "flash_attn_with_kvcache", fwd_spy)
    for append_kv in (True, False):
        seen.clear()
        eng = Engine(rng, MODEL, page_size=16, append_kv=append_kv)
        eng.run_trace(TRACE[:3])
        assert {kind for kind, *_ in seen} == {"meta", "fwd"}
        for kind, cu_new, other in seen:
            if append_kv:
                assert cu_new is not None and other  # max_seqlen_k_new > 0 / k given
            else:
                assert cu_new is None and not other
        if append_kv:
            assert all(cu_new is eng.fm.cu_seqlens_k_new for _, cu_new, _ in seen[-6:])


def test_c_serving_append_equals_written_first(ctx132):
    """The whole trace through a backend that appends in the kernel and through one that writes
    K/V first: bitwise the same outputs and the same pools."""
    runs = []
    for append_kv in (True, False):
        eng = Engine(np.random.default_rng(9), MODEL, page_size=16, append_kv=append_kv, num_sm=132)
        runs.append((_flatten(eng.run_trace(TRACE)), eng))
    (out_a, eng_a), (out_b, eng_b) = runs
    for a, b in zip(out_a, out_b):
        assert np.array_equal(bits(a), bits(b))
    for li in range(len(MODEL)):
        assert np.array_equal(bits(eng_a.k_pool[li]), bits(eng_b.k_pool[li]))
