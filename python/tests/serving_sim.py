"""A miniature serving engine for the fa3c.serving tests: a paged K/V pool per layer, a
request -> token-slot table with pages scattered at random, and a host-side log of every request's
logical K/V, so that each forward can be checked against the float64 reference (ref_numpy).

Arrays are numpy, or torch tensors when the engine is built with to_device=torch_from_numpy (the
reference and the checks stay in numpy).
"""

import numpy as np

from fa3c.serving import AttentionBackend, ForwardMode
from ref_numpy import BF16, assert_out_fa3, assert_out_ulp, attention_ref, rand


def to_numpy(x):
    """numpy copy of a numpy array or a torch tensor on any device (bf16 bit for bit as
    ml_dtypes bf16)."""
    if isinstance(x, np.ndarray):
        return x
    x = x.detach().cpu()
    if str(x.dtype) == "torch.bfloat16":
        import torch
        return x.view(torch.int16).numpy().view(BF16)
    return x.numpy()


def torch_from_numpy(a, device="cpu"):
    """A torch tensor holding a (numpy, ml_dtypes bf16 too) bit for bit, on device."""
    import torch
    if a.dtype == BF16:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


class Engine:
    """Requests 0 .. num_reqs - 1 with up to max_ctx tokens each; page p of request r is a random
    page of the pool, so token position t of r lives in slot page * page_size + t % page_size."""

    def __init__(self, rng, layers, *, page_size, num_reqs=4, max_ctx=96, dt=BF16, to_device=None, rule=None,
                 mla=False, **backend_kw):
        # rule: "ulp" (fp32 math rounded once, as the scalar reference backend computes) or "fa3"
        # (FA3's pass rule against the same math at the input precision, for backends that round
        # the probabilities to the input dtype); None: "ulp" on cpu-ref, else "fa3".
        # mla: every layer is MLA absorbed attention as SGLang runs DeepSeek: one pool of
        # [v (dv) | k (d)] rows a layer, the caches its column views, and a qv input.
        self.rng, self.layers, self.page_size, self.dt, self.mla = rng, list(layers), page_size, dt, mla
        self.dev = to_device or (lambda a: a)
        pages_per_req = -(-max_ctx // page_size)
        num_pages = num_reqs * pages_per_req + 3
        pages = rng.permutation(num_pages)[: num_reqs * pages_per_req].reshape(num_reqs, pages_per_req)
        pos = np.arange(max_ctx)
        self.req_to_token_np = (pages[:, pos // page_size] * page_size + pos % page_size).astype(np.int32)
        self.req_to_token = self.dev(self.req_to_token_np.copy())
        slots = num_pages * page_size
        # one K/V pool per layer, as (num_slots, h_k, d) slot arrays (MLA: views of one pool)
        if mla:
            pools = [self.dev(np.zeros((slots, l.num_heads_kv, l.head_dim_v + l.head_dim), dtype=dt))
                     for l in self.layers]
            self.k_pool = [p[..., l.head_dim_v:] for p, l in zip(pools, self.layers)]
            self.v_pool = [p[..., : l.head_dim_v] for p, l in zip(pools, self.layers)]
        else:
            self.k_pool = [self.dev(np.zeros((slots, l.num_heads_kv, l.head_dim), dtype=dt)) for l in self.layers]
            self.v_pool = [self.dev(np.zeros((slots, l.num_heads_kv, l.head_dim_v), dtype=dt)) for l in self.layers]
        self.k_log = [[np.zeros((0, l.num_heads_kv, l.head_dim), dtype=dt) for _ in range(num_reqs)]
                      for l in self.layers]
        self.v_log = [[np.zeros((0, l.num_heads_kv, l.head_dim_v), dtype=dt) for _ in range(num_reqs)]
                      for l in self.layers]
        self.seq_len = np.zeros(num_reqs, dtype=np.int64)
        kw = dict(dtype=dt, max_batch_size=num_reqs)
        kw.update(backend_kw)
        self.backend = AttentionBackend(self.req_to_token, page_size, self.layers, **kw)
        self.rule = rule or ("ulp" if self.backend.context.backend == "cpu-ref" else "fa3")

    # -- one forward batch ------------------------------------------------------------------------

    def begin(self, mode, reqs, new_lens):
        """init_forward_metadata for requests reqs adding new_lens tokens each (SGLang's length
        convention per mode)."""
        reqs, new = np.asarray(reqs), np.asarray(new_lens, dtype=np.int64)
        self.reqs, self.new = reqs, new
        prefix = self.seq_len[reqs]
        if mode == ForwardMode.DECODE:
            assert np.all(new == 1)
            fm = self.backend.init_forward_metadata(mode, reqs, prefix + 1)
        elif mode == ForwardMode.EXTEND:
            fm = self.backend.init_forward_metadata(mode, self.dev(reqs.astype(np.int32)), prefix + new,
                                                    extend_lens=new)
        else:
            assert np.all(new == new[0])
            fm = self.backend.init_forward_metadata(mode, reqs, prefix, num_draft_tokens=int(new[0]))
        self.fm = fm
        return fm

    def make_inputs(self, li):
        """Random q (total_new, h, d), new k/v (total_new, h_k, d/dv) and (MLA) qv (total_new, h,
        dv) of layer li."""
        l, n = self.layers[li], int(self.new.sum())
        q = rand(self.rng, (n, l.num_heads_q, l.head_dim), self.dt)
        k = rand(self.rng, (n, l.num_heads_kv, l.head_dim), self.dt)
        v = rand(self.rng, (n, l.num_heads_kv, l.head_dim_v), self.dt)
        qv = rand(self.rng, (n, l.num_heads_q, l.head_dim_v), self.dt) if self.mla else None
        return q, k, v, qv

    def run_layer(self, li, q, k, v, qv=None, metadata=None):
        """The layer's attention through the backend (appending in the kernel, or written first)."""
        be = self.backend
        qd, kd, vd = self.dev(q), self.dev(k), self.dev(v)
        qvd = None if qv is None else self.dev(qv)
        if be.append_kv:
            return be.forward(self.layers[li], qd, self.k_pool[li], self.v_pool[li], kd, vd, qv=qvd,
                              metadata=metadata)
        be.write_kv(self.k_pool[li], self.v_pool[li], kd, vd, metadata=metadata)
        return be.forward(self.layers[li], qd, self.k_pool[li], self.v_pool[li], qv=qvd, metadata=metadata)

    def check(self, li, out, q, k, v, qv=None):
        """Asserts a layer's output (numpy) against the reference under the engine's rule."""
        if self.rule == "ulp":
            assert_out_ulp(out, self.expected(li, q, k, v, qv))
        else:
            assert_out_fa3(out, self.expected(li, q, k, v, qv), self.expected(li, q, k, v, qv, lowp=self.dt))

    def expected(self, li, q, k, v, qv=None, lowp=None):
        """Reference out (total_new, h, dv) float64 over each request's logged K/V plus the new rows
        (lowp: FA3's naive computation at that precision)."""
        l = self.layers[li]
        b, new = len(self.reqs), self.new
        cu = np.concatenate([[0], np.cumsum(new)])
        total = self.seq_len[self.reqs] + new
        s_q, s_k = max(int(new.max()), 1), max(int(total.max()), 1)
        QV = None if qv is None else np.zeros((b, s_q, l.num_heads_q, l.head_dim_v), dtype=self.dt)
        Q = np.zeros((b, s_q, l.num_heads_q, l.head_dim), dtype=self.dt)
        K = np.zeros((b, s_k, l.num_heads_kv, l.head_dim), dtype=self.dt)
        V = np.zeros((b, s_k, l.num_heads_kv, l.head_dim_v), dtype=self.dt)
        for i, r in enumerate(self.reqs):
            Q[i, : new[i]] = q[cu[i]:cu[i + 1]]
            if qv is not None:
                QV[i, : new[i]] = qv[cu[i]:cu[i + 1]]
            K[i, : total[i]] = np.concatenate([self.k_log[li][r], k[cu[i]:cu[i + 1]]])
            V[i, : total[i]] = np.concatenate([self.v_log[li][r], v[cu[i]:cu[i + 1]]])
        out, _ = attention_ref(Q, K, V, new, total, causal=l.causal, window_size=l.window_size,
                               attention_chunk=l.attention_chunk, softcap=l.softcap, scale=l.softmax_scale,
                               qv=QV, lowp=lowp)
        return np.concatenate([out[i, : new[i]] for i in range(b)])

    def commit(self, li, k, v):
        """Logs the layer's new K/V as part of each request."""
        cu = np.concatenate([[0], np.cumsum(self.new)])
        for i, r in enumerate(self.reqs):
            self.k_log[li][r] = np.concatenate([self.k_log[li][r], k[cu[i]:cu[i + 1]]])
            self.v_log[li][r] = np.concatenate([self.v_log[li][r], v[cu[i]:cu[i + 1]]])

    def end(self):
        self.seq_len[self.reqs] += self.new

    def check_pool(self, li):
        """Every logged token of every request sits in its slot of the layer's pool."""
        kp, vp = to_numpy(self.k_pool[li]), to_numpy(self.v_pool[li])
        for r in range(len(self.seq_len)):
            slots = self.req_to_token_np[r, : self.seq_len[r]]
            assert np.array_equal(kp[slots].view(np.uint8), self.k_log[li][r].view(np.uint8)), f"k slots of {r}"
            assert np.array_equal(vp[slots].view(np.uint8), self.v_log[li][r].view(np.uint8)), f"v slots of {r}"

    def step(self, mode, reqs, new_lens):
        """One forward batch through every layer, each checked against the reference. Returns the
        outputs (numpy), one per layer."""
        outs = []
        for out in self.iter_step(mode, reqs, new_lens):
            if out is not None:
                outs.append(out)
        return outs

    def iter_step(self, mode, reqs, new_lens):
        """step() as a generator: yields None once the batch's metadata is built, then each
        layer's output, so that tests can interleave several engines."""
        self.begin(mode, reqs, new_lens)
        yield None
        for li in range(len(self.layers)):
            q, k, v, qv = self.make_inputs(li)
            out = to_numpy(self.run_layer(li, q, k, v, qv))
            self.check(li, out, q, k, v, qv)
            self.commit(li, k, v)
            yield out
        self.end()
        for li in range(len(self.layers)):
            self.check_pool(li)

    def run_trace(self, trace):
        """Every step of trace; returns the list of per-layer outputs of every step."""
        return [self.step(*s) for s in trace]


# A trace covering every forward mode: prefill of three requests, decodes, an extend with and
# without cached prefix in one batch (a chunked prefill continuing and a new request), a
# target-verify of 3 draft tokens, and decodes of a reordered batch after one request finished.
TRACE = [
    (ForwardMode.EXTEND, [0, 1, 2], [5, 17, 40]),
    (ForwardMode.DECODE, [0, 1, 2], [1, 1, 1]),
    (ForwardMode.DECODE, [0, 1, 2], [1, 1, 1]),
    (ForwardMode.EXTEND, [1, 3, 2], [7, 9, 3]),
    (ForwardMode.TARGET_VERIFY, [0, 1, 2, 3], [3, 3, 3, 3]),
    (ForwardMode.DECODE, [3, 0, 2], [1, 1, 1]),
    (ForwardMode.DECODE, [3, 0, 2], [1, 1, 1]),
]
