#!/usr/bin/env bash
# The A/B run of bench/results/attn_ab_prologue_*.md, ON the GPU machine (device tool, carrying .bundle and .whl):
# builds this tree and runs the attention tests, sweeps the kernels (bench/attn_cuda.py, both shapes, 10/30/60 mix,
# 2K-64K), then the same build without the merge kernel's launch (an edit of this copy only: the outputs are wrong,
# the time is the partial kernel's alone), then the kernels of an older commit (incremental rebuilds, one machine).
# The older commit's three kernel files come from the dev machine, in ab_old/native (untracked, sent with the tree):
#   mkdir -p ab_old/native && for f in cocktail_attn_cuda.cu cocktail_attn_cuda_common.cuh cocktail_attn_cuda_mma.cuh;
#   do git show 97fa0fb:native/$f > ab_old/native/$f; done
# Usage: bash bench/device/ab_prologue.sh    → $OUT/{new,nomerge,old}.{json,md}
set -uo pipefail
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
R="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$R"
[ -d ab_old/native ] || { echo "ab_old/native missing (see the header)"; exit 2; }
COMMIT=ab TESTS="tests/test_attn_cuda.py" bash bench/device/build_cuda.sh -q -x 2>&1 | tail -2
export PYTHONPATH=/tmp/site
rebuild() { bash "$R/bench/device/install_cuda.sh" "$OUT/rebuild.log"; }
sweep() {
  (cd /tmp && python3 "$R/bench/attn_cuda.py" --shapes llama3-8b llama2-7b --depths 2048 8192 32768 65536 \
    --mixes 10/30/60 --iters 30 --out "$OUT/$1.json" 2>&1 | grep "us " | sed "s/^/$1 /")
}
sweep new
python3 - <<'PY'
p = "native/cocktail_attn_cuda.cu"
s = open(p).read()
a = "    const size_t smem = ((static_cast<size_t>(n_splits) + 3) / 4 * 4 + 4 * kMergeWarps * 32) * sizeof(float);"
assert a in s
s = s.replace(a, '    if (getenv("COCKTAIL_SKIP_MERGE")) return COCKTAIL_OK;\n' + a, 1)
open(p, "w").write("#include <cstdlib>\n" + s)
PY
rebuild
COCKTAIL_SKIP_MERGE=1 sweep nomerge
cp ab_old/native/* native/
rebuild
sweep old
