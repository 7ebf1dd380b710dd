/*
 * cpu: the append phase (k_new / v_new written into the cache before any attention reads it,
 * rotary applied to k_new) and the two helpers it shares with attention: cache addressing and
 * the rotary rotation.
 */
#include "cpu/cpu.h"

#include <string.h>

typedef struct append_job {
    const fa3c_problem *p;
    const fa3c_seqlens *sl;    /* (b,) */
    const cpu_kernels  *k;
} append_job;

/* Item (bi, hk): cache rows k_offset + seqlen_k_og + j, j < seqlen_new. Without rotary the rows
 * are copied bit for bit; with it the rotated key is rounded once, to the cache dtype. */
static void append_item(void *arg, int64_t item, int thread) {
    (void)thread;
    const append_job *job = arg;
    const fa3c_problem *p = job->p;
    const fa3c_fwd_args *a = p->args;
    int64_t bi = item / p->h_k, hk = item % p->h_k;
    const fa3c_seqlens *sl = &job->sl[bi];
    int64_t es = (int64_t)fa3c_dtype_size(p->in_dtype);
    float row[256] __attribute__((aligned(64))); /* (d,), d <= 256 */
    for (int64_t j = 0; j < sl->seqlen_new; j++) {
        int64_t cache_row = sl->k_offset + sl->seqlen_k_og + j;
        const char *kn = (const char *)a->k_new.data + fa3c_new_offset(p, &a->k_new, sl, bi, j, hk) * es;
        char *kc = (char *)a->k.data + fa3c_cache_offset(p, &a->k, sl, cache_row, hk) * es;
        if (p->has_rotary) {
            job->k->row_to_f32(kn, p->in_dtype, p->d, row);
            fa3c_rotary(p, sl->rotary_base + j, row);
            if (p->in_dtype == FA3C_DTYPE_E4M3)
                for (int64_t c = 0; c < p->d; c++) ((uint8_t *)kc)[c] = fa3c_f32_to_e4m3(row[c]);
            else job->k->row_from_f32(row, 1.0f, p->d, p->in_dtype, kc);
        } else {
            memcpy(kc, kn, (size_t)p->d * es);
        }
        const char *vn = (const char *)a->v_new.data + fa3c_new_offset(p, &a->v_new, sl, bi, j, hk) * es;
        char *vc = (char *)a->v.data + fa3c_cache_offset(p, &a->v, sl, cache_row, hk) * es;
        memcpy(vc, vn, (size_t)p->dv * es);
    }
}

void cpu_append(fa3c_context *ctx, const fa3c_problem *p, const fa3c_seqlens *sl) {
    append_job job = {.p = p, .sl = sl, .k = &cpu_state_of(ctx)->k};
    fa3c_threadpool_run(ctx->pool, p->b * p->h_k, append_item, &job);
}
