/*
 * An independent FA3 forward for the tests, in the style of FA3's test_util.py attention_ref:
 * written from the semantics (docs), sharing nothing with the library but the argument struct
 * and the scalar dtype conversions. It reads host buffers described by the same fa3c_fwd_args
 * a test passes to fa3c_fwd, so one case feeds both.
 *
 * Shape legend as in include/fa3c.h (b, s_q, s_k, s_new, h, h_k, d, dv, S).
 *
 * Two modes (FA3 §8 "two references computed from the same dtype-rounded inputs"):
 *   NAIVE_EXACT  double-precision math on the dtype-rounded inputs: the truth (out_ref before its
 *                final cast).
 *   NAIVE_LOWP   "PyTorch at the input precision" (FA3's out_pt: upcast=False, reorder_ops=True,
 *                intermediate_dtype=fp8 for fp8): every intermediate tensor is rounded to the
 *                compute dtype (the out dtype: bf16/fp16, bf16 for fp8 after descale), the scale
 *                is applied to k, the softmax runs in fp32 and is rounded, P goes through fp8 for
 *                fp8 inputs, P.V accumulates in fp32 and is rounded.
 */
#ifndef FA3C_TESTS_NAIVE_H
#define FA3C_TESTS_NAIVE_H

#include "fa3c.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum naive_mode { NAIVE_EXACT = 0, NAIVE_LOWP = 1 } naive_mode;

/*
 * Dense results in the library's layouts. A "row" is one q token position of out:
 * row = b_i * s_q + i when batched, the packed token index when varlen (rows = b * s_q or total_q).
 *   out, out_r   (rows, h, dv)  out unrounded, out_r rounded to out_dtype (LOWP: both equal)
 *   lse          (b, h, s_q) batched or (h, total_q) varlen, natural log
 *   written      (rows,)  1 where the forward writes out and lse (every head), 0 elsewhere
 */
typedef struct naive_result {
    bool       varlen_q;
    int64_t    b, s_q, rows, h, dv;
    fa3c_dtype out_dtype;
    double    *out, *out_r, *lse;
    uint8_t   *written;
} naive_result;

/*
 * The forward of args in the given mode. k_cache / v_cache describe the naive's OWN copies of
 * args->k / args->v (same shapes and strides, other memory): keys and values are read from them,
 * and appended keys (k_new, rotary applied) and values are written into them first, exactly
 * where the forward writes its own cache. args->k / args->v are never read.
 * Returns 0, or -1 (message on stderr) for arguments the naive cannot interpret.
 */
int  naive_fwd(const fa3c_fwd_args *args, const fa3c_tensor *k_cache, const fa3c_tensor *v_cache,
               naive_mode mode, naive_result *res);
void naive_result_free(naive_result *res);

static inline int64_t naive_out_index(const naive_result *r, int64_t row, int64_t head) {
    return (row * r->h + head) * r->dv;
}
static inline int64_t naive_lse_index(const naive_result *r, int64_t row, int64_t head) {
    if (r->varlen_q) return head * r->rows + row;
    return ((row / r->s_q) * r->h + head) * r->s_q + row % r->s_q;
}

#endif /* FA3C_TESTS_NAIVE_H */
