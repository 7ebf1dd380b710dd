/* Tensor descriptor helpers. */
#include "core/internal.h"

#include <stdio.h>
#include <string.h>

int64_t fa3c_numel(const fa3c_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

const char *fa3c_shape_str(const fa3c_tensor *t, char *buf, size_t n) {
    size_t used = 0;
    used += (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < t->ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (used < n) snprintf(buf + used, n - used, t->ndim == 1 ? ",)" : ")");
    return buf;
}

fa3c_tensor fa3c_tensor_contiguous(void *data, fa3c_dtype dtype, int32_t ndim, const int64_t *shape) {
    fa3c_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.device_type = FA3C_DEVICE_CPU;
    if (ndim < 0 || ndim > FA3C_MAX_DIMS) ndim = 0;
    t.ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = stride;
        stride *= shape[i] > 0 ? shape[i] : 1;
    }
    return t;
}

void fa3c_tensor_fill(const fa3c_tensor *t, float value) {
    if (fa3c_numel(t) == 0) return;
    int64_t idx[FA3C_MAX_DIMS] = {0};
    for (;;) {
        fa3c_store(t->data, t->dtype, fa3c_offset(t, idx), value);
        int dim = t->ndim - 1;
        while (dim >= 0 && ++idx[dim] == t->shape[dim]) idx[dim--] = 0;
        if (dim < 0) return;
    }
}
