#!/usr/bin/env bash
# One call on a GPU machine: build the cuda backend, then the steps named in $1 (comma-separated:
# test, sweep, sanitize, bench, torch, ncu). Logs go under $OUT (the device tool's result folder).
# Usage: bash bench/cuda_device_run.sh test,sanitize,bench
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fa3c-out}
mkdir -p "$OUT"
steps=",${1:-test,bench},"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$OUT/env.txt" 2>&1
nvcc --version | tail -2 >> "$OUT/env.txt"
stamp "build"
if ! { cmake -S . -B build-dev -DFA3C_CUDA=ON -DCMAKE_BUILD_TYPE=Release && cmake --build build-dev -j16; } \
    > "$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -40
    exit 1
fi
stamp "built"
rc=0
if [[ $steps == *,test,* ]]; then
    timeout ${T_TEST:-200} ./build-dev/tests/test_cuda > "$OUT/test_cuda.log" 2>&1 || rc=1
    grep -E "FAIL|test_cuda:" "$OUT/test_cuda.log" | tail -40
    stamp "test_cuda done"
    timeout 60 ./build-dev/tests/test_combine > "$OUT/test_combine.log" 2>&1 || rc=1
    grep -E "FAIL|cuda|test_combine:" "$OUT/test_combine.log" | grep -E "FAIL|test_combine:" | tail -10
    grep -c "\[cuda\]" "$OUT/test_combine.log"
    stamp "test_combine done"
fi
if [[ $steps == *,sweep,* ]]; then
    FA3C_SWEEP=quick timeout ${T_SWEEP:-300} ./build-dev/tests/test_fwd_sweep > "$OUT/test_fwd_sweep.log" 2>&1 || rc=1
    grep -E "FAIL.*\[cuda\]|test_fwd_sweep:" "$OUT/test_fwd_sweep.log" | tail -30
    stamp "sweep done"
fi
if [[ $steps == *,sanitize,* ]]; then
    FA3C_TEST_CUDA_EVERY=${SANITIZE_EVERY:-6} timeout ${T_SAN:-200} compute-sanitizer --tool memcheck --error-exitcode 9 \
        ./build-dev/tests/test_cuda > "$OUT/sanitizer.log" 2>&1 || rc=1
    grep -E "ERROR SUMMARY|test_cuda:|FAIL" "$OUT/sanitizer.log" | tail -10
    stamp "sanitizer done"
fi
if [[ $steps == *,bench,* ]]; then
    timeout ${T_BENCH:-150} ./build-dev/fa3c_bench_cuda ${BENCH_WHAT:-all} ${BENCH_GIB:-34} > "$OUT/bench_fa3c.csv" 2>&1 || rc=1
    cat "$OUT/bench_fa3c.csv"
    stamp "bench done"
fi
if [[ $steps == *,torch,* ]]; then
    PYTHONUNBUFFERED=1 timeout ${T_TORCH:-150} python3 bench/bench_torch_sdpa.py ${BENCH_WHAT:-all} ${BENCH_GIB:-34} \
        > "$OUT/bench_torch.csv" 2>&1 || rc=1
    cat "$OUT/bench_torch.csv"
    stamp "torch done"
fi
if [[ $steps == *,ncu,* ]]; then # one prefill launch (s = 16k, non-causal) under Nsight Compute
    timeout ${T_NCU:-120} ncu --kernel-name regex:attn_fwd_kernel --launch-skip 9 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section Occupancy --section ComputeWorkloadAnalysis \
        ./build-dev/fa3c_bench_cuda prefill > "$OUT/ncu_prefill.txt" 2>&1 || rc=1
    grep -E "Duration|Throughput|Warp Cycles Per Issued|Stall|Achieved Occupancy|Registers|Issue Slots|Executed Ipc" \
        "$OUT/ncu_prefill.txt" | head -40
    stamp "ncu done"
fi
exit $rc
