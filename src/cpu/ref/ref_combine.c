/*
 * cpu-ref combine: the one rule that merges partial attention results over disjoint key sets.
 * Used by the split-KV forward, fa3c_combine and fa3c_merge_state, so all three agree bitwise.
 */
#include "cpu/ref/ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/*
 * lse (S,), out (S, dv) -> dst (dv,), returns the combined lse.
 * Over the parts with a finite lse: M = max lse_s, L = sum exp(lse_s - M),
 * lse = M + log L, dst = sum exp(lse_s - M) / L * out_s. A part with lse -inf (no visible key) or
 * +inf (the "no keys" marker) contributes nothing; with no contributing part dst = 0, lse = -inf.
 */
float ref_combine_row(int64_t S, const float *lse, const float *out, int64_t dv, float *dst) {
    float M = -INFINITY;
    for (int64_t s = 0; s < S; s++)
        if (isfinite(lse[s])) M = fmaxf(M, lse[s]);
    memset(dst, 0, (size_t)dv * sizeof(float));
    if (M == -INFINITY) return -INFINITY;

    float L = 0.0f;
    for (int64_t s = 0; s < S; s++)
        if (isfinite(lse[s])) L += expf(lse[s] - M);
    for (int64_t s = 0; s < S; s++) {
        if (!isfinite(lse[s])) continue;
        float w = expf(lse[s] - M) / L;
        for (int64_t c = 0; c < dv; c++) dst[c] += w * out[s * dv + c];
    }
    return M + logf(L);
}

/* ---------------------------------------------------------------------------------------- */
/* fa3c_combine */

typedef struct combine_job {
    const fa3c_tensor *out_partial, *lse_partial, *out, *lse;
    int64_t S, b, s, h, dv;
    float  *scratch; /* (threads, S + S * dv + dv) */
} combine_job;

/* Item = row (bi, si, hi): gathers its S partials, combines, stores out (and lse). */
static void combine_item(void *arg, int64_t item, int thread) {
    const combine_job *job = arg;
    const fa3c_tensor *op = job->out_partial, *lp = job->lse_partial;
    int64_t S = job->S, dv = job->dv;
    int64_t hi = item % job->h, si = item / job->h % job->s, bi = item / (job->h * job->s);
    float *lse_parts = job->scratch + (int64_t)thread * (S + S * dv + dv); /* (S,) */
    float *out_parts = lse_parts + S;                                       /* (S, dv) */
    float *row = out_parts + S * dv;                                        /* (dv,) */

    for (int64_t k = 0; k < S; k++) {
        int64_t idx[5] = {k, bi, si, hi, 0};
        lse_parts[k] = fa3c_load(lp->data, lp->dtype, fa3c_offset(lp, idx));
        ref_load_vec(op, fa3c_offset(op, idx), dv, out_parts + k * dv);
    }
    float lse = ref_combine_row(S, lse_parts, out_parts, dv, row);

    int64_t idx[4] = {bi, si, hi, 0};
    ref_store_vec(job->out, fa3c_offset(job->out, idx), dv, row);
    if (fa3c_present(job->lse)) fa3c_store(job->lse->data, job->lse->dtype, fa3c_offset(job->lse, idx), lse);
}

/* out_partial (S, b, s, h, dv) fp32, lse_partial (S, b, s, h) fp32 -> out (b, s, h, dv),
 * lse (b, s, h) fp32 or NULL / absent. */
fa3c_status ref_combine(fa3c_context *ctx, const fa3c_tensor *out_partial, const fa3c_tensor *lse_partial,
                        const fa3c_tensor *out, const fa3c_tensor *lse) {
    combine_job job = {
        .out_partial = out_partial, .lse_partial = lse_partial, .out = out, .lse = lse,
        .S = out_partial->shape[0], .b = out_partial->shape[1], .s = out_partial->shape[2],
        .h = out_partial->shape[3], .dv = out_partial->shape[4],
    };
    int64_t rows = job.b * job.s * job.h;
    if (rows == 0) return FA3C_OK;
    job.scratch = ref_scratch_alloc(ctx, job.S + job.S * job.dv + job.dv);
    if (!job.scratch) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cpu-ref combine: out of memory");
    fa3c_threadpool_run(ctx->pool, rows, combine_item, &job);
    free(job.scratch);
    return FA3C_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* fa3c_merge_state */

typedef struct merge_job {
    const fa3c_tensor *out_a, *lse_a, *out_b, *lse_b, *out, *lse;
    int64_t h, dv;
    float  *scratch; /* (threads, 2 * dv + dv) */
} merge_job;

/* Item = row (ni, hi). Both inputs are read before anything is written, so out may alias
 * out_a / out_b and lse may alias lse_a / lse_b. */
static void merge_item(void *arg, int64_t item, int thread) {
    const merge_job *job = arg;
    int64_t dv = job->dv;
    int64_t idx[3] = {item / job->h, item % job->h, 0};
    float *out_parts = job->scratch + (int64_t)thread * 3 * dv; /* (2, dv) */
    float *row = out_parts + 2 * dv;                           /* (dv,) */
    float lse_parts[2] = {
        fa3c_load(job->lse_a->data, job->lse_a->dtype, fa3c_offset(job->lse_a, idx)),
        fa3c_load(job->lse_b->data, job->lse_b->dtype, fa3c_offset(job->lse_b, idx)),
    };
    ref_load_vec(job->out_a, fa3c_offset(job->out_a, idx), dv, out_parts);
    ref_load_vec(job->out_b, fa3c_offset(job->out_b, idx), dv, out_parts + dv);

    float lse = ref_combine_row(2, lse_parts, out_parts, dv, row);

    ref_store_vec(job->out, fa3c_offset(job->out, idx), dv, row);
    if (fa3c_present(job->lse)) fa3c_store(job->lse->data, job->lse->dtype, fa3c_offset(job->lse, idx), lse);
}

/* out_a, out_b, out (n, h, dv); lse_a, lse_b (n, h) fp32; lse (n, h) fp32 or NULL / absent. */
fa3c_status ref_merge_state(fa3c_context *ctx, const fa3c_tensor *out_a, const fa3c_tensor *lse_a,
                            const fa3c_tensor *out_b, const fa3c_tensor *lse_b, const fa3c_tensor *out,
                            const fa3c_tensor *lse) {
    merge_job job = {
        .out_a = out_a, .lse_a = lse_a, .out_b = out_b, .lse_b = lse_b, .out = out, .lse = lse,
        .h = out->shape[1], .dv = out->shape[2],
    };
    int64_t rows = out->shape[0] * job.h;
    if (rows == 0) return FA3C_OK;
    job.scratch = ref_scratch_alloc(ctx, 3 * job.dv);
    if (!job.scratch) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cpu-ref merge_state: out of memory");
    fa3c_threadpool_run(ctx->pool, rows, merge_item, &job);
    free(job.scratch);
    return FA3C_OK;
}
