// Attention kernels of head-dim bucket 64 (d <= 64, dv == d): 32 rows a warp, and decode; bf16
// and f16 (cuda_attn.cuh).
#include "cuda/cuda_attn.cuh"

extern const cuda_attn_kernel fa3c_cuda_attn_d64[CUDA_ATTN_KERNELS_PER_BUCKET] = {
    ATTN_KERNEL_SET(64, 64, 2, "d64"),
};
