#!/usr/bin/env bash
# Run ON the GPU machine (the device tool), from the repo root, carrying .bundle and .whl (bench/device/make_bundle.sh):
# the CUDA build, the segmented cache's GPU tests, then bench/tpot_gpu.py (decode speed at long context).
# Usage: COMMIT=<sha> [CASES="llama2-7b:32768 llama3-8b:65536"] [MODES=cocktail,f16,llama-q4_0] [LIMIT=200]
#        (the issue's whole matrix: CASES="llama2-7b:32768 llama3-8b:65536 llama2-7b:8192 llama3-8b:32768"
#         MODES=cocktail,f16,llama-q4_0,q2,q4 LIMIT=900: about 8 min of bench after the build, over 2 calls)
#        [TESTS="tests/..."] bash bench/device/tpot_gpu.sh        → $OUT/tpot_gpu.{json,md}, $OUT/pytest.log
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
if [ ! -d /tmp/site/cocktail_gguf ]; then
  TESTS="${TESTS-tests/test_pack_cuda.py tests/test_segmented_cuda.py tests/test_cocktail_e2e.py tests/test_state_segmented.py tests/test_f16_snapshot.py tests/test_chat_replanning.py tests/test_attn_cuda.py}" \
    bash "$repo/bench/device/build_cuda.sh" || echo "build or tests failed (exit $?): the bench runs anyway"
fi
cd /tmp  # the installed CUDA build, not the source tree
COCKTAIL_COMMIT="${COMMIT:-unknown}" PYTHONPATH=/tmp/site python3 "$repo/bench/tpot_gpu.py" \
  --cases ${CASES:-llama2-7b:32768 llama3-8b:65536} --modes "${MODES:-cocktail,f16,llama-q4_0}" \
  --decode "${DECODE:-32}" --time-limit "${LIMIT:-200}" --out "$out/tpot_gpu.json"
