/* Per-sequence lengths, the attention mask, the split partition, tensor layouts and rotary: the
 * pieces of FA3's semantics every backend shares (FA3 hopper/seqlen.h, mask.h, block.h,
 * paged_kv.h, rotary.h). */
#include "core/internal.h"

static int64_t idx_at(const fa3c_tensor *t, int64_t i) { return ((const int32_t *)t->data)[i * t->stride[0]]; }

/* Lengths of sequence bi. Shapes: cu_seqlens_* (b+1,), seqused_*, leftpad_k, kv_batch_idx, seqlens_rotary (b,). */
void fa3c_seqlens_get(const fa3c_problem *p, int64_t bi, fa3c_seqlens *sl) {
    const fa3c_fwd_args *a = p->args;
    int64_t leftpad = fa3c_present(&a->leftpad_k) ? idx_at(&a->leftpad_k, bi) : 0;

    sl->q_offset = p->varlen_q ? idx_at(&a->cu_seqlens_q, bi) : 0;
    if (!p->is_varlen) sl->seqlen_q = p->s_q;
    else if (fa3c_present(&a->seqused_q)) sl->seqlen_q = idx_at(&a->seqused_q, bi);
    else if (p->varlen_q) sl->seqlen_q = idx_at(&a->cu_seqlens_q, bi + 1) - sl->q_offset;
    else sl->seqlen_q = p->s_q;

    sl->k_batch = fa3c_present(&a->kv_batch_idx) ? idx_at(&a->kv_batch_idx, bi) : bi;
    int64_t k_start = p->varlen_k ? idx_at(&a->cu_seqlens_k, bi) : 0;
    sl->k_offset = k_start + leftpad;
    int64_t k_end; /* cached keys before leftpad removal */
    if (!p->is_varlen) k_end = p->s_k;
    else if (fa3c_present(&a->seqused_k)) k_end = idx_at(&a->seqused_k, bi);
    else if (p->varlen_k) k_end = idx_at(&a->cu_seqlens_k, bi + 1) - k_start;
    else k_end = p->s_k;
    sl->seqlen_k_og = k_end - leftpad;

    sl->new_offset = 0;
    sl->seqlen_new = 0;
    if (p->append) {
        if (p->varlen_new) {
            sl->new_offset = idx_at(&a->cu_seqlens_k_new, bi);
            sl->seqlen_new = idx_at(&a->cu_seqlens_k_new, bi + 1) - sl->new_offset;
        } else {
            sl->seqlen_new = p->s_new;
        }
    }
    sl->seqlen_k = sl->seqlen_k_og + sl->seqlen_new;
    sl->rotary_base = (p->append && fa3c_present(&a->seqlens_rotary)) ? idx_at(&a->seqlens_rotary, bi)
                                                                       : sl->seqlen_k_og + leftpad;
}

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/*
 * Keys visible to query row i of a sequence with seqlen_q queries and seqlen_k keys, bottom-right
 * aligned: row i sits at key position i + seqlen_k - seqlen_q. Worked example: seqlen_q = 3,
 * seqlen_k = 5, causal -> rows see keys [0,3), [0,4), [0,5); local (1, 0) -> [1,3), [2,4), [3,5);
 * chunk 2 -> row 0 (position 2) sees [2,3).
 */
void fa3c_mask_range(const fa3c_problem *p, int64_t i, int64_t seqlen_q, int64_t seqlen_k, int64_t *lo,
                     int64_t *hi) {
    int64_t pos = i + seqlen_k - seqlen_q;
    int64_t l = 0, h = seqlen_k;
    if (p->is_causal && pos + 1 < h) h = pos + 1;
    if (p->is_local) {
        if (p->window_right >= 0 && pos + p->window_right + 1 < h) h = pos + p->window_right + 1;
        if (p->window_left >= 0 && pos - p->window_left > l) l = pos - p->window_left;
    }
    if (p->chunk > 0) {
        int64_t start = floor_div(pos, p->chunk) * p->chunk;
        if (start > l) l = start;
        if (start + p->chunk < h) h = start + p->chunk;
    }
    if (l < 0) l = 0;
    if (h > seqlen_k) h = seqlen_k;
    *lo = l;
    *hi = h;
}

/* Keys of split s of n: the ceil(seqlen_k / block_n) key blocks cut into n runs of equal block count. */
void fa3c_split_range(int64_t seqlen_k, int32_t block_n, int32_t n, int32_t s, int64_t *lo, int64_t *hi) {
    int64_t blocks = (seqlen_k + block_n - 1) / block_n;
    int64_t per = (blocks + n - 1) / n;
    int64_t l = (int64_t)s * per * block_n, h = l + per * block_n;
    if (l > seqlen_k) l = seqlen_k;
    if (h > seqlen_k) h = seqlen_k;
    *lo = l;
    *hi = h;
}

int64_t fa3c_cache_offset(const fa3c_problem *p, const fa3c_tensor *cache, const fa3c_seqlens *sl, int64_t row,
                          int64_t hk) {
    if (p->paged) {
        const fa3c_tensor *pt = &p->args->page_table;
        int64_t page = ((const int32_t *)pt->data)[sl->k_batch * pt->stride[0] + (row / p->page_size) * pt->stride[1]];
        return page * cache->stride[0] + (row % p->page_size) * cache->stride[1] + hk * cache->stride[2];
    }
    if (p->varlen_k) return row * cache->stride[0] + hk * cache->stride[1];
    return sl->k_batch * cache->stride[0] + row * cache->stride[1] + hk * cache->stride[2];
}

int64_t fa3c_token_offset(const fa3c_problem *p, const fa3c_tensor *t, int64_t bi, int64_t row, int64_t hq) {
    if (p->varlen_q) return row * t->stride[0] + hq * t->stride[1];
    return bi * t->stride[0] + row * t->stride[1] + hq * t->stride[2];
}

int64_t fa3c_new_offset(const fa3c_problem *p, const fa3c_tensor *t, const fa3c_seqlens *sl, int64_t bi, int64_t j,
                        int64_t hk) {
    if (p->varlen_new) return (sl->new_offset + j) * t->stride[0] + hk * t->stride[1];
    return bi * t->stride[0] + j * t->stride[1] + hk * t->stride[2];
}

int64_t fa3c_head_major_offset(const fa3c_problem *p, const fa3c_tensor *t, int lead, int64_t bi, int64_t row,
                               int64_t hq) {
    const int64_t *st = t->stride + lead;
    if (p->varlen_q) return hq * st[0] + row * st[1];
    return bi * st[0] + hq * st[1] + row * st[2];
}

void fa3c_rotary(const fa3c_problem *p, int64_t pos, float *x) {
    const fa3c_tensor *ct = &p->args->rotary_cos, *st = &p->args->rotary_sin;
    int64_t half = p->rotary_dim / 2;
    for (int64_t t = 0; t < half; t++) {
        float c = fa3c_load(ct->data, ct->dtype, pos * ct->stride[0] + t * ct->stride[1]);
        float s = fa3c_load(st->data, st->dtype, pos * st->stride[0] + t * st->stride[1]);
        float *x0 = p->rotary_interleaved ? &x[2 * t] : &x[t];
        float *x1 = p->rotary_interleaved ? &x[2 * t + 1] : &x[t + half];
        float a = *x0, b = *x1;
        *x0 = a * c - b * s;
        *x1 = a * s + b * c;
    }
}
