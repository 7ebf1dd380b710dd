#!/usr/bin/env python3
"""fa3c's cpu backend next to torch's CPU scaled_dot_product_attention, in one run.

Runs `fa3c bench` (prefill, decode, thread scaling, and the machine's anchors: the fp32 FMA peak
and a memcpy) and then torch's CPU SDPA on the same shapes with the same number of threads, and
prints one markdown table per section (see bench/README.md for the setup and the definitions).

  python3 bench/cpu_bench.py --fa3c build/fa3c [--threads N] [--quick] [--rounds R] [--csv out.csv]

The machine may be shared: every time is the best of repeated calls (load only slows calls
down), and fa3c and torch are measured in alternating rounds, keeping each one's best per shape.

Shapes (legend of include/fa3c.h):
  prefill  b 1, h 8 / h_k 8, d 128, s_q = s_k = 512..4096, causal and not. fa3c: bf16, fp16.
           torch: fp32, bf16, fp16. GFLOP/s = 4 b h s^2 d (/2 causal) / time.
  decode   bf16, h 32 / h_k 8, d 128, one query, batch 1/8/32, KV 1k..32k. fa3c reads a paged
           cache (page 16, random page order); torch (which has no paged attention) reads a
           contiguous (b, h_k, kv, d) cache with enable_gqa. GB/s = K/V bytes / time, caches
           flushed before every timed call; fa3c's ratio is to a memcpy timed between its calls.
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time


def run_fa3c(args):
    with tempfile.NamedTemporaryFile(suffix=".csv", delete=False) as f:
        path = f.name
    cmd = [args.fa3c, "bench", "--backend", "cpu", "--threads", str(args.threads), "--csv", path,
           "--max-gb", str(args.max_gb)]
    if args.quick:
        cmd.append("--quick")
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    os.unlink(path)
    return rows


def best_time(fn, min_time, flush=None):
    fn()  # warm-up
    times, total = [], 0.0
    while len(times) < 3 or (total < min_time and len(times) < 64):
        if flush:
            flush()
        t = time.perf_counter()
        fn()
        t = time.perf_counter() - t
        times.append(t)
        total += t
    return min(times)


def run_torch(args, prefill_shapes, decode_shapes):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    min_time = 0.3 if args.quick else 1.0
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    out = {"prefill": {}, "decode": {}, "version": torch.__version__,
           "capability": torch.backends.cpu.get_cpu_capability()}
    g = torch.Generator().manual_seed(0)
    for dt in ("f32", "bf16", "f16"):
        for s, causal in prefill_shapes:
            q, k, v = (torch.randn(1, 8, s, 128, generator=g).to(dtypes[dt]) for _ in range(3))
            t = best_time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), min_time)
            out["prefill"][(dt, s, causal)] = 4.0 * 8 * s * s * 128 / (2 if causal else 1) / t * 1e-9
    flush_buf = torch.empty(32 << 20, dtype=torch.float32)  # 128 MiB

    def flush():
        flush_buf.fill_(1.0)

    for b, kv in decode_shapes:
        kv_bytes = b * kv * 8 * 256 * 2
        q = torch.randn(b, 32, 1, 128, generator=g).to(torch.bfloat16)
        k = torch.randn(b, 8, kv, 128, generator=g).to(torch.bfloat16)
        v = torch.randn(b, 8, kv, 128, generator=g).to(torch.bfloat16)
        # one query per sequence sees every key (torch's is_causal aligns top-left, so it stays off)
        t = best_time(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), min_time, flush)
        out["decode"][(b, kv)] = kv_bytes / t * 1e-9
        del q, k, v
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fa3c", default="build/fa3c", help="path of the fa3c command")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    ap.add_argument("--max-gb", type=float, default=4.5, help="skip decode shapes with more KV cache")
    ap.add_argument("--rounds", type=int, default=2, help="alternating fa3c / torch rounds (best kept)")
    ap.add_argument("--csv", help="also write the merged table here")
    args = ap.parse_args()

    best, t = {}, None
    for _ in range(args.rounds):
        for r in run_fa3c(args):  # keep each measurement's best round
            key = (r["section"], r["dtype"], r["b"], r["s_q"], r["s_k"], r["causal"], r["threads"])
            val = {"decode": r["gbps"], "probe_memcpy": r["memcpy_gbps"]}.get(r["section"], r["gflops"])
            val = float(val)
            if key not in best or val > best[key][0]:
                best[key] = (val, r)
        rows = [r for _, r in best.values()]
        prefill = [r for r in rows if r["section"] == "prefill"]
        decode = [r for r in rows if r["section"] == "decode"]
        pre_shapes = sorted({(int(r["s_q"]), r["causal"] == "1") for r in prefill})
        dec_shapes = sorted((int(r["b"]), int(r["s_k"])) for r in decode)
        try:
            tr = run_torch(args, pre_shapes, dec_shapes)
        except ImportError as e:
            print(f"torch not importable ({e}); fa3c numbers only", file=sys.stderr)
            break
        if t is None:
            t = tr
        else:
            for sec in ("prefill", "decode"):
                for k, v in tr[sec].items():
                    t[sec][k] = max(t[sec][k], v)
    probe = {r["section"]: r for r in rows if r["section"].startswith("probe")}
    fma_peak = float(probe["probe_fma"]["gflops"])
    bf16_peak = float(probe["probe_bf16"]["gflops"]) or fma_peak
    memcpy = float(probe["probe_memcpy"]["memcpy_gbps"])
    decode.sort(key=lambda r: (int(r["b"]), int(r["s_k"])))
    scaling = [r for r in rows if r["section"] == "scaling"]

    merged = []
    print(f"\n## Prefill ({args.threads} threads; measured peaks: fp32 FMA {fma_peak:.0f} GFLOP/s, "
          f"BF16 dot {bf16_peak:.0f} GFLOP/s)\n")
    hdr = "| s | mask | fa3c bf16 | fa3c fp16 | torch bf16 | torch fp16 | torch fp32 | bf16 vs torch bf16 | fp16 vs torch fp32 |"
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    fa = {(r["dtype"], int(r["s_q"]), r["causal"] == "1"): float(r["gflops"]) for r in prefill}
    for s, causal in pre_shapes:
        fb, fh = fa.get(("bf16", s, causal), 0), fa.get(("f16", s, causal), 0)
        tb = t["prefill"][("bf16", s, causal)] if t else float("nan")
        th = t["prefill"][("f16", s, causal)] if t else float("nan")
        tf = t["prefill"][("f32", s, causal)] if t else float("nan")
        print(f"| {s} | {'causal' if causal else 'none'} | {fb:.1f} ({100 * fb / bf16_peak:.0f}%) | "
              f"{fh:.1f} ({100 * fh / fma_peak:.0f}%) | {tb:.1f} | {th:.1f} | {tf:.1f} | {fb / tb:.2f}x | {fh / tf:.2f}x |")
        merged.append(dict(section="prefill", s=s, causal=int(causal), fa3c_bf16=fb, fa3c_f16=fh, torch_bf16=tb,
                           torch_f16=th, torch_f32=tf))
    print(f"\n## Decode ({args.threads} threads; memcpy {memcpy:.1f} GB/s copied at the start)\n")
    print("| batch | KV | fa3c GB/s | memcpy GB/s | fa3c / memcpy | torch GB/s | fa3c vs torch |")
    print("|---|---|---|---|---|---|---|")
    for r in decode:
        b, kv, gbs, mc = int(r["b"]), int(r["s_k"]), float(r["gbps"]), float(r["memcpy_gbps"])
        tg = t["decode"][(b, kv)] if t else float("nan")
        print(f"| {b} | {kv} | {gbs:.2f} | {mc:.2f} | {gbs / mc:.2f} | {tg:.2f} | {gbs / tg:.2f}x |")
        merged.append(dict(section="decode", b=b, kv=kv, fa3c_gbps=gbs, memcpy_gbps=mc, torch_gbps=tg))
    if scaling:
        print("\n## Thread scaling (prefill bf16, s 2048)\n")
        print("| mask | 1 thread GFLOP/s | %d threads GFLOP/s | speed-up |" % args.threads)
        print("|---|---|---|---|")
        for causal in ("0", "1"):
            one = [r for r in scaling if r["causal"] == causal and r["threads"] == "1"]
            many = [r for r in scaling if r["causal"] == causal and r["threads"] != "1"]
            if one and many:
                g1, gn = float(one[0]["gflops"]), float(many[0]["gflops"])
                print(f"| {'causal' if causal == '1' else 'none'} | {g1:.1f} | {gn:.1f} | {gn / g1:.2f}x |")
                merged.append(dict(section="scaling", causal=int(causal), gflops_1=g1, gflops_n=gn))
    if t:
        print(f"\n(torch {t['version']}, CPU capability {t['capability']}, {args.threads} threads)")
    if args.csv:
        keys = sorted({k for m in merged for k in m})
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(merged)


if __name__ == "__main__":
    main()
