/*
 * cpu-ref: the scalar reference backend (fp32 math), the test oracle. This file holds its vtable
 * and the forward's order of phases: edge cases, append, attention (ref_append.c,
 * ref_attention.c); combine and merge_state live in ref_combine.c.
 */
#include "cpu/ref/ref.h"

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

/*
 * The forward (shapes in include/fa3c.h): append k_new / v_new into the cache, then attend.
 * Core has handled FA3's empty cases (no query rows, no heads, no keys).
 */
static fa3c_status ref_fwd(fa3c_context *ctx, const fa3c_problem *p, const fa3c_sched_plan *plan,
                           const fa3c_kernel_choice *choice) {
    (void)choice;
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
