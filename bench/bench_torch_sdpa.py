"""torch SDPA anchors for tools/bench_cuda.c, on the same shapes, in the same device session.

prefill: FA3's sweep: bf16, hidden 2048 (d 64 / 128 / 256 with h 32 / 16 / 8), 16k tokens
(b = 16384 / s), s = 512..16k, causal and not; SDPA with the flash and the cuDNN back-ends; TFLOP/s
with FA3's count 4 b h s^2 d (halved when causal).
decode: q_len 1, 32 q heads / 8 kv heads (enable_gqa), d 128, bf16, batch 1..128, KV 1k..64k,
contiguous cache; K/V bytes read per second. Each call is timed from a CUDA graph of `inner`
calls (median of repeats), like the fa3c decode rows. A back-end that refuses a shape prints n/a.
Usage: python3 bench/bench_torch_sdpa.py [prefill|decode|all] [max_kv_gib]
"""
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]


def time_call(fn, inner, reps, graph):
    fn()
    torch.cuda.synchronize()
    if graph:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(inner):
                fn()
        run = g.replay
    else:
        def run():
            for _ in range(inner):
                fn()
    run()
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        run()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1e-3 / inner)
    return statistics.median(times)


def prefill():
    total, hidden = 16384, 2048
    print("kind,seqlen,batch,causal,heads,d,backend,time_us,tflops")
    for d in (64, 128, 256):
        h = hidden // d
        for s in [512, 1024, 2048, 4096, 8192, 16384]:
            b = total // s
            q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            for causal in (0, 1):
                flops = 4.0 * b * h * s * s * d / (2 if causal else 1)
                for name, be in BACKENDS:
                    row = f"torch_prefill,{s},{b},{causal},{h},{d},{name}"
                    try:
                        with sdpa_kernel(be):
                            t = time_call(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal)), 1,
                                          15, False)
                        print(f"{row},{t * 1e6:.1f},{flops / t * 1e-12:.1f}", flush=True)
                    except Exception as e:  # a back-end that does not take the shape
                        print(f"{row},n/a,n/a  # {type(e).__name__}", flush=True)
            del q, k, v


def decode(max_gib):
    h, hk, d = 32, 8, 128
    print("kind,batch,kv,backend,time_us,kv_gbps")
    for b in [1, 16, 64, 128]:
        for kv in [1024, 4096, 16384, 65536]:
            kv_bytes = b * kv * hk * d * 2
            if 2 * kv_bytes > max_gib * 2**30:
                continue
            q = torch.randn(b, h, 1, d, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(b, hk, kv, d, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(b, hk, kv, d, device="cuda", dtype=torch.bfloat16)
            inner = 20 if kv_bytes < (64 << 20) else 3
            for name, be in BACKENDS:
                try:
                    with sdpa_kernel(be):
                        t = time_call(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), inner, 9,
                                      True)
                    print(f"torch_decode,{b},{kv},{name},{t * 1e6:.1f},{2 * kv_bytes / t * 1e-9:.0f}", flush=True)
                except Exception as e:
                    print(f"torch_decode,{b},{kv},{name},n/a,n/a  # {type(e).__name__}: {str(e)[:80]}", flush=True)
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    max_gib = float(sys.argv[2]) if len(sys.argv) > 2 else 34.0
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}")
    if what in ("prefill", "all"):
        prefill()
    if what in ("decode", "all"):
        decode(max_gib)
