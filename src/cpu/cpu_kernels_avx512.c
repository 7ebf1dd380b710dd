/*
 * cpu backend, AVX-512 level (F/BW/VL): the kernels of cpu_kernels.h on 16-lane fp32 vectors.
 * q.k and p.v are register-blocked like a GEMM micro-kernel: 4 rows x 4 vectors (64 columns)
 * of accumulators, one broadcast per row and one load per vector for each step of the
 * reduction, so each loaded vector feeds 4 FMAs.
 */
#include "cpu/cpu_avx512.h"

#include <math.h>
#include <string.h>

#define RB 4 /* rows per register block */
#define CV 4 /* 16-lane vectors per register block */

static void row_to_f32(const void *src, fa3c_dtype dtype, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 mk = avx512_lanes(n - i);
        _mm512_mask_storeu_ps(dst + i, mk, avx512_load(src, dtype, i, mk));
    }
}

static void row_from_f32(const float *src, float mul, int64_t n, fa3c_dtype dtype, void *dst) {
    __m512 vm = _mm512_set1_ps(mul);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 mk = avx512_lanes(n - i);
        __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, src + i), vm);
        __m256i h = dtype == FA3C_DTYPE_BF16 ? _mm512_cvtepi32_epi16(avx512_bf16_bits(x))
                                             : _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16((uint16_t *)dst + i, mk, h);
    }
}

/* Blocks of 8 keys x 8 elements (dk is a multiple of 8) are loaded row by row and transposed in
 * registers. */
static void pack_k(const void *const *rows, int64_t n16, int64_t dk, fa3c_dtype dtype, int64_t c0, float *kt) {
    for (int64_t jb = 0; jb < n16; jb += 8) {
        for (int64_t cb = 0; cb < dk; cb += 8) {
            __m256 r[8];
            for (int t = 0; t < 8; t++) r[t] = avx512_load8(rows[jb + t], dtype, cb);
            cpu_transpose8(r);
            for (int u = 0; u < 8; u++) _mm256_store_ps(kt + (c0 + cb + u) * CPU_NB + jb, r[u]);
        }
    }
}

static void pack_v(const void *const *rows, int64_t n, int64_t dv, fa3c_dtype dtype, float *vt) {
    int64_t dvp = (dv + 15) & ~(int64_t)15;
    for (int64_t j = 0; j < n; j++) {
        for (int64_t c = 0; c < dv; c += 8) _mm256_store_ps(vt + j * dvp + c, avx512_load8(rows[j], dtype, c));
        if (dvp != dv) _mm256_store_ps(vt + j * dvp + dv, _mm256_setzero_ps());
    }
}

/* S rows [0, rows) x vectors [0, cv) of one register block; q (rows, dq) row stride dq. */
AVX512_INLINE void qk_block(const float *q, int64_t dq, const float *kt, float *s, const int rows, const int cv) {
    __m512 acc[RB][CV];
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) acc[r][v] = _mm512_setzero_ps();
    for (int64_t c = 0; c < dq; c++) {
        __m512 kv[CV];
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) kv[v] = _mm512_load_ps(kt + c * CPU_NB + 16 * v);
#pragma GCC unroll 4
        for (int r = 0; r < rows; r++) {
            __m512 qb = _mm512_set1_ps(q[r * dq + c]);
#pragma GCC unroll 4
            for (int v = 0; v < cv; v++) acc[r][v] = _mm512_fmadd_ps(qb, kv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) _mm512_store_ps(s + r * CPU_NB + 16 * v, acc[r][v]);
}

#define DISPATCH_BLOCK(fn, rows, cv, ...)                                                                          \
    do {                                                                                                           \
        switch ((rows) * 8 + (cv)) {                                                                               \
        case 4 * 8 + 4: fn(__VA_ARGS__, 4, 4); break;                                                              \
        case 4 * 8 + 3: fn(__VA_ARGS__, 4, 3); break;                                                              \
        case 4 * 8 + 2: fn(__VA_ARGS__, 4, 2); break;                                                              \
        case 4 * 8 + 1: fn(__VA_ARGS__, 4, 1); break;                                                              \
        case 3 * 8 + 4: fn(__VA_ARGS__, 3, 4); break;                                                              \
        case 3 * 8 + 3: fn(__VA_ARGS__, 3, 3); break;                                                              \
        case 3 * 8 + 2: fn(__VA_ARGS__, 3, 2); break;                                                              \
        case 3 * 8 + 1: fn(__VA_ARGS__, 3, 1); break;                                                              \
        case 2 * 8 + 4: fn(__VA_ARGS__, 2, 4); break;                                                              \
        case 2 * 8 + 3: fn(__VA_ARGS__, 2, 3); break;                                                              \
        case 2 * 8 + 2: fn(__VA_ARGS__, 2, 2); break;                                                              \
        case 2 * 8 + 1: fn(__VA_ARGS__, 2, 1); break;                                                              \
        case 1 * 8 + 4: fn(__VA_ARGS__, 1, 4); break;                                                              \
        case 1 * 8 + 3: fn(__VA_ARGS__, 1, 3); break;                                                              \
        case 1 * 8 + 2: fn(__VA_ARGS__, 1, 2); break;                                                              \
        default: fn(__VA_ARGS__, 1, 1); break;                                                                     \
        }                                                                                                          \
    } while (0)

static void qk(const float *q, int64_t R, int64_t dq, const float *kt, int64_t n16, float *s) {
    int64_t nv = n16 / 16;
    for (int64_t r0 = 0; r0 < R; r0 += RB) {
        int rows = R - r0 < RB ? (int)(R - r0) : RB;
        for (int64_t v0 = 0; v0 < nv; v0 += CV) {
            int cv = nv - v0 < CV ? (int)(nv - v0) : CV;
            DISPATCH_BLOCK(qk_block, rows, cv, q + r0 * dq, dq, kt + 16 * v0, s + r0 * CPU_NB + 16 * v0);
        }
    }
}

/* A row's (<= 4) vectors stay in registers between the max and the exp. Without softcap and
 * with mul > 0 the max is taken on the raw sums (max(mul x) = mul max(x)) and each exponent is
 * one FMA, exp(mul x - m) = 2^(x mul log2(e) - m log2(e)). */
static void softmax(float *s, int64_t R, int64_t n, const int32_t *jlo, const int32_t *jhi, float mul, float cap,
                    float *m, float *l, float *alpha) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const bool raw = cap <= 0.0f && mul > 0.0f; /* max on raw sums, scale folded into the exponent */
    const __m512 vmul = _mm512_set1_ps(cap > 0.0f ? mul / cap : mul), vcap = _mm512_set1_ps(cap);
    const float unit = raw ? mul : 1.0f, log2e = 1.44269504088896341f;
    const __m512 vc = _mm512_set1_ps(unit * log2e);
    const int64_t nv = (n + 15) / 16;
    for (int64_t r = 0; r < R; r++) {
        float *row = s + r * CPU_NB;
        __m512 x[CPU_NB / 16];
        __mmask16 vm[CPU_NB / 16];
        bool full = jlo[r] == 0 && jhi[r] == n;
        __m512i lo = _mm512_set1_epi32(jlo[r]), hi = _mm512_set1_epi32(jhi[r]);
        __m512 mx = ninf;
        for (int64_t v = 0; v < nv; v++) {
            x[v] = _mm512_load_ps(row + 16 * v);
            if (full) {
                vm[v] = avx512_lanes(n - 16 * v);
            } else {
                __m512i idx = _mm512_add_epi32(iota, _mm512_set1_epi32((int)(16 * v)));
                vm[v] = _mm512_cmpge_epi32_mask(idx, lo) & _mm512_cmplt_epi32_mask(idx, hi);
            }
            if (!raw) {
                x[v] = _mm512_mul_ps(x[v], vmul);
                if (cap > 0.0f) x[v] = _mm512_mul_ps(vcap, avx512_tanh(x[v]));
            }
            mx = _mm512_max_ps(mx, _mm512_mask_blend_ps(vm[v], ninf, x[v]));
        }
        float mn = fmaxf(m[r], _mm512_reduce_max_ps(mx) * unit);
        if (mn == -INFINITY) {
            for (int64_t v = 0; v < nv; v++) _mm512_store_ps(row + 16 * v, _mm512_setzero_ps());
            alpha[r] = 1.0f;
            continue;
        }
        __m512 bias = _mm512_set1_ps(-mn * log2e), sum = _mm512_setzero_ps();
        for (int64_t v = 0; v < nv; v++) {
            __m512 e = _mm512_maskz_mov_ps(vm[v], avx512_exp2(_mm512_fmadd_ps(x[v], vc, bias)));
            _mm512_store_ps(row + 16 * v, e);
            sum = _mm512_add_ps(sum, e);
        }
        alpha[r] = expf(m[r] - mn);
        l[r] = l[r] * alpha[r] + _mm512_reduce_add_ps(sum);
        m[r] = mn;
    }
}

/* O rows [0, rows) x vectors [0, cv) of one register block: O = alpha O + P Vt. */
AVX512_INLINE void pv_block(const float *p, int64_t n, const float *vt, int64_t dvp, const float *alpha, float *o,
                            const int rows, const int cv) {
    __m512 acc[RB][CV];
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++) {
        __m512 a = _mm512_set1_ps(alpha[r]);
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) acc[r][v] = _mm512_mul_ps(a, _mm512_load_ps(o + r * dvp + 16 * v));
    }
    for (int64_t j = 0; j < n; j++) {
        __m512 vv[CV];
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) vv[v] = _mm512_load_ps(vt + j * dvp + 16 * v);
#pragma GCC unroll 4
        for (int r = 0; r < rows; r++) {
            __m512 pb = _mm512_set1_ps(p[r * CPU_NB + j]);
#pragma GCC unroll 4
            for (int v = 0; v < cv; v++) acc[r][v] = _mm512_fmadd_ps(pb, vv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) _mm512_store_ps(o + r * dvp + 16 * v, acc[r][v]);
}

static void pv(const float *p, int64_t R, int64_t n, const float *vt, int64_t dvp, const float *alpha, float *o) {
    int64_t nv = dvp / 16;
    for (int64_t r0 = 0; r0 < R; r0 += RB) {
        int rows = R - r0 < RB ? (int)(R - r0) : RB;
        for (int64_t v0 = 0; v0 < nv; v0 += CV) {
            int cv = nv - v0 < CV ? (int)(nv - v0) : CV;
            DISPATCH_BLOCK(pv_block, rows, cv, p + r0 * CPU_NB, n, vt + 16 * v0, dvp, alpha + r0,
                           o + r0 * dvp + 16 * v0);
        }
    }
}

bool cpu_kernels_avx512(cpu_kernels *k) {
    memset(k, 0, sizeof *k);
    k->name = "avx512";
    k->row_to_f32 = row_to_f32;
    k->row_from_f32 = row_from_f32;
    k->pack_k = pack_k;
    k->pack_v = pack_v;
    k->qk = qk;
    k->softmax = softmax;
    k->pv = pv;
    return true;
}
