/*
 * fa3c_combine and fa3c_merge_state against a double-precision combine (FA3's
 * test_flash_attn_combine, sizes reduced), on every available backend.
 *
 * combine: out_partial (S, b, s, h, dv) fp32 as FA3 builds it (a view of a (2S, b, h, s, dv)
 * buffer: first S splits, s and h transposed), lse_partial (S, b, s, h) as the transposed view of
 * an (S, b, 2h, s) buffer (stride(-2) == 1); half the splits of the first third of the batch at
 * -inf; one row with every split -inf (-> out 0, lse -inf) and one with a +inf split (the "no
 * keys" marker, which contributes nothing). Pass rule (FA3): lse within 1e-5 (abs + rel);
 * max|out - ref| <= 2 max|ref_rounded - ref|, or out allclose(ref_rounded, 1e-5, 1e-5).
 * merge_state: two states (n, h, dv) in each float dtype, rows with one or both states -inf, out
 * aliasing out_a and lse aliasing lse_a.
 */
#include "testutil.h"

#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct counts { int passed, failed; } counts;

static void report(counts *n, const char *backend, const char *name, bool ok, const char *msg) {
    printf("%-4s [%s] %-60s %s\n", ok ? "ok" : "FAIL", backend, name, msg);
    if (ok) n->passed++;
    else n->failed++;
}

/* FA3's combine verdict over a whole output: err vs the error of rounding the reference. */
typedef struct out_stats { double max_err, max_pt, max_close; bool close_ok; } out_stats;

static void out_stats_add(out_stats *s, fa3c_dtype dt, double x, double ref) {
    double pt = fa3c_round(dt, (float)ref);
    double err = fabs(x - ref);
    s->max_err = isnan(err) || err > s->max_err ? (isnan(err) ? INFINITY : err) : s->max_err;
    s->max_pt = fmax(s->max_pt, fabs(pt - ref));
    if (!(fabs(x - pt) <= 1e-5 + 1e-5 * fabs(pt))) s->close_ok = false;
}

static bool out_stats_ok(const out_stats *s) { return s->max_err <= 2 * s->max_pt || s->close_ok; }

static bool lse_ok(double x, double ref) {
    if (isinf(ref) || isinf(x) || isnan(x)) return x == ref;
    return fabs(x - ref) <= 1e-5 + 1e-5 * fabs(ref);
}

static bool run_combine(fa3c_context *ctx, fa3c_dtype odt, int64_t dv, int64_t s, int64_t S, int64_t b, int64_t h,
                        uint64_t seed, char *msg, size_t mn) {
    tu_arena ar;
    tu_arena_init(&ar);
    tu_rng r;
    tu_rng_seed(&r, seed);
    /* out_partial: (2S, b, h, s, dv) contiguous -> permute to (., b, s, h, dv) -> first S */
    int64_t sh_o[5] = {2 * S, b, h, s, dv};
    int perm_o[5] = {0, 1, 3, 2, 4};
    fa3c_tensor op = tu_permute(tu_tensor(&ar, FA3C_DTYPE_F32, 5, sh_o, 0), perm_o);
    tu_fill_normal(&op, &r, 1.0);
    op.shape[0] = S;
    /* lse_partial: (S, b, 2h, s) -> (S, b, s, 2h) -> first h heads */
    int64_t sh_l[4] = {S, b, 2 * h, s};
    int perm_l[4] = {0, 1, 3, 2};
    fa3c_tensor lp = tu_permute(tu_tensor(&ar, FA3C_DTYPE_F32, 4, sh_l, 0), perm_l);
    tu_fill_normal(&lp, &r, 1.0);
    lp.shape[3] = h;
    float *L = lp.data;
#define LSE(sp, bi, si, hi) L[(sp) * lp.stride[0] + (bi) * lp.stride[1] + (si) * lp.stride[2] + (hi) * lp.stride[3]]
    for (int64_t sp = S / 2; sp < S; sp++)
        for (int64_t bi = 0; bi < (b / 3 > 0 ? b / 3 : 1); bi++)
            for (int64_t si = 0; si < s; si++)
                for (int64_t hi = 0; hi < h; hi++) LSE(sp, bi, si, hi) = -INFINITY;
    for (int64_t sp = 0; sp < S; sp++) LSE(sp, b - 1, s - 1, 0) = -INFINITY; /* no split contributes */
    if (h > 1 && S > 1) LSE(0, b - 1, 0, 1) = INFINITY;                     /* "no keys" marker */
    int64_t sh_out[4] = {b, s, h, dv}, sh_lse[3] = {b, s, h};
    fa3c_tensor out = tu_tensor(&ar, odt, 4, sh_out, dv % 16 == 0 ? 16 : 0);
    fa3c_tensor lse = tu_tensor(&ar, FA3C_DTYPE_F32, 3, sh_lse, 0);
    tu_arena_snapshot(&ar);

    bool ok = true;
    fa3c_status st;
    fa3c_tensor opd = op, lpd = lp, od = out, ld = lse;
    if (fa3c_context_device_type(ctx) != FA3C_DEVICE_CPU) {
        if (tu_arena_to_device(&ar, ctx) != 0) {
            snprintf(msg, mn, "device copy failed");
            tu_arena_free(&ar);
            return false;
        }
        opd = tu_on_device(&ar, &op, ctx), lpd = tu_on_device(&ar, &lp, ctx);
        od = tu_on_device(&ar, &out, ctx), ld = tu_on_device(&ar, &lse, ctx);
    }
    st = fa3c_combine(ctx, &opd, &lpd, &od, &ld);
    if (st == FA3C_OK && fa3c_context_device_type(ctx) != FA3C_DEVICE_CPU && tu_arena_from_device(&ar, ctx) != 0) {
        snprintf(msg, mn, "device copy failed");
        tu_arena_free(&ar);
        return false;
    }
    if (st != FA3C_OK) {
        snprintf(msg, mn, "fa3c_combine: %s: %s", fa3c_status_string(st), fa3c_last_error());
        tu_arena_free(&ar);
        return false;
    }
    if (tu_arena_guards(&ar, msg, mn) != 0) ok = false;
    for (int i = 0; ok && i < 2; i++) { /* the partials are inputs */
        tu_buf *bf = &ar.buf[i];
        if (memcmp(bf->base, bf->saved, bf->bytes + 2 * TU_GUARD) != 0) {
            snprintf(msg, mn, "combine modified its input %s", i ? "lse_partial" : "out_partial");
            ok = false;
        }
    }
    double *ls = malloc(sizeof(double) * (size_t)S), *os = malloc(sizeof(double) * (size_t)(S * dv));
    double *ro = malloc(sizeof(double) * (size_t)dv);
    out_stats stt = {0, 0, 0, true};
    double lse_err = 0;
    const float *O = op.data;
    for (int64_t bi = 0; ok && bi < b; bi++)
        for (int64_t si = 0; ok && si < s; si++)
            for (int64_t hi = 0; ok && hi < h; hi++) {
                for (int64_t sp = 0; sp < S; sp++) {
                    ls[sp] = LSE(sp, bi, si, hi);
                    int64_t o = sp * op.stride[0] + bi * op.stride[1] + si * op.stride[2] + hi * op.stride[3];
                    for (int64_t e = 0; e < dv; e++) os[sp * dv + e] = O[o + e];
                }
                double rl;
                tu_combine_ref(S, ls, os, dv, ro, &rl);
                double x = ((const float *)lse.data)[bi * lse.stride[0] + si * lse.stride[1] + hi * lse.stride[2]];
                if (!lse_ok(x, rl)) {
                    snprintf(msg, mn, "lse %.8g vs %.8g at b %lld s %lld h %lld", x, rl, (long long)bi, (long long)si,
                             (long long)hi);
                    ok = false;
                }
                if (isfinite(rl)) lse_err = fmax(lse_err, fabs(x - rl));
                int64_t ob = bi * out.stride[0] + si * out.stride[1] + hi * out.stride[2];
                for (int64_t e = 0; ok && e < dv; e++) {
                    double y = fa3c_load(out.data, odt, ob + e);
                    if (rl == -INFINITY && y != 0) {
                        snprintf(msg, mn, "row without contributing split: out %.6g, expected 0", y);
                        ok = false;
                    }
                    out_stats_add(&stt, odt, y, ro[e]);
                }
            }
#undef LSE
    if (ok && !out_stats_ok(&stt)) {
        snprintf(msg, mn, "out max err %.3g > 2 * rounding err %.3g", stt.max_err, stt.max_pt);
        ok = false;
    }
    if (ok) snprintf(msg, mn, "out err %.3g (rounding %.3g) lse err %.3g", stt.max_err, stt.max_pt, lse_err);
    free(ls);
    free(os);
    free(ro);
    tu_arena_free(&ar);
    return ok;
}

/* merge_state: a and b in dtype ia/ib, out dtype od; alias: out = out_a, lse = lse_a (od == ia). */
static bool run_merge(fa3c_context *ctx, fa3c_dtype ia, fa3c_dtype ib, fa3c_dtype odt, bool alias, int64_t n,
                      int64_t h, int64_t dv, uint64_t seed, char *msg, size_t mn) {
    tu_arena ar;
    tu_arena_init(&ar);
    tu_rng r;
    tu_rng_seed(&r, seed);
    int64_t sh3[3] = {n, h, dv}, sh2[2] = {n, h};
    fa3c_tensor oa = tu_tensor(&ar, ia, 3, sh3, 8), ob = tu_tensor(&ar, ib, 3, sh3, 0);
    fa3c_tensor la = tu_tensor(&ar, FA3C_DTYPE_F32, 2, sh2, 3), lb = tu_tensor(&ar, FA3C_DTYPE_F32, 2, sh2, 0);
    tu_fill_normal(&oa, &r, 1.0);
    tu_fill_normal(&ob, &r, 1.0);
    tu_fill_normal(&la, &r, 2.0);
    tu_fill_normal(&lb, &r, 2.0);
    float *LA = la.data, *LB = lb.data;
    for (int64_t i = 0; i < n; i++) { /* row 1 mod 4: a empty; 2: b empty; 3 mod 8: both */
        if (i % 4 == 1 || i % 8 == 3) LA[i * la.stride[0]] = -INFINITY;
        if (i % 4 == 2 || i % 8 == 3) LB[i * lb.stride[0] + (h - 1) * lb.stride[1]] = -INFINITY;
        if (i % 8 == 3) LB[i * lb.stride[0]] = -INFINITY;
    }
    fa3c_tensor out = alias ? oa : tu_tensor(&ar, odt, 3, sh3, 0);
    fa3c_tensor lse = alias ? la : tu_tensor(&ar, FA3C_DTYPE_F32, 2, sh2, 0);
    /* the reference, from the inputs before the call (aliasing overwrites them) */
    double *ref = malloc(sizeof(double) * (size_t)(n * h * dv + 1)), *rl = malloc(sizeof(double) * (size_t)(n * h + 1));
    double *os = malloc(sizeof(double) * (size_t)(2 * dv)), ls[2];
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < h; j++) {
            ls[0] = LA[i * la.stride[0] + j * la.stride[1]];
            ls[1] = LB[i * lb.stride[0] + j * lb.stride[1]];
            for (int64_t e = 0; e < dv; e++) {
                os[e] = fa3c_load(oa.data, ia, i * oa.stride[0] + j * oa.stride[1] + e);
                os[dv + e] = fa3c_load(ob.data, ib, i * ob.stride[0] + j * ob.stride[1] + e);
            }
            tu_combine_ref(2, ls, os, dv, ref + (i * h + j) * dv, rl + i * h + j);
        }
    tu_arena_snapshot(&ar);
    fa3c_tensor d_oa = oa, d_la = la, d_ob = ob, d_lb = lb, d_o = out, d_l = lse;
    bool dev = fa3c_context_device_type(ctx) != FA3C_DEVICE_CPU;
    bool ok = true;
    if (dev) {
        if (tu_arena_to_device(&ar, ctx) != 0) ok = false;
        d_oa = tu_on_device(&ar, &oa, ctx), d_la = tu_on_device(&ar, &la, ctx);
        d_ob = tu_on_device(&ar, &ob, ctx), d_lb = tu_on_device(&ar, &lb, ctx);
        d_o = tu_on_device(&ar, &out, ctx), d_l = tu_on_device(&ar, &lse, ctx);
    }
    fa3c_status st = ok ? fa3c_merge_state(ctx, &d_oa, &d_la, &d_ob, &d_lb, &d_o, &d_l) : FA3C_ERROR_INTERNAL;
    if (st == FA3C_OK && dev && tu_arena_from_device(&ar, ctx) != 0) st = FA3C_ERROR_INTERNAL;
    if (st != FA3C_OK) {
        snprintf(msg, mn, "fa3c_merge_state: %s: %s", fa3c_status_string(st), fa3c_last_error());
        ok = false;
    }
    if (ok && tu_arena_guards(&ar, msg, mn) != 0) ok = false;
    for (int i = 0; ok && i < 4; i++) { /* oa, ob, la, lb are inputs unless aliased by the outputs */
        tu_buf *bf = &ar.buf[i];
        if (alias && (i == 0 || i == 2)) continue;
        if (memcmp(bf->base, bf->saved, bf->bytes + 2 * TU_GUARD) != 0) {
            snprintf(msg, mn, "merge_state modified input buffer %d", i);
            ok = false;
        }
    }
    out_stats stt = {0, 0, 0, true};
    for (int64_t i = 0; ok && i < n; i++)
        for (int64_t j = 0; ok && j < h; j++) {
            double x = ((const float *)lse.data)[i * lse.stride[0] + j * lse.stride[1]];
            if (!lse_ok(x, rl[i * h + j])) {
                snprintf(msg, mn, "lse %.8g vs %.8g at row %lld head %lld", x, rl[i * h + j], (long long)i, (long long)j);
                ok = false;
            }
            for (int64_t e = 0; ok && e < dv; e++) {
                double y = fa3c_load(out.data, odt, i * out.stride[0] + j * out.stride[1] + e);
                if (rl[i * h + j] == -INFINITY && y != 0) {
                    snprintf(msg, mn, "both states empty: out %.6g, expected 0", y);
                    ok = false;
                }
                out_stats_add(&stt, odt, y, ref[(i * h + j) * dv + e]);
            }
        }
    if (ok && !out_stats_ok(&stt)) {
        snprintf(msg, mn, "out max err %.3g > 2 * rounding err %.3g", stt.max_err, stt.max_pt);
        ok = false;
    }
    if (ok) snprintf(msg, mn, "out err %.3g (rounding %.3g)", stt.max_err, stt.max_pt);
    free(ref);
    free(rl);
    free(os);
    tu_arena_free(&ar);
    return ok;
}

static void test_backend(fa3c_context *ctx, const char *bname, counts *n) {
    const fa3c_dtype odts[3] = {FA3C_DTYPE_F32, FA3C_DTYPE_F16, FA3C_DTYPE_BF16};
    const int64_t dvs[3] = {64, 128, 512}, ss[3] = {1, 3, 113}, Ss[5] = {1, 2, 3, 17, 133};
    char name[128], msg[512];
    uint64_t seed = 1;
    for (int io = 0; io < 3; io++)
        for (int id = 0; id < 3; id++)
            for (int is = 0; is < 3; is++)
                for (int iS = 0; iS < 5; iS++) {
                    /* FA3 uses b = 5, h = 16; shrink the large combinations to keep this fast */
                    int64_t dv = dvs[id], s = ss[is], S = Ss[iS], b = 5, h = 16;
                    while (S * b * s * h * dv > (1 << 20) && h > 2) h /= 2;
                    while (S * b * s * h * dv > (1 << 20) && b > 2) b--;
                    if (S * b * s * h * dv > (1 << 21)) s = 7;
                    snprintf(name, sizeof name, "combine %s dv%lld s%lld S%lld b%lld h%lld", fa3c_dtype_name(odts[io]),
                             (long long)dv, (long long)s, (long long)S, (long long)b, (long long)h);
                    bool ok = run_combine(ctx, odts[io], dv, s, S, b, h, seed++, msg, sizeof msg);
                    report(n, bname, name, ok, msg);
                }
    const fa3c_dtype all[3] = {FA3C_DTYPE_F32, FA3C_DTYPE_F16, FA3C_DTYPE_BF16};
    for (int a = 0; a < 3; a++)
        for (int o = 0; o < 3; o++) {
            fa3c_dtype ib = all[(a + 1) % 3];
            snprintf(name, sizeof name, "merge_state a %s b %s out %s", fa3c_dtype_name(all[a]), fa3c_dtype_name(ib),
                     fa3c_dtype_name(all[o]));
            bool ok = run_merge(ctx, all[a], ib, all[o], false, 37, 4, o == 2 ? 512 : 64, seed++, msg, sizeof msg);
            report(n, bname, name, ok, msg);
        }
    for (int a = 0; a < 3; a++) {
        snprintf(name, sizeof name, "merge_state %s aliased out=out_a lse=lse_a", fa3c_dtype_name(all[a]));
        bool ok = run_merge(ctx, all[a], all[a], all[a], true, 29, 3, 128, seed++, msg, sizeof msg);
        report(n, bname, name, ok, msg);
    }
}

int main(void) {
    counts n = {0, 0};
    for (int i = 0; i < fa3c_backend_count(); i++) {
        const char *bname = fa3c_backend_name(i);
        if (!fa3c_backend_available(i)) {
            printf("skip [%s] not available on this machine\n", bname);
            continue;
        }
        fa3c_context_options opt;
        fa3c_context_options_init(&opt);
        opt.backend = bname;
        fa3c_context *ctx = NULL;
        fa3c_status st = fa3c_context_create(&opt, &ctx);
        if (st != FA3C_OK) {
            report(&n, bname, "context", false, fa3c_last_error());
            continue;
        }
        test_backend(ctx, bname, &n);
        fa3c_context_destroy(ctx);
    }
    printf("test_combine: %d passed, %d failed\n", n.passed, n.failed);
    return n.failed ? 1 : 0;
}
