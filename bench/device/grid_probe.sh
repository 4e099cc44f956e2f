#!/usr/bin/env bash
# Where a launch's time goes across the whole grid, ON the GPU machine after bench/device/build_cuda.sh (the CUDA
# build in /tmp/site, build dir /tmp/cocktail-build): edits this copy of the kernels with bench/device/grid_probe.py
# (globaltimer at every block's start and end; never for a build that is kept), rebuilds, and runs
# bench/attn_cuda.py once per (shape, depth) with the 10/30/60 mix; each run prints one GRID line (see the .py).
# Usage: bash bench/device/grid_probe.sh    (SHAPES, DEPTHS to choose)  → $OUT/grid_probe.txt
set -uo pipefail
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
R="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$R"
python3 bench/device/grid_probe.py || exit 1
bash bench/device/install_cuda.sh "$OUT/rebuild.log" || exit 1
for s in ${SHAPES:-llama3-8b llama2-7b}; do
  for d in ${DEPTHS:-8192 32768 65536}; do
    (cd /tmp && PYTHONPATH=/tmp/site python3 "$R/bench/attn_cuda.py" --shapes "$s" --depths "$d" --mixes 10/30/60 \
      --iters 30 --out /tmp/grid.json 2>&1 | grep -E "GRID| us " | sed "s/^/$s $d: /")
  done
done | tee "$OUT/grid_probe.txt"
