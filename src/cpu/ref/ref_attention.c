/*
 * cpu-ref attention phase: for every query row, softmax attention over its visible keys, one
 * partial result per KV split, then the combine — FA3's forward math (fp32, attention_ref(upcast)),
 * written out as plainly as possible. For query row i of sequence b, q head hq, kv head hk:
 *   score_j = scale * (qd*kd * (q_i . k_j) + (qv_i . v_j)), softcapped;  j in the row's visible
 *   range [lo, hi) intersected with the split's key range;  m = max(score_j, sink);
 *   l = sum exp(score_j - m) + exp(sink - m);  out = vd * sum exp(score_j - m) v_j / l;
 *   lse = m + log l.  The sink enters split 0 only; no key and no sink: out 0, lse -inf.
 */
#include "cpu/ref/ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Query rows per work item: enough to amortise the item claim, small enough to balance. */
#define ROWS_PER_ITEM 16

typedef struct attn_job {
    const fa3c_problem    *p;
    const fa3c_sched_plan *plan;
    const fa3c_seqlens    *sl;         /* (b,) */
    int64_t               *item_start; /* (b + 1,) first work item of each sequence */
    float                 *scratch;    /* (threads, per_thread) */
    int64_t                per_thread, max_seqlen_k;
} attn_job;

/* One thread's buffers for one query row. */
typedef struct row_buffers {
    float *q;        /* (d,) query row, rotated and rounded */
    float *qv;       /* (dv,) qv row */
    float *kv;       /* (max(d, dv),) one key or value row */
    float *scores;   /* (max seqlen_k,) indexed by key */
    float *part_lse; /* (S,) */
    float *part_out; /* (S, dv) */
    float *out;      /* (dv,) final row */
} row_buffers;

/* What is fixed for one (sequence, q head). */
typedef struct head_ctx {
    const fa3c_problem *p;
    const fa3c_seqlens *sl;
    int64_t             bi, hq, hk;
    float               qk_descale, v_descale; /* fp8: qd * kd and vd; else 1 */
    float               sink;                  /* sink logit of hq, -inf without sinks */
    int32_t             n_splits;              /* splits this sequence uses, <= p->num_splits */
} head_ctx;

/* a (n,) . b (n,), summed in order. */
static float dot(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
    for (int64_t c = 0; c < n; c++) s += a[c] * b[c];
    return s;
}

/* descale[bi, hk] of a (b, h_k) fp32 tensor; 1 when not fp8 or absent. */
static float descale(const fa3c_problem *p, const fa3c_tensor *t, int64_t bi, int64_t hk) {
    if (!p->is_fp8 || !fa3c_present(t)) return 1.0f;
    return fa3c_load(t->data, t->dtype, bi * t->stride[0] + hk * t->stride[1]);
}

/* rb->q (d,) and rb->qv (dv,) of query row i. With rotary, q is rotated at rotary_base + i
 * (causal / local) or rotary_base, then rounded to the input dtype as FA3 does. */
static void load_query(const head_ctx *hc, int64_t i, row_buffers *rb) {
    const fa3c_problem *p = hc->p;
    const fa3c_fwd_args *a = p->args;
    int64_t row = hc->sl->q_offset + i;
    ref_load_vec(&a->q, fa3c_token_offset(p, &a->q, hc->bi, row, hc->hq), p->d, rb->q);
    if (p->has_rotary) {
        int64_t pos = hc->sl->rotary_base + (p->is_causal || p->is_local ? i : 0);
        fa3c_rotary(p, pos, rb->q);
        for (int64_t c = 0; c < p->d; c++) rb->q[c] = fa3c_round(p->in_dtype, rb->q[c]);
    }
    if (p->has_qv) ref_load_vec(&a->qv, fa3c_token_offset(p, &a->qv, hc->bi, row, hc->hq), p->dv, rb->qv);
}

/* rb->scores[j] for keys j in [lo, hi): scale * (qd*kd * q.k_j + qv.v_j), then softcap. */
static void compute_scores(const head_ctx *hc, int64_t lo, int64_t hi, row_buffers *rb) {
    const fa3c_problem *p = hc->p;
    const fa3c_fwd_args *a = p->args;
    for (int64_t j = lo; j < hi; j++) {
        int64_t cache_row = hc->sl->k_offset + j;
        ref_load_vec(&a->k, fa3c_cache_offset(p, &a->k, hc->sl, cache_row, hc->hk), p->d, rb->kv);
        float s = hc->qk_descale * dot(rb->q, rb->kv, p->d);
        if (p->has_qv) {
            ref_load_vec(&a->v, fa3c_cache_offset(p, &a->v, hc->sl, cache_row, hc->hk), p->dv, rb->kv);
            s += dot(rb->qv, rb->kv, p->dv);
        }
        s *= p->scale;
        if (p->softcap > 0.0f) s = p->softcap * tanhf(s / p->softcap);
        rb->scores[j] = s;
    }
}

/* Softmax attention over keys [lo, hi) with an extra sink logit (-inf: none), normalised within
 * this key set: out (dv,); returns its lse (-inf when there is neither a key nor a sink). */
static float softmax_split(const head_ctx *hc, int64_t lo, int64_t hi, float sink, row_buffers *rb, float *out) {
    const fa3c_problem *p = hc->p;
    const fa3c_tensor *v = &p->args->v;
    float m = sink;
    for (int64_t j = lo; j < hi; j++) m = fmaxf(m, rb->scores[j]);
    memset(out, 0, (size_t)p->dv * sizeof(float));
    if (m == -INFINITY) return -INFINITY;

    float l = 0.0f;
    for (int64_t j = lo; j < hi; j++) {
        float w = expf(rb->scores[j] - m);
        l += w;
        ref_load_vec(v, fa3c_cache_offset(p, v, hc->sl, hc->sl->k_offset + j, hc->hk), p->dv, rb->kv);
        for (int64_t c = 0; c < p->dv; c++) out[c] += w * rb->kv[c];
    }
    l += expf(sink - m);
    for (int64_t c = 0; c < p->dv; c++) out[c] = hc->v_descale * out[c] / l;
    return m + logf(l);
}

/* rb->part_out (S, dv) / rb->part_lse (S,) of token row `row` into out_accum (S, b, h, s_q, dv)
 * / lse_accum (S, b, h, s_q), or varlen (S, h, total_q, dv) / (S, h, total_q). */
static void store_partials(const head_ctx *hc, int64_t row, const row_buffers *rb) {
    const fa3c_problem *p = hc->p;
    const fa3c_tensor *oa = &p->args->out_accum, *la = &p->args->lse_accum;
    int64_t o_off = fa3c_head_major_offset(p, oa, 1, hc->bi, row, hc->hq);
    int64_t l_off = fa3c_head_major_offset(p, la, 1, hc->bi, row, hc->hq);
    for (int64_t s = 0; s < p->num_splits; s++) {
        ref_store_vec(oa, s * oa->stride[0] + o_off, p->dv, rb->part_out + s * p->dv);
        fa3c_store(la->data, la->dtype, s * la->stride[0] + l_off, rb->part_lse[s]);
    }
}

/* Query row i of (hc->bi, hc->hq): partials of every split, then out / lse (and the accum
 * tensors when split). Splits >= n_splits hold out 0 / lse -inf. */
static void attend_row(const head_ctx *hc, int64_t i, row_buffers *rb) {
    const fa3c_problem *p = hc->p;
    const fa3c_fwd_args *a = p->args;
    const fa3c_seqlens *sl = hc->sl;
    int64_t S = p->num_splits, dv = p->dv, row = sl->q_offset + i;

    load_query(hc, i, rb);
    int64_t lo, hi;
    fa3c_mask_range(p, i, sl->seqlen_q, sl->seqlen_k, &lo, &hi);
    compute_scores(hc, lo, hi, rb);

    for (int32_t s = 0; s < S; s++) {
        float *out_s = rb->part_out + s * dv;
        if (s >= hc->n_splits) {
            memset(out_s, 0, (size_t)dv * sizeof(float));
            rb->part_lse[s] = -INFINITY;
            continue;
        }
        int64_t split_lo, split_hi;
        fa3c_split_range(sl->seqlen_k, p->block_n, hc->n_splits, s, &split_lo, &split_hi);
        int64_t key_lo = lo > split_lo ? lo : split_lo, key_hi = hi < split_hi ? hi : split_hi;
        rb->part_lse[s] = softmax_split(hc, key_lo, key_hi, s == 0 ? hc->sink : -INFINITY, rb, out_s);
    }

    float lse = rb->part_lse[0];
    const float *out = rb->part_out;
    if (S > 1) {
        if (fa3c_present(&a->out_accum)) store_partials(hc, row, rb);
        lse = ref_combine_row(S, rb->part_lse, rb->part_out, dv, rb->out);
        out = rb->out;
    }
    ref_store_vec(&a->out, fa3c_token_offset(p, &a->out, hc->bi, row, hc->hq), dv, out);
    if (fa3c_present(&a->softmax_lse)) {
        const fa3c_tensor *l = &a->softmax_lse;
        fa3c_store(l->data, l->dtype, fa3c_head_major_offset(p, l, 0, hc->bi, row, hc->hq), lse);
    }
}

/* Item: up to ROWS_PER_ITEM query rows of one (sequence, q head). Items are numbered sequence
 * by sequence (item_start), then head, then row block. */
static void attention_item(void *arg, int64_t item, int thread) {
    const attn_job *job = arg;
    const fa3c_problem *p = job->p;

    const int64_t bi = fa3c_item_owner(job->item_start, p->b, item);
    const fa3c_seqlens *sl = &job->sl[bi];
    int64_t blocks = (sl->seqlen_q + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM;
    int64_t hq = (item - job->item_start[bi]) / blocks, block = (item - job->item_start[bi]) % blocks;

    const fa3c_fwd_args *a = p->args;
    int64_t hk = hq / (p->h / p->h_k);
    head_ctx hc = {
        .p = p, .sl = sl, .bi = bi, .hq = hq, .hk = hk,
        .qk_descale = descale(p, &a->q_descale, bi, hk) * descale(p, &a->k_descale, bi, hk),
        .v_descale = descale(p, &a->v_descale, bi, hk),
        .sink = p->has_sinks ? fa3c_load(a->sinks.data, a->sinks.dtype, hq * a->sinks.stride[0]) : -INFINITY,
        .n_splits = job->plan && job->plan->num_splits_dynamic ? job->plan->num_splits_dynamic[bi] : p->num_splits,
    };

    float *ws = job->scratch + (int64_t)thread * job->per_thread;
    int64_t kv_len = p->d > p->dv ? p->d : p->dv;
    row_buffers rb;
    rb.q = ws;
    rb.qv = rb.q + p->d;
    rb.kv = rb.qv + p->dv;
    rb.scores = rb.kv + kv_len;
    rb.part_lse = rb.scores + job->max_seqlen_k;
    rb.part_out = rb.part_lse + p->num_splits;
    rb.out = rb.part_out + p->num_splits * p->dv;

    int64_t i_end = (block + 1) * ROWS_PER_ITEM < sl->seqlen_q ? (block + 1) * ROWS_PER_ITEM : sl->seqlen_q;
    for (int64_t i = block * ROWS_PER_ITEM; i < i_end; i++) attend_row(&hc, i, &rb);
}

fa3c_status ref_attention(fa3c_context *ctx, const fa3c_problem *p, const fa3c_sched_plan *plan,
                          const fa3c_seqlens *sl) {
    attn_job job = {.p = p, .plan = plan, .sl = sl};
    job.item_start = malloc((size_t)(p->b + 1) * sizeof(int64_t));
    if (!job.item_start) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cpu-ref attention: out of memory");
    job.item_start[0] = 0;
    for (int64_t bi = 0; bi < p->b; bi++) {
        int64_t blocks = (sl[bi].seqlen_q + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM;
        job.item_start[bi + 1] = job.item_start[bi] + p->h * blocks;
        if (sl[bi].seqlen_k > job.max_seqlen_k) job.max_seqlen_k = sl[bi].seqlen_k;
    }

    int64_t kv_len = p->d > p->dv ? p->d : p->dv;
    job.per_thread = p->d + p->dv + kv_len + job.max_seqlen_k + p->num_splits * (1 + p->dv) + p->dv;
    job.scratch = ref_scratch_alloc(ctx, job.per_thread);
    if (!job.scratch) {
        free(job.item_start);
        return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cpu-ref attention: out of memory");
    }
    fa3c_threadpool_run(ctx->pool, job.item_start[p->b], attention_item, &job);
    free(job.scratch);
    free(job.item_start);
    return FA3C_OK;
}
