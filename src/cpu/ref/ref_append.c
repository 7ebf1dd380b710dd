/*
 * cpu-ref append phase: k_new / v_new are written into the cache (rotary applied to k_new) before
 * any attention reads it, exactly as FA3's AppendKV does inside its kernel.
 */
#include "cpu/ref/ref.h"

#include <stdlib.h>

typedef struct append_job {
    const fa3c_problem *p;
    const fa3c_seqlens *sl; /* (b,) */
    float *scratch;         /* (threads, max(d, dv)) one row per thread */
    int64_t row_len;        /* max(d, dv) */
} append_job;

/* Item (bi, hk): cache rows k_offset + seqlen_k_og + j, j < seqlen_new, of sequence bi, kv head hk.
 * The rotated key is rounded once, to the cache dtype, by the store. */
static void append_item(void *arg, int64_t item, int thread) {
    const append_job *job = arg;
    const fa3c_problem *p = job->p;
    const fa3c_fwd_args *a = p->args;
    int64_t bi = item / p->h_k, hk = item % p->h_k;
    const fa3c_seqlens *sl = &job->sl[bi];
    float *row = job->scratch + (int64_t)thread * job->row_len;
    for (int64_t j = 0; j < sl->seqlen_new; j++) {
        int64_t cache_row = sl->k_offset + sl->seqlen_k_og + j;

        ref_load_vec(&a->k_new, fa3c_new_offset(p, &a->k_new, sl, bi, j, hk), p->d, row);
        if (p->has_rotary) fa3c_rotary(p, sl->rotary_base + j, row);
        ref_store_vec(&a->k, fa3c_cache_offset(p, &a->k, sl, cache_row, hk), p->d, row);

        ref_load_vec(&a->v_new, fa3c_new_offset(p, &a->v_new, sl, bi, j, hk), p->dv, row);
        ref_store_vec(&a->v, fa3c_cache_offset(p, &a->v, sl, cache_row, hk), p->dv, row);
    }
}

fa3c_status ref_append(fa3c_context *ctx, const fa3c_problem *p, const fa3c_seqlens *sl) {
    append_job job = {.p = p, .sl = sl, .row_len = p->d > p->dv ? p->d : p->dv};
    job.scratch = ref_scratch_alloc(ctx, job.row_len);
    if (!job.scratch) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cpu-ref append: out of memory");
    fa3c_threadpool_run(ctx->pool, p->b * p->h_k, append_item, &job);
    free(job.scratch);
    return FA3C_OK;
}
