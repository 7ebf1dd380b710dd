// Attention kernels for e4m3 inputs (fp8, bf16 out) on the mma.sync path (cuda_attn.cuh): tiles
// converted to fp16 in shared memory, d = dv = 64, 128 or 256; many rows and decode.
#include "cuda/cuda_attn.cuh"

extern const cuda_attn_kernel fa3c_cuda_attn_e4m3[CUDA_ATTN_E4M3_KERNELS] = {
    ATTN_KERNEL_SET_E4M3(64, 2, "d64"),
    ATTN_KERNEL_SET_E4M3(128, 2, "d128"),
    ATTN_KERNEL_SET_E4M3(256, 1, "d256"),
};
