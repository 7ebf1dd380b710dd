// Attention kernels for e4m3 inputs (fp8, bf16 out) on the mma.sync path (cuda_attn.cuh): tiles
// converted to fp16 in shared memory; every head-dim pair FA3 has for fp8 (d = dv = 64, 96, 128,
// 192, 256 and d 192 / dv 128); many rows and decode.
#include "cuda/cuda_attn.cuh"

extern const cuda_attn_kernel fa3c_cuda_attn_e4m3[CUDA_ATTN_E4M3_KERNELS] = {
    ATTN_KERNEL_SET_E4M3(64, 64, 2, "d64"),
    ATTN_KERNEL_SET_E4M3(96, 96, 2, "d96"),
    ATTN_KERNEL_SET_E4M3(128, 128, 2, "d128"),
    ATTN_KERNEL_SET_E4M3(192, 192, 1, "d192"),
    ATTN_KERNEL_SET_E4M3(192, 128, 1, "d192_dv128"),
    ATTN_KERNEL_SET_E4M3(256, 256, 1, "d256"),
};
