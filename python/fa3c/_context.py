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
        self._stream = stream

    @property
    def device(self):
        return (self.device_type, self.device_index)

    @property
    def num_sm(self):
        return _lib.lib().fa3c_context_num_sm(self._live())

    @property
    def num_threads(self):
        return _lib.lib().fa3c_context_num_threads(self._live())

    @property
    def stream(self):
        """The cudaStream_t (an int) calls launch on; None: the default stream."""
        return self._stream

    def set_stream(self, stream):
        with self._lock:
            self._set_stream_locked(stream)

    def synchronize(self):
        self.call(_lib.lib().fa3c_context_synchronize)

    def call(self, fn, *args, stream=None):
        """fn(ctx, *args) under this context's lock; a non-OK status raises Fa3cError. stream (a
        cudaStream_t as an int, e.g. torch's current stream) is bound first when given, under the
        same lock, so a call never launches on a stream another thread set in between."""
        with self._lock:
            if stream is not None and stream != self._stream:
                self._set_stream_locked(stream)
            status = fn(self._live(), *args)
            _lib.check(status)  # fa3c_last_error is per thread: read it before releasing the lock

    def _set_stream_locked(self, stream):
        _lib.check(_lib.lib().fa3c_context_set_stream(self._live(), stream))
        self._stream = stream

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


def context_for_device(device, backend=None, **options):
    """A new Context on device ((DeviceType, index)): backend None picks $FA3C_BACKEND when that
    backend runs on this kind of device (so FA3C_BACKEND=cpu-ref pins CPU work without stopping
    CUDA arrays from reaching the cuda backend), else the best available backend that does.
    options: Context's other keywords. Fa3cError (UNSUPPORTED) when an explicitly named backend
    runs on another kind of device."""
    device_type, device_index = DeviceType(device[0]), int(device[1])
    if backend is None:
        env = os.environ.get("FA3C_BACKEND")
        devices = {name: backend_device for name, _, _, backend_device in _lib.backends()}
        if env and devices.get(env, device_type) == device_type:
            backend = env
    if backend is None:
        for name, _, available, backend_device in _lib.backends():
            if available and backend_device == device_type:
                return Context(name, device_index, **options)
        raise Fa3cError(Status.UNSUPPORTED, f"no available fa3c backend runs on {device_type.name.lower()}")
    ctx = Context(backend, device_index, **options)
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
    $FA3C_BACKEND, else the best available backend for the device. Calls through it launch on the
    caller's current stream and share its workspace, so a call on another CUDA stream than the
    last one waits (on the GPU) for the last one's work; calls meant to run concurrently on two
    streams want a Context each."""
    key = (backend, DeviceType(device[0]), int(device[1]))
    with _defaults_lock:
        ctx = _defaults.get(key)
        if ctx is None:
            ctx = context_for_device(key[1:], backend)
            _defaults[key] = ctx
    return ctx
