"""Bad arguments raise Fa3cError (INVALID_ARGUMENT, message naming the argument) and write nothing."""

import numpy as np
import pytest

pytest.importorskip("ml_dtypes")

import fa3c  # noqa: E402
from fa3c.flash_attn_interface import (  # noqa: E402
    flash_attn_combine, flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache, get_scheduler_metadata,
)
from ref_numpy import BF16, E4M3, rand  # noqa: E402

B, S_Q, S_K, H, H_K, D = 2, 3, 8, 4, 2, 64


@pytest.fixture
def qkv(rng):
    return rand(rng, (B, S_Q, H, D), BF16), rand(rng, (B, S_K, H_K, D), BF16), rand(rng, (B, S_K, H_K, D), BF16)


def raises_naming(name, fn, *args, **kwargs):
    """fn raises Fa3cError(INVALID_ARGUMENT) whose message names `name` (as a whole word)."""
    with pytest.raises(fa3c.Fa3cError, match=rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])") as e:
        fn(*args, **kwargs)
    assert e.value.status == fa3c.Status.INVALID_ARGUMENT
    assert isinstance(e.value, RuntimeError)
    return e.value


def test_wrong_q_dtype(qkv):
    q, k, v = qkv
    raises_naming("q", flash_attn_func, q.astype(np.float32), k, v)


def test_mixed_dtypes(qkv):
    q, k, v = qkv
    raises_naming("k", flash_attn_func, q, k.astype(np.float16), v)


def test_wrong_head_dim(qkv, rng):
    q, k, v = qkv
    raises_naming("k", flash_attn_func, q, rand(rng, (B, S_K, H_K, D + 8), BF16), v)


def test_heads_not_divisible(rng):
    q = rand(rng, (B, S_Q, 5, D), BF16)
    k = rand(rng, (B, S_K, 2, D), BF16)
    e = raises_naming("k", flash_attn_func, q, k, k)
    assert "5" in str(e) and "2" in str(e)


def test_fp8_head_dim_72(rng):
    q, k = rand(rng, (B, S_Q, H, 72), E4M3), rand(rng, (B, S_K, H_K, 72), E4M3)
    raises_naming("q", flash_attn_func, q, k, k)


def test_num_splits_300(qkv):
    raises_naming("num_splits", flash_attn_func, *qkv, num_splits=300)


def test_ver_4_is_value_error(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="ver"):
        flash_attn_with_kvcache(q, k, v, ver=4)
    cu = np.array([0, 3], dtype=np.int32)
    with pytest.raises(ValueError, match="ver"):
        flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, 3, 3, ver=2)


def test_descale_shape(rng):
    q, k = rand(rng, (B, S_Q, H, D), E4M3), rand(rng, (B, S_K, H_K, D), E4M3)
    good = np.ones((B, H_K), dtype=np.float32)
    raises_naming("k_descale", flash_attn_func, q, k, k, q_descale=good, k_descale=np.ones((B, H), np.float32),
                  v_descale=good)


def test_sinks_shape(qkv):
    raises_naming("sinks", flash_attn_func, *qkv, sinks=np.zeros(H + 1, dtype=np.float32))


def test_qv_needs_small_d(rng):
    q, k, v = rand(rng, (B, S_Q, H, 64), BF16), rand(rng, (B, S_K, H_K, 64), BF16), rand(rng, (B, S_K, H_K, 128), BF16)
    raises_naming("qv", flash_attn_func, q, k, v, qv=rand(rng, (B, S_Q, H, 128), BF16))  # qv needs dv >= 256


def test_cu_seqlens_int64(qkv):
    q, k, v = qkv
    cu = np.array([0, 3], dtype=np.int64)
    raises_naming("cu_seqlens_q", flash_attn_varlen_func, q[0], k[0], v[0], cu, cu.astype(np.int32), 3, 8)


def test_cu_seqlens_wrong_length(qkv):
    q, k, v = qkv
    raises_naming("cu_seqlens_k", flash_attn_varlen_func, q[0], k[0], v[0], np.array([0, 3], np.int32),
                  np.array([0, 4, 8], np.int32), 3, 8)


def test_rotary_without_new_kv(qkv, rng):
    q, k, v = qkv
    cos = rand(rng, (S_K, 16), BF16)
    raises_naming("rotary_cos", flash_attn_with_kvcache, q, k, v, rotary_cos=cos, rotary_sin=cos,
                  cache_seqlens=np.full(B, 4, np.int32))


def test_page_table_dtype(qkv):
    q, k, v = qkv
    raises_naming("page_table", flash_attn_with_kvcache, q, k, v, cache_seqlens=np.full(B, 4, np.int32),
                  page_table=np.zeros((B, 1), dtype=np.int64))


def test_negative_chunk(qkv):
    raises_naming("attention_chunk", flash_attn_func, *qkv, attention_chunk=-4)


def test_out_wrong_dtype(qkv):
    q, k, v = qkv
    raises_naming("out", flash_attn_func, q, k, v, out=np.zeros((B, S_Q, H, D), dtype=np.float16))


def test_out_read_only(qkv):
    q, k, v = qkv
    out = np.zeros((B, S_Q, H, D), dtype=BF16)
    out.flags.writeable = False
    raises_naming("out", flash_attn_func, q, k, v, out=out)


def test_unaligned_byte_stride(qkv):
    q, k, v = qkv
    odd = np.lib.stride_tricks.as_strided(q, shape=q.shape, strides=(q.strides[0], q.strides[1] + 1) + q.strides[2:])
    raises_naming("q", flash_attn_func, odd, k, v)


def test_combine_too_many_splits(rng):
    out_partial = np.zeros((300, 1, 1, 2, 8), dtype=np.float32)
    lse_partial = np.zeros((300, 1, 2, 1), dtype=np.float32).swapaxes(-1, -2)
    raises_naming("out_partial", flash_attn_combine, out_partial, lse_partial)


def test_scheduler_metadata_bad_heads():
    raises_naming("num_heads_kv", get_scheduler_metadata, 2, 1, 64, 4, 3, 64, np.full(2, 10, np.int32))


def test_not_an_array(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="k"):
        flash_attn_func(q, k.tolist(), v)


def test_kvcache_last_stride_asserted(qkv, rng):
    q, k, v = qkv
    k_big = rand(rng, (B, S_K, H_K, 2 * D), BF16)
    with pytest.raises(AssertionError, match="k_cache"):
        flash_attn_with_kvcache(q, k_big[..., ::2], v)


def test_nothing_written_on_error(qkv, rng):
    """A failing append leaves the cache untouched."""
    q, k, v = qkv
    k0, v0 = k.copy(), v.copy()
    k_new = rand(rng, (B, 2, H_K, D), BF16)
    with pytest.raises(fa3c.Fa3cError):
        flash_attn_with_kvcache(q, k, v, k=k_new, v=k_new, cache_seqlens=np.full(B, 2, np.int32), num_splits=300)
    assert np.array_equal(k.view(np.uint16), k0.view(np.uint16))
    assert np.array_equal(v.view(np.uint16), v0.view(np.uint16))
