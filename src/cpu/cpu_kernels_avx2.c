/*
 * cpu backend, AVX2 + FMA + F16C level: the kernels of cpu_kernels.h on 8-lane fp32 vectors.
 * With 16 vector registers the GEMM-like blocks are 4 rows x 2 vectors (16 columns).
 * Every row length here (d, dv, dq) is a multiple of 8, so no loop needs a tail.
 */
#include "cpu/cpu_avx.h"
#include "cpu/cpu_kernels.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define RB 4 /* rows per register block */
#define CV 2 /* 8-lane vectors per register block */

/* e4m3 bytes widened to 32-bit lanes -> fp32 (see cpu_avx512.h for the trick). */
INLINE __m256 e4m3_to_f32(__m256i x) {
    __m256i mag = _mm256_and_si256(x, _mm256_set1_epi32(0x7F));
    __m256 v = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(mag, 20)), _mm256_set1_ps(0x1p120f));
    v = _mm256_or_ps(v, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x80)), 24)));
    __m256 nan = _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F)));
    return _mm256_blendv_ps(v, _mm256_set1_ps(__builtin_nanf("")), nan);
}

/* Elements [i, i + 8) of src as fp32. */
INLINE __m256 load8(const void *src, fa3c_dtype dtype, int64_t i) {
    switch (dtype) {
    case FA3C_DTYPE_BF16: {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)src + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case FA3C_DTYPE_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + i)));
    case FA3C_DTYPE_E4M3:
        return e4m3_to_f32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((const uint8_t *)src + i))));
    default: return _mm256_loadu_ps((const float *)src + i);
    }
}

INLINE float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 2^t = 2^k p(f), t = k + f; 2^k built in the exponent field, so t is clamped to the normal
 * range and t < -126 gives 0 (2^-inf = 0). */
INLINE __m256 exp2_8(__m256 t) {
    __m256 under = _mm256_cmp_ps(t, _mm256_set1_ps(-126.0f), _CMP_LT_OQ);
    t = _mm256_max_ps(_mm256_set1_ps(-126.0f), t);
    t = _mm256_min_ps(_mm256_set1_ps(127.0f), t);
    __m256 k = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, k);
    __m256 p = _mm256_set1_ps(1.5337577497120947e-04f); /* the coefficients of cpu_avx512.h */
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3399859890341759e-03f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6185198053717613e-03f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5503290146589279e-02f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022646248340607e-01f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718246459961e-01f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* exp(x) = 2^(x log2(e)). */
INLINE __m256 exp8(__m256 x) { return exp2_8(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f))); }

INLINE __m256 tanh8(__m256 x) {
    __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f));
    __m256 a = _mm256_andnot_ps(sign, x);
    __m256 e = exp8(_mm256_mul_ps(a, _mm256_set1_ps(-2.0f)));
    __m256 t = _mm256_div_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), e), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    return _mm256_or_ps(t, sign);
}

static void row_to_f32(const void *src, fa3c_dtype dtype, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(dst + i, load8(src, dtype, i));
}

static void row_from_f32(const float *src, float mul, int64_t n, fa3c_dtype dtype, void *dst) {
    __m256 vm = _mm256_set1_ps(mul);
    for (int64_t i = 0; i < n; i += 8) {
        __m256 x = _mm256_mul_ps(_mm256_loadu_ps(src + i), vm);
        __m128i h;
        if (dtype == FA3C_DTYPE_BF16) {
            __m256i u = _mm256_castps_si256(x);
            __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
            __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
            __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
            r = _mm256_castps_si256(
                _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(q), _mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
            __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
            h = _mm256_castsi256_si128(packed);
        } else {
            h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        }
        _mm_storeu_si128((__m128i *)((uint16_t *)dst + i), h);
    }
}

static void pack_k(const void *const *rows, int64_t n16, int64_t dk, fa3c_dtype dtype, int64_t c0, float *kt) {
    for (int64_t jb = 0; jb < n16; jb += 8) {
        for (int64_t cb = 0; cb < dk; cb += 8) {
            __m256 r[8];
            for (int t = 0; t < 8; t++) r[t] = load8(rows[jb + t], dtype, cb);
            cpu_transpose8(r);
            for (int u = 0; u < 8; u++) _mm256_store_ps(kt + (c0 + cb + u) * CPU_NB + jb, r[u]);
        }
    }
}

static void pack_v(const void *const *rows, int64_t n, int64_t dv, fa3c_dtype dtype, float *vt) {
    int64_t dvp = (dv + 15) & ~(int64_t)15;
    for (int64_t j = 0; j < n; j++) {
        for (int64_t c = 0; c < dv; c += 8) _mm256_store_ps(vt + j * dvp + c, load8(rows[j], dtype, c));
        if (dvp != dv) _mm256_store_ps(vt + j * dvp + dv, _mm256_setzero_ps());
    }
}

INLINE void qk_block(const float *q, int64_t dq, const float *kt, float *s, const int rows, const int cv) {
    __m256 acc[RB][CV];
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 2
        for (int v = 0; v < cv; v++) acc[r][v] = _mm256_setzero_ps();
    for (int64_t c = 0; c < dq; c++) {
        __m256 kv[CV];
#pragma GCC unroll 2
        for (int v = 0; v < cv; v++) kv[v] = _mm256_load_ps(kt + c * CPU_NB + 8 * v);
#pragma GCC unroll 4
        for (int r = 0; r < rows; r++) {
            __m256 qb = _mm256_broadcast_ss(q + r * dq + c);
#pragma GCC unroll 2
            for (int v = 0; v < cv; v++) acc[r][v] = _mm256_fmadd_ps(qb, kv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 2
        for (int v = 0; v < cv; v++) _mm256_store_ps(s + r * CPU_NB + 8 * v, acc[r][v]);
}

#define DISPATCH_BLOCK(fn, rows, cv, ...)                                                                          \
    do {                                                                                                           \
        switch ((rows) * 8 + (cv)) {                                                                               \
        case 4 * 8 + 2: fn(__VA_ARGS__, 4, 2); break;                                                              \
        case 4 * 8 + 1: fn(__VA_ARGS__, 4, 1); break;                                                              \
        case 3 * 8 + 2: fn(__VA_ARGS__, 3, 2); break;                                                              \
        case 3 * 8 + 1: fn(__VA_ARGS__, 3, 1); break;                                                              \
        case 2 * 8 + 2: fn(__VA_ARGS__, 2, 2); break;                                                              \
        case 2 * 8 + 1: fn(__VA_ARGS__, 2, 1); break;                                                              \
        case 1 * 8 + 2: fn(__VA_ARGS__, 1, 2); break;                                                              \
        default: fn(__VA_ARGS__, 1, 1); break;                                                                     \
        }                                                                                                          \
    } while (0)

static void qk(const float *q, int64_t R, int64_t dq, const float *kt, int64_t n16, float *s) {
    int64_t nv = n16 / 8;
    for (int64_t r0 = 0; r0 < R; r0 += RB) {
        int rows = R - r0 < RB ? (int)(R - r0) : RB;
        for (int64_t v0 = 0; v0 < nv; v0 += CV) {
            int cv = nv - v0 < CV ? (int)(nv - v0) : CV;
            DISPATCH_BLOCK(qk_block, rows, cv, q + r0 * dq, dq, kt + 8 * v0, s + r0 * CPU_NB + 8 * v0);
        }
    }
}

/* As the AVX-512 level: a row's vectors stay in registers between the max and the exp; without
 * softcap and with mul > 0 the max is taken on the raw sums and each exponent is one FMA; alpha
 * and the running sums of 8 rows at a time are updated in vectors. */
static void softmax(float *s, int64_t R, int64_t n, const int32_t *jlo, const int32_t *jhi, float mul, float cap,
                    float *m, float *l, float *alpha) {
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const bool raw = cap <= 0.0f && mul > 0.0f;
    const __m256 vmul = _mm256_set1_ps(cap > 0.0f ? mul / cap : mul), vcap = _mm256_set1_ps(cap);
    const float unit = raw ? mul : 1.0f, log2e = 1.44269504088896341f;
    const __m256 vc = _mm256_set1_ps(unit * log2e);
    const int64_t nv = (n + 7) / 8;
    for (int64_t r0 = 0; r0 < R; r0 += 8) {
        int64_t rn = R - r0 < 8 ? R - r0 : 8;
        float mo[8], mnew[8], sums[8], lo8[8];
        for (int64_t r = r0; r < r0 + rn; r++) {
            float *row = s + r * CPU_NB;
            __m256 x[CPU_NB / 8], valid[CPU_NB / 8];
            __m256i lo1 = _mm256_set1_epi32(jlo[r] - 1), hi = _mm256_set1_epi32(jhi[r]);
            __m256 mx = ninf;
            for (int64_t v = 0; v < nv; v++) {
                __m256i idx = _mm256_add_epi32(iota, _mm256_set1_epi32((int)(8 * v)));
                __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(idx, lo1), _mm256_cmpgt_epi32(hi, idx));
                valid[v] = _mm256_castsi256_ps(in);
                x[v] = _mm256_load_ps(row + 8 * v);
                if (!raw) {
                    x[v] = _mm256_mul_ps(x[v], vmul);
                    if (cap > 0.0f) x[v] = _mm256_mul_ps(vcap, tanh8(x[v]));
                }
                mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, x[v], valid[v]));
            }
            float mn = fmaxf(m[r], hmax8(mx) * unit);
            mo[r - r0] = m[r];
            mnew[r - r0] = mn;
            lo8[r - r0] = l[r];
            sums[r - r0] = 0.0f;
            if (mn == -INFINITY) {
                for (int64_t v = 0; v < nv; v++) _mm256_store_ps(row + 8 * v, _mm256_setzero_ps());
                continue;
            }
            __m256 bias = _mm256_set1_ps(-mn * log2e), sum = _mm256_setzero_ps();
            for (int64_t v = 0; v < nv; v++) {
                __m256 e = _mm256_and_ps(valid[v], exp2_8(_mm256_fmadd_ps(x[v], vc, bias)));
                _mm256_store_ps(row + 8 * v, e);
                sum = _mm256_add_ps(sum, e);
            }
            sums[r - r0] = hsum8(sum);
        }
        for (int64_t i = rn; i < 8; i++) mo[i] = mnew[i] = lo8[i] = sums[i] = 0.0f;
        /* alpha = exp(m - m') (1 where m' = -inf: the row is unchanged), l = l alpha + sum, m = m' */
        __m256 vo = _mm256_loadu_ps(mo), vn = _mm256_loadu_ps(mnew);
        __m256 dead = _mm256_cmp_ps(vn, ninf, _CMP_EQ_OQ);
        __m256 a = exp2_8(_mm256_mul_ps(_mm256_sub_ps(vo, vn), _mm256_set1_ps(log2e)));
        a = _mm256_blendv_ps(a, _mm256_set1_ps(1.0f), dead);
        __m256 lv = _mm256_fmadd_ps(_mm256_loadu_ps(lo8), a, _mm256_loadu_ps(sums));
        float av[8], lvv[8];
        _mm256_storeu_ps(av, a);
        _mm256_storeu_ps(lvv, lv);
        for (int64_t i = 0; i < rn; i++) {
            alpha[r0 + i] = av[i];
            l[r0 + i] = lvv[i];
            m[r0 + i] = mnew[i];
        }
    }
}

INLINE void pv_block(const float *p, int64_t n, const float *vt, int64_t dvp, const float *alpha, float *o,
                     const int rows, const int cv) {
    __m256 acc[RB][CV];
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++) {
        __m256 a = _mm256_set1_ps(alpha[r]);
#pragma GCC unroll 2
        for (int v = 0; v < cv; v++) acc[r][v] = _mm256_mul_ps(a, _mm256_load_ps(o + r * dvp + 8 * v));
    }
    for (int64_t j = 0; j < n; j++) {
        __m256 vv[CV];
#pragma GCC unroll 2
        for (int v = 0; v < cv; v++) vv[v] = _mm256_load_ps(vt + j * dvp + 8 * v);
#pragma GCC unroll 4
        for (int r = 0; r < rows; r++) {
            __m256 pb = _mm256_broadcast_ss(p + r * CPU_NB + j);
#pragma GCC unroll 2
            for (int v = 0; v < cv; v++) acc[r][v] = _mm256_fmadd_ps(pb, vv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 2
        for (int v = 0; v < cv; v++) _mm256_store_ps(o + r * dvp + 8 * v, acc[r][v]);
}

static void pv(const float *p, int64_t R, int64_t n, const float *vt, int64_t dvp, const float *alpha, float *o) {
    int64_t nv = dvp / 8;
    for (int64_t r0 = 0; r0 < R; r0 += RB) {
        int rows = R - r0 < RB ? (int)(R - r0) : RB;
        for (int64_t v0 = 0; v0 < nv; v0 += CV) {
            int cv = nv - v0 < CV ? (int)(nv - v0) : CV;
            DISPATCH_BLOCK(pv_block, rows, cv, p + r0 * CPU_NB, n, vt + 8 * v0, dvp, alpha + r0,
                           o + r0 * dvp + 8 * v0);
        }
    }
}

bool cpu_kernels_avx2(cpu_kernels *k) {
    memset(k, 0, sizeof *k);
    k->name = "avx2";
    k->row_to_f32 = row_to_f32;
    k->row_from_f32 = row_from_f32;
    k->pack_k = pack_k;
    k->pack_v = pack_v;
    k->qk = qk;
    k->softmax = softmax;
    k->pv = pv;
    return true;
}
