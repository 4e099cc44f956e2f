#!/usr/bin/env bash
# Kernel time against the number of token splits, ON the GPU machine (device tool, carrying .bundle and .whl), from
# the repo root: edits THIS COPY of native/cocktail_attn_cuda.cu so that COCKTAIL_PROBE_SPLITS caps the split plan
# (never for a build that is kept), builds, runs the unit-order tests, then bench/attn_cuda.py per cap (the
# default plan is min(one wave of blocks, units / 4): 49 splits for the Llama-3 shape, 12 for Llama-2's).
# Usage: bash bench/device/splits_probe.sh    → stdout (bench/results/attn_splits_36e9ad6.txt), $OUT/splits_<S>.*
set -uo pipefail
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
R="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$R"
python3 - <<'PY'
p = "native/cocktail_attn_cuda.cu"
s = open(p).read()
a = "                                        std::max(1, max_splits) }));\n}\n"
assert a in s
s = s.replace(a, a[:-2] + '    if (const char * e = getenv("COCKTAIL_PROBE_SPLITS")) p.n_splits = std::max(1, std::min(p.n_splits, atoi(e)));\n}\n', 1)
open(p, "w").write("#include <cstdlib>\n" + s)
PY
COMMIT=probe TESTS="tests/test_attn_cuda.py" bash bench/device/build_cuda.sh -q -k "every_unit_order" 2>&1 | grep -E "cuda build|tests:"
cd /tmp; export PYTHONPATH=/tmp/site
for S in 49 41 33 25 17 12 9 6; do
  COCKTAIL_PROBE_SPLITS=$S python3 $R/bench/attn_cuda.py --shapes llama3-8b llama2-7b --depths 2048 8192 32768 --mixes 10/30/60 --iters 30 --out $OUT/splits_$S.json 2>&1 | grep "us " | sed "s/^/S=$S /"
done
