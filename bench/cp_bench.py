"""Context-parallel attention on fa3c (fa3c.context_parallel): zigzag causal prefill and decode
over a KV cache sharded by pages, W GPUs through NCCL, against the one-GPU forward.

  torchrun --nproc_per_node 2 bench/cp_bench.py                  # 2 GPUs: 128k prefill, 1M-token KV decode
  python bench/cp_bench.py --simulate 2 --prefill 16384 --kv 131072   # the same code, W ranks on one GPU

Layer: 32 q heads, 8 kv heads, d 128, bf16, causal; decode page size 64, batch --batch. Per step it
reports the time (CUDA events; the slowest rank), each rank's attention time alone, and the bytes
each rank receives over the communicator (counted from the tensors it all-gathers: K/V for
prefill, out and lse partials for decode), and the one-GPU forward where it fits.

--simulate W runs the W ranks as threads on one GPU (SimulatedGroup): it checks the merged
results against the one-GPU forward and times each rank's attention alone, one rank at a time;
the ranks share one GPU, so it gives no multi-GPU step time and no NCCL timing (bytes only).
"""

import os

os.environ["NCCL_NVLS_ENABLE"] = "0"  # NVLink multicast off, before torch.distributed starts NCCL

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from fa3c.context_parallel import (  # noqa: E402
    ContextParallelDecode, ContextParallelPrefill, SimulatedGroup, TorchDistributedComm, local_key_count,
)
from fa3c.flash_attn_interface import flash_attn_func, flash_attn_with_kvcache  # noqa: E402
from fa3c.serving import AttentionLayer  # noqa: E402

LAYER = AttentionLayer(num_heads_q=32, num_heads_kv=8, head_dim=128)
PAGE = 64
BF16 = torch.bfloat16


def cuda_time(fn, iters, warmup=1):
    """Mean ms of fn() over iters, by CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def randn(shape, device, seed):
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return torch.randn(shape, generator=g, device=device, dtype=BF16)


# ---------------------------------------------------------------------------------------------
# Per-rank setup (the same on a real rank and a simulated one)


def prefill_rank(comm, T, device):
    """The rank's prefill objects and inputs: its zigzag tokens' q/k/v, cut from global tensors
    made from one seed (so the simulation can compare with the one-GPU forward)."""
    cp = ContextParallelPrefill(comm, [LAYER], dtype=BF16, device_like=torch.empty(0, dtype=torch.int32, device=device))
    fm = cp.init_forward_metadata([T])
    mine = torch.from_numpy(fm.split.tokens(comm.rank)).to(device)
    q, k, v = (randn((T, h, LAYER.head_dim), device, s)[mine]
               for s, h in ((1, LAYER.num_heads_q), (2, LAYER.num_heads_kv), (3, LAYER.num_heads_kv)))
    return dict(cp=cp, q=q, k=k, v=v)


def prefill_step(r):
    kc, vc = r["cp"].gather_kv(r["k"], r["v"])
    return r["cp"].forward(LAYER, r["q"], kc, vc)


def decode_rank(comm, kv, batch, device):
    """The rank's shard of batch requests of kv // batch tokens each: a pool of its pages (random
    K/V, pages in order), its page table, and the decode queries."""
    L = kv // batch
    cp = ContextParallelDecode(comm, PAGE, [LAYER], dtype=BF16,
                               device_like=torch.empty(0, dtype=torch.int32, device=device))
    pages = int(-(-local_key_count([L], comm.rank, PAGE, comm.world_size)[0] // PAGE))
    pages = max(pages, 1)
    table = torch.arange(batch * pages, dtype=torch.int32, device=device).reshape(batch, pages)
    shape = (batch * pages, PAGE, LAYER.num_heads_kv, LAYER.head_dim)
    r = dict(cp=cp, k=randn(shape, device, 10 + comm.rank), v=randn(shape, device, 20 + comm.rank),
             q=randn((batch, LAYER.num_heads_q, LAYER.head_dim), device, 4), table=table)
    cp.init_forward_metadata([L] * batch, table)
    return r


def decode_step(r):
    return r["cp"].forward(LAYER, r["q"], r["k"], r["v"])


def prefill_flops(T):
    return 4 * T * T / 2 * LAYER.num_heads_q * LAYER.head_dim  # two matmuls, causal half


def kv_bytes(tokens):
    return tokens * LAYER.num_heads_kv * (LAYER.head_dim + LAYER.head_dim_v) * 2


# ---------------------------------------------------------------------------------------------
# One-GPU forwards


def one_gpu_prefill(T, device, iters):
    q, k, v = (randn((1, T, h, LAYER.head_dim), device, s)
               for s, h in ((1, LAYER.num_heads_q), (2, LAYER.num_heads_kv), (3, LAYER.num_heads_kv)))
    out = flash_attn_func(q, k, v, causal=True)
    return cuda_time(lambda: flash_attn_func(q, k, v, causal=True, out=out), iters), out[0]


def one_gpu_decode(kv, batch, device, iters, shards=None):
    """One flash_attn_with_kvcache call over the whole cache in one pool: built from the
    simulated ranks' shards (logical page p of a request from rank p % W), else random."""
    L = kv // batch
    n_pages = -(-L // PAGE)
    shape = (batch, n_pages, PAGE, LAYER.num_heads_kv, LAYER.head_dim)
    if shards is None:
        k, v = randn(shape, device, 30), randn(shape, device, 31)
        q = randn((batch, LAYER.num_heads_q, LAYER.head_dim), device, 4)
    else:
        k, v = torch.empty(shape, dtype=BF16, device=device), torch.empty(shape, dtype=BF16, device=device)
        W = len(shards)
        for s, src in enumerate(shards):
            count = k[:, s::W].shape[1]
            k[:, s::W], v[:, s::W] = src["k"][src["table"][:, :count]], src["v"][src["table"][:, :count]]
        q = shards[0]["q"]
    k, v = k.reshape((-1,) + shape[2:]), v.reshape((-1,) + shape[2:])
    table = torch.arange(batch * n_pages, dtype=torch.int32, device=device).reshape(batch, n_pages)
    lens = torch.full((batch,), L, dtype=torch.int32, device=device)

    def step():
        return flash_attn_with_kvcache(q[:, None], k, v, cache_seqlens=lens, page_table=table, causal=True)

    return cuda_time(step, iters), step()[:, 0]


def fits(fn):
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


# ---------------------------------------------------------------------------------------------
# Modes


def run_distributed(args):
    dist.init_process_group("nccl")
    rank, W = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    device = torch.device("cuda", torch.cuda.current_device())
    comm = TorchDistributedComm()
    report = dict(mode="nccl", world_size=W, device=torch.cuda.get_device_name(device))
    for name in ("prefill", "decode"):
        if name == "prefill":
            r = prefill_rank(comm, args.prefill, device)
            caches = r["cp"].gather_kv(r["k"], r["v"])
            compute = cuda_time(lambda: r["cp"].forward(LAYER, r["q"], *caches), args.iters)
            step = prefill_step
        else:
            r = decode_rank(comm, args.kv, args.batch, device)
            compute = cuda_time(lambda: r["cp"].attend_shard(LAYER, r["q"], r["k"], r["v"]), args.iters)
            step = decode_step
        dist.barrier()
        before = comm.bytes_received
        step_ms = cuda_time(lambda: step(r), args.iters)
        received = (comm.bytes_received - before) / (args.iters + 1)  # cuda_time's warm-up step included
        per_rank = [None] * W
        dist.all_gather_object(per_rank, dict(step_ms=step_ms, compute_ms=compute, bytes=received))
        report[name] = dict(step_ms=max(p["step_ms"] for p in per_rank), ranks=per_rank)
        r["cp"].close()
        r = caches = None
        torch.cuda.empty_cache()
    if rank == 0:
        base = fits(lambda: one_gpu_prefill(args.prefill, device, args.iters))
        report["prefill"]["one_gpu_ms"] = None if base is None else base[0]
        base = fits(lambda: one_gpu_decode(args.kv, args.batch, device, args.iters))
        report["decode"]["one_gpu_ms"] = None if base is None else base[0]
        finish(report, args)
    dist.barrier()
    dist.destroy_process_group()


def run_simulated(args):
    W = args.simulate
    device = torch.device("cuda", 0)
    group = SimulatedGroup(W)
    report = dict(mode="simulated", world_size=W, device=torch.cuda.get_device_name(device))

    def threads(fn):
        """fn(comm) on the W rank threads, each on its own CUDA stream; [result of rank r]."""
        def rank(comm):
            with torch.cuda.stream(torch.cuda.Stream()):
                res = fn(comm)
                torch.cuda.current_stream().synchronize()
                return res
        return group.run(rank)

    def measured(step):
        """One CP step on the rank threads, counting each rank's received bytes."""
        def rank(comm):
            r = ranks[comm.rank]
            before = comm.bytes_received
            out = step(comm, r)
            r["bytes"] = comm.bytes_received - before
            return out
        return threads(rank)

    def prefill_and_gather(comm, r):
        r["caches"] = r["cp"].gather_kv(r["k"], r["v"])
        out = r["cp"].forward(LAYER, r["q"], *r["caches"])
        before = comm.bytes_received
        full = r["cp"].gather_output(out)  # for the comparison; not part of a prefill step
        comm.bytes_received = before
        return full

    ranks = threads(lambda comm: prefill_rank(comm, args.prefill, device))
    outs = measured(prefill_and_gather)
    base_ms, base = one_gpu_prefill(args.prefill, device, args.iters)
    report["prefill"] = dict(
        one_gpu_ms=base_ms, bytes_per_rank=[r["bytes"] for r in ranks],
        max_abs_diff=float((outs[0].float() - base.float()).abs().max()),
        rank_compute_ms=[cuda_time(lambda: r["cp"].forward(LAYER, r["q"], *r["caches"]), args.iters) for r in ranks])
    for r in ranks:
        r["cp"].close()
    del ranks, outs, base
    torch.cuda.empty_cache()

    ranks = threads(lambda comm: decode_rank(comm, args.kv, args.batch, device))
    outs = measured(lambda comm, r: decode_step(r))
    base_ms, base = one_gpu_decode(args.kv, args.batch, device, args.iters, shards=ranks)
    parts = [r["cp"].attend_shard(LAYER, r["q"], r["k"], r["v"]) for r in ranks]
    gathered = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
    report["decode"] = dict(
        one_gpu_ms=base_ms, bytes_per_rank=[r["bytes"] for r in ranks],
        max_abs_diff=float((outs[0].float() - base.float()).abs().max()),
        rank_compute_ms=[cuda_time(lambda: r["cp"].attend_shard(LAYER, r["q"], r["k"], r["v"]), args.iters)
                         for r in ranks],
        merge_ms=cuda_time(lambda: ranks[0]["cp"].merge(*gathered), args.iters))
    for r in ranks:
        r["cp"].close()
    finish(report, args)


def finish(report, args):
    T, kv = args.prefill, args.kv
    p, d = report["prefill"], report["decode"]
    print(f"fa3c context parallel, {report['mode']}, W = {report['world_size']}, {report['device']}")
    print(f"layer: {LAYER.num_heads_q}/{LAYER.num_heads_kv} heads, d {LAYER.head_dim}, bf16, causal; decode page {PAGE}, "
          f"batch {args.batch}")

    def ms(x):
        return "does not fit" if x is None else f"{x:.3f} ms"

    if report["mode"] == "nccl":
        for name, what in (("prefill", f"{T} tokens"), ("decode", f"{kv}-token KV")):
            x = report[name]
            print(f"{name} ({what}): CP step {ms(x['step_ms'])} (slowest rank); one GPU {ms(x['one_gpu_ms'])}")
            for i, rk in enumerate(x["ranks"]):
                print(f"  rank {i}: step {rk['step_ms']:.3f} ms, attention alone {rk['compute_ms']:.3f} ms, "
                      f"receives {rk['bytes'] / 2**20:.2f} MiB/step")
        print(f"prefill: {prefill_flops(T) / p['step_ms'] / 1e9:.1f} TFLOP/s over the group"
              + ("" if p["one_gpu_ms"] is None else f", one GPU {prefill_flops(T) / p['one_gpu_ms'] / 1e9:.1f}"))
    else:
        print(f"prefill ({T} tokens): one GPU {ms(p['one_gpu_ms'])}; attention per rank alone "
              + ", ".join(f"{x:.3f}" for x in p["rank_compute_ms"]) + " ms; receives "
              + ", ".join(f"{b / 2**20:.2f}" for b in p["bytes_per_rank"]) + f" MiB/step; max |CP - one GPU| "
              f"{p['max_abs_diff']:.3g}")
        print(f"decode ({kv}-token KV): one GPU {ms(d['one_gpu_ms'])}; shard attention per rank alone "
              + ", ".join(f"{x:.3f}" for x in d["rank_compute_ms"]) + f" ms; merge {d['merge_ms']:.3f} ms; receives "
              + ", ".join(f"{b / 2**10:.2f}" for b in d["bytes_per_rank"]) + f" KiB/step; max |CP - one GPU| "
              f"{d['max_abs_diff']:.3g}")
        print(f"decode KV read: {kv_bytes(kv) / 2**30:.2f} GiB in all, one GPU "
              f"{kv_bytes(kv) / d['one_gpu_ms'] / 1e6:.0f} GB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--simulate", type=int, default=0, metavar="W", help="W ranks as threads on one GPU")
    ap.add_argument("--prefill", type=int, default=None, help="prefill tokens (default 131072; 16384 simulated)")
    ap.add_argument("--kv", type=int, default=None, help="decode KV tokens in all (default 1048576; 131072 simulated)")
    ap.add_argument("--batch", type=int, default=1, help="decode requests (the KV tokens split evenly)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args()
    if args.prefill is None:
        args.prefill = 16384 if args.simulate else 131072
    if args.kv is None:
        args.kv = 131072 if args.simulate else 1 << 20
    np.random.seed(0)
    if args.simulate:
        run_simulated(args)
    else:
        run_distributed(args)


if __name__ == "__main__":
    main()
