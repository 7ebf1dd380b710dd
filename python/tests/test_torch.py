"""torch tensors through fa3c's FA3 interface and fa3c.serving: zero-copy on the CPU and on CUDA
devices, outputs allocated as torch tensors on the inputs' device, launches on torch's current
stream, and CUDA-graph capture/replay of decode steps. Skipped without torch; the CUDA tests are
skipped without a GPU or without fa3c's CUDA backend. The plain (numpy) path must never import
torch, which is checked with or without torch installed."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("ml_dtypes")

import fa3c  # noqa: E402
from fa3c.flash_attn_interface import (  # noqa: E402
    flash_attn_combine, flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache, get_scheduler_metadata,
)
from fa3c.serving import AttentionLayer, ForwardMode  # noqa: E402
from ref_numpy import BF16, E4M3, F16, assert_out_fa3, attention_ref, pack, rand  # noqa: E402
from serving_sim import TRACE, Engine, to_numpy, torch_from_numpy  # noqa: E402

SWA = AttentionLayer(num_heads_q=4, num_heads_kv=2, head_dim=64, window_size=(8, 0))
FULL = AttentionLayer(num_heads_q=4, num_heads_kv=2, head_dim=64)
MODEL = [SWA, FULL, SWA, FULL]


def bits(x):
    return to_numpy(x).view(np.uint8)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def test_plain_path_never_imports_torch():
    """numpy calls of every interface function and of the serving layer leave torch unimported."""
    code = """
import sys
import numpy as np, ml_dtypes
import fa3c
from fa3c.flash_attn_interface import flash_attn_func, flash_attn_with_kvcache, get_scheduler_metadata
from fa3c.serving import AttentionBackend, AttentionLayer, ForwardMode
bf = ml_dtypes.bfloat16
q = np.ones((1, 2, 2, 64), bf); k = np.ones((1, 3, 2, 64), bf)
flash_attn_func(q, k, k, causal=True)
lens = np.array([3], np.int32)
m = get_scheduler_metadata(1, 2, 3, 2, 2, 64, lens, bf)
flash_attn_with_kvcache(q, k, k, cache_seqlens=lens, scheduler_metadata=m)
be = AttentionBackend(np.arange(8, dtype=np.int32).reshape(1, 8), 1, [AttentionLayer(2, 2, 64)], dtype=bf,
                      max_batch_size=1)
be.init_forward_metadata(ForwardMode.EXTEND, [0], [2], extend_lens=[2])
pool = np.zeros((8, 2, 64), bf)
be.forward(AttentionLayer(2, 2, 64), q[0], pool, pool, k[0, :2], k[0, :2])
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(fa3c.__file__)),
                                         env.get("PYTHONPATH", "")])
    env.setdefault("FA3C_LIBRARY", fa3c.library_path())
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ---------------------------------------------------------------------------------------------
# CPU tensors: the same bits as the numpy call


def test_func_and_varlen_cpu(torch, rng):
    for dt in (BF16, F16):
        q, k, v = rand(rng, (2, 5, 4, 64), dt), rand(rng, (2, 9, 2, 64), dt), rand(rng, (2, 9, 2, 64), dt)
        want, want_lse = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
        got, got_lse = flash_attn_func(*(torch_from_numpy(x) for x in (q, k, v)), causal=True, return_attn_probs=True)
        assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
        assert got.dtype == (torch.bfloat16 if dt == BF16 else torch.float16) and got_lse.dtype == torch.float32
        assert tuple(got.shape) == want.shape and tuple(got_lse.shape) == want_lse.shape
        assert np.array_equal(bits(got), bits(want)) and np.array_equal(bits(got_lse), bits(want_lse))
    qp, cu = pack(q, [5, 3])
    kp, cuk = pack(k, [9, 4])
    vp, _ = pack(v, [9, 4])
    want = flash_attn_varlen_func(qp, kp, vp, cu, cuk, 5, 9, causal=True, return_softmax_lse=True)
    got = flash_attn_varlen_func(*(torch_from_numpy(x) for x in (qp, kp, vp, cu, cuk)), 5, 9, causal=True,
                                 return_softmax_lse=True)
    for g, w in zip(got[:2], want[:2]):
        assert np.array_equal(bits(g), bits(w))


def test_views_and_strides_cpu(torch, rng):
    """Slices, transposed layouts and a non-contiguous last dimension (copied, as FA3 does)."""
    big_q = torch_from_numpy(rand(rng, (2, 7, 6, 128), BF16))
    q = big_q[:, 1:6, 1:5, :64]                                           # strided view
    kv = torch_from_numpy(rand(rng, (2, 2, 9, 64), BF16)).transpose(1, 2)  # (b, s_k, h_k, d), head-major memory
    k_strided = torch_from_numpy(rand(rng, (2, 9, 2, 128), BF16))[..., ::2]  # stride(-1) == 2
    out = flash_attn_func(q, kv, k_strided, causal=True)
    args = [to_numpy(x.contiguous()) for x in (q, kv, k_strided)]
    ref, _ = attention_ref(*args, causal=True)
    assert_out_fa3(to_numpy(out), ref, attention_ref(*args, causal=True, lowp=BF16)[0])


def test_kvcache_append_in_place_cpu(torch, rng, ctx132):
    """A paged append writes into the torch caches' own memory, as the numpy call writes into
    numpy's; outputs, partials and scheduler metadata agree bit for bit."""
    b, ps, pages = 3, 16, 80
    k_cache, v_cache = rand(rng, (250, ps, 1, 64), BF16), rand(rng, (250, ps, 1, 64), BF16)
    page_table = rng.permutation(250)[:b * pages].reshape(b, pages).astype(np.int32)
    seqlens = np.array([0, 700, 1200], np.int32)
    q, k, v = rand(rng, (b, 2, 4, 64), BF16), rand(rng, (b, 2, 1, 64), BF16), rand(rng, (b, 2, 1, 64), BF16)
    meta_np = get_scheduler_metadata(b, 2, pages * ps, 4, 1, 64, seqlens, BF16, page_size=ps, max_seqlen_k_new=2,
                                     causal=True, context=ctx132)
    kw = dict(cache_seqlens=seqlens, page_table=page_table, causal=True, return_softmax_lse=True, num_splits=0)
    k_np, v_np = k_cache.copy(), v_cache.copy()
    want = flash_attn_with_kvcache(q, k_np, v_np, k, v, scheduler_metadata=meta_np, context=ctx132, **kw)
    t = {name: torch_from_numpy(x) for name, x in dict(q=q, k=k, v=v, k_cache=k_cache, v_cache=v_cache,
                                                       seqlens=seqlens, page_table=page_table).items()}
    meta = get_scheduler_metadata(b, 2, pages * ps, 4, 1, 64, t["seqlens"], torch.bfloat16, page_size=ps,
                                  max_seqlen_k_new=2, causal=True, context=ctx132)
    assert isinstance(meta, torch.Tensor) and meta.dtype == torch.int32 and np.array_equal(to_numpy(meta), meta_np)
    kw.update(cache_seqlens=t["seqlens"], page_table=t["page_table"])
    got = flash_attn_with_kvcache(t["q"], t["k_cache"], t["v_cache"], t["k"], t["v"], scheduler_metadata=meta,
                                  context=ctx132, **kw)
    assert np.array_equal(bits(t["k_cache"]), bits(k_np)) and np.array_equal(bits(t["v_cache"]), bits(v_np))
    assert got[2].shape[0] > 1, "num_splits=0 with 132 SMs should split"
    for g, w in zip(got, want):
        assert isinstance(g, torch.Tensor) and np.array_equal(bits(g), bits(w))
    out, lse = flash_attn_combine(got[2].permute(0, 1, 3, 2, 4), got[3].permute(0, 1, 3, 2), out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and tuple(lse.shape) == (b, 2, 4)
    assert np.array_equal(bits(out), bits(want[0]))


def test_fp8_cpu(torch, rng):
    q, k, v = (rand(rng, s, E4M3) for s in ((2, 3, 4, 64), (2, 7, 2, 64), (2, 7, 2, 64)))
    desc = [np.full((2, 2), 0.5, np.float32) for _ in range(3)]
    want = flash_attn_func(q, k, v, q_descale=desc[0], k_descale=desc[1], v_descale=desc[2])
    tq, tk, tv = (torch.from_numpy(x.view(np.int8)).view(torch.float8_e4m3fn) for x in (q, k, v))
    tdesc = [torch.from_numpy(d[:1]).expand(2, 2) for d in desc]          # stride-0 broadcast
    got = flash_attn_func(tq, tk, tv, q_descale=tdesc[0], k_descale=tdesc[1], v_descale=tdesc[2])
    assert got.dtype == torch.bfloat16 and np.array_equal(bits(got), bits(want))


def test_errors_cpu(torch, rng):
    q = torch.zeros(1, 2, 2, 64, dtype=torch.float64)
    with pytest.raises(fa3c.Fa3cError, match="q: dtype torch.float64 is not an fa3c dtype"):
        flash_attn_func(q, q, q)
    lens = torch.tensor([5, 6], dtype=torch.int32)
    meta = get_scheduler_metadata(2, 2, 8, 4, 2, 64, lens, torch.bfloat16, causal=True)
    q = torch.zeros(2, 2, 4, 64, dtype=torch.bfloat16)
    cache = torch.zeros(2, 8, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(fa3c.Fa3cError, match="scheduler_metadata: computed for causal"):
        flash_attn_with_kvcache(q, cache, cache, cache_seqlens=lens, scheduler_metadata=meta)
    with pytest.raises(ValueError, match="ver=4"):
        flash_attn_with_kvcache(q, cache, cache, cache_seqlens=lens, ver=4)


@pytest.mark.parametrize("append_kv", [True, False], ids=["append", "write-first"])
def test_serving_trace_cpu(torch, rng, append_kv):
    eng = Engine(rng, MODEL, page_size=16, append_kv=append_kv, to_device=torch_from_numpy)
    assert all(isinstance(x, torch.Tensor) for x in eng.backend.buffers().values())
    eng.run_trace(TRACE)


# ---------------------------------------------------------------------------------------------
# Other producers: __dlpack__ and __cuda_array_interface__ (no torch needed)


class Exported:
    """An array known to fa3c only through DLPack (and, optionally, the array-API namespace that
    allocates outputs), like a JAX or a TensorFlow array."""

    def __init__(self, a, namespace=True):
        self.a, self.shape, self.dtype, self.device = a, a.shape, a.dtype, "cpu"
        if namespace:
            self.__array_namespace__ = lambda: np

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()

    def __getitem__(self, i):
        return Exported(self.a[i])


def test_dlpack_producer(rng):
    q, k, v = rand(rng, (2, 4, 4, 64), F16), rand(rng, (2, 9, 2, 64), F16), rand(rng, (2, 9, 2, 64), F16)
    want = flash_attn_func(q, k, v, causal=True)
    got = flash_attn_func(Exported(q), Exported(k[:, :, :, :]), Exported(v), causal=True)
    assert isinstance(got, np.ndarray) and np.array_equal(got.view(np.uint16), want.view(np.uint16))
    # zero-copy: an append lands in the exported cache's memory
    k_cache, v_cache = k.copy(), v.copy()
    new = rand(rng, (2, 1, 2, 64), F16)
    lens = np.array([3, 5], np.int32)
    flash_attn_with_kvcache(q, Exported(k_cache), Exported(v_cache), k=Exported(new), v=Exported(new),
                            cache_seqlens=Exported(lens))
    assert np.array_equal(k_cache[0, 3], new[0, 0]) and np.array_equal(v_cache[1, 5], new[1, 0])
    ro = k.copy()
    ro.flags.writeable = False
    with pytest.raises(fa3c.Fa3cError, match="k: array is read-only"):
        flash_attn_with_kvcache(q, Exported(ro), Exported(v.copy()), k=new, v=new, cache_seqlens=lens)
    with pytest.raises(TypeError, match="no __array_namespace__"):
        flash_attn_func(Exported(q, namespace=False), Exported(k), Exported(v))


class FakeCudaArray:
    """__cuda_array_interface__ v3 metadata over host memory (descriptors only; never launched)."""

    def __init__(self, a, readonly=False, strides=True):
        self._a = a
        self.__cuda_array_interface__ = dict(
            shape=a.shape, typestr=a.dtype.str, data=(a.ctypes.data, readonly), version=3, stream=7,
            strides=a.strides if strides else None)


def test_cuda_array_interface_descriptor(rng):
    from fa3c import _arrays

    a = rand(rng, (3, 8, 64), F16)[:, ::2]
    t = _arrays.describe(FakeCudaArray(a), "x")
    assert (t.device_type, t.data, t.dtype) == (fa3c.DeviceType.CUDA, a.ctypes.data, fa3c.DType.F16)
    assert list(t.shape)[:3] == [3, 4, 64] and list(t.stride)[:3] == [512, 128, 1]
    c = np.zeros((2, 5), np.int32)
    t = _arrays.describe(FakeCudaArray(c, strides=False), "c")
    assert list(t.stride)[:2] == [5, 1] and t.dtype == fa3c.DType.I32
    assert _arrays.stream(FakeCudaArray(c), "c") == 7
    with pytest.raises(fa3c.Fa3cError, match="read-only"):
        _arrays.describe(FakeCudaArray(c, readonly=True), "out", writable=True)


def test_dlpack_descriptor_of_torch_bf16(torch):
    """DLPack's bf16 / fp8 codes, read from a torch export."""
    from fa3c import _arrays

    x = torch.zeros(4, 6, 64, dtype=torch.bfloat16)[:, 1:5]
    t = _arrays.describe(Exported(x, namespace=False), "x")
    assert (t.data, t.dtype) == (x.data_ptr(), fa3c.DType.BF16)
    assert list(t.shape)[:3] == [4, 4, 64] and list(t.stride)[:3] == list(x.stride())
    y = torch.zeros(3, 32, dtype=torch.float8_e4m3fn)
    assert _arrays.dtype_of(Exported(y, namespace=False), "y") == fa3c.DType.E4M3


# ---------------------------------------------------------------------------------------------
# CUDA


def _has_cuda_backend():
    return any(name == "cuda" and available for name, _, available, _ in fa3c.backends())


@pytest.fixture(scope="module")
def cuda(torch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not _has_cuda_backend():
        pytest.skip("libfa3c was built without its CUDA backend")
    return torch.device("cuda", torch.cuda.current_device())


def _device_metadata_available(torch):
    try:
        get_scheduler_metadata(1, 1, 8, 2, 2, 64, torch.ones(1, dtype=torch.int32, device="cuda"), torch.bfloat16)
    except fa3c.Fa3cError as e:
        if e.status == fa3c.Status.UNSUPPORTED:
            return False
        raise
    return True


def test_cuda_interface(torch, cuda, rng):
    """Outputs are CUDA tensors on the inputs' device; values match the reference; the call runs
    on torch's current stream (a side stream here)."""
    q, k, v = rand(rng, (2, 5, 4, 64), BF16), rand(rng, (2, 9, 2, 64), BF16), rand(rng, (2, 9, 2, 64), BF16)
    tq, tk, tv = (torch_from_numpy(x, cuda) for x in (q, k, v))
    side = torch.cuda.Stream(cuda)
    with torch.cuda.stream(side):
        out, lse = flash_attn_func(tq, tk, tv, causal=True, return_attn_probs=True)
        assert fa3c.default_context((fa3c.DeviceType.CUDA, cuda.index)).stream == side.cuda_stream
    side.synchronize()
    assert out.device == cuda and lse.device == cuda and out.dtype == torch.bfloat16
    ref, ref_lse = attention_ref(q, k, v, causal=True)
    naive = attention_ref(q, k, v, causal=True, lowp=BF16)[0]
    assert_out_fa3(to_numpy(out), ref, naive)
    assert np.allclose(to_numpy(lse), ref_lse, atol=1e-3)
    out2 = flash_attn_func(tq, tk, tv, causal=True)                     # back on the default stream
    assert fa3c.default_context((fa3c.DeviceType.CUDA, cuda.index)).stream == torch.cuda.current_stream().cuda_stream
    assert_out_fa3(to_numpy(out2), ref, naive)
    seqlens = torch.tensor([9, 4], dtype=torch.int32, device=cuda)
    out3 = flash_attn_with_kvcache(tq, tk, tv, cache_seqlens=seqlens, causal=True, num_splits=0)
    ref3, _ = attention_ref(q, k, v, None, [9, 4], causal=True)
    naive3 = attention_ref(q, k, v, None, [9, 4], causal=True, lowp=BF16)[0]
    assert_out_fa3(to_numpy(out3)[1, :4], ref3[1, :4], naive3[1, :4])
    assert_out_fa3(to_numpy(out3)[0], ref3[0], naive3[0])


@pytest.mark.parametrize("use_metadata", [True, False], ids=["metadata", "no-metadata"])
@pytest.mark.parametrize("append_kv", [True, False], ids=["append", "write-first"])
def test_cuda_serving_trace(torch, cuda, rng, append_kv, use_metadata):
    if use_metadata and not _device_metadata_available(torch):
        pytest.skip("the CUDA backend does not compute scheduler metadata on the device yet")
    eng = Engine(rng, MODEL, page_size=16, append_kv=append_kv, use_scheduler_metadata=use_metadata,
                 to_device=lambda a: torch_from_numpy(a, cuda))
    assert eng.backend.context.device == (fa3c.DeviceType.CUDA, cuda.index)
    eng.run_trace(TRACE)


def test_cuda_two_backends_one_device(torch, cuda, rng):
    """Two backends on one GPU (target and draft) and one on the CPU, interleaved: each owns its
    context and buffers, and every result matches the reference."""
    use_metadata = _device_metadata_available(torch)
    def gpu(a):
        return torch_from_numpy(a, cuda)

    configs = [(1, 16, gpu, use_metadata), (2, 1, gpu, use_metadata), (3, 16, None, True)]
    engines = [Engine(np.random.default_rng(seed), MODEL, page_size=ps, to_device=dev, use_scheduler_metadata=um)
               for seed, ps, dev, um in configs]
    ctxs = {id(e.backend.context) for e in engines}
    assert len(ctxs) == 3
    for step in TRACE:
        gens = [e.iter_step(*step) for e in engines]
        for g in gens:
            assert next(g) is None
        live = gens
        while live:
            nxt = []
            for g in live:
                try:
                    next(g)
                    nxt.append(g)
                except StopIteration:
                    pass
            live = nxt


@pytest.mark.parametrize("mode", [ForwardMode.DECODE, ForwardMode.TARGET_VERIFY])
def test_cuda_graph_capture_replay(torch, cuda, rng, mode):
    """A decode (or verify) step captured once in a CUDA graph and replayed over several batches:
    the metadata is rewritten into the same buffers outside the graph before each replay, and
    every replay matches the reference."""
    use_metadata = _device_metadata_available(torch)
    eng = Engine(rng, MODEL, page_size=16, max_ctx=128, to_device=lambda a: torch_from_numpy(a, cuda),
                 use_scheduler_metadata=use_metadata)
    eng.step(ForwardMode.EXTEND, [0, 1, 2, 3], [5, 17, 40, 1])
    eng.step(ForwardMode.DECODE, [0, 1, 2, 3], [1, 1, 1, 1])    # eager warm-up (workspace allocated)
    be, bs = eng.backend, 4
    per_req = 1 if mode == ForwardMode.DECODE else 3
    fm = be.init_forward_metadata_capture(mode, bs, num_draft_tokens=per_req if per_req > 1 else None)
    n = bs * per_req
    static = [[torch.zeros(n, l.num_heads_q, l.head_dim, dtype=torch.bfloat16, device=cuda),
               torch.zeros(n, l.num_heads_kv, l.head_dim, dtype=torch.bfloat16, device=cuda),
               torch.zeros(n, l.num_heads_kv, l.head_dim_v, dtype=torch.bfloat16, device=cuda)] for l in MODEL]
    s = torch.cuda.Stream(cuda)
    s.wait_stream(torch.cuda.current_stream(cuda))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        with torch.cuda.graph(graph, stream=s):
            outs = [be.forward(l, q, eng.k_pool[i], eng.v_pool[i], k, v, metadata=fm)
                    for i, (l, (q, k, v)) in enumerate(zip(MODEL, static))]
    torch.cuda.current_stream(cuda).wait_stream(s)
    for reqs in ([2, 0, 3, 1], [1, 2, 3, 0]):
        eng.reqs, eng.new = np.asarray(reqs), np.full(bs, per_req)
        prefix = eng.seq_len[eng.reqs]
        be.init_forward_metadata_replay(fm, reqs, prefix + 1 if mode == ForwardMode.DECODE else prefix)
        inputs = [eng.make_inputs(i) for i in range(len(MODEL))]
        for (q, k, v, _), buf in zip(inputs, static):
            for x, b in zip((q, k, v), buf):
                b.copy_(torch_from_numpy(x, cuda))
        graph.replay()
        torch.cuda.synchronize(cuda)
        for i, (q, k, v, _) in enumerate(inputs):
            eng.check(i, to_numpy(outs[i]), q, k, v)
            eng.commit(i, k, v)
        eng.end()
        for i in range(len(MODEL)):
            eng.check_pool(i)
