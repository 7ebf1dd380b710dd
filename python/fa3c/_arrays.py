"""Tensor exchange: turns caller arrays into fa3c_tensor descriptors and allocates outputs.

Each array family is one adapter with the same small set of methods (owns, device, dtype,
describe, empty, full, contiguous, last_stride); the interface functions only go through the
module-level helpers below, so another family (torch, DLPack, __cuda_array_interface__) is one
more adapter class in _ADAPTERS. Numpy is the only family for now: CPU memory, bf16 and fp8
through ml_dtypes (imported only when such an output has to be allocated).
"""

import numpy as np

from ._lib import MAX_DIMS, DeviceType, DType, Fa3cError, Status, Tensor

# Canonical dtype names, shared by every family: numpy's names (ml_dtypes' for bf16/fp8), which
# are also torch's names without the "torch." prefix.
_DTYPE_BY_NAME = {
    "float32": DType.F32,
    "float16": DType.F16,
    "bfloat16": DType.BF16,
    "float8_e4m3fn": DType.E4M3,
    "int32": DType.I32,
}
_NAME_BY_DTYPE = {v: k for k, v in _DTYPE_BY_NAME.items()}


def _invalid(msg):
    return Fa3cError(Status.INVALID_ARGUMENT, msg)


class _NumpyAdapter:
    """numpy.ndarray on the CPU."""

    def owns(self, x):
        return isinstance(x, np.ndarray)

    def device(self, x):
        return (DeviceType.CPU, 0)

    def dtype(self, x):
        if not x.dtype.isnative:
            return None
        return _DTYPE_BY_NAME.get(x.dtype.name)

    def describe(self, x, name, dtype):
        if x.ndim > MAX_DIMS:
            raise _invalid(f"{name}: {x.ndim} dimensions, fa3c takes at most {MAX_DIMS}")
        t = Tensor()
        t.data = x.ctypes.data
        t.dtype = dtype
        t.device_type = DeviceType.CPU
        t.device_index = 0
        t.ndim = x.ndim
        item = x.itemsize
        for i, (n, s) in enumerate(zip(x.shape, x.strides)):
            if s % item != 0:
                if x.size != 0:
                    raise _invalid(
                        f"{name}: byte stride {s} of dimension {i} is not a multiple of the item size {item}"
                    )
                s = 0  # an empty view may report any stride; fa3c never reads it
            t.shape[i] = n
            t.stride[i] = s // item
        return t

    def writable(self, x):
        return x.flags.writeable

    def empty(self, like, shape, dtype):
        return np.empty(shape, dtype=_numpy_dtype(dtype))

    def full(self, like, shape, value, dtype):
        return np.full(shape, value, dtype=_numpy_dtype(dtype))

    def contiguous(self, x):
        return np.ascontiguousarray(x)

    def last_stride(self, x):
        if x.ndim == 0 or x.size == 0:  # numpy gives empty arrays all-zero strides
            return 1
        return x.strides[-1] // x.itemsize


def _numpy_dtype(dtype):
    if dtype == DType.BF16 or dtype == DType.E4M3:
        try:
            import ml_dtypes
        except ImportError as e:
            raise ImportError(f"allocating a {_NAME_BY_DTYPE[dtype]} numpy array needs the ml_dtypes package") from e
        return np.dtype(ml_dtypes.bfloat16 if dtype == DType.BF16 else ml_dtypes.float8_e4m3fn)
    return np.dtype(_NAME_BY_DTYPE[dtype])


_ADAPTERS = (_NumpyAdapter(),)


def adapter(x, name):
    for a in _ADAPTERS:
        if a.owns(x):
            return a
    raise TypeError(f"{name}: unsupported array type {type(x).__module__}.{type(x).__name__} (fa3c takes numpy arrays)")


def device(x, name):
    """(DeviceType, index) of an array."""
    return adapter(x, name).device(x)


def dtype_of(x, name):
    """The fa3c dtype of an array; Fa3cError naming the argument when fa3c has no such dtype."""
    a = adapter(x, name)
    dt = a.dtype(x)
    if dt is None:
        raise _invalid(
            f"{name}: dtype {x.dtype} is not an fa3c dtype (float32, float16, bfloat16, float8_e4m3fn, int32)"
        )
    return dt


def as_dtype(obj):
    """fa3c dtype of a dtype-like: an fa3c DType, a numpy dtype or type, a dtype name
    ("bfloat16"), or anything whose str() is "torch.<name>"."""
    if isinstance(obj, DType):
        return obj
    try:
        name = np.dtype(obj).name
    except TypeError:
        name = str(obj)
    if name.startswith("torch."):
        name = name[len("torch."):]
    if name not in _DTYPE_BY_NAME:
        raise _invalid(f"dtype {obj!r} is not an fa3c dtype (float32, float16, bfloat16, float8_e4m3fn, int32)")
    return _DTYPE_BY_NAME[name]


def describe(x, name, writable=False):
    """fa3c_tensor describing x (absent when x is None). The caller keeps x alive for the call."""
    if x is None:
        return Tensor()
    a = adapter(x, name)
    if writable and not a.writable(x):
        raise _invalid(f"{name}: array is read-only, fa3c writes into it")
    return a.describe(x, name, dtype_of(x, name))


def empty(like, shape, dtype):
    """Uninitialised array of x's family and device."""
    return adapter(like, "array").empty(like, tuple(int(n) for n in shape), dtype)


def full(like, shape, value, dtype):
    return adapter(like, "array").full(like, tuple(int(n) for n in shape), value, dtype)


def maybe_contiguous(x, name):
    """x, or a contiguous copy when its last dimension is strided (FA3's maybe_contiguous)."""
    if x is None:
        return None
    a = adapter(x, name)
    return a.contiguous(x) if a.last_stride(x) != 1 else x


def last_stride(x, name):
    return adapter(x, name).last_stride(x)
