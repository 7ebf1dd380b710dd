// FA3's prepare_varlen_num_blocks, the split-count part, on the device: the per-sequence split
// counts of a varlen forward exactly as fa3c_sched_compute (src/core/sched_meta.c) derives them.
//   m_b = ceil(rows_b / block_m) (rows = seqlen_q, times h / h_k when packed),
//   n_b = ceil(seqlen_k / block_n), total = sum_b m_b * n_b,
//   blocks_per_sm = ceil(total * 1.1 * heads / num_sm) in float (as the host code, so the counts agree),
//   splits_b = clamp(ceil(n_b / blocks_per_sm), 1, S); 1 for every sequence when S == 1 or b > 992
//   (FA3 splits dynamically only within one prepare CTA).
#include "cuda/cuda_internal.cuh"

#define PREPARE_THREADS 256
#define PREPARE_MAX_DYNAMIC_BATCH 992

__device__ __forceinline__ void prepare_blocks(const cuda_prepare_params &p, int bi, int64_t *m, int64_t *n) {
    cuda_seqlens sl = cuda_seqlens_get(p.seq, bi);
    int64_t rows = (int64_t)max(sl.seqlen_q, 0) * p.rows_per_q, keys = max(sl.seqlen_k, 0);
    *m = (rows + p.block_m - 1) / p.block_m;
    *n = (keys + p.block_n - 1) / p.block_n;
}

__global__ void __launch_bounds__(PREPARE_THREADS) prepare_kernel(const __grid_constant__ cuda_prepare_params p) {
    __shared__ unsigned long long total;
    if (threadIdx.x == 0) total = 0;
    __syncthreads();
    bool dynamic = p.b <= PREPARE_MAX_DYNAMIC_BATCH && p.num_splits > 1;
    if (dynamic) {
        int64_t part = 0, m, n;
        for (int bi = threadIdx.x; bi < p.b; bi += PREPARE_THREADS) {
            prepare_blocks(p, bi, &m, &n);
            part += m * n;
        }
        atomicAdd(&total, (unsigned long long)part);
    }
    __syncthreads();
    int64_t per_sm = (int64_t)ceilf((float)(int64_t)total * 1.1f * (float)p.heads / (float)p.num_sm);
    for (int bi = threadIdx.x; bi < p.b; bi += PREPARE_THREADS) {
        int64_t s = 1, m, n;
        if (dynamic && per_sm > 0) {
            prepare_blocks(p, bi, &m, &n);
            s = (n + per_sm - 1) / per_sm;
            s = s < p.num_splits ? s : p.num_splits;
            s = s > 1 ? s : 1;
        }
        p.splits[bi] = (int32_t)s;
    }
}

cudaError_t cuda_prepare_launch(const cuda_prepare_params *p, cudaStream_t stream) {
    if (p->b == 0) return cudaSuccess;
    prepare_kernel<<<1, PREPARE_THREADS, 0, stream>>>(*p);
    return cudaGetLastError();
}
