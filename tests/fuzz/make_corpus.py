#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/fuzz_fwd.c: valid calls of every forward mode (batched,
varlen, paged, append, GQA, causal/local/chunk, softcap, sinks, qv, splits, fp8), scheduler
metadata, combine and merge_state, plus a few invalid ones. The byte format is documented at the
top of fuzz_fwd.c. Usage: make_corpus.py [dir] (default: the corpus/ directory next to this file).
"""
import os
import struct
import sys

D_INDEX = {64: 0, 32: 1, 16: 2, 128: 3, 8: 4, 256: 5, 96: 6, 192: 7, 40: 8, 24: 9, 0: 10, 7: 11, 264: 12}
DV_INDEX = {None: 0, 512: 1, 256: 2, 128: 3, 64: 4, 32: 5, 96: 6, 8: 7, 48: 9}
DTYPE = {"bf16": 0, "f16": 1, "e4m3": 2}

# mode bits
VARLEN_Q, VARLEN_K, PAGED, APPEND, SEQUSED_K, SEQUSED_Q, LEFTPAD, BATCH_IDX = (1 << i for i in range(8))
# feature bits
CAUSAL, LOCAL, CHUNK, SOFTCAP, SINKS, QV, ROTARY, ROT_INTERLEAVED = (1 << i for i in range(8))
# extra bits
NO_LSE, OUT_ACCUM, CU_NEW, META = 1, 2, 4, 8
META_OTHER, META_RANDOM, META_SHORT = 16, 32, 48
SEQLENS_ROT, NONFINITE = 64, 128
# option bits (low two bits: check_inputs 0 -> 1, 1 -> 0, 2 -> -1)
CHECK_OFF, CHECK_DEFAULT, DESCALE, SCALE, PAD, NEG = 1, 2, 4, 8, 64, 128


def s8(v):
    return struct.pack("b", v)[0]


def fwd(mode=0, feat=0, extra=0, opt=0, dtype="bf16", b=2, s_q=4, s_k=17, s_new=0, h_k=1, ratio=1, d=64,
        dv=None, page_size=4, spare_pages=0, spare_rows=0, num_splits=1, pack_gqa=-1, wl=-1, wr=-1, chunk=8,
        softcap=5.0, sm_margin=0, rotary_dim=32, s_ro_slack=0, scale=0.25, seed=1, seqs=(), perturb=(), op=0):
    out = [op, mode, feat, extra, opt, DTYPE[dtype], b, (s_q - 1) % 256 if s_q else 255,
           (s_k - 1) % 256 if s_k else 255, s_new, (h_k - 1) if h_k else 255, ratio - 1, D_INDEX[d], DV_INDEX[dv],
           page_size - 1, spare_pages | spare_rows << 3, s8(num_splits), pack_gqa + 1, s8(wl), s8(wr), chunk - 1,
           int((softcap - 0.5) * 8), sm_margin, rotary_dim // 16 - 1, s8(s_ro_slack), int(scale * 32)]
    out += list(struct.pack(">I", seed))
    seqs = list(seqs) + [(0, 0, 0, 0)] * max(0, b - len(seqs))
    for q_short, k_short, new_short, leftpad in seqs[:b]:
        out += [q_short, k_short, new_short, leftpad]
    for rec in perturb:
        out += list(rec)
    return bytes(out)


def combine(flags=0, S=3, b=2, s=3, h=2, dv=16, out_dtype=1, seed=5, merge=False):
    return bytes([8 if merge else 7, flags, S, b, s, h, dv, out_dtype] + list(struct.pack(">I", seed)))


def cases():
    c = {}
    # batched prefill
    c["batched_basic"] = fwd()
    c["batched_causal_gqa"] = fwd(feat=CAUSAL, h_k=2, ratio=4, s_q=9, s_k=33, d=128)
    c["batched_local"] = fwd(feat=LOCAL, wl=5, wr=2, s_q=7, s_k=29, dtype="f16")
    c["batched_chunk_causal"] = fwd(feat=CHUNK | CAUSAL, chunk=6, s_q=8, s_k=25)
    c["batched_softcap_sinks"] = fwd(feat=SOFTCAP | SINKS, softcap=7.5, opt=16, h_k=2, ratio=2)
    c["batched_splits_accum"] = fwd(num_splits=3, extra=OUT_ACCUM, s_q=1, s_k=40, h_k=2, ratio=3)
    c["batched_splits_heuristic"] = fwd(num_splits=0, s_q=2, s_k=40, h_k=1, ratio=4, pack_gqa=1)
    c["batched_pack_gqa_off"] = fwd(pack_gqa=0, h_k=3, ratio=2, feat=CAUSAL)
    c["batched_padded_strides"] = fwd(opt=PAD, feat=CAUSAL, h_k=2, ratio=2)
    c["batched_negative_strides"] = fwd(opt=NEG | PAD, s_q=5, s_k=11)
    c["batched_d256"] = fwd(d=256, s_q=3, s_k=9, b=1)
    c["batched_d192_dv128"] = fwd(d=192, dv=128, s_q=3, s_k=9)
    c["batched_qv"] = fwd(feat=QV, d=64, dv=512, s_q=3, s_k=10, b=1)
    c["batched_scale"] = fwd(opt=SCALE, scale=1.5)
    c["batched_sq_gt_sk_causal"] = fwd(feat=CAUSAL, s_q=9, s_k=3)
    c["batched_fp8_descale"] = fwd(dtype="e4m3", opt=DESCALE, d=128, h_k=2, ratio=2, feat=CAUSAL)
    c["batched_fp8_splits"] = fwd(dtype="e4m3", d=64, num_splits=2, extra=OUT_ACCUM, s_q=1, s_k=40)
    # varlen
    c["varlen_basic"] = fwd(mode=VARLEN_Q | VARLEN_K, b=3, s_q=9, s_k=30, seqs=[(2, 3, 0, 0), (0, 20, 0, 0),
                                                                                    (8, 0, 0, 0)])
    c["varlen_causal_gqa"] = fwd(mode=VARLEN_Q | VARLEN_K, feat=CAUSAL, b=4, h_k=2, ratio=4, s_q=9, s_k=25,
                                 seqs=[(1, 1, 0, 0), (9, 25, 0, 0), (3, 0, 0, 0), (0, 5, 0, 0)])
    c["varlen_seqused"] = fwd(mode=VARLEN_Q | VARLEN_K | SEQUSED_Q | SEQUSED_K, b=3, s_q=8, s_k=20,
                              seqs=[(1, 2, 1, 0), (0, 0, 2, 0), (5, 4, 0, 0)])
    c["varlen_splits_accum"] = fwd(mode=VARLEN_Q | VARLEN_K, num_splits=3, extra=OUT_ACCUM, b=2, s_q=2, s_k=40,
                                   h_k=2, ratio=2)
    c["varlen_local_softcap"] = fwd(mode=VARLEN_Q | VARLEN_K, feat=LOCAL | SOFTCAP, wl=4, wr=0, b=3, s_q=9, s_k=30)
    c["varlen_q_only_padded"] = fwd(mode=VARLEN_Q, opt=PAD, b=3, s_q=6, s_k=12)
    c["varlen_empty_seqs"] = fwd(mode=VARLEN_Q | VARLEN_K, b=4, s_q=3, s_k=5,
                                 seqs=[(3, 5, 0, 0), (0, 0, 0, 0), (3, 0, 0, 0), (0, 5, 0, 0)])
    # kvcache (batched cache with cache_seqlens), paged, append, rotary, leftpad, batch index
    c["kvcache_decode"] = fwd(mode=SEQUSED_K, s_q=1, s_k=40, b=3, h_k=2, ratio=4, num_splits=0,
                              seqs=[(0, 0, 1, 0), (0, 0, 2, 0), (0, 0, 0, 0)])
    c["kvcache_leftpad_batchidx"] = fwd(mode=SEQUSED_K | LEFTPAD | BATCH_IDX, spare_rows=2, s_q=2, s_k=30, b=3,
                                        seqs=[(0, 0, 0, 3), (0, 0, 1, 1), (0, 0, 2, 2)])
    c["paged_decode"] = fwd(mode=PAGED | SEQUSED_K, page_size=4, spare_pages=3, s_q=1, s_k=37, b=3, h_k=2, ratio=2,
                            num_splits=3, extra=OUT_ACCUM)
    c["paged_page1"] = fwd(mode=PAGED | SEQUSED_K, page_size=1, s_q=1, s_k=20, b=2)
    c["paged_page16_causal"] = fwd(mode=PAGED | SEQUSED_K, page_size=16, s_q=4, s_k=40, b=2, feat=CAUSAL)
    c["paged_append_rotary"] = fwd(mode=PAGED | APPEND, feat=ROTARY | CAUSAL, s_new=2, s_q=2, s_k=30, page_size=5,
                                   b=2, h_k=2, ratio=2)
    c["paged_append_rotary_interleaved"] = fwd(mode=PAGED | APPEND, feat=ROTARY | ROT_INTERLEAVED, s_new=1, s_q=1,
                                               s_k=25, page_size=3, b=3, extra=SEQLENS_ROT)
    c["append_varlen_new"] = fwd(mode=APPEND | VARLEN_Q, extra=CU_NEW, s_new=3, s_q=3, s_k=30, b=3,
                                 seqs=[(0, 0, 1, 0), (1, 0, 0, 0), (2, 0, 3, 0)])
    c["append_batchidx_leftpad"] = fwd(mode=APPEND | LEFTPAD | BATCH_IDX, spare_rows=1, s_new=2, s_q=2, s_k=20,
                                       b=2, feat=CAUSAL, seqs=[(0, 0, 0, 2), (0, 0, 1, 1)])
    c["append_fp8_rotary"] = fwd(dtype="e4m3", mode=APPEND | PAGED, feat=ROTARY, opt=DESCALE, d=64, s_new=2,
                                 s_q=2, s_k=24, page_size=8, b=2)
    c["paged_sinks_chunk_splits"] = fwd(mode=PAGED | SEQUSED_K, feat=SINKS | CHUNK | CAUSAL, chunk=10,
                                        page_size=6, s_q=1, s_k=40, num_splits=3, opt=32)
    # scheduler metadata with the forward: computed, for another num_splits, random words, short
    c["meta_paged"] = fwd(mode=PAGED | SEQUSED_K, extra=META, page_size=4, s_q=1, s_k=37, b=3, num_splits=0)
    c["meta_varlen"] = fwd(mode=VARLEN_Q | VARLEN_K, extra=META, feat=CAUSAL, b=3, s_q=5, s_k=30, num_splits=3)
    c["meta_other_splits"] = fwd(mode=SEQUSED_K, extra=META | META_OTHER, s_q=1, s_k=30, num_splits=2)
    c["meta_random"] = fwd(mode=SEQUSED_K, extra=META | META_RANDOM, s_q=1, s_k=30)
    c["meta_short"] = fwd(mode=SEQUSED_K, extra=META | META_SHORT, s_q=1, s_k=30)
    c["sched_only_paged"] = fwd(op=9, mode=PAGED | SEQUSED_K, page_size=4, s_q=1, s_k=37, b=4, num_splits=0)
    c["sched_only_varlen_append"] = fwd(op=9, mode=VARLEN_Q | APPEND, extra=CU_NEW, feat=LOCAL, wl=3, wr=1, b=3,
                                        s_new=2, s_q=3, s_k=20)
    # check_inputs off with valid data, and index data that only the check catches
    c["check_off_valid"] = fwd(opt=CHECK_OFF, mode=PAGED | SEQUSED_K, s_q=1, s_k=20, page_size=3)
    c["bad_page_id_checked"] = fwd(mode=PAGED | SEQUSED_K, s_q=1, s_k=20, page_size=3, perturb=[(15, 7, 0, 3)])
    c["bad_cu_seqlens_checked"] = fwd(mode=VARLEN_Q | VARLEN_K, b=2, s_q=4, s_k=8, perturb=[(11, 7, 1, 5)])
    c["bad_seqused_k_default_check"] = fwd(opt=CHECK_DEFAULT, mode=SEQUSED_K, s_q=1, s_k=10, perturb=[(14, 7, 0, 4)])
    # invalid descriptors
    c["bad_head_dim"] = fwd(d=7)
    c["bad_stride_overflow"] = fwd(perturb=[(0, 4, 1, 1)])
    c["bad_rank"] = fwd(perturb=[(6, 2, 0, 1)])
    c["bad_dtype_k"] = fwd(perturb=[(1, 3, 0, 14)])
    c["bad_device"] = fwd(perturb=[(2, 5, 0, 0)])
    c["bad_shape_neg"] = fwd(perturb=[(0, 1, 2, 6)])
    c["bad_scalars"] = fwd(perturb=[(200, 3, 0, 1), (201, 9, 2, 3)])
    c["nonfinite_input"] = fwd(extra=NONFINITE, seed=3)
    c["empty_batch"] = fwd(b=0)
    c["empty_heads"] = fwd(h_k=0)
    c["no_keys"] = fwd(mode=VARLEN_Q | VARLEN_K, b=2, s_q=3, s_k=4, seqs=[(0, 4, 0, 0), (0, 4, 0, 0)])
    # combine / merge_state
    c["combine_5d"] = combine()
    c["combine_4d_special"] = combine(flags=1 | 4 | 8, S=4, out_dtype=0)
    c["combine_neg_nolse"] = combine(flags=2 | 16, S=2, out_dtype=2)
    c["merge_basic"] = combine(merge=True)
    c["merge_alias"] = combine(merge=True, flags=32 | 64, out_dtype=0)
    c["merge_special"] = combine(merge=True, flags=4 | 8, out_dtype=2)
    return c


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    for name, data in cases().items():
        with open(os.path.join(out, "seed_" + name), "wb") as f:
            f.write(data)
    print(f"make_corpus: {len(cases())} seeds in {out}")


if __name__ == "__main__":
    main()
