#!/usr/bin/env bash
# Run ON the GPU machine after bench/device/build_cuda.sh (the CUDA build in /tmp/site): compute-sanitizer memcheck
# and racecheck over the attention tests selected by SANITIZE (a pytest -k expression) and the GPU pack's tests
# selected by SANITIZE_PACK (default: all but the 32K one). Exit non-zero on any report.
# Usage: SANITIZE="case3- or long0- or many" bash bench/device/sanitize_cuda.sh    → $OUT/sanitizer-<tool>.log
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
cd /tmp  # the installed CUDA build, not the source tree
rc=0
for tool in memcheck racecheck; do
  : > "$out/sanitizer-$tool.log"
  for sel in "test_attn_cuda.py|$SANITIZE" "test_pack_cuda.py|${SANITIZE_PACK:-not 32k}"; do
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 compute-sanitizer --tool "$tool" --error-exitcode 86 --target-processes all \
      python3 -m pytest -q -p no:cacheprovider --rootdir "$repo" "$repo/tests/${sel%%|*}" -k "${sel#*|}" \
      >> "$out/sanitizer-$tool.log" 2>&1
    r=$?
    echo "compute-sanitizer $tool ${sel%%|*}: exit $r, $(grep -c 'ERROR SUMMARY: 0 errors' "$out/sanitizer-$tool.log") clean summaries so far, $(tail -1 "$out/sanitizer-$tool.log")" | tee -a "$out/summary.txt"
    [ "$r" = 0 ] || rc=$r
  done
done
exit "$rc"

