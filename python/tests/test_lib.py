"""The ctypes binding against include/fa3c.h (struct layouts, functions, enums), library
loading, contexts and the tensor-exchange layer."""

import ctypes
import os
import re
import shutil
import subprocess
import threading

import numpy as np
import pytest

import fa3c
from fa3c import _arrays, _lib

HEADER = os.environ.get("FA3C_HEADER") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "include", "fa3c.h")
STRUCTS = {
    "fa3c_tensor": _lib.Tensor,
    "fa3c_context_options": _lib.ContextOptions,
    "fa3c_fwd_args": _lib.FwdArgs,
    "fa3c_fwd_info": _lib.FwdInfo,
    "fa3c_scheduler_args": _lib.SchedulerArgs,
}

needs_header = pytest.mark.skipif(not os.path.isfile(HEADER), reason=f"no header at {HEADER}")


def header_text():
    with open(HEADER) as f:
        return f.read()


@needs_header
@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_struct_layouts_match_c(tmp_path):
    """Every field's offset and size, and every struct's size, as the C compiler lays them out."""
    lines = []
    for cname, cls in STRUCTS.items():
        lines.append(f'printf("{cname} %zu\\n", sizeof({cname}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{cname}.{field} %zu %zu\\n", offsetof({cname}, {field}), '
                         f'sizeof((({cname} *)0)->{field}));')
    src = tmp_path / "layout.c"
    src.write_text('#include <stddef.h>\n#include <stdio.h>\n#include "fa3c.h"\nint main(void) {\n'
                   + "\n".join(lines) + "\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.check_call(["gcc", "-std=c11", "-I", os.path.dirname(HEADER), str(src), "-o", str(exe)])
    c = dict(line.split(" ", 1) for line in subprocess.check_output([str(exe)], text=True).splitlines())
    for cname, cls in STRUCTS.items():
        assert int(c[cname]) == ctypes.sizeof(cls), f"sizeof({cname})"
        for field, ftype in cls._fields_:
            off, size = map(int, c[f"{cname}.{field}"].split())
            assert (off, size) == (getattr(cls, field).offset, ctypes.sizeof(ftype)), f"{cname}.{field}"


@needs_header
def test_every_function_declared():
    """The binding declares exactly the header's FA3C_API functions, with their parameter counts."""
    text = re.sub(r"/\*.*?\*/", "", header_text(), flags=re.S)
    found = {}
    for m in re.finditer(r"FA3C_API\s+[^;(]*?\b(fa3c_\w+)\s*\(([^)]*)\)", text):
        params = m.group(2).strip()
        found[m.group(1)] = 0 if params in ("", "void") else params.count(",") + 1
    assert set(found) == set(_lib.SIGNATURES)
    for name, n in found.items():
        assert len(_lib.SIGNATURES[name][1]) == n, name


@needs_header
def test_enum_values_match():
    text = header_text()
    values = {m.group(1): int(m.group(2)) for m in re.finditer(r"\b(FA3C_\w+)\s*=\s*(\d+)", text)}
    for enum, prefix in ((fa3c.Status, "FA3C_"), (fa3c.DType, "FA3C_DTYPE_"), (fa3c.DeviceType, "FA3C_DEVICE_"),
                         (_lib.CopyKind, "FA3C_COPY_")):
        for member in enum:
            name = prefix + ("ERROR_" + member.name if enum is fa3c.Status and member.name != "OK" else member.name)
            assert values[name] == member.value, name
    assert int(re.search(r"#define FA3C_MAX_DIMS (\d+)", text).group(1)) == _lib.MAX_DIMS


def test_library_loaded_and_versioned():
    assert os.path.isfile(fa3c.library_path())
    assert _lib.lib().fa3c_version() // 100 == _lib.HEADER_VERSION // 100
    assert re.match(r"\d+\.\d+\.\d+", fa3c.version())
    names = [name for name, _, available, _ in fa3c.backends() if available]
    assert fa3c.default_context().backend in names


def test_search_order_env_first(monkeypatch):
    monkeypatch.setenv("FA3C_LIBRARY", "/nonexistent/libfa3c.so")
    assert _lib.candidate_paths() == ["/nonexistent/libfa3c.so"]
    monkeypatch.delenv("FA3C_LIBRARY")
    paths = _lib.candidate_paths()
    pkg = os.path.dirname(os.path.abspath(_lib.__file__))
    in_pkg = [p for p in paths if os.path.dirname(p) == pkg]
    assert paths[: len(in_pkg)] == in_pkg  # the installed copy comes before any build directory


def test_context_options(cpu_backend):
    with fa3c.Context(backend=cpu_backend, num_threads=1, num_sm=132) as ctx:
        assert ctx.backend == cpu_backend
        assert ctx.device == (fa3c.DeviceType.CPU, 0)
        assert ctx.num_sm == 132 and ctx.num_threads == 1
        ctx.synchronize()
    with pytest.raises(ValueError, match="closed"):
        ctx.num_sm
    with pytest.raises(fa3c.Fa3cError, match="backend") as e:
        fa3c.Context(backend="no-such-backend")
    assert e.value.status != fa3c.Status.OK


def test_default_context_is_shared():
    assert fa3c.default_context() is fa3c.default_context((fa3c.DeviceType.CPU, 0))


def test_threads_share_default_context():
    """Concurrent calls through the (single-threaded) default context are serialised by its lock."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 16, 4, 64)).astype(ml_dtypes.bfloat16) for _ in range(3))
    expected = fa3c.flash_attn_func(q, k, v, causal=True).view(np.uint16)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(fa3c.flash_attn_func(q, k, v, causal=True).view(np.uint16))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    assert all(np.array_equal(r, expected) for r in results)


def test_describe_numpy_views():
    x = np.zeros((4, 6, 8), dtype=np.float16)[1:, ::2, :5]
    t = _arrays.describe(x, "x")
    assert t.dtype == fa3c.DType.F16 and t.ndim == 3
    assert list(t.shape[:3]) == [3, 3, 5]
    assert list(t.stride[:3]) == [48, 16, 1]
    assert t.data == x.ctypes.data
    assert not _arrays.describe(None, "x").dtype  # absent
    with pytest.raises(fa3c.Fa3cError, match="x: dtype float64"):
        _arrays.describe(np.zeros(3), "x")
    with pytest.raises(fa3c.Fa3cError, match="x: dtype"):
        _arrays.describe(np.zeros(3, dtype=">f4"), "x")  # non-native byte order
    with pytest.raises(fa3c.Fa3cError, match="dimensions"):
        _arrays.describe(np.zeros((1,) * 6, dtype=np.float32), "x")


def test_as_dtype():
    assert _arrays.as_dtype("bfloat16") == fa3c.DType.BF16
    assert _arrays.as_dtype("torch.float8_e4m3fn") == fa3c.DType.E4M3
    assert _arrays.as_dtype(np.float16) == fa3c.DType.F16
    assert _arrays.as_dtype(np.dtype(np.int32)) == fa3c.DType.I32
    with pytest.raises(fa3c.Fa3cError):
        _arrays.as_dtype(np.float64)
