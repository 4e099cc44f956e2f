#!/usr/bin/env bash
# Run ON the GPU machine after bench/device/build_cuda.sh (the CUDA build in /tmp/site): an Nsight Compute profile
# of the attention kernels (split-K partial + merge) of one decode step, one layer, 64K context, 10/30/60 mix, for
# the Llama-2-7B (MHA) and Llama-3-8B (GQA 4) shapes: speed of light, occupancy, warp stall reasons (and where), pipes,
# shared-memory bank conflicts.
# Usage: bash bench/device/profile_attn.sh        → $OUT/ncu_<shape>.txt
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
ncu="$(command -v ncu || echo /usr/local/cuda/bin/ncu)"
# share of active warps' cycles stalled on each reason (% per warp active)
stalls=""
for r in long_scoreboard short_scoreboard mio_throttle lg_throttle wait math_pipe_throttle barrier membar \
  not_selected selected no_instruction dispatch_stall branch_resolving drain sleeping tex_throttle imc_miss misc; do
  stalls="$stalls${stalls:+,}smsp__warp_issue_stalled_${r}_per_warp_active.pct"
done
cd /tmp  # the installed CUDA build, not the source tree
for shape in ${SHAPES:-llama2-7b llama3-8b}; do
  # bench/attn_cuda.py launches 3 warm-up calls, then --iters timed ones (2 kernels each): profile the first timed one
  PYTHONPATH=/tmp/site "$ncu" --kernel-name regex:attn_ --launch-skip 6 --launch-count 2 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section SourceCounters \
    --metrics "$stalls" \
    python3 "$repo/bench/attn_cuda.py" --shapes "$shape" --depths 65536 --mixes 10/30/60 --iters 1 \
    --out "/tmp/profile_$shape.json" > "$out/ncu_$shape.txt" 2>&1
  echo "$shape: ncu exit $?, $(grep -c 'attn_' "$out/ncu_$shape.txt") kernel lines"
done
