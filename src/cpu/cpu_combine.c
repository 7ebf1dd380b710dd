/*
 * cpu: the one combine rule (cpu_combine_row) and the backend's fa3c_combine / fa3c_merge_state.
 * The split-KV forward combines with the same function, so a forward's out equals
 * fa3c_combine of its out_accum bit for bit on this backend.
 */
#include "cpu/cpu.h"

#include <math.h>
#include <string.h>

float cpu_combine_row(int64_t n, const float *lse, const float *out, int64_t stride, int64_t dv, float *dst) {
    float M = -INFINITY;
    for (int64_t s = 0; s < n; s++)
        if (isfinite(lse[s])) M = fmaxf(M, lse[s]);
    memset(dst, 0, (size_t)dv * sizeof(float));
    if (M == -INFINITY) return -INFINITY;
    float L = 0.0f;
    for (int64_t s = 0; s < n; s++)
        if (isfinite(lse[s])) L += expf(lse[s] - M);
    for (int64_t s = 0; s < n; s++) {
        if (!isfinite(lse[s])) continue;
        float w = expf(lse[s] - M) / L;
        const float *os = out + s * stride;
        for (int64_t c = 0; c < dv; c++) dst[c] += w * os[c];
    }
    return M + logf(L);
}

/* ---------------------------------------------------------------------------------------- */
/* fa3c_combine */

typedef struct combine_job {
    const cpu_kernels *k;
    const fa3c_tensor *out_partial, *lse_partial, *out, *lse;
    int64_t S, b, s, h, dv;
    float  *scratch; /* (threads, S + dv) */
} combine_job;

/* Item = row (bi, si, hi): out_partial (S, b, s, h, dv) fp32 (stride(-1) 1), lse_partial
 * (S, b, s, h) fp32 -> out (b, s, h, dv), lse (b, s, h). */
static void combine_item(void *arg, int64_t item, int thread) {
    const combine_job *job = arg;
    const fa3c_tensor *op = job->out_partial, *lp = job->lse_partial, *out = job->out;
    int64_t hi = item % job->h, si = item / job->h % job->s, bi = item / (job->h * job->s);
    float *lse_s = job->scratch + (int64_t)thread * (job->S + job->dv), *row = lse_s + job->S;
    int64_t idx[5] = {0, bi, si, hi, 0};
    for (int64_t s = 0; s < job->S; s++) {
        idx[0] = s;
        lse_s[s] = ((const float *)lp->data)[fa3c_offset(lp, idx)];
    }
    idx[0] = 0;
    const float *out0 = (const float *)op->data + fa3c_offset(op, idx);
    float lse = cpu_combine_row(job->S, lse_s, out0, op->stride[0], job->dv, row);
    int64_t oidx[4] = {bi, si, hi, 0};
    char *dst = (char *)out->data + fa3c_offset(out, oidx) * (int64_t)fa3c_dtype_size(out->dtype);
    if (out->dtype == FA3C_DTYPE_F32) memcpy(dst, row, (size_t)job->dv * sizeof(float));
    else if (job->dv % 8 == 0) job->k->row_from_f32(row, 1.0f, job->dv, out->dtype, dst);
    else
        for (int64_t c = 0; c < job->dv; c++) fa3c_store(dst, out->dtype, c, row[c]);
    if (job->lse) ((float *)job->lse->data)[fa3c_offset(job->lse, oidx)] = lse;
}

fa3c_status cpu_combine(fa3c_context *ctx, const fa3c_tensor *out_partial, const fa3c_tensor *lse_partial,
                        const fa3c_tensor *out, const fa3c_tensor *lse) {
    combine_job job = {
        .k = &cpu_state_of(ctx)->k, .out_partial = out_partial, .lse_partial = lse_partial, .out = out,
        .lse = lse, .S = out_partial->shape[0], .b = out_partial->shape[1], .s = out_partial->shape[2],
        .h = out_partial->shape[3], .dv = out_partial->shape[4],
    };
    int64_t rows = job.b * job.s * job.h;
    if (rows == 0) return FA3C_OK;
    size_t threads = (size_t)fa3c_threadpool_size(ctx->pool);
    job.scratch = cpu_workspace(ctx, threads * (size_t)(job.S + job.dv) * sizeof(float));
    if (!job.scratch) return FA3C_ERROR_OUT_OF_MEMORY;
    fa3c_threadpool_run(ctx->pool, rows, combine_item, &job);
    return FA3C_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* fa3c_merge_state */

typedef struct merge_job {
    const fa3c_tensor *out_a, *lse_a, *out_b, *lse_b, *out, *lse;
    int64_t h, dv;
    float  *scratch; /* (threads, 3 * dv) */
} merge_job;

/* Row (n, h) of a (n, h, dv) tensor of any float dtype, as fp32. */
static void load_row(const fa3c_tensor *t, const int64_t *idx, int64_t dv, float *dst) {
    int64_t off = fa3c_offset(t, idx);
    for (int64_t c = 0; c < dv; c++) dst[c] = fa3c_load(t->data, t->dtype, off + c);
}

/* Item = row (ni, hi). Both inputs are read before anything is written, so out may alias
 * out_a / out_b and lse may alias lse_a / lse_b. */
static void merge_item(void *arg, int64_t item, int thread) {
    const merge_job *job = arg;
    int64_t dv = job->dv, idx[3] = {item / job->h, item % job->h, 0};
    float *parts = job->scratch + (int64_t)thread * 3 * dv, *row = parts + 2 * dv; /* (2, dv), (dv,) */
    float lse_s[2] = {((const float *)job->lse_a->data)[fa3c_offset(job->lse_a, idx)],
                      ((const float *)job->lse_b->data)[fa3c_offset(job->lse_b, idx)]};
    load_row(job->out_a, idx, dv, parts);
    load_row(job->out_b, idx, dv, parts + dv);
    float lse = cpu_combine_row(2, lse_s, parts, dv, dv, row);
    int64_t off = fa3c_offset(job->out, idx);
    for (int64_t c = 0; c < dv; c++) fa3c_store(job->out->data, job->out->dtype, off + c, row[c]);
    if (job->lse) ((float *)job->lse->data)[fa3c_offset(job->lse, idx)] = lse;
}

fa3c_status cpu_merge_state(fa3c_context *ctx, const fa3c_tensor *out_a, const fa3c_tensor *lse_a,
                            const fa3c_tensor *out_b, const fa3c_tensor *lse_b, const fa3c_tensor *out,
                            const fa3c_tensor *lse) {
    merge_job job = {.out_a = out_a, .lse_a = lse_a, .out_b = out_b, .lse_b = lse_b, .out = out, .lse = lse,
                     .h = out->shape[1], .dv = out->shape[2]};
    int64_t rows = out->shape[0] * job.h;
    if (rows == 0) return FA3C_OK;
    job.scratch = cpu_workspace(ctx, (size_t)fa3c_threadpool_size(ctx->pool) * (size_t)(3 * job.dv) * sizeof(float));
    if (!job.scratch) return FA3C_ERROR_OUT_OF_MEMORY;
    fa3c_threadpool_run(ctx->pool, rows, merge_item, &job);
    return FA3C_OK;
}
