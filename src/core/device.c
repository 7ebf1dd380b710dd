/* Device probe of a build without CUDA: no CUDA devices. (With CUDA: src/cuda/cuda_device.cu.) */
#include "core/internal.h"

#ifndef FA3C_HAVE_CUDA
int fa3c_cuda_device_count(void) { return 0; }

fa3c_status fa3c_cuda_device_info(int device, char *name, size_t name_len, int *num_sm, int *cc_major,
                                  int *cc_minor) {
    (void)name, (void)name_len, (void)num_sm, (void)cc_major, (void)cc_minor;
    return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda device %d: fa3c was built without CUDA", device);
}
#endif
