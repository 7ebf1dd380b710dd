// PTX wrappers for the Hopper (sm_90a) attention kernel: mbarriers, cp.async completion on an
// mbarrier, named barriers, register reallocation, and wgmma with its shared-memory descriptors.
// Compiled for every target, but only an sm_90a pass may instantiate them (the kernel guards its
// body with FA3C_SM90A).
#ifndef FA3C_CUDA_SM90_CUH
#define FA3C_CUDA_SM90_CUH

#include "cuda/cuda_internal.cuh"

#ifdef FA3C_SM90_WATCHDOG
#include <cstdio>
#endif

// True in the device pass for sm_90a (wgmma and setmaxnreg exist only there).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FA3C_SM90A 1
#else
#define FA3C_SM90A 0
#endif

// ---------------------------------------------------------------------------------------------
// mbarrier (shared::cta)

__device__ __forceinline__ void sm90_mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void sm90_mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Counts as this thread's arrival once all of its earlier cp.async copies have landed.
__device__ __forceinline__ void sm90_mbar_arrive_cp_async(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Waits for the completion of the phase with parity `parity` (0 or 1). A fresh barrier counts the
// phase before its first as complete, so a producer's first wait on an "empty" barrier (parity 1)
// passes at once.
__device__ __forceinline__ void sm90_mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done;
#ifdef FA3C_SM90_WATCHDOG // debugging builds: a wait that never ends names itself and traps
    long long spins = 0;
#endif
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
#ifdef FA3C_SM90_WATCHDOG
        if (!done && ++spins == (1ll << 24)) {
            printf("fa3c watchdog: block %d thread %d waits on mbarrier 0x%x parity %u\n", (int)blockIdx.x,
                   (int)threadIdx.x, bar, parity);
            __trap();
        }
#endif
    } while (!done);
}

// Arrives and adds `bytes` to the transaction count the current phase waits for (bulk copies).
__device__ __forceinline__ void sm90_mbar_arrive_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

// Bulk tensor copy of the box at coordinates (c0 .. c3) of `map` (a __grid_constant__ parameter)
// into shared memory at dst, completing `bar`'s transaction bytes. Out-of-bounds elements are zeros.
__device__ __forceinline__ void sm90_tma_load_4d(uint32_t dst, const CUtensorMap *map, int c0, int c1, int c2, int c3,
                                                 uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
                 "%5}], [%6];\n" ::"r"(dst),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
                 : "memory");
}

// Barrier `id` (1..15; 0 is __syncthreads) over `threads` threads (a multiple of 32).
__device__ __forceinline__ void sm90_named_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Counts this warp's threads towards barrier `id` without waiting for it.
__device__ __forceinline__ void sm90_named_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Four 8 x 8 matrices of 16-bit elements (rows of 16 bytes at the addresses of lanes 8i .. 8i + 7
// for matrix i): loaded transposed -- lane t gets elements (2 (t % 4), t / 4) and (2 (t % 4) + 1,
// t / 4) of each in r[i] -- or stored, lane t giving elements (t / 4, 2 (t % 4) .. + 1).
__device__ __forceinline__ void sm90_ldsm_x4_t(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void sm90_stsm_x4(uint32_t addr, const uint32_t (&r)[4]) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r[0]), "r"(r[1]),
                 "r"(r[2]), "r"(r[3])
                 : "memory");
}

// ---------------------------------------------------------------------------------------------
// Register reallocation between warpgroups (the kernel needs a register cap at entry:
// __launch_bounds__(threads, 1)).

template <int N> __device__ __forceinline__ void sm90_regs_dec() {
#if FA3C_SM90A
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N> __device__ __forceinline__ void sm90_regs_inc() {
#if FA3C_SM90A
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// ---------------------------------------------------------------------------------------------
// wgmma. Shared-memory operands are tiles of rows of 128 bytes (64 elements of 16 bits) in the
// 128-byte swizzle: 16-byte chunk c of row r sits at chunk c ^ (r % 8); 8-row atoms of 1024 bytes,
// 1024-byte aligned. Wider rows are stored as column blocks of 64 elements, one after the other.
//
// Descriptor: start address, leading byte offset (LBO), stride byte offset (SBO), all >> 4;
// bits 62-63 = 1: the 128-byte swizzle.
//   K-major operand (Q, K: rows of the contraction dim): SBO = 1024 (the next 8 rows); LBO unused.
//     A k16 step moves the start 32 bytes within a column block; k >= 64 moves to the next block.
//   MN-major operand (V as P.V's B: keys are rows, dv is contiguous): LBO = the distance between
//     column blocks (64 dv each), SBO = 1024 (the next 8 keys); a k16 step moves 16 rows (2048 B).
__device__ __forceinline__ uint64_t sm90_desc(uint32_t smem_addr, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((smem_addr & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32) |
           (1ull << 62);
}

// The same for a K-major operand in the 64-byte swizzle (rows of 64 bytes: 16-byte chunk c of row
// r at chunk c ^ ((r >> 1) & 3); 8-row atoms of 512 bytes, 512-byte aligned): SBO = 512, bits
// 62-63 = 2.
__device__ __forceinline__ uint64_t sm90_desc_sw64(uint32_t smem_addr, uint32_t sbo) {
    return (uint64_t)((smem_addr & 0x3FFFF) >> 4) | (1ull << 16) | ((uint64_t)(sbo >> 4) << 32) | (2ull << 62);
}

__device__ __forceinline__ void sm90_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void sm90_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void sm90_wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Orders this thread's earlier shared-memory stores before later reads of the async proxy (a
// wgmma operand written by threads).
__device__ __forceinline__ void sm90_fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving reads or writes of accumulator registers across an asynchronous
// wgmma (it sees the registers written when the instruction issues, not when it completes).
template <int N> __device__ __forceinline__ void sm90_fence_regs(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}

// Accumulator register lists: SM90_R<n> is the operand string "{%0, ..., %<n-1>}" and SM90_D<n>
// the matching "+f" operands d[0 .. n-1], built from runs of 8 (SM90_C<i>: %8i .. %8i+7).
#define SM90_C0 "%0, %1, %2, %3, %4, %5, %6, %7"
#define SM90_C1 "%8, %9, %10, %11, %12, %13, %14, %15"
#define SM90_C2 "%16, %17, %18, %19, %20, %21, %22, %23"
#define SM90_C3 "%24, %25, %26, %27, %28, %29, %30, %31"
#define SM90_C4 "%32, %33, %34, %35, %36, %37, %38, %39"
#define SM90_C5 "%40, %41, %42, %43, %44, %45, %46, %47"
#define SM90_C6 "%48, %49, %50, %51, %52, %53, %54, %55"
#define SM90_C7 "%56, %57, %58, %59, %60, %61, %62, %63"
#define SM90_C8 "%64, %65, %66, %67, %68, %69, %70, %71"
#define SM90_C9 "%72, %73, %74, %75, %76, %77, %78, %79"
#define SM90_C10 "%80, %81, %82, %83, %84, %85, %86, %87"
#define SM90_C11 "%88, %89, %90, %91, %92, %93, %94, %95"
#define SM90_C12 "%96, %97, %98, %99, %100, %101, %102, %103"
#define SM90_C13 "%104, %105, %106, %107, %108, %109, %110, %111"
#define SM90_C14 "%112, %113, %114, %115, %116, %117, %118, %119"
#define SM90_C15 "%120, %121, %122, %123, %124, %125, %126, %127"
#define SM90_C0_3 SM90_C0 ", " SM90_C1 ", " SM90_C2 ", " SM90_C3
#define SM90_C4_7 SM90_C4 ", " SM90_C5 ", " SM90_C6 ", " SM90_C7
#define SM90_C8_11 SM90_C8 ", " SM90_C9 ", " SM90_C10 ", " SM90_C11
#define SM90_C12_15 SM90_C12 ", " SM90_C13 ", " SM90_C14 ", " SM90_C15
#define SM90_R32 "{" SM90_C0_3 "}"
#define SM90_R40 "{" SM90_C0_3 ", " SM90_C4 "}"
#define SM90_R64 "{" SM90_C0_3 ", " SM90_C4_7 "}"
#define SM90_R96 "{" SM90_C0_3 ", " SM90_C4_7 ", " SM90_C8_11 "}"
#define SM90_R88 "{" SM90_C0_3 ", " SM90_C4_7 ", " SM90_C8 ", " SM90_C9 ", " SM90_C10 "}"
#define SM90_R128 "{" SM90_C0_3 ", " SM90_C4_7 ", " SM90_C8_11 ", " SM90_C12_15 "}"
#define SM90_D8(i)                                                                                                    \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]),       \
        "+f"(d[i + 7])
#define SM90_D32 SM90_D8(0), SM90_D8(8), SM90_D8(16), SM90_D8(24)
#define SM90_D40 SM90_D32, SM90_D8(32)
#define SM90_D64 SM90_D32, SM90_D8(32), SM90_D8(40), SM90_D8(48), SM90_D8(56)
#define SM90_D96 SM90_D64, SM90_D8(64), SM90_D8(72), SM90_D8(80), SM90_D8(88)
#define SM90_D88 SM90_D64, SM90_D8(64), SM90_D8(72), SM90_D8(80)
#define SM90_D128                                                                                                     \
    SM90_D64, SM90_D8(64), SM90_D8(72), SM90_D8(80), SM90_D8(88), SM90_D8(96), SM90_D8(104), SM90_D8(112),            \
        SM90_D8(120)

// d (64 x N f32; thread layout: per 8 columns j, d[4j..4j+3] = rows r, r, r+8, r+8 and columns
// c, c+1, c, c+1 with r = 16 warp + lane / 4, c = 8j + 2 (lane % 4)) (+)= A (64 x 16, shared,
// K-major) * B (16 x N, shared; K-major -- N rows of the contraction dim -- or, TB = 1,
// MN-major). accumulate 0: d = A B. R, D: the register list and operands of N / 2 accumulators;
// A0..A2: the indices of the inputs.
#define SM90_SS(N, T, TB, R, D, A0, A1, A2)                                                                           \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" A2 ", 0;\n"                                                   \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." T "." T " " R ", %" A0 ", %" A1                  \
                 ", p, 1, 1, 0, " TB ";\n}\n"                                                                        \
                 : D                                                                                                  \
                 : "l"(da), "l"(db), "r"(accumulate))
// The four (dtype, B major) forms of SM90_SS; K: the accumulator count N / 2 (pasted into the
// register-list names, so that they are split into operands only inside SM90_SS).
#define SM90_SS_TYPES(N, K, A0, A1, A2)                                                                               \
    if constexpr (BF && TB) SM90_SS(N, "bf16", "1", SM90_R##K, SM90_D##K, A0, A1, A2);                              \
    else if constexpr (BF) SM90_SS(N, "bf16", "0", SM90_R##K, SM90_D##K, A0, A1, A2);                               \
    else if constexpr (TB) SM90_SS(N, "f16", "1", SM90_R##K, SM90_D##K, A0, A1, A2);                                \
    else SM90_SS(N, "f16", "0", SM90_R##K, SM90_D##K, A0, A1, A2);
template <int BF, int N, int TB = 0>
__device__ __forceinline__ void sm90_wgmma_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int accumulate) {
    static_assert(N == 64 || N == 80 || N == 128 || N == 176 || N == 256, "widths of the kernels' GEMMs");
#if FA3C_SM90A
    if constexpr (N == 256) {
        SM90_SS_TYPES(256, 128, "128", "129", "130")
    } else if constexpr (N == 176) {
        SM90_SS_TYPES(176, 88, "88", "89", "90")
    } else if constexpr (N == 128) {
        SM90_SS_TYPES(128, 64, "64", "65", "66")
    } else if constexpr (N == 80) {
        SM90_SS_TYPES(80, 40, "40", "41", "42")
    } else {
        SM90_SS_TYPES(64, 32, "32", "33", "34")
    }
#endif
}

// d (64 x N f32) += A (64 x 16 from registers: the m16n8k16 A fragment of each warp's 16 rows) *
// B (16 x N, shared, MN-major). A0: the index of a[0] (then a[1..3], the descriptor, the flag).
#define SM90_RS(N, T, R, D, A0, A1, A2, A3, B, F)                                                                    \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" F ", 0;\n"                                                    \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." T "." T " " R ", {%" A0 ", %" A1 ", %" A2      \
                 ", %" A3 "}, %" B ", p, 1, 1, 1;\n}\n"                                                               \
                 : D                                                                                                  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate))
template <int BF, int N>
__device__ __forceinline__ void sm90_wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db, int accumulate) {
    static_assert(N == 64 || N == 128 || N == 256, "P.V widths of the kernel");
#if FA3C_SM90A
    if constexpr (N == 256) {
        if constexpr (BF) SM90_RS(256, "bf16", SM90_R128, SM90_D128, "128", "129", "130", "131", "132", "133");
        else SM90_RS(256, "f16", SM90_R128, SM90_D128, "128", "129", "130", "131", "132", "133");
    } else if constexpr (N == 128) {
        if constexpr (BF) SM90_RS(128, "bf16", SM90_R64, SM90_D64, "64", "65", "66", "67", "68", "69");
        else SM90_RS(128, "f16", SM90_R64, SM90_D64, "64", "65", "66", "67", "68", "69");
    } else {
        if constexpr (BF) SM90_RS(64, "bf16", SM90_R32, SM90_D32, "32", "33", "34", "35", "36", "37");
        else SM90_RS(64, "f16", SM90_R32, SM90_D32, "32", "33", "34", "35", "36", "37");
    }
#endif
}

// e4m3 x e4m3 (k32): 8-bit operands are K-major only (no transpose immediates). d (64 x N f32)
// (+)= A (64 x 32: shared, or the k32 register fragment) * B (32 x N, shared, K-major).
#define SM90_SS_E4M3(N, R, D, A0, A1, A2)                                                                             \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" A2 ", 0;\n"                                                     \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32.e4m3.e4m3 " R ", %" A0 ", %" A1 ", p, 1, 1;\n}\n"  \
                 : D                                                                                                  \
                 : "l"(da), "l"(db), "r"(accumulate))
template <int N>
__device__ __forceinline__ void sm90_wgmma_ss_e4m3(float (&d)[N / 2], uint64_t da, uint64_t db, int accumulate) {
    static_assert(N == 64 || N == 128 || N == 192 || N == 256, "the e4m3 kernel's S widths");
#if FA3C_SM90A
    if constexpr (N == 256) SM90_SS_E4M3(256, SM90_R128, SM90_D128, "128", "129", "130");
    else if constexpr (N == 192) SM90_SS_E4M3(192, SM90_R96, SM90_D96, "96", "97", "98");
    else if constexpr (N == 128) SM90_SS_E4M3(128, SM90_R64, SM90_D64, "64", "65", "66");
    else SM90_SS_E4M3(64, SM90_R32, SM90_D32, "32", "33", "34");
#endif
}
#define SM90_RS_E4M3(N, R, D, A0, A1, A2, A3, B, F)                                                                   \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" F ", 0;\n"                                                      \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32.e4m3.e4m3 " R ", {%" A0 ", %" A1 ", %" A2 ", %" A3  \
                 "}, %" B ", p, 1, 1;\n}\n"                                                                           \
                 : D                                                                                                  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate))
template <int N>
__device__ __forceinline__ void sm90_wgmma_rs_e4m3(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db,
                                                   int accumulate) {
    static_assert(N == 128 || N == 256, "the e4m3 kernel's P.V widths");
#if FA3C_SM90A
    if constexpr (N == 256) SM90_RS_E4M3(256, SM90_R128, SM90_D128, "128", "129", "130", "131", "132", "133");
    else SM90_RS_E4M3(128, SM90_R64, SM90_D64, "64", "65", "66", "67", "68", "69");
#endif
}

#endif // FA3C_CUDA_SM90_CUH
