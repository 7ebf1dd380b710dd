/*
 * Tensor-descriptor checks shared by the validators of the public calls (fwd, scheduler
 * metadata, combine, merge_state). Internal; messages follow the library's rule: they name the
 * argument and give the expected and the actual value.
 */
#ifndef FA3C_VALIDATE_H
#define FA3C_VALIDATE_H

#include "core/internal.h"

/* Largest size of one dimension: FA3 keeps every size in an int, and with this bound products of
 * two sizes (b * s_q, max_pages * page_size) cannot overflow int64. */
#define FA3C_MAX_DIM_SIZE INT32_MAX
/* Largest element count of one tensor (2^48). Broadcast (stride 0) views could otherwise describe
 * element counts whose products with S or a head dim overflow int64 in a backend. */
#define FA3C_MAX_NUMEL (INT64_C(1) << 48)

/*
 * Checks what every present tensor argument must satisfy whatever its role: a known dtype,
 * 1 <= ndim <= FA3C_MAX_DIMS, 0 <= shape[i] <= FA3C_MAX_DIM_SIZE, numel <= FA3C_MAX_NUMEL, the
 * byte span of the strided view representable in int64, on the context's device, and (when not
 * empty) a non-NULL data pointer aligned to the element size. Absent tensors pass.
 */
fa3c_status fa3c_validate_tensor(const fa3c_context *ctx, const char *name, const fa3c_tensor *t);

/* t has exactly the given shape (ndim entries). legend describes the shape in the message,
 * e.g. "(b, s_k, h_k, dv)"; may be NULL. */
fa3c_status fa3c_validate_shape(const char *name, const fa3c_tensor *t, int ndim, const int64_t *shape,
                                const char *legend);

/* An index vector: present, (n,) int32, contiguous, on the context's device (legend as above,
 * e.g. "(b,)"). Runs fa3c_validate_tensor too. */
fa3c_status fa3c_validate_index(const fa3c_context *ctx, const char *name, const fa3c_tensor *t, int64_t n,
                                const char *legend);

/* True when t's elements are laid out densely in row-major order (size-1 dimensions may have any
 * stride and empty tensors always are, as torch's is_contiguous). */
bool fa3c_is_contiguous(const fa3c_tensor *t);
/* True when the last dimension is dense (stride 1), or has at most one element, or t is empty. */
bool fa3c_last_dim_contiguous(const fa3c_tensor *t);

#endif /* FA3C_VALIDATE_H */
