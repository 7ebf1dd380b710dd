"""Tensor exchange: turns caller arrays into fa3c_tensor descriptors and allocates outputs.

Each array family is one adapter with the same small set of methods (owns, device, dtype,
describe, writable, empty, full, contiguous, last_stride, stream); the interface functions only
go through the module-level helpers below. Families, tried in this order:

  numpy     CPU memory; bf16 and fp8 through ml_dtypes (imported only when such an output has to
            be allocated).
  torch     CPU and CUDA tensors, zero-copy (data_ptr, strides, dtype). torch is never imported
            here: a torch tensor can only exist once the caller has imported torch, so the adapter
            looks it up in sys.modules. Launches go to torch's current CUDA stream of the tensor's
            device.
  __cuda_array_interface__   (CuPy, Numba, ...) device memory; the launch stream is the one the
            producer names (version 3), else the context's.
  __dlpack__                 anything else that exports DLPack (CPU or CUDA memory).
The last two allocate outputs through the producer's array-API namespace (__array_namespace__);
without one they can be inputs only. All families read the caller's memory in place: the
descriptor points at it, so the caller keeps x alive for the call (the interface does).
"""

import ctypes
import sys

import numpy as np

from ._lib import MAX_DIMS, DeviceType, DType, Fa3cError, Status, Tensor

# Canonical dtype names, shared by every family: numpy's names (ml_dtypes' for bf16/fp8), which
# are also torch's names without the "torch." prefix and the array-API namespaces' attributes.
_DTYPE_BY_NAME = {
    "float32": DType.F32,
    "float16": DType.F16,
    "bfloat16": DType.BF16,
    "float8_e4m3fn": DType.E4M3,
    "int32": DType.I32,
}
_NAME_BY_DTYPE = {v: k for k, v in _DTYPE_BY_NAME.items()}
_ITEM_SIZE = {DType.F32: 4, DType.F16: 2, DType.BF16: 2, DType.E4M3: 1, DType.I32: 4}


def _invalid(msg):
    return Fa3cError(Status.INVALID_ARGUMENT, msg)


def _descriptor(name, data, dtype, device, shape, strides):
    """fa3c_tensor of a strided view; strides in elements. A view with a zero-sized dimension may
    report any strides (fa3c never reads it): they are zeroed."""
    if len(shape) > MAX_DIMS:
        raise _invalid(f"{name}: {len(shape)} dimensions, fa3c takes at most {MAX_DIMS}")
    empty = any(n == 0 for n in shape)
    t = Tensor()
    t.data = data
    t.dtype = dtype
    t.device_type = device[0]
    t.device_index = device[1]
    t.ndim = len(shape)
    for i, (n, s) in enumerate(zip(shape, strides)):
        t.shape[i] = n
        t.stride[i] = 0 if empty else s
    return t


def _byte_strides_to_elements(name, byte_strides, item, nonempty):
    out = []
    for i, s in enumerate(byte_strides):
        if s % item != 0:
            if nonempty:
                raise _invalid(f"{name}: byte stride {s} of dimension {i} is not a multiple of the item size {item}")
            s = 0
        out.append(s // item)
    return out


# ---------------------------------------------------------------------------------------------
# numpy


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
        strides = _byte_strides_to_elements(name, x.strides, x.itemsize, x.size != 0)
        return _descriptor(name, x.ctypes.data, dtype, (DeviceType.CPU, 0), x.shape, strides)

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

    def stream(self, x):
        return None

    def to_numpy(self, x):
        return x

    def from_numpy(self, like, a):
        return a

    def copy_from_numpy(self, dst, a):
        dst[...] = a


def _numpy_dtype(dtype):
    if dtype == DType.BF16 or dtype == DType.E4M3:
        try:
            import ml_dtypes
        except ImportError as e:
            raise ImportError(f"allocating a {_NAME_BY_DTYPE[dtype]} numpy array needs the ml_dtypes package") from e
        return np.dtype(ml_dtypes.bfloat16 if dtype == DType.BF16 else ml_dtypes.float8_e4m3fn)
    return np.dtype(_NAME_BY_DTYPE[dtype])


# ---------------------------------------------------------------------------------------------
# torch


class _TorchAdapter:
    """torch.Tensor on the CPU or a CUDA device, read and written in place."""

    @staticmethod
    def _torch():
        return sys.modules.get("torch")

    def owns(self, x):
        torch = self._torch()
        return torch is not None and isinstance(x, torch.Tensor)

    def device(self, x):
        dev = x.device
        if dev.type == "cpu":
            return (DeviceType.CPU, 0)
        if dev.type == "cuda":
            return (DeviceType.CUDA, dev.index if dev.index is not None else self._torch().cuda.current_device())
        raise Fa3cError(Status.UNSUPPORTED, f"torch device {dev} is not an fa3c device (cpu, cuda)")

    def dtype(self, x):
        return _DTYPE_BY_NAME.get(str(x.dtype).replace("torch.", ""))

    def describe(self, x, name, dtype):
        return _descriptor(name, x.data_ptr(), dtype, self.device(x), tuple(x.shape), x.stride())

    def writable(self, x):
        return True

    def empty(self, like, shape, dtype):
        torch = self._torch()
        return torch.empty(shape, dtype=getattr(torch, _NAME_BY_DTYPE[dtype]), device=like.device)

    def full(self, like, shape, value, dtype):
        torch = self._torch()
        return torch.full(shape, value, dtype=getattr(torch, _NAME_BY_DTYPE[dtype]), device=like.device)

    def contiguous(self, x):
        return x.contiguous()

    def last_stride(self, x):
        if x.dim() == 0 or x.numel() == 0:
            return 1
        return x.stride(-1)

    def stream(self, x):
        if x.device.type != "cuda":
            return None
        return self._torch().cuda.current_stream(x.device).cuda_stream

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def from_numpy(self, like, a):
        return self._torch().from_numpy(np.ascontiguousarray(a)).to(like.device)

    def copy_from_numpy(self, dst, a):
        dst.copy_(self._torch().from_numpy(np.ascontiguousarray(a)))


# ---------------------------------------------------------------------------------------------
# Generic producers: __cuda_array_interface__ and DLPack


class _NamespaceAllocator:
    """Output allocation through the producer's array-API namespace (x.__array_namespace__())."""

    def _namespace(self, like, dtype):
        get = getattr(like, "__array_namespace__", None)
        if get is None:
            raise TypeError(
                f"{type(like).__module__}.{type(like).__name__} has no __array_namespace__, so fa3c cannot "
                "allocate its outputs in that family: pass torch tensors, numpy arrays or out="
            )
        xp = get()
        xdt = getattr(xp, _NAME_BY_DTYPE[dtype], None)
        if xdt is None:
            raise TypeError(f"the array namespace {xp.__name__} has no {_NAME_BY_DTYPE[dtype]} dtype")
        return xp, xdt

    def empty(self, like, shape, dtype):
        xp, xdt = self._namespace(like, dtype)
        return xp.empty(shape, dtype=xdt, device=like.device)

    def full(self, like, shape, value, dtype):
        xp, xdt = self._namespace(like, dtype)
        return xp.full(shape, value, dtype=xdt, device=like.device)

    def contiguous(self, x):
        raise _invalid(f"{type(x).__name__}: the last dimension must be contiguous (stride 1)")


# __cuda_array_interface__ typestr -> dtype. fp8 / bf16 have no standard typestr; they come as
# DLPack or torch.
_DTYPE_BY_TYPESTR = {"<f4": DType.F32, "<f2": DType.F16, "<i4": DType.I32}


class _CudaArrayInterfaceAdapter(_NamespaceAllocator):
    """Objects with __cuda_array_interface__ (device memory). The device ordinal comes from
    x.device (.id as in CuPy, or .index), else 0."""

    def owns(self, x):
        return hasattr(x, "__cuda_array_interface__")

    def _cai(self, x):
        return x.__cuda_array_interface__

    def device(self, x):
        dev = getattr(x, "device", None)
        index = getattr(dev, "id", getattr(dev, "index", 0))
        return (DeviceType.CUDA, int(index or 0))

    def dtype(self, x):
        return _DTYPE_BY_TYPESTR.get(self._cai(x)["typestr"])

    def describe(self, x, name, dtype):
        cai = self._cai(x)
        shape = tuple(cai["shape"])
        item = _ITEM_SIZE[dtype]
        if cai.get("strides") is None:  # C-contiguous
            strides, acc = [], 1
            for n in reversed(shape):
                strides.insert(0, acc)
                acc *= n
        else:
            strides = _byte_strides_to_elements(name, cai["strides"], item, all(n for n in shape))
        return _descriptor(name, cai["data"][0], dtype, self.device(x), shape, strides)

    def writable(self, x):
        return not self._cai(x)["data"][1]

    def last_stride(self, x):
        cai = self._cai(x)
        shape, strides = cai["shape"], cai.get("strides")
        if not shape or strides is None or any(n == 0 for n in shape):
            return 1
        return strides[-1] // _ITEM_SIZE.get(self.dtype(x), 1)

    def stream(self, x):
        return self._cai(x).get("stream")


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):  # DLPack < 1.0 capsule "dltensor"
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


class _DLManagedTensorVersioned(ctypes.Structure):  # DLPack >= 1.0 capsule "dltensor_versioned"
    _fields_ = [
        ("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
        ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _DLTensor),
    ]


_DL_FLAG_READ_ONLY = 1
_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13
_DTYPE_BY_DLPACK = {(2, 32): DType.F32, (2, 16): DType.F16, (4, 16): DType.BF16, (10, 8): DType.E4M3,
                    (0, 32): DType.I32}

_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


class _DLPackAdapter(_NamespaceAllocator):
    """Objects with __dlpack__ / __dlpack_device__. The exported capsule is read and left
    unconsumed, so its producer frees it; the memory belongs to x, which the caller keeps alive."""

    def owns(self, x):
        return hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__")

    def _view(self, x):
        """(DLTensor, read_only) of x's export."""
        try:
            cap = x.__dlpack__(max_version=(1, 0))
        except TypeError:  # a producer older than DLPack 1.0
            cap = x.__dlpack__()
        name = _capsule_name(cap)
        if name == b"dltensor_versioned":
            m = _DLManagedTensorVersioned.from_address(_capsule_pointer(cap, name))
            return _DLTensor.from_buffer_copy(m.dl_tensor), bool(m.flags & _DL_FLAG_READ_ONLY), cap
        m = _DLManagedTensor.from_address(_capsule_pointer(cap, name))
        return _DLTensor.from_buffer_copy(m.dl_tensor), False, cap

    def device(self, x):
        kind, index = x.__dlpack_device__()
        if kind in (_DL_CPU, _DL_CUDA_HOST):
            return (DeviceType.CPU, 0)
        if kind in (_DL_CUDA, _DL_CUDA_MANAGED):
            return (DeviceType.CUDA, int(index))
        raise Fa3cError(Status.UNSUPPORTED, f"DLPack device type {kind} is not an fa3c device (cpu, cuda)")

    def dtype(self, x):
        t, _, _ = self._view(x)
        if t.dtype.lanes != 1:
            return None
        return _DTYPE_BY_DLPACK.get((t.dtype.code, t.dtype.bits))

    def describe(self, x, name, dtype):
        t, _, cap = self._view(x)
        shape = tuple(t.shape[i] for i in range(t.ndim))
        if t.strides:
            strides = [t.strides[i] for i in range(t.ndim)]
        else:  # NULL strides: compact row-major
            strides, acc = [], 1
            for n in reversed(shape):
                strides.insert(0, acc)
                acc *= n
        data = (t.data or 0) + t.byte_offset
        del cap  # the descriptor points into x's memory, not the capsule's
        return _descriptor(name, data, dtype, self.device(x), shape, strides)

    def writable(self, x):
        return not self._view(x)[1]

    def last_stride(self, x):
        t, _, _ = self._view(x)
        if t.ndim == 0 or not t.strides or any(t.shape[i] == 0 for i in range(t.ndim)):
            return 1
        return t.strides[t.ndim - 1]

    def stream(self, x):
        return None


_ADAPTERS = (_NumpyAdapter(), _TorchAdapter(), _CudaArrayInterfaceAdapter(), _DLPackAdapter())


# ---------------------------------------------------------------------------------------------
# Helpers used by the interface


def adapter(x, name):
    for a in _ADAPTERS:
        if a.owns(x):
            return a
    raise TypeError(
        f"{name}: unsupported array type {type(x).__module__}.{type(x).__name__} (fa3c takes numpy arrays, "
        "torch tensors, and objects with __cuda_array_interface__ or __dlpack__)"
    )


def device(x, name):
    """(DeviceType, index) of an array."""
    return adapter(x, name).device(x)


def dtype_of(x, name):
    """The fa3c dtype of an array; Fa3cError naming the argument when fa3c has no such dtype."""
    a = adapter(x, name)
    dt = a.dtype(x)
    if dt is None:
        raise _invalid(
            f"{name}: dtype {getattr(x, 'dtype', '?')} is not an fa3c dtype "
            "(float32, float16, bfloat16, float8_e4m3fn, int32)"
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
    """Uninitialised array of like's family and device."""
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


def stream(x, name):
    """The stream a call on x launches on (cudaStream_t as an int): torch's current stream of x's
    device, the __cuda_array_interface__ producer's stream; None: keep the context's."""
    return adapter(x, name).stream(x)


def to_numpy(x, name):
    """Host copy (or x itself for numpy) of a numpy array or torch tensor."""
    a = adapter(x, name)
    if not hasattr(a, "to_numpy"):
        raise TypeError(f"{name}: fa3c.serving takes numpy arrays or torch tensors, got {type(x).__name__}")
    return a.to_numpy(x)


def from_numpy(like, a):
    """a (a numpy array) as an array of like's family and device."""
    return adapter(like, "array").from_numpy(like, a)


def copy_from_numpy(dst, a):
    """dst[...] = a for a numpy a, whatever dst's family and device."""
    adapter(dst, "array").copy_from_numpy(dst, a)
