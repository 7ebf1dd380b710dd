/*
 * fa3c — FlashAttention-3 forward attention in C.
 *
 * The only public header. It implements the semantics of FA3's `flash_attn_3::fwd`,
 * `fwd_combine` and `get_scheduler_metadata` ops (Dao-AILab/flash-attention, hopper/),
 * plus learnable attention sinks as in sgl-kernel.
 *
 * Shape legend, used everywhere in fa3c:
 *   b      batch size (number of sequences)
 *   s_q    query length (static: q.shape[1], or max_seqlen_q when varlen)
 *   s_k    key length (static: k.shape[1], max_seqlen_k when varlen, max_pages * page_size when paged)
 *   s_new  length of new keys appended in the call (k_new.shape[1] when batched)
 *   h      query heads;  h_k  key/value heads (h % h_k == 0; q head i uses kv head i / (h / h_k))
 *   d      query/key head dim;  dv  value head dim
 *   total_q, total_k, total_new   packed token counts of varlen tensors
 *   b_k    batch of the cache (k.shape[0], or page_table.shape[0] when paged); may exceed b with kv_batch_idx
 *   S      number of KV splits (split-KV / flash-decoding)
 *
 * Conventions
 *   - Every call returns an fa3c_status. On failure fa3c_last_error() returns a message naming
 *     the argument with the expected and the actual value. The library never exits or aborts.
 *   - Every call validates all of its arguments before touching any memory. On failure nothing
 *     has been written.
 *   - Tensors are described, never owned: fa3c never frees or keeps caller memory after a call.
 *   - An fa3c_tensor whose dtype is FA3C_DTYPE_NONE is "absent" (optional argument not given);
 *     a zero-initialised fa3c_tensor is absent.
 *
 * Ownership, lifetime and thread safety (stated once, for the whole API)
 *   - The library has no mutable global state. fa3c_last_error() is thread-local.
 *   - An fa3c_context is owned by its creator and freed by fa3c_context_destroy(). It owns its
 *     backend, device, stream binding, thread pool and workspace.
 *   - A context must be used by one thread at a time (calls on it are not synchronised);
 *     distinct contexts may be used concurrently from any threads, on the same or different
 *     devices.
 */
#ifndef FA3C_H
#define FA3C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(FA3C_SHARED_BUILD)
#define FA3C_API __declspec(dllexport)
#elif defined(__GNUC__)
#define FA3C_API __attribute__((visibility("default")))
#else
#define FA3C_API
#endif

/* ----------------------------------------------------------------------------------------- */
/* Version */

#define FA3C_VERSION_MAJOR 0
#define FA3C_VERSION_MINOR 1
#define FA3C_VERSION_PATCH 0
#define FA3C_VERSION (FA3C_VERSION_MAJOR * 10000 + FA3C_VERSION_MINOR * 100 + FA3C_VERSION_PATCH)

/* The version the library was built as (compare with FA3C_VERSION to detect a header mismatch). */
FA3C_API int         fa3c_version(void);
FA3C_API const char *fa3c_version_string(void);

/* ----------------------------------------------------------------------------------------- */
/* Status */

/* Append-only: new codes go at the end. */
typedef enum fa3c_status {
    FA3C_OK = 0,
    FA3C_ERROR_INVALID_ARGUMENT = 1, /* bad dtype/shape/stride/value; message names the argument */
    FA3C_ERROR_UNSUPPORTED = 2,      /* valid FA3 call that this backend/device cannot run */
    FA3C_ERROR_OUT_OF_MEMORY = 3,
    FA3C_ERROR_DEVICE = 4,           /* driver / runtime error */
    FA3C_ERROR_INTERNAL = 5,
} fa3c_status;

FA3C_API const char *fa3c_status_string(fa3c_status status);
/* Detail of the last failing call on this thread ("" if none). Valid until the next call. */
FA3C_API const char *fa3c_last_error(void);

/* ----------------------------------------------------------------------------------------- */
/* Tensors */

/* Append-only. */
typedef enum fa3c_dtype {
    FA3C_DTYPE_NONE = 0, /* absent tensor */
    FA3C_DTYPE_F32 = 1,
    FA3C_DTYPE_F16 = 2,
    FA3C_DTYPE_BF16 = 3,
    FA3C_DTYPE_E4M3 = 4, /* float8_e4m3fn */
    FA3C_DTYPE_I32 = 5,
} fa3c_dtype;

FA3C_API const char *fa3c_dtype_name(fa3c_dtype dtype);
FA3C_API size_t      fa3c_dtype_size(fa3c_dtype dtype);

typedef enum fa3c_device_type {
    FA3C_DEVICE_CPU = 0,
    FA3C_DEVICE_CUDA = 1,
} fa3c_device_type;

#define FA3C_MAX_DIMS 5

/* A strided view. Strides are in elements (not bytes) and may be any value, including 0
 * (broadcast) and values describing a view into a larger buffer; most arguments need
 * stride[ndim-1] == 1 (stated per argument). A tensor with a zero-sized dimension is valid
 * whatever its data pointer and strides. */
typedef struct fa3c_tensor {
    void            *data;
    fa3c_dtype       dtype;
    fa3c_device_type device_type;
    int32_t          device_index; /* CUDA ordinal; 0 for CPU */
    int32_t          ndim;
    int64_t          shape[FA3C_MAX_DIMS];
    int64_t          stride[FA3C_MAX_DIMS];
} fa3c_tensor;

/* Fill a tensor descriptor with a contiguous (row-major) layout on the CPU. ndim <= FA3C_MAX_DIMS. */
FA3C_API fa3c_tensor fa3c_tensor_contiguous(void *data, fa3c_dtype dtype, int32_t ndim, const int64_t *shape);

/* ----------------------------------------------------------------------------------------- */
/* Context and backends */

typedef struct fa3c_context fa3c_context;

/* Backends are listed best first. "cuda" (NVIDIA GPUs, when built with CUDA), "cpu-ref" (the
 * scalar reference). A backend is available when it is compiled in and its device exists. */
FA3C_API int         fa3c_backend_count(void);
FA3C_API const char *fa3c_backend_name(int index);
FA3C_API const char *fa3c_backend_description(int index);
FA3C_API int         fa3c_backend_available(int index);
/* The kind of device a backend runs on (its tensors must live there). */
FA3C_API fa3c_device_type fa3c_backend_device_type(int index);

typedef struct fa3c_context_options {
    const char *backend;      /* NULL: $FA3C_BACKEND if set, else the best available backend */
    int32_t     device_index; /* CUDA device ordinal (GPU backends) */
    int32_t     num_threads;  /* CPU backends; 0: $FA3C_NUM_THREADS, else the cores this process may use */
    void       *stream;       /* cudaStream_t for GPU backends; NULL = default stream */
    int32_t     check_inputs; /* -1: $FA3C_CHECK ("1" enables); 0/1: off/on (see fa3c_fwd_args.check_inputs) */
    int32_t     num_sm;       /* 0: the device's count. Otherwise the SM count the heuristics assume
                                 (tests use it to force split paths; GPU launches are not affected). */
} fa3c_context_options;

FA3C_API void        fa3c_context_options_init(fa3c_context_options *options);
/* options may be NULL (all defaults). On success *ctx is a new context. */
FA3C_API fa3c_status fa3c_context_create(const fa3c_context_options *options, fa3c_context **ctx);
FA3C_API void        fa3c_context_destroy(fa3c_context *ctx); /* NULL is allowed */
FA3C_API const char *fa3c_context_backend(const fa3c_context *ctx);
FA3C_API fa3c_device_type fa3c_context_device_type(const fa3c_context *ctx);
/* Number of "SMs" the heuristics see (GPU SM count, or the CPU thread count), before sm_margin. */
FA3C_API int32_t     fa3c_context_num_sm(const fa3c_context *ctx);
FA3C_API int32_t     fa3c_context_num_threads(const fa3c_context *ctx);
/* Later launches go to stream. A GPU context's forwards share its workspace and work-item
 * counters, so a forward on another stream than the context's last one first waits (on the GPU)
 * for that one to finish; no two of its forwards run at once. Under stream capture it neither
 * waits nor is waited for: the caller orders graph launches. Concurrent forwards on several
 * streams want a context each. */
FA3C_API fa3c_status fa3c_context_set_stream(fa3c_context *ctx, void *stream);
/* Waits until all work submitted through ctx has finished (no-op on CPU backends). */
FA3C_API fa3c_status fa3c_context_synchronize(fa3c_context *ctx);

/* Memory on the context's device (host memory for CPU backends), for tools, tests and bindings
 * that have no framework of their own; a forward never needs them. fa3c_device_copy is
 * synchronous with respect to the host and ordered after the work already submitted to ctx. */
typedef enum fa3c_copy_kind {
    FA3C_COPY_HOST_TO_DEVICE = 0,
    FA3C_COPY_DEVICE_TO_HOST = 1,
    FA3C_COPY_DEVICE_TO_DEVICE = 2,
} fa3c_copy_kind;

FA3C_API fa3c_status fa3c_device_alloc(fa3c_context *ctx, size_t bytes, void **ptr);
FA3C_API void        fa3c_device_free(fa3c_context *ctx, void *ptr); /* NULL is allowed */
FA3C_API fa3c_status fa3c_device_copy(fa3c_context *ctx, void *dst, const void *src, size_t bytes,
                                      fa3c_copy_kind kind);

/* ----------------------------------------------------------------------------------------- */
/* Forward */

/*
 * Arguments of FA3's `fwd` op, one for one, plus `sinks` and `check_inputs`.
 * All tensors must live on the context's device. Index tensors are int32 and contiguous.
 * "stride(-1)==1" = the last dimension must be contiguous; other strides are free.
 *
 * Modes. The call is *varlen* when any of cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k or
 * leftpad_k is given; *paged* when page_table is given; *appending* when k_new is given.
 *
 *  q            (b, s_q, h, d)            or (total_q, h, d) with cu_seqlens_q.  stride(-1)==1
 *  k            (b_k, s_k, h_k, d)        or (total_k, h_k, d) with cu_seqlens_k
 *               or (num_pages, page_size, h_k, d) with page_table.  stride(-1)==1
 *               In kvcache use this is the cache; appended keys are written into it.
 *  v            like k with dv in place of d.  stride(-1)==1
 *  k_new        (b, s_new, h_k, d) or (total_new, h_k, d) with cu_seqlens_k_new.  Optional.
 *               Written into k at rows seqused_k[b] ... seqused_k[b] + s_new_b - 1 of sequence b
 *               (after rotary), then attended. Requires v_new and seqused_k; s_q <= s_k.
 *  v_new        like k_new with dv.
 *  qv           (b, s_q, h, dv) or (total_q, h, dv). Optional (MLA absorbed attention):
 *               scores = q.k + qv.v. Requires d <= 64, dv >= 256, fp16/bf16.
 *  out          (b, s_q, h, dv) or (total_q, h, dv); dtype = input dtype (bf16 for fp8 inputs).
 *               Required (the caller allocates). stride(-1)==1. Rows past seqused_q are not written.
 *  softmax_lse  (b, h, s_q) or (h, total_q) with cu_seqlens_q; fp32; any strides. Optional.
 *               Natural log of the sum of exp(scores). Fully masked row: -inf (or the sink when
 *               sinks are given). No keys at all (total_k + total_new == 0): out = 0, lse = +inf.
 *  out_accum    (S, b, h, s_q, dv) or (S, h, total_q, dv); fp32; stride(-1)==1. Optional: when
 *               the resolved num_splits S > 1 and it is given, the per-split partial outputs are
 *               written there (each normalised within its split); splits a batch does not use
 *               hold out 0 / lse -inf. Without it a workspace is used.
 *  lse_accum    (S, b, h, s_q) or (S, h, total_q); fp32. Given iff out_accum is given.
 *  cu_seqlens_q, cu_seqlens_k, cu_seqlens_k_new   (b + 1,) int32, cumulative token offsets.
 *               cu_seqlens_k excludes page_table and kv_batch_idx. cu_seqlens_k_new is read
 *               only when k_new is given (as in FA3).
 *  seqused_q    (b,) int32: only this many queries of sequence i are used (start from cu_seqlens_q).
 *  seqused_k    (b,) int32: keys used per sequence (flash_attn_with_kvcache's cache_seqlens);
 *               counts the left padding.
 *  max_seqlen_q, max_seqlen_k   required with cu_seqlens_q / cu_seqlens_k; -1 = absent.
 *  page_table   (b_k, max_pages) int32, stride(-1)==1. Any page_size >= 1. s_k = max_pages * page_size.
 *  kv_batch_idx (b,) int32: the cache row (or page-table row) of each sequence (cache_batch_idx).
 *  leftpad_k    (b,) int32: keys of sequence i start at row leftpad_k[i] (cache_leftpad).
 *  rotary_cos, rotary_sin   (s_ro, rotary_dim / 2), dtype of q, contiguous. Requires k_new.
 *               rotary_dim % 16 == 0, rotary_dim <= d; paged: s_ro >= s_k. Rotates k_new at
 *               positions base + j and q at base + i when causal/local, else at base.
 *  seqlens_rotary (b,) int32: rotary base position; default seqused_k[i].
 *  q_descale, k_descale, v_descale   (b, h_k) fp32, any strides (0 = broadcast). fp8 only;
 *               ignored for other dtypes.
 *  sinks        (h,) fp32/fp16/bf16, contiguous. Optional learnable sink logit per q head:
 *               softmax denominator += exp(sink - max); the LSE includes it.
 */
typedef struct fa3c_fwd_args {
    fa3c_tensor q, k, v;
    fa3c_tensor k_new, v_new, qv;
    fa3c_tensor out, softmax_lse, out_accum, lse_accum;
    fa3c_tensor cu_seqlens_q, cu_seqlens_k, cu_seqlens_k_new;
    fa3c_tensor seqused_q, seqused_k;
    int64_t     max_seqlen_q, max_seqlen_k;
    fa3c_tensor page_table, kv_batch_idx, leftpad_k;
    fa3c_tensor rotary_cos, rotary_sin, seqlens_rotary;
    fa3c_tensor q_descale, k_descale, v_descale;
    double      softmax_scale;      /* NaN (the default): 1/sqrt(d) */
    int32_t     is_causal;          /* bottom-right aligned */
    int64_t     window_size_left;   /* < 0: unbounded */
    int64_t     window_size_right;  /* < 0: unbounded */
    int64_t     attention_chunk;    /* 0: off */
    double      softcap;            /* > 0: scores = softcap * tanh(scores / softcap) */
    int32_t     is_rotary_interleaved; /* pairs (0,1),(2,3)... ; else halves (GPT-NeoX) */
    fa3c_tensor scheduler_metadata; /* (n,) int32 from fa3c_get_scheduler_metadata. Optional */
    int32_t     num_splits;         /* <= 0: heuristic; 1: no split; > 1: upper bound (<= 256) */
    int32_t     pack_gqa;           /* -1: heuristic; 0/1 */
    int32_t     sm_margin;          /* SMs to leave free */
    fa3c_tensor sinks;
    int32_t     check_inputs;       /* -1: context default; 1: also validate index data
                                       (cu_seqlens monotone and in range, page ids, lengths
                                       within capacity, batch indices) */
} fa3c_fwd_args;

/* FA3's op defaults: no optional tensors, scale NaN, windows -1, chunk 0, softcap 0,
 * is_rotary_interleaved 0, num_splits 0, pack_gqa -1, sm_margin 0, max_seqlen_* -1,
 * check_inputs -1. */
FA3C_API void fa3c_fwd_args_init(fa3c_fwd_args *args);

/* What a forward with these arguments will do (after validation and heuristics). */
typedef struct fa3c_fwd_info {
    int32_t num_splits;       /* resolved static split count S (1: no split) */
    int32_t pack_gqa;         /* resolved */
    int32_t is_varlen;        /* dynamic (per-sequence) split counts from the scheduler */
    int32_t block_m, block_n; /* tile shape of the heuristics (FA3's sm90 table) */
    int64_t scheduler_metadata_size; /* int32 elements fa3c_get_scheduler_metadata would produce */
} fa3c_fwd_info;

/* Validates args exactly as fa3c_fwd does (outputs included) and reports the plan. Writes nothing
 * but *info. */
FA3C_API fa3c_status fa3c_fwd_query(fa3c_context *ctx, const fa3c_fwd_args *args, fa3c_fwd_info *info);

/* The forward. Writes out, softmax_lse (if given), out_accum/lse_accum (if given and S > 1) and,
 * when appending, the cache slots being appended. Nothing else.
 *
 * CUDA graphs (GPU contexts): a forward can be captured into a CUDA graph on the context's stream
 * and replayed with new contents in the same buffers, new lengths (seqused_k, cu_seqlens...)
 * included. A captured forward allocates and synchronises nothing, so the context's workspace must
 * already be large enough: run one forward of the largest shape the graphs will hold on the
 * context before capturing (the warm-up frameworks do anyway). A capture that would need a larger
 * workspace fails with FA3C_ERROR_UNSUPPORTED before launching anything. scheduler_metadata is
 * checked against the call's signature on the host outside capture (FA3C_ERROR_INVALID_ARGUMENT
 * naming the field); during capture only its size is checked there, and its signature is checked
 * on the device at every replay: a mismatch writes NaN into out and softmax_lse. Recompute it into
 * the same buffer, outside the graph, when the lengths change. The workspace belongs to the
 * context: graphs holding its forwards must run one at a time, ordered with its other work. */
FA3C_API fa3c_status fa3c_fwd(fa3c_context *ctx, const fa3c_fwd_args *args);

/* ----------------------------------------------------------------------------------------- */
/* Scheduler metadata (FA3 get_scheduler_metadata) */

/*
 * The precomputed schedule of a varlen / kvcache forward, reusable by every layer whose call has
 * the same signature. It records every argument it depends on; fa3c_fwd given metadata whose
 * recorded signature differs from its own arguments fails with FA3C_ERROR_INVALID_ARGUMENT naming
 * the field, and (for lengths readable on the host, or with check_inputs) when the length data
 * it was computed from (seqused_k, cu_seqlens_q, cu_seqlens_k_new, leftpad_k, seqused_q,
 * cu_seqlens_k) has changed.
 *
 *  seqused_k        (b,) int32, required (cache_seqlens)
 *  cu_seqlens_q, cu_seqlens_k, cu_seqlens_k_new   (b + 1,) int32, optional
 *  seqused_q, leftpad_k   (b,) int32, optional
 *  page_size        0: not paged
 *  max_seqlen_k     the forward's static s_k (k.shape[1], or max_pages * page_size)
 *  max_seqlen_k_new 0: the forward does not append; > 0: it appends k_new
 */
typedef struct fa3c_scheduler_args {
    int64_t     batch_size, max_seqlen_q, max_seqlen_k;
    int64_t     num_heads_q, num_heads_kv, headdim, headdim_v;
    fa3c_dtype  qkv_dtype;
    fa3c_tensor seqused_k, cu_seqlens_q, cu_seqlens_k, cu_seqlens_k_new, seqused_q, leftpad_k;
    int64_t     page_size;
    int64_t     max_seqlen_k_new;
    int32_t     is_causal;
    int64_t     window_size_left, window_size_right, attention_chunk;
    int32_t     has_softcap;
    int32_t     num_splits;
    int32_t     pack_gqa;   /* -1: heuristic */
    int32_t     sm_margin;
} fa3c_scheduler_args;

/* FA3's defaults: bf16, headdim_v = -1 (= headdim), page_size 0, windows -1, num_splits 0, pack_gqa -1. */
FA3C_API void        fa3c_scheduler_args_init(fa3c_scheduler_args *args);
/* Number of int32 elements of the metadata tensor for these arguments. */
FA3C_API fa3c_status fa3c_scheduler_metadata_size(fa3c_context *ctx, const fa3c_scheduler_args *args, int64_t *size);
/* Computes the metadata into out: (size,) int32, contiguous, on the context's device. */
FA3C_API fa3c_status fa3c_get_scheduler_metadata(fa3c_context *ctx, const fa3c_scheduler_args *args,
                                                 const fa3c_tensor *out);

/* ----------------------------------------------------------------------------------------- */
/* Combining partial results */

/*
 * FA3 fwd_combine: merge S split partials.
 *  out_partial  (S, b, s, h, dv) fp32, stride(-1)==1   (or (S, total, h, dv))
 *  lse_partial  (S, b, s, h) fp32, stride(-2)==1 (a transposed view of (S, b, h, s))  (or (S, total, h))
 *  out          (b, s, h, dv) fp32/fp16/bf16, stride(-1)==1
 *  lse          (b, s, h) fp32, any strides; may be NULL or absent
 * lse = log sum_s exp(lse_s); out = sum_s exp(lse_s - lse) out_s. Splits with lse -inf (or the
 * +inf "no keys" marker) contribute nothing; a row with no contributing split gets out 0 and
 * lse -inf. S <= 256.
 */
FA3C_API fa3c_status fa3c_combine(fa3c_context *ctx, const fa3c_tensor *out_partial, const fa3c_tensor *lse_partial,
                                  const fa3c_tensor *out, const fa3c_tensor *lse);

/*
 * Merge two attention states over disjoint key sets (cascade attention, context parallelism).
 *  out_a, out_b (n, h, dv) fp32/fp16/bf16, stride(-1)==1;  lse_a, lse_b (n, h) fp32
 *  out          (n, h, dv) fp32/fp16/bf16, stride(-1)==1;  lse (n, h) fp32, may be NULL/absent
 * Same rule as fa3c_combine with S = 2. out may alias out_a or out_b; lse may alias lse_a/lse_b.
 */
FA3C_API fa3c_status fa3c_merge_state(fa3c_context *ctx, const fa3c_tensor *out_a, const fa3c_tensor *lse_a,
                                      const fa3c_tensor *out_b, const fa3c_tensor *lse_b,
                                      const fa3c_tensor *out, const fa3c_tensor *lse);

#ifdef __cplusplus
}
#endif

#endif /* FA3C_H */
