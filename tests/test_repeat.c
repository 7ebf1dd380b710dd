/*
 * Run-to-run determinism: the same forward repeated N times ($FA3C_REPEAT, default 1000) on every
 * available backend gives bitwise-identical out, softmax_lse, split partials and appended cache
 * (every byte of their buffers, guards included) to the first run, which is itself checked
 * against the naive reference (FA3's pass rule). cpu runs at a fixed 3 threads (more than the
 * cores of a CI machine, so the order in which items are claimed varies); cpu-ref runs N / 50
 * times (at least 2; it is the slow scalar oracle). The output buffers are refilled with the
 * "never written" pattern before every run, so a run that writes nothing cannot pass.
 * Cases:
 *   - varlen q + paged KV (page 16) + append with rotary + GQA 4 + causal + 3 splits into out_accum;
 *   - decode (s_q 1), paged (page 64), GQA 8, bf16 sinks, 5 splits into out_accum.
 * GPU backends use the test utilities' device mirrors of the case's buffers.
 */
#include "testutil.h"

#include "core/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int env_int(const char *name, int def) {
    const char *s = getenv(name);
    return s && atoi(s) > 0 ? atoi(s) : def;
}

/*
 * Runs p's forward n times on ctx; 0 when every run left the same bytes in every buffer the
 * forward writes. *ms: mean milliseconds per forward (host-measured, copies excluded).
 */
static int repeat_case(fa3c_context *ctx, tu_prepared *p, int n, double *ms, char *msg, size_t mn) {
    bool dev = fa3c_context_device_type(ctx) != FA3C_DEVICE_CPU;
    tu_arena run;
    tu_arena_init(&run);
    tu_arena_restore(&p->arena);
    fa3c_fwd_args a = p->args;
    if (dev) {
        if (tu_arena_to_device(&p->arena, ctx) != 0) {
            snprintf(msg, mn, "copy to device: %s", fa3c_last_error());
            return 1;
        }
        tu_args_to_device(&p->arena, &run, &a, ctx);
    }
    fa3c_fwd_info info;
    if (fa3c_fwd_query(ctx, &a, &info) != FA3C_OK) {
        snprintf(msg, mn, "fwd_query: %s", fa3c_last_error());
        return 1;
    }
    fa3c_tensor oacc = {0}, lacc = {0};
    if (p->c.out_accum && info.num_splits > 1) {
        tu_accum_tensors(&run, &p->exact, info.num_splits, &oacc, &lacc);
        if (dev && tu_arena_to_device(&run, ctx) != 0) {
            snprintf(msg, mn, "copy to device: %s", fa3c_last_error());
            tu_arena_free(&run);
            return 1;
        }
        a.out_accum = tu_on_device(&run, &oacc, ctx);
        a.lse_accum = tu_on_device(&run, &lacc, ctx);
    }
    /* What the forward writes: refilled before each run (outputs) and compared after it. */
    tu_buf *outs[4] = {tu_arena_find(&p->arena, p->args.out.data),
                       fa3c_present(&p->args.softmax_lse) ? tu_arena_find(&p->arena, p->args.softmax_lse.data) : NULL,
                       oacc.data ? tu_arena_find(&run, oacc.data) : NULL, lacc.data ? tu_arena_find(&run, lacc.data) : NULL};
    bool append = fa3c_present(&p->args.k_new);
    tu_buf *cache[2] = {append ? tu_arena_find(&p->arena, p->args.k.data) : NULL,
                        append ? tu_arena_find(&p->arena, p->args.v.data) : NULL};
    tu_buf *all[6] = {outs[0], outs[1], outs[2], outs[3], cache[0], cache[1]};
    uint8_t *first[6] = {0};
    int bad = 0;
    double t_fwd = 0;
    for (int rep = 0; rep < n && !bad; rep++) {
        for (int i = 0; i < 4 && !bad; i++) {
            if (!outs[i]) continue;
            memset(outs[i]->base + TU_GUARD, TU_FILL_OUT, outs[i]->bytes);
            if (dev && tu_buf_copy(ctx, outs[i], FA3C_COPY_HOST_TO_DEVICE) != 0) {
                snprintf(msg, mn, "copy to device: %s", fa3c_last_error());
                bad = 1;
            }
        }
        if (bad) break;
        double t0 = now_s();
        fa3c_status st = fa3c_fwd(ctx, &a);
        if (st == FA3C_OK) st = fa3c_context_synchronize(ctx);
        t_fwd += now_s() - t0;
        if (st != FA3C_OK) {
            snprintf(msg, mn, "run %d: fwd: %s: %s", rep, fa3c_status_string(st), fa3c_last_error());
            bad = 1;
            break;
        }
        for (int i = 0; i < 6 && !bad; i++) {
            tu_buf *b = all[i];
            if (!b) continue;
            if (dev && tu_buf_copy(ctx, b, FA3C_COPY_DEVICE_TO_HOST) != 0) {
                snprintf(msg, mn, "copy from device: %s", fa3c_last_error());
                bad = 1;
                break;
            }
            size_t len = b->bytes + 2 * TU_GUARD;
            if (rep == 0) {
                first[i] = malloc(len);
                if (!first[i]) {
                    snprintf(msg, mn, "out of host memory");
                    bad = 1;
                    break;
                }
                memcpy(first[i], b->base, len);
            } else if (memcmp(first[i], b->base, len) != 0) {
                size_t at = 0;
                while (first[i][at] == b->base[at]) at++;
                static const char *const names[6] = {"out", "softmax_lse", "out_accum", "lse_accum", "k", "v"};
                snprintf(msg, mn, "run %d differs from run 0 in %s at byte %zu of its buffer (S=%d)", rep, names[i],
                         at, info.num_splits);
                bad = 1;
            }
        }
    }
    *ms = 1e3 * t_fwd / n;
    for (int i = 0; i < 6; i++) free(first[i]);
    tu_arena_free(&run);
    return bad;
}

/* Frees the device twins a context made of p's buffers (before the context goes away). */
static void drop_twins(tu_prepared *p, fa3c_context *ctx) {
    for (int i = 0; i < p->arena.n; i++) {
        tu_buf *b = &p->arena.buf[i];
        if (b->dev && b->dev_ctx == ctx) fa3c_device_free(ctx, b->dev);
        if (b->dev_ctx == ctx) b->dev = NULL, b->dev_ctx = NULL;
    }
}

static int make_cases(tu_case *c) {
    int n = 0;
    tu_case_init(&c[n]); /* varlen q + paged + append/rotary + GQA + causal + splits */
    c[n].mode = TU_KVCACHE, c[n].dtype = FA3C_DTYPE_BF16, c[n].b = 4, c[n].s_q = 16, c[n].s_k = 600;
    c[n].h = 8, c[n].h_k = 2, c[n].d = c[n].dv = 128, c[n].page_size = 16, c[n].s_new = 16, c[n].varlen_q = true;
    c[n].rotary = 2, c[n].causal = true, c[n].num_splits = 3, c[n].out_accum = true, c[n].seed = 901;
    n++;
    tu_case_init(&c[n]); /* decode with splits */
    c[n].mode = TU_KVCACHE, c[n].dtype = FA3C_DTYPE_BF16, c[n].b = 3, c[n].s_q = 1, c[n].s_k = 1500;
    c[n].h = 16, c[n].h_k = 2, c[n].d = c[n].dv = 128, c[n].page_size = 64, c[n].sinks = FA3C_DTYPE_BF16;
    c[n].num_splits = 5, c[n].out_accum = true, c[n].seed = 902;
    n++;
    return n;
}

int main(void) {
    int repeat = env_int("FA3C_REPEAT", 1000);
    tu_case cases[4];
    int ncases = make_cases(cases);
    int passed = 0, failed = 0, skipped = 0;
    for (int ci = 0; ci < ncases; ci++) {
        tu_case_describe(&cases[ci], "");
        tu_prepared p;
        if (tu_prepare(&cases[ci], &p) != 0) {
            printf("FAIL %s: could not prepare the case\n", cases[ci].name);
            failed++;
            continue;
        }
        for (int bi = 0; bi < fa3c_backend_count(); bi++) {
            const char *name = fa3c_backend_name(bi);
            if (!fa3c_backend_available(bi)) {
                printf("skip %s [%s]: not available\n", cases[ci].name, name);
                skipped++;
                continue;
            }
            fa3c_context_options opt;
            fa3c_context_options_init(&opt);
            opt.backend = name;
            opt.num_threads = 3;
            opt.num_sm = 132; /* the same splits on every backend */
            int n = strcmp(name, "cpu-ref") == 0 ? (repeat / 50 > 2 ? repeat / 50 : 2) : repeat;
            fa3c_context *ctx;
            char msg[512] = "";
            int bad;
            double ms = 0;
            if (fa3c_context_create(&opt, &ctx) != FA3C_OK) {
                snprintf(msg, sizeof msg, "context: %s", fa3c_last_error());
                bad = 1;
            } else {
                tu_report rep;
                tu_verdict v = tu_run(ctx, &p, TU_RULE_FA3, &rep);
                bad = v == TU_FAIL;
                if (v == TU_FAIL) snprintf(msg, sizeof msg, "first run against the naive: %.450s", rep.msg);
                if (v == TU_SKIP) {
                    printf("skip %s [%s]: %s\n", cases[ci].name, name, rep.msg);
                    skipped++;
                    drop_twins(&p, ctx);
                    fa3c_context_destroy(ctx);
                    continue;
                }
                if (!bad) bad = repeat_case(ctx, &p, n, &ms, msg, sizeof msg);
                drop_twins(&p, ctx);
                fa3c_context_destroy(ctx);
            }
            if (bad) printf("FAIL %s [%s]: %s\n", cases[ci].name, name, msg);
            else printf("ok   %s [%s]: %d runs bitwise identical (%.3f ms per forward)\n", cases[ci].name, name, n, ms);
            if (bad) failed++;
            else passed++;
        }
        tu_prepared_free(&p);
    }
    printf("test_repeat: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
