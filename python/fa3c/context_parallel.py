"""fa3c.context_parallel: one sequence's attention spread over several GPUs (context parallelism),
over an existing collective engine: torch.distributed (NCCL on GPUs, gloo on CPUs), or W ranks
simulated in one process (SimulatedGroup, the single-device test of the same code).

Every rank builds the same objects with the same arguments and calls the same methods in the same
order: the methods that gather (gather_kv, gather_output, ContextParallelDecode.forward) are
collectives. Each rank owns its fa3c.Context and its buffers, as fa3c.serving's backends do.

Prefill (ContextParallelPrefill), SGLang's CP layout. Sequence i of T_i tokens is cut into 2W
chunks; rank r owns chunk r (its "prev" half) and chunk 2W-1-r (its "next" half), so each rank
has one early and one late chunk and the causal work balances. The ranks all-gather the K/V of
their tokens (every rank then holds the whole sequences' K/V), and each half is one
flash_attn_with_kvcache call over keys [0, end of its chunk): bottom-right causal alignment puts
query j of a chunk starting at P at key position P + j, which is exactly the single-device mask,
sliding window and attention_chunk included (keys keep their absolute positions). The two halves
have different lengths, so each has its own length tensors and its own scheduler metadata, keyed
by (half, CallSignature): the metadata of one half can never be handed to the other (the
"output garbage" of SGLang's MUSA CP path, fixed there by distinct string keys).

Decode (ContextParallelDecode): the paged KV of every request is sharded by pages, round-robin:
logical page p (positions p*ps ... p*ps + ps - 1) lives on rank p % W as that rank's local page
p // W. Round-robin keeps every rank's share within one page of the others as sequences grow,
spreads the appends over the ranks, and spreads a sliding window's keys over all ranks (with
contiguous halves the last rank would hold the whole window and do all the work of SWA layers).
Each rank attends its shard (causal=False: every cached key precedes the decode query) with
return_softmax_lse; the (out, lse) partials are all-gathered and merged with fa3c_merge_state.
A window or an attention chunk keeps the absolute keys [start, L) of a request of L tokens; the
local -> absolute position map is increasing, so on each rank that is a suffix of the local keys,
passed as cache_leftpad (the local count of keys before start). A rank with no keys for a request
returns lse -inf and out 0, which the merge ignores. Learnable sinks are given to rank 0 only
(the sink enters the softmax once); with an empty shard rank 0 returns lse = sink, out 0, which
the merge weighs in correctly.

Shape legend as in include/fa3c.h: b, h, h_k, d, dv; W = world size; n_r = tokens of rank r.
"""

import ctypes
import sys
import threading

import numpy as np

from . import _arrays
from . import _lib
from . import flash_attn_interface as _fai
from ._context import context_for_device, default_context
from ._lib import DType, Fa3cError, Status

__all__ = [
    "ContextParallelDecode",
    "ContextParallelPrefill",
    "SimulatedGroup",
    "TorchDistributedComm",
    "ZigzagSplit",
    "local_key_count",
    "merge_state",
    "page_owner",
]


def _invalid(msg):
    return Fa3cError(Status.INVALID_ARGUMENT, "fa3c.context_parallel: " + msg)


def _host_ints(x, name):
    if not isinstance(x, (list, tuple, np.ndarray)):
        x = _arrays.to_numpy(x, name)
    return np.asarray(x, dtype=np.int64).reshape(-1)


def _nbytes(x):
    n = _arrays._ITEM_SIZE[_arrays.dtype_of(x, "x")]
    for s in x.shape:
        n *= s
    return n


def _device_ints(like, a):
    """Host int array -> int32 array on like's device."""
    return _arrays.from_numpy(like, np.ascontiguousarray(a, dtype=np.int32))


def _index(like, a):
    """Host index array -> int64 index array on like's device (for gathers and scatters)."""
    return _arrays.from_numpy(like, np.ascontiguousarray(a, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# Merging partial attention states


def merge_state(out_a, lse_a, out_b, lse_b, out=None, lse=None, context=None):
    """fa3c_merge_state: two attention states over disjoint key sets -> one.

    out_a, out_b (n, h, dv) fp32/fp16/bf16, stride(-1) == 1; lse_a, lse_b (n, h) fp32, any strides.
    out (n, h, dv) (default: out_a's dtype) and lse (n, h) fp32 are allocated when not given and
    may alias the inputs. A state with lse -inf (or the +inf "no keys" marker) contributes nothing;
    a row with none contributing gets out 0, lse -inf. Returns (out, lse)."""
    ctx = context if context is not None else default_context(_arrays.device(out_a, "out_a"))
    if out is None:
        out = _arrays.empty(out_a, tuple(out_a.shape), _arrays.dtype_of(out_a, "out_a"))
    if lse is None:
        lse = _arrays.empty(out_a, tuple(out_a.shape[:2]), DType.F32)
    tensors = [
        _arrays.describe(out_a, "out_a"), _arrays.describe(lse_a, "lse_a"),
        _arrays.describe(out_b, "out_b"), _arrays.describe(lse_b, "lse_b"),
        _arrays.describe(out, "out", writable=True), _arrays.describe(lse, "lse", writable=True),
    ]
    ctx.call(_lib.lib().fa3c_merge_state, *[ctypes.byref(t) for t in tensors], stream=_arrays.stream(out_a, "out_a"))
    return out, lse


# ---------------------------------------------------------------------------------------------
# Communicators: rank, world_size and all_gather(x) -> (W, *x.shape), counting the bytes received


class _Comm:
    def __init__(self, rank, world_size):
        self.rank, self.world_size = int(rank), int(world_size)
        self.bytes_received = 0  # what all_gather brought to this rank from the others

    def _count(self, x):
        self.bytes_received += (self.world_size - 1) * _nbytes(x)


class TorchDistributedComm(_Comm):
    """torch.distributed process group (default: the world): NCCL for CUDA tensors, gloo for CPU
    tensors, or any backend with all_gather. Tensors travel as bytes (every backend carries uint8,
    not every one bf16). Set NCCL_NVLS_ENABLE=0 before the group is created: NVLink multicast
    stays off."""

    def __init__(self, group=None):
        import torch.distributed as dist
        self._dist, self._group = dist, group
        super().__init__(dist.get_rank(group), dist.get_world_size(group))
        self._into_tensor = dist.get_backend(group) == "nccl"

    def all_gather(self, x):
        torch = sys.modules["torch"]
        self._count(x)
        x = x.contiguous()
        raw = x.reshape(-1).view(torch.uint8)
        out = torch.empty((self.world_size, raw.numel()), dtype=torch.uint8, device=x.device)
        if self._into_tensor:
            self._dist.all_gather_into_tensor(out.reshape(-1), raw, group=self._group)
        else:
            self._dist.all_gather(list(out.unbind(0)), raw, group=self._group)
        return out.view(x.dtype).reshape((self.world_size,) + tuple(x.shape))


class SimulatedGroup:
    """W ranks in one process, one thread per rank (run), exchanging arrays through shared memory:
    the single-device simulation of a process group. numpy arrays, or torch tensors on one device
    (each rank thread on its own CUDA stream; an exchange waits for the producer's stream)."""

    def __init__(self, world_size):
        self.world_size = int(world_size)
        self._barrier = threading.Barrier(self.world_size)
        self._slots = [None] * self.world_size
        self.comms = [SimulatedComm(self, r) for r in range(self.world_size)]

    def run(self, fn):
        """fn(comm) on one thread per rank; returns [fn's result of rank r]. An exception on any
        rank breaks the other ranks' waits and is re-raised here (the first one, by rank)."""
        results, errors = [None] * self.world_size, [None] * self.world_size

        def body(r):
            try:
                results[r] = fn(self.comms[r])
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors[r] = e
                self._barrier.abort()

        threads = [threading.Thread(target=body, args=(r,), name=f"cp-rank{r}") for r in range(self.world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._barrier.reset()
        first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)), None)
        first = first or next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return results


def _wait_for_stream(x):
    """A torch CUDA tensor's producing work (the current stream) has finished."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor) and x.device.type == "cuda":
        torch.cuda.current_stream(x.device).synchronize()


class SimulatedComm(_Comm):
    def __init__(self, group, rank):
        super().__init__(rank, group.world_size)
        self._group = group

    def all_gather(self, x):
        g = self._group
        self._count(x)
        _wait_for_stream(x)
        g._slots[self.rank] = x
        g._barrier.wait()
        shapes = {tuple(s.shape) for s in g._slots}
        if len(shapes) != 1:
            g._barrier.abort()
            raise _invalid(f"all_gather: the ranks passed different shapes {sorted(shapes)}")
        out = _arrays.empty(x, (self.world_size,) + tuple(x.shape), _arrays.dtype_of(x, "x"))
        for r, s in enumerate(g._slots):
            out[r] = s
        _wait_for_stream(out)
        g._barrier.wait()  # no rank reuses its array before every rank has copied it
        return out


# ---------------------------------------------------------------------------------------------
# Prefill: zigzag split


class ZigzagSplit:
    """The zigzag split of a batch of sequences over W ranks (host-side index arithmetic, the same
    on every rank).

    seq_lens (B,) host ints. Sequence i is cut at bounds[i, c] = floor(c * T_i / 2W), c = 0..2W;
    rank r owns chunk r ("prev") and chunk 2W-1-r ("next"). A sequence shorter than 2W leaves
    some chunks empty. A rank's tokens, in its local order: the prev chunks of sequences 0..B-1,
    then their next chunks.
    """

    HALVES = ("prev", "next")

    def __init__(self, seq_lens, world_size):
        self.world_size = W = int(world_size)
        self.seq_lens = _host_ints(seq_lens, "seq_lens")
        if W < 1 or np.any(self.seq_lens < 0):
            raise _invalid(f"ZigzagSplit: expected world_size >= 1 and lengths >= 0, got {W}, {self.seq_lens}")
        self.bounds = self.seq_lens[:, None] * np.arange(2 * W + 1)[None, :] // (2 * W)     # (B, 2W + 1)
        self.cu_seqlens = np.concatenate([[0], np.cumsum(self.seq_lens)])                   # packed batch

    @property
    def batch_size(self):
        return len(self.seq_lens)

    def chunk(self, rank, half):
        return rank if half == "prev" else 2 * self.world_size - 1 - rank

    def half_range(self, rank, half):
        """(start (B,), end (B,)) positions of the half's chunk in each sequence."""
        c = self.chunk(rank, half)
        return self.bounds[:, c], self.bounds[:, c + 1]

    def tokens(self, rank):
        """(n_r,) int64: the rank's tokens as indices into the packed batch, in local order."""
        parts = [np.arange(a, b) + self.cu_seqlens[i]
                 for half in self.HALVES for i, (a, b) in enumerate(zip(*self.half_range(rank, half)))]
        return np.concatenate(parts + [np.zeros(0, dtype=np.int64)]).astype(np.int64)

    def num_tokens(self, rank):
        return sum(int((e - s).sum()) for s, e in (self.half_range(rank, h) for h in self.HALVES))


class PrefillMetadata:
    """One prefill batch on one rank. Per half ("prev", "next"): the rank's queries of that half
    are local rows [q_start, q_stop); cu_seqlens_q (B + 1,) and cache_seqlens (B,) int32 (keys
    [0, end of the chunk)); max_seqlen_q. Arrays live on the backend's device.
      split             the ZigzagSplit
      max_seqlen_k      the gathered caches' s_k (longest sequence)
      scheduler_metadata  {(half, CallSignature): (n,) int32}
    """

    def __init__(self, split):
        self.split = split
        self.halves = {}
        self.scheduler_metadata = {}
        self.max_seqlen_k = 0


class _Half:
    def __init__(self, q_start, q_stop, cu_seqlens_q, cache_seqlens, max_seqlen_q):
        self.q_start, self.q_stop = q_start, q_stop
        self.cu_seqlens_q, self.cache_seqlens, self.max_seqlen_q = cu_seqlens_q, cache_seqlens, max_seqlen_q


class _RankBackend:
    """What both CP modes share: the rank's communicator, context, layers and FA3 knobs."""

    def __init__(self, comm, layers, *, dtype, device_like, num_splits, pack_gqa, sm_margin, use_scheduler_metadata,
                 backend, num_threads, num_sm, check_inputs):
        self.comm = comm
        self.rank, self.world_size = comm.rank, comm.world_size
        self.layers = tuple(dict.fromkeys(layers))
        if not self.layers:
            raise _invalid("layers: expected at least one AttentionLayer")
        self.dtype = _arrays.as_dtype(dtype)
        self.like = device_like
        self.num_splits, self.pack_gqa, self.sm_margin = int(num_splits), pack_gqa, int(sm_margin)
        self.use_scheduler_metadata = bool(use_scheduler_metadata)
        self.context = context_for_device(_arrays.device(device_like, "device_like"), backend,
                                          num_threads=num_threads, num_sm=num_sm, check_inputs=check_inputs)
        self._current = None

    def _signature(self, **kw):
        from .serving import CallSignature
        base = dict(num_splits=self.num_splits, pack_gqa=self.pack_gqa, sm_margin=self.sm_margin, appending=False,
                    max_seqlen_k_new=0, attention_chunk=0)
        base.update(kw)
        return CallSignature(**base)

    @staticmethod
    def _missing(key, built, what):
        """The error for a call whose signature no built metadata has (naming the nearest's differences)."""
        same = [k for k in built if k[0] == key[0]]
        if not same:
            return _invalid(f"no scheduler metadata was built for {what}")
        nearest = min(same, key=lambda k: len(key[1].differences(k[1])))
        diff = ", ".join(f"{n}: call {a!r}, built {b!r}" for n, a, b in key[1].differences(nearest[1]))
        return _invalid(f"no scheduler metadata for {what}: nearest differs in {diff} (declare the layer when "
                        "creating the backend and call it with tensors of its declared shape and dtype)")

    def _fm(self, metadata):
        fm = self._current if metadata is None else metadata
        if fm is None:
            raise _invalid("no forward metadata: call init_forward_metadata first")
        return fm

    def close(self):
        self.context.close()


class ContextParallelPrefill(_RankBackend):
    """Causal prefill of a batch split zigzag over the ranks of comm (one object per rank).

    comm           TorchDistributedComm, or a SimulatedGroup's comm
    layers         AttentionLayer of every layer (causal; window_size, attention_chunk, softcap allowed)
    dtype          dtype of q, k, v
    device_like    any array on the rank's device (family and device of the buffers it allocates)
    num_splits, pack_gqa, sm_margin, use_scheduler_metadata, backend, num_threads, num_sm,
    check_inputs   as fa3c.serving.AttentionBackend

    Per batch: fm = init_forward_metadata(seq_lens); per layer: k_cache, v_cache = gather_kv(k, v)
    with the rank's k/v (n_r, h_k, d/dv); out = forward(layer, q, k_cache, v_cache) with its q
    (n_r, h, d) -> (n_r, h, dv) in local order; gather_output(out) -> (total, h, dv) in batch order.
    """

    def __init__(self, comm, layers, *, dtype, device_like, num_splits=0, pack_gqa=None, sm_margin=0,
                 use_scheduler_metadata=True, backend=None, num_threads=0, num_sm=0, check_inputs=None):
        super().__init__(comm, layers, dtype=dtype, device_like=device_like, num_splits=num_splits,
                         pack_gqa=pack_gqa, sm_margin=sm_margin, use_scheduler_metadata=use_scheduler_metadata,
                         backend=backend, num_threads=num_threads, num_sm=num_sm, check_inputs=check_inputs)
        for layer in self.layers:
            if not layer.causal:
                raise Fa3cError(Status.UNSUPPORTED, f"fa3c.context_parallel: prefill splits causal layers only, "
                                                    f"got {layer}")

    def init_forward_metadata(self, seq_lens):
        """The batch's split, per-half lengths and scheduler metadata; becomes current."""
        split = ZigzagSplit(seq_lens, self.world_size)
        fm = PrefillMetadata(split)
        fm.max_seqlen_k = int(split.seq_lens.max(initial=0))
        start = 0
        for half in split.HALVES:
            a, e = split.half_range(self.rank, half)
            n = e - a
            cu = np.concatenate([[0], np.cumsum(n)])
            h = _Half(start, start + int(cu[-1]), _device_ints(self.like, cu), _device_ints(self.like, e),
                      int(n.max(initial=0)))
            fm.halves[half] = h
            start = h.q_stop
            if self.use_scheduler_metadata and h.q_stop > h.q_start:
                for layer in self.layers:
                    key = (half, self._half_signature(fm, h, layer, layer.num_heads_q, layer.num_heads_kv,
                                                      layer.head_dim, layer.head_dim_v, self.dtype,
                                                      self.context.device))
                    if key not in fm.scheduler_metadata:
                        fm.scheduler_metadata[key] = self._compute_metadata(fm, h, key[1])
        self._current = fm
        return fm

    def _half_signature(self, fm, h, layer, heads_q, heads_kv, headdim, headdim_v, dtype, device):
        return self._signature(
            batch_size=fm.split.batch_size, max_seqlen_q=h.max_seqlen_q, max_seqlen_k=fm.max_seqlen_k,
            num_heads_q=heads_q, num_heads_kv=heads_kv, headdim=headdim, headdim_v=headdim_v, qkv_dtype=dtype,
            page_size=0, causal=True, window_size=layer.window_size, attention_chunk=int(layer.attention_chunk),
            has_softcap=layer.softcap > 0, varlen_q=True, device=tuple(device))

    def _compute_metadata(self, fm, h, sig):
        return _fai.get_scheduler_metadata(
            sig.batch_size, sig.max_seqlen_q, sig.max_seqlen_k, sig.num_heads_q, sig.num_heads_kv, sig.headdim,
            h.cache_seqlens, qkv_dtype=sig.qkv_dtype, headdim_v=sig.headdim_v, cu_seqlens_q=h.cu_seqlens_q,
            causal=True, window_size=sig.window_size, attention_chunk=sig.attention_chunk,
            has_softcap=sig.has_softcap, num_splits=sig.num_splits, pack_gqa=sig.pack_gqa, sm_margin=sig.sm_margin,
            context=self.context)

    def _all_gather_rows(self, x, n_max):
        """all_gather of the rank's rows x (n_r, ...) padded to n_max rows -> (W * n_max, ...)."""
        if x.shape[0] != n_max:
            padded = _arrays.full(x, (n_max,) + tuple(x.shape[1:]), 0, _arrays.dtype_of(x, "x"))
            padded[: x.shape[0]] = x
            x = padded
        g = self.comm.all_gather(x)
        return g.reshape((self.world_size * n_max,) + tuple(x.shape[1:]))

    def _rows_of_ranks(self, split):
        """(src (sum n_s,), batch-order token (sum n_s,), n_max): row src[j] of the gathered
        (W * n_max) rows is packed batch token tok[j]."""
        W = self.world_size
        toks = [split.tokens(s) for s in range(W)]
        n_max = max(len(t) for t in toks)
        src = np.concatenate([s * n_max + np.arange(len(t)) for s, t in enumerate(toks)]).astype(np.int64)
        return src, np.concatenate(toks), n_max

    def gather_kv(self, k, v, metadata=None):
        """All-gathers the rank's k (n_r, h_k, d) and v (n_r, h_k, dv) (local order) into caches
        (B, max_seqlen_k, h_k, d/dv) holding every sequence's K/V at its positions (zero past
        each length); every rank gets the same caches."""
        fm = self._fm(metadata)
        split = fm.split
        if k.shape[0] != split.num_tokens(self.rank) or v.shape[0] != k.shape[0]:
            raise _invalid(f"gather_kv: expected k and v of {split.num_tokens(self.rank)} rows (this rank's tokens), "
                           f"got {k.shape[0]} and {v.shape[0]}")
        src, tok, n_max = self._rows_of_ranks(split)
        seq = np.searchsorted(split.cu_seqlens, tok, side="right") - 1
        pos = tok - split.cu_seqlens[seq]
        src_i, seq_i, pos_i = (_index(k, a) for a in (src, seq, pos))
        caches = []
        for x in (k, v):
            rows = self._all_gather_rows(x, n_max)
            cache = _arrays.full(x, (split.batch_size, fm.max_seqlen_k) + tuple(x.shape[1:]), 0,
                                 _arrays.dtype_of(x, "k"))
            if len(src):
                cache[seq_i, pos_i] = rows[src_i]
            caches.append(cache)
        return tuple(caches)

    def forward(self, layer, q, k_cache, v_cache, *, metadata=None, sinks=None, out=None):
        """The layer's attention for the rank's queries q (n_r, h, d) (local order) over the
        gathered caches; returns out (n_r, h, dv): one flash_attn_with_kvcache call per half."""
        fm = self._fm(metadata)
        if q.shape[0] != fm.halves["next"].q_stop:
            raise _invalid(f"forward: expected q of {fm.halves['next'].q_stop} rows (this rank's tokens), got "
                           f"{q.shape[0]}")
        if out is None:
            out = _arrays.empty(q, tuple(q.shape[:2]) + (v_cache.shape[-1],), _arrays.dtype_of(q, "q"))
        for half, h in fm.halves.items():
            if h.q_stop == h.q_start:
                continue
            meta = None
            if self.use_scheduler_metadata:
                key = (half, self._half_signature(fm, h, layer, q.shape[-2], k_cache.shape[2], q.shape[-1],
                                                  v_cache.shape[-1], _arrays.dtype_of(q, "q"), _arrays.device(q, "q")))
                meta = fm.scheduler_metadata.get(key)
                if meta is None:
                    raise self._missing(key, fm.scheduler_metadata, f"the {half} half of layer {layer}")
            _fai.flash_attn_with_kvcache(
                q[h.q_start:h.q_stop], k_cache, v_cache, cache_seqlens=h.cache_seqlens, cu_seqlens_q=h.cu_seqlens_q,
                max_seqlen_q=h.max_seqlen_q, softmax_scale=layer.softmax_scale, causal=True,
                window_size=layer.window_size, attention_chunk=layer.attention_chunk, softcap=layer.softcap,
                scheduler_metadata=meta, num_splits=self.num_splits, pack_gqa=self.pack_gqa,
                sm_margin=self.sm_margin, sinks=sinks, out=out[h.q_start:h.q_stop], context=self.context)
        return out

    def gather_output(self, out, metadata=None):
        """All-gathers every rank's out (n_r, h, dv) into (total, h, dv) in packed batch order."""
        fm = self._fm(metadata)
        src, tok, n_max = self._rows_of_ranks(fm.split)
        rows = self._all_gather_rows(out, n_max)
        full = _arrays.empty(out, (int(fm.split.cu_seqlens[-1]),) + tuple(out.shape[1:]), _arrays.dtype_of(out, "out"))
        if len(src):
            full[_index(out, tok)] = rows[_index(out, src)]
        return full


# ---------------------------------------------------------------------------------------------
# Decode: KV pages round-robin over the ranks


def page_owner(positions, page_size, world_size):
    """(rank, local position) of absolute token positions (host ints): logical page p = pos //
    page_size lives on rank p % W as local page p // W."""
    pos = _host_ints(positions, "positions")
    page = pos // page_size
    return page % world_size, (page // world_size) * page_size + pos % page_size


def local_key_count(lengths, rank, page_size, world_size):
    """(b,) how many of the absolute positions [0, lengths[i]) live on rank."""
    n = _host_ints(lengths, "lengths")
    full, rem = n // page_size, n % page_size
    pages_before = np.maximum(0, (full - rank + world_size - 1) // world_size)   # pages g < full with g % W == rank
    return pages_before * page_size + np.where(full % world_size == rank, rem, 0)


class DecodeMetadata:
    """One decode batch on one rank.
      seq_lens          (b,) host: every request's length, the decode token included
      local_lens        (b,) host: keys of each request on this rank
      cache_seqlens     (b,) int32 = local_lens, on the device
      page_table        (b, n_pages) int32: the given table cut to the pages in use (at least 1)
      key_start         {(window_left, attention_chunk): (b,) int32 cache_leftpad} for layers that
                        see a suffix of the keys: local count of keys before the first visible one
      scheduler_metadata  {(key rule, CallSignature): (n,) int32}
    """

    def __init__(self):
        self.seq_lens = self.local_lens = self.cache_seqlens = self.page_table = None
        self.key_start = {}
        self.scheduler_metadata = {}


class ContextParallelDecode(_RankBackend):
    """Decode (one query per request) over a paged KV cache sharded round-robin by pages
    (page_owner); one object per rank, arguments as ContextParallelPrefill plus page_size.

    Per batch: fm = init_forward_metadata(seq_lens, page_table) with this rank's page table
    (b, max_local_pages) int32 (row i: physical pages, in this rank's pool, of request i's local
    pages); write_kv(k_cache, v_cache, k, v) stores the decode tokens this rank owns; per layer:
    out = forward(layer, q, k_cache, v_cache) with q (b, h, d) -> (b, h, dv), the same on every rank.
    """

    def __init__(self, comm, page_size, layers, *, dtype, device_like, num_splits=0, pack_gqa=None, sm_margin=0,
                 use_scheduler_metadata=True, backend=None, num_threads=0, num_sm=0, check_inputs=None):
        super().__init__(comm, layers, dtype=dtype, device_like=device_like, num_splits=num_splits,
                         pack_gqa=pack_gqa, sm_margin=sm_margin, use_scheduler_metadata=use_scheduler_metadata,
                         backend=backend, num_threads=num_threads, num_sm=num_sm, check_inputs=check_inputs)
        if page_size < 1:
            raise _invalid(f"page_size: expected >= 1, got {page_size}")
        self.page_size = int(page_size)

    @staticmethod
    def _key_rule(layer):
        """(window_left, attention_chunk) of a layer whose decode query sees a suffix of the keys,
        else None. The right window is moot: no key follows the decode query."""
        wl = layer.window_size[0]
        rule = (int(wl) if wl >= 0 else -1, int(layer.attention_chunk))
        return None if rule == (-1, 0) else rule

    @staticmethod
    def _first_visible(seq_lens, rule):
        """(b,) absolute position of the first key the decode query (at seq_len - 1) sees."""
        wl, chunk = rule
        last = seq_lens - 1
        start = np.zeros_like(last)
        if wl >= 0:
            start = np.maximum(start, last - wl)
        if chunk > 0:
            start = np.maximum(start, last // chunk * chunk)
        return start

    def init_forward_metadata(self, seq_lens, page_table):
        """seq_lens (b,) host ints, the decode token included (SGLang's DECODE convention);
        page_table (b, max_local_pages) int32 on the device. Builds lengths, key starts and
        scheduler metadata; becomes current."""
        ps, W, r = self.page_size, self.world_size, self.rank
        seq = _host_ints(seq_lens, "seq_lens")
        if np.any(seq < 1):
            raise _invalid("seq_lens: a decode request holds at least its decode token")
        fm = DecodeMetadata()
        fm.seq_lens = seq
        fm.local_lens = local_key_count(seq, r, ps, W)
        n_pages = max(1, -(-int(fm.local_lens.max(initial=0)) // ps))
        if len(page_table.shape) != 2 or page_table.shape[0] != len(seq) or page_table.shape[1] < n_pages:
            raise _invalid(f"page_table: expected ({len(seq)}, >= {n_pages}) (this rank's pages of each request), got "
                           f"{tuple(page_table.shape)}")
        fm.page_table = page_table[:, :n_pages]
        fm.cache_seqlens = _device_ints(self.like, fm.local_lens)
        for layer in self.layers:
            rule = self._key_rule(layer)
            if rule is not None and rule not in fm.key_start:
                start = local_key_count(self._first_visible(seq, rule), r, ps, W)
                fm.key_start[rule] = _device_ints(self.like, start)
            if self.use_scheduler_metadata:
                key = (rule, self._decode_signature(fm, layer, layer.num_heads_q, layer.num_heads_kv, layer.head_dim,
                                                    layer.head_dim_v, self.dtype, self.context.device))
                if key not in fm.scheduler_metadata:
                    fm.scheduler_metadata[key] = _fai.get_scheduler_metadata(
                        len(seq), 1, key[1].max_seqlen_k, layer.num_heads_q, layer.num_heads_kv, layer.head_dim,
                        fm.cache_seqlens, qkv_dtype=self.dtype, headdim_v=layer.head_dim_v,
                        cache_leftpad=fm.key_start.get(rule), page_size=ps, causal=False,
                        has_softcap=layer.softcap > 0, num_splits=self.num_splits, pack_gqa=self.pack_gqa,
                        sm_margin=self.sm_margin, context=self.context)
        self._current = fm
        return fm

    def _decode_signature(self, fm, layer, heads_q, heads_kv, headdim, headdim_v, dtype, device):
        return self._signature(
            batch_size=len(fm.seq_lens), max_seqlen_q=1, max_seqlen_k=fm.page_table.shape[1] * self.page_size,
            num_heads_q=heads_q, num_heads_kv=heads_kv, headdim=headdim, headdim_v=headdim_v, qkv_dtype=dtype,
            page_size=self.page_size, causal=False, window_size=(-1, -1), has_softcap=layer.softcap > 0,
            varlen_q=False, device=tuple(device))

    def _paged(self, cache, name):
        """(num_pages, page_size, h_k, d) view of a paged cache given as such or as slots (num_slots, h_k, d)."""
        if len(cache.shape) == 4:
            return cache
        if len(cache.shape) != 3 or cache.shape[0] % self.page_size:
            raise _invalid(f"{name}: expected (num_pages, {self.page_size}, h_k, d) or (num_slots, h_k, d), got shape "
                           f"{tuple(cache.shape)}")
        paged = cache.reshape((cache.shape[0] // self.page_size, self.page_size) + tuple(cache.shape[1:]))
        if _arrays.describe(paged, name).data != _arrays.describe(cache, name).data:
            raise _invalid(f"{name}: expected a contiguous slot pool (writes must reach it), got a strided one")
        return paged

    def write_kv(self, k_cache, v_cache, k, v, metadata=None):
        """Stores the decode tokens' k (b, h_k, d) and v (b, h_k, dv) (the same on every rank) in
        this rank's caches, for the requests whose decode position it owns."""
        fm = self._fm(metadata)
        owner, local = page_owner(fm.seq_lens - 1, self.page_size, self.world_size)
        rows = np.nonzero(owner == self.rank)[0]
        if not len(rows):
            return
        ps = self.page_size
        pages = fm.page_table[_index(fm.page_table, rows), _index(fm.page_table, local[rows] // ps)]
        slots = pages * ps + _index(fm.page_table, local[rows] % ps)  # int64
        for cache, x, name in ((k_cache, k, "k_cache"), (v_cache, v, "v_cache")):
            paged = self._paged(cache, name)
            flat = paged.reshape((-1,) + tuple(paged.shape[2:]))
            if _arrays.describe(flat, name).data != _arrays.describe(paged, name).data:
                raise _invalid(f"{name}: expected a contiguous cache")
            flat[slots] = x[_index(x, rows)]

    def attend_shard(self, layer, q, k_cache, v_cache, *, metadata=None, sinks=None):
        """This rank's partial state, without communicating: q (b, h, d) over its keys -> out
        (b, h, dv) in q's dtype (0 where it holds no visible key) and lse (b, h) fp32 (-inf there)."""
        fm = self._fm(metadata)
        b, h, d = q.shape
        kc, vc = self._paged(k_cache, "k_cache"), self._paged(v_cache, "v_cache")
        dv = vc.shape[-1]
        rule = self._key_rule(layer)
        meta = None
        if self.use_scheduler_metadata:
            key = (rule, self._decode_signature(fm, layer, h, kc.shape[2], d, dv, _arrays.dtype_of(q, "q"),
                                                _arrays.device(q, "q")))
            meta = fm.scheduler_metadata.get(key)
            if meta is None:
                raise self._missing(key, fm.scheduler_metadata, f"layer {layer}")
        part, lse = _fai.flash_attn_with_kvcache(
            q.reshape(b, 1, h, d), kc, vc, cache_seqlens=fm.cache_seqlens,
            cache_leftpad=None if rule is None else fm.key_start[rule], page_table=fm.page_table,
            softmax_scale=layer.softmax_scale, causal=False, softcap=layer.softcap, scheduler_metadata=meta,
            num_splits=self.num_splits, pack_gqa=self.pack_gqa, sm_margin=self.sm_margin, return_softmax_lse=True,
            sinks=sinks if self.rank == 0 else None, context=self.context)[:2]
        return part.reshape(b, h, dv), lse.reshape(b, h)

    def forward(self, layer, q, k_cache, v_cache, *, metadata=None, sinks=None, return_softmax_lse=False, out=None):
        """The layer's decode attention: q (b, h, d), this rank's caches; returns out (b, h, dv)
        (and lse (b, h) fp32 when return_softmax_lse), merged over every rank's keys: the rank's
        attend_shard, two all-gathers (out and lse partials), W - 1 merges."""
        part, lse = self.attend_shard(layer, q, k_cache, v_cache, metadata=metadata, sinks=sinks)
        return self.merge(self.comm.all_gather(part), self.comm.all_gather(lse), return_softmax_lse, out)

    def merge(self, outs, lses, return_softmax_lse=False, out=None):
        """outs (W, b, h, dv), lses (W, b, h) -> out (b, h, dv) in the input dtype, lse (b, h).
        Merged in rank order, through an fp32 accumulator when W > 2, so every rank computes the
        same bits."""
        W = self.world_size
        dtype = _arrays.dtype_of(outs, "out")
        if out is None:
            out = _arrays.empty(outs, tuple(outs.shape[1:]), dtype)
        lse = _arrays.empty(lses, tuple(lses.shape[1:]), DType.F32)
        if W == 1:
            out[...] = outs[0]
            lse[...] = lses[0]
        else:
            acc = out if W == 2 else _arrays.empty(outs, tuple(outs.shape[1:]), DType.F32)
            merge_state(outs[0], lses[0], outs[1], lses[1], acc, lse, context=self.context)
            for s in range(2, W):
                merge_state(acc, lse, outs[s], lses[s], out if s == W - 1 else acc, lse, context=self.context)
        return (out, lse) if return_softmax_lse else out
