/*
 * cpu backend: the SIMD kernels of one instruction-set level, as a table chosen at context
 * creation. Shape legend as in include/fa3c.h (b, s_q, s_k, s_new, h, h_k, d, dv, S); in this
 * file also
 *   R    packed query rows of a tile (q rows x the h / h_k q heads of one kv head)
 *   n    keys of a kv tile (<= CPU_NB);  n16 = n rounded up to 16
 *   dq   query/key length of a score: d, or d + dv with qv (the key side then is [k_j, v_j])
 *   dvp  dv rounded up to 16 (the row stride of V tiles and accumulators)
 *
 * Tile layouts (all fp32 unless said otherwise, 64-byte aligned):
 *   Kt   (dq, CPU_NB)        keys transposed: Kt[c][j] = key j, element c
 *   Kp   (dq / 2, CPU_NB)    uint32 pairs of bf16: Kp[c2][j] = (key j elem 2c2, elem 2c2+1), low half first
 *   Vt   (n, dvp)            values, zero beyond dv
 *   Vp   (n16 / 2, dvp)      uint32 pairs of bf16: Vp[j2][c] = (key 2j2 elem c, key 2j2+1 elem c)
 *   S/P  (R, CPU_NB)         scores, then probabilities
 *   O    (R, dvp)            unnormalised output accumulators
 */
#ifndef FA3C_CPU_KERNELS_H
#define FA3C_CPU_KERNELS_H

#include "core/internal.h"

#include <stdbool.h>
#include <stdint.h>

/* Keys per kv tile: a multiple of every level's column block (and of 16). */
#define CPU_NB 64

typedef enum cpu_isa {
    CPU_ISA_SCALAR = 0,
    CPU_ISA_AVX2 = 1,       /* AVX2 + FMA + F16C */
    CPU_ISA_AVX512 = 2,     /* AVX-512 F/BW/VL */
    CPU_ISA_AVX512BF16 = 3, /* AVX-512 + the BF16 dot product for q.k of bf16 and e4m3 inputs */
    CPU_ISA_COUNT = 4,
} cpu_isa;

typedef struct cpu_kernels {
    const char *name;
    /* dst (n,) fp32 = src (n,) of dtype (f32, f16, bf16, e4m3); n a multiple of 8. */
    void (*row_to_f32)(const void *src, fa3c_dtype dtype, int64_t n, float *dst);
    /* dst (n,) of dtype (f16 or bf16) = src (n,) * mul, rounded to nearest even; n a multiple of 8. */
    void (*row_from_f32)(const float *src, float mul, int64_t n, fa3c_dtype dtype, void *dst);
    /* Kt[c0 + c][j] = rows[j][c] for j < n16, c < dk (rows of dtype; dk a multiple of 8). */
    void (*pack_k)(const void *const *rows, int64_t n16, int64_t dk, fa3c_dtype dtype, int64_t c0, float *kt);
    /* Vt (n, dvp) = rows[j][0..dv), zero-padded to dvp. */
    void (*pack_v)(const void *const *rows, int64_t n, int64_t dv, fa3c_dtype dtype, float *vt);
    /* S[r][j] = sum_c Q[r][c] Kt[c][j] for r < R, j < n16;  Q (R, dq) fp32. */
    void (*qk)(const float *q, int64_t R, int64_t dq, const float *kt, int64_t n16, float *s);
    /* BF16-dot variants (NULL below CPU_ISA_AVX512BF16): Kp[c2][j] from bf16 or e4m3 rows, and
     * S = Qp . Kp with Qp (R, dq / 2) bf16 pairs; products exact, sums in fp32. */
    void (*pack_k_bf16)(const void *const *rows, int64_t n16, int64_t dk, fa3c_dtype dtype, int64_t c0, uint32_t *kp);
    void (*qk_bf16)(const uint32_t *qp, int64_t R, int64_t dq, const uint32_t *kp, int64_t n16, float *s);
    /* p.v on the BF16 dot product (NULL below CPU_ISA_AVX512BF16), as FA3 does it: P rounded to
     * bf16, V of bf16 or e4m3 rows packed in key pairs Vp (n16 / 2, dvp) uint32 (rows[2 j2] in
     * the low halves); pp (R, CPU_NB / 2) is scratch for the rounded P. Otherwise as pv. */
    void (*pack_v_bf16)(const void *const *rows, int64_t n16, int64_t dv, fa3c_dtype dtype, uint32_t *vp);
    void (*pv_bf16)(const float *p, int64_t R, int64_t n, const uint32_t *vp, int64_t dvp, const float *alpha,
                    float *o, uint32_t *pp);
    /*
     * One online-softmax step over a tile, per row r < R of S (R, CPU_NB) holding raw q.k sums:
     *   x_j = mul * S[r][j], softcapped (cap > 0: cap * tanh(x / cap)); keys outside
     *   [jlo[r], jhi[r]) (always within [0, n)) are masked. With m' = max(m[r], max_j x_j):
     *   P[r][j] = exp(x_j - m') (0 when masked, for every j < n), alpha[r] = exp(m[r] - m'),
     *   l[r] = l[r] * alpha[r] + sum_j P[r][j], m[r] = m'. A row with m' = -inf is left
     *   unchanged with alpha 1 and P 0.
     */
    void (*softmax)(float *s, int64_t R, int64_t n, const int32_t *jlo, const int32_t *jhi, float mul, float cap,
                    float *m, float *l, float *alpha);
    /* O[r][:] = alpha[r] * O[r][:] + sum_{j < n} P[r][j] Vt[j][:] for r < R; O, Vt row stride dvp. */
    void (*pv)(const float *p, int64_t R, int64_t n, const float *vt, int64_t dvp, const float *alpha, float *o);
} cpu_kernels;

/* The table of each level (defined only where the build compiles that level: FA3C_CPU_HAVE_*). */
bool cpu_kernels_scalar(cpu_kernels *k);
bool cpu_kernels_avx2(cpu_kernels *k);
bool cpu_kernels_avx512(cpu_kernels *k);
bool cpu_kernels_avx512bf16(cpu_kernels *k);

#endif /* FA3C_CPU_KERNELS_H */
