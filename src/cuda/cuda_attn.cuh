// The attention forward on tensor cores (mma.sync m16n8k16, sm_80+), instantiated per head-dim
// bucket, dtype (bf16, fp16, e4m3 on tiles converted to fp16) and row shape in cuda_attn_d*.cu and
// cuda_attn_e4m3.cu. Everything else is a run-time flag: masks, softcap, sinks, paging, varlen,
// pack-GQA, splits, q rotary (16-bit inputs). On Hopper the wgmma kernel (cuda_attn_sm90.cu) takes
// the prefill-shaped 16-bit calls and shares this file's key-range, softmax and store helpers.
//
// One CTA = 4 warps on the query rows of one (sequence, head -- kv head when packed -- split slot).
// Two row shapes (template MT, WSPLIT):
//   many rows  each warp owns MT m16 tiles (BM = 64 * MT rows); every warp reads the whole K/V
//              tile, so 32 rows a warp (MT = 2) halve the shared-memory traffic per mma;
//   decode     (WSPLIT) the 4 warps share 16 rows and each takes a quarter of every key tile;
//              their softmax states are merged through shared memory at the end. For q_len * g
//              <= 16 this keeps all 4 warps computing instead of one.
// S = Q K^T and O += P V run on mma.sync with ldmatrix operands; the online softmax works in log2
// units (exp2, the scale folded into the scores); P feeds P.V straight from the S accumulators
// (their layout is the A-operand layout). K/V tiles of BN keys stream through a two-stage cp.async
// ring; for a paged cache the page ids of tile t + 2 arrive (cp.async, 4 bytes a row) while tile t
// computes, so any page_size works with one page lookup per key row. Shared-memory rows are padded
// by 16 bytes, which makes every ldmatrix phase hit 8 distinct bank groups.
// Split slots (cuda_attn_params): FA3's exact splits, or "pieces": the CTA's visible keys cut into
// num_splits runs of whole tiles, sized by the backend so that the grid fills the GPU. Pieces are
// a finer partition of the same keys as FA3's splits, so their combine is the same result up to
// fp32 rounding; they are used only where the partials stay internal (no out_accum). The decode
// shape then combines in place: the last CTA of a (sequence, head, m-block) to finish merges the
// slots (an arrival counter in device memory that it re-arms), which saves the combine launch.
//
// Shapes: q (b, s_q, h, d) / (total_q, h, d); k, v cache rows (see cuda_attn_params); out
// (b, s_q, h, dv) / (total_q, h, dv); lse (b, h, s_q) / (h, total_q); split partials
// (S, b, h, s_q, dv) / (S, h, total_q, dv) and (S, b, h, s_q) / (S, h, total_q).
#ifndef FA3C_CUDA_ATTN_CUH
#define FA3C_CUDA_ATTN_CUH

#include "cuda/cuda_internal.cuh"

#include <limits.h>

#define ATTN_THREADS 128
#define ATTN_WARPS 4
#define ATTN_LOG2E 1.4426950408889634f
#define ATTN_LN2 0.6931471805599453f

// Rows of a CTA: 16 (decode), else 4 warps x MT m16 tiles.
__host__ __device__ constexpr int attn_block_m(int mt, int wsplit) { return wsplit ? 16 : 64 * mt; }
// Keys per tile: 64, or 32 where the accumulators leave no registers for a 64-key S tile (32 rows
// a warp with d > 64; d = 256). The decode shape needs 64 (16 keys a warp).
__host__ __device__ constexpr int attn_block_n(int hd, int mt, int wsplit) {
    return wsplit ? 64 : (mt == 2 && hd > 64) || hd > 192 ? 32 : 64;
}

// K/V stages: 3 for the decode shape (its CTAs are latency-bound on K/V; 3 stages still fit an
// sm_80 block up to d = 192), else 2 (measured on H100: a third stage made the 32-rows shape slower).
__host__ __device__ constexpr int attn_stages(int hd, int wsplit) {
    return wsplit && hd <= 192 ? 3 : 2;
}

// Bytes of the K/V region: NST K and NST V stages of 16-bit rows padded by 8 elements; for e4m3
// inputs (fp8) one converted 16-bit K and V tile plus NST stages of e4m3 rows padded by 16 bytes.
__host__ __device__ constexpr size_t attn_kv_bytes(int hd, int dv, int mt, int wsplit, int fp8) {
    return fp8 ? (size_t)attn_block_n(hd, mt, wsplit) *
                     (2 * (hd + 8 + dv + 8) + (size_t)attn_stages(hd, wsplit) * (hd + 16 + dv + 16))
               : 2 * (size_t)attn_stages(hd, wsplit) * attn_block_n(hd, mt, wsplit) * (hd + 8 + dv + 8);
}
// Q tile (16-bit rows padded by 8 elements), the K/V region, NST page-id rows. The decode shape
// reuses the K/V region for its merge: 4 warps x 16 rows x dv floats and 2 x 64 floats.
__host__ __device__ constexpr size_t attn_smem_bytes(int hd, int dv, int mt, int wsplit, int fp8) {
    return 2 * (size_t)attn_block_m(mt, wsplit) * (hd + 8) + attn_kv_bytes(hd, dv, mt, wsplit, fp8) +
           (size_t)attn_stages(hd, wsplit) * attn_block_n(hd, mt, wsplit) * sizeof(int32_t);
}

// Token (within the sequence) of packed row R >= 0 (g rows a token when packed, else 1).
__device__ __forceinline__ int attn_token(const cuda_attn_params &p, int R) {
    return p.pack_gqa ? (int)fa3c_fastdiv_quo(p.fd_g, (unsigned)R) : R;
}
// Token and q head of packed row R of kv head hk / head `head` (g: p.g when packed, else 1).
__device__ __forceinline__ void attn_row(const cuda_attn_params &p, int R, int g, int head, int hk, int *i, int *hq) {
    *i = attn_token(p, R);
    *hq = p.pack_gqa ? hk * g + (R - *i * g) : head;
}

// Cache row r = k_offset + j of key j: (page, row in page) when paged, else (cache batch, r);
// the element offset is x * stride_batch_or_page + y * stride_row. page = its page id.
__device__ __forceinline__ void attn_cache_pos(const cuda_attn_params &p, const cuda_seqlens &sl, int j, int page,
                                               int *x, int *y) {
    int r = sl.k_offset + j;
    if (p.page_table) {
        *x = page;
        *y = p.page_shift >= 0 ? r & (p.page_size - 1) : r % p.page_size;
    } else {
        *x = sl.k_batch;
        *y = r;
    }
}

// Page ids of keys k0 .. k0 + BN - 1 (those < kmax) into dst[BN].
template <int BN>
__device__ __forceinline__ void attn_issue_pages(const cuda_attn_params &p, const cuda_seqlens &sl, int k0, int kmax,
                                                 int32_t *dst, int tid) {
    if (tid >= BN) return;
    int j = k0 + tid, r = sl.k_offset + j;
    bool v = j < kmax;
    const int32_t *src = p.page_table;
    if (v) src += (int64_t)sl.k_batch * p.pt_sb + (p.page_shift >= 0 ? r >> p.page_shift : r / p.page_size);
    cuda_cp_async4(cuda_smem_addr(dst + tid), src, v);
}

// K and V rows of keys k0 .. k0 + BN - 1 into one stage; rows >= kmax and columns >= d (dv) are
// zero-filled, so padded head dims and the tail tile contribute exact zeros. Each thread issues a
// fixed number of 16-byte chunks. When K and V rows have the same chunk count (dv == d buckets) a
// thread's K and V chunks sit at the same (row, column), so one cache position (one page-id read)
// serves both. UNROLL: how far the chunk loops unroll. The decode shape (UNROLL > 1) unrolls them
// fully and, where the chunk count divides the block (d = dv = 64, 128, 256), keeps one column a
// thread and steps down rows RSTEP at a time, so that unpaged its addresses are one add apart: it
// is bound by these instructions (ncu, H100: ~300 a thread per tile when every chunk computed its
// address from scratch). The many-rows shapes keep the loops rolled and recompute addresses:
// their registers are taken by the accumulators (the stepping form spilled there).
template <int HD, int DV, int BN, int UNROLL>
__device__ __forceinline__ void attn_issue_kv(const cuda_attn_params &p, const cuda_seqlens &sl, int hk, int k0,
                                              int kmax, const int32_t *pages, uint16_t *dK, uint16_t *dV, int tid) {
    constexpr int QS = HD + 8, VS = DV + 8, CPR_K = HD / 8, CPR_V = DV / 8;
    constexpr int IT_K = BN * CPR_K / ATTN_THREADS, IT_V = BN * CPR_V / ATTN_THREADS;
    static_assert(BN * CPR_K % ATTN_THREADS == 0 && BN * CPR_V % ATTN_THREADS == 0, "whole chunks per thread");
    const uint16_t *kb = (const uint16_t *)p.k + (int64_t)hk * p.k_sh;
    const uint16_t *vb = (const uint16_t *)p.v + (int64_t)hk * p.v_sh;
    if constexpr (UNROLL > 1 && CPR_K == CPR_V && ATTN_THREADS % CPR_K == 0) {
        constexpr int RSTEP = ATTN_THREADS / CPR_K;
        const int c = tid % CPR_K, r0 = tid / CPR_K;
        const bool ck = c * 8 < p.d, cv = c * 8 < p.dv;
        const uint32_t sk = cuda_smem_addr(dK + r0 * QS + c * 8), sv = cuda_smem_addr(dV + r0 * VS + c * 8);
        kb += c * 8;
        vb += c * 8;
        if (!p.page_table) { // rows r0, r0 + RSTEP, ... of one cache batch
            const int64_t r = (int64_t)sl.k_offset + k0 + r0;
            kb += (int64_t)sl.k_batch * p.k_sb + r * p.k_sr;
            vb += (int64_t)sl.k_batch * p.v_sb + r * p.v_sr;
        }
        const int64_t kstep = RSTEP * p.k_sr, vstep = RSTEP * p.v_sr;
#pragma unroll UNROLL
        for (int it = 0; it < IT_K; it++) {
            const int rr = r0 + it * RSTEP;
            const bool v = k0 + rr < kmax;
            const uint16_t *ks = kb + it * kstep, *vs = vb + it * vstep;
            if (p.page_table) {
                int x, y;
                attn_cache_pos(p, sl, k0 + rr, v ? pages[rr] : 0, &x, &y);
                ks = kb + (int64_t)x * p.k_sb + (int64_t)y * p.k_sr;
                vs = vb + (int64_t)x * p.v_sb + (int64_t)y * p.v_sr;
            }
            cuda_cp_async16_row(sk + it * RSTEP * QS * 2, v && ck ? ks : (const uint16_t *)p.k, v && ck);
            cuda_cp_async16_row(sv + it * RSTEP * VS * 2, v && cv ? vs : (const uint16_t *)p.v, v && cv);
        }
    } else if constexpr (CPR_K == CPR_V) {
#pragma unroll UNROLL
        for (int it = 0; it < IT_K; it++) {
            int idx = tid + it * ATTN_THREADS, rr = idx / CPR_K, c = idx % CPR_K, j = k0 + rr, x, y;
            bool v = j < kmax;
            attn_cache_pos(p, sl, j, p.page_table && v ? pages[rr] : 0, &x, &y);
            bool vk = v && c * 8 < p.d, vv = v && c * 8 < p.dv;
            const uint16_t *ks = vk ? kb + (int64_t)x * p.k_sb + (int64_t)y * p.k_sr + c * 8 : (const uint16_t *)p.k;
            const uint16_t *vs = vv ? vb + (int64_t)x * p.v_sb + (int64_t)y * p.v_sr + c * 8 : (const uint16_t *)p.v;
            cuda_cp_async16_row(cuda_smem_addr(dK + rr * QS + c * 8), ks, vk);
            cuda_cp_async16_row(cuda_smem_addr(dV + rr * VS + c * 8), vs, vv);
        }
    } else {
#pragma unroll UNROLL
        for (int it = 0; it < IT_K; it++) {
            int idx = tid + it * ATTN_THREADS, rr = idx / CPR_K, c = idx % CPR_K, j = k0 + rr, x, y;
            bool v = j < kmax;
            attn_cache_pos(p, sl, j, p.page_table && v ? pages[rr] : 0, &x, &y);
            v = v && c * 8 < p.d;
            const uint16_t *src = v ? kb + (int64_t)x * p.k_sb + (int64_t)y * p.k_sr + c * 8 : (const uint16_t *)p.k;
            cuda_cp_async16_row(cuda_smem_addr(dK + rr * QS + c * 8), src, v);
        }
#pragma unroll UNROLL
        for (int it = 0; it < IT_V; it++) {
            int idx = tid + it * ATTN_THREADS, rr = idx / CPR_V, c = idx % CPR_V, j = k0 + rr, x, y;
            bool v = j < kmax;
            attn_cache_pos(p, sl, j, p.page_table && v ? pages[rr] : 0, &x, &y);
            v = v && c * 8 < p.dv;
            const uint16_t *src = v ? vb + (int64_t)x * p.v_sb + (int64_t)y * p.v_sr + c * 8 : (const uint16_t *)p.v;
            cuda_cp_async16_row(cuda_smem_addr(dV + rr * VS + c * 8), src, v);
        }
    }
}

// The Q tile of BM rows: rows >= rows and columns >= d zero-filled. With q rotary (appending with
// rotary_cos) each 8-element chunk inside rotary_dim is rotated in fp32 at its position and
// rounded to the input dtype, as the reference does, then stored synchronously.
template <int HD, int BF, int BM>
__device__ __forceinline__ void attn_load_q(const cuda_attn_params &p, const cuda_seqlens &sl, int bi, int head,
                                            int hk, int g, int row0, int rows, uint16_t *sQ, int tid) {
    constexpr int QS = HD + 8, CPR = HD / 8;
    for (int idx = tid; idx < BM * CPR; idx += ATTN_THREADS) {
        int r = idx / CPR, c = idx % CPR, R = row0 + r, i = 0, hq = 0;
        bool v = R < rows && c * 8 < p.d;
        const uint16_t *src = (const uint16_t *)p.q;
        if (v) {
            attn_row(p, R, g, head, hk, &i, &hq);
            src += (int64_t)bi * p.q_sb + (int64_t)(sl.q_offset + i) * p.q_sr + (int64_t)hq * p.q_sh + c * 8;
        }
        uint16_t *dst = sQ + r * QS + c * 8;
        if (!p.rot_cos || !v || c * 8 >= p.rotary_dim) {
            cuda_cp_async16(cuda_smem_addr(dst), src, v);
            continue;
        }
        int half = p.rotary_dim / 2;
        int64_t pos = (int64_t)sl.rotary_base + (p.rot_per_row ? i : 0);
        const uint16_t *cs = (const uint16_t *)p.rot_cos + pos * half, *sn = (const uint16_t *)p.rot_sin + pos * half;
        uint4 raw = *(const uint4 *)src;
        const uint16_t *x = (const uint16_t *)&raw;
        uint16_t y[8];
        if (p.rot_interleaved) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int t = c * 4 + e;
                float cf = cuda_to_f32<BF>(cs[t]), sf = cuda_to_f32<BF>(sn[t]);
                float x0 = cuda_to_f32<BF>(x[2 * e]), x1 = cuda_to_f32<BF>(x[2 * e + 1]);
                y[2 * e] = cuda_from_f32<BF>(__fsub_rn(__fmul_rn(x0, cf), __fmul_rn(x1, sf)));
                y[2 * e + 1] = cuda_from_f32<BF>(__fadd_rn(__fmul_rn(x0, sf), __fmul_rn(x1, cf)));
            }
        } else {
            bool first = c * 8 < half;
            uint4 praw = *(const uint4 *)(src + (first ? half : -half));
            const uint16_t *xp = (const uint16_t *)&praw;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                int t = (first ? c * 8 : c * 8 - half) + e;
                float cf = cuda_to_f32<BF>(cs[t]), sf = cuda_to_f32<BF>(sn[t]);
                float a = cuda_to_f32<BF>(x[e]), o = cuda_to_f32<BF>(xp[e]);
                float rot = first ? __fsub_rn(__fmul_rn(a, cf), __fmul_rn(o, sf))
                                  : __fadd_rn(__fmul_rn(o, sf), __fmul_rn(a, cf));
                y[e] = cuda_from_f32<BF>(rot);
            }
        }
        *(uint4 *)dst = *(const uint4 *)y;
    }
}

// e4m3 inputs. Tiles arrive as e4m3 rows (cp.async, 16 elements a chunk) in staging stages and
// are converted to fp16 -- exactly: every e4m3 value is an fp16 value -- into one 16-bit tile
// right before use; the mma then runs in fp16 with fp32 accumulation (the scores are exact sums
// of exact products, as in FA3's e4m3 mma) and the descales scale S and O.

// Two e4m3 (low byte first) -> two fp16 (low half first).
__device__ __forceinline__ uint32_t attn_e4m3x2_to_f16x2(uint16_t x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    uint32_t r;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(r) : "h"(x));
    return r;
#else
    return (uint32_t)cuda_f32_to_f16_bits(cuda_e4m3_to_f32((uint8_t)x)) |
           ((uint32_t)cuda_f32_to_f16_bits(cuda_e4m3_to_f32((uint8_t)(x >> 8))) << 16);
#endif
}

// 16 e4m3 -> 16 fp16: the two 16-byte halves lo (values 0..7) and hi (8..15).
__device__ __forceinline__ void attn_e4m3x16_to_f16x16(uint4 raw, uint4 *lo, uint4 *hi) {
    const uint16_t *x = (const uint16_t *)&raw;
    uint32_t y[8];
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = attn_e4m3x2_to_f16x2(x[i]);
    *lo = make_uint4(y[0], y[1], y[2], y[3]);
    *hi = make_uint4(y[4], y[5], y[6], y[7]);
}

// 16 e4m3 -> 16 fp16 at dst (32 bytes).
__device__ __forceinline__ void attn_e4m3x16_to_f16(uint4 raw, uint16_t *dst) {
    attn_e4m3x16_to_f16x16(raw, (uint4 *)dst, (uint4 *)dst + 1);
}

// K and V e4m3 rows of keys k0 .. k0 + BN - 1 into one staging stage (rows of HD + 16 / DV + 16
// bytes); rows >= kmax and columns >= d (dv) zero-filled.
template <int HD, int DV, int BN>
__device__ __forceinline__ void attn_issue_kv_e4m3(const cuda_attn_params &p, const cuda_seqlens &sl, int hk, int k0,
                                                   int kmax, const int32_t *pages, uint8_t *dK, uint8_t *dV, int tid) {
    constexpr int CK = HD / 16, CV = DV / 16;
    const uint8_t *kb = (const uint8_t *)p.k + (int64_t)hk * p.k_sh, *vb = (const uint8_t *)p.v + (int64_t)hk * p.v_sh;
    for (int idx = tid; idx < BN * (CK + CV); idx += ATTN_THREADS) {
        const bool is_k = idx < BN * CK;
        const int cpr = is_k ? CK : CV, i2 = is_k ? idx : idx - BN * CK, rr = i2 / cpr, c = i2 % cpr, j = k0 + rr;
        int x, y;
        bool v = j < kmax;
        attn_cache_pos(p, sl, j, p.page_table && v ? pages[rr] : 0, &x, &y);
        v = v && c * 16 < (is_k ? p.d : p.dv);
        const uint8_t *base = is_k ? kb : vb;
        const uint8_t *src = v ? base + (int64_t)x * (is_k ? p.k_sb : p.v_sb) + (int64_t)y * (is_k ? p.k_sr : p.v_sr) +
                                     c * 16
                               : base;
        uint8_t *dst = is_k ? dK + rr * (HD + 16) + c * 16 : dV + rr * (DV + 16) + c * 16;
        cuda_cp_async16(cuda_smem_addr(dst), src, v);
    }
}

// One staged e4m3 stage -> the 16-bit K and V tiles (rows padded by 8 elements).
template <int HD, int DV, int BN>
__device__ __forceinline__ void attn_convert_kv_e4m3(const uint8_t *fK, const uint8_t *fV, uint16_t *sK, uint16_t *sV,
                                                     int tid) {
    constexpr int CK = HD / 16, CV = DV / 16;
    for (int idx = tid; idx < BN * (CK + CV); idx += ATTN_THREADS) {
        const bool is_k = idx < BN * CK;
        const int cpr = is_k ? CK : CV, i2 = is_k ? idx : idx - BN * CK, rr = i2 / cpr, c = i2 % cpr;
        const uint8_t *src = is_k ? fK + rr * (HD + 16) + c * 16 : fV + rr * (DV + 16) + c * 16;
        attn_e4m3x16_to_f16(*(const uint4 *)src, is_k ? sK + rr * (HD + 8) + c * 16 : sV + rr * (DV + 8) + c * 16);
    }
}

// 16 e4m3 q values: chunk c (elements 16c ..) of packed row R (zeros past rows or d).
__device__ __forceinline__ uint4 attn_q_e4m3_chunk(const cuda_attn_params &p, const cuda_seqlens &sl, int bi, int head,
                                                   int hk, int g, int R, int rows, int c) {
    int i = 0, hq = 0;
    if (R >= rows || c * 16 >= p.d) return make_uint4(0, 0, 0, 0);
    attn_row(p, R, g, head, hk, &i, &hq);
    return *(const uint4 *)((const uint8_t *)p.q + (int64_t)bi * p.q_sb + (int64_t)(sl.q_offset + i) * p.q_sr +
                            (int64_t)hq * p.q_sh + c * 16);
}

// The e4m3 Q tile, converted to fp16 (rows >= rows, columns >= d zero); synchronous stores.
template <int HD, int BM>
__device__ __forceinline__ void attn_load_q_e4m3(const cuda_attn_params &p, const cuda_seqlens &sl, int bi, int head,
                                                 int hk, int g, int row0, int rows, uint16_t *sQ, int tid) {
    constexpr int CPR = HD / 16;
    for (int idx = tid; idx < BM * CPR; idx += ATTN_THREADS) {
        const int r = idx / CPR, c = idx % CPR;
        attn_e4m3x16_to_f16(attn_q_e4m3_chunk(p, sl, bi, head, hk, g, row0 + r, rows, c), sQ + r * (HD + 8) + c * 16);
    }
}

// A split this sequence does not use: its partial rows hold out 0 and lse -inf.
__device__ __forceinline__ void attn_store_empty(const cuda_attn_params &p, const cuda_seqlens &sl, int bi, int head,
                                                 int hk, int g, int row0, int rows, int bm, int split, int tid) {
    int nrow = min(bm, rows - row0);
    for (int idx = tid; idx < nrow * p.dv; idx += ATTN_THREADS) {
        int r = idx / p.dv, c = idx % p.dv, i, hq;
        attn_row(p, row0 + r, g, head, hk, &i, &hq);
        int64_t tok = sl.q_offset + i;
        p.oacc[split * p.oa_ss + bi * p.oa_sb + hq * p.oa_sh + tok * p.oa_sr + c] = 0.0f;
        if (c == 0) p.lacc[split * p.la_ss + bi * p.la_sb + hq * p.la_sh + tok * p.la_sr] = -INFINITY;
    }
}

// Work item `id`'s (sequence, grid head -- the kv head when packed --, split slot, m-block): id =
// ((bi * grid_heads + head) * S + split) * num_m + (num_m - 1 - m_block), so the last (longest
// under a causal mask) m-blocks of a head come first. A CTA's item is its blockIdx.x (the grid has
// one CTA per item, fewer than 2^31), or (the persistent wgmma kernel) blockIdx.x, + gridDim.x, ...
__device__ __forceinline__ void attn_cta_coords(const cuda_attn_params &p, unsigned id, int *bi, int *head, int *split,
                                                int *m_block) {
    unsigned q = fa3c_fastdiv_quo(p.fd_m_blocks, id);
    *m_block = p.num_m_blocks - 1 - (int)(id - q * (unsigned)p.num_m_blocks);
    id = q;
    q = fa3c_fastdiv_quo(p.fd_splits, id);
    *split = (int)(id - q * (unsigned)p.num_splits);
    id = q;
    q = fa3c_fastdiv_quo(p.fd_heads, id);
    *head = (int)(id - q * (unsigned)p.grid_heads);
    *bi = (int)q;
}

// The keys of a CTA (rows row0 .. row0 + bm - 1 of rows, tiles of bn keys) in split slot `split`:
// [kmin, kmax) from the first row's lo to the last row's hi (both non-decreasing in the row),
// within the slot's keys [slo, shi). False: an exact split this sequence does not use (the caller
// stores empty partials).
__device__ __forceinline__ bool attn_cta_keys(const cuda_attn_params &p, int bi, int seqlen_q, int seqlen_k, int row0,
                                              int bm, int rows, int bn, int split, int64_t *slo,
                                              int64_t *shi, int *kmin, int *kmax) {
    int64_t lo_f, hi_f, lo_l, hi_l;
    cuda_mask_range(p.mask, attn_token(p, row0), seqlen_q, seqlen_k, &lo_f, &hi_f);
    cuda_mask_range(p.mask, attn_token(p, min(row0 + bm, rows) - 1), seqlen_q, seqlen_k, &lo_l, &hi_l);
    *slo = 0;
    *shi = seqlen_k;
    if (p.num_splits > 1 && p.pieces) { // slot `split` takes its run of whole tiles of [lo_f, hi_l)
        // bn is a compile-time tile size, and tile counts fit 31 bits: no 64-bit division here.
        const unsigned tiles = hi_l > lo_f ? (unsigned)((hi_l - lo_f + bn - 1) / bn) : 0u;
        const int64_t per = fa3c_fastdiv_quo(p.fd_splits, tiles + (unsigned)p.num_splits - 1);
        *slo = min(lo_f + split * per * bn, max(hi_l, lo_f));
        *shi = min(hi_l, *slo + per * bn);
    } else if (p.num_splits > 1) {
        const int n_b = p.splits_dyn ? p.splits_dyn[bi] : p.num_splits;
        if (split >= n_b) return false;
        cuda_split_range(seqlen_k, p.split_block_n, n_b, split, slo, shi);
    }
    *kmin = (int)max(lo_f, *slo);
    *kmax = (int)min(hi_l, *shi);
    return true;
}

// Packed row R: valid (R < rows), its token and q head, and its visible keys [lo, hi) within the
// slot's [slo, shi) (0, 0 when not valid).
__device__ __forceinline__ void attn_row_keys(const cuda_attn_params &p, int R, int rows, int g, int head, int hk,
                                              int seqlen_q, int seqlen_k, int64_t slo, int64_t shi, bool *valid,
                                              int *tok, int *hq, int *lo, int *hi) {
    *valid = R < rows;
    attn_row(p, R, g, head, hk, tok, hq);
    int64_t l, h;
    cuda_mask_range(p.mask, *tok, seqlen_q, seqlen_k, &l, &h);
    *lo = *valid ? (int)max(l, slo) : 0;
    *hi = *valid ? (int)min(h, shi) : 0;
}

// flo / fhi: keys visible to every valid row of the warp (a tile inside needs no mask).
template <int R2>
__device__ __forceinline__ void attn_warp_keys(const bool (&valid)[R2], const int (&lo)[R2], const int (&hi)[R2],
                                               int *flo, int *fhi) {
    int fl = INT_MIN, fh = INT_MAX;
#pragma unroll
    for (int e = 0; e < R2; e++)
        if (valid[e]) {
            fl = max(fl, lo[e]);
            fh = min(fh, hi[e]);
        }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        fl = max(fl, __shfl_xor_sync(0xffffffffu, fl, o));
        fh = min(fh, __shfl_xor_sync(0xffffffffu, fh, o));
    }
    *flo = fl;
    *fhi = fh;
}

// The online softmax of one m16 tile of scores (a warp's 16 rows x 8 NT keys from k0; this
// thread's rows e = 0, 1 are lane / 4 and lane / 4 + 8): s (the mma accumulator layout) becomes P
// = exp2(r * fac - m) in place, m (log2 units) and l advance, and corr[e] is the factor the row's
// O must be multiplied by (attn_rescale). Scale (times qk_ds, the e4m3 descales q_ds * k_ds, else
// 1) folded into one FFMA (softcap, or a scale <= 0, first scale the scores); keys outside a
// row's [lo, hi) are masked unless mask_free. POFF > 0: P = exp2(r * fac - m + POFF), as FA3 does
// for P rounded to e4m3 (its Max_offset): P <= 2^POFF, so that P's small values keep e4m3's
// mantissa instead of underflowing; l grows by the same 2^POFF (the caller lowers m by POFF for
// the row's lse).
template <int NT, int POFF = 0>
__device__ __forceinline__ void attn_softmax_scores(const cuda_attn_params &p, float (&s)[NT][4], float *m, float *l,
                                                    const int *lo, const int *hi, int k0, bool mask_free, int lane,
                                                    float *corr, float qk_ds) {
    float fac = p.scale_log2 * qk_ds;
    if (p.softcap > 0.0f || p.scale_log2 <= 0.0f) {
        const bool cap = p.softcap > 0.0f;
        const float cs = p.softcap_scale * qk_ds;
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                s[nt][e] = cap ? p.softcap * tanhf(s[nt][e] * cs) * ATTN_LOG2E : s[nt][e] * fac;
        fac = 1.0f;
    }
    if (!mask_free) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int col = k0 + nt * 8 + 2 * (lane & 3) + (e & 1), ri = e >> 1;
                if (col < lo[ri] || col >= hi[ri]) s[nt][e] = -INFINITY;
            }
    }
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        const int h2 = 2 * ri;
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) mx = fmaxf(mx, fmaxf(s[nt][h2], s[nt][h2 + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float m_new = fmaxf(m[ri], mx * fac);
        float m_use = m_new == -INFINITY ? 0.0f : m_new; // no key yet: keep exp2 away from inf - inf
        corr[ri] = cuda_exp2(m[ri] - m_use);
        m[ri] = m_new;
        l[ri] *= corr[ri];
        const float m_p = m_use - (float)POFF;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            float p0 = cuda_exp2(fmaf(s[nt][h2], fac, -m_p)), p1 = cuda_exp2(fmaf(s[nt][h2 + 1], fac, -m_p));
            l[ri] += p0 + p1;
            s[nt][h2] = p0;
            s[nt][h2 + 1] = p1;
        }
    }
}

// O (8 OT columns of this thread's rows e = 0, 1) *= corr[e], skipped when no row of the warp
// moved its running max (warp-collective).
template <int OT> __device__ __forceinline__ void attn_rescale(float (&o)[OT][4], const float *corr) {
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        if (!__any_sync(0xffffffffu, corr[ri] != 1.0f)) continue;
#pragma unroll
        for (int ot = 0; ot < OT; ot++) {
            o[ot][2 * ri] *= corr[ri];
            o[ot][2 * ri + 1] *= corr[ri];
        }
    }
}

// Folds the sink logit (natural units) of q head hq into a finished row state: m (log2 units),
// l and the unnormalised O; returns the factor O is to be multiplied by.
__device__ __forceinline__ float attn_add_sink(const cuda_attn_params &p, int hq, float *m, float *l) {
    float sink = cuda_load_float(p.sinks, p.sinks_dtype, hq) * ATTN_LOG2E;
    float mx = fmaxf(*m, sink), m_use = mx == -INFINITY ? 0.0f : mx;
    float corr = cuda_exp2(*m - m_use);
    *l = *l * corr + cuda_exp2(sink - m_use);
    *m = mx;
    return corr;
}

// A finished row's lse (natural log) from its running max m (log2 units) and sum l; -inf for a row
// that saw no key.
__device__ __forceinline__ float attn_row_lse(float m, float l) {
    return l > 0.0f ? m * ATTN_LN2 + logf(l) : -INFINITY;
}

// Where a finished row (token tok, head hq) goes: out's row, or split `split`'s partial row (fp32)
// when num_splits > 1, with the factor its unnormalised O is multiplied by (o_scale / l; o_scale:
// the e4m3 v descale, else 1) and its lse (natural log; m in log2 units), and where the lse goes
// (NULL: nowhere). poison: the metadata check failed, a final row gets NaN for both.
struct attn_row_dst {
    float *acc;     // the partial's row (num_splits > 1)
    uint16_t *out;  // out's row (num_splits == 1)
    float *lse_at;
    float inv, lse;
};
__device__ __forceinline__ attn_row_dst attn_row_dst_of(const cuda_attn_params &p, int bi, int64_t tok, int hq,
                                                        int split, float m, float l, float o_scale, bool poison) {
    attn_row_dst r;
    r.lse = attn_row_lse(m, l);
    r.inv = l > 0.0f ? o_scale / l : 0.0f;
    if (p.num_splits > 1) {
        r.acc = p.oacc + split * p.oa_ss + bi * p.oa_sb + hq * p.oa_sh + tok * p.oa_sr;
        r.out = NULL;
        r.lse_at = p.lacc + split * p.la_ss + bi * p.la_sb + hq * p.la_sh + tok * p.la_sr;
    } else {
        if (poison) r.lse = r.inv = NAN;
        r.acc = NULL;
        r.out = (uint16_t *)p.out + bi * p.o_sb + tok * p.o_sr + hq * p.o_sh;
        r.lse_at = p.lse ? p.lse + bi * p.l_sb + hq * p.l_sh + tok * p.l_sr : NULL;
    }
    return r;
}

// Columns col .. col + COLS - 1 (COLS 2 or 4, col even) of a finished row, o unnormalised, into
// its partial row (num_splits > 1) or out's row: one 8- / 16-byte store where the row's alignment
// allows it (out rows hold whole 4-byte pairs).
template <int COLS>
__device__ __forceinline__ void attn_put_partial(const attn_row_dst &r, int col, const float *o) {
    static_assert(COLS == 2 || COLS == 4, "column pairs");
    float *dst = r.acc + col;
    if (COLS == 4 && ((uintptr_t)dst & 15) == 0) {
        *(float4 *)dst = make_float4(o[0] * r.inv, o[1] * r.inv, o[2] * r.inv, o[3] * r.inv);
    } else if (COLS == 2 && ((uintptr_t)r.acc & 7) == 0) {
        *(float2 *)dst = make_float2(o[0] * r.inv, o[1] * r.inv);
    } else {
#pragma unroll
        for (int e = 0; e < COLS; e++) dst[e] = o[e] * r.inv;
    }
}
template <int BF, int COLS>
__device__ __forceinline__ void attn_put_out(const attn_row_dst &r, int col, const float *o) {
    static_assert(COLS == 2 || COLS == 4, "column pairs");
    uint16_t *dst = r.out + col;
    uint32_t w[COLS / 2];
#pragma unroll
    for (int e = 0; e < COLS / 2; e++) w[e] = cuda_pack2<BF>(o[2 * e] * r.inv, o[2 * e + 1] * r.inv);
    if (COLS == 4 && ((uintptr_t)dst & 7) == 0) {
        *(uint2 *)dst = make_uint2(w[0], w[COLS / 2 - 1]);
    } else {
#pragma unroll
        for (int e = 0; e < COLS / 2; e++) *(uint32_t *)(dst + 2 * e) = w[e];
    }
}

// One finished row (token tok, head hq), columns col .. col + COLS - 1, and its lse when
// write_lse.
template <int BF, int COLS>
__device__ __forceinline__ void attn_store_row(const cuda_attn_params &p, int bi, int64_t tok, int hq, int split,
                                               int col, const float *o, float m, float l, float o_scale,
                                               bool write_lse, bool poison) {
    const attn_row_dst r = attn_row_dst_of(p, bi, tok, hq, split, m, l, o_scale, poison);
    if (p.num_splits > 1) attn_put_partial<COLS>(r, col, o);
    else attn_put_out<BF, COLS>(r, col, o);
    if (write_lse && r.lse_at) *r.lse_at = r.lse;
}

// Out's rows r[0], r[1] (this lane's rows lane / 4 and lane / 4 + 8 of the warp's 16; valid),
// columns col0 .. col0 + 8 OT - 1 (col0 a multiple of 8; those < dv, dv a multiple of 8) of the
// accumulators o, in 16-byte stores. A lane holds one 4-byte column pair of every 8 columns of
// a row; a 4 x 4 transpose among the row's quad (two exchanges: lanes 2 apart swap half their
// pairs, then lanes 1 apart) gives lane q all of block 4 b + q, so the quad stores 64 contiguous
// bytes of the row: a quarter of the store instructions, whole sectors.
template <int BF, int OT>
__device__ __forceinline__ void attn_put_out_quad(const attn_row_dst (&r)[2], const bool *valid, int col0, int dv,
                                                  const float (&o)[OT][4], int lane) {
    static_assert(OT % 4 == 0, "32-column blocks");
    const int q = lane & 3;
#pragma unroll
    for (int b = 0; b < OT / 4; b++) {
#pragma unroll
        for (int ri = 0; ri < 2; ri++) {
            uint32_t w[4];
#pragma unroll
            for (int j = 0; j < 4; j++)
                w[j] = cuda_pack2<BF>(o[4 * b + j][2 * ri] * r[ri].inv, o[4 * b + j][2 * ri + 1] * r[ri].inv);
#pragma unroll
            for (int x = 2; x >= 1; x >>= 1) { // send the pairs j with (j & x) != (q & x), receive them
                const bool hi = q & x;
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (!(j & x)) {
                        const uint32_t got = __shfl_xor_sync(0xffffffffu, hi ? w[j] : w[j | x], x);
                        if (hi) w[j] = got;
                        else w[j | x] = got;
                    }
            }
            const int col = col0 + 32 * b + 8 * q;
            if (valid[ri] && col < dv) *(uint4 *)(r[ri].out + col) = make_uint4(w[0], w[1], w[2], w[3]);
        }
    }
}

// The finished rows e = 0, 1 of one m16 tile (as in attn_softmax_scores; l summed over the 4 lanes
// of a row) holding output columns col0 .. col0 + 8 OT - 1 (col0 even; times o_scale): the sink
// folded in (sink), then out and lse (when with_lse), or the slot's partial, of valid rows. A
// row's destination and factor once, then only the stores: the epilogue runs on the consumer
// warps alone, so its instruction count is latency (H100: per store, the MLA kernel's epilogue was
// 4k instructions a warp, 60 us of a launch at any KV length; MLA 4k 392 -> 479 TFLOP/s, prefill
// d 128 at 512 keys 1.16-1.20x). Out through attn_put_out_quad (every kernel's OT is a multiple of 4).
template <int BF, int OT>
__device__ __forceinline__ void attn_store_tile(const cuda_attn_params &p, int bi, int q_offset, int split,
                                                const bool *valid, const int *tok, const int *hq, float (&o)[OT][4],
                                                float *m, float *l, float o_scale, bool sink, bool poison, int lane,
                                                int col0, bool with_lse) {
    attn_row_dst rd[2];
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        const int h2 = 2 * ri;
        rd[ri].inv = 0.0f;
        rd[ri].out = NULL;
        if (!valid[ri]) continue;
        if (sink) {
            float corr = attn_add_sink(p, hq[ri], &m[ri], &l[ri]);
#pragma unroll
            for (int ot = 0; ot < OT; ot++) {
                o[ot][h2] *= corr;
                o[ot][h2 + 1] *= corr;
            }
        }
        const attn_row_dst r =
            attn_row_dst_of(p, bi, (int64_t)q_offset + tok[ri], hq[ri], split, m[ri], l[ri], o_scale, poison);
        rd[ri] = r;
        const int c0 = col0 + 2 * (lane & 3);
        if (p.num_splits > 1)
#pragma unroll
            for (int ot = 0; ot < OT; ot++)
                if (c0 + ot * 8 < p.dv) attn_put_partial<2>(r, c0 + ot * 8, &o[ot][h2]);
        if (with_lse && (lane & 3) == 0 && r.lse_at) *r.lse_at = r.lse;
    }
    // Shuffled: provably warp-uniform, else ptxas serialises the wgmma of the kernels around it (C7520).
    if (__shfl_sync(0xffffffffu, p.num_splits, 0) == 1) attn_put_out_quad<BF, OT>(rd, valid, col0, p.dv, o, lane);
}

// Columns col .. col + 3 of combined row (tok, hq) into out, and with column 0 its lse (all NaN when
// the forward's metadata failed its check).
template <int BF>
__device__ __forceinline__ void attn_store_combined(const cuda_attn_params &p, int bi, int64_t tok, int hq, int col,
                                                    float4 acc, float lse, bool poison) {
    if (poison) acc = make_float4(NAN, NAN, NAN, NAN);
    uint16_t *dst = (uint16_t *)p.out + bi * p.o_sb + tok * p.o_sr + hq * p.o_sh + col;
    dst[0] = cuda_from_f32<BF>(acc.x), dst[1] = cuda_from_f32<BF>(acc.y);
    dst[2] = cuda_from_f32<BF>(acc.z), dst[3] = cuda_from_f32<BF>(acc.w);
    if (col == 0 && p.lse) p.lse[bi * p.l_sb + hq * p.l_sh + tok * p.l_sr] = poison ? NAN : lse;
}

// The fused split combine of the decode shape (pieces with counters): every CTA of a (sequence,
// head, m-block) has stored its slot's partial rows; the last to arrive combines the num_splits
// slots of those rows into out and lse (the rule of cuda_combine.cu) and re-arms the counter, so
// no combine launch follows. sW: 16 x num_splits + 16 floats of shared memory (free K/V stages).
template <int BF, int DV>
__device__ __forceinline__ void attn_combine_slots(const cuda_attn_params &p, const cuda_seqlens &sl, int bi,
                                                   int head, int hk, int g, int row0, int rows, int m_block,
                                                   bool poison, float *sW, int tid) {
    __shared__ int last;
    __threadfence(); // this thread's partial stores are visible device-wide before the CTA counts itself
    __syncthreads();
    if (tid == 0) {
        int32_t *c = p.counts + ((int64_t)bi * p.grid_heads + head) * p.num_m_blocks + m_block;
        last = atomicAdd(c, 1) == p.num_splits - 1;
        if (last) *c = 0; // every slot has arrived: armed for the next forward
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int W = p.num_splits, warp = tid >> 5, lane = tid & 31, nrow = min(16, rows - row0);
    float *sLse = sW + 16 * W;
    for (int r = warp; r < nrow; r += ATTN_WARPS) { // slot weights of row r (one warp a row)
        int i, hq;
        attn_row(p, row0 + r, g, head, hk, &i, &hq);
        const float *lp = p.lacc + bi * p.la_sb + hq * p.la_sh + (sl.q_offset + i) * p.la_sr;
        for (int s = lane; s < W; s += 32) sW[r * W + s] = __ldcg(lp + s * p.la_ss);
        const float lse = cuda_slot_weights(sW + r * W, W, lane);
        if (lane == 0) sLse[r] = lse;
    }
    __syncthreads();
    // 4 columns a thread (dv is a multiple of 8; the workspace partials' rows are 16-byte aligned).
    const int dv4 = p.dv / 4;
    for (int idx = tid; idx < nrow * dv4; idx += ATTN_THREADS) {
        int r = idx / dv4, col = idx % dv4 * 4, i, hq;
        attn_row(p, row0 + r, g, head, hk, &i, &hq);
        const int64_t tok = sl.q_offset + i;
        const float *op = p.oacc + bi * p.oa_sb + hq * p.oa_sh + tok * p.oa_sr + col;
        const float4 acc = cuda_weighted_slots(sW + r * W, (const float4 *)op, p.oa_ss / 4, W);
        attn_store_combined<BF>(p, bi, tok, hq, col, acc, sLse[r], poison);
    }
}

// The same combine for a cluster of W = num_splits <= 8 CTAs, the slots of one (sequence, head) with
// one m-block (p.cluster, sm_90+): each CTA has left its slot's partial rows in its own shared
// memory (sPart: 16 x DV, sPl: 16 lse); after a cluster barrier every CTA weighs the W slots of each
// row (read through distributed shared memory) and combines its share of the columns, the groups of
// 4 columns r, r + W, ... (r its rank). No partials go through global memory, no fence, no
// counter. A second barrier keeps every CTA's shared memory alive until the others have read it.
// sW: 16 x W + 16 floats, apart from sPart.
template <int BF, int DV>
__device__ __forceinline__ void attn_combine_cluster(const cuda_attn_params &p, const cuda_seqlens &sl, int bi,
                                                     int head, int hk, int g, int rows, bool poison, const float *sPart,
                                                     const float *sPl, float *sW, int tid) {
    cuda_cluster_sync();
    const int W = p.num_splits, rank = (int)cuda_cluster_rank(), warp = tid >> 5, lane = tid & 31;
    const int nrow = min(16, rows);
    float *sLse = sW + 16 * W;
    for (int r = warp; r < nrow; r += ATTN_WARPS) { // slot weights of row r (one warp a row)
        if (lane < W) sW[r * W + lane] = cuda_cluster_load(cuda_cluster_addr(sPl + r, (uint32_t)lane));
        const float lse = cuda_slot_weights(sW + r * W, W, lane);
        if (lane == 0) sLse[r] = lse;
    }
    __syncthreads();
    const int groups = (p.dv / 4 - rank + W - 1) / W; // this CTA's 4-column groups of a row
    for (int idx = tid; idx < nrow * groups; idx += ATTN_THREADS) {
        const int r = idx / groups, col = (rank + idx % groups * W) * 4;
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int s = 0; s < W; s++) {
            const float w = sW[r * W + s];
            if (w < 0.0f) continue; // a slot without keys for this row
            const float4 x = cuda_cluster_load4(cuda_cluster_addr(sPart + r * DV + col, (uint32_t)s));
            acc.x += w * x.x, acc.y += w * x.y, acc.z += w * x.z, acc.w += w * x.w;
        }
        int i, hq;
        attn_row(p, r, g, head, hk, &i, &hq);
        attn_store_combined<BF>(p, bi, sl.q_offset + i, hq, col, acc, sLse[r], poison);
    }
    cuda_cluster_sync();
}

// BF: 1 bf16, 0 fp16, 2 e4m3 inputs (fp16 mma on converted tiles, bf16 out).
template <int HD, int DV, int BF, int MT, int WSPLIT>
__global__ void __launch_bounds__(ATTN_THREADS) attn_fwd_kernel(const __grid_constant__ cuda_attn_params p) {
    static_assert(!WSPLIT || MT == 1, "the decode shape has one m16 tile");
    constexpr bool FP8 = BF == 2;
    constexpr int CBF = BF == 1, OBF = BF != 0; // the mma's 16-bit type, the output's
    constexpr int BM = attn_block_m(MT, WSPLIT), BN = attn_block_n(HD, MT, WSPLIT), NST = attn_stages(HD, WSPLIT);
    constexpr int KST = FP8 ? 1 : NST; // 16-bit K/V tiles: one per stage, or the one converted tile
    constexpr int KW = WSPLIT ? BN / ATTN_WARPS : BN; // keys of a tile each warp computes
    constexpr int QS = HD + 8, VS = DV + 8;
    constexpr int KSTEPS = HD / 16, NTW = KW / 8, PSW = KW / 16, OTILES = DV / 8, R2 = 2 * MT;
    constexpr bool Q_REGS = HD <= 128 && MT == 1; // more Q fragments would crowd out the accumulators
    constexpr int KV_UNROLL = WSPLIT ? 4 : 1; // 8 and more spilled (d 128, ptxas 13.0)
    constexpr size_t KV_BYTES = attn_kv_bytes(HD, DV, MT, WSPLIT, FP8);
    static_assert(NTW % 2 == 0 && PSW >= 1 && OTILES % 2 == 0, "tile shape");
    static_assert(!WSPLIT || (size_t)ATTN_WARPS * 16 * DV * 4 + 2 * 64 * 4 <= KV_BYTES,
                  "the decode merge fits in the K/V region");
    static_assert(!WSPLIT || (16 * 256 + 16) * 4 <= KV_BYTES, "the fused combine's weights fit too");
    static_assert(!WSPLIT || DV % 32 == 0, "the decode merge takes 32 columns a step");
    static_assert(!WSPLIT || (size_t)(ATTN_WARPS + 1) * 16 * DV * 4 + 3 * 64 * 4 <= KV_BYTES,
                  "the cluster combine's partial rows fit beside the merge");

    extern __shared__ uint4 attn_smem[];
    uint16_t *sQ = (uint16_t *)attn_smem;
    uint16_t *sK = sQ + BM * QS;
    uint16_t *sV = sK + KST * BN * QS;
    uint8_t  *fK = (uint8_t *)(sV + KST * BN * VS); // e4m3 staging stages (FP8)
    uint8_t  *fV = fK + (FP8 ? NST * BN * (HD + 16) : 0);
    int32_t  *sPage = (int32_t *)(fV + (FP8 ? NST * BN * (DV + 16) : 0)); // page ids: tile u in row u % NST

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    int bi, head, split, m_block;
    attn_cta_coords(p, blockIdx.x, &bi, &head, &split, &m_block);

    // Before any return: warp-collective, and every CTA reaches the same verdict.
    const bool poison = !cuda_meta_ok(p.meta);

    const cuda_seqlens sl = cuda_seqlens_get(p.seq, bi);
    const int g = p.pack_gqa ? p.g : 1;
    const int seqlen_q = max(sl.seqlen_q, 0), seqlen_k = max(sl.seqlen_k, 0);
    const int rows = seqlen_q * g, row0 = m_block * BM;
    if (row0 >= rows) return;
    const int hk = p.pack_gqa ? head : (int)fa3c_fastdiv_quo(p.fd_g, (unsigned)head);

    int64_t slo, shi;
    int kmin, kmax;
    if (!attn_cta_keys(p, bi, seqlen_q, seqlen_k, row0, BM, rows, BN, split, &slo, &shi, &kmin, &kmax)) {
        attn_store_empty(p, sl, bi, head, hk, g, row0, rows, BM, split, tid);
        return;
    }

    const int n_tiles = kmax > kmin ? (kmax - kmin + BN - 1) / BN : 0;

    // Prologue. Paged: Q and the page ids of tiles 0 .. NST - 1, waited for (the K/V addresses need
    // them). Then K/V of tiles 0 .. NST - 2, one cp.async group each (Q rides in tile 0's group when
    // not paged), with the page ids of tiles NST .. 2 NST - 3 in the last group (into the page rows
    // just read, hence the barrier); the loop's first wait then needs tile 0 only. An empty range
    // (a slot with no keys) skips Q.
    if constexpr (FP8) {
        if (n_tiles > 0) attn_load_q_e4m3<HD, BM>(p, sl, bi, head, hk, g, row0, rows, sQ, tid);
    } else {
        if (n_tiles > 0) attn_load_q<HD, BF, BM>(p, sl, bi, head, hk, g, row0, rows, sQ, tid);
    }
    if (p.page_table) {
        for (int u = 0; u < NST && u < n_tiles; u++) attn_issue_pages<BN>(p, sl, kmin + u * BN, kmax, sPage + u * BN, tid);
        cuda_cp_async_commit();
        cuda_cp_async_wait_all();
        __syncthreads();
    }
#pragma unroll
    for (int u = 0; u < NST - 1; u++) {
        if (u < n_tiles) {
            if constexpr (FP8)
                attn_issue_kv_e4m3<HD, DV, BN>(p, sl, hk, kmin + u * BN, kmax, sPage + u * BN, fK + u * BN * (HD + 16),
                                               fV + u * BN * (DV + 16), tid);
            else
                attn_issue_kv<HD, DV, BN, KV_UNROLL>(p, sl, hk, kmin + u * BN, kmax, sPage + u * BN, sK + u * BN * QS,
                                                     sV + u * BN * VS, tid);
        }
        if (u == NST - 2 && p.page_table && n_tiles > NST) {
            __syncthreads();
            for (int w = NST; w < 2 * NST - 2 && w < n_tiles; w++)
                attn_issue_pages<BN>(p, sl, kmin + w * BN, kmax, sPage + (w % NST) * BN, tid);
        }
        cuda_cp_async_commit();
    }

    // This thread's rows (accumulator rows lane/4 and lane/4 + 8 of each of its m16 tiles), worked
    // out while the first tiles are in flight (a batch-1 decode CTA is one such latency chain).
    const int wrow0 = WSPLIT ? 0 : warp * 16 * MT, kw0 = WSPLIT ? warp * KW : 0;
    int rlo[R2], rhi[R2], rtok[R2], rhq[R2];
    bool rvalid[R2];
#pragma unroll
    for (int e = 0; e < R2; e++)
        attn_row_keys(p, row0 + wrow0 + (e >> 1) * 16 + (lane >> 2) + 8 * (e & 1), rows, g, head, hk, seqlen_q,
                      seqlen_k, slo, shi, &rvalid[e], &rtok[e], &rhq[e], &rlo[e], &rhi[e]);
    int flo, fhi;
    attn_warp_keys<R2>(rvalid, rlo, rhi, &flo, &fhi);
    const bool warp_active = row0 + wrow0 < rows;
    const float qk_ds = FP8 ? cuda_descale(p.q_ds, p.qd_sb, p.qd_sh, bi, hk) * cuda_descale(p.k_ds, p.kd_sb, p.kd_sh, bi, hk)
                            : 1.0f;
    cuda_cp_async_wait<NST - 2>();
    __syncthreads();

    uint32_t qf[Q_REGS ? KSTEPS : 1][4];
    if constexpr (Q_REGS) {
        if (warp_active) {
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++)
                cuda_ldmatrix_x4(qf[kk], cuda_smem_addr(sQ + (wrow0 + (lane & 15)) * QS + kk * 16 + (lane >> 4) * 8));
        }
    }

    float oacc[MT][OTILES][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int ot = 0; ot < OTILES; ot++) oacc[mt][ot][0] = oacc[mt][ot][1] = oacc[mt][ot][2] = oacc[mt][ot][3] = 0.0f;
    float m[R2], l[R2];
#pragma unroll
    for (int e = 0; e < R2; e++) m[e] = -INFINITY, l[e] = 0.0f;

    // Iteration t computes tile t. Its K/V and the page ids of tile t + NST - 1 came in the group
    // committed NST - 1 iterations earlier; this iteration issues K/V of tile t + NST - 1 and the
    // page ids of tile t + 2 NST - 2 into stages / rows whose previous tiles are consumed.
    for (int t = 0; t < n_tiles; t++) {
        cuda_cp_async_wait<NST - 2>();
        __syncthreads();
        const int u = t + NST - 1, w = t + 2 * NST - 2;
        if (u < n_tiles) {
            if constexpr (FP8)
                attn_issue_kv_e4m3<HD, DV, BN>(p, sl, hk, kmin + u * BN, kmax, sPage + (u % NST) * BN,
                                               fK + (u % NST) * BN * (HD + 16), fV + (u % NST) * BN * (DV + 16), tid);
            else
                attn_issue_kv<HD, DV, BN, KV_UNROLL>(p, sl, hk, kmin + u * BN, kmax, sPage + (u % NST) * BN,
                                                     sK + (u % NST) * BN * QS, sV + (u % NST) * BN * VS, tid);
        }
        if (p.page_table && w < n_tiles) attn_issue_pages<BN>(p, sl, kmin + w * BN, kmax, sPage + (w % NST) * BN, tid);
        cuda_cp_async_commit();
        if constexpr (FP8) { // tile t's e4m3 rows -> the 16-bit tile (every warp is past tile t - 1)
            attn_convert_kv_e4m3<HD, DV, BN>(fK + (t % NST) * BN * (HD + 16), fV + (t % NST) * BN * (DV + 16), sK, sV,
                                             tid);
            __syncthreads();
        }
        if (!warp_active) continue;

        const int k0 = kmin + t * BN + kw0; // this warp's first key
        const uint16_t *sKt = sK + (t % KST) * BN * QS + kw0 * QS, *sVt = sV + (t % KST) * BN * VS + kw0 * VS;

        float s[MT][NTW][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NTW; nt++) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                if constexpr (Q_REGS) {
                    a[mt][0] = qf[kk][0], a[mt][1] = qf[kk][1], a[mt][2] = qf[kk][2], a[mt][3] = qf[kk][3];
                } else {
                    cuda_ldmatrix_x4(a[mt], cuda_smem_addr(sQ + (wrow0 + mt * 16 + (lane & 15)) * QS + kk * 16 +
                                                           (lane >> 4) * 8));
                }
            }
#pragma unroll
            for (int n2 = 0; n2 < NTW / 2; n2++) {
                uint32_t b[4];
                cuda_ldmatrix_x4(b, cuda_smem_addr(sKt + (n2 * 16 + (lane & 7) + (lane >> 4) * 8) * QS + kk * 16 +
                                                   ((lane >> 3) & 1) * 8));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    cuda_mma16816<CBF>(s[mt][2 * n2], a[mt], b[0], b[1]);
                    cuda_mma16816<CBF>(s[mt][2 * n2 + 1], a[mt], b[2], b[3]);
                }
            }
        }

        const bool mask_free = k0 >= flo && k0 + KW <= fhi;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            float corr[2];
            attn_softmax_scores<NTW>(p, s[mt], &m[2 * mt], &l[2 * mt], &rlo[2 * mt], &rhi[2 * mt], k0, mask_free, lane,
                                     corr, qk_ds);
            attn_rescale<OTILES>(oacc[mt], corr);
        }

        // O += P V, P rounded to the input dtype.
#pragma unroll
        for (int ks = 0; ks < PSW; ks++) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                a[mt][0] = cuda_pack2<CBF>(s[mt][2 * ks][0], s[mt][2 * ks][1]);
                a[mt][1] = cuda_pack2<CBF>(s[mt][2 * ks][2], s[mt][2 * ks][3]);
                a[mt][2] = cuda_pack2<CBF>(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
                a[mt][3] = cuda_pack2<CBF>(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
            }
#pragma unroll
            for (int o2 = 0; o2 < OTILES / 2; o2++) {
                uint32_t b[4];
                cuda_ldmatrix_x4_trans(b, cuda_smem_addr(sVt + (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * VS +
                                                         o2 * 16 + (lane >> 4) * 8));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    cuda_mma16816<CBF>(oacc[mt][2 * o2], a[mt], b[0], b[1]);
                    cuda_mma16816<CBF>(oacc[mt][2 * o2 + 1], a[mt], b[2], b[3]);
                }
            }
        }
    }
    cuda_cp_async_wait_all();

#pragma unroll
    for (int ri = 0; ri < R2; ri++) {
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 1);
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 2);
    }
    const bool sink = p.sinks && split == 0;
    const float v_ds = FP8 ? cuda_descale(p.v_ds, p.vd_sb, p.vd_sh, bi, hk) : 1.0f;
    if constexpr (!WSPLIT) {
        if (!warp_active) return;
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
            attn_store_tile<OBF, OTILES>(p, bi, sl.q_offset, split, &rvalid[2 * mt], &rtok[2 * mt], &rhq[2 * mt],
                                         oacc[mt], &m[2 * mt], &l[2 * mt], v_ds, sink, poison, lane, 0, true);
    } else {
        // Merge the 4 warps' states of the 16 rows (each saw a quarter of every key tile) in the
        // K/V stages, then each thread finishes some (row, column) elements.
        __syncthreads(); // every warp is done reading the last tile
        float *sO = (float *)sK, *sM = sO + ATTN_WARPS * 16 * DV, *sL = sM + ATTN_WARPS * 16;
        float *sPart = sL + ATTN_WARPS * 16, *sPl = sPart + 16 * DV; // the cluster combine's partial rows
#pragma unroll
        for (int ri = 0; ri < 2; ri++) {
            int row = (lane >> 2) + 8 * ri;
            if ((lane & 3) == 0) {
                sM[warp * 16 + row] = m[ri];
                sL[warp * 16 + row] = l[ri];
            }
#pragma unroll
            for (int ot = 0; ot < OTILES; ot++) {
                int col = ot * 8 + 2 * (lane & 3);
                sO[(warp * 16 + row) * DV + col] = oacc[0][ot][2 * ri];
                sO[(warp * 16 + row) * DV + col + 1] = oacc[0][ot][2 * ri + 1];
            }
        }
        __syncthreads();
        // 8 threads a row, each 4 columns of every 32 (conflict-free 16-byte reads, coalesced
        // stores): the row's merge factors are computed once, not once a column.
        const int row = tid >> 3, R = row0 + row;
        if (R < rows) {
            float M = -INFINITY, L = 0.0f, c[ATTN_WARPS];
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; w++) M = fmaxf(M, sM[w * 16 + row]);
            const float m_use = M == -INFINITY ? 0.0f : M;
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; w++) {
                c[w] = cuda_exp2(sM[w * 16 + row] - m_use);
                L += sL[w * 16 + row] * c[w];
            }
            int i, hq;
            attn_row(p, R, g, head, hk, &i, &hq);
            if (sink) {
                const float f = attn_add_sink(p, hq, &M, &L);
#pragma unroll
                for (int w = 0; w < ATTN_WARPS; w++) c[w] *= f;
            }
#pragma unroll
            for (int k = 0; k < DV / 32; k++) {
                const int col = k * 32 + (tid & 7) * 4;
                if (col >= p.dv) break;
                float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int w = 0; w < ATTN_WARPS; w++) {
                    const float4 x = *(const float4 *)&sO[(w * 16 + row) * DV + col];
                    o[0] += x.x * c[w], o[1] += x.y * c[w], o[2] += x.z * c[w], o[3] += x.w * c[w];
                }
                if (p.cluster) { // the slot's partial row stays here for the cluster's combine
                    const float inv = L > 0.0f ? v_ds / L : 0.0f;
                    *(float4 *)&sPart[row * DV + col] = make_float4(o[0] * inv, o[1] * inv, o[2] * inv, o[3] * inv);
                    if (col == 0) sPl[row] = attn_row_lse(M, L);
                } else {
                    attn_store_row<OBF, 4>(p, bi, sl.q_offset + i, hq, split, col, o, M, L, v_ds, col == 0, poison);
                }
            }
        }
        if (p.cluster)
            attn_combine_cluster<OBF, DV>(p, sl, bi, head, hk, g, rows, poison, sPart, sPl, sO, tid);
        else if (p.counts)
            attn_combine_slots<OBF, DV>(p, sl, bi, head, hk, g, row0, rows, m_block, poison, (float *)sK, tid);
    }
}

// The kernel's launch of `blocks` CTAs in clusters of n along x (attr: its one attribute's storage).
template <int HD, int DV, int BF, int MT, int WSPLIT>
static cudaLaunchConfig_t attn_cluster_config(unsigned blocks, unsigned n, cudaStream_t stream,
                                              cudaLaunchAttribute *attr) {
    attr->id = cudaLaunchAttributeClusterDimension;
    attr->val.clusterDim.x = n;
    attr->val.clusterDim.y = attr->val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(blocks);
    cfg.blockDim = dim3(ATTN_THREADS);
    cfg.dynamicSmemBytes = attn_smem_bytes(HD, DV, MT, WSPLIT, BF == 2);
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cfg;
}

template <int HD, int DV, int BF, int MT, int WSPLIT>
static cudaError_t attn_launch(const cuda_attn_params *p, const cuda_tma *tma, cudaStream_t stream) {
    (void)tma;
    int64_t blocks = (int64_t)p->b * p->grid_heads * p->num_splits * p->num_m_blocks;
    if (blocks == 0) return cudaSuccess;
    if (p->cluster) { // num_m_blocks 1: the num_splits slots of a (sequence, head) are consecutive CTAs
        cudaLaunchAttribute attr;
        const cudaLaunchConfig_t cfg =
            attn_cluster_config<HD, DV, BF, MT, WSPLIT>((unsigned)blocks, (unsigned)p->num_splits, stream, &attr);
        return cudaLaunchKernelEx(&cfg, attn_fwd_kernel<HD, DV, BF, MT, WSPLIT>, *p);
    }
    attn_fwd_kernel<HD, DV, BF, MT, WSPLIT>
        <<<(unsigned)blocks, ATTN_THREADS, attn_smem_bytes(HD, DV, MT, WSPLIT, BF == 2), stream>>>(*p);
    return cudaGetLastError();
}

template <int HD, int DV, int BF, int MT, int WSPLIT>
static cudaError_t attn_prepare(void) {
    return cudaFuncSetAttribute((const void *)attn_fwd_kernel<HD, DV, BF, MT, WSPLIT>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attn_smem_bytes(HD, DV, MT, WSPLIT, BF == 2));
}

template <int HD, int DV, int BF, int MT, int WSPLIT>
static cudaError_t attn_occupancy(int *ctas_per_sm) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(ctas_per_sm, attn_fwd_kernel<HD, DV, BF, MT, WSPLIT>,
                                                         ATTN_THREADS, attn_smem_bytes(HD, DV, MT, WSPLIT, BF == 2));
}

// The decode shape (sm_90+ only; the caller checks): the largest power of two up to the portable 8
// CTAs of which one cluster can be resident. (Clusters of 16, non-portable, made batch 1 / 1k
// slower than the counter combine: 10.8 vs 10.2 us on H100; clusters of 2 gained 1-3% at batch 16.)
template <int HD, int DV, int BF, int MT, int WSPLIT>
static cudaError_t attn_cluster_max(int *ctas) {
    const void *f = (const void *)attn_fwd_kernel<HD, DV, BF, MT, WSPLIT>;
    *ctas = 0;
    for (int n = 8; n >= 2 && *ctas == 0; n /= 2) {
        cudaLaunchAttribute attr;
        const cudaLaunchConfig_t cfg = attn_cluster_config<HD, DV, BF, MT, WSPLIT>((unsigned)n, (unsigned)n, 0, &attr);
        int clusters = 0;
        if (cudaOccupancyMaxActiveClusters(&clusters, f, &cfg) != cudaSuccess) {
            (void)cudaGetLastError(); // this size is refused: try the next
            continue;
        }
        if (clusters > 0) *ctas = n;
    }
    return cudaSuccess;
}

#define ATTN_KERNEL_ENTRY(HD, DV, BF, MT, WSPLIT, NAME)                                                               \
    {                                                                                                                \
        HD, DV, BF == 1, BF == 2, WSPLIT, 0, 0, 0, NAME, attn_smem_bytes(HD, DV, MT, WSPLIT, BF == 2), attn_block_m(MT, WSPLIT),                    \
            attn_block_n(HD, MT, WSPLIT), attn_launch<HD, DV, BF, MT, WSPLIT>, attn_prepare<HD, DV, BF, MT, WSPLIT>, \
            attn_occupancy<HD, DV, BF, MT, WSPLIT>, WSPLIT ? attn_cluster_max<HD, DV, BF, MT, WSPLIT> : NULL         \
    }

// The e4m3 kernels of a (head-dim bucket, dv bucket): many rows and decode.
#define ATTN_KERNEL_SET_E4M3(HD, DV, MT, NAME)                                                                        \
    ATTN_KERNEL_ENTRY(HD, DV, 2, MT, 0, "mma_sm80_" NAME "_e4m3"),                                                   \
        ATTN_KERNEL_ENTRY(HD, DV, 2, 1, 1, "mma_sm80_" NAME "_decode_e4m3")

// The kernels of one (head-dim bucket, dv bucket): many rows (MT m16 tiles a warp) and decode, bf16 and f16.
#define ATTN_KERNEL_SET(HD, DV, MT, NAME)                                                                             \
    ATTN_KERNEL_ENTRY(HD, DV, 1, MT, 0, "mma_sm80_" NAME "_bf16"),                                                   \
        ATTN_KERNEL_ENTRY(HD, DV, 0, MT, 0, "mma_sm80_" NAME "_f16"),                                                \
        ATTN_KERNEL_ENTRY(HD, DV, 1, 1, 1, "mma_sm80_" NAME "_decode_bf16"),                                         \
        ATTN_KERNEL_ENTRY(HD, DV, 0, 1, 1, "mma_sm80_" NAME "_decode_f16")

#endif // FA3C_CUDA_ATTN_CUH
