"""FA3 compatibility of fa3c.flash_attn_interface: every FA3 (hopper/flash_attn_interface.py) argument
keeps its name, position and default, sgl-kernel's additions come after them, and the return
conventions match. The expected signatures are written out here from FA3's interface, so a
renamed, reordered or re-defaulted argument fails."""
import inspect

import numpy as np
import pytest

from fa3c import flash_attn_interface as fai
from ref_numpy import BF16, rand

_ = None  # "no default": a required positional argument
FA3 = {
    "flash_attn_qkvpacked_func": [
        ("qkv", _), ("softmax_scale", None), ("causal", False), ("q_descale", None), ("k_descale", None),
        ("v_descale", None), ("window_size", (-1, -1)), ("attention_chunk", 0), ("softcap", 0.0),
        ("deterministic", False), ("num_heads_q", None), ("sm_margin", 0), ("return_attn_probs", False),
    ],
    "flash_attn_func": [
        ("q", _), ("k", _), ("v", _), ("softmax_scale", None), ("causal", False), ("qv", None),
        ("q_descale", None), ("k_descale", None), ("v_descale", None), ("window_size", (-1, -1)),
        ("attention_chunk", 0), ("softcap", 0.0), ("num_splits", 1), ("pack_gqa", None),
        ("deterministic", False), ("sm_margin", 0), ("return_attn_probs", False),
    ],
    "flash_attn_varlen_func": [
        ("q", _), ("k", _), ("v", _), ("cu_seqlens_q", _), ("cu_seqlens_k", _), ("max_seqlen_q", _),
        ("max_seqlen_k", _), ("seqused_q", None), ("seqused_k", None), ("softmax_scale", None),
        ("causal", False), ("qv", None), ("q_descale", None), ("k_descale", None), ("v_descale", None),
        ("window_size", (-1, -1)), ("attention_chunk", 0), ("softcap", 0.0), ("num_splits", 1),
        ("pack_gqa", None), ("deterministic", False), ("sm_margin", 0), ("return_attn_probs", False),
    ],
    "flash_attn_with_kvcache": [
        ("q", _), ("k_cache", _), ("v_cache", _), ("k", None), ("v", None), ("qv", None),
        ("rotary_cos", None), ("rotary_sin", None), ("cache_seqlens", None), ("cache_batch_idx", None),
        ("cache_leftpad", None), ("page_table", None), ("cu_seqlens_q", None), ("cu_seqlens_k_new", None),
        ("max_seqlen_q", None), ("rotary_seqlens", None), ("q_descale", None), ("k_descale", None),
        ("v_descale", None), ("softmax_scale", None), ("causal", False), ("window_size", (-1, -1)),
        ("attention_chunk", 0), ("softcap", 0.0), ("rotary_interleaved", True), ("scheduler_metadata", None),
        ("num_splits", 0), ("pack_gqa", None), ("sm_margin", 0), ("return_softmax_lse", False),
    ],
    "get_scheduler_metadata": [
        ("batch_size", _), ("max_seqlen_q", _), ("max_seqlen_k", _), ("num_heads_q", _), ("num_heads_kv", _),
        ("headdim", _), ("cache_seqlens", _), ("qkv_dtype", "bfloat16"), ("headdim_v", None),
        ("cu_seqlens_q", None), ("cu_seqlens_k_new", None), ("cache_leftpad", None), ("page_size", None),
        ("max_seqlen_k_new", 0), ("causal", False), ("window_size", (-1, -1)), ("attention_chunk", 0),
        ("has_softcap", False), ("num_splits", 0), ("pack_gqa", None), ("sm_margin", 0),
    ],
    "flash_attn_combine": [("out_partial", _), ("lse_partial", _), ("out", None), ("out_dtype", None)],
}
# sgl-kernel's additions, each only after every FA3 argument.
SGL_EXTRA = {"flash_attn_varlen_func": {"sinks", "ver", "return_softmax_lse"},
             "flash_attn_with_kvcache": {"sinks", "ver"}, "flash_attn_func": {"sinks"}}


@pytest.mark.parametrize("name", sorted(FA3))
def test_signature_prefix_is_fa3(name):
    params = list(inspect.signature(getattr(fai, name)).parameters.values())
    want = FA3[name]
    assert [p.name for p in params[:len(want)]] == [n for n, _ in want]
    for p, (n, default) in zip(params, want):
        if default is None and p.default is inspect.Parameter.empty:
            continue  # required in both
        got = p.default
        if n == "qkv_dtype":  # FA3's default is torch.bfloat16; without torch, its name
            got = getattr(got, "__name__", str(got)).replace("torch.", "")
        assert got == default, f"{name}({n}=...) default {got!r}, FA3 has {default!r}"
    extra = {p.name for p in params[len(want):]}
    assert SGL_EXTRA.get(name, set()) <= extra


def _small(rng):
    q = rand(rng, (2, 3, 4, 64), BF16)
    k = rand(rng, (2, 5, 2, 64), BF16)
    v = rand(rng, (2, 5, 2, 64), BF16)
    return q, k, v


def test_return_conventions(rng):
    q, k, v = _small(rng)
    out = fai.flash_attn_func(q, k, v)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3, 4, 64) and out.dtype == BF16
    out2, lse = fai.flash_attn_func(q, k, v, return_attn_probs=True)
    assert lse.shape == (2, 4, 3) and lse.dtype == np.float32 and np.array_equal(out, out2)
    seqlens = np.array([5, 2], np.int32)
    res = fai.flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens, return_softmax_lse=True)
    assert len(res) == 4 and res[1].shape == (2, 4, 3)
    assert isinstance(fai.flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens), np.ndarray)
    # an int cache_seqlens expands to (b,) as FA3 does
    assert np.array_equal(fai.flash_attn_with_kvcache(q, k, v, cache_seqlens=5), fai.flash_attn_func(q, k, v))


def test_positional_call_matches_keywords(rng):
    """FA3 users pass the leading arguments positionally: the same call both ways."""
    q, k, v = _small(rng)
    a = fai.flash_attn_func(q, k, v, 0.2, True, None, None, None, None, (2, 0), 0, 5.0, 1)
    b = fai.flash_attn_func(q, k, v, softmax_scale=0.2, causal=True, window_size=(2, 0), softcap=5.0, num_splits=1)
    assert np.array_equal(a, b)


def test_ver_other_than_3_raises(rng):
    q, k, v = _small(rng)
    with pytest.raises(ValueError):
        fai.flash_attn_with_kvcache(q, k, v, cache_seqlens=5, ver=4)
