/*
 * cpu backend, AVX-512 level: the inline pieces shared by cpu_kernels_avx512.c and
 * cpu_kernels_avx512bf16.c (both compiled with -mavx512f -mavx512bw -mavx512vl): dtype loads
 * and stores in registers, exp / tanh, and the in-register transposes that pack key tiles (8 x 8
 * on 256-bit vectors: on a 256-bit datapath such as Zen 4's they beat 16 x 16 on 512-bit ones).
 */
#ifndef FA3C_CPU_AVX512_H
#define FA3C_CPU_AVX512_H

#include "cpu/cpu_kernels.h"

#include "cpu/cpu_avx.h"

#include <immintrin.h>

#define AVX512_INLINE static inline __attribute__((always_inline))

/* Lanes [0, n) of a 16-lane mask (n may exceed 16). */
AVX512_INLINE __mmask16 avx512_lanes(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

/* e4m3 bytes widened to 32-bit lanes -> fp32: the magnitude bits placed in the fp32 exponent /
 * mantissa fields give value * 2^-120 for normals and subnormals alike; 0x7F is NaN. */
AVX512_INLINE __m512 avx512_e4m3_to_f32(__m512i x) {
    __m512i mag = _mm512_and_si512(x, _mm512_set1_epi32(0x7F));
    __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(mag, 20)), _mm512_set1_ps(0x1p120f));
    v = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v),
                                            _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x80)), 24)));
    __mmask16 nan = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7F));
    return _mm512_mask_blend_ps(nan, v, _mm512_set1_ps(__builtin_nanf("")));
}

/* Elements [i, i + 16) of src (masked lanes read nothing and give 0) as fp32. */
AVX512_INLINE __m512 avx512_load(const void *src, fa3c_dtype dtype, int64_t i, __mmask16 mk) {
    switch (dtype) {
    case FA3C_DTYPE_BF16: {
        __m256i h = _mm256_maskz_loadu_epi16(mk, (const uint16_t *)src + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case FA3C_DTYPE_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, (const uint16_t *)src + i));
    case FA3C_DTYPE_E4M3:
        return avx512_e4m3_to_f32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mk, (const uint8_t *)src + i)));
    default: return _mm512_maskz_loadu_ps(mk, (const float *)src + i);
    }
}

/* Elements [i, i + 8) of src as fp32. */
AVX512_INLINE __m256 avx512_load8(const void *src, fa3c_dtype dtype, int64_t i) {
    switch (dtype) {
    case FA3C_DTYPE_BF16: {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)src + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case FA3C_DTYPE_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + i)));
    case FA3C_DTYPE_E4M3:
        return _mm512_castps512_ps256(
            avx512_e4m3_to_f32(_mm512_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((const uint8_t *)src + i)))));
    default: return _mm256_loadu_ps((const float *)src + i);
    }
}

/* x rounded to bf16 (nearest even, NaN kept quiet) in the low halves of 32-bit lanes. */
AVX512_INLINE __m512i avx512_bf16_bits(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), r, q);
}

/* 2^t: round(t) applied by scalef (which also gives 0 far below and inf far above) times a
 * degree-6 polynomial of the rest in [-0.5, 0.5] (fitted to the relative error at Chebyshev nodes:
 * under 1e-7 relative error evaluated in fp32, about fp32's own rounding). 2^-inf = 0. */
AVX512_INLINE __m512 avx512_exp2(__m512 t) {
    t = _mm512_max_ps(_mm512_set1_ps(-160.0f), t); /* operand order keeps NaN */
    t = _mm512_min_ps(_mm512_set1_ps(160.0f), t);
    __m512 k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, k);
    __m512 p = _mm512_set1_ps(1.5337577497120947e-04f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399859890341759e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6185198053717613e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503290146589279e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022646248340607e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718246459961e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

/* exp(x) = 2^(x log2(e)). */
AVX512_INLINE __m512 avx512_exp(__m512 x) {
    return avx512_exp2(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)));
}

/* tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|). */
AVX512_INLINE __m512 avx512_tanh(__m512 x) {
    __m512 sign = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u)));
    __m512 a = _mm512_castsi512_ps(_mm512_andnot_si512(_mm512_castps_si512(sign), _mm512_castps_si512(x)));
    __m512 e = avx512_exp(_mm512_mul_ps(a, _mm512_set1_ps(-2.0f)));
    __m512 t = _mm512_div_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), e), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), _mm512_castps_si512(sign)));
}

#endif /* FA3C_CPU_AVX512_H */
