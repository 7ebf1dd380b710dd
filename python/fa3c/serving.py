"""fa3c.serving: the attention metadata of a serving engine's forward batches, built once per
batch and handed to each layer exactly as computed from that layer's own arguments.

A serving engine (SGLang's FlashAttentionBackend is the model) keeps K/V in a paged pool and a
request -> token-slot table; per forward batch it derives the page table, cu_seqlens, the cache
lengths and FA3's scheduler metadata, and every attention layer calls flash_attn_with_kvcache
with them. SGLang's MUSA/MATE port of that backend had three defects (reference:
serving-backend.md §2.4); here each is impossible by construction:

  1. Shared workspace. An AttentionBackend owns its fa3c.Context (workspace, stream, threads)
     and every buffer it fills, allocated at construction on the device of req_to_token. There
     is no module-level mutable state; two backends (target and draft, two micro-batches, two
     devices) share nothing.
  2. Metadata cache keyed by non-unique strings. Scheduler metadata is computed once per
     forward batch for each distinct CallSignature (a frozen dataclass of every argument the
     schedule depends on) and stored in that batch's ForwardMetadata. A layer's call derives its
     CallSignature from its own tensors and parameters and gets exactly the metadata computed
     for it, or a Fa3cError naming the differing fields. A ForwardMetadata whose buffers were
     since rewritten for another batch is refused, and the library itself rejects metadata whose
     recorded signature differs from the call.
  3. cu_seqlens_k_new dropped or forwarded blindly. It is passed, with max_seqlen_k_new, to the
     metadata computation and to the attention call iff the call appends new K/V (k/v given):
     with append_kv=True the layers append through the kernel; with append_kv=False the engine
     writes K/V first (write_kv) and neither call sees it.

Forward modes (SGLang's length conventions):
  DECODE         seq_lens count the token being decoded; one query per request.
  EXTEND         seq_lens count the extend tokens; extend_lens per request (prefix = the rest,
                 0 for a plain prefill).
  TARGET_VERIFY  seq_lens exclude the draft tokens; num_draft_tokens queries per request, causal
                 (a chain), as speculative decoding with topk = 1 verifies them.

CUDA graphs: init_forward_metadata_capture fixes the shapes (batch, tokens per request, full-width
page table) and init_forward_metadata_replay rewrites the same buffers, scheduler metadata
included, outside the graph, before each replay. Buffers are views of per-backend arrays sized
at construction for max_batch_size.

Shape legend as in include/fa3c.h: b, h, h_k, d, dv; total_new = tokens of the batch (queries =
new K/V rows); page_size (ps); max_pages = ceil(max_context_len / ps).

Use from an engine (K/V pools per layer as (num_slots, h_k, d) or (num_pages, ps, h_k, d)):

    backend = AttentionBackend(req_to_token, page_size, [AttentionLayer(32, 8, 128),
                               AttentionLayer(32, 8, 128, window_size=(4096, 0))],
                               dtype=torch.bfloat16, max_batch_size=256)
    fm = backend.init_forward_metadata(ForwardMode.DECODE, req_pool_indices, seq_lens_cpu)
    for i, layer in enumerate(model_layers):          # layer.attn: the layer's AttentionLayer
        o = backend.forward(layer.attn, q[i], k_pool[i], v_pool[i], k_new[i], v_new[i])
"""

import dataclasses
import enum

import numpy as np

from . import _arrays
from . import flash_attn_interface as _fai
from ._context import context_for_device
from ._lib import DType, Fa3cError, Status

__all__ = ["AttentionBackend", "AttentionLayer", "CallSignature", "ForwardMetadata", "ForwardMode",
           "ContextParallelDecode", "ContextParallelPrefill", "SimulatedGroup", "TorchDistributedComm", "ZigzagSplit"]


class ForwardMode(enum.Enum):
    DECODE = "decode"
    EXTEND = "extend"
    TARGET_VERIFY = "target_verify"


@dataclasses.dataclass(frozen=True)
class AttentionLayer:
    """The static attention parameters of a layer (layers with equal parameters share one).

    window_size: (left, right), negative = unbounded; SGLang's sliding-window layers use
    (sliding_window_size, 0) with causal=True. softmax_scale None: head_dim ** -0.5.
    """

    num_heads_q: int
    num_heads_kv: int
    head_dim: int
    head_dim_v: int = None
    causal: bool = True
    window_size: tuple = (-1, -1)
    attention_chunk: int = 0
    softcap: float = 0.0
    softmax_scale: float = None

    def __post_init__(self):
        object.__setattr__(self, "window_size", tuple(int(w) for w in self.window_size))
        if self.head_dim_v is None:
            object.__setattr__(self, "head_dim_v", self.head_dim)


@dataclasses.dataclass(frozen=True)
class CallSignature:
    """Every argument FA3's scheduler metadata depends on (fa3-semantics §6, §0.17), as one
    flash_attn_with_kvcache call of a forward batch passes them. The length tensors themselves
    are the batch's (one set per ForwardMetadata); the library also checks their contents."""

    batch_size: int
    max_seqlen_q: int
    max_seqlen_k: int          # static: page_table.shape[1] * page_size
    num_heads_q: int
    num_heads_kv: int
    headdim: int
    headdim_v: int
    qkv_dtype: DType
    page_size: int
    causal: bool
    window_size: tuple
    attention_chunk: int
    has_softcap: bool
    num_splits: int
    pack_gqa: object           # None: heuristic
    appending: bool            # k/v given, so cu_seqlens_k_new is passed
    max_seqlen_k_new: int      # 0 unless appending
    varlen_q: bool             # cu_seqlens_q given
    sm_margin: int
    device: tuple              # (DeviceType, index)

    def differences(self, other):
        """[(field, self's value, other's value)] of the fields that differ."""
        return [(f.name, getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(other, f.name)]


class ForwardMetadata:
    """What every layer of one forward batch needs. Arrays are views of the owning backend's
    buffers (family and device of req_to_token), valid until the backend builds the next batch.

      page_table        (b, n_pages) int32, page ids (req_to_token slot // page_size)
      cache_seqlens     (b,) int32: keys already in the cache when appending, else all keys
      cu_seqlens_q      (b + 1,) int32 over the batch's new tokens (queries)
      cu_seqlens_k_new  (b + 1,) int32 = cu_seqlens_q when appending, else None
      out_cache_loc     (total_new,) int32 slot of each new token (where write_kv puts it)
      scheduler_metadata  {CallSignature: (n,) int32} one entry per distinct layer signature
      prefix_lens, new_lens   (b,) host numpy int32
    """

    def __init__(self, backend, mode, graph):
        self.backend = backend
        self.mode = mode
        self.graph = graph               # static shapes (CUDA-graph capture/replay)
        self.generation = -1             # the backend's build count when its buffers held this batch
        self.batch_size = self.max_seqlen_q = self.max_seqlen_k = self.max_seqlen_k_new = 0
        self.appending = False
        self.page_table = self.cache_seqlens = self.cu_seqlens_q = self.cu_seqlens_k_new = None
        self.out_cache_loc = self.prefix_lens = self.new_lens = None
        self.scheduler_metadata = {}

    def signatures(self):
        return list(self.scheduler_metadata)

    def __repr__(self):
        return (f"ForwardMetadata(mode={self.mode.value}, batch_size={self.batch_size}, "
                f"max_seqlen_q={self.max_seqlen_q}, max_seqlen_k={self.max_seqlen_k}, "
                f"appending={self.appending}, graph={self.graph}, generation={self.generation})")


def _invalid(msg):
    return Fa3cError(Status.INVALID_ARGUMENT, "fa3c.serving: " + msg)


def _host_ints(x, name):
    """(n,) int64 numpy copy of integers given as a list, a numpy array or a torch tensor (a
    device tensor is read back: pass host copies, as SGLang's *_cpu fields, to avoid the sync)."""
    if x is None:
        return None
    if not isinstance(x, (list, tuple, int, np.integer)):
        x = _arrays.to_numpy(x, name)
    return np.asarray(x, dtype=np.int64).reshape(-1)


def _view(x, shape, name):
    """x.reshape(shape), refused when it would be a copy (writes must reach x's memory)."""
    view = x.reshape(shape)
    if _arrays.describe(view, name).data != _arrays.describe(x, name).data:
        raise _invalid(f"{name}: expected a contiguous cache that can be viewed as {shape}, got shape "
                       f"{tuple(x.shape)}")
    return view


class AttentionBackend:
    """Attention for one model replica on one device: owns an fa3c.Context and the buffers of
    one forward batch at a time.

    req_to_token   (max_reqs, max_context_len) int32 token slots (numpy or torch, CPU or CUDA);
                   slot // page_size is the page id, so with page_size > 1 a page's slots must be
                   page-aligned and consecutive (as SGLang allocates them).
    page_size      tokens per page of the K/V pool.
    layers         the AttentionLayer of every attention layer (duplicates collapse); metadata
                   is built for each distinct one.
    dtype          dtype of q and the K/V cache (e.g. "bfloat16", torch.float16).
    max_batch_size requests per forward batch (buffer sizes).
    append_kv      True: layers pass their new k/v and the kernel appends them (cu_seqlens_k_new
                   given); False: the engine writes K/V first (write_kv) and calls without them.
    num_splits, pack_gqa, sm_margin   FA3's arguments, for every layer.
    use_scheduler_metadata   False: no precomputed schedule (each call computes its own).
    backend, num_threads, num_sm, check_inputs   the Context this backend creates on req_to_token's
                   device (backend None: $FA3C_BACKEND, else the best one for that device).

    Not thread-safe: one thread drives a backend (distinct backends run concurrently).
    """

    def __init__(self, req_to_token, page_size, layers, *, dtype, max_batch_size, append_kv=True, num_splits=0,
                 pack_gqa=None, sm_margin=0, use_scheduler_metadata=True, backend=None, num_threads=0,
                 num_sm=0, check_inputs=None):
        if len(req_to_token.shape) != 2 or _arrays.dtype_of(req_to_token, "req_to_token") != DType.I32:
            raise _invalid("req_to_token: expected a (max_reqs, max_context_len) int32 array")
        if page_size < 1:
            raise _invalid(f"page_size: expected >= 1, got {page_size}")
        self.req_to_token = req_to_token
        self.page_size = int(page_size)
        self.layers = tuple(dict.fromkeys(layers))
        if not self.layers:
            raise _invalid("layers: expected at least one AttentionLayer")
        self.dtype = _arrays.as_dtype(dtype)
        self.max_batch_size = int(max_batch_size)
        self.append_kv = bool(append_kv)
        self.num_splits = int(num_splits)
        self.pack_gqa = pack_gqa
        self.sm_margin = int(sm_margin)
        self.use_scheduler_metadata = bool(use_scheduler_metadata)

        # The backend's own context: its workspace, stream and threads serve this backend only.
        self.context = context_for_device(_arrays.device(req_to_token, "req_to_token"), backend,
                                          num_threads=num_threads, num_sm=num_sm, check_inputs=check_inputs)

        max_ctx = req_to_token.shape[1]
        self.max_pages = -(-max_ctx // self.page_size)
        b = self.max_batch_size
        like = req_to_token
        self._page_table = _arrays.full(like, (b, self.max_pages), 0, DType.I32)
        self._cache_seqlens = _arrays.full(like, (b,), 0, DType.I32)
        self._cu_seqlens_q = _arrays.full(like, (b + 1,), 0, DType.I32)
        self._cu_seqlens_k_new = _arrays.full(like, (b + 1,), 0, DType.I32)
        self._req_index = _arrays.full(like, (b,), 0, DType.I32)
        # One scheduler-metadata row per distinct layer; a row holds the largest schedule of a
        # max_batch_size batch.
        self._slot = {}
        for layer in self.layers:
            self._slot.setdefault(self._layer_key(layer), len(self._slot))
        self._sched = _arrays.full(like, (len(self._slot), self._metadata_capacity()), 0, DType.I32)
        self._generation = 0
        self._current = None

    # -- buffers ----------------------------------------------------------------------------------

    @staticmethod
    def _layer_key(layer):
        """The fields of a layer that its CallSignature depends on."""
        return (layer.num_heads_q, layer.num_heads_kv, layer.head_dim, layer.head_dim_v, bool(layer.causal),
                layer.window_size, int(layer.attention_chunk), layer.softcap > 0)

    def _metadata_capacity(self):
        """Elements of the largest schedule a batch of max_batch_size can have: the size grows
        with the batch and with the vectors present, which depend on causal / local (after FA3's
        window normalisation), so the largest of those layouts."""
        layer = self.layers[0]
        return max(_fai._scheduler_metadata_size(
            batch_size=self.max_batch_size, max_seqlen_q=2, max_seqlen_k=self.max_pages * self.page_size,
            num_heads_q=layer.num_heads_q, num_heads_kv=layer.num_heads_kv, headdim=layer.head_dim,
            headdim_v=layer.head_dim_v, cache_seqlens=self._cache_seqlens, qkv_dtype=self.dtype, causal=causal,
            window_size=window, context=self.context,
        ) for causal, window in ((True, (-1, -1)), (False, (-1, -1)), (False, (1, 0))))

    def buffers(self):
        """{name: array} of every buffer this backend fills (the tests check no two backends share one)."""
        return {"page_table": self._page_table, "cache_seqlens": self._cache_seqlens,
                "cu_seqlens_q": self._cu_seqlens_q, "cu_seqlens_k_new": self._cu_seqlens_k_new,
                "req_index": self._req_index, "scheduler_metadata": self._sched}

    # -- per-batch metadata -----------------------------------------------------------------------

    @staticmethod
    def _lengths(mode, seq_lens, extend_lens, num_draft_tokens):
        """(prefix_lens, new_lens) host int32 from SGLang's per-mode conventions."""
        seq = _host_ints(seq_lens, "seq_lens")
        if mode == ForwardMode.DECODE:
            new = np.ones_like(seq)
        elif mode == ForwardMode.EXTEND:
            if extend_lens is None:
                raise _invalid("extend_lens: required in EXTEND mode")
            new = _host_ints(extend_lens, "extend_lens")
        elif mode == ForwardMode.TARGET_VERIFY:
            if num_draft_tokens is None or num_draft_tokens < 1:
                raise _invalid(f"num_draft_tokens: expected >= 1 in TARGET_VERIFY mode, got {num_draft_tokens}")
            new = np.full_like(seq, int(num_draft_tokens))
            seq = seq + new
        else:
            raise _invalid(f"mode: expected a ForwardMode, got {mode!r}")
        if new.shape != seq.shape:
            raise _invalid(f"extend_lens: expected {seq.shape[0]} lengths, got {new.shape[0]}")
        prefix = seq - new
        if np.any(new < 0) or np.any(prefix < 0):
            raise _invalid("lengths: expected 0 <= extend_lens <= seq_lens")
        return prefix.astype(np.int32), new.astype(np.int32)

    def init_forward_metadata(self, mode, req_pool_indices, seq_lens, *, extend_lens=None, num_draft_tokens=None,
                              out_cache_loc=None):
        """Builds the metadata of the next forward batch and makes it current (the previous one
        becomes stale). req_pool_indices (b,) rows of req_to_token; seq_lens, extend_lens (b,)
        host or device integers; out_cache_loc (total_new,) int32 slots of the new tokens
        (default: read from req_to_token). Returns the ForwardMetadata."""
        prefix, new = self._lengths(mode, seq_lens, extend_lens, num_draft_tokens)
        b = prefix.shape[0]
        self._check_batch(b)
        fm = ForwardMetadata(self, mode, graph=False)
        total = prefix.astype(np.int64) + new
        n_pages = max(1, -(-int(total.max(initial=0)) // self.page_size))
        self._bind(fm, b, max_seqlen_q=int(new.max(initial=0)), n_pages=n_pages)
        self._fill(fm, req_pool_indices, prefix, new, out_cache_loc)
        return fm

    def init_forward_metadata_capture(self, mode, batch_size, *, num_draft_tokens=None):
        """Metadata with the static shapes of a CUDA graph: batch_size requests, the mode's fixed
        tokens per request (DECODE 1, TARGET_VERIFY num_draft_tokens), the full-width page table.
        Its lengths are placeholders (every request on row 0 of req_to_token, no prefix):
        replay it (init_forward_metadata_replay) before the graph runs on real data."""
        if mode == ForwardMode.EXTEND:
            raise _invalid("CUDA-graph capture: EXTEND batches have no static shape; capture DECODE or TARGET_VERIFY")
        self._check_batch(batch_size)
        per_req = 1 if mode == ForwardMode.DECODE else num_draft_tokens
        if per_req is None or per_req < 1:
            raise _invalid(f"num_draft_tokens: expected >= 1 in TARGET_VERIFY mode, got {num_draft_tokens}")
        fm = ForwardMetadata(self, mode, graph=True)
        self._bind(fm, batch_size, max_seqlen_q=per_req, n_pages=self.max_pages)
        prefix = np.zeros(batch_size, dtype=np.int32)
        new = np.full(batch_size, per_req, dtype=np.int32)
        self._fill(fm, np.zeros(batch_size, dtype=np.int32), prefix, new, None)
        return fm

    def init_forward_metadata_replay(self, fm, req_pool_indices, seq_lens, *, out_cache_loc=None):
        """Rewrites a captured ForwardMetadata in place (same buffers, same shapes, same
        signatures) for a real batch padded to its batch size, recomputing the scheduler metadata
        into the same memory; run it outside the graph, before replay. Makes fm current."""
        if fm.backend is not self or not fm.graph:
            raise _invalid("init_forward_metadata_replay: expected a ForwardMetadata from this backend's "
                           "init_forward_metadata_capture")
        prefix, new = self._lengths(fm.mode, seq_lens, None, fm.max_seqlen_q)
        if prefix.shape[0] != fm.batch_size:
            raise _invalid(f"replay: the graph was captured for {fm.batch_size} requests, got {prefix.shape[0]} "
                           "(pad the batch to the captured size)")
        before = fm.signatures()
        self._fill(fm, req_pool_indices, prefix, new, out_cache_loc)
        if fm.signatures() != before:  # the shapes are static, so this would be a bug here
            raise Fa3cError(Status.INTERNAL, "fa3c.serving: replay changed the captured call signatures")
        return fm

    def _check_batch(self, b):
        if not 0 <= b <= self.max_batch_size:
            raise _invalid(f"batch: {b} requests, this backend was sized for max_batch_size = {self.max_batch_size}")

    def _bind(self, fm, b, max_seqlen_q, n_pages):
        """Shapes and buffer views of fm (they stay fixed for fm's lifetime)."""
        fm.batch_size = b
        fm.max_seqlen_q = max_seqlen_q
        fm.appending = self.append_kv
        fm.page_table = self._page_table[:b, :n_pages]
        fm.cache_seqlens = self._cache_seqlens[:b]
        fm.cu_seqlens_q = self._cu_seqlens_q[: b + 1]
        fm.cu_seqlens_k_new = self._cu_seqlens_k_new[: b + 1] if self.append_kv else None
        fm.max_seqlen_k_new = max(1, max_seqlen_q) if self.append_kv else 0
        fm.max_seqlen_k = n_pages * self.page_size

    def _fill(self, fm, req_pool_indices, prefix, new, out_cache_loc):
        """Writes the batch's lengths, page table and new-token slots into fm's views and
        recomputes every layer signature's scheduler metadata into its row; fm becomes current."""
        b = fm.batch_size
        if np.any(new > fm.max_seqlen_q):
            raise _invalid(f"lengths: a request has {int(new.max())} new tokens, the batch was shaped for "
                           f"{fm.max_seqlen_q}")
        if np.any(prefix.astype(np.int64) + new > self.req_to_token.shape[1]):
            raise _invalid(f"lengths: a request has more than the max_context_len = {self.req_to_token.shape[1]} "
                           "tokens req_to_token holds")
        idx = _host_ints(req_pool_indices, "req_pool_indices").astype(np.int32)
        if idx.shape[0] != b:
            raise _invalid(f"req_pool_indices: expected {b} rows, got {idx.shape[0]}")
        self._generation += 1
        fm.generation = self._generation
        self._current = fm
        fm.prefix_lens, fm.new_lens = prefix, new
        _arrays.copy_from_numpy(self._req_index[:b], idx)
        ps = self.page_size
        rows = self._req_index[:b]
        n_pages = fm.page_table.shape[1]
        # page id of each page = the slot of its first token // page_size (on the table's device)
        fm.page_table[...] = self.req_to_token[rows, 0:n_pages * ps:ps] // ps
        cu = np.zeros(b + 1, dtype=np.int32)
        np.cumsum(new, out=cu[1:])
        _arrays.copy_from_numpy(fm.cache_seqlens, prefix if fm.appending else prefix + new)
        _arrays.copy_from_numpy(fm.cu_seqlens_q, cu)
        if fm.appending:
            _arrays.copy_from_numpy(fm.cu_seqlens_k_new, cu)
        loc = out_cache_loc
        if loc is None:  # slot of token (prefix + j) of each request, gathered on the table's device
            r = np.repeat(idx, new)
            c = np.concatenate([np.arange(p, p + n, dtype=np.int32) for p, n in zip(prefix, new)] +
                               [np.zeros(0, dtype=np.int32)])
            loc = self.req_to_token[_arrays.from_numpy(self.req_to_token, r), _arrays.from_numpy(self.req_to_token, c)]
        if fm.graph and fm.out_cache_loc is not None:
            fm.out_cache_loc[...] = loc  # a captured graph reads the buffer it was captured with
        else:
            fm.out_cache_loc = loc
        fm.scheduler_metadata = {}
        if self.use_scheduler_metadata:
            for layer in self.layers:
                key = self._layer_key(layer)
                sig = self._precompute_signature(fm, layer)
                if sig not in fm.scheduler_metadata:  # layers differing only in softmax_scale share one
                    fm.scheduler_metadata[sig] = self._compute_metadata(fm, sig, self._sched[self._slot[key]])

    def _compute_metadata(self, fm, sig, row):
        return _fai.get_scheduler_metadata(
            sig.batch_size, sig.max_seqlen_q, sig.max_seqlen_k, sig.num_heads_q, sig.num_heads_kv, sig.headdim,
            fm.cache_seqlens, qkv_dtype=sig.qkv_dtype, headdim_v=sig.headdim_v, cu_seqlens_q=fm.cu_seqlens_q,
            cu_seqlens_k_new=fm.cu_seqlens_k_new if sig.appending else None, page_size=sig.page_size,
            max_seqlen_k_new=sig.max_seqlen_k_new, causal=sig.causal, window_size=sig.window_size,
            attention_chunk=sig.attention_chunk, has_softcap=sig.has_softcap, num_splits=sig.num_splits,
            pack_gqa=sig.pack_gqa, sm_margin=sig.sm_margin, out=row, context=self.context,
        )

    # -- signatures -------------------------------------------------------------------------------

    def _signature(self, fm, layer, *, heads_q, heads_kv, headdim, headdim_v, dtype, page_size, appending, device):
        return CallSignature(
            batch_size=fm.batch_size, max_seqlen_q=fm.max_seqlen_q, max_seqlen_k=fm.page_table.shape[1] * page_size,
            num_heads_q=heads_q, num_heads_kv=heads_kv, headdim=headdim, headdim_v=headdim_v, qkv_dtype=dtype,
            page_size=page_size, causal=bool(layer.causal), window_size=layer.window_size,
            attention_chunk=int(layer.attention_chunk), has_softcap=layer.softcap > 0, num_splits=self.num_splits,
            pack_gqa=self.pack_gqa, appending=appending, max_seqlen_k_new=fm.max_seqlen_k_new if appending else 0,
            varlen_q=True, sm_margin=self.sm_margin, device=tuple(device),
        )

    def _precompute_signature(self, fm, layer):
        """The signature a layer's call will have, from its declared parameters."""
        return self._signature(fm, layer, heads_q=layer.num_heads_q, heads_kv=layer.num_heads_kv,
                               headdim=layer.head_dim, headdim_v=layer.head_dim_v, dtype=self.dtype,
                               page_size=self.page_size, appending=fm.appending, device=self.context.device)

    def _check_current(self, fm):
        if fm is None:
            raise _invalid("no forward metadata: call init_forward_metadata first")
        if fm.backend is not self:
            raise _invalid("this ForwardMetadata belongs to another backend (each backend has its own buffers "
                           "and context)")
        if fm.generation != self._generation:
            cur = self._current
            raise _invalid(
                f"stale ForwardMetadata (generation {fm.generation}, {fm.mode.value}, batch {fm.batch_size}): the "
                f"backend has since rebuilt its buffers for generation {self._generation} ({cur.mode.value}, batch "
                f"{cur.batch_size}). A backend holds one batch at a time; run concurrent batches (two-batch "
                "overlap, draft and target) on separate backends"
            )

    # -- layers -----------------------------------------------------------------------------------

    def _paged(self, cache, name):
        """(num_pages, page_size, h_k, d) view of a paged cache given as such or as a slot pool
        (num_slots, h_k, d); never a copy (appends must land in the caller's memory)."""
        if len(cache.shape) == 4:
            return cache
        if len(cache.shape) != 3 or cache.shape[0] % self.page_size:
            raise _invalid(f"{name}: expected (num_pages, page_size, h_k, d) or (num_slots, h_k, d) with num_slots a "
                           f"multiple of page_size {self.page_size}, got shape {tuple(cache.shape)}")
        return _view(cache, (cache.shape[0] // self.page_size, self.page_size) + tuple(cache.shape[1:]), name)

    def forward(self, layer, q, k_cache, v_cache, k=None, v=None, *, qv=None, metadata=None, sinks=None,
                return_softmax_lse=False, out=None):
        """One layer's attention over the current (or the given) forward batch.

        q (total_new, h, d); k_cache/v_cache (num_pages, page_size, h_k, d/dv) or slot pools
        (num_slots, h_k, d/dv); k/v (total_new, h_k, d/dv) the batch's new K/V, given iff the
        backend appends (append_kv=True): they are written into the cache slots of the new tokens.
        qv (total_new, h, dv): MLA absorbed attention, as SGLang calls it for DeepSeek layers
        (declared AttentionLayer(h, 1, 64, head_dim_v=512)): q = q_rope, qv = q_nope, and
        k_cache / v_cache the k_rope / c_kv column views of one [c_kv | k_rope] pool.
        Returns out (total_new, h, dv), or FA3's four-tuple when return_softmax_lse.
        """
        fm = self._current if metadata is None else metadata
        self._check_current(fm)
        if (k is None) != (v is None):
            raise _invalid("k and v: give both or neither")
        appending = k is not None
        if appending != fm.appending:
            raise _invalid(
                "this backend appends K/V inside the attention call (append_kv=True): pass the layer's new k and v"
                if fm.appending else
                "this backend expects K/V written before the call (append_kv=False, see write_kv): k and v must be None"
            )
        kc, vc = self._paged(k_cache, "k_cache"), self._paged(v_cache, "v_cache")
        meta = None
        if self.use_scheduler_metadata:
            sig = self._signature(fm, layer, heads_q=q.shape[-2], heads_kv=kc.shape[2], headdim=q.shape[-1],
                                  headdim_v=vc.shape[-1], dtype=_arrays.dtype_of(q, "q"), page_size=kc.shape[1],
                                  appending=appending, device=_arrays.device(q, "q"))
            meta = fm.scheduler_metadata.get(sig)
            if meta is None:
                raise self._no_metadata(fm, layer, sig)
        return _fai.flash_attn_with_kvcache(
            q, kc, vc, k=k, v=v, qv=qv, cache_seqlens=fm.cache_seqlens, page_table=fm.page_table,
            cu_seqlens_q=fm.cu_seqlens_q, cu_seqlens_k_new=fm.cu_seqlens_k_new if appending else None,
            max_seqlen_q=fm.max_seqlen_q, softmax_scale=layer.softmax_scale, causal=layer.causal,
            window_size=layer.window_size, attention_chunk=layer.attention_chunk, softcap=layer.softcap,
            scheduler_metadata=meta, num_splits=self.num_splits, pack_gqa=self.pack_gqa, sm_margin=self.sm_margin,
            return_softmax_lse=return_softmax_lse, sinks=sinks, out=out, context=self.context,
        )

    def _no_metadata(self, fm, layer, sig):
        built = fm.signatures()
        if not built:
            return _invalid("no scheduler metadata was built for this batch")
        nearest = min(built, key=lambda s: len(sig.differences(s)))
        diff = ", ".join(f"{name}: call {a!r}, built {b!r}" for name, a, b in sig.differences(nearest))
        return _invalid(
            f"no scheduler metadata for this call of layer {layer} in this batch: its signature matches none of the "
            f"{len(built)} built from the backend's layers; nearest differs in {diff} (declare the layer when "
            "creating the backend, and call it with tensors of its declared shape and dtype)"
        )

    def write_kv(self, k_cache, v_cache, k, v, metadata=None):
        """Writes the batch's new K/V (total_new, h_k, d/dv) into the caches at out_cache_loc
        (for append_kv=False, before the layer's forward)."""
        fm = self._current if metadata is None else metadata
        self._check_current(fm)
        kc, vc = self._paged(k_cache, "k_cache"), self._paged(v_cache, "v_cache")
        loc = fm.out_cache_loc
        _view(kc, (-1,) + tuple(kc.shape[2:]), "k_cache")[loc] = k
        _view(vc, (-1,) + tuple(vc.shape[2:]), "v_cache")[loc] = v

    def close(self):
        self.context.close()

    def __repr__(self):
        return (f"fa3c.serving.AttentionBackend(context={self.context!r}, page_size={self.page_size}, "
                f"layers={len(self.layers)}, max_batch_size={self.max_batch_size}, append_kv={self.append_kv})")


# Context parallelism (fa3c.context_parallel) is part of this layer's interface. It builds on the
# classes above, so it is loaded on first use rather than imported here.
_CONTEXT_PARALLEL = ("ContextParallelDecode", "ContextParallelPrefill", "SimulatedGroup", "TorchDistributedComm",
                     "ZigzagSplit")


def __getattr__(name):
    if name in _CONTEXT_PARALLEL:
        from . import context_parallel
        return getattr(context_parallel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
