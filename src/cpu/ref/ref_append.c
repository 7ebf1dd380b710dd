/*
 * cpu-ref append phase: k_new / v_new are written into the cache (rotary applied to k_new) before
 * any attention reads it, exactly as FA3's AppendKV does inside its kernel.
 */
#include "cpu/ref/ref.h"

#include <stdlib.h>

/* (x0, x1) rotated by the angle whose cosine and sine are (c, s). */
static void rotate_pair(float *x0, float *x1, float c, float s) {
    float a = *x0, b = *x1;
    *x0 = a * c - b * s;
    *x1 = a * s + b * c;
}

/* cos/sin (s_ro, rotary_dim / 2); x (d,), dims >= rotary_dim untouched. */
void ref_rotary(const fa3c_problem *p, int64_t pos, float *x) {
    const fa3c_tensor *cos_t = &p->args->rotary_cos, *sin_t = &p->args->rotary_sin;
    int64_t half = p->rotary_dim / 2;
    for (int64_t t = 0; t < half; t++) {
        float c = fa3c_load(cos_t->data, cos_t->dtype, pos * cos_t->stride[0] + t * cos_t->stride[1]);
        float s = fa3c_load(sin_t->data, sin_t->dtype, pos * sin_t->stride[0] + t * sin_t->stride[1]);
        if (p->rotary_interleaved) rotate_pair(&x[2 * t], &x[2 * t + 1], c, s);
        else rotate_pair(&x[t], &x[t + half], c, s);
    }
}

typedef struct append_job {
    const fa3c_problem *p;
    const fa3c_seqlens *sl; /* (b,) */
    float *scratch;         /* (threads, max(d, dv)) one row per thread */
    int64_t row_len;        /* max(d, dv) */
} append_job;

/* Element offset of row j of sequence bi, kv head hk, in k_new / v_new:
 * (b, s_new, h_k, d|dv) -> [bi, new_offset + j, hk];  varlen (total_new, h_k, d|dv) -> [new_offset + j, hk]. */
static int64_t new_offset(const fa3c_problem *p, const fa3c_tensor *t, const fa3c_seqlens *sl, int64_t bi,
                          int64_t j, int64_t hk) {
    int64_t row = sl->new_offset + j;
    if (p->varlen_new) return row * t->stride[0] + hk * t->stride[1];
    return bi * t->stride[0] + row * t->stride[1] + hk * t->stride[2];
}

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

        ref_load_vec(&a->k_new, new_offset(p, &a->k_new, sl, bi, j, hk), p->d, row);
        if (p->has_rotary) ref_rotary(p, sl->rotary_base + j, row);
        ref_store_vec(&a->k, ref_cache_offset(p, &a->k, sl, cache_row, hk), p->d, row);

        ref_load_vec(&a->v_new, new_offset(p, &a->v_new, sl, bi, j, hk), p->dv, row);
        ref_store_vec(&a->v, ref_cache_offset(p, &a->v, sl, cache_row, hk), p->dv, row);
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
