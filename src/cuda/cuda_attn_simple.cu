// The SIMT fallback attention: correct, not fast. It runs every problem the tensor-core kernels
// refuse (e4m3 inputs, qv, head dims without a tile, unaligned rows), with the math of
// SEMANTICS.md written out per query row: one warp per (sequence bi, q head hq, query row i),
// lanes own the dims c = lane + 32 t of q / qv and of the output, fp32 throughout.
//   score_j = scale * (qd*kd * q.k_j + qv.v_j), softcapped; j in the row's visible range
//   intersected with split s's keys; online softmax; the sink enters split 0 only.
// Shapes: q (b, s_q, h, d) / (total_q, h, d); qv likewise with dv; k, v cache as in
// fa3c_cache_offset; out (.., h, dv); lse (b, h, s_q) / (h, total_q); partials (S, b, h, s_q, dv) /
// (S, h, total_q, dv) and (S, b, h, s_q) / (S, h, total_q); descales (b, h_k).
#include "cuda/cuda_internal.cuh"

#define SIMPLE_WARPS 4
#define SIMPLE_QD (CUDA_SIMPLE_MAX_D / 32)
#define SIMPLE_VD (CUDA_SIMPLE_MAX_DV / 32)

__device__ __forceinline__ float simple_warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Element offset (head term included) of cache row r, kv head hk (fa3c_cache_offset).
__device__ __forceinline__ int64_t simple_cache_row(const cuda_attn_params &p, const cuda_seqlens &sl, int64_t r,
                                                    int hk, int64_t sb, int64_t sr, int64_t sh) {
    if (p.page_table) {
        int64_t page = p.page_table[(int64_t)sl.k_batch * p.pt_sb + r / p.page_size];
        return page * sb + (r % p.page_size) * sr + (int64_t)hk * sh;
    }
    return (int64_t)sl.k_batch * sb + r * sr + (int64_t)hk * sh;
}

__global__ void __launch_bounds__(SIMPLE_WARPS * 32) simple_attn_kernel(const __grid_constant__ cuda_simple_params sp) {
    const cuda_attn_params &p = sp.a;
    const int lane = threadIdx.x & 31;
    const int64_t w = (int64_t)blockIdx.x * SIMPLE_WARPS + threadIdx.x / 32;
    const int64_t s_q = p.seq.s_q;
    if (w >= (int64_t)p.b * p.h * s_q) return; // warp-uniform
    const int i = (int)(w % s_q), hq = (int)(w / s_q % p.h), bi = (int)(w / s_q / p.h);
    // Warp-collective, before any row-dependent return.
    const bool poison = p.num_splits == 1 && !cuda_meta_ok(p.meta);
    const cuda_seqlens sl = cuda_seqlens_get(p.seq, bi);
    if (i >= sl.seqlen_q) return;
    const int hk = hq / p.g, d = p.d, dv = p.dv;
    const int64_t row = (int64_t)sl.q_offset + i;

    // q (rotated at its position and rounded to the input dtype, as FA3 does) and qv.
    float q[SIMPLE_QD], qv[SIMPLE_VD];
    const int64_t q_base = (int64_t)bi * p.q_sb + row * p.q_sr + (int64_t)hq * p.q_sh;
    const int half = p.rotary_dim / 2;
    const int64_t pos = p.rot_cos ? (int64_t)sl.rotary_base + (p.rot_per_row ? i : 0) : 0;
#pragma unroll
    for (int t = 0; t < SIMPLE_QD; t++) {
        int c = lane + 32 * t;
        q[t] = 0.0f;
        if (c >= d) continue;
        float x = cuda_load_any(p.q, sp.in_dtype, q_base + c);
        if (p.rot_cos && c < p.rotary_dim) {
            int u, partner;
            bool first;
            if (p.rot_interleaved) u = c / 2, first = (c & 1) == 0, partner = c ^ 1;
            else first = c < half, u = first ? c : c - half, partner = first ? c + half : c - half;
            float cf = cuda_load_any(p.rot_cos, sp.rot_dtype, pos * half + u);
            float sf = cuda_load_any(p.rot_sin, sp.rot_dtype, pos * half + u);
            float o = cuda_load_any(p.q, sp.in_dtype, q_base + partner);
            x = first ? __fsub_rn(__fmul_rn(x, cf), __fmul_rn(o, sf)) : __fadd_rn(__fmul_rn(o, sf), __fmul_rn(x, cf));
            x = cuda_round_any(sp.in_dtype, x);
        }
        q[t] = x;
    }
    const int64_t qv_base = (int64_t)bi * sp.a.qv_sb + row * sp.a.qv_sr + (int64_t)hq * sp.a.qv_sh;
#pragma unroll
    for (int t = 0; t < SIMPLE_VD; t++) {
        int c = lane + 32 * t;
        qv[t] = sp.a.qv && c < dv ? cuda_load_any(sp.a.qv, sp.in_dtype, qv_base + c) : 0.0f;
    }

    const float qk_ds = cuda_descale(p.q_ds, p.qd_sb, p.qd_sh, bi, hk) * cuda_descale(p.k_ds, p.kd_sb, p.kd_sh, bi, hk);
    const float v_ds = cuda_descale(p.v_ds, p.vd_sb, p.vd_sh, bi, hk);
    const float scale = sp.scale;
    const float sink = p.sinks ? cuda_load_float(p.sinks, p.sinks_dtype, hq) : -INFINITY;
    const int seqlen_k = max(sl.seqlen_k, 0);
    int64_t lo, hi;
    cuda_mask_range(p.mask, i, sl.seqlen_q, seqlen_k, &lo, &hi);
    const int S = p.num_splits;
    int n = p.splits_dyn ? p.splits_dyn[bi] : S;
    n = n < 1 ? 1 : n > S ? S : n;

    for (int s = 0; s < S; s++) {
        float m = -INFINITY, l = 0.0f, acc[SIMPLE_VD];
#pragma unroll
        for (int t = 0; t < SIMPLE_VD; t++) acc[t] = 0.0f;
        if (s < n) {
            int64_t key_lo = lo, key_hi = hi;
            if (S > 1) {
                int64_t a, b;
                cuda_split_range(seqlen_k, p.split_block_n, n, s, &a, &b);
                key_lo = max(key_lo, a), key_hi = min(key_hi, b);
            }
            if (s == 0 && sink > -INFINITY) m = sink, l = 1.0f;
            for (int64_t j = key_lo; j < key_hi; j++) {
                int64_t r = (int64_t)sl.k_offset + j;
                int64_t kb = simple_cache_row(p, sl, r, hk, p.k_sb, p.k_sr, p.k_sh);
                int64_t vb = simple_cache_row(p, sl, r, hk, p.v_sb, p.v_sr, p.v_sh);
                float dot = 0.0f, dotv = 0.0f, vv[SIMPLE_VD];
#pragma unroll
                for (int t = 0; t < SIMPLE_QD; t++) {
                    int c = lane + 32 * t;
                    if (c < d) dot += q[t] * cuda_load_any(p.k, sp.in_dtype, kb + c);
                }
#pragma unroll
                for (int t = 0; t < SIMPLE_VD; t++) {
                    int c = lane + 32 * t;
                    vv[t] = c < dv ? cuda_load_any(p.v, sp.in_dtype, vb + c) : 0.0f;
                    if (sp.a.qv) dotv += qv[t] * vv[t];
                }
                float score = qk_ds * simple_warp_sum(dot);
                if (sp.a.qv) score += simple_warp_sum(dotv);
                score *= scale;
                if (p.softcap > 0.0f) score = p.softcap * tanhf(score / p.softcap);
                float m_new = fmaxf(m, score);
                float corr = m == -INFINITY ? 0.0f : expf(m - m_new), e = expf(score - m_new);
                l = l * corr + e;
#pragma unroll
                for (int t = 0; t < SIMPLE_VD; t++) acc[t] = acc[t] * corr + e * vv[t];
                m = m_new;
            }
        }
        const bool any = m > -INFINITY;
        float lse = any ? m + logf(l) : -INFINITY, inv = any ? v_ds / l : 0.0f;
        if (S > 1) {
            float *dst = p.oacc + s * p.oa_ss + bi * p.oa_sb + hq * p.oa_sh + row * p.oa_sr;
#pragma unroll
            for (int t = 0; t < SIMPLE_VD; t++) {
                int c = lane + 32 * t;
                if (c < dv) dst[c] = acc[t] * inv;
            }
            if (lane == 0) p.lacc[s * p.la_ss + bi * p.la_sb + hq * p.la_sh + row * p.la_sr] = lse;
        } else {
            const int64_t o_base = (int64_t)bi * p.o_sb + row * p.o_sr + (int64_t)hq * p.o_sh;
#pragma unroll
            for (int t = 0; t < SIMPLE_VD; t++) {
                int c = lane + 32 * t;
                if (c < dv) cuda_store_float(p.out, sp.out_dtype, o_base + c, poison ? NAN : acc[t] * inv);
            }
            if (lane == 0 && p.lse) p.lse[bi * p.l_sb + hq * p.l_sh + row * p.l_sr] = poison ? NAN : lse;
        }
    }
}

cudaError_t cuda_simple_launch(const cuda_simple_params *p, cudaStream_t stream) {
    int64_t warps = (int64_t)p->a.b * p->a.h * p->a.seq.s_q;
    int64_t blocks = (warps + SIMPLE_WARPS - 1) / SIMPLE_WARPS;
    if (blocks == 0) return cudaSuccess;
    simple_attn_kernel<<<(unsigned)blocks, SIMPLE_WARPS * 32, 0, stream>>>(*p);
    return cudaGetLastError();
}
