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

/* 16 elements per step; the masked tail of a row gives the zero padding. */
static void pack_v(const void *const *rows, int64_t n, int64_t dv, fa3c_dtype dtype, float *vt) {
    int64_t dvp = (dv + 15) & ~(int64_t)15;
    for (int64_t j = 0; j < n; j++)
        for (int64_t c = 0; c < dvp; c += 16)
            _mm512_store_ps(vt + j * dvp + c, avx512_load(rows[j], dtype, c, avx512_lanes(dv - c)));
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

/* The softmax constants of one call (see softmax). */
typedef struct softmax_consts {
    bool   raw;       /* no softcap and mul > 0: max on the raw sums, scale folded into the exponent */
    float  unit;      /* mul when raw, else 1 */
    float  cap;       /* softcap, 0: off */
    __m512 vmul, vcap, vc;
} softmax_consts;

/* Rows [r, r + rows) of one softmax step: their max and exp chains are independent, so doing
 * them side by side hides the latency of the horizontal reductions. mnew / sums (rows,) get the
 * new maxima and the sums of the exponentials. */
AVX512_INLINE void softmax_rows(float *s, int64_t n, const int32_t *jlo, const int32_t *jhi, const float *m,
                                const softmax_consts *k, float *mnew, float *sums, const int rows) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const float log2e = 1.44269504088896341f;
    const int64_t nv = (n + 15) / 16;
    __m512 x[4][CPU_NB / 16], mx[4];
    __mmask16 vm[4][CPU_NB / 16];
#pragma GCC unroll 4
    for (int i = 0; i < rows; i++) {
        __m512i lo = _mm512_set1_epi32(jlo[i]), hi = _mm512_set1_epi32(jhi[i]);
        mx[i] = ninf;
        for (int64_t v = 0; v < nv; v++) {
            __m512i idx = _mm512_add_epi32(iota, _mm512_set1_epi32((int)(16 * v)));
            vm[i][v] = _mm512_cmpge_epi32_mask(idx, lo) & _mm512_cmplt_epi32_mask(idx, hi);
            x[i][v] = _mm512_load_ps(s + i * CPU_NB + 16 * v);
            if (!k->raw) {
                x[i][v] = _mm512_mul_ps(x[i][v], k->vmul);
                if (k->cap > 0.0f) x[i][v] = _mm512_mul_ps(k->vcap, avx512_tanh(x[i][v]));
            }
            mx[i] = _mm512_max_ps(mx[i], _mm512_mask_blend_ps(vm[i][v], ninf, x[i][v]));
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < rows; i++) mnew[i] = fmaxf(m[i], _mm512_reduce_max_ps(mx[i]) * k->unit);
#pragma GCC unroll 4
    for (int i = 0; i < rows; i++) {
        float *row = s + i * CPU_NB;
        sums[i] = 0.0f;
        if (mnew[i] == -INFINITY) {
            for (int64_t v = 0; v < nv; v++) _mm512_store_ps(row + 16 * v, _mm512_setzero_ps());
            continue;
        }
        __m512 bias = _mm512_set1_ps(-mnew[i] * log2e), sum = _mm512_setzero_ps();
        for (int64_t v = 0; v < nv; v++) {
            __m512 e = _mm512_maskz_mov_ps(vm[i][v], avx512_exp2(_mm512_fmadd_ps(x[i][v], k->vc, bias)));
            _mm512_store_ps(row + 16 * v, e);
            sum = _mm512_add_ps(sum, e);
        }
        sums[i] = _mm512_reduce_add_ps(sum);
    }
}

/* A row's (<= 4) vectors stay in registers between the max and the exp, four rows side by side.
 * Without softcap and with mul > 0 the max is taken on the raw sums (max(mul x) = mul max(x))
 * and each exponent is one FMA, exp(mul x - m) = 2^(x mul log2(e) - m log2(e)). The rescale
 * factors alpha and the running sums of 16 rows at a time are updated in vectors once their rows
 * are done. */
static void softmax(float *s, int64_t R, int64_t n, const int32_t *jlo, const int32_t *jhi, float mul, float cap,
                    float *m, float *l, float *alpha) {
    const float log2e = 1.44269504088896341f;
    softmax_consts k;
    k.raw = cap <= 0.0f && mul > 0.0f;
    k.unit = k.raw ? mul : 1.0f;
    k.cap = cap;
    k.vmul = _mm512_set1_ps(cap > 0.0f ? mul / cap : mul);
    k.vcap = _mm512_set1_ps(cap);
    k.vc = _mm512_set1_ps(k.unit * log2e);
    for (int64_t r0 = 0; r0 < R; r0 += 16) {
        int64_t rn = R - r0 < 16 ? R - r0 : 16;
        float mnew[16], sums[16];
        for (int64_t i = 0; i < rn; i += 4) {
            int64_t r = r0 + i;
            float *sr = s + r * CPU_NB;
            switch (rn - i < 4 ? rn - i : 4) {
            case 4: softmax_rows(sr, n, jlo + r, jhi + r, m + r, &k, mnew + i, sums + i, 4); break;
            case 3: softmax_rows(sr, n, jlo + r, jhi + r, m + r, &k, mnew + i, sums + i, 3); break;
            case 2: softmax_rows(sr, n, jlo + r, jhi + r, m + r, &k, mnew + i, sums + i, 2); break;
            default: softmax_rows(sr, n, jlo + r, jhi + r, m + r, &k, mnew + i, sums + i, 1); break;
            }
        }
        /* alpha = exp(m - m') (1 where m' = -inf: the row is unchanged), l = l alpha + sum, m = m' */
        const __m512 ninf = _mm512_set1_ps(-INFINITY);
        __mmask16 mk = avx512_lanes(rn);
        __m512 mo = _mm512_maskz_loadu_ps(mk, m + r0), mv = _mm512_maskz_loadu_ps(mk, mnew);
        __mmask16 dead = _mm512_cmpeq_ps_mask(mv, ninf);
        __m512 a = avx512_exp2(_mm512_mul_ps(_mm512_sub_ps(mo, mv), _mm512_set1_ps(log2e)));
        a = _mm512_mask_blend_ps(dead, a, _mm512_set1_ps(1.0f));
        __m512 lv = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, l + r0), a, _mm512_maskz_loadu_ps(mk, sums));
        _mm512_mask_storeu_ps(alpha + r0, mk, a);
        _mm512_mask_storeu_ps(l + r0, mk, lv);
        _mm512_mask_storeu_ps(m + r0, mk, mv);
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
