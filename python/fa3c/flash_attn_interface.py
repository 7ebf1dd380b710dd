"""FlashAttention-3's forward Python interface (hopper/flash_attn_interface.py), on fa3c.

Same function names, argument order, defaults and return conventions as FA3; forward only.
Arrays are numpy arrays (bf16 / fp8 through ml_dtypes), torch tensors on the CPU or a CUDA device,
or objects exporting __cuda_array_interface__ / __dlpack__ (_arrays.py), all read and written in
place; outputs are allocated in the family and on the device of q. With torch CUDA tensors a call
launches on torch's current stream of q's device. torch is never imported by this package.
Shape legend: b, s_q, s_k, s_new, h, h_k, d, dv, S as in include/fa3c.h.

Differences from FA3, all additive (new keywords only at the end of a signature):
  - sinks=None (sgl-kernel): (h,) learnable sink logit per q head, fp32/fp16/bf16.
  - ver=3 (sgl-kernel) on flash_attn_varlen_func / flash_attn_with_kvcache: any other value raises ValueError.
  - out=None: a preallocated output (FA3's op argument), returned in place of a new array.
    get_scheduler_metadata(out=...): a 1-D int32 buffer at least metadata_size long; the metadata
    is written to out[:metadata_size], and that view is returned (preallocated, graph-safe buffers).
  - flash_attn_varlen_func return_softmax_lse=False (sgl-kernel): returns (out, lse, out_accum, lse_accum).
  - context=None: the fa3c.Context to run on; default: the shared context of q's device.
  - deterministic is accepted and has no effect (the forward is deterministic).
  - An int cache_seqlens expands to (b,) with b = len(cu_seqlens_q) - 1 when cu_seqlens_q is given.
  - flash_attn_combine: out_dtype defaults to out's dtype when out is given.
"""

import ctypes
import numbers

from . import _arrays
from . import _lib
from ._context import default_context
from ._lib import DType

__all__ = [
    "flash_attn_qkvpacked_func",
    "flash_attn_func",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "get_scheduler_metadata",
    "flash_attn_combine",
]

_FWD_TENSORS = (
    "q", "k", "v", "k_new", "v_new", "qv", "cu_seqlens_q", "cu_seqlens_k", "cu_seqlens_k_new",
    "seqused_q", "seqused_k", "page_table", "kv_batch_idx", "leftpad_k", "rotary_cos", "rotary_sin",
    "seqlens_rotary", "q_descale", "k_descale", "v_descale", "scheduler_metadata", "sinks",
)
# Inputs whose last dimension FA3's wrapper makes contiguous before calling the op.
_MAYBE_CONTIGUOUS = (
    "q", "k", "v", "k_new", "v_new", "cu_seqlens_q", "cu_seqlens_k", "cu_seqlens_k_new", "seqused_q",
    "seqused_k", "page_table", "kv_batch_idx", "leftpad_k", "rotary_cos", "rotary_sin", "seqlens_rotary",
)


def _context_for(x, name, context):
    return context if context is not None else default_context(_arrays.device(x, name))


def _default_scale(q, qv):
    return (q.shape[-1] + (qv.shape[-1] if qv is not None else 0)) ** (-0.5)


def _check_ver(ver):
    if ver != 3:
        raise ValueError(f"ver={ver!r}: fa3c implements FlashAttention-3 only (ver=3)")


def _flash_attn_forward(t, *, softmax_scale, causal, window_size, attention_chunk, softcap, rotary_interleaved,
                        num_splits, pack_gqa, sm_margin, max_seqlen_q, max_seqlen_k, out, want_accum, context):
    """FA3's fwd op. t: name -> array or None for every name in _FWD_TENSORS.

    q (b, s_q, h, d) or (total_q, h, d) with cu_seqlens_q; v (..., dv).
    Returns out (b, s_q, h, dv) / (total_q, h, dv), lse (b, h, s_q) / (h, total_q) fp32, and, when
    want_accum and the resolved S > 1, out_accum (S, b, h, s_q, dv) / (S, h, total_q, dv) and
    lse_accum (S, b, h, s_q) / (S, h, total_q) fp32 (else two empty fp32 arrays).
    """
    t = dict(t)
    for name in _MAYBE_CONTIGUOUS:
        t[name] = _arrays.maybe_contiguous(t[name], name)
    q, v = t["q"], t["v"]
    ctx = _context_for(q, "q", context)
    stream = _arrays.stream(q, "q")
    varlen_q = t["cu_seqlens_q"] is not None
    q_rank = 3 if varlen_q else 4
    if len(q.shape) != q_rank:
        layout = "(total_q, h, d) with cu_seqlens_q" if varlen_q else "(b, s_q, h, d)"
        raise _lib.Fa3cError(_lib.Status.INVALID_ARGUMENT, f"q: expected {layout}, got shape {tuple(q.shape)}")
    if len(v.shape) == 0:
        raise _lib.Fa3cError(_lib.Status.INVALID_ARGUMENT, "v: expected (..., h_k, dv), got a scalar")
    dv = v.shape[-1]
    in_dtype = _arrays.dtype_of(q, "q")
    out_dtype = DType.BF16 if in_dtype == DType.E4M3 else in_dtype
    if out is None:
        out = _arrays.empty(q, tuple(q.shape[:-1]) + (dv,), out_dtype)
    if varlen_q:
        total_q, h = q.shape[0], q.shape[1]
        lse = _arrays.empty(q, (h, total_q), DType.F32)
    else:
        b, s_q, h = q.shape[0], q.shape[1], q.shape[2]
        lse = _arrays.empty(q, (b, h, s_q), DType.F32)

    args = _lib.FwdArgs()
    dll = _lib.lib()
    dll.fa3c_fwd_args_init(ctypes.byref(args))
    appending = t["k_new"] is not None  # the cache k/v are written
    for name in _FWD_TENSORS:
        setattr(args, name, _arrays.describe(t[name], name, writable=appending and name in ("k", "v")))
    args.out = _arrays.describe(out, "out", writable=True)
    args.softmax_lse = _arrays.describe(lse, "softmax_lse", writable=True)
    args.max_seqlen_q = -1 if max_seqlen_q is None else int(max_seqlen_q)
    args.max_seqlen_k = -1 if max_seqlen_k is None else int(max_seqlen_k)
    args.softmax_scale = float(softmax_scale)
    args.is_causal = bool(causal)
    args.window_size_left = int(window_size[0])
    args.window_size_right = int(window_size[1])
    args.attention_chunk = int(attention_chunk or 0)
    args.softcap = float(softcap)
    args.is_rotary_interleaved = bool(rotary_interleaved)
    args.num_splits = int(num_splits)
    args.pack_gqa = -1 if pack_gqa is None else int(bool(pack_gqa))
    args.sm_margin = int(sm_margin)

    out_accum = lse_accum = None
    if want_accum:
        info = _lib.FwdInfo()
        ctx.call(dll.fa3c_fwd_query, ctypes.byref(args), ctypes.byref(info))
        if info.num_splits > 1:
            S = info.num_splits
            acc_rows = (h, total_q) if varlen_q else (b, h, s_q)
            out_accum = _arrays.empty(q, (S,) + acc_rows + (dv,), DType.F32)
            lse_accum = _arrays.empty(q, (S,) + acc_rows, DType.F32)
            args.out_accum = _arrays.describe(out_accum, "out_accum", writable=True)
            args.lse_accum = _arrays.describe(lse_accum, "lse_accum", writable=True)
    ctx.call(dll.fa3c_fwd, ctypes.byref(args), stream=stream)
    if out_accum is None:
        out_accum = _arrays.empty(q, (0,), DType.F32)
        lse_accum = _arrays.empty(q, (0,), DType.F32)
    return out, lse, out_accum, lse_accum


def _fwd_tensors(**given):
    t = dict.fromkeys(_FWD_TENSORS)
    t.update(given)
    return t


def flash_attn_func(
    q,
    k,
    v,
    softmax_scale=None,
    causal=False,
    qv=None,
    q_descale=None, k_descale=None, v_descale=None,
    window_size=(-1, -1),
    attention_chunk=0,
    softcap=0.0,
    num_splits=1,
    pack_gqa=None,
    deterministic=False,
    sm_margin=0,
    return_attn_probs=False,
    sinks=None,
    out=None,
    context=None,
):
    """Batched attention. q (b, s_q, h, d); k (b, s_k, h_k, d); v (b, s_k, h_k, dv).

    causal is bottom-right aligned; window_size=(left, right), negative = unbounded;
    attention_chunk > 0 restricts each query to its chunk of keys; softcap > 0 caps the scores;
    qv (b, s_q, h, dv) adds qv.v to the scores (MLA absorbed; default scale (d + dv)^-0.5).
    fp8 (float8_e4m3fn) inputs take q/k/v_descale (b, h_k) fp32 and give bf16 out.
    Returns out (b, s_q, h, dv), or (out, lse (b, h, s_q) fp32) when return_attn_probs.
    """
    if softmax_scale is None:
        softmax_scale = _default_scale(q, qv)
    out, lse, *_ = _flash_attn_forward(
        _fwd_tensors(q=q, k=k, v=v, qv=qv, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale,
                     sinks=sinks),
        softmax_scale=softmax_scale, causal=causal, window_size=window_size, attention_chunk=attention_chunk,
        softcap=softcap, rotary_interleaved=False, num_splits=num_splits, pack_gqa=pack_gqa, sm_margin=sm_margin,
        max_seqlen_q=None, max_seqlen_k=None, out=out, want_accum=False, context=context,
    )
    return (out, lse) if return_attn_probs else out


def flash_attn_qkvpacked_func(
    qkv,
    softmax_scale=None,
    causal=False,
    q_descale=None, k_descale=None, v_descale=None,
    window_size=(-1, -1),
    attention_chunk=0,
    softcap=0.0,
    deterministic=False,
    num_heads_q=None,
    sm_margin=0,
    return_attn_probs=False,
    context=None,
):
    """Batched attention on packed q, k, v: qkv (b, s, 3, h, d), or (b, s, h + 2 h_k, d) with
    num_heads_q = h (GQA: q heads, then k heads, then v heads). The three are views of qkv, as in
    FA3; the rest is flash_attn_func. Returns out (b, s, h, d), or (out, lse (b, h, s)) when
    return_attn_probs."""
    def bad(msg):
        return _lib.Fa3cError(_lib.Status.INVALID_ARGUMENT, "qkv: " + msg)

    shape = tuple(qkv.shape)
    if len(shape) == 5:
        if shape[2] != 3:
            raise bad(f"expected (b, s, 3, h, d), got shape {shape}")
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    elif len(shape) == 4:
        if num_heads_q is None:
            raise bad("a 4-D qkv (b, s, h + 2 h_k, d) needs num_heads_q")
        hq = int(num_heads_q)
        hk = (shape[2] - hq) // 2
        if hq <= 0 or hk <= 0 or hq + 2 * hk != shape[2]:
            raise bad(f"{shape[2]} heads are not num_heads_q = {hq} plus twice the kv heads")
        q, k, v = qkv[:, :, :hq], qkv[:, :, hq:hq + hk], qkv[:, :, hq + hk:]
    else:
        raise bad(f"expected 5 or 4 dimensions, got shape {shape}")
    return flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal, q_descale=q_descale,
                           k_descale=k_descale, v_descale=v_descale, window_size=window_size,
                           attention_chunk=attention_chunk, softcap=softcap, deterministic=deterministic,
                           sm_margin=sm_margin, return_attn_probs=return_attn_probs, context=context)


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    seqused_q=None,
    seqused_k=None,
    softmax_scale=None,
    causal=False,
    qv=None,
    q_descale=None, k_descale=None, v_descale=None,
    window_size=(-1, -1),
    attention_chunk=0,
    softcap=0.0,
    num_splits=1,
    pack_gqa=None,
    deterministic=False,
    sm_margin=0,
    return_attn_probs=False,
    sinks=None,
    ver=3,
    out=None,
    return_softmax_lse=False,
    context=None,
):
    """Packed variable-length attention. q (total_q, h, d); k (total_k, h_k, d); v (total_k, h_k, dv);
    cu_seqlens_q/k (b + 1,) int32; seqused_q/k (b,) int32 override the lengths (rows of q past
    seqused_q are not written). Returns out (total_q, h, dv), or (out, lse (h, total_q) fp32) when
    return_attn_probs, or (out, lse, out_accum, lse_accum) when return_softmax_lse (sgl-kernel)."""
    _check_ver(ver)
    if softmax_scale is None:
        softmax_scale = _default_scale(q, qv)
    out, lse, out_accum, lse_accum = _flash_attn_forward(
        _fwd_tensors(q=q, k=k, v=v, qv=qv, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                     seqused_q=seqused_q, seqused_k=seqused_k, q_descale=q_descale, k_descale=k_descale,
                     v_descale=v_descale, sinks=sinks),
        softmax_scale=softmax_scale, causal=causal, window_size=window_size, attention_chunk=attention_chunk,
        softcap=softcap, rotary_interleaved=False, num_splits=num_splits, pack_gqa=pack_gqa, sm_margin=sm_margin,
        max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, out=out, want_accum=return_softmax_lse,
        context=context,
    )
    if return_softmax_lse:
        return out, lse, out_accum, lse_accum
    return (out, lse) if return_attn_probs else out


def flash_attn_combine(out_partial, lse_partial, out=None, out_dtype=None, context=None):
    """Merge S split partials. out_partial (S, b, s, h, dv) fp32 (or (S, total, h, dv));
    lse_partial (S, b, s, h) fp32 with stride(-2) == 1, i.e. a transposed view of (S, b, h, s)
    (or (S, total, h)). Returns (out (b, s, h, dv) of out_dtype (default fp32, or out's dtype),
    lse (b, s, h) fp32, a transposed view of a (b, h, s) buffer)."""
    ctx = _context_for(out_partial, "out_partial", context)
    if out_dtype is not None:
        dtype = _arrays.as_dtype(out_dtype)
    elif out is not None:
        dtype = _arrays.dtype_of(out, "out")
    else:
        dtype = _arrays.dtype_of(out_partial, "out_partial")
    if out is None:
        out = _arrays.empty(out_partial, out_partial.shape[1:], dtype)
    elif _arrays.dtype_of(out, "out") != dtype:
        raise _lib.Fa3cError(
            _lib.Status.INVALID_ARGUMENT,
            f"out: dtype {_arrays.dtype_of(out, 'out').name} does not match out_dtype {dtype.name}",
        )
    rows = tuple(out_partial.shape[1:-1])
    if len(rows) >= 2:  # the head axis stored before the token axis, as FA3 returns it
        lse = _arrays.empty(out_partial, rows[:-2] + (rows[-1], rows[-2]), DType.F32).swapaxes(-1, -2)
    else:
        lse = _arrays.empty(out_partial, rows, DType.F32)
    tensors = [
        _arrays.describe(out_partial, "out_partial"),
        _arrays.describe(lse_partial, "lse_partial"),
        _arrays.describe(out, "out", writable=True),
        _arrays.describe(lse, "lse", writable=True),
    ]
    ctx.call(_lib.lib().fa3c_combine, *[ctypes.byref(x) for x in tensors],
             stream=_arrays.stream(out_partial, "out_partial"))
    return out, lse


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    qv=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens=None,
    cache_batch_idx=None,
    cache_leftpad=None,
    page_table=None,
    cu_seqlens_q=None,
    cu_seqlens_k_new=None,
    max_seqlen_q=None,
    rotary_seqlens=None,
    q_descale=None,
    k_descale=None,
    v_descale=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    attention_chunk=0,
    softcap=0.0,  # 0.0 means deactivated
    rotary_interleaved=True,
    scheduler_metadata=None,
    num_splits=0,
    pack_gqa=None,
    sm_margin=0,
    return_softmax_lse=False,
    sinks=None,
    ver=3,
    out=None,
    context=None,
):
    """Attention over a KV cache, appending k/v into it first when given.

    q (b, s_q, h, d) or (total_q, h, d) with cu_seqlens_q;
    k_cache/v_cache (b_k, s_k, h_k, d/dv), or (num_pages, page_size, h_k, d/dv) with page_table
    (b_k, max_pages) int32; k/v (b, s_new, h_k, d/dv) or (total_new, h_k, d/dv) with cu_seqlens_k_new,
    written into the cache at rows cache_seqlens[i] ... (after rotary) before attending;
    cache_seqlens int or (b,) int32; cache_batch_idx, cache_leftpad, rotary_seqlens (b,) int32;
    rotary_cos/sin (s_ro, rotary_dim / 2); scheduler_metadata from get_scheduler_metadata.
    Returns out (b, s_q, h, dv) / (total_q, h, dv), or when return_softmax_lse the four-tuple
    (out, lse, out_accum, lse_accum): lse (b, h, s_q) / (h, total_q) fp32, and the split partials
    (S, b, h, s_q, dv) / (S, h, total_q, dv) and (S, b, h, s_q) / (S, h, total_q) fp32 when the
    resolved num_splits S > 1, else empty arrays.
    """
    _check_ver(ver)
    if _arrays.last_stride(k_cache, "k_cache") != 1:
        raise AssertionError("k_cache must have contiguous last dimension")
    if _arrays.last_stride(v_cache, "v_cache") != 1:
        raise AssertionError("v_cache must have contiguous last dimension")
    if softmax_scale is None:
        softmax_scale = _default_scale(q, qv)
    if isinstance(cache_seqlens, numbers.Integral):
        b = cu_seqlens_q.shape[0] - 1 if cu_seqlens_q is not None else q.shape[0]
        cache_seqlens = _arrays.full(k_cache, (b,), int(cache_seqlens), DType.I32)
    out, lse, out_accum, lse_accum = _flash_attn_forward(
        _fwd_tensors(q=q, k=k_cache, v=v_cache, k_new=k, v_new=v, qv=qv, cu_seqlens_q=cu_seqlens_q,
                     cu_seqlens_k_new=cu_seqlens_k_new, seqused_k=cache_seqlens, page_table=page_table,
                     kv_batch_idx=cache_batch_idx, leftpad_k=cache_leftpad, rotary_cos=rotary_cos,
                     rotary_sin=rotary_sin, seqlens_rotary=rotary_seqlens, q_descale=q_descale,
                     k_descale=k_descale, v_descale=v_descale, scheduler_metadata=scheduler_metadata,
                     sinks=sinks),
        softmax_scale=softmax_scale, causal=causal, window_size=window_size, attention_chunk=attention_chunk,
        softcap=softcap, rotary_interleaved=rotary_interleaved, num_splits=num_splits, pack_gqa=pack_gqa,
        sm_margin=sm_margin, max_seqlen_q=max_seqlen_q, max_seqlen_k=None, out=out,
        want_accum=return_softmax_lse, context=context,
    )
    return (out, lse, out_accum, lse_accum) if return_softmax_lse else out


def get_scheduler_metadata(
    batch_size, max_seqlen_q, max_seqlen_k, num_heads_q, num_heads_kv, headdim,
    cache_seqlens,
    qkv_dtype="bfloat16",
    headdim_v=None,
    cu_seqlens_q=None,
    cu_seqlens_k_new=None,
    cache_leftpad=None,
    page_size=None,
    max_seqlen_k_new=0,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    attention_chunk=0,
    has_softcap=False,
    num_splits=0,
    pack_gqa=None,
    sm_margin=0,
    out=None,
    context=None,
):
    """The precomputed schedule of a flash_attn_with_kvcache call, reusable by every call with the
    same arguments: a (n,) int32 array on cache_seqlens' device (or out[:n] when out is given).
    max_seqlen_k is the forward's static key length (k_cache.shape[1], or page_table.shape[1] *
    page_size). cu_seqlens_k_new is read only when max_seqlen_k_new > 0 (the forward appends
    k/v), as the forward reads it only then. A forward given metadata computed for other
    arguments raises Fa3cError naming the field. Pass the same context (or the same default) to
    this call and to the forward."""
    sa, ctx, keep = _scheduler_args(**locals())
    size = _scheduler_size(ctx, sa)
    if out is None:
        meta = _arrays.empty(keep, (size,), DType.I32)
    elif len(out.shape) != 1 or out.shape[0] < size:
        raise _lib.Fa3cError(
            _lib.Status.INVALID_ARGUMENT,
            f"out: expected a 1-D int32 buffer of at least metadata_size = {size} elements, got shape "
            f"{tuple(out.shape)}",
        )
    else:
        meta = out[:size]
    desc = _arrays.describe(meta, "scheduler_metadata", writable=True)
    ctx.call(_lib.lib().fa3c_get_scheduler_metadata, ctypes.byref(sa), ctypes.byref(desc),
             stream=_arrays.stream(keep, "cache_seqlens"))
    return meta


def _scheduler_metadata_size(**kwargs):
    """Elements of the metadata get_scheduler_metadata(**kwargs) would return."""
    sa, ctx, _ = _scheduler_args(**kwargs)
    return _scheduler_size(ctx, sa)


def _scheduler_size(ctx, sa):
    size = ctypes.c_int64()
    ctx.call(_lib.lib().fa3c_scheduler_metadata_size, ctypes.byref(sa), ctypes.byref(size))
    return size.value


def _scheduler_args(
    batch_size, max_seqlen_q, max_seqlen_k, num_heads_q, num_heads_kv, headdim, cache_seqlens, qkv_dtype="bfloat16",
    headdim_v=None, cu_seqlens_q=None, cu_seqlens_k_new=None, cache_leftpad=None, page_size=None, max_seqlen_k_new=0,
    causal=False, window_size=(-1, -1), attention_chunk=0, has_softcap=False, num_splits=0, pack_gqa=None,
    sm_margin=0, out=None, context=None,
):
    """(fa3c_scheduler_args, context, cache_seqlens as described) of get_scheduler_metadata's
    arguments; the caller keeps the returned cache_seqlens and its other arrays alive."""
    cache_seqlens = _arrays.maybe_contiguous(cache_seqlens, "cache_seqlens")
    ctx = _context_for(cache_seqlens, "cache_seqlens", context)
    sa = _lib.SchedulerArgs()
    _lib.lib().fa3c_scheduler_args_init(ctypes.byref(sa))
    sa.batch_size = int(batch_size)
    sa.max_seqlen_q = int(max_seqlen_q)
    sa.max_seqlen_k = int(max_seqlen_k)
    sa.num_heads_q = int(num_heads_q)
    sa.num_heads_kv = int(num_heads_kv)
    sa.headdim = int(headdim)
    sa.headdim_v = int(headdim if headdim_v is None else headdim_v)
    sa.qkv_dtype = _arrays.as_dtype(qkv_dtype)
    sa.seqused_k = _arrays.describe(cache_seqlens, "cache_seqlens")
    sa.cu_seqlens_q = _arrays.describe(cu_seqlens_q, "cu_seqlens_q")
    sa.cu_seqlens_k_new = _arrays.describe(cu_seqlens_k_new, "cu_seqlens_k_new")
    sa.leftpad_k = _arrays.describe(cache_leftpad, "cache_leftpad")
    sa.page_size = 0 if page_size is None else int(page_size)
    sa.max_seqlen_k_new = int(max_seqlen_k_new)
    sa.is_causal = bool(causal)
    sa.window_size_left = int(window_size[0])
    sa.window_size_right = int(window_size[1])
    sa.attention_chunk = int(attention_chunk or 0)
    sa.has_softcap = bool(has_softcap)
    sa.num_splits = int(num_splits)
    sa.pack_gqa = -1 if pack_gqa is None else int(bool(pack_gqa))
    sa.sm_margin = int(sm_margin)
    return sa, ctx, cache_seqlens
