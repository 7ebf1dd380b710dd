/*
 * cpu-ref: the scalar reference backend (fp32 math), the test oracle. This file holds its vtable
 * and the forward's order of phases: edge cases, append, attention (ref_append.c,
 * ref_attention.c); combine and merge_state live in ref_combine.c.
 */
#include "cpu/ref/ref.h"

#include <math.h>
#include <stdlib.h>

static bool ref_available(void) { return true; }

/* cpu-ref keeps no per-context state: the core's thread pool is all it uses. */
static fa3c_status ref_context_init(fa3c_context *ctx, const fa3c_context_options *opt) {
    (void)ctx;
    (void)opt;
    return FA3C_OK;
}

static void ref_context_free(fa3c_context *ctx) { (void)ctx; }

/* Every valid problem runs, on one kernel. */
static fa3c_status ref_select(const fa3c_context *ctx, const fa3c_problem *p, fa3c_kernel_choice *choice) {
    (void)ctx;
    (void)p;
    choice->kernel = 0;
    choice->name = "ref";
    return FA3C_OK;
}

/* Every element of t (any rank, any strides) set to value, rounded to t's dtype. */
static void fill_tensor(const fa3c_tensor *t, float value) {
    if (fa3c_numel(t) == 0) return;
    int64_t idx[FA3C_MAX_DIMS] = {0};
    for (;;) {
        fa3c_store(t->data, t->dtype, fa3c_offset(t, idx), value);
        int dim = t->ndim - 1;
        while (dim >= 0 && ++idx[dim] == t->shape[dim]) idx[dim--] = 0;
        if (dim < 0) return;
    }
}

/*
 * The forward (shapes in include/fa3c.h):
 *   nothing to do  (total_q == 0 or h_k == 0): nothing written;
 *   no keys at all (total_k + total_new == 0): out = 0, softmax_lse = +inf everywhere;
 *   otherwise append k_new / v_new into the cache, then attend.
 */
static fa3c_status ref_fwd(fa3c_context *ctx, const fa3c_problem *p, const fa3c_sched_plan *plan,
                           const fa3c_kernel_choice *choice) {
    (void)choice;
    const fa3c_fwd_args *a = p->args;
    if (p->total_q == 0 || p->h_k == 0) return FA3C_OK;
    if (p->no_keys) {
        fill_tensor(&a->out, 0.0f);
        if (fa3c_present(&a->softmax_lse)) fill_tensor(&a->softmax_lse, INFINITY);
        return FA3C_OK;
    }

    fa3c_seqlens *sl = malloc((size_t)p->b * sizeof *sl); /* (b,) */
    if (!sl) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cpu-ref fwd: out of memory");
    for (int64_t bi = 0; bi < p->b; bi++) fa3c_seqlens_get(p, bi, &sl[bi]);

    fa3c_status st = FA3C_OK;
    if (p->append) st = ref_append(ctx, p, sl);
    if (st == FA3C_OK) st = ref_attention(ctx, p, plan, sl);
    free(sl);
    return st;
}

static fa3c_status ref_synchronize(fa3c_context *ctx) {
    (void)ctx;
    return FA3C_OK;
}

const fa3c_backend fa3c_backend_cpu_ref = {
    .name = "cpu-ref",
    .description = "scalar reference (fp32 math), the test oracle",
    .device_type = FA3C_DEVICE_CPU,
    .available = ref_available,
    .context_init = ref_context_init,
    .context_free = ref_context_free,
    .select = ref_select,
    .fwd = ref_fwd,
    .combine = ref_combine,
    .merge_state = ref_merge_state,
    .synchronize = ref_synchronize,
};
