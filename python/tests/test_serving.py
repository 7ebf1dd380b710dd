"""fa3c.serving: per-forward-batch metadata and layer calls, end to end against the float64
reference over a multi-step trace (prefill, decode, extend with and without cached prefix,
target-verify), the CUDA-graph capture/replay flow on CPU buffers, and the API's refusals."""

import dataclasses

import numpy as np
import pytest

pytest.importorskip("ml_dtypes")

import fa3c  # noqa: E402
from fa3c import serving  # noqa: E402
from fa3c.serving import AttentionBackend, AttentionLayer, CallSignature, ForwardMode  # noqa: E402
from ref_numpy import BF16  # noqa: E402
from serving_sim import TRACE, Engine, to_numpy  # noqa: E402

SWA = AttentionLayer(num_heads_q=4, num_heads_kv=2, head_dim=64, window_size=(8, 0))
FULL = AttentionLayer(num_heads_q=4, num_heads_kv=2, head_dim=64)
# Scheduler metadata layout (src/core/sched_meta.c): a 32-int32 signature header, then the
# per-sequence split counts.
HEADER = 32
# sliding-window and full-attention layers interleaved (gpt-oss / Gemma style), GQA 2
MODEL = [SWA, FULL, SWA, FULL]


@pytest.mark.parametrize("append_kv", [True, False], ids=["append", "write-first"])
@pytest.mark.parametrize("page_size", [1, 16, 64])
def test_trace(rng, page_size, append_kv):
    eng = Engine(rng, MODEL, page_size=page_size, append_kv=append_kv)
    for mode, reqs, new in TRACE:
        eng.step(mode, reqs, new)
        fm = eng.fm
        # one schedule per distinct signature: the SWA and the full layers
        assert len(fm.scheduler_metadata) == 2
        assert {s.window_size for s in fm.signatures()} == {(8, 0), (-1, -1)}
        assert (fm.cu_seqlens_k_new is not None) == append_kv
        assert all(s.appending == append_kv for s in fm.signatures())


def test_trace_split_heuristics(rng, ctx132):
    """num_splits=0 with 132 assumed SMs: decode batches split their keys (dynamic splits from
    the precomputed metadata), still matching the reference; and an explicit split bound."""
    for num_splits in (0, 3):
        eng = Engine(rng, [SWA, FULL], page_size=16, max_ctx=600, num_sm=132, num_splits=num_splits)
        eng.step(ForwardMode.EXTEND, [0, 1, 2], [300, 517, 40])
        eng.step(ForwardMode.DECODE, [0, 1, 2], [1, 1, 1])
        full = next(m for s, m in eng.fm.scheduler_metadata.items() if s.window_size == (-1, -1))
        assert full[HEADER:HEADER + 3].max() > 1, "the decode batch should split its keys"
        eng.step(ForwardMode.TARGET_VERIFY, [2, 0], [2, 2])


@pytest.mark.parametrize("append_kv", [True, False], ids=["append", "write-first"])
@pytest.mark.parametrize("page_size", [1, 64])
def test_trace_mla(rng, page_size, append_kv):
    """DeepSeek's MLA layers as SGLang runs them: q_rope as q, q_nope as qv, the k_rope / c_kv
    column views of one [c_kv | k_rope] pool per layer as the caches, through every forward mode
    (appends land in the pool through the views)."""
    mla = AttentionLayer(num_heads_q=16, num_heads_kv=1, head_dim=64, head_dim_v=512, softmax_scale=0.07)
    eng = Engine(rng, [mla, mla], page_size=page_size, append_kv=append_kv, mla=True)
    eng.run_trace(TRACE)
    assert {(s.headdim, s.headdim_v) for s in eng.fm.signatures()} == {(64, 512)}


def test_layer_variants(rng):
    """Distinct signatures from head dims, causal flag, chunk and softcap; layers that share
    their signature share one schedule; a softmax_scale of the layer reaches the kernel."""
    layers = [
        AttentionLayer(4, 1, 128),
        AttentionLayer(4, 1, 128, softmax_scale=0.05),            # same signature as the first
        AttentionLayer(8, 2, 64, causal=False),
        AttentionLayer(8, 2, 64, attention_chunk=16),
        AttentionLayer(8, 2, 64, softcap=5.0),
    ]
    eng = Engine(rng, layers, page_size=16)
    eng.step(ForwardMode.EXTEND, [0, 1], [20, 33])
    assert len(eng.fm.scheduler_metadata) == 4
    eng.step(ForwardMode.DECODE, [1, 0], [1, 1])
    eng.step(ForwardMode.EXTEND, [0, 2], [4, 11])


def test_idle_batch(rng):
    """An empty batch (DP-attention idle rank): metadata builds and layers return empty outputs."""
    eng = Engine(rng, MODEL, page_size=16)
    eng.step(ForwardMode.EXTEND, [0], [5])
    fm = eng.backend.init_forward_metadata(ForwardMode.DECODE, [], [])
    assert fm.batch_size == 0
    q = np.zeros((0, 4, 64), dtype=BF16)
    kv = np.zeros((0, 2, 64), dtype=BF16)
    out = eng.backend.forward(FULL, q, eng.k_pool[1], eng.v_pool[1], kv, kv)
    assert out.shape == (0, 4, 64)


def test_metadata_views_and_lengths(rng):
    """The buffers hold what SGLang's init_forward_metadata computes."""
    eng = Engine(rng, MODEL, page_size=16, append_kv=True)
    eng.step(ForwardMode.EXTEND, [0, 1, 2], [5, 17, 40])
    fm = eng.begin(ForwardMode.EXTEND, [2, 0], [3, 20])
    assert fm.batch_size == 2 and fm.max_seqlen_q == 20
    assert np.array_equal(fm.cache_seqlens, [40, 5])                   # appending: the prefix
    assert np.array_equal(fm.cu_seqlens_q, [0, 3, 23])
    assert np.array_equal(fm.cu_seqlens_k_new, fm.cu_seqlens_q)
    assert fm.max_seqlen_k == fm.page_table.shape[1] * 16 == 48        # ceil(43 / 16) pages
    for i, r in enumerate([2, 0]):
        assert np.array_equal(fm.page_table[i], eng.req_to_token_np[r, ::16][:3] // 16)
    assert np.array_equal(fm.out_cache_loc, np.concatenate([eng.req_to_token_np[2, 40:43],
                                                            eng.req_to_token_np[0, 5:25]]))
    eng2 = Engine(rng, MODEL, page_size=16, append_kv=False)
    eng2.step(ForwardMode.EXTEND, [0, 1], [5, 7])
    fm = eng2.begin(ForwardMode.TARGET_VERIFY, [1, 0], [4, 4])
    assert np.array_equal(fm.cache_seqlens, [11, 9])                   # written first: all keys
    assert fm.cu_seqlens_k_new is None and fm.max_seqlen_q == 4


def test_cuda_graph_flow_on_cpu(rng):
    """Capture fixes shapes and buffers; replay rewrites the same memory (page table, lengths,
    scheduler metadata) for each new batch, and the layers' results match the reference."""
    eng = Engine(rng, MODEL, page_size=16, max_ctx=80)
    eng.step(ForwardMode.EXTEND, [0, 1, 2, 3], [5, 17, 40, 1])
    be = eng.backend
    graphs = {bs: be.init_forward_metadata_capture(ForwardMode.DECODE, bs) for bs in (2, 4)}
    verify = be.init_forward_metadata_capture(ForwardMode.TARGET_VERIFY, 4, num_draft_tokens=2)
    assert graphs[4].page_table.shape == (4, 5) and graphs[4].max_seqlen_k == 80

    def addresses(fm):
        views = [fm.page_table, fm.cache_seqlens, fm.cu_seqlens_q, fm.cu_seqlens_k_new, fm.out_cache_loc]
        return [v.ctypes.data for v in views] + [m.ctypes.data for m in fm.scheduler_metadata.values()]

    for fm, mode, reqs, new in [(graphs[4], ForwardMode.DECODE, [3, 1, 0, 2], [1] * 4),
                                (graphs[2], ForwardMode.DECODE, [2, 0], [1, 1]),
                                (verify, ForwardMode.TARGET_VERIFY, [0, 1, 2, 3], [2] * 4),
                                (graphs[4], ForwardMode.DECODE, [1, 2, 3, 0], [1] * 4)]:
        before, sigs = addresses(fm), fm.signatures()
        eng.reqs, eng.new = np.asarray(reqs), np.asarray(new)
        prefix = eng.seq_len[eng.reqs]
        seq = prefix + 1 if mode == ForwardMode.DECODE else prefix
        be.init_forward_metadata_replay(fm, reqs, seq)
        assert addresses(fm) == before and fm.signatures() == sigs
        for li in range(len(MODEL)):
            q, k, v, _ = eng.make_inputs(li)
            eng.check(li, to_numpy(eng.run_layer(li, q, k, v, metadata=fm)), q, k, v)
            eng.commit(li, k, v)
        eng.end()
    with pytest.raises(fa3c.Fa3cError, match="captured for 4 requests"):
        be.init_forward_metadata_replay(graphs[4], [0, 1], [3, 4])
    with pytest.raises(fa3c.Fa3cError, match="no static shape"):
        be.init_forward_metadata_capture(ForwardMode.EXTEND, 2)


def test_refusals(rng):
    eng = Engine(rng, MODEL, page_size=16, append_kv=True)
    be = eng.backend
    with pytest.raises(fa3c.Fa3cError, match="no forward metadata"):
        be.forward(FULL, np.zeros((1, 4, 64), dtype=BF16), eng.k_pool[0], eng.v_pool[0])
    eng.begin(ForwardMode.EXTEND, [0, 1], [3, 4])
    q, k, v, _ = eng.make_inputs(1)
    with pytest.raises(fa3c.Fa3cError, match="pass the layer's new k and v"):
        be.forward(FULL, q, eng.k_pool[1], eng.v_pool[1])
    with pytest.raises(fa3c.Fa3cError, match="give both or neither"):
        be.forward(FULL, q, eng.k_pool[1], eng.v_pool[1], k, None)
    with pytest.raises(fa3c.Fa3cError, match="max_batch_size = 4"):
        be.init_forward_metadata(ForwardMode.DECODE, list(range(5)), [1] * 5)
    with pytest.raises(fa3c.Fa3cError, match="extend_lens: required"):
        be.init_forward_metadata(ForwardMode.EXTEND, [0], [3])
    with pytest.raises(fa3c.Fa3cError, match="0 <= extend_lens <= seq_lens"):
        be.init_forward_metadata(ForwardMode.EXTEND, [0], [3], extend_lens=[4])
    with pytest.raises(fa3c.Fa3cError, match="max_context_len = 96"):
        be.init_forward_metadata(ForwardMode.DECODE, [0], [eng.req_to_token_np.shape[1] + 1])
    other = Engine(rng, MODEL, page_size=16, append_kv=False)
    other.begin(ForwardMode.DECODE, [0], [1])
    with pytest.raises(fa3c.Fa3cError, match="k and v must be None"):
        other.backend.forward(FULL, q[:1], other.k_pool[1], other.v_pool[1], k[:1], v[:1])
    pages = np.zeros((33, 32, 2, 64), dtype=BF16)[:, :16]  # pages of a wider buffer: slots cannot be a view
    with pytest.raises(fa3c.Fa3cError, match="contiguous cache"):
        other.backend.write_kv(pages, pages, k[:1], v[:1])
    fm_other = other.begin(ForwardMode.DECODE, [0], [1])
    with pytest.raises(fa3c.Fa3cError, match="another backend"):
        be.forward(FULL, q[:1], eng.k_pool[1], eng.v_pool[1], k[:1], v[:1], metadata=fm_other)
    with pytest.raises(fa3c.Fa3cError, match="req_to_token"):
        AttentionBackend(np.zeros((2, 8), dtype=np.int64), 1, MODEL, dtype=BF16, max_batch_size=2)


def test_signature_is_a_frozen_dataclass():
    """Keys are full signatures, never strings: hashable, immutable, equal iff every field is."""
    fields = {f.name for f in dataclasses.fields(CallSignature)}
    assert {"batch_size", "max_seqlen_q", "max_seqlen_k", "num_heads_q", "num_heads_kv", "headdim", "headdim_v",
            "qkv_dtype", "page_size", "causal", "window_size", "attention_chunk", "has_softcap", "num_splits",
            "pack_gqa", "appending", "max_seqlen_k_new", "sm_margin", "device"} <= fields
    base = dict.fromkeys(fields, 0)
    a, b = CallSignature(**base), CallSignature(**dict(base, window_size=(8, 0)))
    assert a != b and len({a, b, CallSignature(**base)}) == 2
    assert a.differences(b) == [("window_size", 0, (8, 0))]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.batch_size = 3


def test_no_module_level_mutable_state():
    """Everything mutable lives in backend instances."""
    for name, value in vars(serving).items():
        if name.startswith("__"):
            continue
        assert not isinstance(value, (dict, list, set, bytearray, np.ndarray)), name
