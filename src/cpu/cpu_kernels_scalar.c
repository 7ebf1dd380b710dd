/*
 * cpu backend, portable C level: the kernels of cpu_kernels.h as plain loops. Also the
 * semantics the SIMD levels are tested against (tests/test_cpu_kernels.c).
 */
#include "cpu/cpu_kernels.h"

#include <math.h>
#include <string.h>

static float elem_f32(const void *src, fa3c_dtype dtype, int64_t i) {
    switch (dtype) {
    case FA3C_DTYPE_BF16: return fa3c_bf16_to_f32(((const uint16_t *)src)[i]);
    case FA3C_DTYPE_F16: return fa3c_f16_to_f32(((const uint16_t *)src)[i]);
    case FA3C_DTYPE_E4M3: return fa3c_e4m3_to_f32(((const uint8_t *)src)[i]);
    default: return ((const float *)src)[i];
    }
}

static void row_to_f32(const void *src, fa3c_dtype dtype, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i++) dst[i] = elem_f32(src, dtype, i);
}

static void row_from_f32(const float *src, float mul, int64_t n, fa3c_dtype dtype, void *dst) {
    for (int64_t i = 0; i < n; i++) {
        float x = src[i] * mul;
        if (dtype == FA3C_DTYPE_BF16) ((uint16_t *)dst)[i] = fa3c_f32_to_bf16(x);
        else ((uint16_t *)dst)[i] = fa3c_f32_to_f16(x);
    }
}

static void pack_k(const void *const *rows, int64_t n16, int64_t dk, fa3c_dtype dtype, int64_t c0, float *kt) {
    for (int64_t j = 0; j < n16; j++)
        for (int64_t c = 0; c < dk; c++) kt[(c0 + c) * CPU_NB + j] = elem_f32(rows[j], dtype, c);
}

static void pack_v(const void *const *rows, int64_t n, int64_t dv, fa3c_dtype dtype, float *vt) {
    int64_t dvp = (dv + 15) & ~(int64_t)15;
    for (int64_t j = 0; j < n; j++) {
        row_to_f32(rows[j], dtype, dv, vt + j * dvp);
        for (int64_t c = dv; c < dvp; c++) vt[j * dvp + c] = 0.0f;
    }
}

static void qk(const float *q, int64_t R, int64_t dq, const float *kt, int64_t n16, float *s) {
    for (int64_t r = 0; r < R; r++) {
        float *sr = s + r * CPU_NB;
        for (int64_t j = 0; j < n16; j++) sr[j] = 0.0f;
        for (int64_t c = 0; c < dq; c++) {
            float qc = q[r * dq + c];
            const float *kc = kt + c * CPU_NB;
            for (int64_t j = 0; j < n16; j++) sr[j] += qc * kc[j];
        }
    }
}

static void softmax(float *s, int64_t R, int64_t n, const int32_t *jlo, const int32_t *jhi, float mul, float cap,
                    float *m, float *l, float *alpha) {
    for (int64_t r = 0; r < R; r++) {
        float *x = s + r * CPU_NB;
        float mt = -INFINITY;
        for (int64_t j = jlo[r]; j < jhi[r]; j++) {
            float v = x[j] * mul;
            if (cap > 0.0f) v = cap * tanhf(v / cap);
            x[j] = v;
            mt = fmaxf(mt, v);
        }
        float mn = fmaxf(m[r], mt);
        if (mn == -INFINITY) {
            for (int64_t j = 0; j < n; j++) x[j] = 0.0f;
            alpha[r] = 1.0f;
            continue;
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            float e = j >= jlo[r] && j < jhi[r] ? expf(x[j] - mn) : 0.0f;
            x[j] = e;
            sum += e;
        }
        alpha[r] = expf(m[r] - mn);
        l[r] = l[r] * alpha[r] + sum;
        m[r] = mn;
    }
}

static void pv(const float *p, int64_t R, int64_t n, const float *vt, int64_t dvp, const float *alpha, float *o) {
    for (int64_t r = 0; r < R; r++) {
        float *orow = o + r * dvp;
        if (alpha[r] != 1.0f)
            for (int64_t c = 0; c < dvp; c++) orow[c] *= alpha[r];
        for (int64_t j = 0; j < n; j++) {
            float pj = p[r * CPU_NB + j];
            if (pj == 0.0f) continue;
            const float *vj = vt + j * dvp;
            for (int64_t c = 0; c < dvp; c++) orow[c] += pj * vj[c];
        }
    }
}

bool cpu_kernels_scalar(cpu_kernels *k) {
    memset(k, 0, sizeof *k);
    k->name = "scalar";
    k->row_to_f32 = row_to_f32;
    k->row_from_f32 = row_from_f32;
    k->pack_k = pack_k;
    k->pack_v = pack_v;
    k->qk = qk;
    k->softmax = softmax;
    k->pv = pv;
    return true;
}
