#!/usr/bin/env bash
# One side of a same-machine A/B of the attention kernels, ON the GPU machine after bench/device/build_cuda.sh (the
# CUDA build in /tmp/site, build dir /tmp/cocktail-build): sweeps the installed build with bench/attn_cuda.py into
# $OUT/LABEL.{json,md}. With a second argument (a folder of another commit's kernel files, untracked, sent with the
# tree), copies them over this copy's native/ and rebuilds (incremental) first:
#   mkdir -p ab_old/native && for f in cocktail_attn_cuda.cu cocktail_attn_cuda_common.cuh cocktail_attn_cuda_mma.cuh;
#   do git show <commit>:native/$f > ab_old/native/$f; done
# Usage: bash bench/device/ab_kernels.sh LABEL [ab_old/native]    (SWEEP_ARGS: attn_cuda.py's arguments)
set -uo pipefail
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
R="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$R"
label="${1:?usage: ab_kernels.sh LABEL [kernel-dir]}"
if [ -n "${2:-}" ]; then
  cp "$2"/* native/ || exit 1
  bash bench/device/install_cuda.sh "$OUT/rebuild_$label.log" || exit 1
fi
# shellcheck disable=SC2086
(cd /tmp && COCKTAIL_COMMIT="$label" PYTHONPATH=/tmp/site python3 "$R/bench/attn_cuda.py" \
  ${SWEEP_ARGS:---depths 8192 32768 65536 --iters 30} --out "$OUT/$label.json" 2>&1 | grep " us " | sed "s/^/$label /")
