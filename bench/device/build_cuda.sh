#!/usr/bin/env bash
# Run ON the GPU machine (the device tool), from the repo root, carrying .bundle and .whl made by
# bench/device/make_bundle.sh. Builds the CUDA variant with pip (no network: the bundle replaces the
# sdist download) into /tmp/site and runs the test suite with every model layer on the GPU.
# Usage: COMMIT=<sha> bash bench/device/build_cuda.sh [pytest args]     (CUDA_ARCHS=90 by default)
#   TESTS="tests/test_attn_cuda.py ..." runs only those files; SANITIZE="<pytest -k expr>" then runs
#   compute-sanitizer memcheck and racecheck over the attention tests selected by that expression and the GPU
#   pack's tests selected by SANITIZE_PACK (default: all but the 32K one).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
site=/tmp/site
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
t0=$(date +%s)
bash "$repo/bench/device/install_cuda.sh" "$out/build.log" || exit 1
t1=$(date +%s)
echo "cuda build: $((t1 - t0)) s (commit ${COMMIT:-unknown})" | tee "$out/summary.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/summary.txt"
cd /tmp  # keep the source tree off sys.path: the installed package is tested
python3 -c "import cocktail_gguf, json; from cocktail_gguf import _native; print(json.dumps(_native.build_info())); print(_native.devices())" | tee -a "$out/summary.txt"
set +e
# The image's pytest plugins (jaxtyping, ...) import jax/torch, whose CUDA libraries loaded before
# ours crash llama.cpp's model load (see bench/NOTES.md): run pytest without plugin autoload.
# One process per test file: a file that runs torch (the sentence-transformers encoders) must not share
# its process with a later GPU model load (a crash still under investigation, bench/NOTES.md).
rc=0
: > "$out/pytest.log"
for f in ${TESTS:-"$repo"/tests/test_*.py}; do
  case "$f" in /*) ;; *) f="$repo/$f" ;; esac
  COCKTAIL_TEST_N_GPU_LAYERS=-1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -q -p no:cacheprovider \
    --rootdir "$repo" "$f" "$@" 2>&1 | tee -a "$out/pytest.log" | tail -1 | sed "s|^|$(basename "$f"): |"
  r=${PIPESTATUS[0]}
  [ "$r" = 0 ] || [ "$r" = 5 ] || rc=$r
done
t2=$(date +%s)
echo "tests: $((t2 - t1)) s, pytest exit $rc" | tee -a "$out/summary.txt"
if [ -n "${SANITIZE:-}" ]; then
  bash "$repo/bench/device/sanitize_cuda.sh" || rc=$?
fi
exit "$rc"
