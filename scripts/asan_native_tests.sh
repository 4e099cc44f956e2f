#!/usr/bin/env bash
# Runs the native-code tests against an AddressSanitizer + UndefinedBehaviorSanitizer build of our libllama.
#
# Usage: bash scripts/asan_native_tests.sh [--build-only] [pytest args]
#   Configures build/asan once (RelWithDebInfo, -fsanitize=address,undefined, frame pointers kept), builds
#   cocktail_libs (the whole pinned llama.cpp: 15-30 min on 2 cores the first time, incremental afterwards),
#   then runs the tests that reach native/ through the C API with COCKTAIL_GGUF_LIB_DIR=build/asan/bin.
#   Needs the source tree set up as in README.md "Development" (the llama_cpp link to an upstream tree).
#   COCKTAIL_SDIST_FILE=/path/llama_cpp_python-0.3.36.tar.gz configures offline (else the usual cache/PyPI).
#
# Why the environment below:
# - python itself is not instrumented, so the ASan runtime must be loaded first: LD_PRELOAD=libasan.so (of
#   the compiler that built the libraries; libubsan comes in through our libraries' own dependencies).
#   libstdc++ is preloaded too: ASan resolves the real __cxa_throw when it starts, and with libstdc++ only
#   dlopen'ed later (python is C) the first C++ exception (llama.cpp throws on a bad GGUF) aborts with
#   "CHECK failed: asan_interceptors.cpp ... real___cxa_throw".
# - detect_leaks=0: LeakSanitizer reports CPython's and numpy's intentional process-lifetime allocations
#   (interned objects, module state) by the thousand at exit and would drown real errors; heap overflows,
#   use-after-free and double frees are still caught. Run with ASAN_OPTIONS=detect_leaks=1 to see them.
# - An ASan report aborts the test process (pytest then fails) and goes to a file under
#   build/asan/sanitizer_logs (log_path). UBSan reports print a stack and continue, so one run shows all of
#   them; gcc 12's libubsan ignores log_path when linked with ASan, so pytest runs with -s (no capture of
#   fd 2) and the log is searched for "runtime error:". The script fails on either.
# - COCKTAIL_FUZZ_CASES: the fuzz test runs fewer cases here (ASan makes the kernels ~3-5x slower).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
build="$root/build/asan"

build_only=0
if [ "${1:-}" = "--build-only" ]; then
  build_only=1
  shift
fi

san_flags="-fsanitize=address,undefined -fno-omit-frame-pointer"
if [ ! -f "$build/build.ninja" ]; then
  extra=()
  if [ -n "${COCKTAIL_SDIST_FILE:-}" ]; then
    extra+=("-DCOCKTAIL_SDIST_FILE=$COCKTAIL_SDIST_FILE")
  fi
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_C_FLAGS=$san_flags" "-DCMAKE_CXX_FLAGS=$san_flags" "${extra[@]}"
fi
echo "== building $build (cocktail_libs)"
ninja -C "$build" cocktail_libs
if [ "$build_only" = 1 ]; then
  exit 0
fi

libasan="$(${CXX:-c++} -print-file-name=libasan.so)"
libstdcxx="$(${CXX:-c++} -print-file-name=libstdc++.so)"
for lib in "$libasan" "$libstdcxx"; do
  if [ ! -e "$lib" ]; then
    echo "$lib not found (asked ${CXX:-c++} -print-file-name)" >&2
    exit 2
  fi
done
log="$build/asan_tests.log"
logs="$build/sanitizer_logs"
rm -rf "$logs"
mkdir -p "$logs"
# test_bad_inputs: llama.cpp's GGUF reader on broken files (in child processes, which inherit the sanitizers);
# test_memory_growth is left out: ASan's quarantine of freed memory grows RSS by design
tests=(tests/test_kv_formats.py tests/test_attn_mixed_regions.py tests/test_fuzz_attention.py
       tests/test_cocktail_e2e.py tests/test_capi_sequences.py tests/test_bad_inputs.py
       tests/test_kv_release.py tests/test_multi_sequence.py tests/test_state_segmented.py)
echo "== pytest under ASan/UBSan (log: $log)"
set +e
env COCKTAIL_GGUF_LIB_DIR="$build/bin" \
  LD_PRELOAD="$libasan $libstdcxx" \
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}:log_path=$logs/asan" \
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=0}" \
  COCKTAIL_FUZZ_CASES="${COCKTAIL_FUZZ_CASES:-300}" \
  python -m pytest -q -s -p no:cacheprovider "${tests[@]}" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
n_asan=$(cat "$logs"/asan.* 2>/dev/null | grep -c "ERROR: AddressSanitizer" || true)
n_ubsan=$(grep -c "runtime error:" "$log" || true)
echo "== pytest exit $rc; AddressSanitizer reports: $n_asan (files in $logs); UBSan reports: $n_ubsan"
grep -A12 "runtime error:" "$log" | head -n 80 || true
for f in "$logs"/*; do
  if [ -e "$f" ]; then
    echo "---- $f"
    head -n 60 "$f"
  fi
done
if [ "$rc" -ne 0 ] || [ "$n_asan" -ne 0 ] || [ "$n_ubsan" -ne 0 ]; then
  exit 1
fi
