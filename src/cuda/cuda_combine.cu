// Merging partial attention results (the one combine rule of SEMANTICS.md: over parts with a
// finite lse, M = max lse_s, L = sum exp(lse_s - M), lse = M + log L, out = sum exp(lse_s - M) / L
// out_s; none: out 0, lse -inf), used by the split-KV forward, fa3c_combine and
// fa3c_merge_state; and a strided fill for the forward's "no keys" case.
#include "cuda/cuda_internal.cuh"

#define COMBINE_WARPS 8
#define COMBINE_MAX_SPLITS 256

// One warp per row (bi, i, hq) of out (b, s, h, dv): lanes split the S lse values, then the dv
// columns (coalesced across the warp). Weights go through shared memory, one row per warp.
__global__ void __launch_bounds__(COMBINE_WARPS * 32) combine_kernel(const __grid_constant__ cuda_combine_params p) {
    __shared__ float sw[COMBINE_WARPS][COMBINE_MAX_SPLITS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t idx = (int64_t)blockIdx.x * COMBINE_WARPS + warp, per_b = (int64_t)p.s * p.h;
    if (idx >= per_b * p.b) return;
    const int bi = (int)(idx / per_b), i = (int)(idx % per_b / p.h), hq = (int)(idx % p.h);
    int64_t tok = i;
    int S = p.S;
    bool poison = false; // the forward's metadata failed its device check: NaN instead of an answer
    if (p.fwd) {
        cuda_seqlens sl = cuda_seqlens_get(p.seq, bi);
        if (i >= sl.seqlen_q) return;
        tok = (int64_t)sl.q_offset + i;
        poison = !cuda_meta_ok(p.meta);
        if (p.splits_dyn) {
            int n = p.splits_dyn[bi];
            poison = poison || n < 1 || n > S;
            S = min(S, max(n, 0));
        }
    }
    float *w = sw[warp];
    const float *lp = p.lp + bi * p.lp_sb + tok * p.lp_sr + hq * p.lp_sh;
    for (int s = lane; s < S; s += 32) w[s] = lp[s * p.lp_ss];
    const float lse = cuda_slot_weights(w, S, lane);
    if (lane == 0 && p.lse) p.lse[bi * p.l_sb + tok * p.l_sr + hq * p.l_sh] = poison ? NAN : lse;
    __syncwarp();

    const float *op = p.op + bi * p.op_sb + tok * p.op_sr + hq * p.op_sh;
    int64_t ob = bi * p.o_sb + tok * p.o_sr + hq * p.o_sh;
    for (int c = lane; c < p.dv; c += 32) {
        const float acc = cuda_weighted_slots(w, op + c, p.op_ss, S);
        cuda_store_float(p.out, p.out_dtype, ob + c, poison ? NAN : acc);
    }
}

cudaError_t cuda_combine_launch(const cuda_combine_params *p, cudaStream_t stream) {
    int64_t rows = (int64_t)p->b * p->s * p->h;
    if (rows == 0) return cudaSuccess;
    combine_kernel<<<(unsigned)((rows + COMBINE_WARPS - 1) / COMBINE_WARPS), COMBINE_WARPS * 32, 0, stream>>>(*p);
    return cudaGetLastError();
}

// One warp per row (ni, hi) of out (n, h, dv). Every lane reads both lse values before lane 0
// writes lse, and each column is read before it is written by the same lane, so out and lse may
// alias either input.
__global__ void __launch_bounds__(COMBINE_WARPS * 32) merge_kernel(const __grid_constant__ cuda_merge_params p) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t idx = (int64_t)blockIdx.x * COMBINE_WARPS + warp;
    if (idx >= (int64_t)p.n * p.h) return;
    const int64_t ni = idx / p.h, hi = idx % p.h;
    float la = p.la[ni * p.la_sn + hi * p.la_sh], lb = p.lb[ni * p.lb_sn + hi * p.lb_sh];
    bool fa = isfinite(la), fb = isfinite(lb);
    float M = fmaxf(fa ? la : -INFINITY, fb ? lb : -INFINITY);
    float L = (fa ? expf(la - M) : 0.0f) + (fb ? expf(lb - M) : 0.0f);
    float wa = M != -INFINITY && fa ? expf(la - M) / L : 0.0f, wb = M != -INFINITY && fb ? expf(lb - M) / L : 0.0f;
    __syncwarp();
    int64_t a0 = ni * p.oa_sn + hi * p.oa_sh, b0 = ni * p.ob_sn + hi * p.ob_sh, o0 = ni * p.o_sn + hi * p.o_sh;
    for (int c = lane; c < p.dv; c += 32) {
        float acc = 0.0f;
        if (M != -INFINITY && fa) acc += wa * cuda_load_float(p.oa, p.oa_dtype, a0 + c);
        if (M != -INFINITY && fb) acc += wb * cuda_load_float(p.ob, p.ob_dtype, b0 + c);
        cuda_store_float(p.out, p.out_dtype, o0 + c, acc);
    }
    if (lane == 0 && p.lse) p.lse[ni * p.l_sn + hi * p.l_sh] = M == -INFINITY ? -INFINITY : M + logf(L);
}

cudaError_t cuda_merge_launch(const cuda_merge_params *p, cudaStream_t stream) {
    int64_t rows = (int64_t)p->n * p->h;
    if (rows == 0) return cudaSuccess;
    merge_kernel<<<(unsigned)((rows + COMBINE_WARPS - 1) / COMBINE_WARPS), COMBINE_WARPS * 32, 0, stream>>>(*p);
    return cudaGetLastError();
}

typedef struct fill_params {
    void   *data;
    int32_t dtype, ndim;
    int64_t shape[FA3C_MAX_DIMS], stride[FA3C_MAX_DIMS];
    int64_t numel;
    float   value;
} fill_params;

__global__ void fill_kernel(const __grid_constant__ fill_params p) {
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < p.numel; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t rest = e, off = 0;
        for (int d = p.ndim - 1; d >= 0; d--) {
            off += rest % p.shape[d] * p.stride[d];
            rest /= p.shape[d];
        }
        cuda_store_float(p.data, p.dtype, off, p.value);
    }
}

cudaError_t cuda_fill_launch(const fa3c_tensor *t, float value, cudaStream_t stream) {
    fill_params p;
    p.data = t->data;
    p.dtype = t->dtype;
    p.ndim = t->ndim;
    p.numel = fa3c_numel(t);
    p.value = value;
    for (int d = 0; d < t->ndim; d++) {
        p.shape[d] = t->shape[d];
        p.stride[d] = t->stride[d];
    }
    if (p.numel == 0) return cudaSuccess;
    int64_t blocks = (p.numel + 255) / 256;
    fill_kernel<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, stream>>>(p);
    return cudaGetLastError();
}
