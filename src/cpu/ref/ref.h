/*
 * cpu-ref: the scalar reference backend, the oracle every other backend is tested against.
 * Private to src/cpu/ref/. Shape legend as in include/fa3c.h (b, s_q, s_k, s_new, h, h_k, d, dv, S).
 *
 * Numerics: inputs are read from their dtype into fp32 and everything is computed in fp32 with
 * plain sequential sums (FA3's attention_ref(upcast=True)). Each output row is computed by one
 * work item from start to end, so results do not depend on the number of threads.
 */
#ifndef FA3C_REF_H
#define FA3C_REF_H

#include "core/internal.h"

#include <stdlib.h>

/* dst (n,) = elements off, off + stride(-1), ... of t, as fp32. */
static inline void ref_load_vec(const fa3c_tensor *t, int64_t off, int64_t n, float *dst) {
    int64_t step = t->stride[t->ndim - 1];
    for (int64_t c = 0; c < n; c++) dst[c] = fa3c_load(t->data, t->dtype, off + c * step);
}

/* src (n,) rounded to t's dtype, into elements off, off + stride(-1), ... of t. */
static inline void ref_store_vec(const fa3c_tensor *t, int64_t off, int64_t n, const float *src) {
    int64_t step = t->stride[t->ndim - 1];
    for (int64_t c = 0; c < n; c++) fa3c_store(t->data, t->dtype, off + c * step, src[c]);
}

/* Scratch of per_thread floats for each thread of ctx's pool (thread t owns
 * [t * per_thread, (t + 1) * per_thread)); free() it. Never a zero-byte request, so NULL always
 * means out of memory. */
static inline float *ref_scratch_alloc(const fa3c_context *ctx, int64_t per_thread) {
    size_t threads = (size_t)fa3c_threadpool_size(ctx->pool);
    return malloc(threads * (size_t)per_thread * sizeof(float) + sizeof(float));
}

/* Append phase: writes rotated k_new and v_new of every sequence into its cache rows.
 *   sl (b,) the lengths of each sequence. */
fa3c_status ref_append(fa3c_context *ctx, const fa3c_problem *p, const fa3c_seqlens *sl);

/* Attention phase: out, softmax_lse and (when split and given) out_accum / lse_accum.
 *   sl (b,) the lengths of each sequence; plan as given to the backend's fwd. */
fa3c_status ref_attention(fa3c_context *ctx, const fa3c_problem *p, const fa3c_sched_plan *plan,
                          const fa3c_seqlens *sl);

/* Combines the S partial results of one row: lse (S,), out (S, dv) -> dst (dv,); returns the
 * combined lse. The one combine rule of fa3c (splits, fa3c_combine, fa3c_merge_state). */
float ref_combine_row(int64_t S, const float *lse, const float *out, int64_t dv, float *dst);

/* The backend's combine and merge_state (shapes as in struct fa3c_backend). */
fa3c_status ref_combine(fa3c_context *ctx, const fa3c_tensor *out_partial, const fa3c_tensor *lse_partial,
                        const fa3c_tensor *out, const fa3c_tensor *lse);
fa3c_status ref_merge_state(fa3c_context *ctx, const fa3c_tensor *out_a, const fa3c_tensor *lse_a,
                            const fa3c_tensor *out_b, const fa3c_tensor *lse_b, const fa3c_tensor *out,
                            const fa3c_tensor *lse);

#endif /* FA3C_REF_H */
