// Attention kernels of head-dim bucket 192: d <= 192 with dv == d, and FA3's d in (128, 192] with
// dv in (96, 128] pair (dv bucket 128); 16 rows a warp, and decode; bf16 and f16 (cuda_attn.cuh).
#include "cuda/cuda_attn.cuh"

extern const cuda_attn_kernel fa3c_cuda_attn_d192[2 * CUDA_ATTN_KERNELS_PER_BUCKET] = {
    ATTN_KERNEL_SET(192, 192, 1, "d192"),
    ATTN_KERNEL_SET(192, 128, 1, "d192_dv128"),
};
