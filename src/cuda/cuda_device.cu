// CUDA device probe for `fa3c info` and backend availability. CUDA C, exported with C linkage.
#include <cuda_runtime.h>
#include <stdio.h>

#include "core/internal.h"

extern "C" int fa3c_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver/device" error for later calls
        return 0;
    }
    return n;
}

extern "C" fa3c_status fa3c_cuda_device_info(int device, char *name, size_t name_len, int *num_sm, int *cc_major,
                                             int *cc_minor) {
    cudaDeviceProp prop;
    cudaError_t err = cudaGetDeviceProperties(&prop, device);
    if (err != cudaSuccess)
        return fa3c_fail(FA3C_ERROR_DEVICE, "cuda device %d: %s", device, cudaGetErrorString(err));
    snprintf(name, name_len, "%s", prop.name);
    *num_sm = prop.multiProcessorCount;
    *cc_major = prop.major;
    *cc_minor = prop.minor;
    return FA3C_OK;
}
