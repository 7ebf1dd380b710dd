/*
 * Every case on every backend: a sweep of forward cases with awkward sizes (DESIGN.md "Numerics
 * and tests") run on every available backend and checked with FA3's pass rule against the naive
 * references (testutil.h), plus the structural checks (canaries, untouched rows and inputs, the
 * appended cache).
 *
 * Axes: lengths 1, 3, 113, 239, 799, 1023, 1024, 2049; page sizes 1, 3, 16, 64, 256; GQA ratios
 * 1, 2, 8 and MQA; empty sequences; seqused < capacity; num_splits 1/3/0 and pack_gqa 0/1 forced
 * (with num_sm = 132 so that splits really happen); head dims 64/96/128/192/256 and (d, dv)
 * 64/256, 64/512 (qv), 192/128; bf16, fp16, fp8; batched, varlen, kvcache with and without
 * append, rotary, leftpad, batch index, paging; causal, local, chunk, softcap, sinks; precomputed
 * scheduler metadata used twice.
 *
 * The scalar oracle backend is slow, so big lengths come with small b, h and d: every case is
 * sized against a budget of multiply-adds. FA3C_SWEEP=quick runs a quarter of the cases.
 * Output: one line per (backend, case), then "test_fwd_sweep: N passed, M failed, K skipped"
 * (skipped: the backend reported the case UNSUPPORTED).
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_CASES 512
#define BUDGET    60e6 /* multiply-adds of one case (b * h * s_q * s_k * (d + dv)) before shrinking b */

typedef struct gen {
    tu_case c[MAX_CASES];
    int     n;
    tu_rng  r;     /* every axis value of a case is a seeded random pick: axes stay uncorrelated */
} gen;

static const fa3c_dtype BF = FA3C_DTYPE_BF16, F16 = FA3C_DTYPE_F16, F8 = FA3C_DTYPE_E4M3;

/* Multiply-adds of a case; varlen sequences with zero keys (every 5th and the last) cost nothing. */
static double macs(const tu_case *c) {
    double sq = c->s_q, sk = c->s_k + c->s_new, b = (double)c->b;
    if (c->mode == TU_VARLEN && c->zero_len)
        for (int64_t i = 0; i < c->b; i++) b -= i % 5 == 0 || i == c->b - 1;
    return b * (double)c->h * sq * sk * (double)(c->d + c->dv);
}

static int pick(gen *g, int n) { return (int)tu_rng_int(&g->r, 0, n); }
static bool chance(gen *g, double p) { return tu_rng_uniform(&g->r) < p; }

static tu_case *add(gen *g, tu_mode mode, fa3c_dtype dt, int64_t s_q, int64_t s_k, int64_t d, int64_t dv) {
    if (g->n == MAX_CASES) {
        fprintf(stderr, "test_fwd_sweep: too many cases\n");
        exit(2);
    }
    tu_case *c = &g->c[g->n++];
    tu_case_init(c);
    c->mode = mode;
    c->dtype = dt;
    c->s_q = s_q, c->s_k = s_k, c->d = d, c->dv = dv;
    c->seed = 7919u * (uint64_t)g->n + 17;
    return c;
}

/* GQA ratio axis: (h, h_k) with ratios 1, 2, 8 and MQA. */
static void heads(gen *g, tu_case *c) {
    static const int64_t hh[5][2] = {{2, 2}, {4, 2}, {16, 2}, {6, 1}, {3, 3}};
    int k = pick(g, 5);
    c->h = hh[k][0], c->h_k = hh[k][1];
}

/* Mask axis: none, causal, local, chunk, causal + chunk, local + chunk (FA3's random windows
 * in [0, s_k), chunks in [1, 2 s_k)); n limits the choice to the first n. */
static void mask(gen *g, tu_case *c, int n) {
    int64_t sk = c->s_k > 1 ? c->s_k : 2;
    switch (pick(g, n)) {
    case 1: c->causal = true; break;
    case 2: c->wl = tu_rng_int(&g->r, 0, sk), c->wr = tu_rng_int(&g->r, 0, sk); break;
    case 3: c->chunk = tu_rng_int(&g->r, 1, 2 * sk); break;
    case 4: c->causal = true, c->chunk = tu_rng_int(&g->r, 1, 2 * sk); break;
    case 5:
        c->wl = tu_rng_int(&g->r, 0, sk), c->wr = tu_rng_int(&g->r, 0, sk);
        c->chunk = tu_rng_int(&g->r, 1, 2 * sk);
        break;
    default: break;
    }
}

/* Split / pack axis: every internal path forced (num_splits 1, 3, 0; pack_gqa heuristic, 0, 1). */
static void splits(gen *g, tu_case *c) {
    static const int32_t sp[3] = {1, 3, 0}, pk[4] = {-1, 0, 1, -1};
    c->num_splits = sp[pick(g, 3)];
    c->pack_gqa = pk[pick(g, 4)];
    c->out_accum = c->num_splits != 1 && chance(g, 0.4);
}

/* Extras that cost nothing in size: softcap, sinks, strided views, descales (fp8). */
static void extras(gen *g, tu_case *c) {
    static const fa3c_dtype sk[3] = {FA3C_DTYPE_F32, FA3C_DTYPE_BF16, FA3C_DTYPE_F16};
    if (chance(g, 0.15)) c->softcap = 15;
    if (chance(g, 0.2)) c->sinks = sk[pick(g, 3)];
    if (chance(g, 0.3)) c->pad = true;
    if (c->dtype == F8 && chance(g, 0.6)) c->descale = true;
}

/* Shrinks b down to b_min, then the heads (one kv head, keeping the GQA ratio, at last at most 2
 * q heads) until the case fits the budget. */
static void fit(tu_case *c, int64_t b_max, int64_t b_min) {
    c->b = b_max;
    while (c->b > b_min && macs(c) > BUDGET) c->b--;
    if (macs(c) > BUDGET) c->h = c->h / c->h_k, c->h_k = 1;
    if (macs(c) > BUDGET && c->h > 2) c->h = 2;
}

static const int64_t DS[5] = {64, 96, 128, 192, 256};
static const fa3c_dtype DTS[5] = {FA3C_DTYPE_BF16, FA3C_DTYPE_F16, FA3C_DTYPE_E4M3, FA3C_DTYPE_BF16,
                                  FA3C_DTYPE_F16};

/* flash_attn_func (FA3 test_flash_attn_output): batched q/k/v. */
static void gen_batched(gen *g) {
    static const int64_t pairs[][2] = {{1, 1},     {3, 3},     {1, 3},      {239, 1},    {799, 3},
                                       {3, 799},   {113, 203}, {128, 217},  {113, 239},  {239, 113},
                                       {1023, 1024}, {1024, 1023}, {3, 2049}, {799, 2049}, {2049, 1}};
    for (size_t pi = 0; pi < sizeof pairs / sizeof pairs[0]; pi++) {
        int64_t sq = pairs[pi][0], sk = pairs[pi][1];
        bool big = sq * sk > 200000;
        for (int v = 0; v < (big ? 4 : 8); v++) {
            int64_t d = big ? 64 : DS[pick(g, 5)];
            tu_case *c = add(g, TU_BATCHED, DTS[pick(g, 5)], sq, sk, d, d);
            heads(g, c);
            mask(g, c, 6);
            splits(g, c);
            extras(g, c);
            fit(c, 4, 1);
        }
    }
}

/* flash_attn_varlen_func (FA3 test_flash_attn_varlen_output): empty key sequences always,
 * seqused below capacity half of the time. */
static void gen_varlen(gen *g) {
    static const int64_t pairs[][2] = {{1, 1},     {1, 3},     {2, 1},      {511, 1},     {3, 513},   {113, 203},
                                       {128, 217}, {640, 128}, {239, 799},  {1023, 1024}, {1024, 1023}, {3, 2049}};
    for (size_t pi = 0; pi < sizeof pairs / sizeof pairs[0]; pi++) {
        int64_t sq = pairs[pi][0], sk = pairs[pi][1];
        bool big = sq * sk > 200000;
        for (int v = 0; v < (big ? 4 : 7); v++) {
            int64_t d = big ? 64 : DS[pick(g, 5)];
            tu_case *c = add(g, TU_VARLEN, DTS[pick(g, 5)], sq, sk, d, d);
            c->zero_len = true;
            c->unused = chance(g, 0.5);
            heads(g, c);
            mask(g, c, 6);
            splits(g, c);
            extras(g, c);
            fit(c, 7, 3); /* varlen needs a few sequences to mean anything */
        }
    }
}

/* flash_attn_with_kvcache (FA3 test_flash_attn_kvcache): every (s_k, page size) pair. */
static void gen_kvcache(gen *g) {
    static const int64_t sks[6] = {113, 239, 799, 1023, 1024, 2049}, pages[6] = {0, 1, 3, 16, 64, 256};
    static const int64_t sqs[4] = {1, 3, 1, 16}, kd[3] = {128, 64, 256};
    static const fa3c_dtype dts[4] = {FA3C_DTYPE_BF16, FA3C_DTYPE_E4M3, FA3C_DTYPE_BF16, FA3C_DTYPE_F16};
    for (int si = 0; si < 6; si++)
        for (int pi = 0; pi < 6; pi++)
            for (int v = 0; v < 3; v++) {
                int64_t sq = sqs[pick(g, 4)], d = kd[pick(g, 3)];
                if (sq == 16 && sks[si] > 1024) sq = 3;
                tu_case *c = add(g, TU_KVCACHE, dts[pick(g, 4)], sq, sks[si], d, d);
                c->page_size = pages[pi];
                switch (pick(g, 3)) { /* append: none, s_q new keys, one new key */
                case 1: c->s_new = sq; break;
                case 2: c->s_new = 1; break;
                default: break;
                }
                if (c->s_new > 0) c->rotary = pick(g, 3); /* none, interleaved, half */
                if (c->rotary && chance(g, 0.3)) c->rotary_dim = d / 2;
                c->rotary_seqlens = c->rotary && chance(g, 0.2);
                c->no_cache_seqlens = c->s_new == 0 && chance(g, 0.15);
                c->leftpad = chance(g, 0.3);
                c->batch_idx = chance(g, 0.3);
                c->varlen_q = chance(g, 0.3);
                mask(g, c, 3); /* FA3's (causal, local) pairs */
                if ((c->causal || c->wl >= 0) && chance(g, 0.3)) c->chunk = tu_rng_int(&g->r, 1, 2 * c->s_k);
                splits(g, c);
                c->sched_meta = !c->no_cache_seqlens && chance(g, 0.5); /* the metadata needs cache_seqlens */
                heads(g, c);
                if (c->h == 3) c->h = 6, c->h_k = 3; /* FA3's kvcache heads: 6 / (6, 3, 1) */
                extras(g, c);
                fit(c, 5, 1);
            }
}

/* Head-dim pairs, qv, sinks and the empty cache. */
static void gen_special(gen *g) {
    static const int64_t dd[][2] = {{64, 256}, {64, 512}, {192, 128}};
    static const int64_t pairs[][2] = {{1, 1}, {3, 239}, {113, 203}, {239, 799}, {1, 1024}, {799, 3}};
    for (int di = 0; di < 3; di++)
        for (size_t pi = 0; pi < sizeof pairs / sizeof pairs[0]; pi++) {
            fa3c_dtype dt = chance(g, 0.4) ? F16 : BF;
            if (dd[di][0] == 192 && chance(g, 0.3)) dt = F8; /* fp8's only head-dim pair */
            tu_case *c = add(g, pick(g, 2) ? TU_VARLEN : TU_BATCHED, dt, pairs[pi][0], pairs[pi][1], dd[di][0],
                             dd[di][1]);
            c->qv = dd[di][0] == 64 && (dd[di][1] == 512 || chance(g, 0.5));
            c->zero_len = c->mode == TU_VARLEN;
            heads(g, c);
            mask(g, c, 6);
            splits(g, c);
            extras(g, c);
            fit(c, 4, c->mode == TU_VARLEN ? 3 : 1);
        }
    for (int i = 0; i < 12; i++) { /* sinks x masks x splits, fully masked rows included */
        tu_case *c = add(g, i % 3 == 2 ? TU_KVCACHE : TU_BATCHED, i % 4 == 3 ? F16 : BF, i % 2 ? 113 : 5, 239, 128, 128);
        if (c->mode == TU_KVCACHE) c->s_q = 3, c->page_size = i % 2 ? 16 : 0, c->s_new = 2;
        c->sinks = i % 3 == 0 ? FA3C_DTYPE_F32 : (i % 3 == 1 ? FA3C_DTYPE_BF16 : FA3C_DTYPE_F16);
        heads(g, c);
        mask(g, c, 6);
        splits(g, c);
        if (i % 5 == 4) c->softcap = 15;
        fit(c, 3, 1);
    }
    for (int i = 0; i < 6; i++) { /* empty caches: out 0, lse +inf */
        tu_case *c = add(g, i < 3 ? TU_BATCHED : TU_KVCACHE, i % 2 ? F8 : BF, i + 1, 0, 64, 64);
        heads(g, c);
        c->b = 3;
        c->num_splits = i % 3 == 0 ? 1 : 3;
        c->causal = i == 2;
    }
}

/* FA3C_SWEEP=quick: a hash-chosen quarter of the cases (no aliasing with any axis). */
static bool in_quick(int i) {
    tu_rng r;
    tu_rng_seed(&r, (uint64_t)i + 99);
    return (tu_rng_u64(&r) & 3) == 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* name is an element of the comma-separated list. */
static bool listed(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == '\0')) return true;
    return false;
}

int main(void) {
    static gen g;
    tu_rng_seed(&g.r, 20260815);
    gen_batched(&g);
    gen_varlen(&g);
    gen_kvcache(&g);
    gen_special(&g);
    const char *mode = getenv("FA3C_SWEEP");
    bool quick = mode && strcmp(mode, "quick") == 0;

    /* FA3C_SWEEP_BACKENDS=cpu,cuda restricts the run to those backends (the forced-ISA runs of
     * the cpu backend need not repeat the others). */
    const char *only = getenv("FA3C_SWEEP_BACKENDS");
    int nb = fa3c_backend_count();
    fa3c_context **ctx = calloc((size_t)nb + 1, sizeof *ctx);
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < nb; i++) {
        const char *name = fa3c_backend_name(i);
        if (only && !listed(only, name)) {
            printf("backend %s: not in FA3C_SWEEP_BACKENDS, not run\n", name);
            continue;
        }
        if (!fa3c_backend_available(i)) {
            printf("backend %s: not available here, not run\n", name);
            continue;
        }
        fa3c_context_options opt;
        fa3c_context_options_init(&opt);
        opt.backend = name;
        opt.num_sm = 132; /* the heuristics see an H100, so splits and packing really happen */
        fa3c_status st = fa3c_context_create(&opt, &ctx[i]);
        if (st != FA3C_OK) {
            printf("FAIL [%s] context: %s: %s\n", name, fa3c_status_string(st), fa3c_last_error());
            failed++;
            ctx[i] = NULL;
        }
    }
    double t0 = now(), est = 0;
    int ncases = 0;
    for (int ci = 0; ci < g.n; ci++) {
        if (quick && !in_quick(ci)) continue;
        ncases++;
        tu_case *c = &g.c[ci];
        tu_case_describe(c, "");
        est += macs(c);
        tu_prepared p;
        if (tu_prepare(c, &p) != 0) {
            printf("FAIL [naive] %s: the naive reference could not run it\n", c->name);
            failed++;
            continue;
        }
        for (int i = 0; i < nb; i++) {
            if (!ctx[i]) continue;
            tu_report rep;
            tu_verdict v = tu_run(ctx[i], &p, TU_RULE_FA3, &rep);
            const char *tag = v == TU_PASS ? "ok" : (v == TU_SKIP ? "skip" : "FAIL");
            if (v == TU_PASS)
                printf("%-4s [%s] %-100s S=%-3d err %.3g <= %.3g\n", tag, fa3c_backend_name(i), c->name, rep.num_splits,
                       rep.max_err, rep.bound);
            else
                printf("%-4s [%s] %-100s S=%-3d %s\n", tag, fa3c_backend_name(i), c->name, rep.num_splits, rep.msg);
            fflush(stdout);
            if (v == TU_PASS) passed++;
            else if (v == TU_SKIP) skipped++;
            else failed++;
        }
        tu_prepared_free(&p);
    }
    for (int i = 0; i < nb; i++) fa3c_context_destroy(ctx[i]);
    free(ctx);
    printf("(%d cases, %.2f G multiply-adds per backend, %.1f s)\n", ncases, est * 1e-9, now() - t0);
    printf("test_fwd_sweep: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
