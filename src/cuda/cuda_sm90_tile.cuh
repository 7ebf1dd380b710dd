// Tile movement and the two GEMMs of the Hopper kernels (cuda_attn_sm90.cu, cuda_attn_mla.cu):
// the producer's cp.async gathers into 128-byte-swizzled column blocks, S = Q K^T from shared
// memory and O += P V with P from registers. The layout is cuda_sm90.cuh's: a tile of R rows is
// stored as column blocks of 64 elements (R x 128 bytes each), one after the other.
#ifndef FA3C_CUDA_SM90_TILE_CUH
#define FA3C_CUDA_SM90_TILE_CUH

#include "cuda/cuda_attn.cuh"
#include "cuda/cuda_sm90.cuh"

// setmaxnreg split of the registers of a CTA of a producer and ncw consumer warpgroups (each thread
// starts at the launch cap, 65536 / threads rounded down to 8): the producer keeps P, each consumer
// gets the rest. 2 consumer warpgroups: 384 x 168, (504 - P) / 2 (P = 40 -> 232, 56 -> 224,
// 72 -> 216, 88 -> 208); 3: 512 x 128, (512 - P) / 3 (P = 32 -> 160). All multiples of 8.
__host__ __device__ constexpr int sm90_consumer_regs(int producer_regs, int ncw) {
    return (65536 / (128 * (ncw + 1)) / 8 * 8 * (ncw + 1) - producer_regs) / ncw;
}

// Byte offset of 16-byte chunk c of row r in a tile of `rows` rows.
__device__ __forceinline__ uint32_t sm90_swizzle(int r, int c, int rows) {
    return (uint32_t)((c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

// A work item of the wgmma kernels (attn_cta_coords' id): coordinates, lengths and keys, which
// producer and consumers derive alike (so both agree on every item's tile count).
struct sm90_item {
    cuda_seqlens sl;
    int bi, head, split, hk, g, seqlen_q, seqlen_k, rows, row0, kmin, kmax, n_tiles;
    int64_t slo, shi;
};
enum { SM90_ITEM_NONE = 0, SM90_ITEM_RUN = 1, SM90_ITEM_EMPTY_SPLIT = 2 };

// NONE: the m-block starts past the sequence's rows; EMPTY_SPLIT: an exact split slot the
// sequence does not use (empty partials); RUN: keys [kmin, kmax) in n_tiles tiles of BN (0: out
// 0, lse -inf). Paged bulk copies move whole boxes of a page, so tiles then start on a box boundary
// (the keys added before kmin are below every row's window: masked).
template <int BM, int BN>
__device__ __forceinline__ int sm90_item_get(const cuda_attn_params &p, const cuda_tma &tma, unsigned id,
                                             sm90_item *w) {
    int m_block;
    attn_cta_coords(p, id, &w->bi, &w->head, &w->split, &m_block);
    w->sl = cuda_seqlens_get(p.seq, w->bi);
    w->g = p.pack_gqa ? p.g : 1;
    w->seqlen_q = max(w->sl.seqlen_q, 0);
    w->seqlen_k = max(w->sl.seqlen_k, 0);
    w->rows = w->seqlen_q * w->g;
    w->row0 = m_block * BM;
    if (w->row0 >= w->rows) return SM90_ITEM_NONE;
    w->hk = p.pack_gqa ? w->head : (int)fa3c_fastdiv_quo(p.fd_g, (unsigned)w->head);
    if (!attn_cta_keys(p, w->bi, w->seqlen_q, w->seqlen_k, w->row0, BM, w->rows, BN, w->split, &w->slo,
                       &w->shi, &w->kmin, &w->kmax))
        return SM90_ITEM_EMPTY_SPLIT;
    if (tma.on && tma.paged_rows) w->kmin -= (w->sl.k_offset + w->kmin) & (tma.paged_rows - 1);
    w->n_tiles = w->kmax > w->kmin ? (w->kmax - w->kmin + BN - 1) / BN : 0;
    return SM90_ITEM_RUN;
}

// Keys per tile of the wgmma kernels' wide-tile twins (cuda_attn_sm90.cu): 16-bit, FA3's 176 for
// d = 128 and 80 for d = 256; e4m3 d = 128: 256 (FA3: 224, which V^T's 64-key blocks do not
// divide), d = 256: FA3's 128. The e4m3 ones run a tile at a time (sm90_overlap); on H100 the
// 256-key tile against the 192-key one with overlap: 1.07-1.08x at 2k-4k, 0.98-1.07x at 8k-16k.
__host__ __device__ constexpr int sm90_block_n_wide(int hd, int fp8) {
    return fp8 ? (hd <= 128 ? 256 : 128) : hd <= 128 ? 176 : 80;
}

// Rows at a time of the producer's cp.async gathers of rows of hd elements, as far as its registers
// (setmaxnreg's pregs) allow.
__host__ __device__ constexpr int sm90_gather_unroll(int pregs, int hd) { return pregs <= 56 ? 1 : hd >= 256 ? 2 : 4; }

// The producer's cp.async gathers walk rows: thread t copies chunk t % 8 of every 64-column block
// of rows t / 8, t / 8 + 16, ..., so a row's address is computed once for all its chunks (the
// page lookup, the packed row's (token, head)), and a warp instruction moves 4 rows x 128 bytes.
// One row's share (chunk q of each of the HD / 64 column blocks): from src (the row at chunk q;
// valid: the row exists) into row r of a swizzled tile of `rows` rows at dst, columns >= width
// zero-filled (base: any readable address for the zero fills).
template <int HD>
__device__ __forceinline__ void sm90_copy_row(uint32_t dst, int rows, int r, int q, const uint16_t *src,
                                              const uint16_t *base, bool valid, int width) {
    const uint32_t d = dst + sm90_swizzle(r, q, rows);
#pragma unroll
    for (int cb = 0; cb < HD / 64; cb++) {
        const bool vc = valid && cb * 64 + q * 8 < width;
        cuda_cp_async16(d + cb * rows * 128, vc ? src + cb * 64 : base, vc);
    }
}

// Producer: the BM query-side rows row0 .. of a tile from `base` (q, or qv: (b, s_q, h, x) with
// strides sb, sr, sh; packed rows R map to (token, head) as attn_row does); rows >= rows and
// columns >= width zero-filled. HD: the tile's width (a multiple of 64); UNROLL: sm90_gather_unroll.
template <int HD, int BM, int UNROLL>
__device__ __forceinline__ void sm90_load_q(const cuda_attn_params &p, const cuda_seqlens &sl, const uint16_t *base,
                                            int64_t sb, int64_t sr, int64_t sh, int width, int bi, int head, int hk,
                                            int g, int row0, int rows, uint32_t dst, int ptid) {
    const int q = ptid & 7;
#pragma unroll UNROLL
    for (int r = ptid >> 3; r < BM; r += 16) {
        const int R = row0 + r;
        const bool v = R < rows;
        int i = 0, hq = 0;
        if (v) attn_row(p, R, g, head, hk, &i, &hq);
        const uint16_t *src = base + (int64_t)bi * sb + (int64_t)(sl.q_offset + i) * sr + (int64_t)hq * sh + q * 8;
        sm90_copy_row<HD>(dst, BM, r, q, src, base, v, width);
    }
}

// Producer: K or V rows of keys k0 .. k0 + BN - 1 of kv head hk (rows >= kmax, columns >= width
// zero-filled). base, sb, sr: the tensor at the head and its page-or-batch and row strides.
template <int HD, int BN, int UNROLL>
__device__ __forceinline__ void sm90_load_kv(const cuda_attn_params &p, const cuda_seqlens &sl, const uint16_t *base,
                                             int64_t sb, int64_t sr, int width, int k0, int kmax,
                                             const int32_t *pages, uint32_t dst, int ptid) {
    const int q = ptid & 7;
#pragma unroll UNROLL
    for (int rr = ptid >> 3; rr < BN; rr += 16) {
        const int j = k0 + rr;
        const bool v = j < kmax;
        int x, y;
        attn_cache_pos(p, sl, j, p.page_table && v ? pages[rr] : 0, &x, &y);
        sm90_copy_row<HD>(dst, BN, rr, q, base + (int64_t)x * sb + (int64_t)y * sr + q * 8, base, v, width);
    }
}

// Producer: the page ids of keys k0 .. k0 + BN - 1 (0 past kmax) into pages[BN], then a barrier of
// the producer warpgroup (named barrier 1), after which every producer thread may read them.
template <int BN>
__device__ __forceinline__ void sm90_stage_pages(const cuda_attn_params &p, const cuda_seqlens &sl, int k0, int kmax,
                                                 int32_t *pages, int ptid) {
    for (int rr = ptid; rr < BN; rr += 128) {
        const int j = k0 + rr, r = sl.k_offset + j;
        pages[rr] = j < kmax ? p.page_table[(int64_t)sl.k_batch * p.pt_sb +
                                            (p.page_shift >= 0 ? r >> p.page_shift : r / p.page_size)]
                             : 0;
    }
    sm90_named_sync(1, 128);
}

// Producer: whether the K/V tile of keys k0 .. k0 + bn - 1 of an item with keys below kmax may be
// a bulk copy: whole inside the keys, or (not paged) its rows past kmax past the tensor's end,
// which the copy engine reads as zeros, as a gather would (so a sequence's last tile is a bulk copy
// wherever no other rows follow its keys: a batched cache without seqused_k, the last sequence of
// a varlen batch). Rows past kmax must be zeros or finite: P.V multiplies them by P = 0.
__device__ __forceinline__ bool sm90_bulk_tile(const cuda_tma &tma, const cuda_seqlens &sl, int k0, int bn,
                                               int kmax) {
    return tma.on && (k0 + bn <= kmax || (!tma.paged_rows && (int64_t)sl.k_offset + kmax == tma.rows));
}

// Producer: box coordinates c (dims 1..3 of the K and V tensor maps) of the bulk run that starts
// at key k0 + off (a whole box of one page, or of contiguous rows).
__device__ __forceinline__ void sm90_run_coords(const cuda_attn_params &p, const cuda_seqlens &sl, const cuda_tma &tma,
                                                const int32_t *pages, int k0, int off, int hk, int (&c)[3]) {
    const int r = sl.k_offset + k0 + off;
    const int row = tma.paged_rows ? (p.page_shift >= 0 ? r & (p.page_size - 1) : r % p.page_size) : r;
    c[0] = tma.heads_first ? hk : row;
    c[1] = tma.heads_first ? row : hk;
    c[2] = tma.paged_rows ? pages[off] : tma.varlen ? 0 : sl.k_batch;
}

// How the producer copies the K and V tiles of keys k0 .. k0 + BN - 1 (the same for both): bulk,
// tensor copies in runs of `box` rows (run r issued by producer thread r, at coordinates c), else
// cp.async gathers (sm90_bulk_tile). pages: the tile's page ids, staged.
struct sm90_tile_copy {
    bool bulk;
    int  box, c[3];
};
template <int BN>
__device__ __forceinline__ sm90_tile_copy sm90_plan_tile(const cuda_attn_params &p, const cuda_seqlens &sl,
                                                         const cuda_tma &tma, const int32_t *pages, int k0, int kmax,
                                                         int hk, int ptid) {
    sm90_tile_copy tc = {sm90_bulk_tile(tma, sl, k0, BN, kmax), tma.paged_rows ? tma.paged_rows : BN, {0, 0, 0}};
    if (tc.bulk && ptid < BN / tc.box) sm90_run_coords(p, sl, tma, pages, k0, ptid * tc.box, hk, tc.c);
    return tc;
}

// Producer: one K or V tile (keys k0 .. k0 + BN - 1, HD columns) into dst as planned (tc),
// completing `full` with one arrival per producer thread; bulk: thread 0 announces the tile's
// bytes before the copies.
template <int HD, int BN, int UNROLL>
__device__ __forceinline__ void sm90_issue_tile(const cuda_attn_params &p, const cuda_seqlens &sl,
                                                const CUtensorMap *map, const uint16_t *base, int64_t sb, int64_t sr,
                                                int width, int k0, int kmax, const int32_t *pages,
                                                const sm90_tile_copy &tc, uint32_t dst, uint32_t full, int ptid) {
    if (!tc.bulk) {
        sm90_load_kv<HD, BN, UNROLL>(p, sl, base, sb, sr, width, k0, kmax, pages, dst, ptid);
        sm90_mbar_arrive_cp_async(full);
        return;
    }
    if (ptid == 0) sm90_mbar_arrive_tx(full, BN * HD * 2);
    else sm90_mbar_arrive(full);
    __syncwarp();
    if (ptid < BN / tc.box)
#pragma unroll
        for (int cb = 0; cb < HD / 64; cb++)
            sm90_tma_load_4d(dst + cb * BN * 128 + ptid * tc.box * 128, map, cb * 64, tc.c[0], tc.c[1], tc.c[2], full);
}

// BF (the operand type of the kernels' GEMMs): 1 bf16, 0 fp16, 2 e4m3. A wgmma k-step covers 32
// bytes of a 128-byte swizzled row: 16 elements of 16 bits, or 32 of e4m3.
#define SM90_PV_STEPS(BN, BF) ((BN) / ((BF) == 2 ? 32 : 16))

// Issues S = Q K^T for a warpgroup's 64 rows (q_base, in a tile of BM rows) and the BN keys of
// k_base: one wgmma a 32-byte k-step (the first overwrites s).
template <int HD, int BM, int BN, int BF>
__device__ __forceinline__ void sm90_qk(float (&s)[BN / 2], uint32_t q_base, uint32_t k_base) {
#pragma unroll
    for (int kk = 0; kk < HD * (BF == 2 ? 1 : 2) / 32; kk++) {
        const uint32_t kof = (kk & 3) * 32; // k-step within a column block
        const uint64_t da = sm90_desc(q_base + (kk >> 2) * BM * 128 + kof, 16, 1024);
        const uint64_t db = sm90_desc(k_base + (kk >> 2) * BN * 128 + kof, 16, 1024);
        if constexpr (BF == 2) sm90_wgmma_ss_e4m3<BN>(s, da, db, kk > 0);
        else sm90_wgmma_ss<BF, BN>(s, da, db, kk > 0);
    }
}

// Issues O += P V over the BN keys of v_base, one wgmma a k-step: 16-bit V is MN-major (column
// blocks of 64 dv BN * 128 bytes apart, a k-step 16 rows); e4m3 V is V^T, K-major (DV rows of
// BN = 128 keys in the 128-byte swizzle, or blocks of DV rows of 64 keys in the 64-byte one, a
// k-step 32 bytes), its keys permuted as sm90_pack_p lays out P.
template <int DV, int BN, int BF>
__device__ __forceinline__ void sm90_pv(float (&o)[DV / 2], const uint32_t (&pa)[SM90_PV_STEPS(BN, BF)][4],
                                        uint32_t v_base) {
#pragma unroll
    for (int ks = 0; ks < SM90_PV_STEPS(BN, BF); ks++) {
        if constexpr (BF == 2 && BN == 128) sm90_wgmma_rs_e4m3<DV>(o, pa[ks], sm90_desc(v_base + ks * 32, 16, 1024), 1);
        else if constexpr (BF == 2) // block ks / 2 of 64 keys, its second k-step 32 bytes in
            sm90_wgmma_rs_e4m3<DV>(o, pa[ks], sm90_desc_sw64(v_base + (ks >> 1) * DV * 64 + (ks & 1) * 32, 512), 1);
        else sm90_wgmma_rs<BF, DV>(o, pa[ks], sm90_desc(v_base + ks * 2048, BN * 128, 1024), 1);
    }
}

// 4 floats -> 4 e4m3 bytes, a first (lowest).
__device__ __forceinline__ uint32_t sm90_pack4_e4m3(float a, float b, float c, float d) {
    uint16_t lo, hi;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(lo) : "f"(b), "f"(a));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(hi) : "f"(d), "f"(c));
    return (uint32_t)lo | (uint32_t)hi << 16;
}

// The A fragments of P (a warpgroup's scores, BN keys, after the softmax) in the GEMM's type.
// 16-bit: the m16n8k16 layout. e4m3 (k32: register 0 rows r, positions 4q .. 4q + 3; 1 rows
// r + 8; 2 and 3 the same at positions 16 + 4q ..; q = lane % 4): a thread holds the scores of
// keys 2q, 2q + 1, 8 + 2q, 9 + 2q (+ 16) of each 32, which fill its positions 4q .. 4q + 3
// (+ 16) as they are -- V's keys are permuted to match (sm90_transpose_v_e4m3).
template <int BN, int BF>
__device__ __forceinline__ void sm90_pack_p(const float (&s4)[BN / 8][4], uint32_t (&pa)[SM90_PV_STEPS(BN, BF)][4]) {
#pragma unroll
    for (int ks = 0; ks < SM90_PV_STEPS(BN, BF); ks++) {
        if constexpr (BF == 2) {
            const float(*g)[4] = &s4[4 * ks];
            pa[ks][0] = sm90_pack4_e4m3(g[0][0], g[0][1], g[1][0], g[1][1]);
            pa[ks][1] = sm90_pack4_e4m3(g[0][2], g[0][3], g[1][2], g[1][3]);
            pa[ks][2] = sm90_pack4_e4m3(g[2][0], g[2][1], g[3][0], g[3][1]);
            pa[ks][3] = sm90_pack4_e4m3(g[2][2], g[2][3], g[3][2], g[3][3]);
        } else {
            pa[ks][0] = cuda_pack2<BF>(s4[2 * ks][0], s4[2 * ks][1]);
            pa[ks][1] = cuda_pack2<BF>(s4[2 * ks][2], s4[2 * ks][3]);
            pa[ks][2] = cuda_pack2<BF>(s4[2 * ks + 1][0], s4[2 * ks + 1][1]);
            pa[ks][3] = cuda_pack2<BF>(s4[2 * ks + 1][2], s4[2 * ks + 1][3]);
        }
    }
}

#endif // FA3C_CUDA_SM90_TILE_CUH
