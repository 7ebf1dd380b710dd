/*
 * Validation of the forward's arguments and derivation of the problem every backend runs
 * (FA3 hopper/flash_api.cpp mha_fwd: its checks, its derived sizes, its heuristics).
 *
 * Shape legend as in include/fa3c.h: b, s_q, s_k, s_new, h, h_k, d, dv, S; total_q, total_k,
 * total_new for packed (varlen) token counts; b_k the cache batch.
 *
 * Order: scalars, then every tensor descriptor on its own (rank, sizes, device, span), then the
 * tensors against each other as mha_fwd does, then the heuristics (out_accum's shape depends on
 * the resolved split count), and last -- only when asked (check_inputs) and only where the index
 * data is host memory -- the contents of the index tensors. Nothing is read from a data pointer
 * before every static check has passed, and nothing is ever written.
 */
#include "core/validate.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define BAD(...) fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, __VA_ARGS__)

typedef long long ll; /* for printf */

/* ----------------------------------------------------------------------------------------- */
/* Descriptor checks (exported through validate.h) */

static bool dtype_known(fa3c_dtype dt) { return dt >= FA3C_DTYPE_F32 && dt <= FA3C_DTYPE_I32; }

static const char *device_str(fa3c_device_type type, int32_t index, char *buf, size_t n) {
    if (type == FA3C_DEVICE_CPU) snprintf(buf, n, "cpu");
    else if (type == FA3C_DEVICE_CUDA) snprintf(buf, n, "cuda:%d", (int)index);
    else snprintf(buf, n, "device type %d", (int)type);
    return buf;
}

static const char *strides_str(const fa3c_tensor *t, char *buf, size_t n) {
    fa3c_tensor s = *t;
    for (int i = 0; i < t->ndim; i++) s.shape[i] = t->stride[i];
    return fa3c_shape_str(&s, buf, n);
}

static bool is_empty(const fa3c_tensor *t) {
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] == 0) return true;
    return false;
}

bool fa3c_is_contiguous(const fa3c_tensor *t) {
    if (is_empty(t)) return true;
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != expect) return false;
        expect *= t->shape[i];
    }
    return true;
}

bool fa3c_last_dim_contiguous(const fa3c_tensor *t) {
    return is_empty(t) || t->shape[t->ndim - 1] <= 1 || t->stride[t->ndim - 1] == 1;
}

fa3c_status fa3c_validate_tensor(const fa3c_context *ctx, const char *name, const fa3c_tensor *t) {
    char b1[128], b2[128];
    if (!fa3c_present(t)) return FA3C_OK;
    if (!dtype_known(t->dtype)) return BAD("%s: expected a valid dtype, got dtype code %d", name, (int)t->dtype);
    if (t->ndim < 1 || t->ndim > FA3C_MAX_DIMS)
        return BAD("%s: expected 1 to %d dimensions, got ndim %d", name, FA3C_MAX_DIMS, (int)t->ndim);
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0) return BAD("%s: expected sizes >= 0, got shape[%d] = %lld", name, i, (ll)t->shape[i]);
        if (t->shape[i] > FA3C_MAX_DIM_SIZE)
            return BAD("%s: expected sizes <= %d, got shape[%d] = %lld", name, FA3C_MAX_DIM_SIZE, i, (ll)t->shape[i]);
    }
    bool same_device = t->device_type == ctx->device_type &&
                       (t->device_type == FA3C_DEVICE_CPU ||
                        (t->device_type == FA3C_DEVICE_CUDA && t->device_index == ctx->device_index));
    if (!same_device)
        return BAD("%s: expected a tensor on %s (the context's device), got %s", name,
                   device_str(ctx->device_type, ctx->device_index, b1, sizeof b1),
                   device_str(t->device_type, t->device_index, b2, sizeof b2));
    /* An empty tensor is never dereferenced: any data pointer and strides are fine (as in torch). */
    if (is_empty(t)) return FA3C_OK;

    int64_t numel = 1, span = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (numel > FA3C_MAX_NUMEL / t->shape[i])
            return BAD("%s: expected at most 2^48 elements, got shape %s", name, fa3c_shape_str(t, b1, sizeof b1));
        numel *= t->shape[i];
        int64_t st = t->stride[i], reach;
        if (st == INT64_MIN || __builtin_mul_overflow(t->shape[i] - 1, st < 0 ? -st : st, &reach) ||
            __builtin_add_overflow(span, reach, &span))
            span = INT64_MAX;
    }
    int64_t bytes;
    if (span == INT64_MAX || __builtin_mul_overflow(span + 1, (int64_t)fa3c_dtype_size(t->dtype), &bytes))
        return BAD("%s: shape %s with strides %s spans more than 2^63 bytes", name, fa3c_shape_str(t, b1, sizeof b1),
                   strides_str(t, b2, sizeof b2));
    if (t->data == NULL)
        return BAD("%s: expected a data pointer for a tensor of shape %s, got NULL", name,
                   fa3c_shape_str(t, b1, sizeof b1));
    if ((uintptr_t)t->data % fa3c_dtype_size(t->dtype) != 0)
        return BAD("%s: expected a data pointer aligned to %zu bytes (%s), got %p", name, fa3c_dtype_size(t->dtype),
                   fa3c_dtype_name(t->dtype), t->data);
    return FA3C_OK;
}

fa3c_status fa3c_validate_shape(const char *name, const fa3c_tensor *t, int ndim, const int64_t *shape,
                                const char *legend) {
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (ok) return FA3C_OK;
    fa3c_tensor e;
    memset(&e, 0, sizeof e);
    e.ndim = ndim;
    for (int i = 0; i < ndim; i++) e.shape[i] = shape[i];
    char b1[128], b2[128];
    return BAD("%s: expected shape %s%s%s, got %s", name, fa3c_shape_str(&e, b1, sizeof b1), legend ? " = " : "",
               legend ? legend : "", fa3c_shape_str(t, b2, sizeof b2));
}

static fa3c_status need_dtype(const char *name, const fa3c_tensor *t, fa3c_dtype want, const char *why) {
    if (t->dtype == want) return FA3C_OK;
    return BAD("%s: expected dtype %s%s, got %s", name, fa3c_dtype_name(want), why ? why : "",
               fa3c_dtype_name(t->dtype));
}

static fa3c_status need_contiguous(const char *name, const fa3c_tensor *t) {
    if (fa3c_is_contiguous(t)) return FA3C_OK;
    char b1[128], b2[128];
    return BAD("%s: expected a contiguous tensor, got shape %s with strides %s", name, fa3c_shape_str(t, b1, sizeof b1),
               strides_str(t, b2, sizeof b2));
}

static fa3c_status need_last_contiguous(const char *name, const fa3c_tensor *t) {
    if (fa3c_last_dim_contiguous(t)) return FA3C_OK;
    char b1[128];
    return BAD("%s: expected stride(-1) == 1, got strides %s", name, strides_str(t, b1, sizeof b1));
}

static fa3c_status need_ndim(const char *name, const fa3c_tensor *t, int ndim, const char *legend) {
    if (t->ndim == ndim) return FA3C_OK;
    char b1[128];
    return BAD("%s: expected %d dimension%s %s, got shape %s", name, ndim, ndim == 1 ? "" : "s", legend,
               fa3c_shape_str(t, b1, sizeof b1));
}

fa3c_status fa3c_validate_index(const fa3c_context *ctx, const char *name, const fa3c_tensor *t, int64_t n,
                                const char *legend) {
    if (!fa3c_present(t)) return BAD("%s: required, got an absent tensor", name);
    FA3C_TRY(fa3c_validate_tensor(ctx, name, t));
    FA3C_TRY(need_dtype(name, t, FA3C_DTYPE_I32, NULL));
    FA3C_TRY(fa3c_validate_shape(name, t, 1, &n, legend));
    return need_contiguous(name, t);
}

/* ----------------------------------------------------------------------------------------- */
/* Scalars and descriptors */

static fa3c_status check_scalars(const fa3c_context *ctx, const fa3c_fwd_args *a) {
    if (a->is_causal != 0 && a->is_causal != 1) return BAD("is_causal: expected 0 or 1, got %d", (int)a->is_causal);
    if (a->is_rotary_interleaved != 0 && a->is_rotary_interleaved != 1)
        return BAD("is_rotary_interleaved: expected 0 or 1, got %d", (int)a->is_rotary_interleaved);
    if (a->check_inputs < -1 || a->check_inputs > 1)
        return BAD("check_inputs: expected -1, 0 or 1, got %d", (int)a->check_inputs);
    if (a->pack_gqa < -1 || a->pack_gqa > 1) return BAD("pack_gqa: expected -1, 0 or 1, got %d", (int)a->pack_gqa);
    /* FA3: > 256 is an error, not a cap (the combine kernels stop at 256 splits). */
    if (a->num_splits > 256) return BAD("num_splits: expected <= 256, got %d", (int)a->num_splits);
    if (a->sm_margin < 0 || a->sm_margin >= ctx->num_sm)
        return BAD("sm_margin: expected 0 <= sm_margin < %d (the context's SM count), got %d", (int)ctx->num_sm,
                   (int)a->sm_margin);
    /* Bounded so that chunk starts plus the chunk length stay far from int64 overflow (FA3 keeps it in an int). */
    if (a->attention_chunk < 0 || a->attention_chunk > INT32_MAX)
        return BAD("attention_chunk: expected 0 <= attention_chunk <= %d, got %lld", INT32_MAX,
                   (ll)a->attention_chunk);
    if (!isfinite((float)a->softcap) || a->softcap < 0)
        return BAD("softcap: expected a finite value >= 0, got %g", a->softcap);
    if (!isnan(a->softmax_scale) && !isfinite((float)a->softmax_scale))
        return BAD("softmax_scale: expected NaN (default 1/sqrt(d)) or a finite float, got %g", a->softmax_scale);
    if (a->max_seqlen_q > INT32_MAX)
        return BAD("max_seqlen_q: expected <= %d, got %lld", INT32_MAX, (ll)a->max_seqlen_q);
    if (a->max_seqlen_k > INT32_MAX)
        return BAD("max_seqlen_k: expected <= %d, got %lld", INT32_MAX, (ll)a->max_seqlen_k);
    return FA3C_OK;
}

static const struct {
    const char *name;
    size_t      offset;
} fwd_tensors[] = {
#define T(f) {#f, offsetof(fa3c_fwd_args, f)}
    T(q), T(k), T(v), T(k_new), T(v_new), T(qv), T(out), T(softmax_lse), T(out_accum), T(lse_accum),
    T(cu_seqlens_q), T(cu_seqlens_k), T(cu_seqlens_k_new), T(seqused_q), T(seqused_k), T(page_table),
    T(kv_batch_idx), T(leftpad_k), T(rotary_cos), T(rotary_sin), T(seqlens_rotary), T(q_descale),
    T(k_descale), T(v_descale), T(scheduler_metadata), T(sinks),
#undef T
};

static fa3c_status check_descriptors(const fa3c_context *ctx, const fa3c_fwd_args *a) {
    for (size_t i = 0; i < sizeof fwd_tensors / sizeof fwd_tensors[0]; i++) {
        const fa3c_tensor *t = (const fa3c_tensor *)((const char *)a + fwd_tensors[i].offset);
        /* FA3 never looks at cu_seqlens_k_new unless k_new is given; neither do we. */
        if (t == &a->cu_seqlens_k_new && !fa3c_present(&a->k_new)) continue;
        FA3C_TRY(fa3c_validate_tensor(ctx, fwd_tensors[i].name, t));
    }
    return FA3C_OK;
}

/* ----------------------------------------------------------------------------------------- */
/* q, k, v and the layout they imply */

/* cu_seqlens_q / cu_seqlens_k before b is known: int32, 1-D, contiguous, at least one entry. */
static fa3c_status check_cu_seqlens(const char *name, const fa3c_tensor *t) {
    char b1[128];
    FA3C_TRY(need_dtype(name, t, FA3C_DTYPE_I32, NULL));
    if (t->ndim != 1 || t->shape[0] < 1)
        return BAD("%s: expected shape (b + 1,) with b >= 0, got %s", name, fa3c_shape_str(t, b1, sizeof b1));
    return need_contiguous(name, t);
}

static fa3c_status check_qkv(const fa3c_fwd_args *a, fa3c_problem *p) {
    const fa3c_tensor *q = &a->q, *k = &a->k, *v = &a->v, *pt = &a->page_table;
    const fa3c_tensor *cu_q = &a->cu_seqlens_q, *cu_k = &a->cu_seqlens_k;
    char b1[128];
    if (!fa3c_present(q)) return BAD("q: required, got an absent tensor");
    if (!fa3c_present(k)) return BAD("k: required, got an absent tensor");
    if (!fa3c_present(v)) return BAD("v: required, got an absent tensor");
    fa3c_dtype dt = q->dtype;
    if (dt != FA3C_DTYPE_F16 && dt != FA3C_DTYPE_BF16 && dt != FA3C_DTYPE_E4M3)
        return BAD("q: expected dtype %s, %s or %s, got %s", fa3c_dtype_name(FA3C_DTYPE_F16),
                   fa3c_dtype_name(FA3C_DTYPE_BF16), fa3c_dtype_name(FA3C_DTYPE_E4M3), fa3c_dtype_name(dt));
    FA3C_TRY(need_dtype("k", k, dt, " (the dtype of q)"));
    FA3C_TRY(need_dtype("v", v, dt, " (the dtype of q)"));

    p->paged = fa3c_present(pt);
    if (p->paged) {
        FA3C_TRY(need_dtype("page_table", pt, FA3C_DTYPE_I32, NULL));
        FA3C_TRY(need_ndim("page_table", pt, 2, "(b_k, max_pages)"));
    }
    p->varlen_q = fa3c_present(cu_q);
    if (p->varlen_q) {
        FA3C_TRY(check_cu_seqlens("cu_seqlens_q", cu_q));
        if (a->max_seqlen_q < 0)
            return BAD("max_seqlen_q: required with cu_seqlens_q (expected >= 0), got %lld", (ll)a->max_seqlen_q);
    }
    p->varlen_k = fa3c_present(cu_k);
    if (p->varlen_k) {
        FA3C_TRY(check_cu_seqlens("cu_seqlens_k", cu_k));
        if (a->max_seqlen_k < 0)
            return BAD("max_seqlen_k: required with cu_seqlens_k (expected >= 0), got %lld", (ll)a->max_seqlen_k);
        if (p->paged) return BAD("cu_seqlens_k: not allowed together with page_table");
        if (fa3c_present(&a->kv_batch_idx)) return BAD("cu_seqlens_k: not allowed together with kv_batch_idx");
    }

    FA3C_TRY(p->varlen_q ? need_ndim("q", q, 3, "(total_q, h, d) with cu_seqlens_q")
                         : need_ndim("q", q, 4, "(b, s_q, h, d)"));
    if (p->paged) {
        FA3C_TRY(need_ndim("k", k, 4, "(num_pages, page_size, h_k, d) with page_table"));
        FA3C_TRY(need_ndim("v", v, 4, "(num_pages, page_size, h_k, dv) with page_table"));
    } else if (p->varlen_k) {
        FA3C_TRY(need_ndim("k", k, 3, "(total_k, h_k, d) with cu_seqlens_k"));
        FA3C_TRY(need_ndim("v", v, 3, "(total_k, h_k, dv) with cu_seqlens_k"));
    } else {
        FA3C_TRY(need_ndim("k", k, 4, "(b_k, s_k, h_k, d)"));
        FA3C_TRY(need_ndim("v", v, 4, "(b_k, s_k, h_k, dv)"));
    }
    FA3C_TRY(need_last_contiguous("q", q));
    FA3C_TRY(need_last_contiguous("k", k));
    FA3C_TRY(need_last_contiguous("v", v));
    if (p->paged) FA3C_TRY(need_last_contiguous("page_table", pt));

    /* Sizes exactly as mha_fwd derives them. */
    p->in_dtype = dt;
    p->is_fp8 = dt == FA3C_DTYPE_E4M3;
    p->out_dtype = p->is_fp8 ? FA3C_DTYPE_BF16 : dt;
    p->b = p->varlen_q ? cu_q->shape[0] - 1 : q->shape[0];
    p->s_q = p->varlen_q ? a->max_seqlen_q : q->shape[1];
    p->total_q = p->varlen_q ? q->shape[0] : p->b * q->shape[1];
    p->h = q->shape[q->ndim - 2];
    p->d = q->shape[q->ndim - 1];
    p->dv = v->shape[v->ndim - 1];
    p->h_k = k->shape[k->ndim - 2];
    p->page_size = p->paged ? k->shape[1] : 1;
    p->num_pages = p->paged ? k->shape[0] : 0;
    p->max_pages = p->paged ? pt->shape[1] : 0;
    p->s_k = p->varlen_k ? a->max_seqlen_k : p->paged ? p->max_pages * p->page_size : k->shape[1];
    /* FA3 counts a paged cache as b * page_size keys (only its emptiness matters: the "no keys" case). */
    p->total_k = p->varlen_k ? k->shape[0] : p->b * k->shape[1];
    p->b_k = p->paged ? pt->shape[0] : p->varlen_k ? cu_k->shape[0] - 1 : k->shape[0];
    if (p->s_k > INT32_MAX)
        return BAD("page_table: expected s_k = max_pages * page_size <= %d, got %lld * %lld", INT32_MAX,
                   (ll)p->max_pages, (ll)p->page_size);

    if (!fa3c_present(&a->kv_batch_idx) && p->b != p->b_k) {
        if (p->paged)
            return BAD("page_table: expected %lld rows (b, without kv_batch_idx), got shape %s", (ll)p->b,
                       fa3c_shape_str(pt, b1, sizeof b1));
        if (p->varlen_k) {
            int64_t want = p->b + 1;
            return fa3c_validate_shape("cu_seqlens_k", cu_k, 1, &want, "(b + 1,)");
        }
        return BAD("k: expected batch size %lld (b, without kv_batch_idx), got shape %s", (ll)p->b,
                   fa3c_shape_str(k, b1, sizeof b1));
    }

    int align = p->is_fp8 ? 16 : 8;
    if (p->d > 256) return BAD("q: expected head dim d <= 256, got %lld", (ll)p->d);
    if (p->d == 0 || p->d % align)
        return BAD("q: expected head dim d a positive multiple of %d (%s), got %lld", align, fa3c_dtype_name(dt),
                   (ll)p->d);
    /* h_k == 0 describes an empty problem and is fine as long as there are no query heads either. */
    if (p->h_k == 0 && p->h != 0)
        return BAD("k: expected h_k >= 1 kv heads (q has h = %lld heads), got h_k = 0", (ll)p->h);
    if (p->h_k != 0 && p->h % p->h_k)
        return BAD("k: expected h_k dividing h = %lld, got h_k = %lld", (ll)p->h, (ll)p->h_k);
    if (p->dv == 0 || p->dv % align)
        return BAD("v: expected head dim dv a positive multiple of %d (%s), got %lld", align, fa3c_dtype_name(dt),
                   (ll)p->dv);
    if (p->dv != p->d) {
        bool pair_ok = (p->d > 128 && p->d <= 192 && p->dv > 96 && p->dv <= 128) || (p->d <= 64 && p->dv <= 512);
        if (!pair_ok)
            return BAD("v: expected head dim dv == d, or d in (128, 192] with dv in (96, 128], or d <= 64 with "
                       "dv <= 512; got d = %lld, dv = %lld",
                       (ll)p->d, (ll)p->dv);
        if (p->dv > 256 && p->is_fp8)
            return BAD("v: head dim dv > 256 needs dtype f16 or bf16, got dv = %lld with %s", (ll)p->dv,
                       fa3c_dtype_name(dt));
        /* FA3 accepts this combination in its checks but compiles no kernel for it. */
        if (p->is_fp8 && p->d <= 64)
            return BAD("v: with e4m3 and d <= 64 expected dv == d = %lld, got dv = %lld", (ll)p->d, (ll)p->dv);
    }

    /* k's sizes define b_k, s_k / page_size and h_k; its head dim must still be q's. */
    if (p->paged) {
        int64_t ks[4] = {p->num_pages, p->page_size, p->h_k, p->d}, vs[4] = {p->num_pages, p->page_size, p->h_k, p->dv};
        FA3C_TRY(fa3c_validate_shape("k", k, 4, ks, "(num_pages, page_size, h_k, d)"));
        FA3C_TRY(fa3c_validate_shape("v", v, 4, vs, "(num_pages, page_size, h_k, dv)"));
    } else if (p->varlen_k) {
        int64_t ks[3] = {p->total_k, p->h_k, p->d}, vs[3] = {p->total_k, p->h_k, p->dv}, cs = p->b + 1;
        FA3C_TRY(fa3c_validate_shape("k", k, 3, ks, "(total_k, h_k, d)"));
        FA3C_TRY(fa3c_validate_shape("v", v, 3, vs, "(total_k, h_k, dv)"));
        FA3C_TRY(fa3c_validate_shape("cu_seqlens_k", cu_k, 1, &cs, "(b + 1,)"));
    } else {
        int64_t ks[4] = {p->b_k, p->s_k, p->h_k, p->d}, vs[4] = {p->b_k, p->s_k, p->h_k, p->dv};
        FA3C_TRY(fa3c_validate_shape("k", k, 4, ks, "(b_k, s_k, h_k, d)"));
        FA3C_TRY(fa3c_validate_shape("v", v, 4, vs, "(b_k, s_k, h_k, dv)"));
    }
    return FA3C_OK;
}

/* seqused_q, seqused_k, leftpad_k (b,), and FA3's varlen condition. */
static fa3c_status check_lengths(const fa3c_context *ctx, const fa3c_fwd_args *a, fa3c_problem *p) {
    if (fa3c_present(&a->seqused_q)) FA3C_TRY(fa3c_validate_index(ctx, "seqused_q", &a->seqused_q, p->b, "(b,)"));
    if (fa3c_present(&a->seqused_k)) FA3C_TRY(fa3c_validate_index(ctx, "seqused_k", &a->seqused_k, p->b, "(b,)"));
    if (fa3c_present(&a->leftpad_k)) FA3C_TRY(fa3c_validate_index(ctx, "leftpad_k", &a->leftpad_k, p->b, "(b,)"));
    p->is_varlen = p->varlen_q || p->varlen_k || fa3c_present(&a->seqused_q) || fa3c_present(&a->seqused_k) ||
                   fa3c_present(&a->leftpad_k);
    return FA3C_OK;
}

/* A tensor shaped like out: (b, s_q, h, dv) or (total_q, h, dv) with cu_seqlens_q. */
static fa3c_status check_out_shape(const char *name, const fa3c_tensor *t, const fa3c_problem *p) {
    if (p->varlen_q) {
        int64_t s[3] = {p->total_q, p->h, p->dv};
        return fa3c_validate_shape(name, t, 3, s, "(total_q, h, dv)");
    }
    int64_t s[4] = {p->b, p->s_q, p->h, p->dv};
    return fa3c_validate_shape(name, t, 4, s, "(b, s_q, h, dv)");
}

static fa3c_status check_out(const fa3c_fwd_args *a, const fa3c_problem *p) {
    if (!fa3c_present(&a->out)) return BAD("out: required (the caller allocates it), got an absent tensor");
    FA3C_TRY(need_dtype("out", &a->out, p->out_dtype,
                        p->is_fp8 ? " (the output dtype of e4m3 inputs)" : " (the dtype of q)"));
    FA3C_TRY(check_out_shape("out", &a->out, p));
    return need_last_contiguous("out", &a->out);
}

/* k_new / v_new / cu_seqlens_k_new: the keys appended into the cache in this call. */
static fa3c_status check_append(const fa3c_context *ctx, const fa3c_fwd_args *a, fa3c_problem *p) {
    const fa3c_tensor *kn = &a->k_new, *vn = &a->v_new, *cu = &a->cu_seqlens_k_new;
    p->append = fa3c_present(kn);
    if (!p->append) {
        /* FA3 would silently drop v_new; a caller passing it surely meant to append. */
        if (fa3c_present(vn)) return BAD("v_new: given without k_new");
        return FA3C_OK;
    }
    if (!fa3c_present(vn)) return BAD("v_new: required with k_new, got an absent tensor");
    if (!fa3c_present(&a->seqused_k))
        return BAD("seqused_k: required with k_new (the cache lengths to append at), got an absent tensor");
    if (p->s_q > p->s_k)
        return BAD("k_new: appending needs s_q <= s_k, got s_q = %lld > s_k = %lld", (ll)p->s_q, (ll)p->s_k);
    p->varlen_new = fa3c_present(cu);
    if (p->varlen_new) FA3C_TRY(fa3c_validate_index(ctx, "cu_seqlens_k_new", cu, p->b + 1, "(b + 1,)"));
    FA3C_TRY(need_dtype("k_new", kn, p->in_dtype, " (the dtype of q)"));
    FA3C_TRY(need_dtype("v_new", vn, p->in_dtype, " (the dtype of q)"));
    if (p->varlen_new) {
        FA3C_TRY(need_ndim("k_new", kn, 3, "(total_new, h_k, d) with cu_seqlens_k_new"));
        p->s_new = 0;
        p->total_new = kn->shape[0];
        int64_t ks[3] = {p->total_new, p->h_k, p->d}, vs[3] = {p->total_new, p->h_k, p->dv};
        FA3C_TRY(fa3c_validate_shape("k_new", kn, 3, ks, "(total_new, h_k, d)"));
        FA3C_TRY(fa3c_validate_shape("v_new", vn, 3, vs, "(total_new, h_k, dv)"));
    } else {
        FA3C_TRY(need_ndim("k_new", kn, 4, "(b, s_new, h_k, d)"));
        p->s_new = kn->shape[1];
        p->total_new = p->b * p->s_new;
        int64_t ks[4] = {p->b, p->s_new, p->h_k, p->d}, vs[4] = {p->b, p->s_new, p->h_k, p->dv};
        FA3C_TRY(fa3c_validate_shape("k_new", kn, 4, ks, "(b, s_new, h_k, d)"));
        FA3C_TRY(fa3c_validate_shape("v_new", vn, 4, vs, "(b, s_new, h_k, dv)"));
    }
    FA3C_TRY(need_last_contiguous("k_new", kn));
    FA3C_TRY(need_last_contiguous("v_new", vn));
    /* Cache row r lives in page r / page_size: an empty page cannot receive keys. */
    if (p->paged && p->page_size == 0 && p->total_new > 0)
        return BAD("k: expected page_size = k.shape[1] >= 1 to append into a paged cache, got 0");
    return FA3C_OK;
}

static fa3c_status check_qv(const fa3c_fwd_args *a, fa3c_problem *p) {
    p->has_qv = fa3c_present(&a->qv);
    if (!p->has_qv) return FA3C_OK;
    if (p->d > 64) return BAD("qv: needs head dim d <= 64, got d = %lld", (ll)p->d);
    if (p->dv < 256) return BAD("qv: needs head dim dv >= 256, got dv = %lld", (ll)p->dv);
    if (p->is_fp8) return BAD("qv: needs dtype f16 or bf16 inputs, got %s", fa3c_dtype_name(p->in_dtype));
    FA3C_TRY(need_dtype("qv", &a->qv, p->in_dtype, " (the dtype of q)"));
    FA3C_TRY(check_out_shape("qv", &a->qv, p));
    return need_last_contiguous("qv", &a->qv);
}

static fa3c_status check_rotary(const fa3c_context *ctx, const fa3c_fwd_args *a, fa3c_problem *p) {
    const fa3c_tensor *cs = &a->rotary_cos, *sn = &a->rotary_sin;
    char b1[128];
    p->has_rotary = fa3c_present(cs);
    p->rotary_interleaved = a->is_rotary_interleaved == 1;
    if (!p->has_rotary) {
        if (fa3c_present(sn)) return BAD("rotary_sin: given without rotary_cos");
        if (fa3c_present(&a->seqlens_rotary)) return BAD("seqlens_rotary: given without rotary_cos");
        return FA3C_OK;
    }
    if (!p->append) return BAD("rotary_cos: needs k_new (rotary is applied only when appending)");
    if (!fa3c_present(sn)) return BAD("rotary_sin: required with rotary_cos, got an absent tensor");
    FA3C_TRY(need_ndim("rotary_cos", cs, 2, "(s_ro, rotary_dim / 2)"));
    FA3C_TRY(need_contiguous("rotary_cos", cs));
    p->s_ro = cs->shape[0];
    p->rotary_dim = 2 * cs->shape[1];
    if (p->rotary_dim > p->d)
        return BAD("rotary_cos: expected rotary_dim = 2 * shape[1] <= d = %lld, got shape %s", (ll)p->d,
                   fa3c_shape_str(cs, b1, sizeof b1));
    if (p->rotary_dim % 16)
        return BAD("rotary_cos: expected rotary_dim = 2 * shape[1] a multiple of 16, got shape %s",
                   fa3c_shape_str(cs, b1, sizeof b1));
    if (p->paged && p->s_ro < p->s_k)
        return BAD("rotary_cos: expected s_ro = shape[0] >= s_k = %lld with page_table, got %lld", (ll)p->s_k,
                   (ll)p->s_ro);
    /* FA3 wants the dtype of q; e4m3 tables are too coarse to be useful, so any float dtype is
     * accepted for fp8 inputs. */
    bool dt_ok = cs->dtype == p->in_dtype ||
                 (p->is_fp8 && (cs->dtype == FA3C_DTYPE_F32 || cs->dtype == FA3C_DTYPE_F16 ||
                                cs->dtype == FA3C_DTYPE_BF16));
    if (!dt_ok)
        return p->is_fp8 ? BAD("rotary_cos: expected dtype e4m3, f32, f16 or bf16, got %s", fa3c_dtype_name(cs->dtype))
                         : need_dtype("rotary_cos", cs, p->in_dtype, " (the dtype of q)");
    FA3C_TRY(need_dtype("rotary_sin", sn, cs->dtype, " (the dtype of rotary_cos)"));
    FA3C_TRY(fa3c_validate_shape("rotary_sin", sn, 2, cs->shape, "the shape of rotary_cos"));
    FA3C_TRY(need_contiguous("rotary_sin", sn));
    if (fa3c_present(&a->seqlens_rotary))
        FA3C_TRY(fa3c_validate_index(ctx, "seqlens_rotary", &a->seqlens_rotary, p->b, "(b,)"));
    return FA3C_OK;
}

/* kv_batch_idx, descales, sinks, softmax_lse, scheduler_metadata. */
static fa3c_status check_misc(const fa3c_context *ctx, const fa3c_fwd_args *a, fa3c_problem *p) {
    if (fa3c_present(&a->kv_batch_idx))
        FA3C_TRY(fa3c_validate_index(ctx, "kv_batch_idx", &a->kv_batch_idx, p->b, "(b,)"));

    /* Descales only matter for e4m3 (FA3 ignores them otherwise); a wrong one is still a bug. */
    const char *const dnames[3] = {"q_descale", "k_descale", "v_descale"};
    const fa3c_tensor *ds[3] = {&a->q_descale, &a->k_descale, &a->v_descale};
    for (int i = 0; i < 3; i++) {
        if (!fa3c_present(ds[i])) continue;
        int64_t s[2] = {p->b, p->h_k};
        FA3C_TRY(need_dtype(dnames[i], ds[i], FA3C_DTYPE_F32, NULL));
        FA3C_TRY(fa3c_validate_shape(dnames[i], ds[i], 2, s, "(b, h_k)"));
    }

    p->has_sinks = fa3c_present(&a->sinks);
    if (p->has_sinks) {
        fa3c_dtype sd = a->sinks.dtype;
        if (sd != FA3C_DTYPE_F32 && sd != FA3C_DTYPE_F16 && sd != FA3C_DTYPE_BF16)
            return BAD("sinks: expected dtype f32, f16 or bf16, got %s", fa3c_dtype_name(sd));
        FA3C_TRY(fa3c_validate_shape("sinks", &a->sinks, 1, &p->h, "(h,)"));
        FA3C_TRY(need_contiguous("sinks", &a->sinks));
    }

    if (fa3c_present(&a->softmax_lse)) {
        FA3C_TRY(need_dtype("softmax_lse", &a->softmax_lse, FA3C_DTYPE_F32, NULL));
        if (p->varlen_q) {
            int64_t s[2] = {p->h, p->total_q};
            FA3C_TRY(fa3c_validate_shape("softmax_lse", &a->softmax_lse, 2, s, "(h, total_q)"));
        } else {
            int64_t s[3] = {p->b, p->h, p->s_q};
            FA3C_TRY(fa3c_validate_shape("softmax_lse", &a->softmax_lse, 3, s, "(b, h, s_q)"));
        }
    }

    /* Its size and signature are checked against this call by fa3c_sched_verify. */
    if (fa3c_present(&a->scheduler_metadata)) {
        FA3C_TRY(need_dtype("scheduler_metadata", &a->scheduler_metadata, FA3C_DTYPE_I32, NULL));
        FA3C_TRY(need_ndim("scheduler_metadata", &a->scheduler_metadata, 1, "(n,)"));
        FA3C_TRY(need_contiguous("scheduler_metadata", &a->scheduler_metadata));
    }
    return FA3C_OK;
}

/* ----------------------------------------------------------------------------------------- */
/* Derived scalars, window normalisation and heuristics */

static fa3c_status resolve(const fa3c_context *ctx, const fa3c_fwd_args *a, fa3c_problem *p) {
    /* The dynamic-split scheduler packs the split count into 8 bits. */
    if (p->is_varlen && a->num_splits > 255)
        return BAD("num_splits: expected <= 255 on the varlen (dynamic split) path, got %d", (int)a->num_splits);

    p->scale = isnan(a->softmax_scale) ? (float)(1.0 / sqrt((double)p->d)) : (float)a->softmax_scale;
    p->softcap = (float)a->softcap;
    p->no_keys = p->total_k + p->total_new == 0;
    p->check_inputs = a->check_inputs == -1 ? ctx->check_inputs : a->check_inputs == 1;

    bool is_causal = a->is_causal == 1, is_local = false;
    int64_t wl = a->window_size_left, wr = a->window_size_right;
    p->chunk = a->attention_chunk;
    fa3c_normalize_window(p->s_q, p->s_k, p->d, p->paged, p->chunk, &is_causal, &wl, &wr, &is_local);
    p->is_causal = is_causal;
    p->is_local = is_local;
    p->window_left = wl;
    p->window_right = wr;

    return fa3c_problem_heuristics(ctx, p);
}

/* out_accum (S, b, h, s_q, dv) / (S, h, total_q, dv), lse_accum (S, b, h, s_q) / (S, h, total_q). */
static fa3c_status check_accum(const fa3c_fwd_args *a, const fa3c_problem *p) {
    const fa3c_tensor *oa = &a->out_accum, *la = &a->lse_accum;
    if (!fa3c_present(oa) && !fa3c_present(la)) return FA3C_OK;
    if (!fa3c_present(la)) return BAD("lse_accum: required with out_accum, got an absent tensor");
    if (!fa3c_present(oa)) return BAD("out_accum: required with lse_accum, got an absent tensor");
    int64_t S = p->num_splits;
    if (S == 1)
        return BAD("out_accum: given, but the resolved num_splits is 1 (no split-KV); pass out_accum and "
                   "lse_accum only when num_splits > 1");
    FA3C_TRY(need_dtype("out_accum", oa, FA3C_DTYPE_F32, NULL));
    FA3C_TRY(need_dtype("lse_accum", la, FA3C_DTYPE_F32, NULL));
    if (p->varlen_q) {
        int64_t os[4] = {S, p->h, p->total_q, p->dv}, ls[3] = {S, p->h, p->total_q};
        FA3C_TRY(fa3c_validate_shape("out_accum", oa, 4, os, "(S, h, total_q, dv) with S the resolved num_splits"));
        FA3C_TRY(fa3c_validate_shape("lse_accum", la, 3, ls, "(S, h, total_q) with S the resolved num_splits"));
    } else {
        int64_t os[5] = {S, p->b, p->h, p->s_q, p->dv}, ls[4] = {S, p->b, p->h, p->s_q};
        FA3C_TRY(fa3c_validate_shape("out_accum", oa, 5, os, "(S, b, h, s_q, dv) with S the resolved num_splits"));
        FA3C_TRY(fa3c_validate_shape("lse_accum", la, 4, ls, "(S, b, h, s_q) with S the resolved num_splits"));
    }
    return need_last_contiguous("out_accum", oa);
}

/* ----------------------------------------------------------------------------------------- */
/* Index data (check_inputs) */

static int64_t at1(const fa3c_tensor *t, int64_t i) { return ((const int32_t *)t->data)[i * t->stride[0]]; }
static int64_t at2(const fa3c_tensor *t, int64_t i, int64_t j) {
    return ((const int32_t *)t->data)[i * t->stride[0] + j * t->stride[1]];
}

/* cu (b+1,): starts >= 0, non-decreasing, ends within the total rows of its tensor. */
static fa3c_status check_cu_data(const char *name, const fa3c_tensor *cu, int64_t b, int64_t total,
                                 const char *total_name) {
    if (at1(cu, 0) < 0) return BAD("%s: expected %s[0] >= 0, got %lld", name, name, (ll)at1(cu, 0));
    for (int64_t i = 1; i <= b; i++)
        if (at1(cu, i) < at1(cu, i - 1))
            return BAD("%s: expected non-decreasing values, got %s[%lld] = %lld < %s[%lld] = %lld", name, name, (ll)i,
                       (ll)at1(cu, i), name, (ll)(i - 1), (ll)at1(cu, i - 1));
    if (at1(cu, b) > total)
        return BAD("%s: expected %s[%lld] <= %s = %lld, got %lld", name, name, (ll)b, total_name, (ll)total,
                   (ll)at1(cu, b));
    return FA3C_OK;
}

/*
 * With check_inputs, the contents of the index tensors are checked so that every row the forward
 * reads or writes lies inside its tensor. Without it nothing here is verified (as in FA3, whose
 * index data lives on the device): out-of-range lengths, page ids or batch indices are then the
 * caller's responsibility and may read or write outside the caller's buffers.
 */
static fa3c_status check_index_data(const fa3c_fwd_args *a, const fa3c_problem *p) {
    const fa3c_tensor *sq = &a->seqused_q, *sk = &a->seqused_k, *lp = &a->leftpad_k, *kbi = &a->kv_batch_idx;
    const fa3c_tensor *sr = &a->seqlens_rotary, *cu_q = &a->cu_seqlens_q, *cu_k = &a->cu_seqlens_k;
    const fa3c_tensor *cu_new = &a->cu_seqlens_k_new;
    if (p->varlen_q) FA3C_TRY(check_cu_data("cu_seqlens_q", cu_q, p->b, p->total_q, "total_q = q.shape[0]"));
    if (p->varlen_k) FA3C_TRY(check_cu_data("cu_seqlens_k", cu_k, p->b, p->total_k, "total_k = k.shape[0]"));
    if (p->varlen_new)
        FA3C_TRY(check_cu_data("cu_seqlens_k_new", cu_new, p->b, p->total_new, "total_new = k_new.shape[0]"));

    for (int64_t i = 0; i < p->b; i++) {
        int64_t q_cap = p->varlen_q ? at1(cu_q, i + 1) - at1(cu_q, i) : p->s_q;
        int64_t seqlen_q = q_cap;
        if (fa3c_present(sq)) {
            seqlen_q = at1(sq, i);
            if (seqlen_q < 0 || seqlen_q > q_cap)
                return BAD("seqused_q: expected 0 <= seqused_q[%lld] <= %lld (the query rows of sequence %lld), "
                           "got %lld",
                           (ll)i, (ll)q_cap, (ll)i, (ll)seqlen_q);
        }

        int64_t kb = i;
        if (fa3c_present(kbi)) {
            kb = at1(kbi, i);
            if (kb < 0 || kb >= p->b_k)
                return BAD("kv_batch_idx: expected 0 <= kv_batch_idx[%lld] < b_k = %lld, got %lld", (ll)i,
                           (ll)p->b_k, (ll)kb);
        }
        int64_t k_cap = p->varlen_k ? at1(cu_k, i + 1) - at1(cu_k, i) : p->s_k;
        int64_t left = fa3c_present(lp) ? at1(lp, i) : 0;
        if (left < 0) return BAD("leftpad_k: expected leftpad_k[%lld] >= 0, got %lld", (ll)i, (ll)left);
        int64_t seqlen_new = 0;
        if (p->append) seqlen_new = p->varlen_new ? at1(cu_new, i + 1) - at1(cu_new, i) : p->s_new;

        /* Cached keys end at row k_end (leftpad counted); appended keys follow it. */
        int64_t k_end = k_cap;
        if (fa3c_present(sk)) {
            k_end = at1(sk, i);
            if (k_end < left)
                return fa3c_present(lp)
                           ? BAD("seqused_k: expected seqused_k[%lld] >= leftpad_k[%lld] = %lld, got %lld", (ll)i,
                                 (ll)i, (ll)left, (ll)k_end)
                           : BAD("seqused_k: expected seqused_k[%lld] >= 0, got %lld", (ll)i, (ll)k_end);
            if (k_end + seqlen_new > k_cap && !p->append)
                return BAD("seqused_k: expected seqused_k[%lld] <= %lld (the keys of sequence %lld), got %lld", (ll)i,
                           (ll)k_cap, (ll)i, (ll)k_end);
            if (k_end + seqlen_new > k_cap)
                return BAD("seqused_k: expected seqused_k[%lld] + %lld appended keys <= %lld (the cache capacity of "
                           "sequence %lld), got %lld",
                           (ll)i, (ll)seqlen_new, (ll)k_cap, (ll)i, (ll)k_end);
        } else if (left > k_cap) {
            return BAD("leftpad_k: expected leftpad_k[%lld] <= %lld (the keys of sequence %lld), got %lld", (ll)i,
                       (ll)k_cap, (ll)i, (ll)left);
        }

        /* Pages holding cache rows [left, k_end + seqlen_new): attended and appended. */
        if (p->paged && p->page_size > 0 && k_end + seqlen_new > left) {
            int64_t first = left / p->page_size, last = (k_end + seqlen_new - 1) / p->page_size;
            for (int64_t j = first; j <= last; j++) {
                int64_t id = at2(&a->page_table, kb, j);
                if (id < 0 || id >= p->num_pages)
                    return BAD("page_table: expected page ids in [0, %lld) (num_pages), got page_table[%lld, %lld] = "
                               "%lld (sequence %lld)",
                               (ll)p->num_pages, (ll)kb, (ll)j, (ll)id, (ll)i);
            }
        }

        /* Rotary positions read: base + j for appended keys; base + row for queries when causal or
         * local, else base alone (FA3 reads the tables unchecked). */
        if (p->has_rotary) {
            int64_t base = fa3c_present(sr) ? at1(sr, i) : k_end;
            int64_t q_span = (p->is_causal || p->is_local) ? seqlen_q : (seqlen_q > 0 ? 1 : 0);
            int64_t need = seqlen_new > q_span ? seqlen_new : q_span;
            if (fa3c_present(sr) && base < 0)
                return BAD("seqlens_rotary: expected seqlens_rotary[%lld] >= 0, got %lld", (ll)i, (ll)base);
            if (need > 0 && base + need > p->s_ro) {
                if (fa3c_present(sr))
                    return BAD("seqlens_rotary: expected seqlens_rotary[%lld] + %lld rotary positions <= s_ro = %lld, "
                               "got %lld",
                               (ll)i, (ll)need, (ll)p->s_ro, (ll)base);
                return BAD("rotary_cos: expected s_ro = shape[0] >= seqused_k[%lld] + %lld = %lld rotary positions, "
                           "got %lld",
                           (ll)i, (ll)need, (ll)(base + need), (ll)p->s_ro);
            }
        }
    }
    return FA3C_OK;
}

/* ----------------------------------------------------------------------------------------- */

fa3c_status fa3c_problem_init(const fa3c_context *ctx, const fa3c_fwd_args *args, fa3c_problem *p) {
    if (!ctx) return BAD("ctx: expected a context, got NULL");
    if (!args) return BAD("args: expected forward arguments, got NULL");
    if (!p) return fa3c_fail(FA3C_ERROR_INTERNAL, "fa3c_problem_init: NULL problem");
    memset(p, 0, sizeof *p);
    p->args = args;
    FA3C_TRY(check_scalars(ctx, args));
    FA3C_TRY(check_descriptors(ctx, args));
    FA3C_TRY(check_qkv(args, p));
    FA3C_TRY(check_lengths(ctx, args, p));
    FA3C_TRY(check_out(args, p));
    FA3C_TRY(check_append(ctx, args, p));
    FA3C_TRY(check_qv(args, p));
    FA3C_TRY(check_rotary(ctx, args, p));
    FA3C_TRY(check_misc(ctx, args, p));
    FA3C_TRY(resolve(ctx, args, p));
    FA3C_TRY(check_accum(args, p));
    /* Index data can only be read here when it is host memory. */
    if (p->check_inputs && ctx->device_type == FA3C_DEVICE_CPU) FA3C_TRY(check_index_data(args, p));
    return FA3C_OK;
}
