/* Public entry points: validate, plan, then hand over to the context's backend. */
#include "core/internal.h"
#include "core/validate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define STR_(x) #x
#define STR(x) STR_(x)

int fa3c_version(void) { return FA3C_VERSION; }
const char *fa3c_version_string(void) {
    return STR(FA3C_VERSION_MAJOR) "." STR(FA3C_VERSION_MINOR) "." STR(FA3C_VERSION_PATCH);
}

void fa3c_fwd_args_init(fa3c_fwd_args *a) {
    if (!a) return;
    memset(a, 0, sizeof *a);
    a->max_seqlen_q = -1;
    a->max_seqlen_k = -1;
    a->softmax_scale = NAN;
    a->window_size_left = -1;
    a->window_size_right = -1;
    a->pack_gqa = -1;
    a->check_inputs = -1;
}

/* Validation + heuristics + the backend's kernel choice: everything before memory is touched. */
static fa3c_status plan_fwd(fa3c_context *ctx, const fa3c_fwd_args *args, fa3c_problem *p,
                            fa3c_kernel_choice *choice) {
    if (!ctx) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "ctx: NULL");
    if (!args) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "args: NULL");
    FA3C_TRY(fa3c_problem_init(ctx, args, p));
    if (fa3c_present(&args->scheduler_metadata) && !p->is_varlen)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "scheduler_metadata: computed for a call with seqused_k (cache_seqlens); this call has "
                         "no seqused_k, cu_seqlens or leftpad_k");
    return ctx->backend->select(ctx, p, choice);
}

fa3c_status fa3c_fwd_query(fa3c_context *ctx, const fa3c_fwd_args *args, fa3c_fwd_info *info) {
    fa3c_clear_error();
    if (!info) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "info: NULL");
    fa3c_problem p;
    fa3c_kernel_choice choice;
    FA3C_TRY(plan_fwd(ctx, args, &p, &choice));
    info->num_splits = p.num_splits;
    info->pack_gqa = p.pack_gqa;
    info->is_varlen = p.is_varlen;
    info->block_m = p.block_m;
    info->block_n = p.block_n;
    info->scheduler_metadata_size = p.is_varlen ? fa3c_sched_size(&p) : 0;
    return FA3C_OK;
}

fa3c_status fa3c_fwd(fa3c_context *ctx, const fa3c_fwd_args *args) {
    fa3c_clear_error();
    fa3c_problem p;
    fa3c_kernel_choice choice;
    FA3C_TRY(plan_fwd(ctx, args, &p, &choice));
    if (ctx->device_type != FA3C_DEVICE_CPU) return ctx->backend->fwd(ctx, &p, NULL, &choice);

    /* CPU: the schedule (per-sequence split counts) is computed or verified on the host, in a
     * buffer the context keeps so that steady-state forwards allocate nothing. */
    if (p.is_varlen && !fa3c_present(&args->scheduler_metadata) && ctx->sched_scratch_len < fa3c_sched_size(&p)) {
        int32_t *grown = realloc(ctx->sched_scratch, (size_t)fa3c_sched_size(&p) * sizeof *grown);
        if (!grown) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "scheduler metadata: out of memory");
        ctx->sched_scratch = grown;
        ctx->sched_scratch_len = fa3c_sched_size(&p);
    }
    fa3c_sched_plan plan;
    FA3C_TRY(fa3c_sched_plan_get(&p, ctx->sched_scratch, &plan));
    /* FA3's empty cases, after every check (metadata included): no query rows or no heads write
     * nothing (not even appended keys); no keys at all give out = 0 and lse = +inf everywhere. */
    if (p.total_q == 0 || p.h_k == 0) return FA3C_OK;
    if (p.no_keys) {
        fa3c_tensor_fill(&args->out, 0.0f);
        if (fa3c_present(&args->softmax_lse)) fa3c_tensor_fill(&args->softmax_lse, INFINITY);
        return FA3C_OK;
    }
    return ctx->backend->fwd(ctx, &p, &plan, &choice);
}

/* ----------------------------------------------------------------------------------------- */
/* combine and merge_state: validation and canonical shapes */

static bool is_out_float(fa3c_dtype t) { return t == FA3C_DTYPE_F32 || t == FA3C_DTYPE_F16 || t == FA3C_DTYPE_BF16; }

static fa3c_status check_tensor(const fa3c_context *ctx, const char *name, const fa3c_tensor *t, int ndim,
                                bool need_float_out, bool last_contiguous) {
    char buf[96];
    if (!fa3c_present(t)) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: required", name);
    if (t->ndim != ndim)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: expected %d dimensions, got %d %s", name, ndim, t->ndim,
                         t->ndim >= 0 && t->ndim <= FA3C_MAX_DIMS ? fa3c_shape_str(t, buf, sizeof buf) : "");
    /* sizes, element count and span within bounds (offsets cannot overflow), data and alignment */
    FA3C_TRY(fa3c_validate_tensor(ctx, name, t));
    if (need_float_out ? !is_out_float(t->dtype) : t->dtype != FA3C_DTYPE_F32)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: expected dtype %s, got %s", name,
                         need_float_out ? "f32, f16 or bf16" : "f32", fa3c_dtype_name(t->dtype));
    if (t->device_type != ctx->device_type || t->device_index != ctx->device_index)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: expected the context's device (%s:%d), got %s:%d", name,
                         ctx->device_type == FA3C_DEVICE_CPU ? "cpu" : "cuda", ctx->device_index,
                         t->device_type == FA3C_DEVICE_CPU ? "cpu" : "cuda", t->device_index);
    if (last_contiguous && t->stride[ndim - 1] != 1 && t->shape[ndim - 1] > 1)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: expected stride(-1) == 1, got %lld", name,
                         (long long)t->stride[ndim - 1]);
    if (fa3c_numel(t) > 0 && !t->data) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: NULL data", name);
    return FA3C_OK;
}

static fa3c_status check_shape(const char *name, const fa3c_tensor *t, const int64_t *shape) {
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] == shape[i]) continue;
        char got[96], want[96];
        fa3c_tensor e = *t;
        memcpy(e.shape, shape, sizeof e.shape);
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: expected shape %s, got %s", name,
                         fa3c_shape_str(&e, want, sizeof want), fa3c_shape_str(t, got, sizeof got));
    }
    return FA3C_OK;
}

/* t, with zero strides and a non-NULL data pointer when it has no elements: an empty tensor may
 * carry any strides and pointer, and the backends still form row offsets from them (an empty dv,
 * or no splits). Nothing is ever read or written through the placeholder. */
static const float empty_placeholder;

static fa3c_tensor strides_of_empty(const fa3c_tensor *t) {
    fa3c_tensor r = *t;
    if (fa3c_numel(t) == 0) {
        for (int i = 0; i < t->ndim; i++) r.stride[i] = 0;
        if (!r.data) r.data = (void *)&empty_placeholder;
    }
    return r;
}

/* (S, total, h, dv) -> (S, 1, total, h, dv), and its lse likewise. */
static fa3c_tensor add_batch_dim(const fa3c_tensor *t, int at) {
    fa3c_tensor r = *t;
    for (int i = t->ndim; i > at; i--) {
        r.shape[i] = t->shape[i - 1];
        r.stride[i] = t->stride[i - 1];
    }
    r.shape[at] = 1;
    r.stride[at] = 0;
    r.ndim = t->ndim + 1;
    return r;
}

fa3c_status fa3c_combine(fa3c_context *ctx, const fa3c_tensor *out_partial, const fa3c_tensor *lse_partial,
                         const fa3c_tensor *out, const fa3c_tensor *lse) {
    fa3c_clear_error();
    if (!ctx) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "ctx: NULL");
    if (!fa3c_present(out_partial)) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "out_partial: required");
    int nd = out_partial->ndim;
    if (nd != 4 && nd != 5)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "out_partial: expected 5 dimensions (S, b, s, h, dv) or 4 (S, total, h, dv), got %d", nd);
    FA3C_TRY(check_tensor(ctx, "out_partial", out_partial, nd, false, true));
    FA3C_TRY(check_tensor(ctx, "lse_partial", lse_partial, nd - 1, false, false));
    FA3C_TRY(check_shape("lse_partial", lse_partial, out_partial->shape));
    if (out_partial->shape[0] > 256)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "out_partial: expected at most 256 splits, got %lld",
                         (long long)out_partial->shape[0]);
    FA3C_TRY(check_tensor(ctx, "out", out, nd - 1, true, true));
    FA3C_TRY(check_shape("out", out, out_partial->shape + 1));
    bool has_lse = fa3c_present(lse);
    if (has_lse) {
        FA3C_TRY(check_tensor(ctx, "lse", lse, nd - 2, false, false));
        FA3C_TRY(check_shape("lse", lse, out_partial->shape + 1));
    }
    fa3c_tensor op = strides_of_empty(out_partial), lp = strides_of_empty(lse_partial), o = strides_of_empty(out);
    fa3c_tensor l = has_lse ? strides_of_empty(lse) : (fa3c_tensor){0};
    if (nd == 4) {
        op = add_batch_dim(&op, 1), lp = add_batch_dim(&lp, 1), o = add_batch_dim(&o, 0);
        if (has_lse) l = add_batch_dim(&l, 0);
    }
    return ctx->backend->combine(ctx, &op, &lp, &o, has_lse ? &l : NULL);
}

fa3c_status fa3c_merge_state(fa3c_context *ctx, const fa3c_tensor *out_a, const fa3c_tensor *lse_a,
                             const fa3c_tensor *out_b, const fa3c_tensor *lse_b, const fa3c_tensor *out,
                             const fa3c_tensor *lse) {
    fa3c_clear_error();
    if (!ctx) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "ctx: NULL");
    FA3C_TRY(check_tensor(ctx, "out_a", out_a, 3, true, true));
    FA3C_TRY(check_tensor(ctx, "out_b", out_b, 3, true, true));
    FA3C_TRY(check_shape("out_b", out_b, out_a->shape));
    FA3C_TRY(check_tensor(ctx, "out", out, 3, true, true));
    FA3C_TRY(check_shape("out", out, out_a->shape));
    FA3C_TRY(check_tensor(ctx, "lse_a", lse_a, 2, false, false));
    FA3C_TRY(check_shape("lse_a", lse_a, out_a->shape));
    FA3C_TRY(check_tensor(ctx, "lse_b", lse_b, 2, false, false));
    FA3C_TRY(check_shape("lse_b", lse_b, out_a->shape));
    bool has_lse = fa3c_present(lse);
    if (has_lse) {
        FA3C_TRY(check_tensor(ctx, "lse", lse, 2, false, false));
        FA3C_TRY(check_shape("lse", lse, out_a->shape));
    }
    fa3c_tensor oa = strides_of_empty(out_a), la = strides_of_empty(lse_a), ob = strides_of_empty(out_b);
    fa3c_tensor lb = strides_of_empty(lse_b), o = strides_of_empty(out);
    fa3c_tensor l = has_lse ? strides_of_empty(lse) : (fa3c_tensor){0};
    return ctx->backend->merge_state(ctx, &oa, &la, &ob, &lb, &o, has_lse ? &l : NULL);
}
