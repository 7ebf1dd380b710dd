/*
 * 256-bit (AVX) helpers shared by the AVX2 and AVX-512 kernel files; include only from files
 * compiled for AVX2 or higher.
 */
#ifndef FA3C_CPU_AVX_H
#define FA3C_CPU_AVX_H

#include <immintrin.h>

/* 8 x 8 32-bit transpose on 256-bit vectors (faster than 16 x 16 on 512-bit where the datapath
 * is 256 bits wide, as on Zen 4): r[c] := column c. */
static inline __attribute__((always_inline)) void cpu_transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int g = 0; g < 2; g++) {
        u[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
    for (int k = 0; k < 4; k++) {
        r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
        r[k + 4] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
}

#endif /* FA3C_CPU_AVX_H */
