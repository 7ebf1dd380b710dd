#!/usr/bin/env bash
# Builds tests/fuzz/fuzz_fwd.c as a libFuzzer target (clang, -fsanitize=fuzzer,address,undefined,
# the library compiled with the same sanitizers and coverage) and fuzzes for a bounded time,
# starting from tests/fuzz/corpus. Prints executions/s, total runs and coverage; exits nonzero on
# any crash, leak, timeout or sanitizer report (the reproducer is left in $WORK).
#   run_fuzz.sh [seconds]     default 90
#   FUZZ_BUILD (default build-fuzz), FUZZ_JOBS (parallel fuzzing processes; default one, in-process),
#   FUZZ_MERGE=1 to merge new interesting
#   inputs back into the corpus (a developer step; CI fuzzes into a scratch copy).
# Needs clang with libFuzzer: on Debian 12 `apt-get install clang libclang-rt-14-dev`
# (libclang_rt.fuzzer-x86_64.a lives in libclang-rt-14-dev); installed here when missing (as root or
# through passwordless sudo).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-90}
build=${FUZZ_BUILD:-$root/build-fuzz}
work=${WORK:-$build/work}
corpus=$root/tests/fuzz/corpus

have_libfuzzer() {
  command -v clang >/dev/null 2>&1 || return 1
  echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }' |
    clang -x c -fsanitize=fuzzer - -o /tmp/fa3c_fuzz_probe.$$ >/dev/null 2>&1
  local ok=$?
  rm -f /tmp/fa3c_fuzz_probe.$$
  return $ok
}
if ! have_libfuzzer; then
  sudo=""
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && sudo="sudo -n"; }
  if { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; } && command -v apt-get >/dev/null; then
    echo "run_fuzz: installing clang + libFuzzer (apt)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev \
      >/dev/null
  fi
  have_libfuzzer || { echo "run_fuzz: clang with libFuzzer is not available" >&2; exit 2; }
fi

# The library with edge coverage (no comparison tracing: its kernels' inner loops would dominate
# the run time) and ASan + UBSan; the target links libFuzzer's main. The library's -Werror is gcc's
# gate (CI); clang's extra warnings must not stop the fuzz build, and only a flag after the
# project's own can lift it, hence the wrapper.
san="-fsanitize=address,undefined -fsanitize-coverage=inline-8bit-counters,pc-table -fno-sanitize-recover=all"
san="$san -fno-omit-frame-pointer -g -O1"
mkdir -p "$build"
printf '#!/bin/sh\nexec clang "$@" -Wno-error\n' >"$build/cc-fuzz"
chmod +x "$build/cc-fuzz"
CC="$build/cc-fuzz" cmake -S "$root" -B "$build" -DFA3C_CUDA=OFF -DFA3C_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=None \
  -DCMAKE_C_FLAGS="$san" >/dev/null
cmake --build "$build" --target fa3c_static -j "$(nproc)" >"$build/build.log" 2>&1 ||
  { cat "$build/build.log" >&2; exit 2; }
clang -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -O1 -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I"$root/include" -I"$root/src" "$root/tests/fuzz/fuzz_fwd.c" "$build/libfa3c.a" -lpthread -lm \
  -o "$build/fuzz_fwd"

# Fuzz into a scratch corpus seeded from the committed one; the committed corpus is read-only here.
rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts"
cp "$corpus"/* "$work/corpus/"
log=$work/fuzz.log
status=0
(cd "$work" && ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$build/fuzz_fwd" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=256 \
    ${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "$work/corpus" >"$log" 2>&1) || status=$?
[ -z "${FUZZ_JOBS:-}" ] || cat "$work"/fuzz-*.log >>"$log" 2>/dev/null || true

# Summary: the last status line and the final statistics.
grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -n 1 || true
grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" || true
cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 || true)
echo "run_fuzz: ${secs}s, ${cov:-no coverage line}, corpus $(ls "$work/corpus" | wc -l) inputs" \
     "($(cat "$work/corpus"/* | wc -c) bytes)"
if [ "$status" != 0 ] || ls "$work/artifacts" | grep -q .; then
  echo "run_fuzz: FAILED (exit $status); log $log, reproducers:" >&2
  ls -l "$work/artifacts" >&2
  grep -E 'ERROR|SUMMARY|check failed|runtime error' "$log" | head -n 20 >&2 || true
  exit 1
fi
if [ "${FUZZ_MERGE:-0}" = 1 ]; then
  "$build/fuzz_fwd" -merge=1 -use_counters=0 -max_len=256 "$corpus" "$work/corpus" >>"$log" 2>&1
  echo "run_fuzz: merged; committed corpus now $(ls "$corpus" | wc -l) inputs ($(cat "$corpus"/* | wc -c) bytes)"
fi
echo "run_fuzz: ok"
