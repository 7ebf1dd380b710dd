// Attention kernels of head-dim bucket 256 (d <= 256, dv == d): 16 rows a warp (its accumulators
// leave no registers for more), and decode; bf16 and f16 (cuda_attn.cuh).
#include "cuda/cuda_attn.cuh"

extern const cuda_attn_kernel fa3c_cuda_attn_d256[CUDA_ATTN_KERNELS_PER_BUCKET] = {
    ATTN_KERNEL_SET(256, 256, 1, "d256"),
};
