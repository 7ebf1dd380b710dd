"""ctypes binding of include/fa3c.h: the library handle, the struct mirrors and the error type.

The struct mirrors below follow the header field for field (same order, same C types); the test
tests/test_lib.py compares every offset and size with a C program compiled against the header.
This module holds one piece of mutable state, the lazily loaded library handle (under a lock).
"""

import ctypes
import enum
import glob
import os
import sys
import threading

# The header version these mirrors were written against (FA3C_VERSION = major*10000 + minor*100 + patch).
# A library whose major.minor differs may have different struct layouts, so loading it is refused.
HEADER_VERSION = 100

MAX_DIMS = 5


class Status(enum.IntEnum):
    OK = 0
    INVALID_ARGUMENT = 1
    UNSUPPORTED = 2
    OUT_OF_MEMORY = 3
    DEVICE = 4
    INTERNAL = 5


class DType(enum.IntEnum):
    NONE = 0
    F32 = 1
    F16 = 2
    BF16 = 3
    E4M3 = 4
    I32 = 5


class DeviceType(enum.IntEnum):
    CPU = 0
    CUDA = 1


class CopyKind(enum.IntEnum):
    HOST_TO_DEVICE = 0
    DEVICE_TO_HOST = 1
    DEVICE_TO_DEVICE = 2


class Fa3cError(RuntimeError):
    """A failed fa3c call. str(e) is the library's message (fa3c_last_error()), which names the
    argument with the expected and the actual value; .status is the fa3c_status code."""

    def __init__(self, status, message):
        super().__init__(message)
        try:
            self.status = Status(status)
        except ValueError:  # a code appended to the C enum after this module was written
            self.status = int(status)


# ---------------------------------------------------------------------------------------------
# Struct mirrors (include/fa3c.h). C enums are int-sized on every ABI fa3c supports.

_enum = ctypes.c_int


class Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", _enum),
        ("device_type", _enum),
        ("device_index", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * MAX_DIMS),
        ("stride", ctypes.c_int64 * MAX_DIMS),
    ]


class ContextOptions(ctypes.Structure):
    _fields_ = [
        ("backend", ctypes.c_char_p),
        ("device_index", ctypes.c_int32),
        ("num_threads", ctypes.c_int32),
        ("stream", ctypes.c_void_p),
        ("check_inputs", ctypes.c_int32),
        ("num_sm", ctypes.c_int32),
    ]


class FwdArgs(ctypes.Structure):
    _fields_ = [
        ("q", Tensor), ("k", Tensor), ("v", Tensor),
        ("k_new", Tensor), ("v_new", Tensor), ("qv", Tensor),
        ("out", Tensor), ("softmax_lse", Tensor), ("out_accum", Tensor), ("lse_accum", Tensor),
        ("cu_seqlens_q", Tensor), ("cu_seqlens_k", Tensor), ("cu_seqlens_k_new", Tensor),
        ("seqused_q", Tensor), ("seqused_k", Tensor),
        ("max_seqlen_q", ctypes.c_int64), ("max_seqlen_k", ctypes.c_int64),
        ("page_table", Tensor), ("kv_batch_idx", Tensor), ("leftpad_k", Tensor),
        ("rotary_cos", Tensor), ("rotary_sin", Tensor), ("seqlens_rotary", Tensor),
        ("q_descale", Tensor), ("k_descale", Tensor), ("v_descale", Tensor),
        ("softmax_scale", ctypes.c_double),
        ("is_causal", ctypes.c_int32),
        ("window_size_left", ctypes.c_int64),
        ("window_size_right", ctypes.c_int64),
        ("attention_chunk", ctypes.c_int64),
        ("softcap", ctypes.c_double),
        ("is_rotary_interleaved", ctypes.c_int32),
        ("scheduler_metadata", Tensor),
        ("num_splits", ctypes.c_int32),
        ("pack_gqa", ctypes.c_int32),
        ("sm_margin", ctypes.c_int32),
        ("sinks", Tensor),
        ("check_inputs", ctypes.c_int32),
    ]


class FwdInfo(ctypes.Structure):
    _fields_ = [
        ("num_splits", ctypes.c_int32),
        ("pack_gqa", ctypes.c_int32),
        ("is_varlen", ctypes.c_int32),
        ("block_m", ctypes.c_int32),
        ("block_n", ctypes.c_int32),
        ("scheduler_metadata_size", ctypes.c_int64),
    ]


class SchedulerArgs(ctypes.Structure):
    _fields_ = [
        ("batch_size", ctypes.c_int64), ("max_seqlen_q", ctypes.c_int64), ("max_seqlen_k", ctypes.c_int64),
        ("num_heads_q", ctypes.c_int64), ("num_heads_kv", ctypes.c_int64),
        ("headdim", ctypes.c_int64), ("headdim_v", ctypes.c_int64),
        ("qkv_dtype", _enum),
        ("seqused_k", Tensor), ("cu_seqlens_q", Tensor), ("cu_seqlens_k", Tensor),
        ("cu_seqlens_k_new", Tensor), ("seqused_q", Tensor), ("leftpad_k", Tensor),
        ("page_size", ctypes.c_int64),
        ("max_seqlen_k_new", ctypes.c_int64),
        ("is_causal", ctypes.c_int32),
        ("window_size_left", ctypes.c_int64), ("window_size_right", ctypes.c_int64),
        ("attention_chunk", ctypes.c_int64),
        ("has_softcap", ctypes.c_int32),
        ("num_splits", ctypes.c_int32),
        ("pack_gqa", ctypes.c_int32),
        ("sm_margin", ctypes.c_int32),
    ]


# ---------------------------------------------------------------------------------------------
# Function declarations: name -> (restype, argtypes), one entry per FA3C_API function.

_ctx = ctypes.c_void_p
_P = ctypes.POINTER

SIGNATURES = {
    "fa3c_version": (ctypes.c_int, []),
    "fa3c_version_string": (ctypes.c_char_p, []),
    "fa3c_status_string": (ctypes.c_char_p, [_enum]),
    "fa3c_last_error": (ctypes.c_char_p, []),
    "fa3c_dtype_name": (ctypes.c_char_p, [_enum]),
    "fa3c_dtype_size": (ctypes.c_size_t, [_enum]),
    "fa3c_tensor_contiguous": (Tensor, [ctypes.c_void_p, _enum, ctypes.c_int32, _P(ctypes.c_int64)]),
    "fa3c_backend_count": (ctypes.c_int, []),
    "fa3c_backend_name": (ctypes.c_char_p, [ctypes.c_int]),
    "fa3c_backend_description": (ctypes.c_char_p, [ctypes.c_int]),
    "fa3c_backend_available": (ctypes.c_int, [ctypes.c_int]),
    "fa3c_backend_device_type": (_enum, [ctypes.c_int]),
    "fa3c_context_options_init": (None, [_P(ContextOptions)]),
    "fa3c_context_create": (_enum, [_P(ContextOptions), _P(_ctx)]),
    "fa3c_context_destroy": (None, [_ctx]),
    "fa3c_context_backend": (ctypes.c_char_p, [_ctx]),
    "fa3c_context_device_type": (_enum, [_ctx]),
    "fa3c_context_num_sm": (ctypes.c_int32, [_ctx]),
    "fa3c_context_num_threads": (ctypes.c_int32, [_ctx]),
    "fa3c_context_set_stream": (_enum, [_ctx, ctypes.c_void_p]),
    "fa3c_context_synchronize": (_enum, [_ctx]),
    "fa3c_device_alloc": (_enum, [_ctx, ctypes.c_size_t, _P(ctypes.c_void_p)]),
    "fa3c_device_free": (None, [_ctx, ctypes.c_void_p]),
    "fa3c_device_copy": (_enum, [_ctx, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, _enum]),
    "fa3c_fwd_args_init": (None, [_P(FwdArgs)]),
    "fa3c_fwd_query": (_enum, [_ctx, _P(FwdArgs), _P(FwdInfo)]),
    "fa3c_fwd": (_enum, [_ctx, _P(FwdArgs)]),
    "fa3c_scheduler_args_init": (None, [_P(SchedulerArgs)]),
    "fa3c_scheduler_metadata_size": (_enum, [_ctx, _P(SchedulerArgs), _P(ctypes.c_int64)]),
    "fa3c_get_scheduler_metadata": (_enum, [_ctx, _P(SchedulerArgs), _P(Tensor)]),
    "fa3c_combine": (_enum, [_ctx, _P(Tensor), _P(Tensor), _P(Tensor), _P(Tensor)]),
    "fa3c_merge_state": (_enum, [_ctx] + [_P(Tensor)] * 6),
}


# ---------------------------------------------------------------------------------------------
# Loading

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
# The repository root when the package is used from its source tree (python/fa3c/ -> ../..).
_REPO_DIR = os.path.dirname(os.path.dirname(_PKG_DIR))

_lock = threading.Lock()
_handle = None


def _library_names():
    if sys.platform == "darwin":
        return ["libfa3c.dylib", "libfa3c.*.dylib"]
    if sys.platform == "win32":
        return ["fa3c.dll", "libfa3c.dll"]
    return ["libfa3c.so", "libfa3c.so.*"]


def candidate_paths():
    """Where the library is looked for, in order: $FA3C_LIBRARY alone when set; else the copy
    placed in the package at install time, then the repository's build*/ directories."""
    env = os.environ.get("FA3C_LIBRARY")
    if env:
        return [env]
    paths = []
    for d in [_PKG_DIR] + sorted(glob.glob(os.path.join(_REPO_DIR, "build*"))):
        for pattern in _library_names():
            paths += sorted(glob.glob(os.path.join(d, pattern)))
    return paths


def _declare(dll):
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(dll, name)
        fn.restype = restype
        fn.argtypes = argtypes
    version = dll.fa3c_version()
    if version // 100 != HEADER_VERSION // 100:
        raise OSError(
            f"libfa3c version {dll.fa3c_version_string().decode()} does not match the binding "
            f"(header {HEADER_VERSION // 10000}.{HEADER_VERSION // 100 % 100}.x)"
        )


def lib():
    """The loaded libfa3c (ctypes.CDLL with every function declared). Raises OSError when no
    library can be found or loaded."""
    global _handle
    if _handle is not None:
        return _handle
    with _lock:
        if _handle is None:
            paths = candidate_paths()
            errors = []
            for path in paths:
                try:
                    dll = ctypes.CDLL(path)
                    _declare(dll)
                except (OSError, AttributeError) as e:
                    errors.append(f"{path}: {e}")
                    continue
                _handle = dll
                break
            else:
                detail = "; ".join(errors) if errors else "no candidate found"
                raise OSError(
                    "cannot load libfa3c (set FA3C_LIBRARY to the path of libfa3c.so, or install the "
                    f"package with `pip install ./python`): {detail}"
                )
    return _handle


def library_path():
    """File name of the loaded library."""
    return lib()._name


def check(status):
    """Raise Fa3cError for a non-OK status returned by a call made on this thread."""
    if status != Status.OK:
        msg = lib().fa3c_last_error()
        msg = msg.decode("utf-8", "replace") if msg else ""
        if not msg:
            msg = lib().fa3c_status_string(status).decode()
        raise Fa3cError(status, msg)


def version():
    return lib().fa3c_version_string().decode()


def backends():
    """[(name, description, available, device_type)] for every compiled-in backend, best first."""
    dll = lib()
    return [
        (dll.fa3c_backend_name(i).decode(), dll.fa3c_backend_description(i).decode(),
         bool(dll.fa3c_backend_available(i)), DeviceType(dll.fa3c_backend_device_type(i)))
        for i in range(dll.fa3c_backend_count())
    ]
