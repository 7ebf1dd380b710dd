/*
 * cpu: the attention phase. Work items are (sequence, kv head, q tile, KV split), claimed
 * dynamically by the pool's threads, the q tiles of a head last-first so that the long causal
 * tiles start early. An item attends mt query rows of all G = h / h_k q heads of its kv
 * head at once (R = mt * G packed rows, row r = query i0 + r / G, q head hk * G + r % G), so every
 * key / value row is loaded and converted once per group. When every sequence's queries fit one
 * q tile (decode), an item takes up to DECODE_HEADS kv heads, so that the cache, whose rows hold
 * all kv heads of a key side by side, is streamed in whole rows. Keys are walked in tiles of CPU_NB
 * with online softmax (FA3's math, SEMANTICS.md): per tile, pack K (transposed) and V, S = Q K^T,
 * the softmax step, O = alpha O + P V; the tiles cover only the union of the rows' visible key
 * ranges (fa3c_mask_range), so causal / local / chunked masks skip whole tiles.
 *
 * KV splits. With p->num_splits = S > 1 the splits are FA3's (fa3c_split_range with block_n,
 * per-sequence counts from the plan), their partials go to out_accum / lse_accum when given or to
 * the workspace, and a combine pass produces out / lse. With S = 1 and too few items to balance
 * the threads (decode of one or few sequences), the KV range is split internally the same way
 * (tiles of CPU_NB) into workspace partials; this changes out only by rounding.
 */
#include "cpu/cpu.h"

#include <math.h>
#include <string.h>

/* Target packed rows per item: every row of an item shares its packed K / V tiles, so more rows
 * spread the packing thinner; (128, d) fp32 for Q and O (64 KiB each at d 128) still sit in L2
 * next to K and V. */
#define ROWS_TARGET 128
/* KV heads per item when every sequence's queries fit one tile (decode): whole cache rows are
 * read at once, and the group's K / V tiles (<= 8 x 64 keys) still fit in L2. */
#define DECODE_HEADS 8
/* Items wanted per thread before the KV range is split internally (dynamic claiming balances). */
#define ITEMS_PER_THREAD 4
/* Query rows per combine item. */
#define COMBINE_ROWS 16
/* Packed rows per kernel call within a tile (a multiple of the kernels' row blocks). */
#define ROW_CHUNK 16
/* Keys of a tile packed per step (tiles are padded to a multiple of it), each step followed by the
 * fetch of as many of the next tile's rows. */
#define PACK_KEYS 16

typedef struct attn_job {
    const fa3c_problem *p;
    const cpu_kernels  *k;
    const fa3c_seqlens *sl;         /* (b,) */
    const int32_t      *nsplit;     /* (b,) splits of each sequence, 1..S */
    const int64_t      *item_start; /* (b + 1,) first item of each sequence */
    int64_t G, mt, R, dq, dvp;      /* heads per kv head, q rows per tile, packed rows, score length */
    int64_t nh;                     /* kv heads per item */
    int64_t k_bytes, v_bytes;       /* bytes of one key / value row of one head */
    bool    bf16_dot;               /* q.k through the BF16 dot product */
    int32_t S;                      /* partial slots (1: no split) */
    bool    fa3_splits;             /* S is p->num_splits (else internal) */
    bool    to_accum;               /* partials into args->out_accum / lse_accum */
    float  *part_out, *part_lse;    /* workspace partials (S, rows_total, h, dv) / (S, rows_total, h) */
    int64_t rows_total;             /* varlen_q ? total_q : b * s_q */
    uint8_t *thread_ws;             /* (threads, per_thread) bytes */
    size_t   per_thread;
    size_t   off_q32, off_qp, off_pp, off_kt, off_vt, off_s, off_o, off_m, off_l, off_alpha, off_jlo, off_jhi,
             off_krow, off_vrow, off_lo, off_hi;
} attn_job;

/* Partial (out_s (dv,), lse_s) slot of split s, query row i of sequence bi, head hq. */
static float *partial_out(const attn_job *job, int64_t s, int64_t bi, int64_t i, int64_t hq, float **lse) {
    const fa3c_problem *p = job->p;
    int64_t row = job->sl[bi].q_offset + i;
    if (job->to_accum) {
        const fa3c_tensor *oa = &p->args->out_accum, *la = &p->args->lse_accum;
        *lse = (float *)la->data + s * la->stride[0] + fa3c_head_major_offset(p, la, 1, bi, row, hq);
        return (float *)oa->data + s * oa->stride[0] + fa3c_head_major_offset(p, oa, 1, bi, row, hq);
    }
    int64_t row_id = p->varlen_q ? row : bi * p->s_q + row;
    int64_t slot = (s * job->rows_total + row_id) * p->h + hq;
    *lse = job->part_lse + slot;
    return job->part_out + slot * p->dv;
}

/* descale[bi, hk] of a (b, h_k) fp32 tensor; 1 when not fp8 or absent. */
static float descale(const fa3c_problem *p, const fa3c_tensor *t, int64_t bi, int64_t hk) {
    if (!p->is_fp8 || !fa3c_present(t)) return 1.0f;
    return ((const float *)t->data)[bi * t->stride[0] + hk * t->stride[1]];
}

/* Row pointers of keys [k0, k0 + n) of (sl, hk) into krow / vrow, the page-table lookups done
 * once per page; both padded to n16 with zero rows. */
static void tile_rows(const fa3c_problem *p, const fa3c_seqlens *sl, int64_t hk, int64_t k0, int64_t n, int64_t n16,
                      const void **krow, const void **vrow) {
    const fa3c_tensor *k = &p->args->k, *v = &p->args->v;
    int64_t es = (int64_t)fa3c_dtype_size(p->in_dtype);
    int64_t row = sl->k_offset + k0;
    if (p->paged) {
        const fa3c_tensor *pt = &p->args->page_table;
        const int32_t *pages = (const int32_t *)pt->data + sl->k_batch * pt->stride[0];
        int64_t page = row / p->page_size, in_page = row % p->page_size;
        for (int64_t j = 0; j < n;) {
            int64_t pg = pages[page * pt->stride[1]];
            const char *kb = (const char *)k->data + (pg * k->stride[0] + hk * k->stride[2]) * es;
            const char *vb = (const char *)v->data + (pg * v->stride[0] + hk * v->stride[2]) * es;
            for (; in_page < p->page_size && j < n; in_page++, j++) {
                krow[j] = kb + in_page * k->stride[1] * es;
                vrow[j] = vb + in_page * v->stride[1] * es;
            }
            page++;
            in_page = 0;
        }
    } else {
        int64_t ks = p->varlen_k ? k->stride[0] : k->stride[1], vs = p->varlen_k ? v->stride[0] : v->stride[1];
        const char *kb = (const char *)k->data + fa3c_cache_offset(p, k, sl, row, hk) * es;
        const char *vb = (const char *)v->data + fa3c_cache_offset(p, v, sl, row, hk) * es;
        for (int64_t j = 0; j < n; j++) {
            krow[j] = kb + j * ks * es;
            vrow[j] = vb + j * vs * es;
        }
    }
    for (int64_t j = n; j < n16; j++) krow[j] = vrow[j] = cpu_zero_row;
}

/* rows[0, n) of bytes each into the caches (level 2 and up). */
static void prefetch_rows(const void *const *rows, int64_t n, int64_t bytes) {
    for (int64_t j = 0; j < n; j++)
        for (int64_t c = 0; c < bytes; c += 64) __builtin_prefetch((const char *)rows[j] + c, 0, 2);
}

/* Q (R, dq) fp32 of the item's rows: q (rotated at rotary_base + i when causal / local, else at
 * rotary_base, then rounded to the input dtype), followed by qv when given. */
static void load_queries(const attn_job *job, const fa3c_seqlens *sl, int64_t bi, int64_t hk, int64_t i0,
                         int64_t nrows, float *q32) {
    const fa3c_problem *p = job->p;
    const fa3c_fwd_args *a = p->args;
    int64_t es = (int64_t)fa3c_dtype_size(p->in_dtype);
    for (int64_t il = 0; il < nrows; il++) {
        int64_t i = i0 + il, row = sl->q_offset + i;
        for (int64_t g = 0; g < job->G; g++) {
            int64_t hq = hk * job->G + g;
            float *dst = q32 + (il * job->G + g) * job->dq;
            job->k->row_to_f32((const char *)a->q.data + fa3c_token_offset(p, &a->q, bi, row, hq) * es, p->in_dtype, p->d,
                               dst);
            if (p->has_rotary) {
                fa3c_rotary(p, sl->rotary_base + (p->is_causal || p->is_local ? i : 0), dst);
                for (int64_t c = 0; c < p->rotary_dim; c++) dst[c] = fa3c_round(p->in_dtype, dst[c]);
            }
            if (p->has_qv)
                job->k->row_to_f32((const char *)a->qv.data + fa3c_token_offset(p, &a->qv, bi, row, hq) * es,
                                   p->in_dtype, p->dv, dst + p->d);
        }
    }
}

/* Item -> (sequence, kv-head group, q tile, split). Items of a sequence: groups * n_qt * n_split,
 * numbered (group * n_qt + n_qt - 1 - qt) * n_split + split: the threads work on the q tiles of
 * one head at a time, which share its K / V in the caches, longest (causal) tiles first. The kv
 * heads of a group are processed together, key tile by key tile; with several heads per group
 * (decode) the 16-key slices of a tile are packed for every head before the next slice, so the
 * cache is read in whole rows (all heads of a key are adjacent) rather than one head's slice of
 * each row. */
static void attention_item(void *arg, int64_t item, int thread) {
    const attn_job *job = arg;
    const fa3c_problem *p = job->p;
    const fa3c_fwd_args *a = p->args;
    const cpu_kernels *k = job->k;

    const int64_t bi = fa3c_item_owner(job->item_start, p->b, item);
    const fa3c_seqlens *sl = &job->sl[bi];
    int64_t ns = job->nsplit[bi], local = item - job->item_start[bi];
    int64_t n_qt = (sl->seqlen_q + job->mt - 1) / job->mt;
    int64_t s = local % ns, qt = n_qt - 1 - local / ns % n_qt, hk0 = local / ns / n_qt * job->nh;
    int64_t nh = p->h_k - hk0 < job->nh ? p->h_k - hk0 : job->nh;
    int64_t i0 = qt * job->mt, nrows = sl->seqlen_q - i0 < job->mt ? sl->seqlen_q - i0 : job->mt;
    int64_t G = job->G, R = nrows * G, Rm = job->R, dq = job->dq, dvp = job->dvp;

    /* Per head hh of the group: Q / Qp (Rm rows), Kt (dq, CPU_NB), Vt (CPU_NB, dvp), O (Rm, dvp),
     * m / l / alpha (Rm), row pointers (CPU_NB); shared: S (Rm, CPU_NB), Pp, jlo / jhi, lo / hi. */
    uint8_t *ws = job->thread_ws + (size_t)thread * job->per_thread;
    float *q32 = (float *)(ws + job->off_q32), *kt = (float *)(ws + job->off_kt), *vt = (float *)(ws + job->off_vt);
    float *sc = (float *)(ws + job->off_s), *o = (float *)(ws + job->off_o);
    float *m = (float *)(ws + job->off_m), *l = (float *)(ws + job->off_l), *alpha = (float *)(ws + job->off_alpha);
    uint32_t *qp = (uint32_t *)(ws + job->off_qp), *pp = (uint32_t *)(ws + job->off_pp);
    int32_t *jlo = (int32_t *)(ws + job->off_jlo), *jhi = (int32_t *)(ws + job->off_jhi);
    const void **krow = (const void **)(ws + job->off_krow), **vrow = (const void **)(ws + job->off_vrow);
    const void **knext = krow + job->nh * CPU_NB, **vnext = vrow + job->nh * CPU_NB;
    int64_t *lo = (int64_t *)(ws + job->off_lo), *hi = (int64_t *)(ws + job->off_hi);

    /* Keys of this split, then each row's visible keys within them and their union. */
    int64_t klo = 0, khi = sl->seqlen_k;
    if (job->S > 1)
        fa3c_split_range(sl->seqlen_k, job->fa3_splits ? p->block_n : CPU_NB, (int32_t)ns, (int32_t)s, &klo, &khi);
    int64_t kv_lo = khi, kv_hi = klo;
    for (int64_t il = 0; il < nrows; il++) {
        fa3c_mask_range(p, i0 + il, sl->seqlen_q, sl->seqlen_k, &lo[il], &hi[il]);
        if (lo[il] < klo) lo[il] = klo;
        if (hi[il] > khi) hi[il] = khi;
        if (lo[il] >= hi[il]) continue;
        if (lo[il] < kv_lo) kv_lo = lo[il];
        if (hi[il] > kv_hi) kv_hi = hi[il];
    }

    for (int64_t hh = 0; hh < nh; hh++) {
        int64_t hk = hk0 + hh;
        for (int64_t r = 0; r < R; r++) {
            float sink = -INFINITY;
            if (p->has_sinks && s == 0)
                sink = fa3c_load(a->sinks.data, a->sinks.dtype, (hk * G + r % G) * a->sinks.stride[0]);
            m[hh * Rm + r] = sink;
            l[hh * Rm + r] = sink > -INFINITY ? 1.0f : 0.0f;
        }
        memset(o + hh * Rm * dvp, 0, (size_t)(R * dvp) * sizeof(float));
        if (kv_lo >= kv_hi) continue;
        float *qh = q32 + hh * Rm * dq;
        load_queries(job, sl, bi, hk, i0, nrows, qh);
        if (job->bf16_dot) /* exact: the values are bf16 (or e4m3) numbers */
            for (int64_t c = 0; c < R * dq / 2; c++) {
                uint32_t lo16, hi16;
                memcpy(&lo16, &qh[2 * c], 4);
                memcpy(&hi16, &qh[2 * c + 1], 4);
                qp[hh * Rm * dq / 2 + c] = (lo16 >> 16) | (hi16 & 0xFFFF0000u);
            }
    }

    for (int64_t k0 = kv_lo; k0 < kv_hi; k0 += CPU_NB) {
        int64_t n = kv_hi - k0 < CPU_NB ? kv_hi - k0 : CPU_NB, n16 = (n + 15) & ~(int64_t)15;
        bool any = false;
        for (int64_t r = 0; r < R; r++) {
            int64_t il = r / G, a0 = lo[il] - k0, a1 = hi[il] - k0;
            if (a0 < 0) a0 = 0;
            if (a1 > n) a1 = n;
            if (a0 >= a1) a0 = a1 = 0;
            jlo[r] = (int32_t)a0;
            jhi[r] = (int32_t)a1;
            any |= a0 < a1;
        }
        if (!any) continue;
        for (int64_t hh = 0; hh < nh; hh++)
            tile_rows(p, sl, hk0 + hh, k0, n, n16, krow + hh * CPU_NB, vrow + hh * CPU_NB);
        /* The next tile's rows are fetched while this one is packed, one 16-key slice of one head
         * after each slice packed: spread out, the fetches overlap the work (a burst of them would
         * stall the core until most had arrived); the cache's rows are not read in an order the
         * hardware prefetchers follow once they come from random pages. */
        int64_t n1 = k0 + CPU_NB < kv_hi ? (kv_hi - k0 - CPU_NB < CPU_NB ? kv_hi - k0 - CPU_NB : CPU_NB) : 0;
        for (int64_t hh = 0; hh < nh && n1 > 0; hh++)
            tile_rows(p, sl, hk0 + hh, k0 + CPU_NB, n1, n1, knext + hh * CPU_NB, vnext + hh * CPU_NB);
        for (int64_t jb = 0; jb < n16; jb += PACK_KEYS) {
            for (int64_t hh = 0; hh < nh; hh++) {
                const void **kr = krow + hh * CPU_NB + jb, **vr = vrow + hh * CPU_NB + jb;
                const void **kn = knext + hh * CPU_NB + jb, **vn = vnext + hh * CPU_NB + jb;
                int64_t nn = n1 - jb < PACK_KEYS ? n1 - jb : PACK_KEYS; /* next-tile rows to fetch */
                float *kth = kt + hh * dq * CPU_NB + jb, *vth = vt + hh * CPU_NB * dvp;
                if (job->bf16_dot) {
                    uint32_t *kp = (uint32_t *)(kt + hh * dq * CPU_NB) + jb;
                    k->pack_k_bf16(kr, PACK_KEYS, p->d, p->in_dtype, 0, kp);
                    if (p->has_qv) k->pack_k_bf16(vr, PACK_KEYS, p->dv, p->in_dtype, p->d, kp);
                    prefetch_rows(kn, nn, job->k_bytes);
                    k->pack_v_bf16(vr, PACK_KEYS, p->dv, p->in_dtype, (uint32_t *)vth + jb / 2 * dvp);
                } else {
                    k->pack_k(kr, PACK_KEYS, p->d, p->in_dtype, 0, kth);
                    if (p->has_qv) k->pack_k(vr, PACK_KEYS, p->dv, p->in_dtype, p->d, kth);
                    prefetch_rows(kn, nn, job->k_bytes);
                    k->pack_v(vr, n - jb < PACK_KEYS ? n - jb : PACK_KEYS, p->dv, p->in_dtype, vth + jb * dvp);
                }
                prefetch_rows(vn, nn, job->v_bytes);
            }
        }
        for (int64_t hh = 0; hh < nh; hh++) {
            const float *kth = kt + hh * dq * CPU_NB, *vth = vt + hh * CPU_NB * dvp;
            float qkd = descale(p, &a->q_descale, bi, hk0 + hh) * descale(p, &a->k_descale, bi, hk0 + hh);
            /* Rows in chunks, each over the keys its rows see: on a causal diagonal the first
             * rows see few keys of the tile (masked keys past them would only add zeros) */
            for (int64_t r0 = 0; r0 < R; r0 += ROW_CHUNK) {
                int64_t rn = R - r0 < ROW_CHUNK ? R - r0 : ROW_CHUNK, nc = 0;
                for (int64_t r = r0; r < r0 + rn; r++) nc = jhi[r] > nc ? jhi[r] : nc;
                if (nc == 0) continue; /* no row sees a key: their states stay as they are */
                int64_t nc16 = (nc + 15) & ~(int64_t)15, hr = hh * Rm + r0;
                float *mh = m + hr, *lh = l + hr, *ah = alpha + hr, *oh = o + hr * dvp;
                if (job->bf16_dot) {
                    k->qk_bf16(qp + hr * dq / 2, rn, dq, (const uint32_t *)kth, nc16, sc);
                    k->softmax(sc, rn, nc, jlo + r0, jhi + r0, p->scale * qkd, p->softcap, mh, lh, ah);
                    k->pv_bf16(sc, rn, nc, (const uint32_t *)vth, dvp, ah, oh, pp);
                } else {
                    k->qk(q32 + hr * dq, rn, dq, kth, nc16, sc);
                    k->softmax(sc, rn, nc, jlo + r0, jhi + r0, p->scale * qkd, p->softcap, mh, lh, ah);
                    k->pv(sc, rn, nc, vth, dvp, ah, oh);
                }
            }
        }
    }

    /* out = vd * O / l, lse = m + log l; no key and no sink: out 0, lse -inf. */
    for (int64_t hh = 0; hh < nh; hh++) {
        int64_t hk = hk0 + hh;
        float vd = descale(p, &a->v_descale, bi, hk);
        for (int64_t r = 0; r < R; r++) {
            int64_t i = i0 + r / G, hq = hk * G + r % G, row = sl->q_offset + i;
            float lr = l[hh * Rm + r], inv = lr > 0.0f ? vd / lr : 0.0f;
            float lse = lr > 0.0f ? m[hh * Rm + r] + logf(lr) : -INFINITY;
            const float *orow = o + (hh * Rm + r) * dvp;
            if (job->S > 1) {
                float *lse_dst, *dst = partial_out(job, s, bi, i, hq, &lse_dst);
                for (int64_t c = 0; c < p->dv; c++) dst[c] = orow[c] * inv;
                *lse_dst = lse;
                continue;
            }
            k->row_from_f32(orow, inv, p->dv, p->out_dtype,
                            (char *)a->out.data +
                                fa3c_token_offset(p, &a->out, bi, row, hq) * (int64_t)fa3c_dtype_size(p->out_dtype));
            if (fa3c_present(&a->softmax_lse))
                ((float *)a->softmax_lse.data)[fa3c_head_major_offset(p, &a->softmax_lse, 0, bi, row, hq)] = lse;
        }
    }
}

/* Combine item: up to COMBINE_ROWS query rows of one sequence, every head. Splits the sequence
 * does not use are written as out 0 / lse -inf when the partials are the caller's out_accum. */
static void combine_item(void *arg, int64_t item, int thread) {
    const attn_job *job = arg;
    const fa3c_problem *p = job->p;
    const fa3c_fwd_args *a = p->args;
    const int64_t bi = fa3c_item_owner(job->item_start, p->b, item);
    const fa3c_seqlens *sl = &job->sl[bi];
    int64_t ns = job->nsplit[bi], i0 = (item - job->item_start[bi]) * COMBINE_ROWS;
    int64_t i1 = i0 + COMBINE_ROWS < sl->seqlen_q ? i0 + COMBINE_ROWS : sl->seqlen_q;
    uint8_t *ws = job->thread_ws + (size_t)thread * job->per_thread;
    float *lse_s = (float *)(ws + job->off_m), *dst = (float *)(ws + job->off_o);
    for (int64_t i = i0; i < i1; i++) {
        int64_t row = sl->q_offset + i;
        for (int64_t hq = 0; hq < p->h; hq++) {
            float *ls, *out0 = partial_out(job, 0, bi, i, hq, &ls);
            int64_t stride = partial_out(job, 1, bi, i, hq, &ls) - out0; /* S > 1 here */
            for (int64_t s = 0; s < job->S; s++) {
                float *os = partial_out(job, s, bi, i, hq, &ls);
                if (s < ns) {
                    lse_s[s] = *ls;
                } else if (job->to_accum) {
                    memset(os, 0, (size_t)p->dv * sizeof(float));
                    *ls = -INFINITY;
                }
            }
            float lse = cpu_combine_row(ns, lse_s, out0, stride, p->dv, dst);
            job->k->row_from_f32(dst, 1.0f, p->dv, p->out_dtype,
                                 (char *)a->out.data +
                                     fa3c_token_offset(p, &a->out, bi, row, hq) * (int64_t)fa3c_dtype_size(p->out_dtype));
            if (fa3c_present(&a->softmax_lse))
                ((float *)a->softmax_lse.data)[fa3c_head_major_offset(p, &a->softmax_lse, 0, bi, row, hq)] = lse;
        }
    }
}

fa3c_status cpu_attention(fa3c_context *ctx, const fa3c_problem *p, const fa3c_sched_plan *plan, fa3c_seqlens *sl) {
    const cpu_kernels *k = &cpu_state_of(ctx)->k;
    int threads = fa3c_threadpool_size(ctx->pool);
    attn_job job = {.p = p, .k = k, .sl = sl};
    job.G = p->h / p->h_k;
    job.mt = ROWS_TARGET / job.G > 1 ? ROWS_TARGET / job.G : 1;
    job.dq = p->d + (p->has_qv ? p->dv : 0);
    job.dvp = (p->dv + 15) & ~(int64_t)15;
    job.bf16_dot = k->qk_bf16 && (p->in_dtype == FA3C_DTYPE_BF16 || p->in_dtype == FA3C_DTYPE_E4M3);
    job.rows_total = p->varlen_q ? p->total_q : p->b * p->s_q;
    job.k_bytes = p->d * (int64_t)fa3c_dtype_size(p->in_dtype);
    job.v_bytes = p->dv * (int64_t)fa3c_dtype_size(p->in_dtype);
    int64_t max_q = 0, max_tiles = 0;
    for (int64_t bi = 0; bi < p->b; bi++) {
        if (sl[bi].seqlen_q > max_q) max_q = sl[bi].seqlen_q;
        int64_t tiles = (sl[bi].seqlen_k + CPU_NB - 1) / CPU_NB;
        if (tiles > max_tiles) max_tiles = tiles;
    }
    job.nh = max_q <= job.mt ? (p->h_k < DECODE_HEADS ? p->h_k : DECODE_HEADS) : 1;
    int64_t groups = (p->h_k + job.nh - 1) / job.nh;

    /* Split count: FA3's when S > 1; else internal when the items alone cannot balance the threads. */
    int64_t base_items = 0;
    for (int64_t bi = 0; bi < p->b; bi++) base_items += groups * ((sl[bi].seqlen_q + job.mt - 1) / job.mt);
    job.S = 1;
    if (p->num_splits > 1) {
        job.S = p->num_splits;
        job.fa3_splits = true;
        job.to_accum = fa3c_present(&p->args->out_accum);
    } else if (threads > 1 && base_items > 0 && base_items < ITEMS_PER_THREAD * threads && max_tiles > 1) {
        int64_t want = (ITEMS_PER_THREAD * threads + base_items - 1) / base_items;
        job.S = (int32_t)(want < max_tiles ? want : max_tiles);
    }

    /* Workspace: per-sequence tables, partials, then one tile buffer per thread. */
    int64_t R = job.mt * job.G, nh = job.nh;
    job.R = R;
    cpu_carve cv = {0};
    size_t off_nsplit = cpu_carve_take(&cv, (size_t)p->b * sizeof(int32_t));
    size_t off_items = cpu_carve_take(&cv, (size_t)(p->b + 1) * sizeof(int64_t));
    size_t off_citems = cpu_carve_take(&cv, (size_t)(p->b + 1) * sizeof(int64_t));
    size_t off_part = 0, off_plse = 0;
    if (job.S > 1 && !job.to_accum) {
        off_part = cpu_carve_take(&cv, (size_t)(job.S * job.rows_total * p->h * p->dv) * sizeof(float));
        off_plse = cpu_carve_take(&cv, (size_t)(job.S * job.rows_total * p->h) * sizeof(float));
    }
    cpu_carve tc = {0};
    int64_t rmax = R > job.S ? R : job.S; /* m doubles as the combine's (S,) lse buffer */
    job.off_q32 = cpu_carve_take(&tc, (size_t)(nh * R * job.dq) * sizeof(float));
    job.off_qp = cpu_carve_take(&tc, (size_t)(nh * R * job.dq / 2) * sizeof(uint32_t));
    job.off_pp = cpu_carve_take(&tc, (size_t)(R * CPU_NB / 2) * sizeof(uint32_t));
    job.off_kt = cpu_carve_take(&tc, (size_t)(nh * job.dq * CPU_NB) * sizeof(float));
    job.off_vt = cpu_carve_take(&tc, (size_t)(nh * CPU_NB * job.dvp) * sizeof(float));
    job.off_s = cpu_carve_take(&tc, (size_t)(R * CPU_NB) * sizeof(float));
    job.off_o = cpu_carve_take(&tc, (size_t)(nh * R * job.dvp) * sizeof(float));
    job.off_m = cpu_carve_take(&tc, (size_t)(nh * rmax) * sizeof(float));
    job.off_l = cpu_carve_take(&tc, (size_t)(nh * R) * sizeof(float));
    job.off_alpha = cpu_carve_take(&tc, (size_t)(nh * R) * sizeof(float));
    job.off_jlo = cpu_carve_take(&tc, (size_t)R * sizeof(int32_t));
    job.off_jhi = cpu_carve_take(&tc, (size_t)R * sizeof(int32_t));
    job.off_krow = cpu_carve_take(&tc, (size_t)(2 * nh * CPU_NB) * sizeof(void *)); /* this tile's, the next's */
    job.off_vrow = cpu_carve_take(&tc, (size_t)(2 * nh * CPU_NB) * sizeof(void *));
    job.off_lo = cpu_carve_take(&tc, (size_t)job.mt * sizeof(int64_t));
    job.off_hi = cpu_carve_take(&tc, (size_t)job.mt * sizeof(int64_t));
    job.per_thread = tc.used;
    size_t off_threads = cpu_carve_take(&cv, job.per_thread * (size_t)threads);
    uint8_t *ws = cpu_workspace(ctx, cv.used);
    if (!ws) return FA3C_ERROR_OUT_OF_MEMORY;

    int32_t *nsplit = (int32_t *)(ws + off_nsplit);
    int64_t *items = (int64_t *)(ws + off_items), *citems = (int64_t *)(ws + off_citems);
    items[0] = citems[0] = 0;
    for (int64_t bi = 0; bi < p->b; bi++) {
        nsplit[bi] = job.fa3_splits && plan && plan->num_splits_dynamic ? plan->num_splits_dynamic[bi] : job.S;
        int64_t n_qt = (sl[bi].seqlen_q + job.mt - 1) / job.mt;
        items[bi + 1] = items[bi] + groups * n_qt * nsplit[bi];
        citems[bi + 1] = citems[bi] + (sl[bi].seqlen_q + COMBINE_ROWS - 1) / COMBINE_ROWS;
    }
    job.nsplit = nsplit;
    job.item_start = items;
    job.part_out = (float *)(ws + off_part);
    job.part_lse = (float *)(ws + off_plse);
    job.thread_ws = ws + off_threads;
    fa3c_threadpool_run(ctx->pool, items[p->b], attention_item, &job);
    if (job.S > 1) {
        job.item_start = citems;
        fa3c_threadpool_run(ctx->pool, citems[p->b], combine_item, &job);
    }
    return FA3C_OK;
}
