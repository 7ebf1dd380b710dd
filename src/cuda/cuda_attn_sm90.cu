// The Hopper attention forward (sm_90a): wgmma tensor cores fed by a producer warpgroup, for
// prefill-shaped work (more than 16 packed query rows a sequence) with d = dv = 64, 128 or 256,
// fp16, bf16 and e4m3 (see below). Everything else stays on the mma.sync kernels (cuda_attn.cuh), which also serve every
// other GPU; this kernel takes all of their run-time features but q rotary: masks, softcap, sinks,
// paging with any page size, varlen, pack-GQA, split slots (exact or pieces).
//
// Work items: BM = 128 query rows (192 for 16-bit d = 64) of one (sequence, head, split slot).
// Persistent: a grid of as many CTAs as fit on the device (the host's cuda_attn_params.ctas), so
// that one item's epilogue overlaps the next one's loads. Where every item has the same keys (no
// causal / local / chunk mask, one length for all sequences) CTA c works on items c, c + gridDim.x,
// ...; items of different lengths would let the CTAs drift apart in the id order and lose the L2
// sharing of a head's K/V, so there each CTA takes the next item in id order from a device-wide
// counter when it starts one (cuda_attn_params.sched). A CTA = 1 + BM / 64 warpgroups:
//   producer   (warpgroup 0, 40 to 88 registers) copies the Q tile and NST stages of K and V
//              tiles (BN = 128 keys, 64 for d = 256; wider, see below) into 128-byte-swizzled
//              shared memory: bulk tensor copies (TMA) of contiguous rows, cp.async gathers of
//              paged rows, packed GQA rows and tail tiles with other rows of the tensor past
//              their keys. Each copy completes on an mbarrier (full), and a stage is
//              refilled once its consumers released it (empty). For a paged cache the page ids of
//              a tile are staged in shared memory first: any page size, one lookup per key row.
//   consumers  (warpgroups 1 .. BM / 64, 160 to 232) own 64 rows each: S = Q K^T with
//              wgmma from shared memory (64 x 128 fp32 in registers), the online softmax of
//              cuda_attn.cuh in registers, then O += P V with P from registers and V from shared
//              memory (B operand MN-major, so V needs no transpose). S of tile t is issued with
//              P.V of tile t - 1, so a warpgroup's softmax runs under its own P.V, and
//              one's softmax also overlaps the others' wgmma (sm90_pingpong; e4m3 wide tiles
//              run a tile at a time: sm90_overlap).
// e4m3 inputs (BF = 2): d = 128 and 256: Q is stored as an 8-bit tile, K copied straight into its
// ring stage (its rows already are one), V staged (bulk tensor copies, or cp.async gathers as
// above) and transposed (8-bit wgmma operands are K-major only), and the GEMMs run on e4m3 (k32)
// with P scaled by 2^8 and rounded to e4m3, as FA3 does. d = 64: K and V are staged and
// converted -- exactly -- into fp16 tiles, so the GEMMs run in fp16 and P stays fp16. Both: fp32
// accumulation, q * k descales scale the scores, the v descale O, and the output is bf16.
//
// Shapes as in cuda_attn.cuh: q (b, s_q, h, d) / (total_q, h, d); k, v cache rows; out
// (b, s_q, h, dv) / (total_q, h, dv); lse (b, h, s_q) / (h, total_q); split partials.
#include "cuda/cuda_sm90_tile.cuh"

// Query rows per work item: 128 (2 consumer warpgroups), or FA3's 192 (3) for 16-bit d = 64, whose
// small GEMMs leave a 2-warpgroup CTA waiting on its softmax more than on the tensor cores.
__host__ __device__ constexpr int sm90_block_m(int hd, int fp8) { return hd <= 64 && !fp8 ? 192 : 128; }
__host__ __device__ constexpr int sm90_threads(int bm) { return 128 + 2 * bm; }

// Keys per tile (BN): 128, or 64 for d = 256, whose 64 x 256 fp32 O takes 128 registers a thread.
// Problems without paging or a local / chunk mask also have kernels with wider tiles, FA3's (H100
// tile_size_fwd_sm90) for 16 bits: 176 for d = 128, 80 for d = 256; e4m3: 256 and 128. A wider
// tile spreads each tile's fixed costs -- the row max and sum shuffles, O's rescale, the barrier
// hand-overs -- over more keys; a causal problem computes more masked scores on its diagonal tiles
// (so it takes them only for long keys: the host's wide_min_keys), and page sizes (powers of two)
// would not divide it into whole bulk copies.
// (sm90_block_n_wide: cuda_sm90_tile.cuh)
__host__ __device__ constexpr int sm90_block_n(int hd) { return hd <= 128 ? 128 : 64; }
// e4m3 with d = 128 or 256 stays e4m3 in the ring (FP8 "native": wgmma's 8-bit k32 form, V
// transposed by the producer); d = 64 is converted to fp16 tiles. Bytes of a ring element:
__host__ __device__ constexpr bool sm90_native(int hd, int fp8) { return fp8 && hd >= 128; }
__host__ __device__ constexpr int sm90_es(int hd, int fp8) { return sm90_native(hd, fp8) ? 1 : 2; }
// Ping-pong: the consumer warpgroups take turns (0, 1, .., 0) issuing their GEMMs, so that one's
// softmax runs under another's GEMMs rather than all exponentiating at once while the tensor cores
// idle. Where the exponentials weigh most against the GEMMs (FA3's choice): 16-bit d <= 128 and
// e4m3 d >= 128. Named barrier SM90_BAR_TURN + w is warpgroup w's turn (1 is the producer's).
__host__ __device__ constexpr bool sm90_pingpong(int hd, int fp8) { return fp8 ? hd >= 128 : hd <= 128; }
#define SM90_BAR_TURN 2
// Issuing S_t = Q K_t^T with O += P_{t-1} V_{t-1} (the overlap above) holds S, P and O in registers
// at once: the e4m3 wide tiles would need 128 + 32 + 64 (d = 128, 256 keys) or 64 + 16 + 128
// (d = 256, 128 keys) of their 224 (ptxas serialises the wgmma then), so these kernels run one
// tile at a time, as FA3 does where registers are short; the ping-pong still hides one
// warpgroup's softmax under the other's GEMMs.
__host__ __device__ constexpr bool sm90_overlap(int hd, int fp8, int bn) { return !(fp8 && bn * hd > 192 * 128); }
// K/V stages: as many as fit beside the Q tile (and e4m3 staging) in 227 KB.
__host__ __device__ constexpr int sm90_stages(int hd, int fp8, int bn) {
    return hd <= 64 || sm90_native(hd, fp8) ? (bn * hd > 128 * 128 ? (bn * hd > 192 * 128 ? 2 : 3) : 4) : 2;
}

// Producer registers (sm90_consumer_regs): the fewest at which neither side spills (ptxas 13.0),
// but where the consumers need more: 232 for the 16-bit wide tiles at d = 128, 224 for the e4m3
// ones, 160 each for 3 consumer warpgroups -- the producer then spills a little (28 to 60 bytes).
__host__ __device__ constexpr int sm90_producer_regs(int hd, int fp8, int bn, int bm) {
    return bm > 128 ? 32 : bn == sm90_block_n_wide(hd, fp8) ? (hd <= 128 && !fp8 ? 40 : 56) : hd <= 128 && !fp8 ? 88 : 72;
}

// e4m3 staging buffers (a V tile of rows as in memory, and a K tile before it for d = 64): two, so
// that the copies of tile t + 1 fly while tile t is converted.
__host__ __device__ constexpr int sm90_staging(int hd, int fp8) { return fp8 ? 2 : 0; }
__host__ __device__ constexpr int sm90_staging_bytes(int hd, int fp8, int bn) {
    return (sm90_native(hd, fp8) ? 1 : 2) * bn * hd;
}

// Byte offsets in the (1024-aligned) shared memory: Q, K stages, V stages, e4m3 staging, 2 rows
// of page ids, then the mbarriers (sm90_ring).
__host__ __device__ constexpr int sm90_tile_bytes(int rows, int hd, int es) { return rows * hd * es; }
__host__ __device__ constexpr int sm90_off_k(int hd, int fp8) {
    return sm90_tile_bytes(sm90_block_m(hd, fp8), hd, sm90_es(hd, fp8));
}
__host__ __device__ constexpr int sm90_off_v(int hd, int fp8, int bn) {
    return sm90_off_k(hd, fp8) + sm90_stages(hd, fp8, bn) * sm90_tile_bytes(bn, hd, sm90_es(hd, fp8));
}
__host__ __device__ constexpr int sm90_off_staging(int hd, int fp8, int bn) {
    return sm90_off_v(hd, fp8, bn) + sm90_stages(hd, fp8, bn) * sm90_tile_bytes(bn, hd, sm90_es(hd, fp8));
}
__host__ __device__ constexpr int sm90_off_pages(int hd, int fp8, int bn) {
    return sm90_off_staging(hd, fp8, bn) + sm90_staging(hd, fp8) * sm90_staging_bytes(hd, fp8, bn);
}
__host__ __device__ constexpr int sm90_off_bars(int hd, int fp8, int bn) {
    return sm90_off_pages(hd, fp8, bn) + 2 * bn * 4;
}
// + 1024: the dynamic shared memory base is aligned up to the swizzle atom inside the kernel.
// e4m3 d 256 with 128-key tiles: 231,528 bytes of the 232,448 an H100 block may have; 16-bit d 256
// with 80-key tiles 231,120.
__host__ __device__ constexpr int sm90_barriers(int hd, int fp8, int bn) {
    return 2 + 4 * sm90_stages(hd, fp8, bn) + sm90_staging(hd, fp8);
}
// The mbarriers, then the 2 work-item id slots of sm90_give_id (8 bytes).
__host__ __device__ constexpr size_t sm90_smem_bytes(int hd, int fp8, int bn) {
    return (size_t)sm90_off_bars(hd, fp8, bn) + sm90_barriers(hd, fp8, bn) * 8 + 8 + 1024;
}

// 16 e4m3 values (chunk c of an e4m3 row) -> fp16 chunks 2c and 2c + 1 of row r of a swizzled
// 16-bit tile of `rows` rows (generic address `tile`).
__device__ __forceinline__ void sm90_store_e4m3x16(uint8_t *tile, int r, int c, int rows, uint4 raw) {
    attn_e4m3x16_to_f16x16(raw, (uint4 *)(tile + sm90_swizzle(r, 2 * c, rows)),
                           (uint4 *)(tile + sm90_swizzle(r, 2 * c + 1, rows)));
}

// Producer, e4m3: K or V rows of keys k0 .. k0 + BN - 1 into dst[BN][HD] (unswizzled; rows >=
// kmax, columns >= width zero-filled). base, sb, sr: the tensor at the head and its strides.
template <int HD, int BN>
__device__ __forceinline__ void sm90_gather_e4m3(const cuda_attn_params &p, const cuda_seqlens &sl, const uint8_t *base,
                                                 int64_t sb, int64_t sr, int width, int k0, int kmax,
                                                 const int32_t *pages, uint8_t *dst, int ptid) {
    constexpr int CPR = HD / 16;
#pragma unroll 2
    for (int idx = ptid; idx < BN * CPR; idx += 128) {
        int rr = idx / CPR, c = idx % CPR, j = k0 + rr, x, y;
        bool v = j < kmax;
        attn_cache_pos(p, sl, j, p.page_table && v ? pages[rr] : 0, &x, &y);
        v = v && c * 16 < width;
        const uint8_t *src = v ? base + (int64_t)x * sb + (int64_t)y * sr + c * 16 : base;
        cuda_cp_async16(cuda_smem_addr(dst + rr * HD + c * 16), src, v);
    }
}

// Producer, e4m3 d = 64: a staged tile (BN x HD e4m3) -> the swizzled fp16 tile.
template <int HD, int BN>
__device__ __forceinline__ void sm90_convert_e4m3(const uint8_t *src, uint8_t *tile, int ptid) {
    constexpr int CPR = HD / 16;
#pragma unroll 2
    for (int idx = ptid; idx < BN * CPR; idx += 128) {
        const int r = idx / CPR, c = idx % CPR;
        sm90_store_e4m3x16(tile, r, c, BN, *(const uint4 *)(src + r * HD + c * 16));
    }
}

// Byte offset of 16-byte chunk c (keys 16c ..) of row d of the e4m3 V^T tile (DV rows of BN keys):
// BN = 128, one 128-byte swizzled row; else blocks of 64 keys (DV rows of 64 bytes in the 64-byte
// swizzle: chunk c ^ ((d >> 1) & 3), 8-row atoms of 512 bytes), one after the other.
template <int DV, int BN> __device__ __forceinline__ uint32_t sm90_vt_offset(int d, int c) {
    static_assert(BN == 128 || BN % 64 == 0, "V^T rows of 128 keys, or blocks of 64");
    if constexpr (BN == 128) return sm90_swizzle(d, c, DV);
    else return (uint32_t)((c >> 2) * DV * 64 + d * 64 + (((c & 3) ^ ((d >> 1) & 3)) << 4));
}

// Producer, e4m3 kept: a staged V tile (BN keys x DV e4m3, at src: swizzled as a 16-bit tile of
// DV / 2 columns) -> V^T, the K-major B operand of P.V (DV rows of BN keys, sm90_vt_offset), its
// keys permuted within each 16 (sm90_pack_p: position 4q + j holds key 2q + (j & 1) + 8 (j >> 1)),
// so that a thread's S accumulators are its P fragment. A warp moves 16 keys x 32 columns at a
// time: a transposing 16-bit matrix load gives lane (p, q) = (lane / 4, lane % 4) the column pair
// (2p, 2p + 1) of keys 2q, 2q + 1 (of each 8), which is half of V^T rows 2p and 2p + 1 at
// positions 4q .. 4q + 3 -- two byte permutes with the next 8 keys' word make them whole -- and a
// 16-bit matrix store writes those rows. Each stored matrix takes row 2p for p < 4 and 2p + 1 for
// p >= 4 (or the other way), so that its 8 rows fall into 8 different 16-byte bank groups.
// Warp w moves the key chunks c = w + 4j (16 keys each); with those the addresses step by constants.
template <int DV, int BN> __device__ __forceinline__ void sm90_transpose_v_e4m3(uint32_t src, uint32_t dst, int ptid) {
    const int lane = ptid & 31, w = ptid >> 5, m = lane >> 3, r = lane & 7;
    const uint32_t sel0 = lane < 16 ? 0x6420u : 0x7531u, sel1 = lane < 16 ? 0x7531u : 0x6420u;
    // This lane's addresses: source row r of matrix m (keys + 8 (m & 1), columns + 16 (m >> 1));
    // destination row r of matrix m (column group m >> 1, the other parity for odd m).
    const int key = 16 * w + 8 * (m & 1) + r, dcol = 16 * (m >> 1);
    const int drow = dcol + 2 * r + ((m & 1) ? r < 4 : r >= 4);
#pragma unroll 1
    for (int g = 0; g < DV / 32; g++) { // 32 columns
        const int col = 32 * g + dcol;
        const uint32_t s = src + (col >> 7) * BN * 128 + key * 128 + ((((col >> 4) & 7) ^ r) << 4);
        const uint32_t d = dst + sm90_vt_offset<DV, BN>(32 * g + drow, w);
#pragma unroll
        for (int j = 0; j < BN / 64; j++) { // chunk w + 4j: 64 j keys on, the same bank groups
            uint32_t v[4], t[4];
            sm90_ldsm_x4_t(s + j * 64 * 128, v);
            t[0] = __byte_perm(v[0], v[1], sel0);
            t[1] = __byte_perm(v[0], v[1], sel1);
            t[2] = __byte_perm(v[2], v[3], sel0);
            t[3] = __byte_perm(v[2], v[3], sel1);
            sm90_stsm_x4(BN == 128 ? d ^ (64u * j) : d + j * DV * 64, t); // (sm90_vt_offset of chunk w + 4j)
        }
    }
}

// The shared-memory ring of the kernels: byte addresses of the tiles and the mbarriers ([full Q]
// [empty Q][full K x NST][full V x NST][empty K x NST][empty V x NST][full staging x STG], 8 bytes
// each). Tile i of the CTA (counted over all its work items) uses stage i % NST in phase
// (i / NST) & 1, and page-id row i & 1; its Q tile j (items with keys) phase j & 1.
struct sm90_ring {
    uint32_t q, k, v, full_q, empty_q, full_k, full_v, empty_k, empty_v, full_stg;
    uint8_t *gen; // the generic address of q (the start of the ring)
    int32_t *pages;
};

// A persistent CTA's work items (attn_cta_coords' ids): the first is blockIdx.x, the next one
// after `id` id + gridDim.x, or with a dynamic schedule (p.sched) the counter's next, so that CTAs
// finishing early take more items. The producer claims the next item once it has issued the last
// copies of one (FA3's moment: a tile-ring's time before the consumers finish it, so a CTA does not
// hold on to an item another CTA could start sooner) and hands its id over in shared memory,
// ids[u & 1] for the u-th hand-over, under named barriers: warp 0 of the producer waits until
// consumer warpgroup w has taken the previous id (SM90_BAR_ID + 2w + 1, with w's 128 threads),
// writes the id, signals w (SM90_BAR_ID + 2w), then the producer's own warps read it after named
// barrier 1. Each warpgroup waits for its signal alone, so the consumers' ping-pong is not forced
// into step. ids >= the item count end the loops.
// compute-sanitizer racecheck reports these slots as hazards: it does so for the protocol alone
// in a 40-line kernel, in this form and in FA3's (one barrier pair for all consumers), since it
// does not take bar.arrive -> bar.sync as ordering; the static schedule hands nothing over, so
// race checks of the kernel run with FA3C_CUDA_CTAS=0 or on unmasked problems.
#define SM90_BAR_ID 5 // after the producer's 1 and the ping-pong turns 2 .. 4
template <int NCW>
__device__ __forceinline__ unsigned sm90_give_id(const cuda_attn_params &p, unsigned *ids, unsigned u, int ptid) {
    if (ptid < 32) {
        unsigned next = 0;
        if (ptid == 0) next = gridDim.x + atomicAdd(p.sched, 1u);
#pragma unroll
        for (int w = 0; w < NCW; w++) sm90_named_sync(SM90_BAR_ID + 2 * w + 1, 160);
        if (ptid == 0) ids[u & 1] = next;
#pragma unroll
        for (int w = 0; w < NCW; w++) sm90_named_arrive(SM90_BAR_ID + 2 * w, 160);
    }
    sm90_named_sync(1, 128);
    return ids[u & 1];
}
// Consumer warpgroup cwg: the u-th hand-over's id; the slot is released for the next one unless
// this id ends the loop (every signal has its wait: none is left pending at the exit).
__device__ __forceinline__ unsigned sm90_take_id(const unsigned *ids, unsigned u, unsigned n_items, int cwg) {
    sm90_named_sync(SM90_BAR_ID + 2 * cwg, 160);
    const unsigned id = ids[u & 1];
    if (id < n_items) sm90_named_arrive(SM90_BAR_ID + 2 * cwg + 1, 160);
    return id;
}
// After a CTA's last item (its last counter increment made): the last CTA to get here re-arms
// the counters for the next launch (the stream orders launches; nobody increments them any more).
__device__ __forceinline__ void sm90_sched_done(const cuda_attn_params &p) {
    __threadfence(); // this CTA's counter increments come before its arrival
    if (atomicAdd(p.sched + 1, 1u) == gridDim.x - 1) {
        p.sched[0] = 0;
        p.sched[1] = 0;
    }
}

// Producer, e4m3 d = 64: the K and V rows of tile u of the item (keys k0 ..) into staging buffer
// `buf` (K rows, then V rows, HD bytes each), completing `full` with one arrival per producer
// thread: bulk tensor copies of whole boxes (runs of box rows, as for 16-bit tiles), else cp.async
// gathers. pages: the tile's page ids, staged.
template <int HD, int BN>
__device__ __forceinline__ void sm90_stage_e4m3(const cuda_attn_params &p, const cuda_tma &tma, const sm90_item &w,
                                                int k0, const int32_t *pages, uint8_t *buf, uint32_t full, int ptid) {
    const sm90_tile_copy tc = sm90_plan_tile<BN>(p, w.sl, tma, pages, k0, w.kmax, w.hk, ptid);
    if (!tc.bulk) {
        const uint8_t *kb = (const uint8_t *)p.k + (int64_t)w.hk * p.k_sh;
        const uint8_t *vb = (const uint8_t *)p.v + (int64_t)w.hk * p.v_sh;
        sm90_gather_e4m3<HD, BN>(p, w.sl, kb, p.k_sb, p.k_sr, p.d, k0, w.kmax, pages, buf, ptid);
        sm90_gather_e4m3<HD, BN>(p, w.sl, vb, p.v_sb, p.v_sr, p.dv, k0, w.kmax, pages, buf + BN * HD, ptid);
        sm90_mbar_arrive_cp_async(full);
        return;
    }
    if (ptid == 0) sm90_mbar_arrive_tx(full, 2 * BN * HD);
    else sm90_mbar_arrive(full);
    __syncwarp();
    if (ptid < BN / tc.box) {
        const uint32_t dst = cuda_smem_addr(buf) + ptid * tc.box * HD;
        sm90_tma_load_4d(dst, &tma.k, 0, tc.c[0], tc.c[1], tc.c[2], full);
        sm90_tma_load_4d(dst + BN * HD, &tma.v, 0, tc.c[0], tc.c[1], tc.c[2], full);
    }
}

// Producer, e4m3: tile u of the item (ring tile j = it + u), a tile ahead of the conversions and
// transposes, which bound the producer: its page ids, then d = 64: K and V rows into staging buffer
// j % STG; d >= 128: V rows into that staging buffer and K straight into ring stage j % NST once
// the consumers released it. e4m3 rows of d >= 128 bytes are moved as 16-bit tiles of HD / 2
// columns would be (sm90_issue_tile on a 16-bit view: halved strides and widths, as the host's
// tensor maps): K is then already an 8-bit wgmma tile, V swizzled for the transpose's loads.
template <int HD, int BN, int NST, int STG>
__device__ __forceinline__ void sm90_fetch_e4m3(const cuda_attn_params &p, const cuda_tma &tma, const sm90_item &w,
                                                const sm90_ring &r, int it, int u, int ptid) {
    const int j = it + u, k0 = w.kmin + u * BN;
    int32_t *pages = r.pages + (j & 1) * BN;
    if (p.page_table) sm90_stage_pages<BN>(p, w.sl, k0, w.kmax, pages, ptid);
    uint8_t *buf = r.gen + sm90_off_staging(HD, 1, BN) + (j % STG) * sm90_staging_bytes(HD, 1, BN);
    if constexpr (!sm90_native(HD, 1)) {
        sm90_stage_e4m3<HD, BN>(p, tma, w, k0, pages, buf, r.full_stg + 8 * (j % STG), ptid);
    } else {
        const int st = j % NST;
        const uint16_t *kb = (const uint16_t *)((const uint8_t *)p.k + (int64_t)w.hk * p.k_sh);
        const uint16_t *vb = (const uint16_t *)((const uint8_t *)p.v + (int64_t)w.hk * p.v_sh);
        const sm90_tile_copy tc = sm90_plan_tile<BN>(p, w.sl, tma, pages, k0, w.kmax, w.hk, ptid);
        // (gathers not unrolled: no spills at 72 registers)
        sm90_issue_tile<HD / 2, BN, 1>(p, w.sl, &tma.v, vb, p.v_sb / 2, p.v_sr / 2, p.dv / 2, k0, w.kmax, pages, tc,
                                       cuda_smem_addr(buf), r.full_stg + 8 * (j % STG), ptid);
        sm90_mbar_wait(r.empty_k + 8 * st, ((uint32_t)(j / NST) & 1) ^ 1);
        sm90_issue_tile<HD / 2, BN, 1>(p, w.sl, &tma.k, kb, p.k_sb / 2, p.k_sr / 2, p.d / 2, k0, w.kmax, pages, tc,
                                       r.k + st * sm90_tile_bytes(BN, HD, 1), r.full_k + 8 * st, ptid);
    }
}

// Producer, 16-bit inputs: the Q tile of item w and its K and V tiles, ring tiles it ..
template <int HD, int BM, int BN, int NST, int PREGS>
__device__ __forceinline__ void sm90_produce(const cuda_attn_params &p, const cuda_tma &tma, const sm90_item &w,
                                             const sm90_ring &r, int it, int ptid) {
    constexpr int U = sm90_gather_unroll(PREGS, HD);
    if (!tma.q_on) {
        sm90_load_q<HD, BM, U>(p, w.sl, (const uint16_t *)p.q, p.q_sb, p.q_sr, p.q_sh, p.d, w.bi, w.head, w.hk, w.g,
                            w.row0, w.rows, r.q, ptid);
        sm90_mbar_arrive_cp_async(r.full_q);
    } else if (ptid == 0) { // rows of one head: the tile is a box (past the tensor's end: zeros)
        const int qrow = w.sl.q_offset + w.row0, qb = tma.q_varlen ? 0 : w.bi;
        sm90_mbar_arrive_tx(r.full_q, BM * HD * 2);
#pragma unroll
        for (int cb = 0; cb < HD / 64; cb++)
            sm90_tma_load_4d(r.q + cb * BM * 128, &tma.q, cb * 64, tma.q_heads_first ? w.head : qrow,
                             tma.q_heads_first ? qrow : w.head, qb, r.full_q);
    } else {
        sm90_mbar_arrive(r.full_q);
    }
    const uint16_t *kb = (const uint16_t *)p.k + (int64_t)w.hk * p.k_sh;
    const uint16_t *vb = (const uint16_t *)p.v + (int64_t)w.hk * p.v_sh;
    for (int t = 0; t < w.n_tiles; t++) {
        const int i = it + t, st = i % NST;
        const uint32_t ph = (uint32_t)(i / NST) & 1;
        const int k0 = w.kmin + t * BN;
        int32_t *pages = r.pages + (i & 1) * BN;
        if (p.page_table) sm90_stage_pages<BN>(p, w.sl, k0, w.kmax, pages, ptid);
        // Contiguous rows: bulk tensor copies of runs of box rows (the whole tile, or one page
        // each when paged). A tail tile with other rows of the tensor past kmax, and other
        // pages: cp.async, zero-filling past kmax (sm90_bulk_tile).
        const sm90_tile_copy tc = sm90_plan_tile<BN>(p, w.sl, tma, pages, k0, w.kmax, w.hk, ptid);
        sm90_mbar_wait(r.empty_k + 8 * st, ph ^ 1);
        sm90_issue_tile<HD, BN, U>(p, w.sl, &tma.k, kb, p.k_sb, p.k_sr, p.d, k0, w.kmax, pages, tc,
                                   r.k + st * sm90_tile_bytes(BN, HD, 2), r.full_k + 8 * st, ptid);
        sm90_mbar_wait(r.empty_v + 8 * st, ph ^ 1);
        sm90_issue_tile<HD, BN, U>(p, w.sl, &tma.v, vb, p.v_sb, p.v_sr, p.dv, k0, w.kmax, pages, tc,
                                   r.v + st * sm90_tile_bytes(BN, HD, 2), r.full_v + 8 * st, ptid);
    }
}

// Producer, e4m3, completing r.full_q: the Q tile kept 8-bit (HD >= 128: cp.async gathers of its
// rows as a 16-bit tile of HD / 2 columns, as sm90_fetch_e4m3 moves K), or converted to fp16
// (synchronous; rows >= rows, columns >= d zero).
template <int HD, int BM, int U>
__device__ __forceinline__ void sm90_load_q_e4m3(const cuda_attn_params &p, const sm90_item &w, const sm90_ring &r,
                                                 int ptid) {
    if constexpr (sm90_native(HD, 1)) {
        sm90_load_q<HD / 2, BM, U>(p, w.sl, (const uint16_t *)p.q, p.q_sb / 2, p.q_sr / 2, p.q_sh / 2, p.d / 2, w.bi,
                                   w.head, w.hk, w.g, w.row0, w.rows, r.q, ptid);
        sm90_mbar_arrive_cp_async(r.full_q);
    } else {
        constexpr int CPR = HD / 16;
        for (int idx = ptid; idx < BM * CPR; idx += 128) {
            const int rr = idx / CPR, c = idx % CPR;
            const uint4 raw = attn_q_e4m3_chunk(p, w.sl, w.bi, w.head, w.hk, w.g, w.row0 + rr, w.rows, c);
            sm90_store_e4m3x16(r.gen, rr, c, BM, raw);
        }
        sm90_fence_async_smem();
        sm90_mbar_arrive(r.full_q);
    }
}

// Producer, e4m3: the Q tile (sm90_load_q_e4m3), then tile i's V rows (and K rows, d = 64) arrive in staging
// buffer i % 2 (issued one tile earlier within the item, sm90_fetch_e4m3) and are moved into stage
// i % NST once the consumers released it.
template <int HD, int BN, int NST, int STG, int PREGS>
__device__ __forceinline__ void sm90_produce_e4m3(const cuda_attn_params &p, const cuda_tma &tma, const sm90_item &w,
                                                  const sm90_ring &r, int it, int ptid) {
    static_assert(STG == 2, "two staging buffers");
    constexpr bool KEEP = sm90_native(HD, 1);
    constexpr int TB = sm90_tile_bytes(BN, HD, sm90_es(HD, 1));
    sm90_load_q_e4m3<HD, sm90_block_m(HD, 1), sm90_gather_unroll(PREGS, HD)>(p, w, r, ptid);
    uint8_t *stg = r.gen + sm90_off_staging(HD, 1, BN);
    constexpr int SB = sm90_staging_bytes(HD, 1, BN); // one staging buffer
    sm90_fetch_e4m3<HD, BN, NST, STG>(p, tma, w, r, it, 0, ptid);
    for (int t = 0; t < w.n_tiles; t++) {
        const int i = it + t, st = i % NST, u = t + STG - 1;
        const uint32_t ph = (uint32_t)(i / NST) & 1;
        if (u < w.n_tiles) sm90_fetch_e4m3<HD, BN, NST, STG>(p, tma, w, r, it, u, ptid);
        sm90_mbar_wait(r.full_stg + 8 * (i % STG), (uint32_t)(i / STG) & 1);
        const uint8_t *src = stg + (i % STG) * SB;
        if constexpr (!KEEP) {
            sm90_mbar_wait(r.empty_k + 8 * st, ph ^ 1);
            sm90_convert_e4m3<HD, BN>(src, r.gen + sm90_off_k(HD, 1) + st * TB, ptid);
        }
        sm90_mbar_wait(r.empty_v + 8 * st, ph ^ 1);
        uint8_t *vt = r.gen + sm90_off_v(HD, 1, BN) + st * TB;
        if constexpr (KEEP) sm90_transpose_v_e4m3<HD, BN>(cuda_smem_addr(src), cuda_smem_addr(vt), ptid);
        else sm90_convert_e4m3<HD, BN>(src + BN * HD, vt, ptid);
        sm90_fence_async_smem();
        if constexpr (!KEEP) sm90_mbar_arrive(r.full_k + 8 * st);
        sm90_mbar_arrive(r.full_v + 8 * st);
        sm90_named_sync(1, 128); // staging buffer i % STG is read before tile i + STG refills it
    }
}

// Consumer warp: S of the tile in stage st is in its registers, so the stage's K (and after the
// item's last tile, Q) may be refilled: one arrival per warp.
__device__ __forceinline__ void sm90_release_k(const sm90_ring &r, int st, bool last, int lane) {
    __syncwarp();
    if (lane == 0) {
        sm90_mbar_arrive(r.empty_k + 8 * st);
        if (last) sm90_mbar_arrive(r.empty_q);
    }
}
// Consumer warp: O += P V of the tile in stage st is done, so the stage's V may be refilled.
__device__ __forceinline__ void sm90_release_v(const sm90_ring &r, int st, int lane) {
    __syncwarp();
    if (lane == 0) sm90_mbar_arrive(r.empty_v + 8 * st);
}
// Consumer warpgroup: O += P V of the tile in stage st, waited for; then the stage's V is released.
template <int DV, int BN, int CBF>
__device__ __forceinline__ void sm90_pv_wait(float (&o)[DV / 2], const uint32_t (&pa)[SM90_PV_STEPS(BN, CBF)][4],
                                             const sm90_ring &r, uint32_t v_tile, int st, int lane) {
    sm90_wgmma_fence();
    sm90_pv<DV, BN, CBF>(o, pa, v_tile);
    sm90_wgmma_commit();
    sm90_wgmma_wait<0>();
    sm90_fence_regs(o);
    sm90_release_v(r, st, lane);
}

// BF: 1 bf16, 0 fp16, 2 e4m3 (bf16 out). Persistent: CTA c runs work items c, c + gridDim.x, ...
// (attn_cta_coords); the producer loads the next item's Q and first K/V tiles while the consumers
// finish and store the current one.
template <int HD, int BF, int BN>
__global__ void __launch_bounds__(sm90_threads(sm90_block_m(HD, BF == 2)), 1)
    attn_sm90_kernel(const __grid_constant__ cuda_attn_params p, const __grid_constant__ cuda_tma tma) {
#if FA3C_SM90A
    constexpr int FP8 = BF == 2, NST = sm90_stages(HD, FP8, BN), DV = HD, BM = sm90_block_m(HD, FP8), NCW = BM / 64;
    // The GEMMs' operand type (2 e4m3, 1 bf16, 0 fp16), the output's, the ring's element bytes.
    constexpr int CBF = FP8 ? (sm90_native(HD, FP8) ? 2 : 0) : BF, OBF = FP8 ? 1 : BF, ES = sm90_es(HD, FP8);
    constexpr int STG = sm90_staging(HD, FP8), TB = sm90_tile_bytes(BN, HD, ES);
    constexpr int PREGS = sm90_producer_regs(HD, FP8, BN, BM);
    static_assert(sm90_smem_bytes(HD, FP8, BN) <= 232448, "an H100 block's shared memory");
    extern __shared__ uint8_t sm90_smem_raw[];
    sm90_ring r;
    r.q = (cuda_smem_addr(sm90_smem_raw) + 1023) & ~1023u;
    r.gen = sm90_smem_raw + (r.q - cuda_smem_addr(sm90_smem_raw));
    r.k = r.q + sm90_off_k(HD, FP8);
    r.v = r.q + sm90_off_v(HD, FP8, BN);
    r.pages = (int32_t *)(r.gen + sm90_off_pages(HD, FP8, BN));
    r.full_q = r.q + sm90_off_bars(HD, FP8, BN);
    r.empty_q = r.full_q + 8;
    r.full_k = r.empty_q + 8;
    r.full_v = r.full_k + 8 * NST;
    r.empty_k = r.full_v + 8 * NST;
    r.empty_v = r.empty_k + 8 * NST;
    r.full_stg = r.empty_v + 8 * NST;
    unsigned *ids = (unsigned *)(r.gen + sm90_off_bars(HD, FP8, BN) + sm90_barriers(HD, FP8, BN) * 8);

    const int tid = threadIdx.x, lane = tid & 31;
    const bool poison = !cuda_meta_ok(p.meta); // warp-collective, before any return
    // Work items (< 2^31, the host's launch limit; ids below 2^32 with the grid's added).
    const unsigned n_items = (unsigned)p.b * p.grid_heads * p.num_splits * p.num_m_blocks;

    if (tid == 0) {
        sm90_mbar_init(r.full_q, 128);
        sm90_mbar_init(r.empty_q, 4 * NCW); // one arrival per consumer warp
        for (int s = 0; s < NST; s++) {
            sm90_mbar_init(r.full_k + 8 * s, 128);
            sm90_mbar_init(r.full_v + 8 * s, 128);
            sm90_mbar_init(r.empty_k + 8 * s, 4 * NCW);
            sm90_mbar_init(r.empty_v + 8 * s, 4 * NCW);
        }
        for (int s = 0; s < STG; s++) sm90_mbar_init(r.full_stg + 8 * s, 128);
    }
    __syncthreads();

    if (tid < 128) { // ---------------------------------------------------------------- producer
        sm90_regs_dec<PREGS>();
        int it = 0, qi = 0; // ring tiles and Q tiles so far
        for (unsigned id = blockIdx.x, u = 0; id < n_items;
             id = p.sched ? sm90_give_id<NCW>(p, ids, u++, tid) : id + gridDim.x) {
            sm90_item w;
            if (sm90_item_get<BM, BN>(p, tma, id, &w) == SM90_ITEM_RUN && w.n_tiles > 0) {
                sm90_mbar_wait(r.empty_q, (uint32_t)(qi & 1) ^ 1); // the last item's Q . K^T are done
                if constexpr (FP8) sm90_produce_e4m3<HD, BN, NST, STG, PREGS>(p, tma, w, r, it, tid);
                else sm90_produce<HD, BM, BN, NST, PREGS>(p, tma, w, r, it, tid);
                it += w.n_tiles;
                qi++;
            }
        }
        cuda_cp_async_wait_all();
        if (tid == 0 && p.sched) sm90_sched_done(p);
        return;
    }

    // ------------------------------------------------------------------------------- consumers
    sm90_regs_inc<sm90_consumer_regs(PREGS, NCW)>();
    const int ctid = tid - 128, cwg = ctid >> 7, cwarp = (ctid >> 5) & 3;
    const int wrow0 = cwg * 64 + cwarp * 16; // this warp's 16 rows of the tile
    const uint32_t q_base = r.q + cwg * 64 * 128; // the warpgroup's 64 rows of every column block
    constexpr bool PP = sm90_pingpong(HD, FP8), OVL = sm90_overlap(HD, FP8, BN);
    constexpr int POFF = CBF == 2 ? 8 : 0; // P rounded to e4m3: scaled by 2^8 (attn_softmax_scores)
    const int next_turn = SM90_BAR_TURN + (cwg + 1) % NCW; // the warpgroup after this one
    if (PP && cwg == NCW - 1) sm90_named_arrive(SM90_BAR_TURN, 256); // warpgroup 0 issues first
    int it = 0, qi = 0;
    if (p.sched) sm90_named_arrive(SM90_BAR_ID + 2 * cwg + 1, 160); // the id slots start free
    for (unsigned id = blockIdx.x, u = 0; id < n_items;
         id = p.sched ? sm90_take_id(ids, u++, n_items, cwg) : id + gridDim.x) {
        sm90_item w;
        // Shuffled: provably warp-uniform, else ptxas takes the wgmma below for divergent code
        // and serialises it (C7520).
        const int kind = __shfl_sync(0xffffffffu, sm90_item_get<BM, BN>(p, tma, id, &w), 0);
        if (kind == SM90_ITEM_NONE) continue;
        if (kind == SM90_ITEM_EMPTY_SPLIT) {
            if (ctid < ATTN_THREADS)
                attn_store_empty(p, w.sl, w.bi, w.head, w.hk, w.g, w.row0, w.rows, BM, w.split, ctid);
            continue;
        }
        int rlo[2], rhi[2], rtok[2], rhq[2];
        bool rvalid[2];
#pragma unroll
        for (int e = 0; e < 2; e++)
            attn_row_keys(p, w.row0 + wrow0 + (lane >> 2) + 8 * e, w.rows, w.g, w.head, w.hk, w.seqlen_q, w.seqlen_k,
                          w.slo, w.shi, &rvalid[e], &rtok[e], &rhq[e], &rlo[e], &rhi[e]);
        int flo, fhi;
        attn_warp_keys<2>(rvalid, rlo, rhi, &flo, &fhi);

        float o[DV / 2];
#pragma unroll
        for (int i = 0; i < DV / 2; i++) o[i] = 0.0f;
        float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
        float (&o4)[DV / 8][4] = *reinterpret_cast<float (*)[DV / 8][4]>(&o);
        const float qk_ds = FP8 ? cuda_descale(p.q_ds, p.qd_sb, p.qd_sh, w.bi, w.hk) *
                                      cuda_descale(p.k_ds, p.kd_sb, p.kd_sh, w.bi, w.hk)
                                : 1.0f;

        // Tile t (OVL): S_t = Q K_t^T is issued together with O += P_{t-1} V_{t-1}; the softmax of
        // S_t runs while the tensor cores still work on P.V, and O is rescaled once that is done.
        // Else one tile at a time (sm90_overlap).
        float s[BN / 2];
        float (&s4)[BN / 8][4] = *reinterpret_cast<float (*)[BN / 8][4]>(&s);
        uint32_t pa[SM90_PV_STEPS(BN, CBF)][4]; // P_{t-1} in the GEMM's type: the A fragments of P.V
        float corr[2];
        const int n_tiles = __shfl_sync(0xffffffffu, w.n_tiles, 0);
        if (n_tiles > 0) sm90_mbar_wait(r.full_q, (uint32_t)qi & 1);
        if constexpr (!OVL) { // a turn spans P.V of tile t and Q.K^T of tile t + 1
            if (PP && n_tiles > 0) sm90_named_sync(SM90_BAR_TURN + cwg, 256);
            for (int t = 0; t < n_tiles; t++) {
                const int i = it + t, st = i % NST;
                const uint32_t ph = (uint32_t)(i / NST) & 1;
                sm90_mbar_wait(r.full_k + 8 * st, ph);
                sm90_wgmma_fence();
                sm90_qk<HD, BM, BN, CBF>(s, q_base, r.k + st * TB);
                sm90_wgmma_commit();
                if (PP) sm90_named_arrive(next_turn, 256);
                sm90_wgmma_wait<0>();
                sm90_fence_regs(s);
                sm90_release_k(r, st, t == n_tiles - 1, lane);
                const int k0 = w.kmin + t * BN;
                attn_softmax_scores<BN / 8, POFF>(p, s4, m, l, rlo, rhi, k0, k0 >= flo && k0 + BN <= fhi, lane, corr, qk_ds);
                if (t > 0) attn_rescale<DV / 8>(o4, corr);
                sm90_pack_p<BN, CBF>(s4, pa);
                sm90_mbar_wait(r.full_v + 8 * st, ph);
                if (PP) sm90_named_sync(SM90_BAR_TURN + cwg, 256);
                sm90_pv_wait<DV, BN, CBF>(o, pa, r, r.v + st * TB, st, lane);
            }
            if (PP && n_tiles > 0) sm90_named_arrive(next_turn, 256);
            it += n_tiles;
            qi += n_tiles > 0;
        }
        for (int t = 0; t < (OVL ? n_tiles : 0); t++) {
            const int i = it + t, st = i % NST, pst = (i + NST - 1) % NST;
            const uint32_t ph = (uint32_t)(i / NST) & 1, pph = (uint32_t)((i - 1) / NST) & 1;
            sm90_mbar_wait(r.full_k + 8 * st, ph);
            if (PP) sm90_named_sync(SM90_BAR_TURN + cwg, 256);
            sm90_wgmma_fence();
            sm90_qk<HD, BM, BN, CBF>(s, q_base, r.k + st * TB);
            sm90_wgmma_commit();
            if (t > 0) {
                sm90_mbar_wait(r.full_v + 8 * pst, pph);
                sm90_pv<DV, BN, CBF>(o, pa, r.v + pst * TB);
                sm90_wgmma_commit();
                if (PP) sm90_named_arrive(next_turn, 256);
                sm90_wgmma_wait<1>();
            } else {
                if (PP) sm90_named_arrive(next_turn, 256);
                sm90_wgmma_wait<0>();
            }
            sm90_fence_regs(s);
            sm90_release_k(r, st, t == n_tiles - 1, lane);

            const int k0 = w.kmin + t * BN;
            attn_softmax_scores<BN / 8, POFF>(p, s4, m, l, rlo, rhi, k0, k0 >= flo && k0 + BN <= fhi, lane, corr, qk_ds);
            if (t > 0) {
                sm90_wgmma_wait<0>();
                sm90_fence_regs(o);
                sm90_release_v(r, pst, lane);
                attn_rescale<DV / 8>(o4, corr);
            }
            sm90_pack_p<BN, CBF>(s4, pa);
        }
        if (OVL && n_tiles > 0) { // O += P V of the last tile
            const int i = it + n_tiles - 1, st = i % NST;
            sm90_mbar_wait(r.full_v + 8 * st, (uint32_t)(i / NST) & 1);
            sm90_pv_wait<DV, BN, CBF>(o, pa, r, r.v + st * TB, st, lane);
            it += n_tiles;
            qi++;
        }

#pragma unroll
        for (int e = 0; e < 2; e++) {
            l[e] += __shfl_xor_sync(0xffffffffu, l[e], 1);
            l[e] += __shfl_xor_sync(0xffffffffu, l[e], 2);
            m[e] -= (float)POFF; // l is 2^POFF times the sum of exp2(. - m)
        }
        const float v_ds = FP8 ? cuda_descale(p.v_ds, p.vd_sb, p.vd_sh, w.bi, w.hk) : 1.0f;
        attn_store_tile<OBF, DV / 8>(p, w.bi, w.sl.q_offset, w.split, rvalid, rtok, rhq, o4, m, l, v_ds,
                                     p.sinks && w.split == 0, poison, lane, 0, true);
    }
    // The last warpgroup handed the turn on after every tile, and once at the start: take the last one.
    if (PP && cwg == 0) sm90_named_sync(SM90_BAR_TURN, 256);
#endif
}

template <int HD, int BF, int BN>
static cudaError_t sm90_launch(const cuda_attn_params *p, const cuda_tma *tma, cudaStream_t stream) {
    int64_t blocks = (int64_t)p->b * p->grid_heads * p->num_splits * p->num_m_blocks;
    if (blocks == 0) return cudaSuccess;
    if (p->ctas > 0 && p->ctas < blocks) blocks = p->ctas;
    attn_sm90_kernel<HD, BF, BN><<<(unsigned)blocks, sm90_threads(sm90_block_m(HD, BF == 2)),
                                   sm90_smem_bytes(HD, BF == 2, BN), stream>>>(*p, *tma);
    return cudaGetLastError();
}

template <int HD, int BF, int BN> static cudaError_t sm90_prepare(void) {
    return cudaFuncSetAttribute((const void *)attn_sm90_kernel<HD, BF, BN>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm90_smem_bytes(HD, BF == 2, BN));
}

template <int HD, int BF, int BN> static cudaError_t sm90_occupancy(int *ctas_per_sm) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(ctas_per_sm, attn_sm90_kernel<HD, BF, BN>,
                                                         sm90_threads(sm90_block_m(HD, BF == 2)),
                                                         sm90_smem_bytes(HD, BF == 2, BN));
}

#define SM90_KERNEL(HD, BF, BN, NAME)                                                                                 \
    {HD, HD, BF == 1, BF == 2, 0, 1, 0, BN == sm90_block_n_wide(HD, BF == 2), NAME,                                   \
     sm90_smem_bytes(HD, BF == 2, BN), sm90_block_m(HD, BF == 2), BN, sm90_launch<HD, BF, BN>, sm90_prepare<HD, BF, BN>, \
     sm90_occupancy<HD, BF, BN>}

extern const cuda_attn_kernel fa3c_cuda_attn_sm90[CUDA_ATTN_SM90_KERNELS] = {
    SM90_KERNEL(64, 1, 128, "wgmma_sm90_d64_bf16"),
    SM90_KERNEL(64, 0, 128, "wgmma_sm90_d64_f16"),
    SM90_KERNEL(128, 1, 128, "wgmma_sm90_d128_bf16"),
    SM90_KERNEL(128, 0, 128, "wgmma_sm90_d128_f16"),
    SM90_KERNEL(256, 1, 64, "wgmma_sm90_d256_bf16"),
    SM90_KERNEL(256, 0, 64, "wgmma_sm90_d256_f16"),
    SM90_KERNEL(64, 2, 128, "wgmma_sm90_d64_e4m3"),
    SM90_KERNEL(128, 2, 128, "wgmma_sm90_d128_e4m3"),
    SM90_KERNEL(256, 2, 64, "wgmma_sm90_d256_e4m3"),
    SM90_KERNEL(128, 1, 176, "wgmma_sm90_d128_bf16_n176"),
    SM90_KERNEL(128, 0, 176, "wgmma_sm90_d128_f16_n176"),
    SM90_KERNEL(256, 1, 80, "wgmma_sm90_d256_bf16_n80"),
    SM90_KERNEL(256, 0, 80, "wgmma_sm90_d256_f16_n80"),
    SM90_KERNEL(128, 2, 256, "wgmma_sm90_d128_e4m3_n256"),
    SM90_KERNEL(256, 2, 128, "wgmma_sm90_d256_e4m3_n128"),
};
