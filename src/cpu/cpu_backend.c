/*
 * cpu: the fast CPU backend's vtable, its per-context state (the kernel table of the chosen
 * instruction-set level and the workspace) and the forward's order of phases.
 *
 * Level: the best one the CPU supports (__builtin_cpu_supports), or FA3C_CPU_ISA =
 * avx512bf16 | avx512 | avx2 | scalar; forcing a level the CPU lacks fails at context creation.
 */
#include "cpu/cpu.h"

#include <stdlib.h>
#include <string.h>

const uint8_t cpu_zero_row[4096] __attribute__((aligned(64)));

static const char *const isa_names[CPU_ISA_COUNT] = {"scalar", "avx2", "avx512", "avx512bf16"};

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
/* F16C from CPUID leaf 1 (ECX bit 29): clang before 15 knows no "f16c" for __builtin_cpu_supports. */
static bool has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

static bool isa_supported(cpu_isa isa) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    switch (isa) {
    case CPU_ISA_AVX512BF16:
        return __builtin_cpu_supports("avx512bf16") && isa_supported(CPU_ISA_AVX512);
    case CPU_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
    case CPU_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    default: return true;
    }
#else
    return isa == CPU_ISA_SCALAR;
#endif
}

/* Fills k with the kernels of isa; false when that level is not compiled in. */
static bool isa_kernels(cpu_isa isa, cpu_kernels *k) {
    switch (isa) {
#ifdef FA3C_CPU_HAVE_AVX512BF16
    case CPU_ISA_AVX512BF16: return cpu_kernels_avx512bf16(k);
#endif
#ifdef FA3C_CPU_HAVE_AVX512
    case CPU_ISA_AVX512: return cpu_kernels_avx512(k);
#endif
#ifdef FA3C_CPU_HAVE_AVX2
    case CPU_ISA_AVX2: return cpu_kernels_avx2(k);
#endif
    case CPU_ISA_SCALAR: return cpu_kernels_scalar(k);
    default: return false;
    }
}

static bool cpu_available(void) { return true; }

static fa3c_status cpu_context_init(fa3c_context *ctx, const fa3c_context_options *opt) {
    (void)opt;
    cpu_state *st = calloc(1, sizeof *st);
    if (!st) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cpu context: out of memory");
    const char *want = getenv("FA3C_CPU_ISA");
    if (want && *want) {
        int found = -1;
        for (int i = 0; i < CPU_ISA_COUNT; i++)
            if (!strcmp(want, isa_names[i])) found = i;
        if (found < 0) {
            free(st);
            return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                             "FA3C_CPU_ISA: expected avx512bf16, avx512, avx2 or scalar, got '%s'", want);
        }
        if (!isa_supported((cpu_isa)found) || !isa_kernels((cpu_isa)found, &st->k)) {
            free(st);
            return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "FA3C_CPU_ISA: '%s' is not %s", want,
                             isa_supported((cpu_isa)found) ? "compiled into this build" : "supported by this CPU");
        }
        st->isa = (cpu_isa)found;
    } else {
        int isa = CPU_ISA_COUNT - 1;
        while (isa > 0 && !(isa_supported((cpu_isa)isa) && isa_kernels((cpu_isa)isa, &st->k))) isa--;
        if (isa == 0) isa_kernels(CPU_ISA_SCALAR, &st->k);
        st->isa = (cpu_isa)isa;
    }
    ctx->backend_state = st;
    return FA3C_OK;
}

static void cpu_context_free(fa3c_context *ctx) {
    cpu_state *st = cpu_state_of(ctx);
    if (!st) return;
    free(st->ws);
    free(st->sl);
    free(st);
    ctx->backend_state = NULL;
}

void *cpu_workspace(fa3c_context *ctx, size_t bytes) {
    cpu_state *st = cpu_state_of(ctx);
    if (bytes == 0) bytes = 1; /* a pointer even for an empty job: NULL means out of memory */
    if (bytes <= st->ws_bytes) return st->ws;
    size_t want = (bytes + bytes / 4 + 4095) & ~(size_t)4095; /* some headroom against regrowth */
    void *ws = aligned_alloc(64, want);
    if (!ws) {
        fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cpu: cannot grow the workspace to %zu bytes", want);
        return NULL;
    }
    /* zeroed once so that lanes a kernel reads but never uses hold finite values */
    memset(ws, 0, want);
    free(st->ws);
    st->ws = ws;
    st->ws_bytes = want;
    return ws;
}

/* Every valid problem runs, on the context's level. */
static fa3c_status cpu_select(const fa3c_context *ctx, const fa3c_problem *p, fa3c_kernel_choice *choice) {
    static const char *const names[CPU_ISA_COUNT] = {"cpu-scalar", "cpu-avx2", "cpu-avx512", "cpu-avx512bf16"};
    const cpu_state *st = cpu_state_of(ctx);
    /* fp16 has no exact bf16 form: it runs the fp32 kernels of the AVX-512 level */
    bool bf16_dot = st->k.qk_bf16 && (p->in_dtype == FA3C_DTYPE_BF16 || p->in_dtype == FA3C_DTYPE_E4M3);
    cpu_isa isa = st->isa == CPU_ISA_AVX512BF16 && !bf16_dot ? CPU_ISA_AVX512 : st->isa;
    choice->kernel = (int32_t)isa;
    choice->name = names[isa];
    return FA3C_OK;
}

/*
 * The forward (shapes in include/fa3c.h): append k_new / v_new into the cache, then attend (and combine splits).
 * Core has handled FA3's empty cases (no query rows, no heads, no keys).
 */
static fa3c_status cpu_fwd(fa3c_context *ctx, const fa3c_problem *p, const fa3c_sched_plan *plan,
                           const fa3c_kernel_choice *choice) {
    (void)choice;
    cpu_state *st = cpu_state_of(ctx);
    if (p->b > st->sl_cap) {
        fa3c_seqlens *grown = realloc(st->sl, (size_t)p->b * sizeof *grown);
        if (!grown) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cpu fwd: out of memory");
        st->sl = grown;
        st->sl_cap = p->b;
    }
    fa3c_seqlens *sl = st->sl; /* (b,) */
    for (int64_t bi = 0; bi < p->b; bi++) fa3c_seqlens_get(p, bi, &sl[bi]);
    if (p->append) cpu_append(ctx, p, sl);
    return cpu_attention(ctx, p, plan, sl);
}

static fa3c_status cpu_synchronize(fa3c_context *ctx) {
    (void)ctx;
    return FA3C_OK;
}

const fa3c_backend fa3c_backend_cpu = {
    .name = "cpu",
    .description = "multithreaded SIMD CPU (AVX-512 / AVX2 / portable C, chosen at run time)",
    .device_type = FA3C_DEVICE_CPU,
    .available = cpu_available,
    .context_init = cpu_context_init,
    .context_free = cpu_context_free,
    .select = cpu_select,
    .fwd = cpu_fwd,
    .combine = cpu_combine,
    .merge_state = cpu_merge_state,
    .synchronize = cpu_synchronize,
};
