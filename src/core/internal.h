/*
 * fa3c internal interfaces shared by core and backends. Not installed.
 * Shape legend as in include/fa3c.h (b, s_q, s_k, s_new, h, h_k, d, dv, S).
 */
#ifndef FA3C_INTERNAL_H
#define FA3C_INTERNAL_H

#include "fa3c.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------------------------------- */
/* Errors (error.c) */

/* Records a formatted message as this thread's fa3c_last_error() and returns status. */
fa3c_status fa3c_fail(fa3c_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clears this thread's last error (every public call starts with it). */
void fa3c_clear_error(void);

/* Propagate a non-OK status. */
#define FA3C_TRY(expr)                                                                                             \
    do {                                                                                                           \
        fa3c_status fa3c_try_st_ = (expr);                                                                         \
        if (fa3c_try_st_ != FA3C_OK) return fa3c_try_st_;                                                          \
    } while (0)

/* ----------------------------------------------------------------------------------------- */
/* Tensors and scalar types (tensor.c, dtype.c) */

static inline bool fa3c_present(const fa3c_tensor *t) { return t != NULL && t->dtype != FA3C_DTYPE_NONE; }
int64_t fa3c_numel(const fa3c_tensor *t);
/* Every element of a host tensor t (any rank, any strides) := value rounded to t's dtype. */
void fa3c_tensor_fill(const fa3c_tensor *t, float value);
/* Shape as "(2, 3, 4)" into buf (for messages); returns buf. */
const char *fa3c_shape_str(const fa3c_tensor *t, char *buf, size_t n);
/* Element offset of index idx[0..ndim). */
static inline int64_t fa3c_offset(const fa3c_tensor *t, const int64_t *idx) {
    int64_t o = 0;
    for (int i = 0; i < t->ndim; i++) o += idx[i] * t->stride[i];
    return o;
}

/* Scalar conversions, round-to-nearest-even, NaN preserved, e4m3 saturating to +-448 as
 * torch's float8_e4m3fn cast does for finite values (inf/NaN -> NaN). */
float    fa3c_bf16_to_f32(uint16_t x);
uint16_t fa3c_f32_to_bf16(float x);
float    fa3c_f16_to_f32(uint16_t x);
uint16_t fa3c_f32_to_f16(float x);
float    fa3c_e4m3_to_f32(uint8_t x);
uint8_t  fa3c_f32_to_e4m3(float x);
/* Element i (already offset, in elements) of a float-typed buffer, as f32. */
float fa3c_load(const void *base, fa3c_dtype dtype, int64_t i);
void  fa3c_store(void *base, fa3c_dtype dtype, int64_t i, float x);
/* x rounded to the precision of dtype (F32: unchanged). */
float fa3c_round(fa3c_dtype dtype, float x);

/* ----------------------------------------------------------------------------------------- */
/* Thread pool (threadpool.c). Owned by a context; run() is called by one thread at a time. */

typedef struct fa3c_threadpool fa3c_threadpool;
/* fn(arg, item, thread) for item in [0, n): items are claimed dynamically, one at a time. */
typedef void (*fa3c_task_fn)(void *arg, int64_t item, int thread);
fa3c_status fa3c_threadpool_create(int num_threads, fa3c_threadpool **pool);
void        fa3c_threadpool_destroy(fa3c_threadpool *pool);
int         fa3c_threadpool_size(const fa3c_threadpool *pool);
void        fa3c_threadpool_run(fa3c_threadpool *pool, int64_t n, fa3c_task_fn fn, void *arg);
/* Cores this process may run on (sched_getaffinity), at least 1. */
int fa3c_available_cores(void);
/* Work items numbered owner by owner: start (n,) non-decreasing, start[0] = 0, owner i has items
 * start[i] .. start[i + 1] - 1. The owner of item: the last i with start[i] <= item (owners
 * without items are skipped). Example: start {0, 0, 3}, item 0 -> 1; item 3 -> 2. */
int64_t fa3c_item_owner(const int64_t *start, int64_t n, int64_t item);

/* ----------------------------------------------------------------------------------------- */
/* The validated problem (validate.c) */

/*
 * Everything a backend needs about one forward, derived once from fa3c_fwd_args after every
 * check has passed. Windows are FA3-normalised: window_left/right < 0 mean unbounded, is_causal
 * and is_local follow FA3's mha_fwd (causal is local with window (-1, 0) and no chunk).
 */
typedef struct fa3c_problem {
    const fa3c_fwd_args *args;
    fa3c_dtype in_dtype, out_dtype;
    int64_t b, s_q, total_q, h, h_k, d, dv; /* s_q static (q.shape[1] or max_seqlen_q) */
    int64_t s_k, total_k, b_k;              /* s_k static (see header) */
    int64_t s_new, total_new;               /* s_new: k_new.shape[1] when batched; 0 if varlen/absent */
    int64_t page_size, num_pages, max_pages;/* page_size 1 and the others 0 when not paged */
    bool varlen_q, varlen_k, paged, append, varlen_new, is_varlen; /* is_varlen: FA3's dynamic-split condition */
    bool has_qv, has_sinks, has_rotary, is_fp8;
    float   scale;                          /* softmax scale */
    float   softcap;                        /* 0: off */
    bool    is_causal, is_local;
    int64_t window_left, window_right;      /* normalised; < 0 unbounded */
    int64_t chunk;                          /* attention_chunk, 0 off */
    int64_t rotary_dim, s_ro;
    bool    rotary_interleaved;
    bool    no_keys;                        /* total_k + total_new == 0: out 0, lse +inf */
    bool    check_inputs;
    /* heuristics (heuristics.c), resolved against the context's SM count */
    int32_t num_sm;                         /* context SMs - sm_margin, >= 1 */
    int32_t num_splits;                     /* static S, 1..256 */
    bool    pack_gqa;
    int32_t block_m, block_n;
} fa3c_problem;

/* Validates every argument (shapes, dtypes, strides, combinations; index data too when
 * check_inputs) and fills *p, heuristics included. Returns INVALID_ARGUMENT with a message
 * naming the argument on failure. */
fa3c_status fa3c_problem_init(const fa3c_context *ctx, const fa3c_fwd_args *args, fa3c_problem *p);

/* Per-sequence lengths as FA3's SeqlenInfoQKNewK computes them. Reads host-visible index data. */
typedef struct fa3c_seqlens {
    int64_t q_offset, seqlen_q;  /* rows of q/out: q_offset .. q_offset + seqlen_q - 1 (token index in
                                    varlen, row within batch b otherwise) */
    int64_t k_batch;             /* cache batch row / page-table row (kv_batch_idx applied) */
    int64_t k_offset;            /* first attended cache row: (cu_seqlens_k[b] if varlen_k) + leftpad */
    int64_t seqlen_k_og;         /* cached keys attended (before append), leftpad removed */
    int64_t new_offset, seqlen_new; /* k_new rows of this sequence: tokens new_offset.. of k_new when
                                       varlen_new; otherwise new_offset = 0 and the rows are k_new[b, j] */
    int64_t seqlen_k;            /* keys attended = seqlen_k_og + seqlen_new */
    int64_t rotary_base;         /* rotary position of the first appended key */
} fa3c_seqlens;
void fa3c_seqlens_get(const fa3c_problem *p, int64_t bi, fa3c_seqlens *sl);

/* Key-index range [lo, hi) visible to query row i (0-based within its sequence) under the
 * problem's causal/local/chunk mask; lo >= hi means fully masked. */
void fa3c_mask_range(const fa3c_problem *p, int64_t i, int64_t seqlen_q, int64_t seqlen_k, int64_t *lo,
                     int64_t *hi);

/* Host-memory layout of a forward's tensors (element offsets, strides honoured):
 *   cache row `row`, kv head hk of sequence sl in k or v: batched (b_k, s_k, h_k, *) [k_batch, row, hk];
 *     varlen (total_k, h_k, *) [row, hk] (row counts cu_seqlens_k); paged (num_pages, page_size,
 *     h_k, *) [page_table[k_batch, row / page_size], row % page_size, hk];
 *   token row `row`, head hq of q / qv / out: (b, s_q, h, *) [bi, row, hq]; varlen (total_q, h, *) [row, hq];
 *   head-major entry of softmax_lse (b, h, s_q) / (h, total_q); with lead = 1 the same entry of one
 *     split of lse_accum (S, b, h, s_q) / (S, h, total_q) or row of out_accum (S, b, h, s_q, dv) /
 *     (S, h, total_q, dv), without the split term. */
int64_t fa3c_cache_offset(const fa3c_problem *p, const fa3c_tensor *cache, const fa3c_seqlens *sl, int64_t row,
                          int64_t hk);
int64_t fa3c_token_offset(const fa3c_problem *p, const fa3c_tensor *t, int64_t bi, int64_t row, int64_t hq);
/* Row j of sequence bi, kv head hk, of k_new / v_new: (b, s_new, h_k, *) [bi, j, hk]; varlen
 * (total_new, h_k, *) [new_offset + j, hk]. */
int64_t fa3c_new_offset(const fa3c_problem *p, const fa3c_tensor *t, const fa3c_seqlens *sl, int64_t bi, int64_t j,
                        int64_t hk);
int64_t fa3c_head_major_offset(const fa3c_problem *p, const fa3c_tensor *t, int lead, int64_t bi, int64_t row,
                               int64_t hq);
/* Rotates x (d,) in place to position pos with rotary_cos/sin (s_ro, rotary_dim / 2): the first
 * rotary_dim dims, in pairs (2t, 2t+1) when interleaved, else (t, t + rotary_dim/2):
 * x0' = x0 c - x1 s, x1' = x0 s + x1 c. */
void fa3c_rotary(const fa3c_problem *p, int64_t pos, float *x);

/* Split s of n over the key blocks of a sequence: key range [lo, hi) (block_n granularity). */
void fa3c_split_range(int64_t seqlen_k, int32_t block_n, int32_t n, int32_t s, int64_t *lo, int64_t *hi);

/* ----------------------------------------------------------------------------------------- */
/* Heuristics (heuristics.c) — pure functions, FA3 hopper/heuristics.h + tile_size.h + flash_api.cpp */

typedef struct fa3c_tile { int32_t block_m, block_n; } fa3c_tile;
/* FA3's tile_size_fwd_sm90 (kBlockM x kBlockN) on (d, dv) — the tile-size table hook. */
fa3c_tile fa3c_tile_size_sm90(int64_t d, int64_t dv, bool is_causal, bool is_local, int elem_size,
                              bool v_colmajor, bool paged_non_tma, bool softcap);
/* FA3 num_splits_heuristic. */
int32_t fa3c_num_splits_heuristic(int64_t total_mblocks, int32_t num_sm, int64_t num_n_blocks,
                                  int64_t num_m_blocks, int64_t size_one_kv_head, bool is_causal_or_local,
                                  int32_t max_splits);
/* fa3c's own (not FA3's): split slots of the cuda decode shape in pieces mode, w bounding them. */
int64_t fa3c_decode_slots(int64_t tiles, int64_t w);
/* FA3 should_pack_gqa. */
bool fa3c_should_pack_gqa(bool varlen_q, int64_t seqlen_q, int64_t qhead_per_khead, int32_t block_m);

/* Inputs to the heuristics, shared by fwd and get_scheduler_metadata so they cannot disagree. */
typedef struct fa3c_heuristic_in {
    int64_t b, s_q, s_k, h, h_k, d, dv;
    int     elem_size;          /* 1 for fp8, else 2 */
    bool    is_causal, is_local, paged, has_leftpad, append, softcap, is_varlen;
    bool    varlen_q;           /* cu_seqlens_q or seqused_q given (FA3's packing input) */
    int64_t page_size;
    int64_t window_left, window_right;
    int64_t chunk;              /* attention_chunk, 0 off */
    int32_t num_sm;
    int32_t num_splits_req;     /* <= 0: heuristic */
    int32_t pack_gqa_req;       /* -1: heuristic */
} fa3c_heuristic_in;
typedef struct fa3c_heuristic_out {
    int32_t num_splits;
    bool    pack_gqa;
    bool    paged_non_tma;
    int32_t block_m, block_n;
} fa3c_heuristic_out;
void fa3c_heuristics_resolve(const fa3c_heuristic_in *in, fa3c_heuristic_out *out);
/* Resolves p's num_sm, num_splits, pack_gqa and tile from its derived fields and the requests in
 * p->args (num_splits, pack_gqa, sm_margin, leftpad_k, cu_seqlens_q, seqused_q): the one path of
 * fa3c_problem_init and get_scheduler_metadata, so the two cannot disagree. */
fa3c_status fa3c_problem_heuristics(const fa3c_context *ctx, fa3c_problem *p);

/* FA3's window normalisation (mha_fwd / get_scheduler_metadata), in place. */
void fa3c_normalize_window(int64_t s_q, int64_t s_k, int64_t d, bool paged, int64_t chunk, bool *is_causal,
                           int64_t *window_left, int64_t *window_right, bool *is_local);

/* ----------------------------------------------------------------------------------------- */
/* Scheduler metadata (sched_meta.c) */

/*
 * Layout, int32:
 *   [0, FA3C_SCHED_HEADER)            header: magic, layout version, signature fields, length hash
 *   then FA3's vectors, each b_r = round_up(b, 4) long:
 *     num_splits_dynamic[b_r], num_m_blocks[b_r], varlen_batch_idx[b_r] (if sort = !is_local),
 *     num_nheads_in_l2[b_r] (if causal or local)
 *   then one int: the tile semaphore.
 */
#define FA3C_SCHED_HEADER 32

typedef struct fa3c_sched_plan {   /* host view of one schedule */
    int64_t        b;
    const int32_t *num_splits_dynamic; /* (b,) splits used by each sequence, 1..p->num_splits */
} fa3c_sched_plan;

/* int32 elements of the metadata of a problem (header + vectors + semaphore). */
int64_t fa3c_sched_size(const fa3c_problem *p);
/* Computes the metadata of p on the host into meta[fa3c_sched_size(p)]: the signature header
 * and FA3's prepare_varlen_num_blocks vectors. Reads p's host-visible length tensors. */
void fa3c_sched_compute(const fa3c_problem *p, int32_t *meta);
/* Checks that meta[0..n) (host copy) was computed for a call with p's signature; when
 * check_lengths, also that the length data it was computed from is unchanged. On mismatch
 * INVALID_ARGUMENT naming the field, e.g. "scheduler_metadata: computed for num_heads_q=32,
 * this call has num_heads_q=16". */
fa3c_status fa3c_sched_verify(const fa3c_problem *p, const int32_t *meta, int64_t n, bool check_lengths);
/* The plan of a CPU forward: from args->scheduler_metadata after fa3c_sched_verify, or computed
 * into scratch[fa3c_sched_size(p)]. NULL plan->num_splits_dynamic when !p->is_varlen. */
fa3c_status fa3c_sched_plan_get(const fa3c_problem *p, int32_t *scratch, fa3c_sched_plan *plan);
/* Validates scheduler args and builds the equivalent shape-only problem: *fwd receives the
 * length tensors (no q/k/v), *p the derived fields and heuristics, exactly as fa3c_problem_init
 * would derive them for the matching forward. */
fa3c_status fa3c_problem_from_scheduler_args(const fa3c_context *ctx, const fa3c_scheduler_args *sa,
                                             fa3c_fwd_args *fwd, fa3c_problem *p);

/* ----------------------------------------------------------------------------------------- */
/* Backends (registry.c) */

typedef struct fa3c_backend fa3c_backend;

struct fa3c_context {
    const fa3c_backend *backend;
    fa3c_device_type    device_type;
    int32_t             device_index;
    int32_t             num_sm;        /* heuristic SM count (option override or device) */
    int32_t             num_threads;
    bool                check_inputs;
    void               *stream;
    fa3c_threadpool    *pool;          /* CPU backends */
    int32_t            *sched_scratch; /* CPU forwards: the host schedule, grown as needed */
    int64_t             sched_scratch_len;
    void               *backend_state; /* owned by the backend */
};

/* Which kernel runs a problem: answered by the backend's select(), which is also the
 * "supported?" query, so the two cannot drift. */
typedef struct fa3c_kernel_choice {
    int32_t     kernel;  /* backend-specific id */
    const char *name;
} fa3c_kernel_choice;

struct fa3c_backend {
    const char *name;
    const char *description;
    fa3c_device_type device_type;
    bool (*available)(void);
    fa3c_status (*context_init)(fa3c_context *ctx, const fa3c_context_options *opt);
    void (*context_free)(fa3c_context *ctx);
    /* OK and *choice filled, or UNSUPPORTED with a message. */
    fa3c_status (*select)(const fa3c_context *ctx, const fa3c_problem *p, fa3c_kernel_choice *choice);
    /* plan: per-sequence split counts (NULL when !p->is_varlen: every sequence uses p->num_splits).
     * CPU backends are called only with total_q > 0, h_k > 0 and keys to attend (core handles
     * FA3's empty cases on the host); GPU backends handle those cases themselves. */
    fa3c_status (*fwd)(fa3c_context *ctx, const fa3c_problem *p, const fa3c_sched_plan *plan,
                       const fa3c_kernel_choice *choice);
    /* Validated inputs; shapes canonicalised to 5-D partials (S, b, s, h, dv) / 4-D lse (S, b, s, h). */
    fa3c_status (*combine)(fa3c_context *ctx, const fa3c_tensor *out_partial, const fa3c_tensor *lse_partial,
                           const fa3c_tensor *out, const fa3c_tensor *lse);
    /* out_a/out_b/out (n, h, dv), lse_* (n, h); validated. */
    fa3c_status (*merge_state)(fa3c_context *ctx, const fa3c_tensor *out_a, const fa3c_tensor *lse_a,
                               const fa3c_tensor *out_b, const fa3c_tensor *lse_b, const fa3c_tensor *out,
                               const fa3c_tensor *lse);
    fa3c_status (*synchronize)(fa3c_context *ctx);
    /* Device memory (GPU backends; NULL for CPU backends, which use host memory). */
    fa3c_status (*device_alloc)(fa3c_context *ctx, size_t bytes, void **ptr);
    void (*device_free)(fa3c_context *ctx, void *ptr);
    fa3c_status (*device_copy)(fa3c_context *ctx, void *dst, const void *src, size_t bytes, fa3c_copy_kind kind);
};

extern const fa3c_backend fa3c_backend_cpu;
extern const fa3c_backend fa3c_backend_cpu_ref;
#ifdef FA3C_HAVE_CUDA_BACKEND
extern const fa3c_backend fa3c_backend_cuda;
#endif

/* The backend called name, or the best available one when name is NULL or "". */
fa3c_status fa3c_backend_find(const char *name, const fa3c_backend **backend);

/* CUDA device probe (src/cuda/cuda_device.cu; built when nvcc exists): number of CUDA devices the
 * runtime sees (0 without a driver or GPU), and a device's name and SM count. */
int         fa3c_cuda_device_count(void);
fa3c_status fa3c_cuda_device_info(int device, char *name, size_t name_len, int *num_sm, int *cc_major,
                                  int *cc_minor);

#ifdef __cplusplus
}
#endif

#endif /* FA3C_INTERNAL_H */
