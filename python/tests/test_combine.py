"""flash_attn_combine against the float64 reference."""

import numpy as np
import pytest

pytest.importorskip("ml_dtypes")

from fa3c.flash_attn_interface import flash_attn_combine  # noqa: E402
from ref_numpy import BF16, F16, assert_lse, assert_out_ulp, combine_ref  # noqa: E402


def partials(rng, S, rows, h, dv):
    """Non-contiguous out_partial (S, *rows, h, dv) (a head slice of a larger buffer) and
    lse_partial (S, *rows, h) as the transposed view of an (S, *rows[:-1], h, rows[-1]) buffer,
    with half the splits of the first row group at -inf and one row with every split at -inf."""
    big = rng.standard_normal((S,) + rows + (h + 3, dv)).astype(np.float32)
    out_partial = big[..., 1:h + 1, :]
    lse_buf = (rng.standard_normal((S,) + rows[:-1] + (h, rows[-1])) * 3).astype(np.float32)
    lse_buf[: (S + 1) // 2, 0] = -np.inf
    lse_buf[(slice(None),) + (1,) * (len(rows) - 1) + (h - 1, rows[-1] - 1)] = -np.inf
    lse_partial = lse_buf.swapaxes(-1, -2)
    assert lse_partial.strides[-2] == 4 and out_partial.strides[-1] == 4
    return out_partial, lse_partial


@pytest.mark.parametrize("dv", [64, 30])
@pytest.mark.parametrize("S", [1, 2, 5, 17])
@pytest.mark.parametrize("out_dtype", [np.float32, F16, BF16], ids=["fp32", "fp16", "bf16"])
def test_combine(rng, out_dtype, S, dv):
    b, s, h = 3, 5, 4
    out_partial, lse_partial = partials(rng, S, (b, s), h, dv)
    ref_out, ref_lse = combine_ref(out_partial, lse_partial)
    out, lse = flash_attn_combine(out_partial, lse_partial, out_dtype=out_dtype)
    assert out.shape == (b, s, h, dv) and out.dtype == out_dtype
    assert lse.shape == (b, s, h) and lse.dtype == np.float32
    assert lse.strides[1] == 4, "lse is FA3's transposed view of a (b, h, s) buffer"
    assert_out_ulp(out, ref_out)
    assert_lse(lse, ref_lse)
    assert np.all(out[1, s - 1, h - 1].astype(np.float32) == 0) and lse[1, s - 1, h - 1] == -np.inf
    # a preallocated out (dtype taken from it) is filled and returned, whatever dv % 4
    given = np.full((b, s, h, dv), 7, dtype=out_dtype)
    res, lse2 = flash_attn_combine(out_partial, lse_partial, out=given)
    assert res is given
    assert np.array_equal(given.view(np.uint8), out.view(np.uint8)) and np.array_equal(lse2, lse)


def test_combine_default_dtype_fp32(rng):
    out_partial, lse_partial = partials(rng, 3, (2, 4), 2, 16)
    out, _ = flash_attn_combine(out_partial, lse_partial)
    assert out.dtype == np.float32


def test_combine_varlen_layout(rng):
    """(S, total, h, dv) partials, as a varlen split forward produces them."""
    S, total, h, dv = 4, 7, 3, 32
    out_partial, lse_partial = partials(rng, S, (total,), h, dv)
    ref_out, ref_lse = combine_ref(out_partial, lse_partial)
    out, lse = flash_attn_combine(out_partial, lse_partial, out_dtype=BF16)
    assert out.shape == (total, h, dv) and lse.shape == (total, h)
    assert_out_ulp(out, ref_out)
    assert_lse(lse, ref_lse)
