/*
 * Heuristics: tile shape, split count, GQA packing and window normalisation, as FA3's hopper/
 * (tile_size.h, heuristics.h, flash_api.cpp) decides them for an SM90 GPU. Pure functions: the
 * forward validator and get_scheduler_metadata both call fa3c_heuristics_resolve, so the two can
 * never resolve the same call differently.
 *
 * Shape legend as in include/fa3c.h (b, s_q, s_k, h, h_k, d, dv, S).
 */
#include "core/internal.h"

#include <math.h>

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* FA3 compiles head dims 64, 96, 128, 192 and 256; a call runs the kernel of the next bucket up. */
static int64_t headdim_bucket(int64_t d) {
    return d <= 64 ? 64 : d <= 96 ? 96 : d <= 128 ? 128 : d <= 192 ? 192 : 256;
}

/*
 * Slots of the cuda backend's decode shape in pieces mode (CTAs that share one (sequence, head)'s
 * keys and combine their partials after), fa3c's own rule, not FA3's. w bounds them (one pass of
 * resident CTAs, at most one slot a key tile). More slots shorten each slot's run of tiles but
 * lengthen the combine (every slot's partial is read back; past a thread block cluster's 8 slots
 * the arrivals go through global memory) and, past one CTA an SM, make slots share SMs. So a slot
 * takes n = max(ceil(tiles / w), round(sqrt(tiles) / 2)) tiles, and the fewest slots that cover
 * the tiles at n each, ceil(tiles / n): no slot left empty (an empty one still costs its partial).
 *
 * Worked examples (H100, 132 SMs, batch 1, 32 / 8 heads, d 128, 64-key tiles, w = 33; session 8,
 * one call, two runs each): 1k keys, 16 tiles: n = 2, 8 slots, 10.0 us (16 slots 10.5; 4 slots
 * 11.7; 6, 10 or 12 slots, some with fewer tiles or none, 10.9-11.3); 4k, 64 tiles: n = 4, 16
 * slots, 13.5 us (33 slots 15.0; 20, the same n with 4 empty, 15.2; 8 slots 15.8); 16k, 256
 * tiles: n = 8, 32 slots, 1953 GB/s (33 slots, the same n, 1915). Batch 16 (w = 2) and up:
 * n = ceil(tiles / w), unchanged.
 */
int64_t fa3c_decode_slots(int64_t tiles, int64_t w) {
    if (tiles < 1 || w < 1) return w < 1 ? 1 : w;
    int64_t n = max64(ceil_div(tiles, w), (int64_t)(sqrt((double)tiles) / 2.0 + 0.5));
    return ceil_div(tiles, n);
}

/*
 * kBlockM x kBlockN of the SM90 forward kernel for head dims (d, dv). The block sizes are the
 * largest that fit shared memory and registers; causal/local/paged-non-TMA variants use a
 * narrower kBlockN because their masking or page gathers cost registers.
 *
 * For d <= 64 the kernel is picked by the range of dv (64/64, 64/256 or 64/512 instantiations),
 * so the tile is too: dv <= 64, 64 < dv <= 256, 256 < dv <= 512. Upstream host code keys this
 * on a rounded dv and disagrees with its own kernel for dv in (64, 192]; one selector here
 * serves heuristics and kernels alike.
 */
fa3c_tile fa3c_tile_size_sm90(int64_t d, int64_t dv, bool is_causal, bool is_local, int elem_size,
                              bool v_colmajor, bool paged_non_tma, bool softcap) {
    int64_t hd = headdim_bucket(d);
    if (elem_size == 1) { /* fp8 e4m3 */
        switch (hd) {
        case 64: return (fa3c_tile){192, 160};
        case 96: return (fa3c_tile){192, 128};
        case 128: return (fa3c_tile){128, paged_non_tma ? 160 : (v_colmajor || (softcap && is_local)) ? 192 : 224};
        case 192: return (fa3c_tile){128, (paged_non_tma || softcap) && is_local ? 128 : 160};
        default: return (fa3c_tile){128, is_local ? 64 : 128};
        }
    }
    switch (hd) {
    case 64:
        if (dv > 256) return (fa3c_tile){64, 64};
        if (dv > 64) return (fa3c_tile){128, 96};
        return (fa3c_tile){192, (is_causal || is_local || paged_non_tma) ? 128 : 192};
    case 96: return (fa3c_tile){192, (is_local || paged_non_tma) ? 128 : 144};
    case 128: return (fa3c_tile){128, (is_causal || is_local || paged_non_tma) ? 128 : 176};
    case 192: return (fa3c_tile){128, (paged_non_tma || is_local) ? 96 : dv <= 128 ? 128 : 112};
    default: return (fa3c_tile){128, is_local ? 64 : 80};
    }
}

/*
 * Number of KV splits that best fills num_sm SMs with total_mblocks (b * h_k * m-blocks) tiles.
 *
 * Enough tiles to nearly fill the GPU (>= 80% of the SMs): no split, unless one KV head is larger
 * than a 50 MB L2 and at least two waves of m-blocks stream over it, in which case splitting it
 * into L2-sized pieces wins (never when causal or local: their tiles do not read the whole KV).
 * Too few key blocks (<= 4): no split. Otherwise the efficiency of s splits is
 * waves / ceil(waves) with waves = total_mblocks * s / num_sm; take the smallest s reaching 85%
 * of the best efficiency, since every split costs an extra partial write and a combine.
 *
 * Worked example: 48 tiles on 108 SMs. s = 1: 0.44 waves, efficiency 0.44; s = 2: 0.89 waves,
 * 0.89; s = 3: 1.33 waves, 0.67; s = 9: exactly 4 waves, 1.0 (the best). 85% of 1.0 is 0.85, and
 * s = 2 is the smallest reaching it: 2 splits.
 */
int32_t fa3c_num_splits_heuristic(int64_t total_mblocks, int32_t num_sm, int64_t num_n_blocks,
                                  int64_t num_m_blocks, int64_t size_one_kv_head, bool is_causal_or_local,
                                  int32_t max_splits) {
    const int64_t l2_bytes = 50LL * 1024 * 1024;
    if (total_mblocks <= 0 || num_sm <= 0) return 1; /* nothing to spread */
    if ((float)total_mblocks >= 0.8f * (float)num_sm) {
        if (size_one_kv_head > l2_bytes && num_m_blocks >= 2LL * num_sm && !is_causal_or_local)
            return (int32_t)min64(ceil_div(size_one_kv_head, l2_bytes), max_splits);
        return 1;
    }
    if (num_n_blocks <= 4) return 1;
    int64_t cap = min64(min64(max_splits, num_sm), num_n_blocks);
    float best = 0.f;
    for (int64_t s = 1; s <= cap; s++) {
        float waves = (float)(total_mblocks * s) / (float)num_sm;
        float eff = waves / ceilf(waves);
        if (eff > best) best = eff;
    }
    for (int64_t s = 1; s <= cap; s++) {
        float waves = (float)(total_mblocks * s) / (float)num_sm;
        if (waves / ceilf(waves) >= 0.85 * best) return (int32_t)s;
    }
    return 1;
}

/*
 * Whether packing the h/h_k q heads of a kv head into the rows of one tile wastes fewer tile rows
 * than running each q head alone. Varlen q: only max_seqlen_q is known, and the short sequences
 * it hides are exactly where packing helps, so always pack.
 */
bool fa3c_should_pack_gqa(bool varlen_q, int64_t seqlen_q, int64_t qhead_per_khead, int32_t block_m) {
    if (varlen_q) return true;
    if (seqlen_q <= 0 || block_m <= 0) return false;
    int64_t packed = seqlen_q * qhead_per_khead;
    float eff_nopack = (float)seqlen_q / (float)(ceil_div(seqlen_q, block_m) * block_m);
    float eff_pack = (float)packed / (float)(ceil_div(packed, block_m) * block_m);
    return eff_nopack < 0.9 * eff_pack;
}

/*
 * FA3 mha_fwd's window normalisation against the static lengths (s_q, s_k), in its order:
 *   1. any negative window side is unbounded (-1);
 *   2. a side reaching past the whole sequence is unbounded too (wl >= s_k - 1, wr >= s_q - 1);
 *   3. one query, no window, no chunk: causal masks nothing, so causal is dropped, except for
 *      64 < d <= 128 with a paged cache, which FA3 keeps causal for its kBlockN = 128 tile;
 *   4. causal means wr = 0;
 *   5. causal = (wl < 0, wr == 0, no chunk); local = any bound or chunk, and not causal.
 * So causal with wl >= 0 becomes local with wr = 0, and a chunk makes the call local.
 * Unbounded sides stay -1 (the kernels' conversion to s_k - 1 / s_q - 1 is theirs to make).
 */
void fa3c_normalize_window(int64_t s_q, int64_t s_k, int64_t d, bool paged, int64_t chunk, bool *is_causal,
                           int64_t *window_left, int64_t *window_right, bool *is_local) {
    int64_t wl = *window_left < 0 ? -1 : *window_left;
    int64_t wr = *window_right < 0 ? -1 : *window_right;
    bool causal = *is_causal;
    if (wl >= s_k - 1) wl = -1;
    if (wr >= s_q - 1) wr = -1;
    if (s_q == 1 && wl == -1 && wr == -1 && chunk == 0 && !(d > 64 && d <= 128 && paged)) causal = false;
    if (causal) wr = 0;
    *is_causal = wl < 0 && wr == 0 && chunk == 0;
    *is_local = (wl >= 0 || wr >= 0 || chunk >= 1) && !*is_causal;
    *window_left = wl;
    *window_right = wr;
}

/*
 * FA3 get_num_splits: the heuristic above on the whole problem, assuming PackGQA (splitting
 * forces it). Local attention only loads wl + wr + 1 + kBlockM keys per tile.
 *
 * Varlen (dynamic split): the static count is only the upper bound of the per-sequence counts
 * the scheduler computes, and FA3 sizes it as if the batch were one sequence of max_seqlen_q
 * (one long sequence among short ones). For many short query segments (decode batches, NSA's
 * one-token segments) that bound is far too high: S partials of every packed row are allocated,
 * which ran out of memory in sgl-attn #46. The fork's fix counts the m-blocks of the real total
 * of q rows. The heuristic inputs carry b and max_seqlen_q but not total_q, so the fix is applied
 * where b * s_q bounds total_q tightly: when one m-block holds a whole sequence (s_q * g <=
 * kBlockM), the q rows fill ceil(b * s_q * g / kBlockM) m-blocks. Longer queries (mixed prefill
 * batches) keep FA3's one-sequence bound, which b * s_q would overstate.
 */
static int32_t auto_num_splits(const fa3c_heuristic_in *in, fa3c_tile t, int64_t g) {
    int64_t s_k_loaded = in->s_k;
    if (in->is_local) {
        int64_t wl = in->window_left < 0 ? in->s_k - 1 : in->window_left;
        int64_t wr = in->window_right < 0 ? in->s_q - 1 : in->window_right;
        if (in->chunk > 0) { /* a tile never crosses more than one chunk's keys */
            wl = min64(wl, in->chunk - 1);
            wr = min64(wr, in->chunk - 1);
        }
        s_k_loaded = max64(0, min64(in->s_k, wl + wr + 1 + t.block_m));
    }
    int64_t num_n_blocks = ceil_div(s_k_loaded, t.block_n);
    int64_t num_m_blocks = ceil_div(in->s_q * g, t.block_m);
    int64_t size_one_kv_head = in->s_k * (in->d + in->dv) * in->elem_size;
    int64_t mblocks_all = in->b * num_m_blocks;
    if (in->is_varlen)
        mblocks_all = num_m_blocks == 1 ? max64(1, ceil_div(in->b * in->s_q * g, t.block_m)) : num_m_blocks;
    return fa3c_num_splits_heuristic(in->h_k * mblocks_all, in->num_sm, num_n_blocks, num_m_blocks, size_one_kv_head,
                                     in->is_causal || in->is_local, 128);
}

/*
 * Resolves tile, paged path, num_splits and pack_gqa for one call (FA3 mha_fwd order):
 *  - paged KV uses TMA page loads only when whole tiles fall in a page (page_size % kBlockN == 0,
 *    with the tile of the TMA kernel), nothing shifts rows (no leftpad, no append), and the
 *    packed query rows exceed one tile (for decode TMA was slower); else the cp.async gather
 *    path (paged_non_tma), whose own tile is then the one used;
 *  - num_splits: the request when > 0, else FA3 get_num_splits (at most 128);
 *  - pack_gqa: forced on for paged_non_tma and for splits, because FA3's kernels only exist
 *    packed there (its launch forces PackGQA whatever the flag says; resolving it here keeps
 *    get_scheduler_metadata(pack_gqa=0) consistent with the forward, fa3-semantics §0.17);
 *    otherwise the request when >= 0, else off for MHA and should_pack_gqa for GQA.
 * window_left/right: normalised (< 0 unbounded), as fa3c_normalize_window leaves them.
 */
void fa3c_heuristics_resolve(const fa3c_heuristic_in *in, fa3c_heuristic_out *out) {
    int64_t g = in->h_k > 0 ? in->h / in->h_k : 1;
    fa3c_tile tma = fa3c_tile_size_sm90(in->d, in->dv, in->is_causal, in->is_local, in->elem_size, false, false,
                                        in->softcap);
    bool tma_ok = in->page_size % tma.block_n == 0 && !in->has_leftpad && !in->append && in->s_q * g > tma.block_m;
    out->paged_non_tma = in->paged && !tma_ok;
    fa3c_tile t = fa3c_tile_size_sm90(in->d, in->dv, in->is_causal, in->is_local, in->elem_size, false,
                                      out->paged_non_tma, in->softcap);
    out->block_m = t.block_m;
    out->block_n = t.block_n;
    out->num_splits = in->num_splits_req > 0 ? in->num_splits_req : auto_num_splits(in, t, g);
    if (out->paged_non_tma || out->num_splits > 1) out->pack_gqa = true;
    else if (in->pack_gqa_req >= 0) out->pack_gqa = in->pack_gqa_req != 0;
    else if (in->h == in->h_k) out->pack_gqa = false;
    else out->pack_gqa = fa3c_should_pack_gqa(in->varlen_q, in->s_q, g, t.block_m);
}

fa3c_status fa3c_problem_heuristics(const fa3c_context *ctx, fa3c_problem *p) {
    const fa3c_fwd_args *a = p->args;
    int32_t num_sm = ctx->num_sm - a->sm_margin;
    p->num_sm = num_sm > 1 ? num_sm : 1;
    /* Empty head counts run nothing; give the heuristics a ratio they can divide by. */
    bool heads = p->h > 0 && p->h_k > 0;
    fa3c_heuristic_in in = {
        .b = p->b, .s_q = p->s_q, .s_k = p->s_k, .h = heads ? p->h : 1, .h_k = heads ? p->h_k : 1,
        .d = p->d, .dv = p->dv, .elem_size = p->is_fp8 ? 1 : 2,
        .is_causal = p->is_causal, .is_local = p->is_local, .paged = p->paged,
        .has_leftpad = fa3c_present(&a->leftpad_k), .append = p->append, .softcap = p->softcap > 0.f,
        .is_varlen = p->is_varlen, .varlen_q = fa3c_present(&a->cu_seqlens_q) || fa3c_present(&a->seqused_q),
        .page_size = p->page_size, .window_left = p->window_left, .window_right = p->window_right,
        .chunk = p->chunk, .num_sm = p->num_sm, .num_splits_req = a->num_splits, .pack_gqa_req = a->pack_gqa,
    };
    fa3c_heuristic_out out;
    fa3c_heuristics_resolve(&in, &out);
    if (out.num_splits < 1 || out.num_splits > 256 || out.block_m < 1 || out.block_n < 1)
        return fa3c_fail(FA3C_ERROR_INTERNAL, "heuristics: resolved num_splits %d, tile %dx%d out of range",
                         (int)out.num_splits, (int)out.block_m, (int)out.block_n);
    p->num_splits = out.num_splits;
    p->pack_gqa = out.pack_gqa;
    p->block_m = out.block_m;
    p->block_n = out.block_n;
    return FA3C_OK;
}
