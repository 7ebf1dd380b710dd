/*
 * The reference backend (cpu-ref, fp32 math on dtype-rounded inputs, one final rounding) against
 * the tests' independent naive forward in double precision, with a tight bound:
 *   |out - exact| <= ulp(out dtype, |exact|) + 1e-6,   |lse - exact| <= 1e-4 * max(1, |exact|).
 * Small cases, each FA3 feature once or twice; the appended cache must equal the naive's copy
 * (bitwise without rotary, 1 ulp with), split partials must combine to out, and nothing outside
 * the rows a forward owns may change (testutil's structural checks).
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CASES 96

typedef struct case_list {
    tu_case c[MAX_CASES];
    int     n;
} case_list;

static tu_case *add(case_list *l, tu_mode mode, fa3c_dtype dt, int64_t b, int64_t s_q, int64_t s_k, int64_t h,
                    int64_t h_k, int64_t d, int64_t dv) {
    if (l->n == MAX_CASES) {
        fprintf(stderr, "test_ref_naive: too many cases\n");
        exit(2);
    }
    tu_case *c = &l->c[l->n++];
    tu_case_init(c);
    c->mode = mode;
    c->dtype = dt;
    c->b = b, c->s_q = s_q, c->s_k = s_k, c->h = h, c->h_k = h_k, c->d = d, c->dv = dv;
    c->seed = 1000 + (uint64_t)l->n;
    return c;
}

static void build_cases(case_list *l) {
    const fa3c_dtype BF = FA3C_DTYPE_BF16, F16 = FA3C_DTYPE_F16, F8 = FA3C_DTYPE_E4M3;
    tu_case *c;
    /* batched */
    add(l, TU_BATCHED, BF, 2, 7, 9, 2, 2, 64, 64);
    c = add(l, TU_BATCHED, F16, 2, 5, 13, 4, 2, 128, 128);
    c->causal = true;
    c->pad = true;
    c = add(l, TU_BATCHED, BF, 1, 9, 4, 3, 1, 96, 96); /* s_q > s_k: causal rows above the diagonal */
    c->causal = true;
    c = add(l, TU_BATCHED, F16, 2, 12, 5, 2, 2, 64, 64); /* local with s_q > s_k: fully masked rows */
    c->wl = 1, c->wr = 0;
    c = add(l, TU_BATCHED, BF, 1, 17, 33, 16, 2, 64, 64); /* GQA 8:1 */
    c->wl = 5, c->wr = 3;
    c = add(l, TU_BATCHED, BF, 2, 11, 29, 4, 1, 256, 256); /* MQA, d 256 */
    c->chunk = 7;
    c = add(l, TU_BATCHED, F16, 1, 20, 20, 2, 2, 64, 64);
    c->causal = true, c->chunk = 6;
    c = add(l, TU_BATCHED, BF, 1, 8, 19, 2, 1, 64, 64);
    c->chunk = 5, c->wl = 2, c->wr = 1;
    c = add(l, TU_BATCHED, F16, 2, 12, 5, 2, 1, 64, 64); /* chunks of negative diagonals: floor division */
    c->chunk = 3;
    c = add(l, TU_BATCHED, BF, 2, 6, 21, 2, 2, 128, 128);
    c->softcap = 15;
    c = add(l, TU_BATCHED, F16, 1, 6, 10, 4, 2, 64, 64);
    c->softcap = 5, c->causal = true;
    c = add(l, TU_BATCHED, BF, 2, 10, 4, 4, 2, 64, 64); /* sinks fp32, incl. fully masked rows -> lse = sink */
    c->sinks = FA3C_DTYPE_F32, c->causal = true;
    c = add(l, TU_BATCHED, BF, 1, 5, 14, 4, 4, 64, 64);
    c->sinks = FA3C_DTYPE_BF16, c->wl = 2, c->wr = 2;
    c = add(l, TU_BATCHED, F16, 1, 5, 14, 2, 1, 64, 64);
    c->sinks = FA3C_DTYPE_F16;
    c = add(l, TU_BATCHED, BF, 2, 4, 11, 2, 1, 64, 512); /* MLA absorbed: qv, d 64 / dv 512 */
    c->qv = true;
    c = add(l, TU_BATCHED, F16, 1, 6, 9, 2, 2, 64, 256);
    c->qv = true, c->causal = true;
    add(l, TU_BATCHED, BF, 2, 6, 15, 4, 2, 192, 128);
    c = add(l, TU_BATCHED, F16, 1, 7, 7, 2, 1, 192, 128);
    c->causal = true, c->pad = true;
    c = add(l, TU_BATCHED, F8, 2, 6, 17, 4, 2, 128, 128); /* fp8 with descales: bf16 out */
    c->descale = true;
    c = add(l, TU_BATCHED, F8, 1, 9, 9, 2, 2, 64, 64);
    c->descale = true, c->causal = true, c->pad = true;
    c = add(l, TU_BATCHED, F8, 1, 5, 12, 2, 1, 192, 192);
    c->scale = 0.3;
    c = add(l, TU_BATCHED, BF, 1, 1, 1, 1, 1, 64, 64);
    c = add(l, TU_BATCHED, BF, 2, 3, 0, 2, 1, 64, 64); /* empty cache: out 0, lse +inf */
    /* splits with out_accum: partials must combine to out */
    c = add(l, TU_BATCHED, BF, 1, 3, 700, 2, 1, 128, 128);
    c->num_splits = 3, c->out_accum = true;
    c = add(l, TU_BATCHED, F16, 2, 4, 500, 4, 2, 64, 64);
    c->num_splits = 3, c->out_accum = true, c->causal = true, c->sinks = FA3C_DTYPE_F32;
    /* varlen */
    c = add(l, TU_VARLEN, BF, 5, 9, 17, 4, 1, 64, 64);
    c->zero_len = true, c->unused = true;
    c = add(l, TU_VARLEN, F16, 6, 23, 40, 16, 2, 128, 128);
    c->causal = true, c->zero_len = true, c->pad = true;
    c = add(l, TU_VARLEN, BF, 4, 30, 25, 2, 2, 96, 96);
    c->wl = 4, c->wr = 0, c->unused = true;
    c = add(l, TU_VARLEN, BF, 3, 5, 300, 2, 1, 64, 64);
    c->num_splits = 3, c->out_accum = true;
    /* kvcache: paging, append, rotary, leftpad, batch index */
    c = add(l, TU_KVCACHE, BF, 3, 1, 37, 4, 1, 64, 64);
    c->page_size = 1;
    c = add(l, TU_KVCACHE, BF, 3, 3, 40, 4, 2, 128, 128);
    c->page_size = 3, c->s_new = 3, c->causal = true;
    c = add(l, TU_KVCACHE, F16, 2, 4, 64, 2, 2, 64, 64);
    c->page_size = 16, c->s_new = 2, c->rotary = 1, c->causal = true;
    c = add(l, TU_KVCACHE, BF, 3, 4, 50, 4, 2, 128, 128);
    c->s_new = 4, c->rotary = 2, c->rotary_dim = 64; /* half split, partial rotary, q at the base */
    c = add(l, TU_KVCACHE, BF, 3, 5, 50, 2, 1, 64, 64);
    c->s_new = 5, c->rotary = 1, c->leftpad = true, c->causal = true;
    c = add(l, TU_KVCACHE, F16, 3, 2, 30, 2, 2, 64, 64);
    c->s_new = 2, c->batch_idx = true, c->rotary = 2, c->wl = 6, c->wr = 0;
    c = add(l, TU_KVCACHE, BF, 4, 6, 45, 8, 1, 64, 64); /* varlen q and cu_seqlens_k_new */
    c->s_new = 6, c->varlen_q = true, c->rotary = 1, c->causal = true, c->leftpad = true;
    c = add(l, TU_KVCACHE, BF, 3, 3, 48, 2, 1, 64, 64);
    c->page_size = 16, c->s_new = 3, c->batch_idx = true, c->leftpad = false, c->chunk = 8, c->causal = true;
    c = add(l, TU_KVCACHE, BF, 2, 2, 33, 2, 2, 64, 64);
    c->page_size = 3, c->leftpad = true, c->sinks = FA3C_DTYPE_BF16, c->pad = true;
    c = add(l, TU_KVCACHE, F8, 2, 3, 40, 2, 1, 128, 128);
    c->s_new = 3, c->rotary = 1, c->descale = true, c->causal = true;
    c = add(l, TU_KVCACHE, BF, 2, 1, 200, 4, 1, 64, 512);
    c->qv = true, c->page_size = 16, c->s_new = 1;
    c = add(l, TU_KVCACHE, BF, 2, 2, 600, 4, 2, 128, 128);
    c->num_splits = 3, c->out_accum = true, c->sched_meta = true, c->s_new = 2;
    c = add(l, TU_KVCACHE, F16, 3, 3, 40, 4, 2, 64, 64);
    c->s_new = 3, c->rotary = 2, c->rotary_seqlens = true, c->causal = true;
    c = add(l, TU_KVCACHE, BF, 3, 2, 20, 2, 1, 64, 64); /* no cache_seqlens: all 3x pages attended */
    c->page_size = 3, c->no_cache_seqlens = true, c->leftpad = true;
    c = add(l, TU_KVCACHE, BF, 2, 2, 0, 2, 1, 64, 64); /* empty cache, no append: out 0, lse +inf */
    for (int i = 0; i < l->n; i++) tu_case_describe(&l->c[i], "");
}

int main(void) {
    fa3c_context_options opt;
    fa3c_context_options_init(&opt);
    opt.backend = "cpu-ref";
    opt.num_sm = 132;
    fa3c_context *ctx = NULL;
    fa3c_status st = fa3c_context_create(&opt, &ctx);
    if (st != FA3C_OK) {
        printf("test_ref_naive: cannot create a cpu-ref context: %s: %s\n", fa3c_status_string(st), fa3c_last_error());
        return 1;
    }
    static case_list l;
    build_cases(&l);
    int passed = 0, failed = 0;
    for (int i = 0; i < l.n; i++) {
        tu_prepared p;
        tu_report rep;
        if (tu_prepare(&l.c[i], &p) != 0) {
            printf("FAIL %-90s naive could not run the case\n", l.c[i].name);
            failed++;
            continue;
        }
        tu_verdict v = tu_run(ctx, &p, TU_RULE_TIGHT, &rep);
        if (v == TU_PASS) {
            printf("ok   %-90s S=%-3d err %.3g <= %.3g\n", l.c[i].name, rep.num_splits, rep.max_err, rep.bound);
            passed++;
        } else { /* the oracle must run everything: a skip is a failure here */
            printf("FAIL %-90s S=%-3d %s\n", l.c[i].name, rep.num_splits, rep.msg);
            failed++;
        }
        tu_prepared_free(&p);
    }
    fa3c_context_destroy(ctx);
    printf("test_ref_naive: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
