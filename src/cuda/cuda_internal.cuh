// The cuda backend's private interfaces: per-context state, kernel parameter blocks, the launchers
// each .cu file exports, and the device helpers every kernel shares (FA3's per-sequence lengths,
// mask and split ranges; PTX wrappers for cp.async, ldmatrix and mma.sync).
//
// Shape legend as in include/fa3c.h (b, s_q, s_k, s_new, h, h_k, d, dv, S).
// CUDA C: C-style structs and functions; templates only over compile-time integers.
#ifndef FA3C_CUDA_INTERNAL_CUH
#define FA3C_CUDA_INTERNAL_CUH

#include <cuda.h> // CUtensorMap (a type only: the driver's encoder is fetched at run time)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "core/fastdiv.h"
#include "core/internal.h"

// ---------------------------------------------------------------------------------------------
// Context state and errors (cuda_backend.cu)

// Device memory a forward reuses from call to call. It grows outside CUDA-graph capture only; once
// a captured forward has used it (pinned), a later growth retires the old block instead of freeing
// it, because the captured graph keeps pointing there (retired blocks are freed with the context).
typedef struct cuda_buffer {
    void  *ptr;
    size_t bytes;
    bool   pinned;
} cuda_buffer;

typedef struct cuda_state {
    int    device, num_sm, cc_major, cc_minor;
    size_t smem_optin;  // largest dynamic shared memory a block may opt into
    cuda_buffer ws;     // split counts and split partials (when out_accum is absent)
    cuda_buffer counts; // arrival counters of the fused split combine: zero between forwards
    void  **retired;    // blocks replaced while a captured graph may still use them
    int     n_retired, cap_retired;
    int    *occupancy;  // resident CTAs per SM of each attention kernel (by kernel id)
    int    *cluster;    // largest cluster of each decode kernel (by id; 0: none, or $FA3C_CUDA_CLUSTER=0)
    int     split_mode; // CUDA_SPLIT_* ($FA3C_CUDA_SPLIT at context creation)
    int     sm90;       // the wgmma kernels run here: compute capability 9.x and $FA3C_CUDA_SM90 != 0
    void   *tma_encode; // the driver's cuTensorMapEncodeTiled (sm90 only; NULL: no TMA)
    int     ctas;       // $FA3C_CUDA_CTAS: the persistent kernel's grid (-1: unset; 0: a CTA per item)
    int     wide;       // $FA3C_CUDA_WIDE != 0: unpaged problems may run wide-tile kernels (wide_min_keys)
    uint32_t *sched;    // (2,) the persistent wgmma kernel's item counters (sm90): zero between forwards
    // The forwards share ws, counts and sched, so one on another stream than the last waits for
    // the last's work: `done` is recorded after every forward outside capture, on `last`.
    cudaEvent_t  done;
    cudaStream_t last;
    bool         have_last;
} cuda_state;

// How a forward with S > 1 and no out_accum spreads the keys over CTAs ($FA3C_CUDA_SPLIT):
//   exact  FA3's partition: n_b splits of ceil(blocks / n_b) key blocks of block_n (SEMANTICS.md);
//   fill   (default) W pieces of whole tiles with W such that b * heads * W CTAs fill the GPU once
//          (W = 1: no partials, no combine);
//   max    as fill with W >= S.
// With out_accum the partials are visible, and the exact partition is always used.
enum { CUDA_SPLIT_FILL = 0, CUDA_SPLIT_EXACT = 1, CUDA_SPLIT_MAX = 2 };

// FA3C_ERROR_OUT_OF_MEMORY for allocation failures, else FA3C_ERROR_DEVICE, naming `what`.
fa3c_status cuda_fail(cudaError_t err, const char *what);

// ---------------------------------------------------------------------------------------------
// Per-sequence lengths (FA3 SeqlenInfoQKNewK, as fa3c_seqlens_get) read on the device.
// Index tensors are contiguous int32 (validated); NULL when absent.

typedef struct cuda_seq_params {
    const int32_t *cu_q, *cu_k, *cu_new;                 // (b + 1,)
    const int32_t *seqused_q, *seqused_k, *leftpad, *kv_batch_idx, *seqlens_rotary; // (b,)
    int32_t s_q, s_k, s_new;                             // static lengths
    int32_t varlen_q, varlen_k, is_varlen, append, varlen_new;
} cuda_seq_params;

typedef struct cuda_seqlens {
    int32_t q_offset, seqlen_q;       // q/out rows q_offset .. (token index when varlen, else row)
    int32_t k_batch, k_offset;        // cache batch row; first attended cache row (leftpad included)
    int32_t seqlen_k_og, seqlen_new;  // cached keys before the append; appended keys
    int32_t new_offset, seqlen_k;     // first k_new row (varlen); keys attended
    int32_t rotary_base;              // rotary position of the first appended key
} cuda_seqlens;

__device__ __forceinline__ cuda_seqlens cuda_seqlens_get(const cuda_seq_params &p, int bi) {
    cuda_seqlens sl;
    int leftpad = p.leftpad ? p.leftpad[bi] : 0;
    sl.q_offset = p.varlen_q ? p.cu_q[bi] : 0;
    if (!p.is_varlen) sl.seqlen_q = p.s_q;
    else if (p.seqused_q) sl.seqlen_q = p.seqused_q[bi];
    else if (p.varlen_q) sl.seqlen_q = p.cu_q[bi + 1] - sl.q_offset;
    else sl.seqlen_q = p.s_q;
    sl.k_batch = p.kv_batch_idx ? p.kv_batch_idx[bi] : bi;
    int k_start = p.varlen_k ? p.cu_k[bi] : 0;
    sl.k_offset = k_start + leftpad;
    int k_end;
    if (!p.is_varlen) k_end = p.s_k;
    else if (p.seqused_k) k_end = p.seqused_k[bi];
    else if (p.varlen_k) k_end = p.cu_k[bi + 1] - k_start;
    else k_end = p.s_k;
    sl.seqlen_k_og = k_end - leftpad;
    sl.new_offset = 0;
    sl.seqlen_new = 0;
    if (p.append) {
        if (p.varlen_new) {
            sl.new_offset = p.cu_new[bi];
            sl.seqlen_new = p.cu_new[bi + 1] - sl.new_offset;
        } else {
            sl.seqlen_new = p.s_new;
        }
    }
    sl.seqlen_k = sl.seqlen_k_og + sl.seqlen_new;
    sl.rotary_base = (p.append && p.seqlens_rotary) ? p.seqlens_rotary[bi] : sl.seqlen_k_og + leftpad;
    return sl;
}

// The causal/local/chunk mask, FA3-normalised (fa3c_problem): windows < 0 unbounded.
typedef struct cuda_mask {
    int32_t causal, local;
    int64_t wl, wr, chunk;
} cuda_mask;

__device__ __forceinline__ int64_t cuda_floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

// Keys [lo, hi) visible to query row i (fa3c_mask_range). lo and hi are non-decreasing in i,
// which the attention kernel relies on to bound a tile's key range by its first and last row.
__device__ __forceinline__ void cuda_mask_range(const cuda_mask &m, int64_t i, int64_t seqlen_q, int64_t seqlen_k,
                                                int64_t *lo, int64_t *hi) {
    int64_t pos = i + seqlen_k - seqlen_q;
    int64_t l = 0, h = seqlen_k;
    if (m.causal && pos + 1 < h) h = pos + 1;
    if (m.local) {
        if (m.wr >= 0 && pos + m.wr + 1 < h) h = pos + m.wr + 1;
        if (m.wl >= 0 && pos - m.wl > l) l = pos - m.wl;
    }
    if (m.chunk > 0) {
        int64_t start = cuda_floor_div(pos, m.chunk) * m.chunk;
        if (start > l) l = start;
        if (start + m.chunk < h) h = start + m.chunk;
    }
    if (l < 0) l = 0;
    if (h > seqlen_k) h = seqlen_k;
    *lo = l;
    *hi = h;
}

// Keys of split s of n (fa3c_split_range): ceil(seqlen_k / block_n) blocks in n equal runs.
__device__ __forceinline__ void cuda_split_range(int64_t seqlen_k, int block_n, int n, int s, int64_t *lo,
                                                 int64_t *hi) {
    int64_t blocks = (seqlen_k + block_n - 1) / block_n;
    int64_t per = (blocks + n - 1) / n;
    int64_t l = (int64_t)s * per * block_n, h = l + per * block_n;
    *lo = l < seqlen_k ? l : seqlen_k;
    *hi = h < seqlen_k ? h : seqlen_k;
}

// ---------------------------------------------------------------------------------------------
// Scheduler metadata checked on the device (CUDA-graph capture, where the host cannot read it):
// header slot i must equal expect[i] for every bit i of mask (the length-hash slots are left out:
// metadata recomputed for new lengths between graph replays stays valid). A forward whose metadata
// fails the check writes NaN into out and lse instead of an answer.
typedef struct cuda_meta_check {
    const int32_t *meta; // (FA3C_SCHED_HEADER + ...) on the device; NULL: no check
    int32_t        expect[FA3C_SCHED_HEADER];
    uint32_t       mask;
} cuda_meta_check;

static_assert(FA3C_SCHED_HEADER == 32, "one header slot per lane");

// Warp-collective (all 32 lanes): true when there is nothing to check or the header matches.
__device__ __forceinline__ bool cuda_meta_ok(const cuda_meta_check &c) {
    if (!c.meta) return true;
    const int lane = threadIdx.x & 31;
    bool ok = !((c.mask >> lane) & 1u) || __ldcg(c.meta + lane) == c.expect[lane];
    return __all_sync(0xffffffffu, ok);
}

// ---------------------------------------------------------------------------------------------
// Scalars

__device__ __forceinline__ float cuda_bf16_bits_to_f32(uint16_t x) { return __uint_as_float((uint32_t)x << 16); }
__device__ __forceinline__ float cuda_f16_bits_to_f32(uint16_t x) {
    return __half2float(__ushort_as_half(x));
}
__device__ __forceinline__ uint16_t cuda_f32_to_bf16_bits(float x) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
__device__ __forceinline__ uint16_t cuda_f32_to_f16_bits(float x) { return __half_as_ushort(__float2half_rn(x)); }

// Element i of a float buffer of runtime dtype (F32, F16 or BF16).
__device__ __forceinline__ float cuda_load_float(const void *p, int dtype, int64_t i) {
    if (dtype == FA3C_DTYPE_F32) return ((const float *)p)[i];
    uint16_t x = ((const uint16_t *)p)[i];
    return dtype == FA3C_DTYPE_BF16 ? cuda_bf16_bits_to_f32(x) : cuda_f16_bits_to_f32(x);
}
__device__ __forceinline__ void cuda_store_float(void *p, int dtype, int64_t i, float x) {
    if (dtype == FA3C_DTYPE_F32) ((float *)p)[i] = x;
    else if (dtype == FA3C_DTYPE_BF16) ((uint16_t *)p)[i] = cuda_f32_to_bf16_bits(x);
    else ((uint16_t *)p)[i] = cuda_f32_to_f16_bits(x);
}

// The combine's slot weights of one row, by one warp: w[0 .. S) holds the slots' lse (w[s] written
// by lane s % 32); they become exp(lse_s - M) / L for the slots with keys (a finite lse) and -1 for
// the others, which cuda_weighted_slots skips. Returns the row's lse, M + log L (-inf: no keys).
__device__ __forceinline__ float cuda_slot_weights(float *w, int S, int lane) {
    float M = -INFINITY, L = 0.0f;
    for (int s = lane; s < S; s += 32)
        if (isfinite(w[s])) M = fmaxf(M, w[s]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    for (int s = lane; s < S; s += 32)
        if (isfinite(w[s])) L += expf(w[s] - M);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
    for (int s = lane; s < S; s += 32) w[s] = (M != -INFINITY && isfinite(w[s])) ? expf(w[s] - M) / L : -1.0f;
    return M == -INFINITY ? -INFINITY : M + logf(L);
}

// The combine's weighted sum over S slots: sum of w[s] * x[s * stride] over the slots with
// w[s] >= 0 (the others' partials may hold anything, NaN included), in slot order. The loads of 8
// slots are issued before any is used, so that a combine waits for about S / 8 memory round trips
// instead of S (they are unconditional within the S slots, which are all in bounds). T: float,
// or float4 for 4 columns at once.
__device__ __forceinline__ void cuda_axpy(float &acc, float w, float x) { acc += w * x; }
__device__ __forceinline__ void cuda_axpy(float4 &acc, float w, float4 x) {
    acc.x += w * x.x, acc.y += w * x.y, acc.z += w * x.z, acc.w += w * x.w;
}
template <typename T>
__device__ __forceinline__ T cuda_weighted_slots(const float *w, const T *x, int64_t stride, int S) {
    T acc = {};
    for (int s = 0; s < S; s += 8) {
        T v[8];
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (s + j < S) v[j] = __ldcg(x + (int64_t)(s + j) * stride);
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (s + j < S && w[s + j] >= 0.0f) cuda_axpy(acc, w[s + j], v[j]);
    }
    return acc;
}

// e4m3fn (fa3c_e4m3_to_f32 / fa3c_f32_to_e4m3): no infinities, 0x7F/0xFF NaN, max 448; values
// rounding past 448 (and inf/NaN) become NaN, as torch's cast does.
__device__ __forceinline__ float cuda_e4m3_to_f32(uint8_t x) {
    int sign = x & 0x80, e = (x >> 3) & 0xF, man = x & 0x7;
    if (e == 0xF && man == 0x7) return __int_as_float(0x7fc00000);
    float v = e == 0 ? ldexpf((float)man, -9) : ldexpf((float)(8 + man), e - 10);
    return sign ? -v : v;
}
__device__ __forceinline__ uint8_t cuda_f32_to_e4m3(float x) {
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (isnan(x) || isinf(x) || a > 464.0f) return sign | 0x7F;
    if (a < ldexpf(1.0f, -6)) return sign | (uint8_t)rintf(a * 512.0f); // subnormal: quantum 2^-9
    int e;
    frexpf(a, &e);
    int ex = e - 1;                                                      // a in [2^ex, 2^(ex+1))
    float q = rintf(ldexpf(a, 3 - ex));                                  // 8..16
    if (q >= 16.0f) q = 8.0f, ex++;
    return sign | (uint8_t)(((ex + 7) << 3) | ((int)q - 8));
}

// Element i of a buffer of any float dtype (F32, F16, BF16, E4M3), and its store (rounding).
__device__ __forceinline__ float cuda_load_any(const void *p, int dtype, int64_t i) {
    if (dtype == FA3C_DTYPE_E4M3) return cuda_e4m3_to_f32(((const uint8_t *)p)[i]);
    return cuda_load_float(p, dtype, i);
}
__device__ __forceinline__ void cuda_store_any(void *p, int dtype, int64_t i, float x) {
    if (dtype == FA3C_DTYPE_E4M3) ((uint8_t *)p)[i] = cuda_f32_to_e4m3(x);
    else cuda_store_float(p, dtype, i, x);
}
__device__ __forceinline__ float cuda_round_any(int dtype, float x) {
    if (dtype == FA3C_DTYPE_E4M3) return cuda_e4m3_to_f32(cuda_f32_to_e4m3(x));
    if (dtype == FA3C_DTYPE_BF16) return cuda_bf16_bits_to_f32(cuda_f32_to_bf16_bits(x));
    if (dtype == FA3C_DTYPE_F16) return cuda_f16_bits_to_f32(cuda_f32_to_f16_bits(x));
    return x;
}

// ---------------------------------------------------------------------------------------------
// PTX wrappers (sm_80+)

__device__ __forceinline__ uint32_t cuda_smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16 bytes global -> shared, zero-filled (and src not read) when !valid.
__device__ __forceinline__ void cuda_cp_async16(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
// The same for chunks of a K/V row: L2 fetches the row's whole 256-byte block from memory at once
// (a head's row is 128..512 contiguous bytes; its other chunks are in flight beside this one).
__device__ __forceinline__ void cuda_cp_async16_row(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cuda_cp_async4(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cuda_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cuda_cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }
// Waits until at most N of this thread's most recent cp.async groups are still in flight.
template <int N> __device__ __forceinline__ void cuda_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Thread block clusters (sm_90+; the host launches clusters only there, so before sm_90 these
// compile to nothing). cuda_cluster_sync: every thread of every CTA of the cluster arrives, the
// CTA's shared-memory writes before it are visible to the others' reads after it.
__device__ __forceinline__ void cuda_cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
#endif
}
__device__ __forceinline__ uint32_t cuda_cluster_rank() {
    uint32_t r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
    return r;
}
// The address of this CTA's shared-memory word `p` in CTA `rank` of the cluster, and loads from it.
__device__ __forceinline__ uint32_t cuda_cluster_addr(const void *p, uint32_t rank) {
    uint32_t a = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(a) : "r"(cuda_smem_addr(p)), "r"(rank));
#endif
    return a;
}
__device__ __forceinline__ float cuda_cluster_load(uint32_t a) {
    float v = 0.0f;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(a) : "memory");
#endif
    return v;
}
__device__ __forceinline__ float4 cuda_cluster_load4(uint32_t a) {
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(a)
                 : "memory");
#endif
    return v;
}

__device__ __forceinline__ void cuda_ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void cuda_ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c (16x8 f32) += a (16x16, row) * b (16x8, col); BF selects bf16 (1) or f16 (0) operands.
template <int BF>
__device__ __forceinline__ void cuda_mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (BF) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// Two floats rounded to the 16-bit dtype, lo in the low half.
template <int BF> __device__ __forceinline__ uint32_t cuda_pack2(float lo, float hi) {
    if constexpr (BF) return (uint32_t)cuda_f32_to_bf16_bits(lo) | ((uint32_t)cuda_f32_to_bf16_bits(hi) << 16);
    else return (uint32_t)cuda_f32_to_f16_bits(lo) | ((uint32_t)cuda_f32_to_f16_bits(hi) << 16);
}
template <int BF> __device__ __forceinline__ float cuda_to_f32(uint16_t x) {
    if constexpr (BF) return cuda_bf16_bits_to_f32(x);
    else return cuda_f16_bits_to_f32(x);
}
template <int BF> __device__ __forceinline__ uint16_t cuda_from_f32(float x) {
    if constexpr (BF) return cuda_f32_to_bf16_bits(x);
    else return cuda_f32_to_f16_bits(x);
}

__device__ __forceinline__ float cuda_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// ---------------------------------------------------------------------------------------------
// Attention (cuda_attn.cuh, instantiated per head-dim bucket in cuda_attn_d*.cu)

// Strides are in elements. Batch strides are 0 where the row index already is a packed token
// (varlen q, varlen k); for a paged cache the "batch" stride is the page stride.
typedef struct cuda_attn_params {
    cuda_seq_params seq;
    cuda_mask       mask;
    const void *q, *k, *v;
    const void *qv;                        // (b, s_q, h, dv) / (total_q, h, dv): scores add qv.v; or NULL
    void       *out;
    float      *lse;                       // NULL: not requested
    float      *oacc, *lacc;               // split partials (num_splits > 1)
    int64_t q_sb, q_sr, q_sh, qv_sb, qv_sr, qv_sh;
    int64_t k_sb, k_sr, k_sh, v_sb, v_sr, v_sh;
    int64_t o_sb, o_sr, o_sh;
    int64_t l_sb, l_sh, l_sr;
    int64_t oa_ss, oa_sb, oa_sh, oa_sr;
    int64_t la_ss, la_sb, la_sh, la_sr;
    const int32_t *page_table;             // NULL: not paged
    int64_t pt_sb;
    int32_t page_size, page_shift;         // page_shift = log2(page_size) when a power of two, else -1
    int32_t b, h, h_k, g, d, dv;           // g = h / h_k
    int32_t pack_gqa, grid_heads, num_m_blocks;
    fa3c_fastdiv fd_g, fd_heads, fd_m_blocks, fd_splits; // g, grid_heads, num_m_blocks, num_splits (at launch)
    float   scale_log2;                    // softmax scale * log2(e)
    float   softcap, softcap_scale;        // softcap (0: off) and scale / softcap
    const void *sinks;                     // (h,) or NULL
    int32_t sinks_dtype;
    const void *rot_cos, *rot_sin;         // (s_ro, rotary_dim / 2), dtype of q; NULL: no q rotary
    int32_t rotary_dim, rot_interleaved, rot_per_row;
    // Splits: num_splits CTAs (slots) per (sequence, head, m-block); 1 writes out/lse directly.
    //   exact  (pieces 0) slot s is FA3's split s of n_b (splits_dyn[bi], or num_splits), keys cut
    //          at split_block_n; slots >= n_b hold out 0 / lse -inf;
    //   pieces (pieces 1) the CTA's visible keys in num_splits runs of whole tiles; the result is
    //          the combine of all slots (empty ones hold lse -inf). counts != NULL (decode shape):
    //          the last CTA of each (sequence, head, m-block) to finish combines the slots itself.
    int32_t num_splits, split_block_n, pieces;
    const int32_t *splits_dyn;             // (b,) per-sequence split counts, or NULL (all S)
    int32_t *counts;                       // (b, grid_heads, num_m_blocks) arrival counters, or NULL
    int32_t cluster;                       // decode shape, 1 m-block: the slots combine as one cluster of
                                           // num_splits CTAs through shared memory instead (counts NULL)
    cuda_meta_check meta;                  // checked when out/lse are written here
    int32_t ctas;                          // the persistent wgmma kernel's grid (0: a CTA per work item)
    uint32_t *sched;                       // (2,) its dynamic schedule's counters (next item, CTAs
                                           // done; zero at launch, re-armed by the last CTA), or NULL:
                                           // CTA c takes items c, c + ctas, ...
    const float *q_ds, *k_ds, *v_ds;       // (b, h_k) descales (e4m3 only), NULL: 1
    int64_t qd_sb, qd_sh, kd_sb, kd_sh, vd_sb, vd_sh;
} cuda_attn_params;

// descale[bi, hk] of a (b, h_k) fp32 tensor; 1 when absent.
__device__ __forceinline__ float cuda_descale(const float *t, int64_t sb, int64_t sh, int bi, int hk) {
    return t ? t[(int64_t)bi * sb + (int64_t)hk * sh] : 1.0f;
}

// Tensor maps for the wgmma kernel's bulk tensor copies: K and V (a contiguous-row cache, or a
// paged one with a power-of-two page_size >= 16) and Q (not packed GQA): dims (d, rows, heads,
// batches), or (d, heads, rows, batches) when heads_first -- rows = s (batched), total (varlen,
// batches 1) or page_size (paged, batches = pages) -- boxes of 64 columns x box_rows (K, V:
// block_n, or page_size when smaller) or block_m (Q) rows in the 128-byte swizzle (e4m3 K, V:
// boxes of the whole head dim, unswizzled, into the producer's staging rows). on / q_on = 0:
// the kernel gathers those rows with cp.async instead (page size 1..8 or not a power of two,
// packed GQA, or strides the copy engine cannot describe).
typedef struct cuda_tma {
    CUtensorMap k, v, q;
    int32_t     on, varlen, heads_first;       // varlen: rows are packed tokens (batch coordinate 0)
    int32_t     paged_rows;                    // paged: rows of one box (a tile is whole boxes); 0 else
    int32_t     rows;                          // not paged: the K/V maps' row extent (zeros past it)
    int32_t     q_on, q_varlen, q_heads_first;
} cuda_tma;

typedef struct cuda_attn_kernel {
    int         hd, dv, bf16;
    int         e4m3;       // 1: e4m3 inputs (bf16 out)
    int         decode;     // 1: the few-rows variant (16 rows, the 4 warps split each key tile)
    int         sm90;       // 1: a wgmma kernel (compute capability 9.x only)
    int         qv;         // 1: the MLA kernel, scores q.k + qv.v (cuda_attn_mla.cu)
    int         wide;       // 1: a wgmma kernel's wider-key-tile twin, for unpaged problems (wide_min_keys)
    const char *name;
    size_t      smem;       // dynamic shared memory per block
    int         block_m, block_n;
    cudaError_t (*launch)(const cuda_attn_params *p, const cuda_tma *tma, cudaStream_t stream); // tma: sm90 only
    cudaError_t (*prepare)(void); // raises the kernel's dynamic shared memory limit (per device)
    cudaError_t (*occupancy)(int *ctas_per_sm); // after prepare
    // The decode shape on sm_90+: the largest cluster (8, 4 or 2 CTAs; 0: none) that can be
    // resident; NULL for the other kernels.
    cudaError_t (*cluster_max)(int *ctas);
} cuda_attn_kernel;

#define CUDA_ATTN_KERNELS_PER_BUCKET 4 // {many rows, decode} x {bf16, f16}
extern const cuda_attn_kernel fa3c_cuda_attn_d64[CUDA_ATTN_KERNELS_PER_BUCKET];
extern const cuda_attn_kernel fa3c_cuda_attn_d96[CUDA_ATTN_KERNELS_PER_BUCKET];
extern const cuda_attn_kernel fa3c_cuda_attn_d128[CUDA_ATTN_KERNELS_PER_BUCKET];
extern const cuda_attn_kernel fa3c_cuda_attn_d192[2 * CUDA_ATTN_KERNELS_PER_BUCKET]; // dv 192, then dv 128
extern const cuda_attn_kernel fa3c_cuda_attn_d256[CUDA_ATTN_KERNELS_PER_BUCKET];
#define CUDA_ATTN_E4M3_KERNELS 12 // {d 64, 96, 128, 192, 256, 192/dv 128} x {many rows, decode} (cuda_attn_e4m3.cu)
extern const cuda_attn_kernel fa3c_cuda_attn_e4m3[CUDA_ATTN_E4M3_KERNELS];
#define CUDA_ATTN_SM90_KERNELS 15 // {d 64, 128, 256} x {bf16, f16, e4m3}, + wide: d 128, 256 x {bf16, f16, e4m3}
extern const cuda_attn_kernel fa3c_cuda_attn_sm90[CUDA_ATTN_SM90_KERNELS];
#define CUDA_ATTN_MLA_KERNELS 4 // d 64 with qv, {dv 256, 512} x {bf16, f16} (cuda_attn_mla.cu)
extern const cuda_attn_kernel fa3c_cuda_attn_mla[CUDA_ATTN_MLA_KERNELS];

// The SIMT fallback (cuda_attn_simple.cu): every problem the tensor-core kernels refuse (e4m3
// with q rotary, qv off Hopper, head dims without a tile, unaligned rows). One warp per (sequence, q head, query
// row), fp32 throughout, FA3's exact split partition (pieces 0, num_splits = S, never fused).
// Uses a's fields but for pack_gqa, grid_heads, num_m_blocks, pieces and counts.
#define CUDA_ATTN_SIMPLE 0x7fff0000 // kernel id of the fallback (no kernel_by_id entry)
#define CUDA_SIMPLE_MAX_D 256
#define CUDA_SIMPLE_MAX_DV 512

typedef struct cuda_simple_params {
    cuda_attn_params a;
    int32_t in_dtype, out_dtype, rot_dtype;  // rot_dtype: dtype of rotary_cos / rotary_sin
    float   scale;                           // softmax scale
} cuda_simple_params;

cudaError_t cuda_simple_launch(const cuda_simple_params *p, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Combine, merge_state, fill (cuda_combine.cu)

// One row = (batch bi, row i, head hq). In fwd mode rows past seqlen_q are skipped, the row index
// is the token (q_offset + i) and only the first splits_dyn[bi] splits are read.
typedef struct cuda_combine_params {
    const float *op, *lp;   // partial out (S, ..., dv) and lse (S, ...)
    void        *out;       // (..., dv) out_dtype
    float       *lse;       // NULL: not requested
    int32_t      out_dtype;
    int64_t op_ss, op_sb, op_sr, op_sh, lp_ss, lp_sb, lp_sr, lp_sh;
    int64_t o_sb, o_sr, o_sh, l_sb, l_sr, l_sh;
    int32_t S, b, s, h, dv;
    int32_t fwd;
    cuda_seq_params seq;
    const int32_t  *splits_dyn; // fwd: (b,) split counts, each checked to lie in [1, S]; NULL: S
    cuda_meta_check meta;       // fwd
} cuda_combine_params;

cudaError_t cuda_combine_launch(const cuda_combine_params *p, cudaStream_t stream);

typedef struct cuda_merge_params {
    const void  *oa, *ob;
    const float *la, *lb;
    void        *out;
    float       *lse;       // NULL: not requested
    int32_t      oa_dtype, ob_dtype, out_dtype;
    int64_t oa_sn, oa_sh, ob_sn, ob_sh, o_sn, o_sh, la_sn, la_sh, lb_sn, lb_sh, l_sn, l_sh;
    int32_t n, h, dv;
} cuda_merge_params;

cudaError_t cuda_merge_launch(const cuda_merge_params *p, cudaStream_t stream);

// Every element of a float tensor (any strides, up to FA3C_MAX_DIMS dims) := value.
cudaError_t cuda_fill_launch(const fa3c_tensor *t, float value, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Append and prepare (cuda_append.cu, cuda_prepare.cu)

typedef struct cuda_append_params {
    cuda_seq_params seq;
    const void *k_new, *v_new;
    void       *k, *v;
    int64_t kn_sb, kn_sr, kn_sh, vn_sb, vn_sr, vn_sh; // batch stride 0 when varlen (cu_seqlens_k_new)
    int64_t k_sb, k_sr, k_sh, v_sb, v_sr, v_sh;
    const int32_t *page_table;                       // NULL: not paged
    int64_t pt_sb;
    int32_t page_size, b, h_k, d, dv, bf16;
    int32_t max_new;                                 // upper bound of any sequence's appended rows
    const void *rot_cos, *rot_sin;                   // NULL: no rotary
    int32_t rotary_dim, rot_interleaved;
    // scalar: element by element, any dtype (e4m3 included), any row alignment (the path of the
    // SIMT fallback); dtype of the cache and k_new / v_new, rot_dtype of rotary_cos / rotary_sin.
    int32_t scalar, dtype, rot_dtype;
} cuda_append_params;

cudaError_t cuda_append_launch(const cuda_append_params *p, cudaStream_t stream);

// FA3's dynamic split counts (fa3c_sched_compute's num_splits_dynamic) into splits (b,).
typedef struct cuda_prepare_params {
    cuda_seq_params seq;
    int32_t b, rows_per_q;   // rows_per_q: h / h_k when pack_gqa, else 1
    int32_t block_m, block_n, num_splits, num_sm, heads;
    int32_t *splits;
} cuda_prepare_params;

cudaError_t cuda_prepare_launch(const cuda_prepare_params *p, cudaStream_t stream);

#endif // FA3C_CUDA_INTERNAL_CUH
