#!/usr/bin/env bash
# Run ON the GPU machine after bench/device/build_cuda.sh (the CUDA build in /tmp/site): the GPU kernels of a few
# decode steps (Nsight Compute, kernel durations only, clocks and caches left alone) for llama.cpp's F16 cache and
# our segmented cache, to tell the per-token cost of our op from host time (TPOT minus kernel time).
# Usage: [SHAPE=llama2-7b] [DEPTH=512] [MODES="f16 cocktail"] [DECODE=64] [SKIP=8000] [COUNT=2000]
#        bash bench/device/profile_step.sh        → $OUT/ncu_step_<shape>_<depth>_<mode>.{csv,md}
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
ncu="$(command -v ncu || echo /usr/local/cuda/bin/ncu)"
shape="${SHAPE:-llama2-7b}" depth="${DEPTH:-512}"
cd /tmp  # the installed CUDA build, not the source tree
export PYTHONPATH=/tmp/site
model="$(python3 -c "import sys; from pathlib import Path; sys.path.insert(0, '$repo/bench'); import tpot_gpu
print(tpot_gpu._model(Path('/tmp/cocktail-bench-models'), '$shape'))")" || exit 1
for mode in ${MODES:-f16 cocktail}; do
  name="ncu_step_${shape}_${depth}_${mode}"
  # the first SKIP launches (load, prefill, compaction, first steps) run unprofiled
  "$ncu" --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --page raw \
    --launch-skip "${SKIP:-8000}" --launch-count "${COUNT:-2000}" \
    python3 -c "from cocktail_gguf import kv_bench as b
c = b.BenchConfig(model='$model', contexts=($depth,), modes=('$mode',), decode=${DECODE:-64}, runs=1, n_gpu_layers=-1, flash_attn=True)
print(b.run_mode(c, '$mode', $depth))" > "$out/$name.csv" 2> "$out/$name.err"
  echo "$mode: ncu exit $?"
  python3 "$repo/bench/ncu_summary.py" "$out/$name.csv" | tee "$out/$name.md" | head -12
done
