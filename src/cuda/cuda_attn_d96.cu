// Attention kernels of head-dim bucket 96 (d <= 96, dv == d): 32 rows a warp, and decode; bf16
// and f16 (cuda_attn.cuh).
#include "cuda/cuda_attn.cuh"

extern const cuda_attn_kernel fa3c_cuda_attn_d96[CUDA_ATTN_KERNELS_PER_BUCKET] = {
    ATTN_KERNEL_SET(96, 96, 2, "d96"),
};
