"""fa3c contexts: explicit ones (fa3c.Context) and one lazily created default per (backend, device)."""

import ctypes
import os
import threading
import weakref

from . import _lib
from ._lib import DeviceType, Fa3cError, Status


class Context:
    """An fa3c_context: one backend on one device, with its thread pool and workspace.

    backend      None: $FA3C_BACKEND if set, else the best available backend ("cuda", "cpu-ref", ...)
    device_index CUDA ordinal (GPU backends)
    num_threads  CPU backends; 0: $FA3C_NUM_THREADS, else the cores this process may use
    num_sm       0: the device's SM count; otherwise the SM count the split/pack heuristics assume
    check_inputs None: $FA3C_CHECK; True/False: validate index data (cu_seqlens, page ids, ...) on every call
    stream       cudaStream_t as an int (GPU backends); None: the default stream

    Calls through one context are serialised by a lock (the C context is single-threaded);
    distinct contexts run concurrently. close() frees it; so does garbage collection.
    """

    def __init__(self, backend=None, device_index=0, num_threads=0, num_sm=0, check_inputs=None, stream=None):
        dll = _lib.lib()
        opts = _lib.ContextOptions()
        dll.fa3c_context_options_init(ctypes.byref(opts))
        if backend is not None:
            opts.backend = backend.encode()
        opts.device_index = device_index
        opts.num_threads = num_threads
        opts.num_sm = num_sm
        if check_inputs is not None:
            opts.check_inputs = 1 if check_inputs else 0
        if stream is not None:
            opts.stream = stream
        handle = ctypes.c_void_p()
        _lib.check(dll.fa3c_context_create(ctypes.byref(opts), ctypes.byref(handle)))
        self._handle = handle
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, dll.fa3c_context_destroy, handle)
        self.backend = dll.fa3c_context_backend(handle).decode()
        self.device_type = DeviceType(dll.fa3c_context_device_type(handle))
        self.device_index = device_index if self.device_type != DeviceType.CPU else 0

    @property
    def device(self):
        return (self.device_type, self.device_index)

    @property
    def num_sm(self):
        return _lib.lib().fa3c_context_num_sm(self._live())

    @property
    def num_threads(self):
        return _lib.lib().fa3c_context_num_threads(self._live())

    def set_stream(self, stream):
        self.call(_lib.lib().fa3c_context_set_stream, stream)

    def synchronize(self):
        self.call(_lib.lib().fa3c_context_synchronize)

    def call(self, fn, *args):
        """fn(ctx, *args) under this context's lock; a non-OK status raises Fa3cError."""
        with self._lock:
            status = fn(self._live(), *args)
            _lib.check(status)  # fa3c_last_error is per thread: read it before releasing the lock

    def close(self):
        with self._lock:
            self._finalizer()

    def _live(self):
        if not self._finalizer.alive:
            raise ValueError("fa3c context is closed")
        return self._handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "" if self._finalizer.alive else ", closed"
        device = f"{self.device_type.name.lower()}:{self.device_index}"
        return f"fa3c.Context(backend={self.backend!r}, device={device}{state})"


_defaults_lock = threading.Lock()
_defaults = {}


def _create_for(device, backend):
    device_type, device_index = device
    if backend is None and not os.environ.get("FA3C_BACKEND"):
        # The best available backend that runs on the arrays' device.
        for name, _, available, backend_device in _lib.backends():
            if available and backend_device == device_type:
                return Context(name, device_index)
        raise Fa3cError(Status.UNSUPPORTED, f"no available fa3c backend runs on {device_type.name.lower()}")
    ctx = Context(backend, device_index)
    if ctx.device_type != device_type:
        ctx.close()
        raise Fa3cError(
            Status.UNSUPPORTED,
            f"backend {ctx.backend!r} runs on {ctx.device_type.name.lower()}, the arrays are on "
            f"{device_type.name.lower()}",
        )
    return ctx


def default_context(device=(DeviceType.CPU, 0), backend=None):
    """The shared context for (backend, device), created on first use. backend None picks
    $FA3C_BACKEND, else the best available backend for the device."""
    key = (backend, DeviceType(device[0]), int(device[1]))
    with _defaults_lock:
        ctx = _defaults.get(key)
        if ctx is None:
            ctx = _create_for(key[1:], backend)
            _defaults[key] = ctx
    return ctx
