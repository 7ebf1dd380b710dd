/*
 * Test utilities (see testutil.h): RNG, guarded buffers, strided views, case builders, FA3's pass
 * rule and the structural checks of a forward.
 */
#include "testutil.h"

#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------------------------------------- */
/* RNG */

void tu_rng_seed(tu_rng *r, uint64_t seed) { r->s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull; }

uint64_t tu_rng_u64(tu_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double tu_rng_uniform(tu_rng *r) { return (double)(tu_rng_u64(r) >> 11) * 0x1.0p-53; }

double tu_rng_normal(tu_rng *r) {
    double u1 = 1.0 - tu_rng_uniform(r), u2 = tu_rng_uniform(r); /* u1 in (0, 1] */
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

int64_t tu_rng_int(tu_rng *r, int64_t lo, int64_t hi) {
    if (hi <= lo) return lo;
    return lo + (int64_t)(tu_rng_u64(r) % (uint64_t)(hi - lo));
}

void tu_rng_perm(tu_rng *r, int32_t *p, int64_t n) {
    for (int64_t i = 0; i < n; i++) p[i] = (int32_t)i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = tu_rng_int(r, 0, i + 1);
        int32_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

/* ----------------------------------------------------------------------------------------- */
/* Guarded buffers */

static uint8_t tu_guard_byte(size_t i) { return (uint8_t)(0x5A + 31 * i); }

void tu_arena_init(tu_arena *a) { memset(a, 0, sizeof *a); }

static void tu_buf_free_dev(tu_buf *b) {
    if (b->dev) fa3c_device_free(b->dev_ctx, b->dev);
    b->dev = NULL;
    b->dev_ctx = NULL;
}

void tu_arena_free(tu_arena *a) {
    for (int i = 0; i < a->n; i++) {
        free(a->buf[i].base);
        free(a->buf[i].saved);
        tu_buf_free_dev(&a->buf[i]);
    }
    memset(a, 0, sizeof *a);
}

void *tu_alloc(tu_arena *a, size_t bytes) {
    if (bytes == 0) bytes = 1;
    if (a->n == TU_MAX_BUFS) {
        fprintf(stderr, "tu_alloc: more than %d buffers in one arena\n", TU_MAX_BUFS);
        exit(2);
    }
    size_t total = (bytes + 2 * TU_GUARD + 63) / 64 * 64;
    uint8_t *base = aligned_alloc(64, total);
    if (!base) {
        fprintf(stderr, "tu_alloc: out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    memset(base, 0, total);
    for (size_t i = 0; i < TU_GUARD; i++) {
        base[i] = tu_guard_byte(i);
        base[TU_GUARD + bytes + i] = tu_guard_byte(i + 7);
    }
    tu_buf *b = &a->buf[a->n++];
    memset(b, 0, sizeof *b);
    b->base = base;
    b->bytes = bytes;
    return base + TU_GUARD;
}

tu_buf *tu_arena_find(tu_arena *a, const void *p) {
    const uint8_t *q = p;
    for (int i = 0; i < a->n; i++)
        if (q >= a->buf[i].base + TU_GUARD && q < a->buf[i].base + TU_GUARD + a->buf[i].bytes) return &a->buf[i];
    return NULL;
}

int tu_arena_guards(const tu_arena *a, char *msg, size_t n) {
    int bad = 0;
    for (int i = 0; i < a->n; i++) {
        const tu_buf *b = &a->buf[i];
        for (size_t j = 0; j < TU_GUARD; j++) {
            bool before = b->base[j] != tu_guard_byte(j);
            bool after = b->base[TU_GUARD + b->bytes + j] != tu_guard_byte(j + 7);
            if (before || after) {
                if (bad == 0)
                    snprintf(msg, n, "canary %s buffer %d (%zu bytes) damaged at guard byte %zu", before ? "before" : "after",
                             i, b->bytes, j);
                bad++;
                break;
            }
        }
    }
    return bad;
}

void tu_arena_snapshot(tu_arena *a) {
    for (int i = 0; i < a->n; i++) {
        tu_buf *b = &a->buf[i];
        free(b->saved);
        b->saved = malloc(b->bytes + 2 * TU_GUARD);
        if (!b->saved) {
            fprintf(stderr, "tu_arena_snapshot: out of memory\n");
            exit(2);
        }
        memcpy(b->saved, b->base, b->bytes + 2 * TU_GUARD);
    }
}

void tu_arena_restore(tu_arena *a) {
    for (int i = 0; i < a->n; i++)
        if (a->buf[i].saved) memcpy(a->buf[i].base, a->buf[i].saved, a->buf[i].bytes + 2 * TU_GUARD);
}

int tu_arena_to_device(tu_arena *a, fa3c_context *ctx) {
    for (int i = 0; i < a->n; i++) {
        tu_buf *b = &a->buf[i];
        size_t total = b->bytes + 2 * TU_GUARD;
        if (b->dev && b->dev_ctx != ctx) tu_buf_free_dev(b); /* a twin made for another context */
        if (!b->dev) {
            if (fa3c_device_alloc(ctx, total, &b->dev) != FA3C_OK) return -1;
            b->dev_ctx = ctx;
        }
        if (fa3c_device_copy(ctx, b->dev, b->base, total, FA3C_COPY_HOST_TO_DEVICE) != FA3C_OK) return -1;
    }
    return 0;
}

int tu_arena_from_device(tu_arena *a, fa3c_context *ctx) {
    for (int i = 0; i < a->n; i++) {
        tu_buf *b = &a->buf[i];
        if (b->dev && b->dev_ctx == ctx &&
            fa3c_device_copy(ctx, b->base, b->dev, b->bytes + 2 * TU_GUARD, FA3C_COPY_DEVICE_TO_HOST) != FA3C_OK)
            return -1;
    }
    return 0;
}

fa3c_tensor tu_on_device(tu_arena *a, const fa3c_tensor *t, const fa3c_context *ctx) {
    fa3c_tensor r = *t;
    if (fa3c_context_device_type(ctx) == FA3C_DEVICE_CPU || !fa3c_present(t) || !t->data) return r;
    tu_buf *b = tu_arena_find(a, t->data);
    if (!b || !b->dev) return r;
    r.data = (uint8_t *)b->dev + ((const uint8_t *)t->data - b->base);
    r.device_type = FA3C_DEVICE_CUDA;
    r.device_index = ctx->device_index;
    return r;
}

/* ----------------------------------------------------------------------------------------- */
/* Tensors */

fa3c_tensor tu_tensor(tu_arena *a, fa3c_dtype dtype, int ndim, const int64_t *shape, int64_t pad) {
    fa3c_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dtype;
    t.device_type = FA3C_DEVICE_CPU;
    t.ndim = ndim;
    int64_t span = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = i == ndim - 1 ? 1 : t.stride[i + 1] * (shape[i + 1] > 0 ? shape[i + 1] : 1) + pad;
    }
    for (int i = 0; i < ndim; i++) span += (shape[i] > 0 ? shape[i] - 1 : 0) * t.stride[i];
    for (int i = 0; i < ndim; i++)
        if (shape[i] == 0) span = 0;
    t.data = tu_alloc(a, (size_t)span * fa3c_dtype_size(dtype));
    return t;
}

fa3c_tensor tu_permute(fa3c_tensor t, const int *perm) {
    fa3c_tensor r = t;
    for (int i = 0; i < t.ndim; i++) {
        r.shape[i] = t.shape[perm[i]];
        r.stride[i] = t.stride[perm[i]];
    }
    return r;
}

fa3c_tensor tu_index(tu_arena *a, const int32_t *v, int64_t n) {
    fa3c_tensor t = tu_tensor(a, FA3C_DTYPE_I32, 1, &n, 0);
    if (n > 0) memcpy(t.data, v, (size_t)n * sizeof(int32_t));
    return t;
}

int64_t tu_numel(const fa3c_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int64_t tu_offset(const fa3c_tensor *t, const int64_t *idx) {
    int64_t o = 0;
    for (int i = 0; i < t->ndim; i++) o += idx[i] * t->stride[i];
    return o;
}

bool tu_next(const fa3c_tensor *t, int64_t *idx) {
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (++idx[i] < t->shape[i]) return true;
        idx[i] = 0;
    }
    return false;
}

void tu_fill_normal(const fa3c_tensor *t, tu_rng *r, double scale) {
    if (tu_numel(t) == 0) return;
    int64_t idx[FA3C_MAX_DIMS] = {0};
    do fa3c_store(t->data, t->dtype, tu_offset(t, idx), (float)(scale * tu_rng_normal(r)));
    while (tu_next(t, idx));
}

void tu_fill_uniform(const fa3c_tensor *t, tu_rng *r, double lo, double hi) {
    if (tu_numel(t) == 0) return;
    int64_t idx[FA3C_MAX_DIMS] = {0};
    do fa3c_store(t->data, t->dtype, tu_offset(t, idx), (float)(lo + (hi - lo) * tu_rng_uniform(r)));
    while (tu_next(t, idx));
}

double tu_ulp(fa3c_dtype dtype, double x) {
    int mant, emin; /* explicit mantissa bits, smallest normal exponent */
    switch (dtype) {
    case FA3C_DTYPE_F16: mant = 10; emin = -14; break;
    case FA3C_DTYPE_BF16: mant = 7; emin = -126; break;
    case FA3C_DTYPE_E4M3: mant = 3; emin = -6; break;
    default: mant = 23; emin = -126; break;
    }
    int e = emin;
    if (x != 0 && isfinite(x)) {
        frexp(fabs(x), &e); /* |x| in [2^(e-1), 2^e) */
        e -= 1;
        if (e < emin) e = emin;
    }
    return ldexp(1.0, e - mant);
}

/* ----------------------------------------------------------------------------------------- */
/* Cases */

void tu_case_init(tu_case *c) {
    memset(c, 0, sizeof *c);
    c->mode = TU_BATCHED;
    c->dtype = FA3C_DTYPE_BF16;
    c->b = 1;
    c->s_q = c->s_k = 1;
    c->h = c->h_k = 1;
    c->d = c->dv = 64;
    c->wl = c->wr = -1;
    c->sinks = FA3C_DTYPE_NONE;
    c->num_splits = 1;
    c->pack_gqa = -1;
    c->seed = 1;
}

void tu_case_describe(tu_case *c, const char *prefix) {
    static const char *modes[] = {"fwd", "varlen", "kvcache"};
    char *s = c->name;
    size_t n = sizeof c->name;
    int k = snprintf(s, n, "%s%s %s b%lld sq%lld sk%lld h%lld/%lld d%lld", prefix ? prefix : "", modes[c->mode],
                     fa3c_dtype_name(c->dtype), (long long)c->b, (long long)c->s_q, (long long)c->s_k,
                     (long long)c->h, (long long)c->h_k, (long long)c->d);
#define TU_ADD(...)                                                                                                \
    do {                                                                                                           \
        if (k >= 0 && (size_t)k < n) k += snprintf(s + k, n - (size_t)k, __VA_ARGS__);                             \
    } while (0)
    if (c->dv != c->d) TU_ADD("/%lld", (long long)c->dv);
    if (c->zero_len) TU_ADD(" empty");
    if (c->unused) TU_ADD(" seqused");
    if (c->page_size) TU_ADD(" ps%lld", (long long)c->page_size);
    if (c->s_new) TU_ADD(" new%lld%s", (long long)c->s_new, c->varlen_q ? "v" : "");
    else if (c->varlen_q) TU_ADD(" vq");
    if (c->rotary) TU_ADD(" rot%s%lld", c->rotary == 1 ? "I" : "H", (long long)(c->rotary_dim ? c->rotary_dim : c->d));
    if (c->rotary && c->rotary_seqlens) TU_ADD(" rotseq");
    if (c->no_cache_seqlens && c->mode == TU_KVCACHE && !c->s_new) TU_ADD(" noseqlens");
    if (c->leftpad) TU_ADD(" leftpad");
    if (c->batch_idx) TU_ADD(" bidx");
    if (c->causal) TU_ADD(" causal");
    if (c->wl >= 0 || c->wr >= 0) TU_ADD(" win(%lld,%lld)", (long long)c->wl, (long long)c->wr);
    if (c->chunk) TU_ADD(" chunk%lld", (long long)c->chunk);
    if (c->softcap > 0) TU_ADD(" cap%g", c->softcap);
    if (c->sinks != FA3C_DTYPE_NONE) TU_ADD(" sinks-%s", fa3c_dtype_name(c->sinks));
    if (c->qv) TU_ADD(" qv");
    if (c->descale) TU_ADD(" descale");
    if (c->scale > 0) TU_ADD(" scale%g", c->scale);
    TU_ADD(" split%d", c->num_splits);
    if (c->pack_gqa >= 0) TU_ADD(" pack%d", c->pack_gqa);
    if (c->out_accum) TU_ADD(" accum");
    if (c->sched_meta) TU_ADD(" meta");
    if (c->pad) TU_ADD(" strided");
#undef TU_ADD
}

/* Random lengths as FA3's generate_random_padding_mask("random"): in [max(1, s - 20), s]. */
static int64_t tu_rand_len(tu_rng *r, int64_t s) { return tu_rng_int(r, s - 20 > 1 ? s - 20 : 1, s + 1); }

/* Fills cu[0..b] from lengths and returns the total. */
static int64_t tu_cumsum(const int32_t *len, int64_t b, int32_t *cu) {
    cu[0] = 0;
    for (int64_t i = 0; i < b; i++) cu[i + 1] = cu[i] + len[i];
    return cu[b];
}

static int32_t tu_max(const int32_t *v, int64_t n) {
    int32_t m = 0;
    for (int64_t i = 0; i < n; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* (b, h_k) fp32 descale in [0.25, 2); strided: a transposed view of an (h_k, b) buffer. */
static fa3c_tensor tu_descale(tu_arena *a, tu_rng *r, int64_t b, int64_t h_k, bool strided) {
    fa3c_tensor t;
    if (strided) {
        int64_t sh[2] = {h_k, b};
        int perm[2] = {1, 0};
        t = tu_permute(tu_tensor(a, FA3C_DTYPE_F32, 2, sh, 0), perm);
    } else {
        int64_t sh[2] = {b, h_k};
        t = tu_tensor(a, FA3C_DTYPE_F32, 2, sh, 0);
    }
    tu_fill_uniform(&t, r, 0.25, 2.0);
    return t;
}

/* A copy of t's whole buffer (guards and gaps included) and the same view into it. */
static fa3c_tensor tu_clone(tu_arena *a, const fa3c_tensor *t) {
    tu_buf *src = tu_arena_find(a, t->data);
    uint8_t *dst = tu_alloc(a, src->bytes);
    memcpy(dst, src->base + TU_GUARD, src->bytes);
    fa3c_tensor r = *t;
    r.data = dst + ((const uint8_t *)t->data - (src->base + TU_GUARD));
    return r;
}

static void tu_fill_bytes(tu_arena *a, const fa3c_tensor *t, uint8_t byte) {
    tu_buf *b = tu_arena_find(a, t->data);
    memset(b->base + TU_GUARD, byte, b->bytes);
}

int tu_prepare(const tu_case *c, tu_prepared *p) {
    memset(p, 0, sizeof *p);
    p->c = *c;
    tu_arena *ar = &p->arena;
    tu_arena_init(ar);
    tu_rng r;
    tu_rng_seed(&r, c->seed);
    fa3c_fwd_args *a = &p->args;
    fa3c_fwd_args_init(a);
    fa3c_dtype dt = c->dtype, odt = dt == FA3C_DTYPE_E4M3 ? FA3C_DTYPE_BF16 : dt;
    int64_t pad = c->pad ? 16 : 0, b = c->b, h = c->h, hk = c->h_k, d = c->d, dv = c->dv;
    double qscale = c->softcap > 0 ? c->softcap / 4 : 1.0; /* FA3's tests scale q so softcap bites */
    int32_t *lq = calloc((size_t)b + 1, sizeof(int32_t)), *lk = calloc((size_t)b + 1, sizeof(int32_t));
    int32_t *cu = calloc((size_t)b + 2, sizeof(int32_t)), *tmp = calloc((size_t)b + 2, sizeof(int32_t));
    if (!lq || !lk || !cu || !tmp) {
        fprintf(stderr, "tu_prepare: out of memory\n");
        exit(2);
    }
    bool varlen_q = c->mode == TU_VARLEN || (c->mode == TU_KVCACHE && c->varlen_q);
    p->kvcache = c->mode == TU_KVCACHE;

    /* q side: (b, s_q, h, d), or packed (total_q, h, d) with 3 trailing rows no sequence covers */
    if (varlen_q) {
        for (int64_t i = 0; i < b; i++) lq[i] = (int32_t)tu_rand_len(&r, c->s_q);
        if (c->zero_len && b > 3) lq[3] = 0;
        int64_t rows = tu_cumsum(lq, b, cu) + 3;
        a->cu_seqlens_q = tu_index(ar, cu, b + 1);
        a->max_seqlen_q = tu_max(lq, b);
        if (c->unused) {
            for (int64_t i = 0; i < b; i++) tmp[i] = (int32_t)tu_rng_int(&r, lq[i] > 5 ? lq[i] - 5 : 0, lq[i] + 1);
            a->seqused_q = tu_index(ar, tmp, b);
        }
        int64_t sq[3] = {rows, h, d}, so[3] = {rows, h, dv}, sl[2] = {h, rows};
        a->q = tu_tensor(ar, dt, 3, sq, pad);
        a->out = tu_tensor(ar, odt, 3, so, pad);
        a->softmax_lse = tu_tensor(ar, FA3C_DTYPE_F32, 2, sl, pad ? 5 : 0);
        if (c->qv) a->qv = tu_tensor(ar, dt, 3, so, pad);
    } else {
        int64_t sq[4] = {b, c->s_q, h, d}, so[4] = {b, c->s_q, h, dv}, sl[3] = {b, h, c->s_q};
        a->q = tu_tensor(ar, dt, 4, sq, pad);
        a->out = tu_tensor(ar, odt, 4, so, pad);
        a->softmax_lse = tu_tensor(ar, FA3C_DTYPE_F32, 3, sl, pad ? 5 : 0);
        if (c->qv) a->qv = tu_tensor(ar, dt, 4, so, pad);
    }
    tu_fill_normal(&a->q, &r, qscale);
    if (c->qv) tu_fill_normal(&a->qv, &r, 1.0);

    if (c->mode == TU_BATCHED) {
        int64_t sk[4] = {b, c->s_k, hk, d}, sv[4] = {b, c->s_k, hk, dv};
        a->k = tu_tensor(ar, dt, 4, sk, pad);
        a->v = tu_tensor(ar, dt, 4, sv, pad);
        p->s_k_static = c->s_k;
    } else if (c->mode == TU_VARLEN) {
        for (int64_t i = 0; i < b; i++) {
            lk[i] = (int32_t)tu_rand_len(&r, c->s_k);
            if (c->zero_len && (i % 5 == 0 || i == b - 1)) lk[i] = 0;
        }
        int64_t total_k = tu_cumsum(lk, b, cu) + 2;
        a->cu_seqlens_k = tu_index(ar, cu, b + 1);
        a->max_seqlen_k = p->s_k_static = tu_max(lk, b);
        if (c->unused) {
            for (int64_t i = 0; i < b; i++) tmp[i] = (int32_t)tu_rng_int(&r, lk[i] > 5 ? lk[i] - 5 : 0, lk[i] + 1);
            a->seqused_k = tu_index(ar, tmp, b);
        }
        int64_t sk[3] = {total_k, hk, d}, sv[3] = {total_k, hk, dv};
        a->k = tu_tensor(ar, dt, 3, sk, pad);
        a->v = tu_tensor(ar, dt, 3, sv, pad);
    } else { /* kvcache */
        int64_t b_cache = c->batch_idx ? 2 * b : b;
        int64_t num_pages = 0, pages_per_seq = 0;
        if (c->page_size > 0) {
            pages_per_seq = 3 * ((c->s_k + c->page_size - 1) / c->page_size);
            num_pages = pages_per_seq * b_cache;
            int64_t sk[4] = {num_pages, c->page_size, hk, d}, sv[4] = {num_pages, c->page_size, hk, dv};
            a->k = tu_tensor(ar, dt, 4, sk, pad);
            a->v = tu_tensor(ar, dt, 4, sv, pad);
            int32_t *perm = malloc(sizeof(int32_t) * (size_t)(num_pages + 1));
            tu_rng_perm(&r, perm, num_pages);
            int64_t sp[2] = {b_cache, pages_per_seq};
            a->page_table = tu_tensor(ar, FA3C_DTYPE_I32, 2, sp, 0);
            memcpy(a->page_table.data, perm, sizeof(int32_t) * (size_t)num_pages);
            free(perm);
            p->s_k_static = pages_per_seq * c->page_size;
        } else {
            int64_t sk[4] = {b_cache, c->s_k, hk, d}, sv[4] = {b_cache, c->s_k, hk, dv};
            a->k = tu_tensor(ar, dt, 4, sk, pad);
            a->v = tu_tensor(ar, dt, 4, sv, pad);
            p->s_k_static = c->s_k;
        }
        /* appended lengths; cache_seqlens leave room for them (and for q's rotary positions) */
        if (c->s_new > 0) {
            for (int64_t i = 0; i < b; i++) lk[i] = (int32_t)(c->varlen_q ? tu_rand_len(&r, c->s_new) : c->s_new);
            if (c->varlen_q) {
                int64_t total_new = tu_cumsum(lk, b, cu);
                a->cu_seqlens_k_new = tu_index(ar, cu, b + 1);
                int64_t sk[3] = {total_new, hk, d}, sv[3] = {total_new, hk, dv};
                a->k_new = tu_tensor(ar, dt, 3, sk, pad);
                a->v_new = tu_tensor(ar, dt, 3, sv, pad);
            } else {
                int64_t sk[4] = {b, c->s_new, hk, d}, sv[4] = {b, c->s_new, hk, dv};
                a->k_new = tu_tensor(ar, dt, 4, sk, pad);
                a->v_new = tu_tensor(ar, dt, 4, sv, pad);
            }
            tu_fill_normal(&a->k_new, &r, 1.0);
            tu_fill_normal(&a->v_new, &r, 1.0);
        }
        int64_t room = c->s_new > 0 ? (c->rotary && c->s_q > c->s_new ? c->s_q : c->s_new) : 0;
        int32_t *cs = tmp;
        for (int64_t i = 0; i < b; i++) cs[i] = (int32_t)tu_rng_int(&r, c->s_new > 0 || c->s_k == 0 ? 0 : 1, c->s_k - room + 1);
        bool seqlens = !(c->no_cache_seqlens && c->s_new == 0);
        if (!seqlens) /* without cache_seqlens every row of the (static) cache is a key */
            for (int64_t i = 0; i < b; i++) cs[i] = (int32_t)p->s_k_static;
        else a->seqused_k = tu_index(ar, cs, b);
        if (c->leftpad) { /* below cache_seqlens, as FA3's test draws it */
            for (int64_t i = 0; i < b; i++) lq[i] = cs[i] > 0 ? (int32_t)tu_rng_int(&r, 0, cs[i]) : 0;
            a->leftpad_k = tu_index(ar, lq, b);
        }
        if (c->rotary && c->rotary_seqlens) {
            for (int64_t i = 0; i < b; i++) lq[i] = cs[i] / 2;
            a->seqlens_rotary = tu_index(ar, lq, b);
        }
        if (c->batch_idx) {
            int32_t *perm = malloc(sizeof(int32_t) * (size_t)b_cache);
            tu_rng_perm(&r, perm, b_cache);
            a->kv_batch_idx = tu_index(ar, perm, b);
            free(perm);
        }
        if (c->rotary) {
            int64_t rd = c->rotary_dim ? c->rotary_dim : d;
            int64_t s_ro = c->page_size > 0 ? num_pages * c->page_size : c->s_k;
            int64_t sh[2] = {s_ro, rd / 2};
            a->rotary_cos = tu_tensor(ar, dt, 2, sh, 0);
            a->rotary_sin = tu_tensor(ar, dt, 2, sh, 0);
            for (int64_t i = 0; i < s_ro * (rd / 2); i++) {
                double ang = 2 * M_PI * tu_rng_uniform(&r);
                fa3c_store(a->rotary_cos.data, dt, i, (float)cos(ang));
                fa3c_store(a->rotary_sin.data, dt, i, (float)sin(ang));
            }
            a->is_rotary_interleaved = c->rotary == 1;
        }
    }
    tu_fill_normal(&a->k, &r, 1.0);
    tu_fill_normal(&a->v, &r, 1.0);

    a->softmax_scale = c->scale > 0 ? c->scale : NAN;
    a->is_causal = c->causal;
    a->window_size_left = c->wl;
    a->window_size_right = c->wr;
    a->attention_chunk = c->chunk;
    a->softcap = c->softcap;
    a->num_splits = c->num_splits;
    a->pack_gqa = c->pack_gqa;
    if (c->sinks != FA3C_DTYPE_NONE) {
        a->sinks = tu_tensor(ar, c->sinks, 1, &h, 0);
        tu_fill_normal(&a->sinks, &r, 1.0);
    }
    if (c->descale) {
        a->q_descale = tu_descale(ar, &r, b, hk, c->pad);
        a->k_descale = tu_descale(ar, &r, b, hk, false);
        a->v_descale = tu_descale(ar, &r, b, hk, c->pad);
    }
    tu_fill_bytes(ar, &a->out, TU_FILL_OUT);
    tu_fill_bytes(ar, &a->softmax_lse, TU_FILL_OUT);
    free(lq);
    free(lk);
    free(cu);
    free(tmp);

    p->k_copy = tu_clone(ar, &a->k);
    p->v_copy = tu_clone(ar, &a->v);
    int rc = naive_fwd(a, &p->k_copy, &p->v_copy, NAIVE_EXACT, &p->exact);
    if (rc == 0) rc = naive_fwd(a, &p->k_copy, &p->v_copy, NAIVE_LOWP, &p->lowp);
    if (rc != 0) {
        fprintf(stderr, "tu_prepare: the naive forward rejected case %s\n", c->name);
        tu_prepared_free(p);
        return -1;
    }
    tu_arena_snapshot(ar);
    return 0;
}

void tu_prepared_free(tu_prepared *p) {
    naive_result_free(&p->exact);
    naive_result_free(&p->lowp);
    tu_arena_free(&p->arena);
}

/* ----------------------------------------------------------------------------------------- */
/* Checks */

void tu_combine_ref(int64_t S, const double *lse_s, const double *out_s, int64_t dv, double *out, double *lse) {
    double m = -INFINITY;
    for (int64_t s = 0; s < S; s++)
        if (isfinite(lse_s[s]) && lse_s[s] > m) m = lse_s[s];
    for (int64_t e = 0; e < dv; e++) out[e] = 0;
    if (m == -INFINITY) {
        *lse = -INFINITY;
        return;
    }
    double l = 0;
    for (int64_t s = 0; s < S; s++)
        if (isfinite(lse_s[s])) l += exp(lse_s[s] - m);
    *lse = m + log(l);
    for (int64_t s = 0; s < S; s++) {
        if (!isfinite(lse_s[s])) continue;
        double w = exp(lse_s[s] - *lse);
        for (int64_t e = 0; e < dv; e++) out[e] += w * out_s[s * dv + e];
    }
}

/* Element offsets of out / lse of (row, head) (row as in naive.h). */
static int64_t tu_out_off(const fa3c_tensor *t, const naive_result *n, int64_t row, int64_t hh) {
    if (n->varlen_q) return row * t->stride[0] + hh * t->stride[1];
    return (row / n->s_q) * t->stride[0] + (row % n->s_q) * t->stride[1] + hh * t->stride[2];
}
static int64_t tu_lse_off(const fa3c_tensor *t, const naive_result *n, int64_t row, int64_t hh) {
    if (n->varlen_q) return hh * t->stride[0] + row * t->stride[1];
    return (row / n->s_q) * t->stride[0] + hh * t->stride[1] + (row % n->s_q) * t->stride[2];
}

/* Bytes of buffer(t) that are not elements of written rows must still hold TU_FILL_OUT. */
static bool tu_untouched(tu_arena *a, const fa3c_tensor *t, const naive_result *n, bool is_lse, char *msg,
                         size_t mn) {
    tu_buf *b = tu_arena_find(a, t->data);
    uint8_t *data = b->base + TU_GUARD;
    uint8_t *mark = calloc(b->bytes, 1);
    size_t es = fa3c_dtype_size(t->dtype);
    int64_t base = ((uint8_t *)t->data - data) / (int64_t)es;
    int64_t per = is_lse ? 1 : n->dv, st = is_lse ? 0 : t->stride[t->ndim - 1];
    for (int64_t row = 0; row < n->rows; row++) {
        if (!n->written[row]) continue;
        for (int64_t hh = 0; hh < n->h; hh++) {
            int64_t o = base + (is_lse ? tu_lse_off(t, n, row, hh) : tu_out_off(t, n, row, hh));
            for (int64_t e = 0; e < per; e++) memset(mark + (o + e * st) * (int64_t)es, 1, es);
        }
    }
    bool ok = true;
    for (size_t i = 0; i < b->bytes && ok; i++) {
        if (!mark[i] && data[i] != TU_FILL_OUT) {
            int64_t el = (int64_t)(i / es) - base;
            snprintf(msg, mn, "%s written outside its rows (element offset %lld)", is_lse ? "lse" : "out",
                     (long long)el);
            ok = false;
        }
    }
    free(mark);
    return ok;
}

/* The forward's cache equals the naive's appended copy: exact, except rotated keys (1 ulp). */
static bool tu_cache_matches(tu_arena *a, const fa3c_tensor *lib, const fa3c_tensor *copy, bool rotated,
                             const char *name, char *msg, size_t mn) {
    tu_buf *bl = tu_arena_find(a, lib->data), *bc = tu_arena_find(a, copy->data);
    size_t es = fa3c_dtype_size(lib->dtype);
    const uint8_t *x = bl->base + TU_GUARD, *y = bc->base + TU_GUARD;
    for (size_t i = 0; i + es <= bl->bytes; i += es) {
        if (memcmp(x + i, y + i, es) == 0) continue;
        float u = fa3c_load(x, lib->dtype, (int64_t)(i / es)), w = fa3c_load(y, lib->dtype, (int64_t)(i / es));
        if (rotated && fabs((double)u - w) <= tu_ulp(lib->dtype, fmax(fabs(u), fabs(w)))) continue;
        snprintf(msg, mn, "%s cache differs from the naive's at element %zu: %g vs %g", name, i / es, u, w);
        return false;
    }
    return true;
}

/* Every buffer except outputs and (when appending) the caches is bitwise unchanged. */
static bool tu_inputs_unchanged(tu_prepared *p, char *msg, size_t mn) {
    tu_arena *a = &p->arena;
    const tu_buf *skip[4] = {tu_arena_find(a, p->args.out.data), tu_arena_find(a, p->args.softmax_lse.data), NULL,
                             NULL};
    if (fa3c_present(&p->args.k_new)) {
        skip[2] = tu_arena_find(a, p->args.k.data);
        skip[3] = tu_arena_find(a, p->args.v.data);
    }
    for (int i = 0; i < a->n; i++) {
        const tu_buf *b = &a->buf[i];
        if (b == skip[0] || b == skip[1] || b == skip[2] || b == skip[3] || !b->saved) continue;
        if (memcmp(b->base, b->saved, b->bytes + 2 * TU_GUARD) != 0) {
            snprintf(msg, mn, "input buffer %d (%zu bytes) was modified", i, b->bytes);
            return false;
        }
    }
    return true;
}

typedef struct tu_accum {
    fa3c_tensor out, lse;  /* (S, b, h, s_q, dv) / (S, b, h, s_q), or (S, h, total_q, dv) / (S, h, total_q) */
    int32_t     S;
} tu_accum;

/* Partials combine to the forward's out / lse (the split path's final step). */
static bool tu_check_accum(const tu_prepared *p, const tu_accum *acc, char *msg, size_t mn) {
    const naive_result *n = &p->exact;
    const fa3c_tensor *o = &p->args.out, *l = &p->args.softmax_lse;
    int64_t S = acc->S, dv = n->dv;
    double *ls = malloc(sizeof(double) * (size_t)S), *os = malloc(sizeof(double) * (size_t)(S * dv));
    double *co = malloc(sizeof(double) * (size_t)dv);
    bool ok = true;
    for (int64_t row = 0; row < n->rows && ok; row++) {
        if (!n->written[row]) continue;
        for (int64_t hh = 0; hh < n->h && ok; hh++) {
            if (n->lse[naive_lse_index(n, row, hh)] == INFINITY) continue; /* no keys: no partials */
            for (int64_t s = 0; s < S; s++) {
                int64_t lo, oo;
                if (n->varlen_q) {
                    lo = s * acc->lse.stride[0] + hh * acc->lse.stride[1] + row * acc->lse.stride[2];
                    oo = s * acc->out.stride[0] + hh * acc->out.stride[1] + row * acc->out.stride[2];
                } else {
                    int64_t bi = row / n->s_q, i = row % n->s_q;
                    lo = s * acc->lse.stride[0] + bi * acc->lse.stride[1] + hh * acc->lse.stride[2] +
                         i * acc->lse.stride[3];
                    oo = s * acc->out.stride[0] + bi * acc->out.stride[1] + hh * acc->out.stride[2] +
                         i * acc->out.stride[3];
                }
                ls[s] = ((const float *)acc->lse.data)[lo];
                for (int64_t e = 0; e < dv; e++) os[s * dv + e] = ((const float *)acc->out.data)[oo + e];
            }
            double cl;
            tu_combine_ref(S, ls, os, dv, co, &cl);
            int64_t ob = tu_out_off(o, n, row, hh);
            for (int64_t e = 0; e < dv && ok; e++) {
                double x = fa3c_load(o->data, o->dtype, ob + e * o->stride[o->ndim - 1]);
                if (!(fabs(x - co[e]) <= tu_ulp(o->dtype, co[e]) + 1e-6)) {
                    snprintf(msg, mn, "partials combine to %.7g but out is %.7g (row %lld head %lld col %lld)", co[e], x,
                             (long long)row, (long long)hh, (long long)e);
                    ok = false;
                }
            }
            if (ok && fa3c_present(l)) {
                double x = ((const float *)l->data)[tu_lse_off(l, n, row, hh)];
                bool same = isinf(cl) ? x == cl : fabs(x - cl) <= 1e-5 * fmax(1.0, fabs(cl));
                if (!same) {
                    snprintf(msg, mn, "partials combine to lse %.7g but lse is %.7g (row %lld head %lld)", cl, x,
                             (long long)row, (long long)hh);
                    ok = false;
                }
            }
        }
    }
    free(ls);
    free(os);
    free(co);
    return ok;
}

/* Numerical checks of out and lse against the naive references. */
static bool tu_check_values(const tu_prepared *p, tu_rule rule, tu_report *rep) {
    const naive_result *ex = &p->exact, *lp = &p->lowp;
    const fa3c_tensor *o = &p->args.out, *l = &p->args.softmax_lse;
    fa3c_dtype odt = o->dtype;
    double max_err = 0, max_pt = 0, atol = 0, sum_err = 0, sum_pt = 0, worst_ref = 0, worst_out = 0;
    int64_t cnt = 0, worst_row = -1, worst_h = 0, worst_e = 0;
    double worst_ratio = -1, worst_lim = 0; /* TIGHT: the element with the largest err / bound */
    for (int64_t row = 0; row < ex->rows; row++) {
        if (!ex->written[row]) continue;
        for (int64_t hh = 0; hh < ex->h; hh++) {
            int64_t ob = tu_out_off(o, ex, row, hh), nb = naive_out_index(ex, row, hh);
            for (int64_t e = 0; e < ex->dv; e++) {
                double x = fa3c_load(o->data, odt, ob + e * o->stride[o->ndim - 1]);
                double ref = rule == TU_RULE_TIGHT ? ex->out[nb + e] : ex->out_r[nb + e];
                double err = fabs(x - ref);
                if (isnan(err)) err = INFINITY;
                double lim = rule == TU_RULE_TIGHT ? tu_ulp(odt, ref) + 1e-6 : 0;
                bool worse = rule == TU_RULE_TIGHT ? err / lim > worst_ratio : err > max_err || worst_row < 0;
                if (worse) {
                    worst_row = row, worst_h = hh, worst_e = e, worst_ref = ref, worst_out = x;
                    worst_ratio = rule == TU_RULE_TIGHT ? err / lim : 0;
                    worst_lim = lim;
                }
                max_err = fmax(max_err, err);
                sum_err += err;
                if (rule == TU_RULE_FA3) {
                    double pt = fabs(lp->out[nb + e] - ref);
                    max_pt = fmax(max_pt, pt);
                    sum_pt += pt;
                    float r1 = fa3c_round(odt, fa3c_round(odt, (float)ref + 0.3f) - 0.3f);
                    atol = fmax(atol, fabs((double)r1 - ref));
                }
                cnt++;
            }
        }
    }
    bool ok;
    if (rule == TU_RULE_TIGHT) { /* reported: the element closest to (or furthest past) its bound */
        rep->max_err = worst_row >= 0 ? fabs(worst_out - worst_ref) : 0;
        rep->bound = worst_lim;
        ok = worst_row < 0 || worst_ratio <= 1;
    } else {
        double rtol = p->c.softcap > 0 ? 3 : 2;
        rep->max_err = max_err;
        rep->bound = rtol * max_pt + 2 * atol;
        ok = max_err <= rep->bound;
        if (ok && p->kvcache) {
            bool fp8 = p->c.dtype == FA3C_DTYPE_E4M3;
            double m = fp8 ? 4 : 2, mm = fp8 ? 3 : 1.5;
            if (!(max_err <= m * max_pt + 1e-5)) {
                snprintf(rep->msg, sizeof rep->msg, "kvcache max rule: %.3g > %g*%.3g + 1e-5", max_err, m, max_pt);
                return false;
            }
            double mean_err = cnt ? sum_err / (double)cnt : 0, mean_pt = cnt ? sum_pt / (double)cnt : 0;
            if (!(mean_err <= mm * mean_pt)) {
                snprintf(rep->msg, sizeof rep->msg, "kvcache mean rule: mean err %.3g > %g * naive mean err %.3g",
                         mean_err, mm, mean_pt);
                return false;
            }
        }
    }
    if (!ok) {
        snprintf(rep->msg, sizeof rep->msg, "out: err %.4g > bound %.4g at row %lld head %lld col %lld (out %.7g, ref %.7g)",
                 rep->max_err, rep->bound, (long long)worst_row, (long long)worst_h, (long long)worst_e, worst_out,
                 worst_ref);
        return false;
    }
    if (fa3c_present(l)) {
        double rel = rule == TU_RULE_TIGHT ? 1e-4 : 1e-3;
        for (int64_t row = 0; row < ex->rows; row++) {
            if (!ex->written[row]) continue;
            for (int64_t hh = 0; hh < ex->h; hh++) {
                double x = ((const float *)l->data)[tu_lse_off(l, ex, row, hh)];
                double ref = ex->lse[naive_lse_index(ex, row, hh)];
                bool good = isinf(ref) || isinf(x) ? x == ref : fabs(x - ref) <= rel * fmax(1.0, fabs(ref));
                if (!good) {
                    snprintf(rep->msg, sizeof rep->msg, "lse %.7g vs naive %.7g at row %lld head %lld", x, ref,
                             (long long)row, (long long)hh);
                    return false;
                }
            }
        }
    }
    return true;
}

void tu_accum_tensors(tu_arena *arena, const naive_result *n, int64_t S, fa3c_tensor *out, fa3c_tensor *lse) {
    if (n->varlen_q) {
        int64_t so[4] = {S, n->h, n->rows, n->dv}, sl[3] = {S, n->h, n->rows};
        *out = tu_tensor(arena, FA3C_DTYPE_F32, 4, so, 0);
        *lse = tu_tensor(arena, FA3C_DTYPE_F32, 3, sl, 0);
    } else {
        int64_t so[5] = {S, n->b, n->h, n->s_q, n->dv}, sl[4] = {S, n->b, n->h, n->s_q};
        *out = tu_tensor(arena, FA3C_DTYPE_F32, 5, so, 0);
        *lse = tu_tensor(arena, FA3C_DTYPE_F32, 4, sl, 0);
    }
}

int tu_buf_copy(fa3c_context *ctx, tu_buf *b, fa3c_copy_kind kind) {
    if (!b || !b->dev) return 0;
    size_t n = b->bytes + 2 * TU_GUARD;
    fa3c_status st = kind == FA3C_COPY_HOST_TO_DEVICE ? fa3c_device_copy(ctx, b->dev, b->base, n, kind)
                                                      : fa3c_device_copy(ctx, b->base, b->dev, n, kind);
    return st == FA3C_OK ? 0 : -1;
}

void tu_args_to_device(tu_arena *a, tu_arena *run, fa3c_fwd_args *x, const fa3c_context *ctx) {
    fa3c_tensor *ts[] = {&x->q, &x->k, &x->v, &x->k_new, &x->v_new, &x->qv, &x->out, &x->softmax_lse,
                         &x->out_accum, &x->lse_accum, &x->cu_seqlens_q, &x->cu_seqlens_k, &x->cu_seqlens_k_new,
                         &x->seqused_q, &x->seqused_k, &x->page_table, &x->kv_batch_idx, &x->leftpad_k,
                         &x->rotary_cos, &x->rotary_sin, &x->seqlens_rotary, &x->q_descale, &x->k_descale,
                         &x->v_descale, &x->scheduler_metadata, &x->sinks};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        if (!fa3c_present(ts[i])) continue;
        tu_arena *owner = tu_arena_find(a, ts[i]->data) ? a : run;
        *ts[i] = tu_on_device(owner, ts[i], ctx);
    }
}

/* Scheduler arguments of the forward p->args (flash_attn_with_kvcache's get_scheduler_metadata). */
static void tu_sched_args(const tu_prepared *p, fa3c_scheduler_args *sa) {
    const fa3c_fwd_args *a = &p->args;
    const tu_case *c = &p->c;
    fa3c_scheduler_args_init(sa);
    sa->batch_size = c->b;
    sa->max_seqlen_q = fa3c_present(&a->cu_seqlens_q) ? a->max_seqlen_q : c->s_q;
    sa->max_seqlen_k = p->s_k_static;
    sa->num_heads_q = c->h;
    sa->num_heads_kv = c->h_k;
    sa->headdim = c->d;
    sa->headdim_v = c->dv;
    sa->qkv_dtype = c->dtype;
    sa->seqused_k = a->seqused_k;
    sa->cu_seqlens_q = a->cu_seqlens_q;
    sa->cu_seqlens_k = a->cu_seqlens_k;
    sa->cu_seqlens_k_new = a->cu_seqlens_k_new;
    sa->seqused_q = a->seqused_q;
    sa->leftpad_k = a->leftpad_k;
    sa->page_size = c->page_size;
    sa->max_seqlen_k_new = c->s_new;
    sa->is_causal = c->causal;
    sa->window_size_left = c->wl;
    sa->window_size_right = c->wr;
    sa->attention_chunk = c->chunk;
    sa->has_softcap = c->softcap > 0;
    sa->num_splits = c->num_splits;
    sa->pack_gqa = c->pack_gqa;
}

static void tu_sched_to_device(tu_arena *a, fa3c_scheduler_args *sa, const fa3c_context *ctx) {
    fa3c_tensor *ts[] = {&sa->seqused_k, &sa->cu_seqlens_q, &sa->cu_seqlens_k, &sa->cu_seqlens_k_new,
                         &sa->seqused_q, &sa->leftpad_k};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        if (fa3c_present(ts[i])) *ts[i] = tu_on_device(a, ts[i], ctx);
}

static tu_verdict tu_fail_status(tu_report *rep, fa3c_status st, const char *what) {
    if (st == FA3C_ERROR_UNSUPPORTED) {
        rep->v = TU_SKIP;
        snprintf(rep->msg, sizeof rep->msg, "unsupported: %s", fa3c_last_error());
    } else {
        rep->v = TU_FAIL;
        snprintf(rep->msg, sizeof rep->msg, "%s returned %s: %s", what, fa3c_status_string(st), fa3c_last_error());
    }
    return rep->v;
}

tu_verdict tu_run(fa3c_context *ctx, tu_prepared *p, tu_rule rule, tu_report *rep) {
    memset(rep, 0, sizeof *rep);
    rep->num_splits = 1;
    bool dev = fa3c_context_device_type(ctx) != FA3C_DEVICE_CPU;
    tu_arena run; /* this call's own buffers: partials and metadata */
    tu_arena_init(&run);
    tu_accum acc = {0};
    tu_arena_restore(&p->arena);
    if (dev && tu_arena_to_device(&p->arena, ctx) != 0) {
        snprintf(rep->msg, sizeof rep->msg, "copying the case to the device failed");
        return rep->v = TU_FAIL;
    }
    fa3c_fwd_args ad = p->args; /* what the library sees (device pointers on a device) */
    if (dev) tu_args_to_device(&p->arena, &run, &ad, ctx);

    fa3c_fwd_info info;
    memset(&info, 0, sizeof info);
    fa3c_status st = fa3c_fwd_query(ctx, &ad, &info);
    if (st != FA3C_OK) {
        tu_arena_free(&run);
        return tu_fail_status(rep, st, "fa3c_fwd_query");
    }
    rep->num_splits = info.num_splits;
    fa3c_problem prob;
    fa3c_kernel_choice choice = {-1, "?"};
    if (fa3c_problem_init(ctx, &ad, &prob) == FA3C_OK) ctx->backend->select(ctx, &prob, &choice);
    rep->kernel = choice.name;
    if (p->c.out_accum && info.num_splits > 1) {
        int64_t S = info.num_splits;
        tu_accum_tensors(&run, &p->exact, S, &acc.out, &acc.lse);
        acc.S = (int32_t)S;
    }
    fa3c_scheduler_args sd; /* the metadata needs cache_seqlens (seqused_k) */
    fa3c_tensor meta = {0};
    bool use_meta = p->c.sched_meta && p->kvcache && fa3c_present(&p->args.seqused_k);
    if (use_meta) {
        tu_sched_args(p, &sd);
        if (dev) tu_sched_to_device(&p->arena, &sd, ctx);
        int64_t meta_n = 0;
        st = fa3c_scheduler_metadata_size(ctx, &sd, &meta_n);
        if (st != FA3C_OK) {
            tu_arena_free(&run);
            return tu_fail_status(rep, st, "fa3c_scheduler_metadata_size");
        }
        meta = tu_tensor(&run, FA3C_DTYPE_I32, 1, &meta_n, 0);
    }
    if (dev && tu_arena_to_device(&run, ctx) != 0) {
        snprintf(rep->msg, sizeof rep->msg, "copying the case to the device failed");
        tu_arena_free(&run);
        return rep->v = TU_FAIL;
    }
    if (acc.S > 1) {
        ad.out_accum = tu_on_device(&run, &acc.out, ctx);
        ad.lse_accum = tu_on_device(&run, &acc.lse, ctx);
    }
    if (use_meta) {
        ad.scheduler_metadata = tu_on_device(&run, &meta, ctx);
        st = fa3c_get_scheduler_metadata(ctx, &sd, &ad.scheduler_metadata);
        if (st != FA3C_OK) {
            tu_arena_free(&run);
            return tu_fail_status(rep, st, "fa3c_get_scheduler_metadata");
        }
    }
    rep->v = TU_PASS;
    for (int call = 0; call < (use_meta ? 2 : 1) && rep->v == TU_PASS; call++) {
        if (call > 0) { /* FA3's test restores the cache and reuses the metadata */
            tu_arena_restore(&p->arena);
            if (dev && tu_arena_to_device(&p->arena, ctx) != 0) {
                snprintf(rep->msg, sizeof rep->msg, "copying the case to the device failed");
                rep->v = TU_FAIL;
                break;
            }
        }
        st = fa3c_fwd(ctx, &ad);
        if (st != FA3C_OK) {
            tu_fail_status(rep, st, "fa3c_fwd");
            break;
        }
        if (dev && (tu_arena_from_device(&p->arena, ctx) != 0 || tu_arena_from_device(&run, ctx) != 0)) {
            snprintf(rep->msg, sizeof rep->msg, "copying the results from the device failed");
            rep->v = TU_FAIL;
            break;
        }
        char *m = rep->msg;
        size_t mn = sizeof rep->msg;
        bool ok = tu_arena_guards(&p->arena, m, mn) == 0 && tu_arena_guards(&run, m, mn) == 0;
        ok = ok && tu_inputs_unchanged(p, m, mn);
        if (ok && fa3c_present(&p->args.k_new)) {
            ok = tu_cache_matches(&p->arena, &p->args.k, &p->k_copy, fa3c_present(&p->args.rotary_cos), "k", m, mn) &&
                 tu_cache_matches(&p->arena, &p->args.v, &p->v_copy, false, "v", m, mn);
        }
        ok = ok && tu_untouched(&p->arena, &p->args.out, &p->exact, false, m, mn);
        ok = ok && tu_untouched(&p->arena, &p->args.softmax_lse, &p->exact, true, m, mn);
        ok = ok && tu_check_values(p, rule, rep);
        if (ok && acc.S > 1) ok = tu_check_accum(p, &acc, m, mn);
        if (!ok) {
            rep->v = TU_FAIL;
            if (use_meta && call > 0) {
                char tmp[sizeof rep->msg];
                snprintf(tmp, sizeof tmp, "second call with the same metadata: %.470s", rep->msg);
                memcpy(rep->msg, tmp, sizeof tmp);
            }
        }
    }
    tu_arena_free(&run);
    return rep->v;
}
