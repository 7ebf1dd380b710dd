"""Context parallelism (fa3c.context_parallel): zigzag prefill and page-sharded decode over W
ranks, against the float64 reference under FA3's pass rule and against the single-device fa3c
forward of the same inputs.

The same per-rank code runs over three communicators: SimulatedGroup (W ranks as threads of this
process; numpy arrays in CI, torch CUDA tensors on one GPU in the device suite),
TorchDistributedComm over gloo (W processes on CPU tensors; needs torch) and over NCCL (W GPUs;
needs >= 2 GPUs and fa3c's cuda backend). Inputs are made from a seed on every rank, so each rank
holds the same global data and takes its part of it.
"""

import os
import tempfile

import numpy as np
import pytest

pytest.importorskip("ml_dtypes")

import fa3c  # noqa: E402
from fa3c.context_parallel import (  # noqa: E402
    ContextParallelDecode, ContextParallelPrefill, SimulatedGroup, TorchDistributedComm, ZigzagSplit,
    local_key_count, merge_state, page_owner,
)
from fa3c.flash_attn_interface import flash_attn_varlen_func, flash_attn_with_kvcache  # noqa: E402
from fa3c.serving import AttentionLayer  # noqa: E402
from ref_numpy import BF16, assert_lse, assert_out_fa3, assert_out_ulp, attention_ref, combine_ref, rand  # noqa: E402
from serving_sim import to_numpy, torch_from_numpy  # noqa: E402

FULL = AttentionLayer(num_heads_q=4, num_heads_kv=2, head_dim=64)                       # GQA 2
SWA = AttentionLayer(num_heads_q=4, num_heads_kv=2, head_dim=64, window_size=(20, 0))   # sliding window
CHUNK = AttentionLayer(num_heads_q=4, num_heads_kv=1, head_dim=64, attention_chunk=32, softcap=8.0)  # MQA
LAYERS = {"full": FULL, "swa": SWA, "chunk": CHUNK}

# lengths shorter than 2W (empty chunks), unequal, and one long sequence
PREFILL_LENS = [[1, 3, 7, 50], [97]]
# decode lengths (the decode token included): shards empty on some ranks, windows that miss rank 0
DECODE_LENS = [1, 5, 17, 40, 70, 200, 333]


def numpy_device(a):
    return a


# ---------------------------------------------------------------------------------------------
# Cases: global inputs from a seed, the same on every rank


def prefill_case(seed, seq_lens, layer):
    rng = np.random.default_rng(seed)
    total = int(sum(seq_lens))
    return dict(seq_lens=np.asarray(seq_lens), q=rand(rng, (total, layer.num_heads_q, layer.head_dim), BF16),
                k=rand(rng, (total, layer.num_heads_kv, layer.head_dim), BF16),
                v=rand(rng, (total, layer.num_heads_kv, layer.head_dim_v), BF16))


def prefill_rank(comm, case, layer, dev=numpy_device, **backend_kw):
    """One rank's CP prefill of the case: (its local out, the gathered out in batch order)."""
    cp = ContextParallelPrefill(comm, [layer], dtype=BF16, device_like=dev(np.zeros(1, np.int32)), num_threads=1,
                                **backend_kw)
    try:
        fm = cp.init_forward_metadata(case["seq_lens"])
        mine = fm.split.tokens(comm.rank)
        k_cache, v_cache = cp.gather_kv(dev(case["k"][mine]), dev(case["v"][mine]))
        out = cp.forward(layer, dev(case["q"][mine]), k_cache, v_cache)
        return to_numpy(out), to_numpy(cp.gather_output(out))
    finally:
        cp.close()


def check_prefill(case, layer, results, world_size):
    """Every rank's gathered output is the same, its local rows are its tokens' rows, and it passes
    FA3's rule against the reference, as the single-device forward does."""
    lens = case["seq_lens"]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    full = results[0][1]
    split = ZigzagSplit(lens, world_size)
    for r, (local, gathered) in enumerate(results):
        assert np.array_equal(gathered.view(np.uint16), full.view(np.uint16)), f"rank {r} gathered other bits"
        assert np.array_equal(local.view(np.uint16), full[split.tokens(r)].view(np.uint16)), f"rank {r} local rows"
    b, s = len(lens), max(int(lens.max()), 1)

    def padded(x):
        p = np.zeros((b, s) + x.shape[1:], dtype=x.dtype)
        for i in range(b):
            p[i, :lens[i]] = x[cu[i]:cu[i + 1]]
        return p

    Q, K, V = padded(case["q"]), padded(case["k"]), padded(case["v"])
    kw = dict(causal=True, window_size=layer.window_size, attention_chunk=layer.attention_chunk, softcap=layer.softcap)
    ref = attention_ref(Q, K, V, lens, lens, **kw)[0]
    naive = attention_ref(Q, K, V, lens, lens, lowp=BF16, **kw)[0]
    ref, naive = (np.concatenate([x[i, :lens[i]] for i in range(b)]) for x in (ref, naive))
    single = flash_attn_varlen_func(case["q"], case["k"], case["v"], cu, cu, int(lens.max()), int(lens.max()), **kw)
    assert_out_fa3(single, ref, naive)
    assert_out_fa3(full, ref, naive)


def decode_case(seed, seq_lens, layer, page_size, world_size, sinks=False):
    """Requests of seq_lens tokens (the last one is being decoded): their K/V, q, and for each rank
    a pool holding its pages of every request (decode token not yet written) and its page table
    (physical pages at random, unused slots full of large values that would show if read)."""
    rng = np.random.default_rng(seed)
    lens = np.asarray(seq_lens)
    b, h, h_k, d, dv, ps = len(lens), layer.num_heads_q, layer.num_heads_kv, layer.head_dim, layer.head_dim_v, page_size
    K = [rand(rng, (n, h_k, d), BF16) for n in lens]
    V = [rand(rng, (n, h_k, dv), BF16) for n in lens]
    case = dict(seq_lens=lens, K=K, V=V, q=rand(rng, (b, h, d), BF16), k_new=np.stack([k[-1] for k in K]),
                v_new=np.stack([v[-1] for v in V]), pools=[], page_tables=[],
                sinks=(rng.standard_normal(h) * 2).astype(np.float32) if sinks else None)
    for r in range(world_size):
        pages = -(-local_key_count(lens, r, ps, world_size) // ps)
        n_pool = int(pages.sum()) + 2
        perm = rng.permutation(n_pool)
        table = np.zeros((b, int(pages.max()) + 1), np.int32)  # one spare column
        used = 0
        for i in range(b):
            table[i, :pages[i]] = perm[used:used + pages[i]]
            used += pages[i]
        kp = rand(rng, (n_pool * ps, h_k, d), BF16, scale=100)
        vp = rand(rng, (n_pool * ps, h_k, dv), BF16, scale=100)
        for i in range(b):
            pos = np.arange(lens[i] - 1)
            owner, local = page_owner(pos, ps, world_size)
            sel = owner == r
            slots = table[i, local[sel] // ps] * ps + local[sel] % ps
            kp[slots], vp[slots] = K[i][sel.nonzero()[0]], V[i][sel.nonzero()[0]]
        case["pools"].append((kp, vp))
        case["page_tables"].append(table)
    return case


def decode_rank(comm, case, layer, page_size, dev=numpy_device, **backend_kw):
    """One rank's CP decode: (out, lse, its k pool, its v pool) after write_kv and forward."""
    r = comm.rank
    cp = ContextParallelDecode(comm, page_size, [layer], dtype=BF16, device_like=dev(np.zeros(1, np.int32)),
                               num_threads=1, **backend_kw)
    try:
        kp, vp = (dev(x.copy()) for x in case["pools"][r])
        fm = cp.init_forward_metadata(case["seq_lens"], dev(case["page_tables"][r]))
        cp.write_kv(kp, vp, dev(case["k_new"]), dev(case["v_new"]))
        sinks = None if case["sinks"] is None else dev(case["sinks"])
        out, lse = cp.forward(layer, dev(case["q"]), kp, vp, sinks=sinks, return_softmax_lse=True)
        assert fm.cache_seqlens.shape == (len(case["seq_lens"]),)
        return to_numpy(out), to_numpy(lse), to_numpy(kp), to_numpy(vp)
    finally:
        cp.close()


def check_decode(case, layer, page_size, results, world_size):
    lens = case["seq_lens"]
    b, s = len(lens), int(lens.max())
    out0, lse0 = results[0][:2]
    for r, (out, lse, kp, vp) in enumerate(results):
        assert np.array_equal(out.view(np.uint16), out0.view(np.uint16)) and np.array_equal(lse, lse0), f"rank {r}"
        # write_kv stored the decode token on its owner only
        owner, local = page_owner(lens - 1, page_size, world_size)
        want_k, want_v = case["pools"][r][0].copy(), case["pools"][r][1].copy()
        for i in np.nonzero(owner == r)[0]:
            slot = case["page_tables"][r][i, local[i] // page_size] * page_size + local[i] % page_size
            want_k[slot], want_v[slot] = case["k_new"][i], case["v_new"][i]
        assert np.array_equal(kp.view(np.uint16), want_k.view(np.uint16)), f"k pool of rank {r}"
        assert np.array_equal(vp.view(np.uint16), want_v.view(np.uint16)), f"v pool of rank {r}"
    K = np.zeros((b, s) + case["K"][0].shape[1:], BF16)
    V = np.zeros((b, s) + case["V"][0].shape[1:], BF16)
    for i in range(b):
        K[i, :lens[i]], V[i, :lens[i]] = case["K"][i], case["V"][i]
    Q = case["q"][:, None]
    kw = dict(causal=True, window_size=layer.window_size, attention_chunk=layer.attention_chunk, softcap=layer.softcap)
    ref, ref_lse = attention_ref(Q, K, V, np.ones(b, int), lens, sinks=case["sinks"], **kw)
    naive = attention_ref(Q, K, V, np.ones(b, int), lens, sinks=case["sinks"], lowp=BF16, **kw)[0]
    # the single-device forward: the whole cache in one pool, logical page p at page p
    n_pages = -(-s // page_size)
    table = np.arange(b * n_pages, dtype=np.int32).reshape(b, n_pages)
    pad = np.zeros((b, n_pages * page_size - s) + K.shape[2:], BF16)
    kc = np.concatenate([K, pad], axis=1).reshape((b * n_pages, page_size) + K.shape[2:])
    vc = np.concatenate([V, np.zeros((b, n_pages * page_size - s) + V.shape[2:], BF16)], axis=1)
    vc = vc.reshape((b * n_pages, page_size) + V.shape[2:])
    single = flash_attn_with_kvcache(Q, kc, vc, cache_seqlens=lens.astype(np.int32), page_table=table,
                                     sinks=case["sinks"], **kw)
    assert_out_fa3(single[:, 0], ref[:, 0], naive[:, 0])
    assert_out_fa3(out0, ref[:, 0], naive[:, 0])
    assert_lse(lse0, ref_lse[:, :, 0])


# ---------------------------------------------------------------------------------------------
# Host-side arithmetic


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_zigzag_split(world_size):
    lens = [0, 1, 3, 7, 8, 50, 1000]
    split = ZigzagSplit(lens, world_size)
    toks = [split.tokens(r) for r in range(world_size)]
    assert np.array_equal(np.sort(np.concatenate(toks)), np.arange(sum(lens))), "the ranks' tokens partition the batch"
    assert [len(t) for t in toks] == [split.num_tokens(r) for r in range(world_size)]
    # causal work (keys attended, summed over the rank's queries) of the 1000-token sequence balances
    work = []
    for r in range(world_size):
        w = 0
        for half in split.HALVES:
            a, e = split.half_range(r, half)
            w += sum(range(a[-1] + 1, e[-1] + 1))
        work.append(w)
    assert max(work) - min(work) <= 0.01 * max(work), work


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("page_size", [1, 16, 64])
def test_page_sharding(world_size, page_size):
    pos = np.arange(700)
    owner, local = page_owner(pos, page_size, world_size)
    for r in range(world_size):
        mine = pos[owner == r]
        assert np.array_equal(local[owner == r], np.arange(len(mine))), "local positions are dense and increasing"
        brute = np.array([(owner[:n] == r).sum() for n in range(701)])
        assert np.array_equal(local_key_count(np.arange(701), r, page_size, world_size), brute)


def test_merge_state(rng):
    """The fa3c_merge_state binding against the reference merge: -inf and +inf (no keys) states
    contribute nothing, bf16 inputs, an fp32 output aliasing an input."""
    n, h, dv = 5, 3, 32
    oa, ob = rand(rng, (n, h, dv), BF16), rand(rng, (n, h, dv), BF16)
    la, lb = (rng.standard_normal((n, h)) * 3).astype(np.float32), (rng.standard_normal((n, h)) * 3).astype(np.float32)
    la[0], lb[1], la[2, 0], lb[2, 0] = -np.inf, np.inf, -np.inf, -np.inf
    ref_out, ref_lse = combine_ref(np.stack([oa, ob]), np.stack([la, lb]))
    out, lse = merge_state(oa, la, ob, lb)
    assert out.dtype == BF16 and lse.dtype == np.float32
    assert_out_ulp(out, ref_out)
    assert_lse(lse, ref_lse)
    assert np.array_equal(out[1].view(np.uint16), oa[1].view(np.uint16)), "a +inf state is ignored exactly"
    acc = oa.astype(np.float32)
    merge_state(acc, la, ob, lb, out=acc, lse=la)
    assert_out_ulp(acc, ref_out, atol=1e-5)
    assert_lse(la, ref_lse)


# ---------------------------------------------------------------------------------------------
# Simulated ranks, numpy (CI)


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("layer", list(LAYERS), ids=list(LAYERS))
@pytest.mark.parametrize("lens", PREFILL_LENS, ids=["short-unequal", "long"])
def test_prefill_simulated(world_size, layer, lens):
    layer = LAYERS[layer]
    case = prefill_case(world_size * 100 + len(lens), lens, layer)
    results = SimulatedGroup(world_size).run(lambda comm: prefill_rank(comm, case, layer))
    check_prefill(case, layer, results, world_size)


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("page_size", [16, 64])
@pytest.mark.parametrize("layer", list(LAYERS), ids=list(LAYERS))
def test_decode_simulated(world_size, page_size, layer):
    layer = LAYERS[layer]
    case = decode_case(world_size * 1000 + page_size, DECODE_LENS, layer, page_size, world_size)
    results = SimulatedGroup(world_size).run(lambda comm: decode_rank(comm, case, layer, page_size))
    check_decode(case, layer, page_size, results, world_size)


def test_decode_sinks_and_empty_shards():
    """Sinks enter the softmax once (rank 0), also where rank 0's shard is empty or outside the
    window; requests whose whole cache sits on one rank."""
    W, ps = 3, 16
    lens = [1, 2, 16, 17, 40, 41, 100]
    # window 20 at L = 40 sees positions 19..39: pages 1 and 2, none on rank 0
    assert local_key_count([40], 0, ps, W)[0] == local_key_count([19], 0, ps, W)[0]
    for layer in (SWA, FULL):
        case = decode_case(7, lens, layer, ps, W, sinks=True)
        results = SimulatedGroup(W).run(lambda comm: decode_rank(comm, case, layer, ps))
        check_decode(case, layer, ps, results, W)


@pytest.mark.parametrize("num_splits", [0, 3])
def test_split_heuristics(num_splits):
    """Heuristics of an H100's 132 SMs: each rank's calls split their keys (num_splits 0: dynamic
    splits from the precomputed metadata; 3: a bound) and pack GQA, and still match."""
    W, ps, kw = 2, 64, dict(num_sm=132, num_splits=num_splits)
    if num_splits == 0:
        def splits(comm):
            cp = ContextParallelDecode(comm, ps, [FULL], dtype=BF16, device_like=np.zeros(1, np.int32), **kw)
            fm = cp.init_forward_metadata([3, 700, 1500], np.zeros((3, 12), np.int32))
            return max(int(m[32:35].max()) for m in fm.scheduler_metadata.values())  # after the 32-int32 header
        assert min(SimulatedGroup(W).run(splits)) > 1, "every rank's decode should split its keys"
    for layer in (FULL, SWA):
        case = decode_case(11, [3, 700, 1500], layer, ps, W)
        results = SimulatedGroup(W).run(lambda comm: decode_rank(comm, case, layer, ps, **kw))
        check_decode(case, layer, ps, results, W)
        case = prefill_case(12, [300, 517], layer)
        results = SimulatedGroup(W).run(lambda comm: prefill_rank(comm, case, layer, **kw))
        check_prefill(case, layer, results, W)


def test_prefill_halves_have_their_own_metadata():
    """Equal lengths give both halves the same CallSignature but different lengths: each has its
    own metadata, and handing one half's metadata to the other half's call is refused (the CP
    "output garbage" of SGLang's MUSA port, where both halves shared one cache key)."""
    W, lens = 2, [40, 40]
    case = prefill_case(3, lens, FULL)

    def rank(comm):
        cp = ContextParallelPrefill(comm, [FULL], dtype=BF16, device_like=np.zeros(1, np.int32), num_threads=1)
        fm = cp.init_forward_metadata(lens)
        (kp, prev), (kn, nxt) = fm.scheduler_metadata.items()
        assert kp[0] == "prev" and kn[0] == "next" and kp[1] == kn[1]
        mine = fm.split.tokens(comm.rank)
        kc, vc = cp.gather_kv(case["k"][mine], case["v"][mine])
        h = fm.halves["next"]
        with pytest.raises(fa3c.Fa3cError, match="scheduler_metadata"):
            flash_attn_with_kvcache(case["q"][mine][h.q_start:h.q_stop], kc, vc, cache_seqlens=h.cache_seqlens,
                                    cu_seqlens_q=h.cu_seqlens_q, max_seqlen_q=h.max_seqlen_q, causal=True,
                                    scheduler_metadata=prev, context=cp.context)
        with pytest.raises(fa3c.Fa3cError, match="no scheduler metadata for the prev half"):
            cp.forward(SWA, case["q"][mine], kc, vc)   # a layer the backend was not built for
        cp.close()

    SimulatedGroup(W).run(rank)


def test_simulated_errors_reach_the_caller():
    """A failing rank stops the others (no hang) and its exception is raised to the caller."""
    def rank(comm):
        x = np.zeros((comm.rank + 1, 2), np.float32)   # shapes differ between ranks
        return comm.all_gather(x)

    with pytest.raises(fa3c.Fa3cError, match="different shapes"):
        SimulatedGroup(3).run(rank)

    def one_fails(comm):
        if comm.rank == 1:
            raise ValueError("rank 1 failed")
        comm.all_gather(np.zeros(2, np.float32))

    with pytest.raises(ValueError, match="rank 1 failed"):
        SimulatedGroup(2).run(one_fails)
    group = SimulatedGroup(2)
    got = group.run(lambda comm: comm.all_gather(np.full(3, comm.rank, np.int32)))
    assert all(np.array_equal(g, [[0, 0, 0], [1, 1, 1]]) for g in got)
    assert [c.bytes_received for c in group.comms] == [12, 12]


def test_serving_exports():
    from fa3c import serving
    assert serving.ContextParallelDecode is ContextParallelDecode
    assert serving.ZigzagSplit is ZigzagSplit and serving.TorchDistributedComm is TorchDistributedComm


# ---------------------------------------------------------------------------------------------
# torch: gloo processes (CPU), NCCL processes (>= 2 GPUs), simulated ranks on one GPU


def _torch():
    return pytest.importorskip("torch")


def _cases(world_size):
    """A reduced sweep for the multi-process runs: every layer kind, both page sizes."""
    return ([("prefill", name, lens) for name in LAYERS for lens in PREFILL_LENS] +
            [("decode", name, ps) for name in LAYERS for ps in (16, 64)])


def _run_case(comm, kind, name, arg, dev):
    layer, W = LAYERS[name], comm.world_size
    if kind == "prefill":
        case = prefill_case(W * 100 + len(arg), arg, layer)
        return case, prefill_rank(comm, case, layer, dev)
    case = decode_case(W * 1000 + arg, DECODE_LENS, layer, arg, W, sinks=name == "swa")
    return case, decode_rank(comm, case, layer, arg, dev)


def _dist_worker(rank, world_size, init_file, backend):
    """One process of a torch.distributed run: every case through TorchDistributedComm; each rank
    gathers the others' results and checks them all."""
    import torch
    import torch.distributed as dist
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        comm = TorchDistributedComm()
        assert (comm.rank, comm.world_size) == (rank, world_size)
        for kind, name, arg in _cases(world_size):
            case, mine = _run_case(comm, kind, name, arg, lambda a: torch_from_numpy(a, device))
            everyone = [None] * world_size
            dist.all_gather_object(everyone, mine)
            if kind == "prefill":
                check_prefill(case, LAYERS[name], everyone, world_size)
            else:
                check_decode(case, LAYERS[name], arg, everyone, world_size)
    finally:
        dist.destroy_process_group()


def _spawn(world_size, backend):
    torch = _torch()
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_dist_worker, args=(world_size, os.path.join(tmp, "init"), backend), nprocs=world_size, join=True)
    del torch


@pytest.mark.parametrize("world_size", [2, 3])
def test_torch_distributed_gloo(world_size):
    _torch()
    _spawn(world_size, "gloo")


def _cuda_ready(min_gpus):
    torch = _torch()
    if not torch.cuda.is_available() or torch.cuda.device_count() < min_gpus:
        pytest.skip(f"needs {min_gpus} CUDA GPU(s)")
    if not any(name == "cuda" and available for name, _, available, _ in fa3c.backends()):
        pytest.skip("fa3c was built without its cuda backend")
    return torch


def test_torch_distributed_nccl():
    torch = _cuda_ready(2)
    os.environ["NCCL_NVLS_ENABLE"] = "0"  # NVLink multicast off, inherited by the spawned ranks
    _spawn(min(torch.cuda.device_count(), 4), "nccl")


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_cuda_simulated_ranks_on_one_gpu(world_size):
    """The device suite's single-GPU simulation: W ranks as threads on one GPU, each with its own
    fa3c context and its own CUDA stream, exchanging through SimulatedGroup."""
    torch = _cuda_ready(1)

    def dev(a):
        return torch_from_numpy(a, "cuda")

    for kind, name, arg in _cases(world_size):
        def rank(comm):
            with torch.cuda.stream(torch.cuda.Stream()):
                return _run_case(comm, kind, name, arg, dev)

        results = SimulatedGroup(world_size).run(rank)
        case = results[0][0]
        mine = [r[1] for r in results]
        if kind == "prefill":
            check_prefill(case, LAYERS[name], mine, world_size)
        else:
            check_decode(case, LAYERS[name], arg, mine, world_size)
