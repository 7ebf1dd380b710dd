/*
 * The tests' independent FA3 forward (see naive.h). Written from fa3-semantics.md §4, §8, §9 and
 * FA3's test_util.py attention_ref; only the scalar dtype conversions come from the library.
 *
 * Per sequence b_i and kv head: the visible keys are gathered once (rows of the naive's cache
 * copy), then every q head of the group and every query row is computed with an explicit score
 * vector, an explicit mask, softmax and P.V, as attention_ref does on padded tensors.
 */
#include "naive.h"

#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct nv_problem {
    const fa3c_fwd_args *a;
    const fa3c_tensor   *kc, *vc;        /* the naive's cache copies */
    naive_mode mode;
    fa3c_dtype dt, odt;                  /* input dtype; out dtype = LOWP compute dtype */
    bool       fp8, varlen_q, varlen_k, paged, append, varlen_new, has_qv, has_sinks, rotary;
    int64_t    b, s_q, s_k, rows, h, h_k, d, dv, page_size, total_k, total_new;
    double     scale, softcap;
    int64_t    wl, wr, chunk;            /* the mask's window: < 0 unbounded; causal is wr = 0 */
    bool       q_rot_per_row;            /* q rotated at base + i (else at base) */
} nv_problem;

/* One sequence's lengths (FA3 SeqlenInfoQKNewK, from the docs). */
typedef struct nv_seq {
    int64_t q_off, sq;        /* first out row of the sequence, queries used */
    int64_t k_batch, k_off;   /* cache batch (or page-table) row; cache row of key 0 (leftpad included) */
    int64_t sk_og, new_off, s_new, sk, rot_base;
} nv_seq;

static int64_t nv_i32(const fa3c_tensor *t, int64_t i) { return ((const int32_t *)t->data)[i * t->stride[0]]; }

static double nv_round(fa3c_dtype dt, double x) { return (double)fa3c_round(dt, (float)x); }

static void nv_seq_get(const nv_problem *p, int64_t bi, nv_seq *s) {
    const fa3c_fwd_args *a = p->a;
    int64_t lp = fa3c_present(&a->leftpad_k) ? nv_i32(&a->leftpad_k, bi) : 0;
    s->q_off = p->varlen_q ? nv_i32(&a->cu_seqlens_q, bi) : 0;
    if (fa3c_present(&a->seqused_q)) s->sq = nv_i32(&a->seqused_q, bi);
    else if (p->varlen_q) s->sq = nv_i32(&a->cu_seqlens_q, bi + 1) - s->q_off;
    else s->sq = p->s_q;
    s->k_batch = fa3c_present(&a->kv_batch_idx) ? nv_i32(&a->kv_batch_idx, bi) : bi;
    s->k_off = (p->varlen_k ? nv_i32(&a->cu_seqlens_k, bi) : 0) + lp;
    int64_t used;
    if (fa3c_present(&a->seqused_k)) used = nv_i32(&a->seqused_k, bi);
    else if (p->varlen_k) used = nv_i32(&a->cu_seqlens_k, bi + 1) - nv_i32(&a->cu_seqlens_k, bi);
    else used = p->s_k;
    s->sk_og = used - lp;
    s->new_off = p->varlen_new ? nv_i32(&a->cu_seqlens_k_new, bi) : 0;
    if (!p->append) s->s_new = 0;
    else if (p->varlen_new) s->s_new = nv_i32(&a->cu_seqlens_k_new, bi + 1) - s->new_off;
    else s->s_new = a->k_new.shape[1];
    s->sk = s->sk_og + s->s_new;
    s->rot_base = fa3c_present(&a->seqlens_rotary) ? nv_i32(&a->seqlens_rotary, bi) : used;
}

/* Element offset of (cache row r of cache batch kb, kv head hk) in a cache tensor. */
static int64_t nv_cache_off(const nv_problem *p, const fa3c_tensor *t, int64_t kb, int64_t r, int64_t hk) {
    if (p->paged) {
        const fa3c_tensor *pt = &p->a->page_table;
        int64_t page = ((const int32_t *)pt->data)[kb * pt->stride[0] + (r / p->page_size) * pt->stride[1]];
        return page * t->stride[0] + (r % p->page_size) * t->stride[1] + hk * t->stride[2];
    }
    if (p->varlen_k) return r * t->stride[0] + hk * t->stride[1];
    return kb * t->stride[0] + r * t->stride[1] + hk * t->stride[2];
}

/* Element offset of (query i of sequence bi, head hh) in a q-shaped tensor (q, qv). */
static int64_t nv_q_off(const nv_problem *p, const fa3c_tensor *t, const nv_seq *s, int64_t bi, int64_t i,
                        int64_t hh) {
    if (p->varlen_q) return (s->q_off + i) * t->stride[0] + hh * t->stride[1];
    return bi * t->stride[0] + i * t->stride[1] + hh * t->stride[2];
}

/* Element offset of (new key j of sequence bi, kv head hk) in k_new / v_new. */
static int64_t nv_new_off(const nv_problem *p, const fa3c_tensor *t, const nv_seq *s, int64_t bi, int64_t j,
                          int64_t hk) {
    if (p->varlen_new) return (s->new_off + j) * t->stride[0] + hk * t->stride[1];
    return bi * t->stride[0] + j * t->stride[1] + hk * t->stride[2];
}

static void nv_load_row(const fa3c_tensor *t, int64_t off, int64_t n, float *x) {
    int64_t st = t->stride[t->ndim - 1];
    for (int64_t c = 0; c < n; c++) x[c] = fa3c_load(t->data, t->dtype, off + c * st);
}

/* Rotary embedding of x[0, d) at position pos, in fp32, then rounded to the input dtype:
 * pairs (2t, 2t+1) when interleaved, else (t, t + rotary_dim/2); cos/sin (s_ro, rotary_dim/2). */
static void nv_rotate(const nv_problem *p, float *x, int64_t pos) {
    const fa3c_tensor *ct = &p->a->rotary_cos, *st = &p->a->rotary_sin;
    int64_t half = ct->shape[1];
    for (int64_t t = 0; t < half; t++) {
        float c = fa3c_load(ct->data, ct->dtype, pos * ct->stride[0] + t * ct->stride[1]);
        float s = fa3c_load(st->data, st->dtype, pos * st->stride[0] + t * st->stride[1]);
        int64_t i0 = p->a->is_rotary_interleaved ? 2 * t : t;
        int64_t i1 = p->a->is_rotary_interleaved ? 2 * t + 1 : t + half;
        float x0 = x[i0], x1 = x[i1];
        x[i0] = x0 * c - x1 * s;
        x[i1] = x0 * s + x1 * c;
    }
    for (int64_t c = 0; c < p->d; c++) x[c] = fa3c_round(p->dt, x[c]);
}

/* Key j visible to query i of a sequence with sq queries and sk keys: attention_ref's
 * construct_local_mask OR construct_chunk_mask, negated. Bottom-right: query i sits on key
 * diagonal i + sk - sq. Chunk boundaries use floor division (also for negative diagonals). */
static bool nv_visible(const nv_problem *p, int64_t i, int64_t j, int64_t sq, int64_t sk) {
    int64_t diag = i + sk - sq;
    if (p->wr >= 0 && j > diag + p->wr) return false;
    if (p->wl >= 0 && j < diag - p->wl) return false;
    if (p->chunk > 0) {
        int64_t r = diag % p->chunk;
        if (r < 0) r += p->chunk;
        int64_t lo = diag - r;
        if (j < lo || j >= lo + p->chunk) return false;
    }
    return true;
}

/* FA3 mha_fwd's window normalisation against the static lengths, reduced to the one thing it
 * changes in the results: whether q is rotated per row (causal or local) or at the base. */
static bool nv_causal_or_local(const nv_problem *p) {
    const fa3c_fwd_args *a = p->a;
    int64_t wl = a->window_size_left < 0 ? -1 : a->window_size_left;
    int64_t wr = a->window_size_right < 0 ? -1 : a->window_size_right;
    bool causal = a->is_causal != 0;
    if (wl >= p->s_k - 1) wl = -1;
    if (wr >= p->s_q - 1) wr = -1;
    if (p->s_q == 1 && wl == -1 && wr == -1 && p->chunk == 0 && (p->d <= 64 || p->d > 128 || !p->paged))
        causal = false;
    if (causal) wr = 0;
    bool is_causal = wl < 0 && wr == 0 && p->chunk == 0;
    bool is_local = (wl >= 0 || wr >= 0 || p->chunk >= 1) && !is_causal;
    return is_causal || is_local;
}

static int nv_init(nv_problem *p, const fa3c_fwd_args *a, const fa3c_tensor *kc, const fa3c_tensor *vc,
                   naive_mode mode) {
    memset(p, 0, sizeof *p);
    p->a = a;
    p->kc = kc;
    p->vc = vc;
    p->mode = mode;
    p->dt = a->q.dtype;
    p->fp8 = p->dt == FA3C_DTYPE_E4M3;
    p->odt = p->fp8 ? FA3C_DTYPE_BF16 : p->dt;
    p->varlen_q = fa3c_present(&a->cu_seqlens_q);
    p->varlen_k = fa3c_present(&a->cu_seqlens_k);
    p->paged = fa3c_present(&a->page_table);
    p->append = fa3c_present(&a->k_new);
    p->varlen_new = p->append && fa3c_present(&a->cu_seqlens_k_new);
    p->has_qv = fa3c_present(&a->qv);
    p->has_sinks = fa3c_present(&a->sinks);
    p->rotary = p->append && fa3c_present(&a->rotary_cos);
    if (kc->ndim != a->k.ndim || vc->ndim != a->v.ndim || kc->dtype != a->k.dtype || vc->dtype != a->v.dtype) {
        fprintf(stderr, "naive: cache copies must have k's / v's shape and dtype\n");
        return -1;
    }
    int nq = a->q.ndim;
    p->b = p->varlen_q ? a->cu_seqlens_q.shape[0] - 1 : a->q.shape[0];
    p->s_q = p->varlen_q ? a->max_seqlen_q : a->q.shape[1];
    p->rows = p->varlen_q ? a->q.shape[0] : p->b * p->s_q;
    p->h = a->q.shape[nq - 2];
    p->d = a->q.shape[nq - 1];
    p->h_k = kc->shape[kc->ndim - 2];
    p->dv = vc->shape[vc->ndim - 1];
    p->page_size = p->paged ? kc->shape[1] : 1;
    if (p->varlen_k) p->s_k = a->max_seqlen_k;
    else if (p->paged) p->s_k = a->page_table.shape[1] * p->page_size;
    else p->s_k = kc->shape[1];
    /* FA3's static token counts: the +inf "empty cache" rule is decided on them. */
    p->total_k = p->varlen_k ? kc->shape[0] : p->b * kc->shape[1];
    p->total_new = !p->append ? 0 : p->varlen_new ? a->k_new.shape[0] : p->b * a->k_new.shape[1];
    p->scale = isnan(a->softmax_scale) ? 1.0 / sqrt((double)p->d) : a->softmax_scale;
    p->softcap = a->softcap > 0 ? a->softcap : 0;
    p->chunk = a->attention_chunk > 0 ? a->attention_chunk : 0;
    p->wl = a->window_size_left < 0 ? -1 : a->window_size_left;
    p->wr = a->is_causal ? 0 : (a->window_size_right < 0 ? -1 : a->window_size_right);
    p->q_rot_per_row = nv_causal_or_local(p);
    if (p->h_k > 0 && p->h % p->h_k != 0) {
        fprintf(stderr, "naive: h=%lld not a multiple of h_k=%lld\n", (long long)p->h, (long long)p->h_k);
        return -1;
    }
    return 0;
}

/* Writes k_new (rotated) / v_new into the naive's cache copies: sequence b_i's new key j goes to
 * cache row k_off + sk_og + j (= leftpad + seqused_k + j). */
static void nv_append(const nv_problem *p) {
    const fa3c_fwd_args *a = p->a;
    float *x = malloc(sizeof(float) * (size_t)(p->d > p->dv ? p->d : p->dv));
    for (int64_t bi = 0; bi < p->b; bi++) {
        nv_seq s;
        nv_seq_get(p, bi, &s);
        for (int64_t j = 0; j < s.s_new; j++) {
            int64_t r = s.k_off + s.sk_og + j;
            for (int64_t hk = 0; hk < p->h_k; hk++) {
                nv_load_row(&a->k_new, nv_new_off(p, &a->k_new, &s, bi, j, hk), p->d, x);
                if (p->rotary) nv_rotate(p, x, s.rot_base + j);
                int64_t o = nv_cache_off(p, p->kc, s.k_batch, r, hk), st = p->kc->stride[p->kc->ndim - 1];
                for (int64_t c = 0; c < p->d; c++) fa3c_store(p->kc->data, p->kc->dtype, o + c * st, x[c]);
                nv_load_row(&a->v_new, nv_new_off(p, &a->v_new, &s, bi, j, hk), p->dv, x);
                o = nv_cache_off(p, p->vc, s.k_batch, r, hk);
                st = p->vc->stride[p->vc->ndim - 1];
                for (int64_t c = 0; c < p->dv; c++) fa3c_store(p->vc->data, p->vc->dtype, o + c * st, x[c]);
            }
        }
    }
    free(x);
}

static double nv_descale(const fa3c_tensor *t, bool fp8, int64_t bi, int64_t hk) {
    if (!fp8 || !fa3c_present(t)) return 1.0;
    return fa3c_load(t->data, t->dtype, bi * t->stride[0] + hk * t->stride[1]);
}

/* Scratch of one (sequence, kv head): the keys/values of the sequence and one row's scores. */
typedef struct nv_work {
    double *K, *V;     /* (sk, d), (sk, dv): raw values (EXACT), or descaled+rounded (LOWP) */
    double *Ks;        /* (sk, d) LOWP: round(K * scale) */
    double *sc, *pr;   /* (sk,) scores, probabilities */
    float  *q, *qv;    /* (d,), (dv,) */
    double *qs, *qvs;  /* (d,), (dv,) the row's q / qv as used */
    double *acc;       /* (dv,) */
} nv_work;

/* One query row: writes out[dv] (unrounded) and *lse. K/V already prepared for the mode. */
static void nv_row(const nv_problem *p, nv_work *w, int64_t i, const nv_seq *s, double qk_descale, double vd,
                   double sink, double *out, double *lse) {
    bool lowp = p->mode == NAIVE_LOWP;
    fa3c_dtype c = p->odt;
    int64_t nvis = 0;
    double m = -INFINITY;
    for (int64_t j = 0; j < s->sk; j++) {
        if (!nv_visible(p, i, j, s->sq, s->sk)) {
            w->sc[j] = -INFINITY;
            continue;
        }
        const double *kj = lowp ? w->Ks + j * p->d : w->K + j * p->d;
        double dot = 0;
        for (int64_t e = 0; e < p->d; e++) dot += w->qs[e] * kj[e];
        double sc;
        if (!lowp) {
            sc = qk_descale * dot;
            if (p->has_qv) {
                double t = 0;
                for (int64_t e = 0; e < p->dv; e++) t += w->qvs[e] * w->V[j * p->dv + e];
                sc += t;
            }
            sc *= p->scale;
            if (p->softcap > 0) sc = p->softcap * tanh(sc / p->softcap);
        } else {
            sc = nv_round(c, dot);
            if (p->has_qv) {
                double t = 0;
                for (int64_t e = 0; e < p->dv; e++) t += w->qvs[e] * w->V[j * p->dv + e];
                sc = nv_round(c, sc + nv_round(c, t));
            }
            if (p->softcap > 0) {
                float cap = (float)p->softcap;
                float t = fa3c_round(c, (float)sc / cap);
                t = fa3c_round(c, tanhf(t));
                sc = nv_round(c, t * cap);
            }
        }
        w->sc[j] = sc;
        if (sc > m) m = sc;
        nvis++;
    }
    if (p->has_sinks && sink > m) m = sink;
    for (int64_t e = 0; e < p->dv; e++) out[e] = 0;
    if (nvis == 0 && !p->has_sinks) { /* fully masked: attention_ref zeroes the row */
        *lse = -INFINITY;
        return;
    }
    double l = p->has_sinks ? exp(sink - m) : 0;
    for (int64_t j = 0; j < s->sk; j++) {
        w->pr[j] = w->sc[j] == -INFINITY ? 0 : exp(w->sc[j] - m);
        l += w->pr[j];
    }
    *lse = m + log(l);
    for (int64_t e = 0; e < p->dv; e++) w->acc[e] = 0;
    for (int64_t j = 0; j < s->sk; j++) {
        double pj = w->pr[j] / l;
        if (lowp) {
            /* torch.softmax on a bf16/fp16 tensor: fp32 inside, rounded result; fp8: P via e4m3 */
            pj = nv_round(c, (float)pj);
            if (p->fp8) pj = nv_round(FA3C_DTYPE_E4M3, pj);
        }
        if (pj == 0) continue;
        const double *vj = w->V + j * p->dv;
        for (int64_t e = 0; e < p->dv; e++) w->acc[e] += pj * vj[e];
    }
    for (int64_t e = 0; e < p->dv; e++) out[e] = lowp ? nv_round(c, w->acc[e]) : vd * w->acc[e];
}

/* Sequence bi, kv head hk: gather its keys, then every q head of the group and every row. */
static void nv_head(const nv_problem *p, nv_work *w, int64_t bi, const nv_seq *s, int64_t hk,
                    naive_result *res) {
    const fa3c_fwd_args *a = p->a;
    bool lowp = p->mode == NAIVE_LOWP;
    fa3c_dtype c = p->odt;
    double qd = nv_descale(&a->q_descale, p->fp8, bi, hk);
    double kd = nv_descale(&a->k_descale, p->fp8, bi, hk);
    double vd = nv_descale(&a->v_descale, p->fp8, bi, hk);
    float *row = w->q; /* scratch for loads; q is loaded again per query row below */
    for (int64_t j = 0; j < s->sk; j++) {
        int64_t r = s->k_off + j;
        nv_load_row(p->kc, nv_cache_off(p, p->kc, s->k_batch, r, hk), p->d, row);
        for (int64_t e = 0; e < p->d; e++) {
            double k = row[e];
            if (lowp) { /* attention_ref: k = (k * k_descale).to(bf16); then k * scale, rounded */
                float kc = fa3c_round(c, (float)(k * kd));
                w->K[j * p->d + e] = kc;
                w->Ks[j * p->d + e] = fa3c_round(c, kc * (float)p->scale);
            } else {
                w->K[j * p->d + e] = k;
            }
        }
        int64_t off = nv_cache_off(p, p->vc, s->k_batch, r, hk), st = p->vc->stride[p->vc->ndim - 1];
        for (int64_t e = 0; e < p->dv; e++) {
            double v = fa3c_load(p->vc->data, p->vc->dtype, off + e * st);
            w->V[j * p->dv + e] = lowp ? nv_round(c, v * vd) : v;
        }
    }
    int64_t g = p->h / p->h_k;
    for (int64_t hq = hk * g; hq < (hk + 1) * g; hq++) {
        double sink = -INFINITY;
        if (p->has_sinks) sink = fa3c_load(a->sinks.data, a->sinks.dtype, hq * a->sinks.stride[0]);
        for (int64_t i = 0; i < s->sq; i++) {
            nv_load_row(&a->q, nv_q_off(p, &a->q, s, bi, i, hq), p->d, w->q);
            if (p->rotary) nv_rotate(p, w->q, s->rot_base + (p->q_rot_per_row ? i : 0));
            for (int64_t e = 0; e < p->d; e++)
                w->qs[e] = lowp ? (p->fp8 ? nv_round(c, w->q[e] * qd) : w->q[e]) : w->q[e];
            if (p->has_qv) {
                nv_load_row(&a->qv, nv_q_off(p, &a->qv, s, bi, i, hq), p->dv, w->qv);
                for (int64_t e = 0; e < p->dv; e++)
                    w->qvs[e] = lowp ? fa3c_round(c, w->qv[e] * (float)p->scale) : w->qv[e];
            }
            int64_t rowi = p->varlen_q ? s->q_off + i : bi * p->s_q + i;
            double lse;
            nv_row(p, w, i, s, qd * kd, vd, sink, res->out + naive_out_index(res, rowi, hq), &lse);
            res->lse[naive_lse_index(res, rowi, hq)] = lse;
        }
    }
}

int naive_fwd(const fa3c_fwd_args *args, const fa3c_tensor *k_cache, const fa3c_tensor *v_cache,
              naive_mode mode, naive_result *res) {
    memset(res, 0, sizeof *res);
    nv_problem p;
    if (nv_init(&p, args, k_cache, v_cache, mode) != 0) return -1;
    res->varlen_q = p.varlen_q;
    res->b = p.b;
    res->s_q = p.s_q;
    res->rows = p.rows;
    res->h = p.h;
    res->dv = p.dv;
    res->out_dtype = p.odt;
    size_t n_out = (size_t)(p.rows * p.h * p.dv), n_lse = (size_t)(p.rows * p.h);
    res->out = calloc(n_out + 1, sizeof(double));
    res->out_r = calloc(n_out + 1, sizeof(double));
    res->lse = calloc(n_lse + 1, sizeof(double));
    res->written = calloc((size_t)p.rows + 1, 1);
    if (!res->out || !res->out_r || !res->lse || !res->written) {
        naive_result_free(res);
        return -1;
    }
    if (p.rows == 0 || p.h_k == 0) return 0;
    if (p.total_k + p.total_new == 0) { /* FA3's empty-cache case: the whole tensors, 0 and +inf */
        memset(res->written, 1, (size_t)p.rows);
        for (size_t i = 0; i < n_lse; i++) res->lse[i] = INFINITY;
        return 0;
    }
    for (int64_t bi = 0; bi < p.b; bi++) { /* validate the index data the naive relies on */
        nv_seq s;
        nv_seq_get(&p, bi, &s);
        int64_t end = p.varlen_q ? s.q_off + s.sq : s.sq;
        if (s.sq < 0 || s.sk_og < 0 || s.s_new < 0 || end > (p.varlen_q ? p.rows : p.s_q)) {
            fprintf(stderr, "naive: sequence %lld has invalid lengths\n", (long long)bi);
            naive_result_free(res);
            return -1;
        }
    }
    if (p.append) nv_append(&p);

    int64_t max_sk = 0;
    for (int64_t bi = 0; bi < p.b; bi++) {
        nv_seq s;
        nv_seq_get(&p, bi, &s);
        if (s.sk > max_sk) max_sk = s.sk;
    }
    size_t dd = (size_t)(p.d > p.dv ? p.d : p.dv) + 1, sk1 = (size_t)max_sk + 1;
    nv_work w;
    w.K = malloc(sizeof(double) * sk1 * (size_t)p.d);
    w.Ks = malloc(sizeof(double) * sk1 * (size_t)p.d);
    w.V = malloc(sizeof(double) * sk1 * (size_t)p.dv);
    w.sc = malloc(sizeof(double) * sk1);
    w.pr = malloc(sizeof(double) * sk1);
    w.q = malloc(sizeof(float) * dd);
    w.qv = malloc(sizeof(float) * dd);
    w.qs = malloc(sizeof(double) * dd);
    w.qvs = malloc(sizeof(double) * dd);
    w.acc = malloc(sizeof(double) * dd);
    int rc = 0;
    if (!w.K || !w.Ks || !w.V || !w.sc || !w.pr || !w.q || !w.qv || !w.qs || !w.qvs || !w.acc) rc = -1;
    for (int64_t bi = 0; rc == 0 && bi < p.b; bi++) {
        nv_seq s;
        nv_seq_get(&p, bi, &s);
        for (int64_t i = 0; i < s.sq; i++) res->written[p.varlen_q ? s.q_off + i : bi * p.s_q + i] = 1;
        for (int64_t hk = 0; hk < p.h_k; hk++) nv_head(&p, &w, bi, &s, hk, res);
    }
    for (size_t i = 0; i < n_out; i++)
        res->out_r[i] = mode == NAIVE_LOWP ? res->out[i] : nv_round(p.odt, res->out[i]);
    free(w.K);
    free(w.Ks);
    free(w.V);
    free(w.sc);
    free(w.pr);
    free(w.q);
    free(w.qv);
    free(w.qs);
    free(w.qvs);
    free(w.acc);
    if (rc != 0) naive_result_free(res);
    return rc;
}

void naive_result_free(naive_result *res) {
    free(res->out);
    free(res->out_r);
    free(res->lse);
    free(res->written);
    memset(res, 0, sizeof *res);
}
