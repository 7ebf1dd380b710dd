/* Scalar type conversions. Every narrowing conversion rounds to nearest even, as torch's casts do,
 * so that "dtype-rounded" means the same thing here as in FA3's tests. */
#include "core/internal.h"

#include <math.h>
#include <string.h>

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

float fa3c_bf16_to_f32(uint16_t x) { return bits_f32((uint32_t)x << 16); }

uint16_t fa3c_f32_to_bf16(float x) {
    uint32_t u = f32_bits(x);
    if (isnan(x)) return (uint16_t)((u >> 16) | 0x40); /* keep it a quiet NaN */
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float fa3c_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000 | (man << 13));
    if (exp == 0) { /* zero or subnormal: man * 2^-24 */
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t fa3c_f32_to_f16(float x) {
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    float a = fabsf(x);
    if (isnan(x)) return sign | 0x7E00;
    if (a >= 65520.0f) return sign | 0x7C00; /* rounds to infinity */
    if (a < 6.103515625e-05f) {               /* subnormal range: quantum 2^-24 */
        float q = nearbyintf(a * 16777216.0f); /* default rounding mode is nearest-even */
        return sign | (uint16_t)q;
    }
    uint32_t au = f32_bits(a);
    uint32_t exp = (au >> 23) - 112, man = au & 0x7FFFFF;
    uint32_t r = (exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return sign | (uint16_t)r;
}

/* e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; 0x7F/0xFF are NaN; max 448. */
float fa3c_e4m3_to_f32(uint8_t x) {
    int sign = x & 0x80, exp = (x >> 3) & 0xF, man = x & 0x7;
    float v;
    if (exp == 0xF && man == 0x7) return NAN;
    if (exp == 0) v = ldexpf((float)man, -9);
    else v = ldexpf((float)(8 + man), exp - 10);
    return sign ? -v : v;
}

uint8_t fa3c_f32_to_e4m3(float x) {
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (isnan(x) || isinf(x)) return sign | 0x7F;
    if (a > 464.0f) return sign | 0x7F; /* rounds past 448 into the NaN code, as torch's cast does */
    if (a < ldexpf(1.0f, -6)) {          /* subnormal: quantum 2^-9 */
        return sign | (uint8_t)nearbyintf(a * 512.0f);
    }
    int e;
    frexpf(a, &e);                       /* a = f * 2^e, f in [0.5, 1) */
    int exp = e - 1;                     /* a in [2^exp, 2^(exp+1)) */
    float q = nearbyintf(ldexpf(a, 3 - exp)); /* 8..16 */
    if (q >= 16.0f) { q = 8.0f; exp++; }
    return sign | (uint8_t)(((exp + 7) << 3) | ((int)q - 8));
}

float fa3c_load(const void *base, fa3c_dtype dtype, int64_t i) {
    switch (dtype) {
    case FA3C_DTYPE_F32: return ((const float *)base)[i];
    case FA3C_DTYPE_F16: return fa3c_f16_to_f32(((const uint16_t *)base)[i]);
    case FA3C_DTYPE_BF16: return fa3c_bf16_to_f32(((const uint16_t *)base)[i]);
    case FA3C_DTYPE_E4M3: return fa3c_e4m3_to_f32(((const uint8_t *)base)[i]);
    case FA3C_DTYPE_I32: return (float)((const int32_t *)base)[i];
    case FA3C_DTYPE_NONE: break;
    }
    return NAN;
}

void fa3c_store(void *base, fa3c_dtype dtype, int64_t i, float x) {
    switch (dtype) {
    case FA3C_DTYPE_F32: ((float *)base)[i] = x; break;
    case FA3C_DTYPE_F16: ((uint16_t *)base)[i] = fa3c_f32_to_f16(x); break;
    case FA3C_DTYPE_BF16: ((uint16_t *)base)[i] = fa3c_f32_to_bf16(x); break;
    case FA3C_DTYPE_E4M3: ((uint8_t *)base)[i] = fa3c_f32_to_e4m3(x); break;
    case FA3C_DTYPE_I32: ((int32_t *)base)[i] = (int32_t)x; break;
    case FA3C_DTYPE_NONE: break;
    }
}

float fa3c_round(fa3c_dtype dtype, float x) {
    switch (dtype) {
    case FA3C_DTYPE_F16: return fa3c_f16_to_f32(fa3c_f32_to_f16(x));
    case FA3C_DTYPE_BF16: return fa3c_bf16_to_f32(fa3c_f32_to_bf16(x));
    case FA3C_DTYPE_E4M3: return fa3c_e4m3_to_f32(fa3c_f32_to_e4m3(x));
    default: return x;
    }
}

const char *fa3c_dtype_name(fa3c_dtype dtype) {
    switch (dtype) {
    case FA3C_DTYPE_NONE: return "none";
    case FA3C_DTYPE_F32: return "f32";
    case FA3C_DTYPE_F16: return "f16";
    case FA3C_DTYPE_BF16: return "bf16";
    case FA3C_DTYPE_E4M3: return "e4m3";
    case FA3C_DTYPE_I32: return "i32";
    }
    return "invalid";
}

size_t fa3c_dtype_size(fa3c_dtype dtype) {
    switch (dtype) {
    case FA3C_DTYPE_F32: case FA3C_DTYPE_I32: return 4;
    case FA3C_DTYPE_F16: case FA3C_DTYPE_BF16: return 2;
    case FA3C_DTYPE_E4M3: return 1;
    case FA3C_DTYPE_NONE: break;
    }
    return 0;
}
