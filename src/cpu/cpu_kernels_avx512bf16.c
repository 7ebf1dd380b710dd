/*
 * cpu backend, AVX-512 + AVX512-BF16 level: the AVX-512 kernels, plus q.k of bf16 and e4m3
 * inputs on VDPBF16PS. Both operands are exact in bf16 (e4m3 widens to bf16 exactly), the
 * products are exact in fp32 and the sums are fp32, so only the order of the additions differs
 * from the fp32 kernel. Keys are packed as (element 2c, 2c+1) pairs so that one instruction does
 * two steps of the reduction for 16 keys. p.v likewise, with P rounded to bf16 as FA3 rounds it
 * for its second GEMM (the row sums stay fp32) and V packed in pairs of keys.
 */
#include "cpu/cpu_avx512.h"

#include <string.h>

#define RB 4 /* rows per register block */
#define CV 4 /* 16-key vectors per register block */

/* Pairs [i, i + min(np, 16)) of a row as bf16 pairs; the other lanes give 0. */
static inline __attribute__((always_inline)) __m512i load_pairs(const void *src, fa3c_dtype dtype, int64_t i,
                                                                int64_t np) {
    if (dtype == FA3C_DTYPE_BF16) return _mm512_maskz_loadu_epi32(avx512_lanes(np), (const uint32_t *)src + i);
    /* e4m3: 32 bytes -> two fp32 halves -> bf16 (exact) */
    __mmask32 mb = np >= 16 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << (2 * np)) - 1);
    __m256i bytes = _mm256_maskz_loadu_epi8(mb, (const uint8_t *)src + 2 * i);
    __m512 lo = avx512_e4m3_to_f32(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(bytes)));
    __m512 hi = avx512_e4m3_to_f32(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(bytes, 1)));
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* Pairs [i, i + min(np, 8)) of a row as bf16 pairs; the other lanes give 0. */
static inline __attribute__((always_inline)) __m256 load_pairs8(const void *src, fa3c_dtype dtype, int64_t i,
                                                                int64_t np) {
    __mmask8 mk = np >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << np) - 1);
    if (dtype == FA3C_DTYPE_BF16) return _mm256_castsi256_ps(_mm256_maskz_loadu_epi32(mk, (const uint32_t *)src + i));
    /* e4m3: 16 bytes -> fp32 -> bf16 (exact) */
    __mmask16 mb = np >= 8 ? (__mmask16)0xFFFF : (__mmask16)((1u << (2 * np)) - 1);
    __m512 x = avx512_e4m3_to_f32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mb, (const uint8_t *)src + 2 * i)));
    return _mm256_castsi256_ps((__m256i)_mm512_cvtneps_pbh(x));
}

static void pack_k_bf16(const void *const *rows, int64_t n16, int64_t dk, fa3c_dtype dtype, int64_t c0,
                        uint32_t *kp) {
    int64_t dk2 = dk / 2, c02 = c0 / 2;
    for (int64_t jb = 0; jb < n16; jb += 8) {
        for (int64_t cb = 0; cb < dk2; cb += 8) {
            __m256 r[8];
            for (int t = 0; t < 8; t++) r[t] = load_pairs8(rows[jb + t], dtype, cb, dk2 - cb);
            cpu_transpose8(r);
            int64_t cn = dk2 - cb < 8 ? dk2 - cb : 8;
            for (int64_t u = 0; u < cn; u++) _mm256_store_ps((float *)(kp + (c02 + cb + u) * CPU_NB + jb), r[u]);
        }
    }
}

static inline __attribute__((always_inline)) void qk_block(const uint32_t *qp, int64_t dq2, const uint32_t *kp,
                                                           float *s, const int rows, const int cv) {
    __m512 acc[RB][CV];
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) acc[r][v] = _mm512_setzero_ps();
    for (int64_t c = 0; c < dq2; c++) {
        __m512bh kv[CV];
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) kv[v] = (__m512bh)_mm512_load_si512((const void *)(kp + c * CPU_NB + 16 * v));
#pragma GCC unroll 4
        for (int r = 0; r < rows; r++) {
            __m512bh qb = (__m512bh)_mm512_set1_epi32((int)qp[r * dq2 + c]);
#pragma GCC unroll 4
            for (int v = 0; v < cv; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], qb, kv[v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) _mm512_store_ps(s + r * CPU_NB + 16 * v, acc[r][v]);
}

static void qk_bf16(const uint32_t *qp, int64_t R, int64_t dq, const uint32_t *kp, int64_t n16, float *s) {
    int64_t nv = n16 / 16, dq2 = dq / 2;
    for (int64_t r0 = 0; r0 < R; r0 += RB) {
        int rows = R - r0 < RB ? (int)(R - r0) : RB;
        for (int64_t v0 = 0; v0 < nv; v0 += CV) {
            int cv = nv - v0 < CV ? (int)(nv - v0) : CV;
            const uint32_t *q = qp + r0 * dq2, *k = kp + 16 * v0;
            float *sb = s + r0 * CPU_NB + 16 * v0;
            switch (rows * 8 + cv) {
            case 4 * 8 + 4: qk_block(q, dq2, k, sb, 4, 4); break;
            case 4 * 8 + 3: qk_block(q, dq2, k, sb, 4, 3); break;
            case 4 * 8 + 2: qk_block(q, dq2, k, sb, 4, 2); break;
            case 4 * 8 + 1: qk_block(q, dq2, k, sb, 4, 1); break;
            case 3 * 8 + 4: qk_block(q, dq2, k, sb, 3, 4); break;
            case 3 * 8 + 3: qk_block(q, dq2, k, sb, 3, 3); break;
            case 3 * 8 + 2: qk_block(q, dq2, k, sb, 3, 2); break;
            case 3 * 8 + 1: qk_block(q, dq2, k, sb, 3, 1); break;
            case 2 * 8 + 4: qk_block(q, dq2, k, sb, 2, 4); break;
            case 2 * 8 + 3: qk_block(q, dq2, k, sb, 2, 3); break;
            case 2 * 8 + 2: qk_block(q, dq2, k, sb, 2, 2); break;
            case 2 * 8 + 1: qk_block(q, dq2, k, sb, 2, 1); break;
            case 1 * 8 + 4: qk_block(q, dq2, k, sb, 1, 4); break;
            case 1 * 8 + 3: qk_block(q, dq2, k, sb, 1, 3); break;
            case 1 * 8 + 2: qk_block(q, dq2, k, sb, 1, 2); break;
            default: qk_block(q, dq2, k, sb, 1, 1); break;
            }
        }
    }
}

/* Vp[j2][c] = (rows[2 j2][c], rows[2 j2 + 1][c]) as bf16, zero beyond dv. */
static void pack_v_bf16(const void *const *rows, int64_t n16, int64_t dv, fa3c_dtype dtype, uint32_t *vp) {
    int64_t dvp = (dv + 15) & ~(int64_t)15;
    for (int64_t j2 = 0; j2 < n16 / 2; j2++) {
        const void *r0 = rows[2 * j2], *r1 = rows[2 * j2 + 1];
        for (int64_t c = 0; c < dvp; c += 16) {
            __mmask16 mk = avx512_lanes(dv - c);
            __m512i lo, hi;
            if (dtype == FA3C_DTYPE_BF16) {
                lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, (const uint16_t *)r0 + c));
                hi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, (const uint16_t *)r1 + c));
                hi = _mm512_slli_epi32(hi, 16);
            } else { /* e4m3 values are bf16 numbers: the top halves of their fp32 are exact */
                lo = _mm512_srli_epi32(_mm512_castps_si512(avx512_load(r0, dtype, c, mk)), 16);
                hi = _mm512_and_si512(_mm512_castps_si512(avx512_load(r1, dtype, c, mk)),
                                      _mm512_set1_epi32((int)0xFFFF0000u));
            }
            _mm512_store_si512((void *)(vp + j2 * dvp + c), _mm512_or_si512(lo, hi));
        }
    }
}

static inline __attribute__((always_inline)) void pv_block(const uint32_t *pp, int64_t n2, const uint32_t *vp,
                                                           int64_t dvp, const float *alpha, float *o, const int rows,
                                                           const int cv) {
    __m512 acc[RB][CV];
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++) {
        __m512 a = _mm512_set1_ps(alpha[r]);
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) acc[r][v] = _mm512_mul_ps(a, _mm512_load_ps(o + r * dvp + 16 * v));
    }
    for (int64_t j2 = 0; j2 < n2; j2++) {
        __m512bh vv[CV];
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) vv[v] = (__m512bh)_mm512_load_si512((const void *)(vp + j2 * dvp + 16 * v));
#pragma GCC unroll 4
        for (int r = 0; r < rows; r++) {
            __m512bh pb = (__m512bh)_mm512_set1_epi32((int)pp[r * (CPU_NB / 2) + j2]);
#pragma GCC unroll 4
            for (int v = 0; v < cv; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], pb, vv[v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int v = 0; v < cv; v++) _mm512_store_ps(o + r * dvp + 16 * v, acc[r][v]);
}

static void pv_bf16(const float *p, int64_t R, int64_t n, const uint32_t *vp, int64_t dvp, const float *alpha,
                    float *o, uint32_t *pp) {
    int64_t n2 = (n + 1) / 2, nv = dvp / 16;
    /* P rounded to bf16 pairs once; P is 0 beyond n (and Vp rows past n are zeros) */
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < 2 * n2; j += 32) {
            __m512 lo = _mm512_maskz_load_ps(avx512_lanes(n - j), p + r * CPU_NB + j);
            __m512 hi = j + 16 < n ? _mm512_maskz_load_ps(avx512_lanes(n - j - 16), p + r * CPU_NB + j + 16)
                                   : _mm512_setzero_ps();
            _mm512_store_si512((void *)(pp + r * (CPU_NB / 2) + j / 2), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
    for (int64_t r0 = 0; r0 < R; r0 += RB) {
        int rows = R - r0 < RB ? (int)(R - r0) : RB;
        for (int64_t v0 = 0; v0 < nv; v0 += CV) {
            int cv = nv - v0 < CV ? (int)(nv - v0) : CV;
            const uint32_t *pr = pp + r0 * (CPU_NB / 2), *vb = vp + 16 * v0;
            const float *al = alpha + r0;
            float *ob = o + r0 * dvp + 16 * v0;
            switch (rows * 8 + cv) {
            case 4 * 8 + 4: pv_block(pr, n2, vb, dvp, al, ob, 4, 4); break;
            case 4 * 8 + 3: pv_block(pr, n2, vb, dvp, al, ob, 4, 3); break;
            case 4 * 8 + 2: pv_block(pr, n2, vb, dvp, al, ob, 4, 2); break;
            case 4 * 8 + 1: pv_block(pr, n2, vb, dvp, al, ob, 4, 1); break;
            case 3 * 8 + 4: pv_block(pr, n2, vb, dvp, al, ob, 3, 4); break;
            case 3 * 8 + 3: pv_block(pr, n2, vb, dvp, al, ob, 3, 3); break;
            case 3 * 8 + 2: pv_block(pr, n2, vb, dvp, al, ob, 3, 2); break;
            case 3 * 8 + 1: pv_block(pr, n2, vb, dvp, al, ob, 3, 1); break;
            case 2 * 8 + 4: pv_block(pr, n2, vb, dvp, al, ob, 2, 4); break;
            case 2 * 8 + 3: pv_block(pr, n2, vb, dvp, al, ob, 2, 3); break;
            case 2 * 8 + 2: pv_block(pr, n2, vb, dvp, al, ob, 2, 2); break;
            case 2 * 8 + 1: pv_block(pr, n2, vb, dvp, al, ob, 2, 1); break;
            case 1 * 8 + 4: pv_block(pr, n2, vb, dvp, al, ob, 1, 4); break;
            case 1 * 8 + 3: pv_block(pr, n2, vb, dvp, al, ob, 1, 3); break;
            case 1 * 8 + 2: pv_block(pr, n2, vb, dvp, al, ob, 1, 2); break;
            default: pv_block(pr, n2, vb, dvp, al, ob, 1, 1); break;
            }
        }
    }
}

bool cpu_kernels_avx512bf16(cpu_kernels *k) {
    if (!cpu_kernels_avx512(k)) return false;
    k->name = "avx512bf16";
    k->pack_k_bf16 = pack_k_bf16;
    k->qk_bf16 = qk_bf16;
    k->pack_v_bf16 = pack_v_bf16;
    k->pv_bf16 = pv_bf16;
    return true;
}
