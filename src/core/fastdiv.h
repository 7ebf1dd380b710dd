// Division by a divisor fixed for a kernel launch, as a multiply-high and a shift (Granlund and
// Montgomery): the GPU kernels decode work-item ids and packed rows with it, where a 32-bit
// division is a ~20-instruction sequence. Header-only C, shared by the host (which builds the
// constants once a launch, and whose unit tests check the quotient) and the CUDA kernels (which
// call the same function; on the device the product's high word is __umulhi).
#ifndef FA3C_FASTDIV_H
#define FA3C_FASTDIV_H

#include <stdint.h>

#ifdef __CUDACC__
#define FA3C_FASTDIV_FN static inline __host__ __device__
#else
#define FA3C_FASTDIV_FN static inline
#endif

// n / d for 0 <= n < 2^31 and 1 <= d < 2^31: with l = ceil(log2 d) >= 1, m = ceil(2^(31 + l) / d)
// fits 32 bits and q = (n m) >> (32 + l - 1); d = 1 (l = 0, m would need 33 bits) is n itself.
// Example: d = 6, l = 3, m = ceil(2^34 / 6) = 2863311531; n = 100: (100 m) >> 34 = 16.
typedef struct fa3c_fastdiv {
    uint32_t d, mul, shift;
} fa3c_fastdiv;

static inline fa3c_fastdiv fa3c_fastdiv_of(uint32_t d) {
    fa3c_fastdiv f = {d, 0, 0};
    if (d > 1) {
        uint32_t l = 0;
        while (((uint64_t)1 << l) < d) l++;
        f.mul = (uint32_t)((((uint64_t)1 << (31 + l)) + d - 1) / d);
        f.shift = l - 1;
    }
    return f;
}

// n / f.d (0 <= n < 2^31): the high word of n * mul, shifted.
FA3C_FASTDIV_FN uint32_t fa3c_fastdiv_quo(fa3c_fastdiv f, uint32_t n) {
#ifdef __CUDA_ARCH__
    return f.d == 1 ? n : __umulhi(n, f.mul) >> f.shift;
#else
    return f.d == 1 ? n : (uint32_t)(((uint64_t)n * f.mul) >> 32) >> f.shift;
#endif
}

#endif
