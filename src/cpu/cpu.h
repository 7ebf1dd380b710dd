/*
 * cpu: the fast CPU backend (threads + SIMD). Private to src/cpu/ (not src/cpu/ref/).
 * Shape legend as in include/fa3c.h (b, s_q, s_k, s_new, h, h_k, d, dv, S) and cpu_kernels.h
 * (R, n, dq, dvp).
 *
 * A forward runs in up to three passes over the context's thread pool: append (k_new / v_new
 * into the cache), attention (work items of one sequence, one kv head (decode: a group of kv
 * heads), one q tile and one KV split each, the h / h_k q heads of a kv head packed together),
 * and, when the KV range is split, the combine of the per-split partials. Every output element is computed by one item
 * in a fixed order, so results are bitwise reproducible for a given thread count (the thread
 * count only decides whether short problems split their KV range internally).
 */
#ifndef FA3C_CPU_H
#define FA3C_CPU_H

#include "core/internal.h"
#include "cpu/cpu_kernels.h"

#include <stddef.h>

typedef struct cpu_state {
    cpu_isa     isa;
    cpu_kernels k;
    void         *ws;     /* workspace, 64-byte aligned, grown on demand, never shrunk */
    size_t        ws_bytes;
    fa3c_seqlens *sl;     /* (sl_cap,) lengths of the current forward's sequences */
    int64_t       sl_cap;
} cpu_state;

static inline cpu_state *cpu_state_of(const fa3c_context *ctx) { return (cpu_state *)ctx->backend_state; }

/* The context's workspace, at least bytes long (64-byte aligned); NULL + OUT_OF_MEMORY message. */
void *cpu_workspace(fa3c_context *ctx, size_t bytes);

/* Bump allocator over a workspace: offsets rounded to 64 bytes. */
typedef struct cpu_carve {
    size_t used;
} cpu_carve;
static inline size_t cpu_carve_take(cpu_carve *c, size_t bytes) {
    size_t at = c->used;
    c->used += (bytes + 63) & ~(size_t)63;
    return at;
}

/* Rows of zeros that pad a key tile to a multiple of 16 (longer than any row: dv <= 512). */
extern const uint8_t cpu_zero_row[4096];

/* Append phase: rotated k_new and v_new of every sequence into its cache rows. sl (b,). */
void cpu_append(fa3c_context *ctx, const fa3c_problem *p, const fa3c_seqlens *sl);

/* Attention phase (+ combine when split): out, softmax_lse, out_accum / lse_accum.
 * sl (b,) lengths, plan as given to the backend's fwd. */
fa3c_status cpu_attention(fa3c_context *ctx, const fa3c_problem *p, const fa3c_sched_plan *plan, fa3c_seqlens *sl);

/* The one combine rule of fa3c: n partials, part s at out + s * stride (dv,) with lse[s]:
 * over the parts with a finite lse, M = max lse_s, L = sum exp(lse_s - M),
 * dst = sum exp(lse_s - M) / L * out_s, returns M + log L; no such part: dst 0, returns -inf. */
float cpu_combine_row(int64_t n, const float *lse, const float *out, int64_t stride, int64_t dv, float *dst);

/* The backend's combine and merge_state (shapes as in struct fa3c_backend). */
fa3c_status cpu_combine(fa3c_context *ctx, const fa3c_tensor *out_partial, const fa3c_tensor *lse_partial,
                        const fa3c_tensor *out, const fa3c_tensor *lse);
fa3c_status cpu_merge_state(fa3c_context *ctx, const fa3c_tensor *out_a, const fa3c_tensor *lse_a,
                            const fa3c_tensor *out_b, const fa3c_tensor *lse_b, const fa3c_tensor *out,
                            const fa3c_tensor *lse);

#endif /* FA3C_CPU_H */
