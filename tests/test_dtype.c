/* Scalar conversions: exhaustive round trips and round-to-nearest-even at the midpoints. */
#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static int passed, failed;

static void check(int ok, const char *name) {
    if (ok) passed++;
    else {
        failed++;
        printf("FAIL %s\n", name);
    }
}

/* Every finite 16-bit pattern survives to_f32 -> from_f32 unchanged. */
static void round_trips(void) {
    int bad_bf16 = 0, bad_f16 = 0, bad_e4m3 = 0;
    for (uint32_t u = 0; u < 65536; u++) {
        float b = fa3c_bf16_to_f32((uint16_t)u), h = fa3c_f16_to_f32((uint16_t)u);
        if (!isnan(b) && fa3c_f32_to_bf16(b) != u) bad_bf16++;
        if (!isnan(h) && fa3c_f32_to_f16(h) != u) bad_f16++;
    }
    for (uint32_t u = 0; u < 256; u++) {
        float e = fa3c_e4m3_to_f32((uint8_t)u);
        if (!isnan(e) && fa3c_f32_to_e4m3(e) != u) bad_e4m3++;
    }
    check(bad_bf16 == 0, "bf16 round trip");
    check(bad_f16 == 0, "f16 round trip");
    check(bad_e4m3 == 0, "e4m3 round trip");
}

/* x halfway between representable a and b must go to the one with an even last bit. */
static void midpoints(void) {
    check(fa3c_f32_to_bf16(1.0f + 1.0f / 256) == 0x3F80, "bf16 tie to even (down)");
    check(fa3c_f32_to_bf16(1.0f + 3.0f / 256) == 0x3F82, "bf16 tie to even (up)");
    check(fa3c_f32_to_f16(1.0f + 1.0f / 2048) == 0x3C00, "f16 tie to even (down)");
    check(fa3c_f32_to_f16(1.0f + 3.0f / 2048) == 0x3C02, "f16 tie to even (up)");
    check(fa3c_f32_to_f16(65504.0f) == 0x7BFF && fa3c_f32_to_f16(65520.0f) == 0x7C00, "f16 max and overflow");
    check(fa3c_f32_to_f16(ldexpf(1.0f, -25)) == 0 && fa3c_f32_to_f16(ldexpf(3.0f, -25)) == 2, "f16 subnormal ties");
    check(fa3c_e4m3_to_f32(0x7E) == 448.0f && isnan(fa3c_e4m3_to_f32(0x7F)), "e4m3 max and NaN codes");
    check(fa3c_f32_to_e4m3(464.0f) == 0x7E && fa3c_f32_to_e4m3(465.0f) == 0x7F, "e4m3 saturation edge (torch)");
    check(fa3c_f32_to_e4m3(-1.0625f) == 0xB8 && fa3c_f32_to_e4m3(1.1875f) == 0x3A, "e4m3 ties to even");
    check(fa3c_f32_to_e4m3(ldexpf(1.0f, -10)) == 0 && fa3c_f32_to_e4m3(ldexpf(3.0f, -10)) == 2, "e4m3 subnormal ties");
    check(fa3c_round(FA3C_DTYPE_BF16, 1.00390625f) == 1.0f && fa3c_round(FA3C_DTYPE_F32, 0.1f) == 0.1f, "fa3c_round");
}

static void load_store(void) {
    uint16_t h[3];
    fa3c_store(h, FA3C_DTYPE_BF16, 2, -2.5f);
    check(fa3c_load(h, FA3C_DTYPE_BF16, 2) == -2.5f, "bf16 store/load");
    fa3c_store(h, FA3C_DTYPE_F16, 1, 0.333333f);
    check(fabsf(fa3c_load(h, FA3C_DTYPE_F16, 1) - 0.333333f) < 1e-3f, "f16 store/load");
    check(fa3c_dtype_size(FA3C_DTYPE_E4M3) == 1 && !strcmp(fa3c_dtype_name(FA3C_DTYPE_BF16), "bf16"), "dtype facts");
}

int main(void) {
    round_trips();
    midpoints();
    load_store();
    printf("test_dtype: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
