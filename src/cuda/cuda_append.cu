// The append phase of a kvcache forward (FA3 AppendKV), before any attention reads the cache: for
// every sequence b and j < seqlen_new, cache row k_offset + seqlen_k_og + j :=
// rotary(k_new row new_offset + j, position rotary_base + j) rounded to the cache dtype, and the
// v_new row unrotated. Shapes: k_new (b, s_new, h_k, d) or (total_new, h_k, d); v_new likewise
// with dv; rotary_cos/sin (s_ro, rotary_dim / 2) in the input dtype (any float dtype on the
// scalar path, which e4m3 caches take).
#include "cuda/cuda_internal.cuh"

#define APPEND_ROWS 16
#define APPEND_THREADS 128

__device__ __forceinline__ float append_f32(int bf16, uint16_t x) {
    return bf16 ? cuda_bf16_bits_to_f32(x) : cuda_f16_bits_to_f32(x);
}
__device__ __forceinline__ uint16_t append_round(int bf16, float x) {
    return bf16 ? cuda_f32_to_bf16_bits(x) : cuda_f32_to_f16_bits(x);
}

// Element offset (without the head term) of cache row r of sequence sl.
__device__ __forceinline__ int64_t append_cache_row(const cuda_append_params &p, const cuda_seqlens &sl, int r,
                                                    int64_t sb, int64_t sr) {
    if (p.page_table) {
        int64_t page = p.page_table[(int64_t)sl.k_batch * p.pt_sb + r / p.page_size];
        return page * sb + (int64_t)(r % p.page_size) * sr;
    }
    return (int64_t)sl.k_batch * sb + (int64_t)r * sr;
}

// Block = APPEND_ROWS appended rows of one (sequence, kv head); 16-byte chunks per thread.
// blockIdx.x = (bi * h_k + hk) * row_blocks + row_block.
__global__ void __launch_bounds__(APPEND_THREADS) append_kernel(const __grid_constant__ cuda_append_params p) {
    const int row_blocks = (p.max_new + APPEND_ROWS - 1) / APPEND_ROWS;
    const int blk = blockIdx.x % row_blocks, hk = blockIdx.x / row_blocks % p.h_k;
    const int bi = blockIdx.x / row_blocks / p.h_k;
    const cuda_seqlens sl = cuda_seqlens_get(p.seq, bi);
    const int j0 = blk * APPEND_ROWS;
    if (j0 >= sl.seqlen_new) return;
    const int nrow = min(APPEND_ROWS, sl.seqlen_new - j0);
    const int cpr_k = p.d / 8, cpr_v = p.dv / 8, half = p.rotary_dim / 2;

    for (int idx = threadIdx.x; idx < nrow * cpr_k; idx += APPEND_THREADS) {
        int j = j0 + idx / cpr_k, c = idx % cpr_k;
        const uint16_t *src = (const uint16_t *)p.k_new + (int64_t)bi * p.kn_sb + (int64_t)(sl.new_offset + j) * p.kn_sr +
                              (int64_t)hk * p.kn_sh + c * 8;
        uint16_t *dst = (uint16_t *)p.k + append_cache_row(p, sl, sl.k_offset + sl.seqlen_k_og + j, p.k_sb, p.k_sr) +
                        (int64_t)hk * p.k_sh + c * 8;
        uint4 raw = *(const uint4 *)src;
        if (p.rot_cos && c * 8 < p.rotary_dim) {
            const uint16_t *x = (const uint16_t *)&raw;
            int64_t pos = (int64_t)sl.rotary_base + j;
            const uint16_t *cs = (const uint16_t *)p.rot_cos + pos * half, *sn = (const uint16_t *)p.rot_sin + pos * half;
            uint16_t y[8];
            if (p.rot_interleaved) {
                for (int e = 0; e < 4; e++) {
                    int t = c * 4 + e;
                    float cf = append_f32(p.bf16, cs[t]), sf = append_f32(p.bf16, sn[t]);
                    float x0 = append_f32(p.bf16, x[2 * e]), x1 = append_f32(p.bf16, x[2 * e + 1]);
                    y[2 * e] = append_round(p.bf16, __fsub_rn(__fmul_rn(x0, cf), __fmul_rn(x1, sf)));
                    y[2 * e + 1] = append_round(p.bf16, __fadd_rn(__fmul_rn(x0, sf), __fmul_rn(x1, cf)));
                }
            } else {
                bool first = c * 8 < half;
                uint4 praw = *(const uint4 *)(src + (first ? half : -half));
                const uint16_t *xp = (const uint16_t *)&praw;
                for (int e = 0; e < 8; e++) {
                    int t = (first ? c * 8 : c * 8 - half) + e;
                    float cf = append_f32(p.bf16, cs[t]), sf = append_f32(p.bf16, sn[t]);
                    float a = append_f32(p.bf16, x[e]), o = append_f32(p.bf16, xp[e]);
                    y[e] = append_round(p.bf16, first ? __fsub_rn(__fmul_rn(a, cf), __fmul_rn(o, sf))
                                                      : __fadd_rn(__fmul_rn(o, sf), __fmul_rn(a, cf)));
                }
            }
            raw = *(const uint4 *)y;
        }
        *(uint4 *)dst = raw;
    }
    for (int idx = threadIdx.x; idx < nrow * cpr_v; idx += APPEND_THREADS) {
        int j = j0 + idx / cpr_v, c = idx % cpr_v;
        const uint16_t *src = (const uint16_t *)p.v_new + (int64_t)bi * p.vn_sb + (int64_t)(sl.new_offset + j) * p.vn_sr +
                              (int64_t)hk * p.vn_sh + c * 8;
        uint16_t *dst = (uint16_t *)p.v + append_cache_row(p, sl, sl.k_offset + sl.seqlen_k_og + j, p.v_sb, p.v_sr) +
                        (int64_t)hk * p.v_sh + c * 8;
        *(uint4 *)dst = *(const uint4 *)src;
    }
}

// The same append element by element, for any dtype and row alignment (p.scalar). A rotated
// element reads its pair partner from k_new too and is rounded once, to the cache dtype.
__global__ void __launch_bounds__(APPEND_THREADS) append_scalar_kernel(const __grid_constant__ cuda_append_params p) {
    const int row_blocks = (p.max_new + APPEND_ROWS - 1) / APPEND_ROWS;
    const int blk = blockIdx.x % row_blocks, hk = blockIdx.x / row_blocks % p.h_k;
    const int bi = blockIdx.x / row_blocks / p.h_k;
    const cuda_seqlens sl = cuda_seqlens_get(p.seq, bi);
    const int j0 = blk * APPEND_ROWS;
    if (j0 >= sl.seqlen_new) return;
    const int nrow = min(APPEND_ROWS, sl.seqlen_new - j0), half = p.rotary_dim / 2;
    const bool byte = p.dtype == FA3C_DTYPE_E4M3;

    for (int idx = threadIdx.x; idx < nrow * (p.d + p.dv); idx += APPEND_THREADS) {
        int j = j0 + idx / (p.d + p.dv), c = idx % (p.d + p.dv);
        bool is_k = c < p.d;
        if (!is_k) c -= p.d;
        int64_t src = (int64_t)bi * (is_k ? p.kn_sb : p.vn_sb) + (int64_t)(sl.new_offset + j) * (is_k ? p.kn_sr : p.vn_sr) +
                      (int64_t)hk * (is_k ? p.kn_sh : p.vn_sh);
        int64_t dst = append_cache_row(p, sl, sl.k_offset + sl.seqlen_k_og + j, is_k ? p.k_sb : p.v_sb,
                                       is_k ? p.k_sr : p.v_sr) + (int64_t)hk * (is_k ? p.k_sh : p.v_sh) + c;
        const void *in = is_k ? p.k_new : p.v_new;
        void *out = is_k ? p.k : p.v;
        if (is_k && p.rot_cos && c < p.rotary_dim) {
            int64_t pos = (int64_t)sl.rotary_base + j;
            int t, partner;
            bool first;
            if (p.rot_interleaved) t = c / 2, first = (c & 1) == 0, partner = c ^ 1;
            else first = c < half, t = first ? c : c - half, partner = first ? c + half : c - half;
            float cf = cuda_load_any(p.rot_cos, p.rot_dtype, pos * half + t);
            float sf = cuda_load_any(p.rot_sin, p.rot_dtype, pos * half + t);
            float x = cuda_load_any(in, p.dtype, src + c), o = cuda_load_any(in, p.dtype, src + partner);
            float y = first ? __fsub_rn(__fmul_rn(x, cf), __fmul_rn(o, sf)) : __fadd_rn(__fmul_rn(o, sf), __fmul_rn(x, cf));
            cuda_store_any(out, p.dtype, dst, y);
        } else if (byte) {
            ((uint8_t *)out)[dst] = ((const uint8_t *)in)[src + c];
        } else {
            ((uint16_t *)out)[dst] = ((const uint16_t *)in)[src + c];
        }
    }
}

cudaError_t cuda_append_launch(const cuda_append_params *p, cudaStream_t stream) {
    int64_t row_blocks = (p->max_new + APPEND_ROWS - 1) / APPEND_ROWS;
    int64_t blocks = row_blocks * p->h_k * p->b;
    if (blocks == 0) return cudaSuccess;
    if (p->scalar) append_scalar_kernel<<<(unsigned)blocks, APPEND_THREADS, 0, stream>>>(*p);
    else append_kernel<<<(unsigned)blocks, APPEND_THREADS, 0, stream>>>(*p);
    return cudaGetLastError();
}
