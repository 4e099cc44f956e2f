#!/usr/bin/env bash
# Where one block of the tensor-core kernel spends its cycles, ON the GPU machine after bench/device/build_cuda.sh
# (the CUDA build in /tmp/site, build dir /tmp/cocktail-build): edits this copy of the kernel with
# bench/device/phase_probe.py (printf of clock64 phases; never for a build that is kept), rebuilds, runs one
# iteration of bench/attn_cuda.py per (shape, depth), and summarizes the printed phases (bench/phase_summary.py).
# Usage: bash bench/device/phase_probe.sh    → $OUT/phase_<shape>_<depth>.txt, $OUT/phase_summary.md
set -uo pipefail
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
R="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$R"
python3 bench/device/phase_probe.py || exit 1
bash bench/device/install_cuda.sh "$OUT/rebuild.log" || exit 1
files=()
for s in ${SHAPES:-llama3-8b llama2-7b}; do
  for d in ${DEPTHS:-2048 32768}; do
    (cd /tmp && PYTHONPATH=/tmp/site python3 "$R/bench/attn_cuda.py" --shapes "$s" --depths "$d" --mixes 10/30/60 \
      --iters 1 --out /tmp/phase.json > "$OUT/phase_${s}_$d.txt" 2>&1)
    files+=("$OUT/phase_${s}_$d.txt")
  done
done
python3 bench/phase_summary.py "${files[@]}" | tee "$OUT/phase_summary.md"
