#!/usr/bin/env bash
# One call on a GPU machine: build the cuda backend, then the steps named in $1 (comma-separated):
#   test      tests/test_cuda (GPU cases, CUDA-graph decode; again with FA3C_CUDA_SPLIT=exact, with
#             FA3C_CUDA_SM90=0: the mma.sync kernels only, with FA3C_CUDA_TMA=0: the wgmma
#             kernel gathering every tile with cp.async, with FA3C_CUDA_CTAS=3: the persistent
#             wgmma kernel's CTAs walking many work items each, with FA3C_CUDA_CLUSTER=0: the
#             decode combine through global memory, and with FA3C_CUDA_WIDE=0: every problem on
#             the 128 / 64-key wgmma tiles; $TEST_ENVS replaces that list)
#             and tests/test_combine
#   sweep     the quick forward sweep (FA3C_SWEEP=quick tests/test_fwd_sweep) on cuda, with and
#             without the wgmma kernels (the CPU backends run it in CI)
#   sweep_full  the full forward sweep on cuda (330 cases)
#   reliability tests/test_repeat (1000 forwards, bitwise), test_concurrency, test_errors_ctx,
#             test_cuda_large (> 2^31-element inputs)
#   pytest    python/tests with torch CUDA tensors (serving, CUDA graphs, context-parallel simulation)
#   cp        bench/cp_bench.py --simulate 2 (context parallelism, W ranks on one GPU)
#   sass      registers, spills and instruction counts (HGMMA, HMMA, local memory) of the kernels
#   sanitize  compute-sanitizer memcheck and initcheck over every $SANITIZE_EVERY-th test_cuda case
#             and the graph tests, memcheck over test_repeat (2 repeats); racecheck over every
#             $RACE_EVERY-th (16) case and the graph tests, under $RACE_ENV (default FA3C_CUDA_CTAS=0:
#             racecheck reports the dynamic schedule's id hand-over, see cuda_attn_sm90.cu);
#             $SAN_MATCH keeps the test_cuda cases whose name holds it (e.g. "causal", "e4m3")
#   bench     tools/bench_cuda.c ($BENCH_WHAT, comma-separated sections, default all): prefill, fp8 prefill next to bf16, and
#             decode and MLA decode once per split mode in $SPLIT_MODES; prefill again with
#             FA3C_CUDA_SM90=0 (the mma.sync kernels) unless BENCH_MMA_SYNC=0
#   base      the same benchmark built from the cuda sources in .base/ (a copy of an earlier
#             version: src/cuda/* and tools/bench_cuda.c), for before/after in one run. Make it with
#             mkdir -p .base/cuda; for f in $(git ls-tree --name-only REV src/cuda/); do
#             git show REV:$f > .base/cuda/${f##*/}; done; git show REV:tools/bench_cuda.c > .base/bench_cuda.c
#             (.base/ listed in .git/info/exclude, and named in the device call's carry). A .base/src/
#             tree, where present, is laid over src/ too (a version with other core files). $BASES
#             (space-separated folders like .base, default ".base") benches several versions, each
#             into bench_<folder name without dots>.csv
#   torch     bench/bench_torch_sdpa.py (torch SDPA anchors)
#   ncu       one prefill launch under Nsight Compute
#   ncu_decode  the first attention launch of each decode shape in $NCU_DECODE (batch:kv:page_size,
#             space-separated) under Nsight Compute, warm caches and free clocks: throughput,
#             occupancy, scheduler and memory sections; the first shape also per SASS instruction
#   ncu_src   one launch of the kernels matching $NCU_KERNEL (regex, default the bf16 d 128 wgmma
#             kernel) in bench section $NCU_WHAT (default prefill) after $NCU_SKIP (default 150)
#             such launches: throughput and warp-state sections, then stall reasons per SASS
#             instruction (CSV); file names end in $NCU_TAG
#   ncu_mla   the first MLA launch of each shape in $NCU_MLA (batch:kv:page_size:s_q, space-separated;
#             default batch 64, page 64, s_q 1 at 4k and 16k keys) under Nsight Compute, warm
#             caches and free clocks, every section
#   ncu_times every prefill launch's duration, the first decode launches, and full profiles of
#             three launches (d 128 / 256 at s 512, decode batch 1 / 1k)
# Logs go under $OUT (the device tool's result folder); a summary goes
# to stdout. Usage: bash bench/cuda_device_run.sh test,sweep,sanitize,bench,base
set -uo pipefail
cd "$(dirname "$0")/.."
# The base step copies the tree it stands in: only a repository's root will do.
[[ -f CMakeLists.txt && -d src/cuda && -f bench/cuda_device_run.sh ]] || { echo "cuda_device_run.sh: not in the repository's bench/" >&2; exit 2; }
OUT=${OUT:-/tmp/fa3c-out}
BUILD=${BUILD:-build-cuda2}
SPLIT_MODES=${SPLIT_MODES:-fill,exact,max}
BENCH_WHAT=${BENCH_WHAT:-all}
mkdir -p "$OUT"
steps=",${1:-test,bench},"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv; nvcc --version | tail -2; } \
    > "$OUT/build.log" 2>&1
stamp "build"
# From scratch unless KEEP_BUILD=1: an incremental build on a warm machine may keep objects of a
# struct layout the headers no longer have.
[[ ${KEEP_BUILD:-0} == 1 ]] || rm -rf "$BUILD"
if ! { cmake -S . -B "$BUILD" -DFA3C_CUDA=ON -DCMAKE_BUILD_TYPE=Release && cmake --build "$BUILD" -j16 ${BUILD_TARGETS:+--target $BUILD_TARGETS}; } \
    >> "$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -40
    exit 1
fi
BASES=${BASES:-.base}
if [[ $steps == *,base,* ]]; then # earlier versions beside this one: same tree, their cuda sources
    for b in $BASES; do
        base=/tmp/fa3c-${b//./}
        rm -rf "$base" && mkdir -p "$base"
        tar --exclude="./$BUILD" $(for x in $BASES; do echo "--exclude=./$x"; done) -cf - . | tar -xf - -C "$base"
        [[ -d $b/src ]] && cp -r "$b/src/." "$base/src/"
        [[ -d $b/cuda ]] && cp "$b"/cuda/* "$base/src/cuda/"
        cp "$b/bench_cuda.c" "$base/tools/"
        { cmake -S "$base" -B "$base/build" -DFA3C_CUDA=ON -DCMAKE_BUILD_TYPE=Release &&
          cmake --build "$base/build" -j16 --target fa3c_bench_cuda; } >> "$OUT/build.log" 2>&1 || echo "$b build FAILED"
    done
fi
stamp "built"
rc=0
if [[ $steps == *,test,* ]]; then
    timeout ${T_TEST:-200} "./$BUILD/tests/test_cuda" > "$OUT/test_cuda.log" 2>&1 || rc=1
    grep -E "FAIL|graph|test_cuda:" "$OUT/test_cuda.log" | tail -40
    stamp "test_cuda done"
    for env in ${TEST_ENVS:-FA3C_CUDA_SPLIT=exact FA3C_CUDA_SM90=0 FA3C_CUDA_TMA=0 FA3C_CUDA_CTAS=3 FA3C_CUDA_CLUSTER=0 FA3C_CUDA_WIDE=0}; do
        echo "=== $env" >> "$OUT/test_cuda.log"
        env $env timeout ${T_TEST:-200} "./$BUILD/tests/test_cuda" >> "$OUT/test_cuda.log" 2>&1 || rc=1
        sed -n "/=== $env/,\$p" "$OUT/test_cuda.log" | grep -E "FAIL|test_cuda:" | tail -20
        stamp "test_cuda ($env) done"
    done
    timeout 60 "./$BUILD/tests/test_combine" > "$OUT/tests_other.log" 2>&1 || rc=1
    grep -E "FAIL|test_combine:" "$OUT/tests_other.log" | tail -10
    stamp "test_combine done"
fi
if [[ $steps == *,sweep,* ]]; then
    for sm90 in 1 0; do
        echo "=== sweep FA3C_CUDA_SM90=$sm90" >> "$OUT/tests_other.log"
        FA3C_CUDA_SM90=$sm90 FA3C_SWEEP=quick FA3C_SWEEP_BACKENDS=cuda timeout ${T_SWEEP:-300} \
            "./$BUILD/tests/test_fwd_sweep" >> "$OUT/tests_other.log" 2>&1 || rc=1
        sed -n "/=== sweep FA3C_CUDA_SM90=$sm90/,\$p" "$OUT/tests_other.log" | grep -E "FAIL.*\[cuda\]|test_fwd_sweep:" | tail -20
        stamp "sweep (FA3C_CUDA_SM90=$sm90) done"
    done
fi
if [[ $steps == *,sass,* ]]; then
    obj=$(find "$BUILD" -name 'cuda_attn_sm90.cu.o' | head -1)
    cuobjdump -res-usage "$obj" 2>&1 | grep -E "Function|REG" | paste - - | sed -E 's/ +/ /g' | cut -c1-200 > "$OUT/sass.log"
    cuobjdump -sass "$obj" > "$OUT/sass_sm90.txt" 2>&1
    echo "sm90 object: HGMMA $(grep -c HGMMA "$OUT/sass_sm90.txt"), HMMA $(grep -c 'HMMA' "$OUT/sass_sm90.txt"), LDL/STL $(grep -cE 'LDL|STL' "$OUT/sass_sm90.txt"), SETMAXREG $(grep -c SETMAXREG "$OUT/sass_sm90.txt")" | tee -a "$OUT/sass.log"
    cat "$OUT/sass.log" | head -12
fi
if [[ $steps == *,bench,* ]]; then
    for what in ${BENCH_WHAT//,/ }; do
        timeout ${T_BENCH:-240} "./$BUILD/fa3c_bench_cuda" $what ${BENCH_GIB:-34} "$SPLIT_MODES" \
            >> "$OUT/bench_fa3c.csv" 2>&1 || rc=1
    done
    grep -vE "^decode,[a-z]+,[0-9]+,[0-9]+,(1|64)," "$OUT/bench_fa3c.csv" # page sizes 1 and 64: in the file
    stamp "bench done"
    if [[ ${BENCH_MMA_SYNC:-1} == 1 && ${BENCH_WHAT:-all} != decode ]]; then # prefill again on the mma.sync kernels
        FA3C_CUDA_SM90=0 timeout ${T_BENCH:-240} "./$BUILD/fa3c_bench_cuda" prefill > "$OUT/bench_mma_sync.csv" 2>&1 || rc=1
        sed 's/^prefill,/prefill_mma_sync,/' "$OUT/bench_mma_sync.csv" | grep "^prefill_mma_sync"
        stamp "bench (mma.sync prefill) done"
    fi
fi
if [[ $steps == *,base,* ]]; then
    for b in $BASES; do
        for what in ${BENCH_WHAT//,/ }; do
            timeout ${T_BASE:-150} /tmp/fa3c-${b//./}/build/fa3c_bench_cuda $what ${BENCH_GIB:-34} \
                >> "$OUT/bench_${b//./}.csv" 2>&1 || rc=1
        done
        grep -E "^#|^prefill|^decode,[0-9]+,[0-9]+,(0|16)," "$OUT/bench_${b//./}.csv" | head -60
        stamp "$b bench done"
    done
fi
if [[ $steps == *,sanitize,* ]]; then
    for tool in memcheck initcheck; do
        echo "=== $tool test_cuda" >> "$OUT/sanitizer.log"
        FA3C_TEST_CUDA_MATCH=${SAN_MATCH:-} FA3C_TEST_CUDA_EVERY=${SANITIZE_EVERY:-8} timeout ${T_SAN:-200} compute-sanitizer --tool $tool --error-exitcode 9 \
            "./$BUILD/tests/test_cuda" >> "$OUT/sanitizer.log" 2>&1 || rc=1
        sed -n "/=== $tool test_cuda/,\$p" "$OUT/sanitizer.log" | grep -E "ERROR SUMMARY|test_cuda:|FAIL" | tail -4
        stamp "$tool done"
    done
    echo "=== memcheck test_repeat" >> "$OUT/sanitizer.log"
    FA3C_REPEAT=2 timeout ${T_SAN:-200} compute-sanitizer --tool memcheck --error-exitcode 9 \
        "./$BUILD/tests/test_repeat" >> "$OUT/sanitizer.log" 2>&1 || rc=1
    sed -n '/=== memcheck test_repeat/,$p' "$OUT/sanitizer.log" | grep -E "ERROR SUMMARY|test_repeat:|FAIL" | tail -4
    echo "=== racecheck test_cuda ${RACE_ENV:-FA3C_CUDA_CTAS=0}" >> "$OUT/sanitizer.log"
    env ${RACE_ENV:-FA3C_CUDA_CTAS=0} FA3C_TEST_CUDA_MATCH=${SAN_MATCH:-} FA3C_TEST_CUDA_EVERY=${RACE_EVERY:-16} timeout ${T_RACE:-150} compute-sanitizer --tool racecheck --error-exitcode 9 \
        "./$BUILD/tests/test_cuda" >> "$OUT/sanitizer.log" 2>&1 || rc=1
    sed -n '/=== racecheck test_cuda/,$p' "$OUT/sanitizer.log" | grep -E "RACECHECK SUMMARY|ERROR SUMMARY|test_cuda:|FAIL" | tail -4
    stamp "racecheck done"
fi
if [[ $steps == *,sweep_full,* ]]; then
    FA3C_SWEEP_BACKENDS=cuda timeout ${T_SWEEP:-300} "./$BUILD/tests/test_fwd_sweep" > "$OUT/sweep_full.log" 2>&1 || rc=1
    grep -E "FAIL|test_fwd_sweep:" "$OUT/sweep_full.log" | tail -20
    stamp "full sweep done"
fi
if [[ $steps == *,reliability,* ]]; then
    for t in test_repeat test_concurrency test_errors_ctx test_cuda_large; do
        FA3C_CONCURRENCY_SECONDS=${CONC_SECONDS:-10} timeout ${T_REL:-200} "./$BUILD/tests/$t" > "$OUT/$t.log" 2>&1 || rc=1
        grep -E "FAIL|^$t|passed|failed" "$OUT/$t.log" | tail -8
        stamp "$t done"
    done
fi
if [[ $steps == *,pytest,* ]]; then
    (cd python && FA3C_LIBRARY="$PWD/../$BUILD/libfa3c.so" PYTHONPATH="$PWD" timeout ${T_PY:-300} \
        python3 -m pytest -q -rs tests) > "$OUT/pytest.log" 2>&1 || rc=1
    tail -8 "$OUT/pytest.log"
    stamp "pytest done"
fi
if [[ $steps == *,cp,* ]]; then
    FA3C_LIBRARY="$PWD/$BUILD/libfa3c.so" PYTHONPATH="$PWD/python" timeout ${T_CP:-150} \
        python3 bench/cp_bench.py --simulate 2 --prefill 16384 --kv 131072 > "$OUT/cp_bench.log" 2>&1 || rc=1
    tail -20 "$OUT/cp_bench.log"
    stamp "cp bench done"
fi
if [[ $steps == *,torch,* ]]; then
    for what in ${BENCH_WHAT//,/ }; do # torch has the prefill and decode sections
        [[ $what == prefill || $what == decode || $what == all ]] || continue
        PYTHONUNBUFFERED=1 timeout ${T_TORCH:-150} python3 bench/bench_torch_sdpa.py $what ${BENCH_GIB:-34} \
            >> "$OUT/bench_torch.csv" 2>&1 || rc=1
    done
    cat "$OUT/bench_torch.csv"
    stamp "torch done"
fi
if [[ $steps == *,ncu,* ]]; then # one prefill launch (s = 16k, non-causal) under Nsight Compute
    timeout ${T_NCU:-120} ncu --kernel-name regex:attn_ --launch-skip 9 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section Occupancy --section ComputeWorkloadAnalysis \
        "./$BUILD/fa3c_bench_cuda" prefill > "$OUT/ncu_prefill.txt" 2>&1 || rc=1
    grep -E "Duration|Throughput|Warp Cycles Per Issued|Stall|Achieved Occupancy|Registers|Issue Slots|Executed Ipc" \
        "$OUT/ncu_prefill.txt" | head -40
    stamp "ncu done"
fi
if [[ $steps == *,ncu_src,* ]]; then
    kern=${NCU_KERNEL:-attn_sm90_kernelILi128ELi1}
    timeout ${T_NCU:-150} ncu --kernel-name-base mangled --kernel-name regex:"$kern" --launch-skip ${NCU_SKIP:-150} --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis --section LaunchStats \
        "./$BUILD/fa3c_bench_cuda" ${NCU_WHAT:-prefill} > "$OUT/ncu_src${NCU_TAG:-}.txt" 2>&1 || rc=1
    grep -E "attn_sm90|Duration|Grid Size|Issue Slots|Stall|Warp Cycles Per Issued|Eligible Warps" "$OUT/ncu_src${NCU_TAG:-}.txt" | head -20
    timeout ${T_NCU:-150} ncu --kernel-name-base mangled --kernel-name regex:"$kern" --launch-skip ${NCU_SKIP:-150} --launch-count 1 \
        --section SourceCounters --page source --print-source sass --csv \
        "./$BUILD/fa3c_bench_cuda" ${NCU_WHAT:-prefill} > "$OUT/ncu_src_sass${NCU_TAG:-}.csv" 2>&1 || rc=1
    stamp "ncu_src done"
fi
if [[ $steps == *,ncu_times,* ]]; then # every prefill launch's duration; the first decode shapes (batch 1)
    timeout ${T_NCU:-200} ncu --csv --metrics gpu__time_duration.sum --kernel-name regex:'attn|combine|merge' \
        "./$BUILD/fa3c_bench_cuda" prefill > "$OUT/ncu_times_prefill.csv" 2>&1 || rc=1
    timeout ${T_NCU:-200} ncu --csv --metrics gpu__time_duration.sum --launch-count 200 \
        "./$BUILD/fa3c_bench_cuda" decode 34 fill > "$OUT/ncu_times_decode.csv" 2>&1 || rc=1
    # one launch each, every section: d 128 and d 256 at s = 512 non-causal (launches 193, 385 of
    # the prefill sweep: 16 per shape), decode batch 1 / 1k
    for skip in 193 385; do
        timeout ${T_NCU:-200} ncu --set full --kernel-name regex:attn --launch-skip $skip --launch-count 1 \
            "./$BUILD/fa3c_bench_cuda" prefill > "$OUT/ncu_full_prefill_$skip.txt" 2>&1 || rc=1
    done
    timeout ${T_NCU:-200} ncu --set full --launch-skip 5 --launch-count 1 \
        "./$BUILD/fa3c_bench_cuda" decode 34 fill > "$OUT/ncu_full_decode_b1.txt" 2>&1 || rc=1
    stamp "ncu_times done"
fi
if [[ $steps == *,ncu_mla,* ]]; then
    for shape in ${NCU_MLA:-64:4096:64:1 64:16384:64:1}; do
        f="$OUT/ncu_mla_${shape//:/_}.txt"
        FA3C_BENCH_MLA=$shape timeout ${T_NCU:-120} ncu --kernel-name regex:mla --launch-count 1 \
            --cache-control none --clock-control none --set full \
            "./$BUILD/fa3c_bench_cuda" mla 34 fill > "$f" 2>&1 || rc=1
        grep -E "Duration|DRAM Throughput|L2 Hit Rate|Compute \(SM\) Throughput|Warp Cycles Per Issued" "$f" | head -8
    done
    stamp "ncu_mla done"
fi
if [[ $steps == *,ncu_decode,* ]]; then
    first=1
    for shape in ${NCU_DECODE:-1:1024:0 1:65536:0 16:4096:0 64:1024:0}; do
        f="$OUT/ncu_decode_${shape//:/_}.txt"
        FA3C_BENCH_DECODE=$shape timeout ${T_NCU:-120} ncu --kernel-name regex:attn --launch-count 1 \
            --cache-control none --clock-control none --set full \
            "./$BUILD/fa3c_bench_cuda" decode 34 fill > "$f" 2>&1 || rc=1
        grep -E "Duration|DRAM Throughput|Executed Ipc A|Warp Cycles Per Issued|Achieved Occupancy|Executed Instructions  " "$f" | head -8
        if [[ $first == 1 ]]; then
            FA3C_BENCH_DECODE=$shape timeout ${T_NCU:-120} ncu --kernel-name regex:attn --launch-count 1 \
                --section SourceCounters --page source --print-source sass --csv \
                "./$BUILD/fa3c_bench_cuda" decode 34 fill > "$OUT/ncu_decode_sass.csv" 2>&1 || rc=1
            first=0
        fi
    done
    stamp "ncu_decode done"
fi
exit $rc
