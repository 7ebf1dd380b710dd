// MLA absorbed attention on Hopper (sm_90a): scores q.k + qv.v with d <= 64 (the rope part) and
// dv = 256 or 512 (the latent), as DeepSeek serves it through FA3 (many q heads on one kv head,
// decode and speculative verify). The latent V takes part in both GEMMs, so a key tile is one
// 576-wide row per key: [K (64) | V (dv)] stored as contiguous 64-column blocks, and S = [q | qv]
// [K | V]^T is a single wgmma contraction over 1 + dv / 64 blocks. Runs every feature of the
// wgmma kernel (masks, softcap, sinks, paging with any page size, varlen, pack-GQA, splits)
// except q rotary.
//
// One CTA = 3 warpgroups on BM = 64 query rows of one (sequence, head -- kv head when packed --,
// split slot); the 64 x dv fp32 O does not fit one warpgroup, so the two consumers split it by
// columns:
//   producer  (warpgroup 0) gathers Q and qv once (cp.async; packed rows are not a box) and
//             streams NST stages of K and V rows (BN = 64 keys) with bulk tensor copies, or
//             cp.async gathers for pages the copy engine cannot take and tail tiles with
//             rows of the tensor past their keys;
//   softmax   (warpgroup 1) S = [q | qv] [K | V]^T (wgmma from shared memory), the online
//             softmax in registers; P (rounded to the input dtype) and the rows' rescale factors go
//             to shared memory;
//   both      (warpgroups 1 and 2) then rescale their half of O's columns and add P V, both
//             operands from shared memory; warpgroup 2's P.V runs under warpgroup 1's next S.
// A stage is refilled once both consumers released it. The P hand-over uses named barriers.
//
// Shapes: q (b, s_q, h, d) / (total_q, h, d); qv (b, s_q, h, dv) / (total_q, h, dv); k (cache
// rows, h_k, d), v (cache rows, h_k, dv); out (b, s_q, h, dv) / (total_q, h, dv); lse and split
// partials as in cuda_attn.cuh.
#include "cuda/cuda_sm90_tile.cuh"

#define MLA_THREADS 384
#define MLA_PRODUCER_REGS 72
#define MLA_BM 64
#define MLA_BN 64
#define MLA_D 64 // the q / k column block (d <= 64, zero-padded)

// K/V stages: as many as fit beside Q (73.7 KB for dv 512; a stage is as large).
__host__ __device__ constexpr int mla_stages(int dv) { return dv > 256 ? 2 : 3; }
// Column blocks of a query row and of a key row: q / k, then dv / 64 of qv / v.
__host__ __device__ constexpr int mla_blocks(int dv) { return 1 + dv / 64; }

// Byte offsets in the (1024-aligned) shared memory: Q, the K/V stages, P (64 x 64, one column
// block), the rescale factors, the final row max and sum, 2 rows of page ids, the mbarriers
// (full Q; full, empty per stage).
__host__ __device__ constexpr int mla_off_kv(int dv) { return MLA_BM * 128 * mla_blocks(dv); }
__host__ __device__ constexpr int mla_stage_bytes(int dv) { return MLA_BN * 128 * mla_blocks(dv); }
__host__ __device__ constexpr int mla_off_p(int dv) { return mla_off_kv(dv) + mla_stages(dv) * mla_stage_bytes(dv); }
__host__ __device__ constexpr int mla_off_rows(int dv) { return mla_off_p(dv) + MLA_BM * 128; }
__host__ __device__ constexpr int mla_off_pages(int dv) { return mla_off_rows(dv) + 3 * MLA_BM * 4; }
__host__ __device__ constexpr int mla_off_bars(int dv) { return mla_off_pages(dv) + 2 * MLA_BN * 4; }
// + 1024: the dynamic shared memory base is aligned up to the swizzle atom inside the kernel.
// dv 512: 231,720 bytes of the 232,448 an H100 block may have.
__host__ __device__ constexpr size_t mla_smem_bytes(int dv) {
    return (size_t)mla_off_bars(dv) + (1 + 2 * mla_stages(dv)) * 8 + 1024;
}

// Warpgroup 1 stores P (its scores after the softmax, as m16n8k16 A fragments) into the K-major
// 64 x 64 tile at sP: row r, keys 8j .. 8j + 7 are chunk j ^ (r % 8) of row r.
__device__ __forceinline__ void mla_store_p(uint8_t *sP, const uint32_t (&pa)[MLA_BN / 16][4], int r0, int lane) {
#pragma unroll
    for (int ks = 0; ks < MLA_BN / 16; ks++)
#pragma unroll
        for (int h = 0; h < 2; h++) { // keys 16 ks + 8 h ..: chunk 2 ks + h
            const int j = 2 * ks + h;
            *(uint32_t *)(sP + r0 * 128 + ((j ^ (r0 & 7)) << 4) + (lane & 3) * 4) = pa[ks][2 * h];
            *(uint32_t *)(sP + (r0 + 8) * 128 + ((j ^ ((r0 + 8) & 7)) << 4) + (lane & 3) * 4) = pa[ks][2 * h + 1];
        }
}

template <int DV, int BF>
__global__ void __launch_bounds__(MLA_THREADS, 1)
    attn_mla_kernel(const __grid_constant__ cuda_attn_params p, const __grid_constant__ cuda_tma tma) {
#if FA3C_SM90A
    constexpr int NST = mla_stages(DV), BM = MLA_BM, BN = MLA_BN, HALF = DV / 2;
    constexpr int STAGE = mla_stage_bytes(DV);
    extern __shared__ uint8_t mla_smem_raw[];
    const uint32_t smem = (cuda_smem_addr(mla_smem_raw) + 1023) & ~1023u;
    uint8_t *smem_gen = mla_smem_raw + (smem - cuda_smem_addr(mla_smem_raw));
    const uint32_t sQ = smem, sKV = smem + mla_off_kv(DV), sP = smem + mla_off_p(DV);
    uint8_t *sPg = smem_gen + mla_off_p(DV);
    float *sCorr = (float *)(smem_gen + mla_off_rows(DV)), *sM = sCorr + BM, *sL = sM + BM;
    int32_t *sPage = (int32_t *)(smem_gen + mla_off_pages(DV));
    const uint32_t full_q = smem + mla_off_bars(DV), full = full_q + 8, empty = full + 8 * NST;

    const int tid = threadIdx.x, lane = tid & 31;
    const bool poison = !cuda_meta_ok(p.meta); // warp-collective, before any return
    sm90_item w;
    const int kind = sm90_item_get<BM, BN>(p, tma, blockIdx.x, &w);
    if (kind == SM90_ITEM_NONE) return;
    if (kind == SM90_ITEM_EMPTY_SPLIT) {
        if (tid < ATTN_THREADS) attn_store_empty(p, w.sl, w.bi, w.head, w.hk, w.g, w.row0, w.rows, BM, w.split, tid);
        return;
    }
    const cuda_seqlens &sl = w.sl;
    const int bi = w.bi, head = w.head, split = w.split, hk = w.hk, g = w.g, rows = w.rows, row0 = w.row0;
    const int kmin = w.kmin, kmax = w.kmax, n_tiles = w.n_tiles;

    if (tid == 0) {
        sm90_mbar_init(full_q, 256); // q and qv: one arrival per producer thread each
        for (int s = 0; s < NST; s++) {
            sm90_mbar_init(full + 8 * s, 256); // K and V tiles: likewise
            sm90_mbar_init(empty + 8 * s, 8);  // one arrival per consumer warp
        }
    }
    __syncthreads();

    if (tid < 128) { // ---------------------------------------------------------------- producer
        sm90_regs_dec<MLA_PRODUCER_REGS>();
        if (n_tiles == 0) return;
        constexpr int UD = sm90_gather_unroll(MLA_PRODUCER_REGS, MLA_D), UV = sm90_gather_unroll(MLA_PRODUCER_REGS, DV);
        sm90_load_q<MLA_D, BM, UD>(p, sl, (const uint16_t *)p.q, p.q_sb, p.q_sr, p.q_sh, p.d, bi, head, hk, g, row0,
                                   rows, sQ, tid);
        sm90_mbar_arrive_cp_async(full_q);
        sm90_load_q<DV, BM, UV>(p, sl, (const uint16_t *)p.qv, p.qv_sb, p.qv_sr, p.qv_sh, p.dv, bi, head, hk, g, row0,
                                rows, sQ + BM * 128, tid);
        sm90_mbar_arrive_cp_async(full_q);
        const uint16_t *kb = (const uint16_t *)p.k + (int64_t)hk * p.k_sh;
        const uint16_t *vb = (const uint16_t *)p.v + (int64_t)hk * p.v_sh;
        for (int t = 0; t < n_tiles; t++) {
            const int st = t % NST, k0 = kmin + t * BN;
            int32_t *pages = sPage + (t & 1) * BN;
            if (p.page_table) sm90_stage_pages<BN>(p, sl, k0, kmax, pages, tid);
            const sm90_tile_copy tc = sm90_plan_tile<BN>(p, sl, tma, pages, k0, kmax, hk, tid);
            sm90_mbar_wait(empty + 8 * st, ((uint32_t)(t / NST) & 1) ^ 1);
            const uint32_t dst = sKV + st * STAGE;
            sm90_issue_tile<MLA_D, BN, UD>(p, sl, &tma.k, kb, p.k_sb, p.k_sr, p.d, k0, kmax, pages, tc, dst, full + 8 * st,
                                           tid);
            sm90_issue_tile<DV, BN, UV>(p, sl, &tma.v, vb, p.v_sb, p.v_sr, p.dv, k0, kmax, pages, tc,
                                        dst + BN * 128, full + 8 * st, tid);
        }
        cuda_cp_async_wait_all();
        return;
    }

    // ------------------------------------------------------------------------------- consumers
    sm90_regs_inc<sm90_consumer_regs(MLA_PRODUCER_REGS, 2)>();
    // The warpgroup index through a shuffle: provably warp-uniform, so that ptxas does not take the
    // two warpgroups' wgmma paths for divergent code (and serialise them).
    const int ctid = tid - 128, cwg = __shfl_sync(0xffffffffu, ctid >> 7, 0), cwarp = (ctid >> 5) & 3;
    const int r0 = cwarp * 16 + (lane >> 2); // this thread's rows r0 and r0 + 8 of the tile
    int rlo[2], rhi[2], rtok[2], rhq[2];
    bool rvalid[2];
#pragma unroll
    for (int e = 0; e < 2; e++)
        attn_row_keys(p, row0 + r0 + 8 * e, rows, g, head, hk, w.seqlen_q, w.seqlen_k, w.slo, w.shi, &rvalid[e], &rtok[e],
                      &rhq[e], &rlo[e], &rhi[e]);

    float o[HALF / 2]; // O[:, cwg * dv/2 ..] of this thread's rows
#pragma unroll
    for (int i = 0; i < HALF / 2; i++) o[i] = 0.0f;
    float (&o4)[HALF / 8][4] = *reinterpret_cast<float (*)[HALF / 8][4]>(&o);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    // Tile t: warpgroup 1 computes S_t, its softmax and P_t while warpgroup 2 still adds
    // P_{t-1} V_{t-1}; at the first named barrier warpgroup 2 is done with P_{t-1}, so warpgroup 1
    // writes P_t and the rows' rescale factors to shared memory; after the second both rescale
    // their O columns and add P_t V_t, P from shared memory. Both warpgroups run one code path for
    // P.V, and only warpgroup 1's S GEMM sits in a branch: ptxas then keeps the wgmma pipelined.
    int flo = 0, fhi = 0;
    if (cwg == 0) attn_warp_keys<2>(rvalid, rlo, rhi, &flo, &fhi);
    if (n_tiles > 0 && cwg == 0) sm90_mbar_wait(full_q, 0);
    for (int t = 0; t < n_tiles; t++) {
        const int st = t % NST;
        sm90_mbar_wait(full + 8 * st, (uint32_t)(t / NST) & 1);
        float corr[2];
        uint32_t pa[BN / 16][4];
        if (cwg == 0) {
            float s[BN / 2];
            float (&s4)[BN / 8][4] = *reinterpret_cast<float (*)[BN / 8][4]>(&s);
            sm90_wgmma_fence();
            sm90_qk<MLA_D + DV, BM, BN, BF>(s, sQ, sKV + st * STAGE);
            sm90_wgmma_commit();
            sm90_wgmma_wait<0>();
            sm90_fence_regs(s);
            const int k0 = kmin + t * BN;
            attn_softmax_scores<BN / 8>(p, s4, m, l, rlo, rhi, k0, k0 >= flo && k0 + BN <= fhi, lane, corr, 1.0f);
            sm90_pack_p<BN, BF>(s4, pa);
        }
        sm90_named_sync(3, 256);
        if (cwg == 0) {
            mla_store_p(sPg, pa, r0, lane);
            if ((lane & 3) == 0) sCorr[r0] = corr[0], sCorr[r0 + 8] = corr[1];
            sm90_fence_async_smem();
        }
        sm90_named_sync(4, 256);
        if (cwg == 1) corr[0] = sCorr[r0], corr[1] = sCorr[r0 + 8];
        attn_rescale<HALF / 8>(o4, corr);
        sm90_fence_regs(o);
        sm90_wgmma_fence();
        const uint32_t v_base = sKV + st * STAGE + BN * 128 + cwg * (HALF / 64) * BN * 128;
#pragma unroll
        for (int ks = 0; ks < BN / 16; ks++)
            sm90_wgmma_ss<BF, HALF, 1>(o, sm90_desc(sP + ks * 32, 16, 1024),
                                       sm90_desc(v_base + ks * 2048, BN * 128, 1024), 1);
        sm90_wgmma_commit();
        sm90_wgmma_wait<0>();
        sm90_fence_regs(o);
        __syncwarp();
        if (lane == 0) sm90_mbar_arrive(empty + 8 * st);
    }
    if (cwg == 0) { // the row states, for warpgroup 2's rows
#pragma unroll
        for (int e = 0; e < 2; e++) {
            l[e] += __shfl_xor_sync(0xffffffffu, l[e], 1);
            l[e] += __shfl_xor_sync(0xffffffffu, l[e], 2);
        }
        if ((lane & 3) == 0) {
            sM[r0] = m[0], sM[r0 + 8] = m[1];
            sL[r0] = l[0], sL[r0 + 8] = l[1];
        }
    }
    sm90_named_sync(2, 256);
    if (cwg == 1) {
#pragma unroll
        for (int e = 0; e < 2; e++) m[e] = sM[r0 + 8 * e], l[e] = sL[r0 + 8 * e];
    }
    attn_store_tile<BF, HALF / 8>(p, bi, sl.q_offset, split, rvalid, rtok, rhq, o4, m, l, 1.0f, p.sinks && split == 0,
                                  poison, lane, cwg * HALF, cwg == 0);
#endif
}

template <int DV, int BF>
static cudaError_t mla_launch(const cuda_attn_params *p, const cuda_tma *tma, cudaStream_t stream) {
    int64_t blocks = (int64_t)p->b * p->grid_heads * p->num_splits * p->num_m_blocks;
    if (blocks == 0) return cudaSuccess;
    attn_mla_kernel<DV, BF><<<(unsigned)blocks, MLA_THREADS, mla_smem_bytes(DV), stream>>>(*p, *tma);
    return cudaGetLastError();
}

template <int DV, int BF> static cudaError_t mla_prepare(void) {
    return cudaFuncSetAttribute((const void *)attn_mla_kernel<DV, BF>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)mla_smem_bytes(DV));
}

template <int DV, int BF> static cudaError_t mla_occupancy(int *ctas_per_sm) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(ctas_per_sm, attn_mla_kernel<DV, BF>, MLA_THREADS,
                                                         mla_smem_bytes(DV));
}

#define MLA_KERNEL(DV, BF, NAME)                                                                                      \
    {MLA_D, DV, BF, 0, 0, 1, 1, 0, NAME, mla_smem_bytes(DV), MLA_BM, MLA_BN, mla_launch<DV, BF>, mla_prepare<DV, BF>,  \
     mla_occupancy<DV, BF>}

extern const cuda_attn_kernel fa3c_cuda_attn_mla[CUDA_ATTN_MLA_KERNELS] = {
    MLA_KERNEL(512, 1, "wgmma_sm90_mla_dv512_bf16"),
    MLA_KERNEL(512, 0, "wgmma_sm90_mla_dv512_f16"),
    MLA_KERNEL(256, 1, "wgmma_sm90_mla_dv256_bf16"),
    MLA_KERNEL(256, 0, "wgmma_sm90_mla_dv256_f16"),
};
