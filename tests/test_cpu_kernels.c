/*
 * The cpu backend's SIMD kernels (src/cpu/cpu_kernels.h) at every instruction-set level this build
 * compiles and this CPU runs, against the scalar level and double-precision math:
 *   conversions   every bf16 / f16 / e4m3 bit pattern to fp32, and fp32 to bf16 / f16 (ties,
 *                 subnormals, overflow, NaN) bit for bit as the library's scalar converters;
 *   packing       key tiles (transposed, and as bf16 pairs) and value tiles bit for bit;
 *   q.k, p.v      within fp32 summation error of the exact products;
 *   softmax       exp / tanh accuracy, masking, the running max / sum and the sink states.
 * Shape legend as in include/fa3c.h and cpu_kernels.h.
 */
#include "cpu/cpu_kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                                                           \
    do {                                                                                                           \
        if (!(cond)) {                                                                                             \
            if (failures++ < 20) {                                                                                 \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                        \
                printf(__VA_ARGS__);                                                                               \
                printf("\n");                                                                                      \
            }                                                                                                      \
        }                                                                                                          \
    } while (0)

static uint64_t rng_state = 12345;
static double urand(void) { /* [0, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1p-53;
}
static float nrand(void) { return (float)(sqrt(-2.0 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand())); }

static bool same_bits(float a, float b) {
    if (isnan(a) && isnan(b)) return true;
    return memcmp(&a, &b, sizeof a) == 0;
}

static void *aligned(size_t bytes) {
    void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    memset(p, 0, (bytes + 63) & ~(size_t)63);
    return p;
}

/* Every bit pattern of the 16-bit and 8-bit input types, and tails shorter than a vector. */
static void test_row_to_f32(const cpu_kernels *k) {
    static uint16_t h[65536];
    static uint8_t e[256];
    static float got[65536];
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    for (int i = 0; i < 256; i++) e[i] = (uint8_t)i;
    k->row_to_f32(h, FA3C_DTYPE_BF16, 65536, got);
    for (int i = 0; i < 65536; i++)
        CHECK(same_bits(got[i], fa3c_bf16_to_f32(h[i])), "%s bf16 0x%04x -> %g", k->name, i, got[i]);
    k->row_to_f32(h, FA3C_DTYPE_F16, 65536, got);
    for (int i = 0; i < 65536; i++)
        CHECK(same_bits(got[i], fa3c_f16_to_f32(h[i])), "%s f16 0x%04x -> %g", k->name, i, got[i]);
    k->row_to_f32(e, FA3C_DTYPE_E4M3, 256, got);
    for (int i = 0; i < 256; i++)
        CHECK(same_bits(got[i], fa3c_e4m3_to_f32(e[i])), "%s e4m3 0x%02x -> %g", k->name, i, got[i]);
    /* a 24-element row: the element after it must not be written */
    got[24] = 7.0f;
    k->row_to_f32(h + 1000, FA3C_DTYPE_BF16, 24, got);
    CHECK(got[24] == 7.0f && same_bits(got[23], fa3c_bf16_to_f32(h[1023])), "%s bf16 tail", k->name);
}

static void test_row_from_f32(const cpu_kernels *k) {
    enum { N = 4096 };
    static float x[N];
    static uint16_t got[N + 8];
    for (int i = 0; i < N; i++) {
        switch (i % 8) {
        case 0: x[i] = nrand(); break;
        case 1: { /* exact bf16 / f16 ties */
            uint32_t u = (uint32_t)(urand() * 4294967296.0);
            u = (u & 0xFFFF0000u) | 0x8000u;
            memcpy(&x[i], &u, 4);
            break;
        }
        case 2: x[i] = ldexpf(nrand(), -(int)(urand() * 30)); break; /* f16 subnormals */
        case 3: x[i] = ldexpf(nrand(), (int)(urand() * 20)); break;  /* f16 overflow */
        case 4: x[i] = (float)((int)(urand() * 4096) - 2048) * 0x1p-24f + 1.0f; break;
        case 5: x[i] = i % 3 ? INFINITY : -INFINITY; break;
        case 6: x[i] = i % 5 ? NAN : -0.0f; break;
        default: x[i] = ldexpf(nrand(), -130); break; /* fp32 subnormals */
        }
    }
    for (int t = 0; t < 2; t++) {
        fa3c_dtype dt = t ? FA3C_DTYPE_F16 : FA3C_DTYPE_BF16;
        got[N] = 0xABCD;
        k->row_from_f32(x, 1.0f, N, dt, got);
        for (int i = 0; i < N; i++) {
            uint16_t want = dt == FA3C_DTYPE_BF16 ? fa3c_f32_to_bf16(x[i]) : fa3c_f32_to_f16(x[i]);
            if (isnan(x[i])) /* any NaN (the hardware f16 conversion keeps the payload) */
                CHECK(isnan(fa3c_load(&got[i], dt, 0)), "%s %s(nan) = 0x%04x", k->name, fa3c_dtype_name(dt), got[i]);
            else
                CHECK(got[i] == want, "%s %s(%a) = 0x%04x, want 0x%04x", k->name, fa3c_dtype_name(dt), (double)x[i],
                      got[i], want);
        }
        CHECK(got[N] == 0xABCD, "%s row_from_f32 wrote past its row", k->name);
        k->row_from_f32(x, 0.5f, 40, dt, got); /* multiplier and a 40-element row */
        for (int i = 0; i < 40; i++) {
            uint16_t want = dt == FA3C_DTYPE_BF16 ? fa3c_f32_to_bf16(x[i] * 0.5f) : fa3c_f32_to_f16(x[i] * 0.5f);
            CHECK(got[i] == want, "%s scaled %s [%d]", k->name, fa3c_dtype_name(dt), i);
        }
    }
}

/* Random rows of dtype: n rows of dk elements, row stride dk + 8 (a view). */
static void *rows_of(fa3c_dtype dt, int64_t n, int64_t dk, const void **rows) {
    size_t es = fa3c_dtype_size(dt);
    uint8_t *buf = aligned((size_t)(n * (dk + 8)) * es + 2);
    buf += 2; /* rows only 2-byte aligned, as a caller's views may be */
    for (int64_t j = 0; j < n; j++) {
        rows[j] = buf + (size_t)(j * (dk + 8)) * es;
        for (int64_t c = 0; c < dk; c++) fa3c_store((void *)rows[j], dt, c, nrand());
    }
    return buf - 2;
}

static void test_pack(const cpu_kernels *k, const cpu_kernels *ref) {
    static const fa3c_dtype dts[3] = {FA3C_DTYPE_BF16, FA3C_DTYPE_F16, FA3C_DTYPE_E4M3};
    static const int64_t dks[4] = {8, 24, 128, 200};
    const void *rows[CPU_NB];
    float *kt = aligned(600 * CPU_NB * 4), *kt_ref = aligned(600 * CPU_NB * 4);
    for (int t = 0; t < 3; t++) {
        for (int di = 0; di < 4; di++) {
            int64_t dk = dks[di], n16 = di % 2 ? 64 : 32, c0 = di * 8;
            void *buf = rows_of(dts[t], n16, dk, rows);
            memset(kt, 0, 600 * CPU_NB * 4);
            memset(kt_ref, 0, 600 * CPU_NB * 4);
            k->pack_k(rows, n16, dk, dts[t], c0, kt);
            ref->pack_k(rows, n16, dk, dts[t], c0, kt_ref);
            CHECK(!memcmp(kt, kt_ref, 600 * CPU_NB * 4), "%s pack_k %s dk %lld", k->name, fa3c_dtype_name(dts[t]),
                  (long long)dk);
            int64_t n = n16 - 5, dvp = (dk + 15) & ~(int64_t)15;
            memset(kt, 0x55, 600 * CPU_NB * 4);
            k->pack_v(rows, n, dk, dts[t], kt);
            ref->pack_v(rows, n, dk, dts[t], kt_ref);
            CHECK(!memcmp(kt, kt_ref, (size_t)(n * dvp) * 4), "%s pack_v %s dv %lld", k->name, fa3c_dtype_name(dts[t]),
                  (long long)dk);
            if (k->pack_k_bf16 && dts[t] != FA3C_DTYPE_F16) {
                uint32_t *kp = (uint32_t *)kt;
                memset(kp, 0, 600 * CPU_NB * 4);
                k->pack_k_bf16(rows, n16, dk, dts[t], c0, kp);
                for (int64_t j = 0; j < n16; j++)
                    for (int64_t c = 0; c < dk; c++) {
                        uint32_t pair = kp[((c0 + c) / 2) * CPU_NB + j];
                        uint16_t got = (uint16_t)(c % 2 ? pair >> 16 : pair & 0xFFFF);
                        uint16_t want = fa3c_f32_to_bf16(fa3c_load(rows[j], dts[t], c));
                        CHECK(got == want, "%s pack_k_bf16 %s dk %lld [%lld][%lld]", k->name, fa3c_dtype_name(dts[t]),
                              (long long)dk, (long long)j, (long long)c);
                    }
            }
            free(buf);
        }
    }
    free(kt);
    free(kt_ref);
}

/* q.k (fp32 and bf16 pairs) and p.v against double sums, on every row / column block shape. */
static void test_gemms(const cpu_kernels *k) {
    enum { RMAX = 13, DQ = 72, DV = 40 };
    float *q = aligned(RMAX * DQ * 4), *kt = aligned(DQ * CPU_NB * 4), *s = aligned(RMAX * CPU_NB * 4);
    uint32_t *qp = aligned(RMAX * DQ * 2), *kp = aligned(DQ * CPU_NB * 2);
    for (int i = 0; i < RMAX * DQ; i++) q[i] = fa3c_round(FA3C_DTYPE_BF16, nrand());
    for (int i = 0; i < DQ * CPU_NB; i++) kt[i] = fa3c_round(FA3C_DTYPE_BF16, nrand());
    for (int r = 0; r < RMAX; r++)
        for (int c = 0; c < DQ; c += 2)
            qp[r * DQ / 2 + c / 2] =
                fa3c_f32_to_bf16(q[r * DQ + c]) | (uint32_t)fa3c_f32_to_bf16(q[r * DQ + c + 1]) << 16;
    for (int c = 0; c < DQ; c += 2)
        for (int j = 0; j < CPU_NB; j++)
            kp[c / 2 * CPU_NB + j] =
                fa3c_f32_to_bf16(kt[c * CPU_NB + j]) | (uint32_t)fa3c_f32_to_bf16(kt[(c + 1) * CPU_NB + j]) << 16;
    for (int R = 1; R <= RMAX; R += 3) {
        for (int n16 = 16; n16 <= CPU_NB; n16 += 16) {
            for (int pass = 0; pass < (k->qk_bf16 ? 2 : 1); pass++) {
                memset(s, 0, RMAX * CPU_NB * 4);
                if (pass) k->qk_bf16(qp, R, DQ, kp, n16, s);
                else k->qk(q, R, DQ, kt, n16, s);
                for (int r = 0; r < R; r++)
                    for (int j = 0; j < n16; j++) {
                        double want = 0, mag = 0;
                        for (int c = 0; c < DQ; c++) {
                            want += (double)q[r * DQ + c] * kt[c * CPU_NB + j];
                            mag += fabs((double)q[r * DQ + c] * kt[c * CPU_NB + j]);
                        }
                        CHECK(fabs(s[r * CPU_NB + j] - want) <= 1e-6 * mag + 1e-30,
                              "%s qk%s R %d n16 %d [%d][%d]: %g vs %g", k->name, pass ? "_bf16" : "", R, n16, r, j,
                              s[r * CPU_NB + j], want);
                    }
            }
        }
    }
    float *p = aligned(RMAX * CPU_NB * 4), *vt = aligned(CPU_NB * 48 * 4), *o = aligned(RMAX * 48 * 4),
          *o0 = aligned(RMAX * 48 * 4), alpha[RMAX];
    for (int i = 0; i < RMAX * CPU_NB; i++) p[i] = (float)urand();
    for (int j = 0; j < CPU_NB; j++)
        for (int c = 0; c < 48; c++) vt[j * 48 + c] = c < DV ? nrand() : 0.0f;
    for (int R = 1; R <= RMAX; R += 2) {
        for (int n = 1; n <= CPU_NB; n += 9) {
            for (int r = 0; r < R; r++) alpha[r] = r % 3 ? (float)urand() : 1.0f;
            for (int i = 0; i < RMAX * 48; i++) o[i] = o0[i] = nrand();
            k->pv(p, R, n, vt, 48, alpha, o);
            for (int r = 0; r < R; r++)
                for (int c = 0; c < 48; c++) {
                    double want = (double)alpha[r] * o0[r * 48 + c], mag = fabs(want);
                    for (int j = 0; j < n; j++) {
                        want += (double)p[r * CPU_NB + j] * vt[j * 48 + c];
                        mag += fabs((double)p[r * CPU_NB + j] * vt[j * 48 + c]);
                    }
                    CHECK(fabs(o[r * 48 + c] - want) <= 1e-6 * mag + 1e-30, "%s pv R %d n %d [%d][%d]: %g vs %g",
                          k->name, R, n, r, c, o[r * 48 + c], want);
                }
        }
    }
    free(q), free(kt), free(s), free(qp), free(kp), free(p), free(vt), free(o), free(o0);
}

/* One softmax step against double math: exp over a wide range, masks, softcap, running states. */
static void test_softmax(const cpu_kernels *k) {
    enum { R = 6 };
    float *s = aligned(R * CPU_NB * 4), *raw = aligned(R * CPU_NB * 4);
    float m[R], l[R], alpha[R], m0[R], l0[R];
    int32_t jlo[R], jhi[R];
    for (int trial = 0; trial < 400; trial++) {
        int n = 1 + (int)(urand() * CPU_NB);
        float mul = (float)(0.05 + urand()), cap = trial % 3 == 0 ? (float)(1 + 30 * urand()) : 0.0f;
        float range = trial % 4 == 0 ? 200.0f : 12.0f;
        for (int r = 0; r < R; r++) {
            for (int j = 0; j < CPU_NB; j++) raw[r * CPU_NB + j] = (float)(urand() * 2 - 1) * range;
            jlo[r] = (int32_t)(urand() * n);
            jhi[r] = jlo[r] + (int32_t)(urand() * (n - jlo[r] + 1));
            if (r == 0) jlo[r] = 0, jhi[r] = n;
            if (r == 1) jlo[r] = jhi[r] = 0; /* fully masked */
            switch (r % 3) {
            case 0: m0[r] = -INFINITY, l0[r] = 0.0f; break;     /* first tile */
            case 1: m0[r] = 0.5f, l0[r] = 1.0f; break;          /* a sink or an earlier tile */
            default: m0[r] = 40.0f, l0[r] = 3.25f; break;       /* earlier tiles dominate */
            }
            m[r] = m0[r], l[r] = l0[r];
        }
        memcpy(s, raw, R * CPU_NB * 4);
        k->softmax(s, R, n, jlo, jhi, mul, cap, m, l, alpha);
        for (int r = 0; r < R; r++) {
            double mx = m0[r], x[CPU_NB];
            for (int j = jlo[r]; j < jhi[r]; j++) {
                x[j] = (double)raw[r * CPU_NB + j] * mul;
                if (cap > 0) x[j] = cap * tanh(x[j] / cap);
                if (x[j] > mx) mx = x[j];
            }
            if (mx == -INFINITY) {
                CHECK(alpha[r] == 1.0f && m[r] == m0[r] && l[r] == l0[r], "%s softmax masked row state", k->name);
                for (int j = 0; j < n; j++) CHECK(s[r * CPU_NB + j] == 0.0f, "%s softmax masked row P", k->name);
                continue;
            }
            /* a few fp32 ulps of exp, plus the fp32 rounding of x and of x - m (relative to their
             * size), plus the softcap's tanh (absolute, scaled by cap) */
            double xmax = 0;
            for (int j = jlo[r]; j < jhi[r]; j++) xmax = fmax(xmax, fabs(x[j]));
            double rel = 4e-7 + 1.2e-7 * (xmax + fabs(mx) + (isfinite(m0[r]) ? fabs(m0[r]) : 0)) +
                         (cap > 0 ? 2e-6 * cap : 0);
            double sum = 0;
            for (int j = 0; j < n; j++) {
                double want = j >= jlo[r] && j < jhi[r] ? exp(x[j] - mx) : 0.0;
                sum += want;
                double got = s[r * CPU_NB + j];
                CHECK(fabs(got - want) <= rel * want + 1e-37,
                      "%s softmax trial %d r %d j %d: %.9g vs %.9g (mul %g cap %g)", k->name, trial, r, j, got, want,
                      mul, cap);
            }
            double a = exp((double)m0[r] - mx), lw = l0[r] * a + sum;
            CHECK(fabs(m[r] - mx) <= 2.4e-7 * fabs(mx) + (cap > 0 ? 2e-6 * cap : 0), "%s softmax m %.9g vs %.9g",
                  k->name, m[r], mx);
            CHECK(fabs(alpha[r] - a) <= rel * a + 1e-37, "%s softmax alpha %.9g vs %.9g", k->name, alpha[r], a);
            CHECK(fabs(l[r] - lw) <= 2 * rel * lw, "%s softmax l %.9g vs %.9g", k->name, l[r], lw);
        }
    }
    free(s);
    free(raw);
}

static bool level(int isa, cpu_kernels *k) {
    __builtin_cpu_init();
    switch (isa) {
#ifdef FA3C_CPU_HAVE_AVX2
    case CPU_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
               cpu_kernels_avx2(k);
#endif
#ifdef FA3C_CPU_HAVE_AVX512
    case CPU_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && cpu_kernels_avx512(k);
#endif
#ifdef FA3C_CPU_HAVE_AVX512BF16
    case CPU_ISA_AVX512BF16:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16") && cpu_kernels_avx512bf16(k);
#endif
    case CPU_ISA_SCALAR: return cpu_kernels_scalar(k);
    default: return false;
    }
}

/* `test_cpu_kernels --supports LEVEL` (LEVEL as FA3C_CPU_ISA spells it): exit 0 when this build
 * and CPU run that level, else 1 (ctest skips the forced-level sweeps with it). */
int main(int argc, char **argv) {
    cpu_kernels ref, k;
    static const char *const names[CPU_ISA_COUNT] = {"scalar", "avx2", "avx512", "avx512bf16"};
    if (argc == 3 && !strcmp(argv[1], "--supports")) {
        for (int isa = 0; isa < CPU_ISA_COUNT; isa++)
            if (!strcmp(argv[2], names[isa])) return level(isa, &k) ? 0 : 1;
        return 1;
    }
    cpu_kernels_scalar(&ref);
    int passed = 0, failed = 0, skipped = 0;
    for (int isa = 0; isa < CPU_ISA_COUNT; isa++) {
        if (!level(isa, &k)) {
            printf("level %d: not compiled in or not supported by this CPU, skipped\n", isa);
            skipped++;
            continue;
        }
        int before = failures;
        test_row_to_f32(&k);
        test_row_from_f32(&k);
        test_pack(&k, &ref);
        test_gemms(&k);
        test_softmax(&k);
        printf("%s %s\n", failures == before ? "ok  " : "FAIL", k.name);
        if (failures == before) passed++;
        else failed++;
    }
    printf("test_cpu_kernels: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failures ? 1 : 0;
}
