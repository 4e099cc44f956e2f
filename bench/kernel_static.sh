#!/usr/bin/env bash
# Static facts of the CUDA attention kernels, no GPU needed: registers, stack and spill bytes of every partial-kernel
# instantiation (ptxas -v, sm_90), and instruction counts of the Llama-2 shape's kernels (attn_partial<128,1>,
# attn_partial_mma<128,kOneHead>) and of the Llama-3 shape's (attn_partial_mma<128,kHeadPairs>) when
# nvdisasm is there (NVDISASM=path; the PyPI wheel nvidia-cuda-nvdisasm has one).
# Usage: bash bench/kernel_static.sh [upstream llama.cpp dir, default: the .bundle of make_bundle.sh]
set -euo pipefail
cd "$(dirname "$0")/.."
up="${1:-.bundle/llama_cpp_python-0.3.36/vendor/llama.cpp}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- native || echo ' + local changes')"
nvcc -std=c++17 -cubin -o "$tmp/k.cubin" -gencode arch=compute_90,code=sm_90 -DCOCKTAIL_CUDA=1 -I native \
  -I "$up/include" -I "$up/ggml/include" -Xptxas -v native/cocktail_attn_cuda.cu 2> "$tmp/ptxas.txt"
python3 - "$tmp/ptxas.txt" <<'PY'
import re, sys
cur = None
for line in open(sys.argv[1]):
    m = re.search(r"entry function '_ZN8cocktail9cuda_impl\d+(attn_\w+?)ILi(\d+)(?:ELi(\d+)|ELNS0_9MmaLayoutE([012]))?E", line)
    if m:
        second = m.group(3) or {"0": "kHeadRows", "1": "kOneHead", "2": "kHeadPairs"}.get(m.group(4) or "", "")
        cur = f"{m.group(1)}<{m.group(2)}{',' + second if second else ''}>"
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", line)
    if m and cur:
        frame = m.groups()
    m = re.search(r"Used (\d+) registers", line)
    if m and cur:
        print(f"{cur:24s} registers {m.group(1):>4s}  stack {frame[0]:>4s} B  spill stores {frame[1]:>4s} B")
        cur = None
PY
if [ -n "${NVDISASM:-}" ]; then
  "$NVDISASM" -c "$tmp/k.cubin" > "$tmp/k.sass"
  # the Llama-2 shape's kernels (the scalar one and the tensor-core kernel's one-head variant) and the Llama-3 one's
  for k in "attn_partial<128,1>:12attn_partialILi128ELi1EE" \
    "attn_partial_mma<128,kOneHead>:16attn_partial_mmaILi128ELNS0_9MmaLayoutE1EE" \
    "attn_partial_mma<128,kHeadPairs>:16attn_partial_mmaILi128ELNS0_9MmaLayoutE2EE" \
    "attn_partial_mma<128,kHeadRows>:16attn_partial_mmaILi128ELNS0_9MmaLayoutE0EE"; do
    awk -v sym="${k#*:}" 'index($0, ".text._ZN8cocktail9cuda_impl" sym "EvNS0_6ParamsE:") == 1 {f=1; next}
      f && /\.section/{exit} f' "$tmp/k.sass" > "$tmp/one.sass"
    echo "${k%%:*}: $(grep -cE '^\s+/\*[0-9a-f]+\*/' "$tmp/one.sass") instructions, LOP3 $(grep -c 'LOP3' "$tmp/one.sass"), PRMT $(grep -c 'PRMT' "$tmp/one.sass"), SHF $(grep -c 'SHF' "$tmp/one.sass"), FFMA $(grep -c 'FFMA' "$tmp/one.sass"), HFMA2 $(grep -c 'HFMA2' "$tmp/one.sass"), HMMA $(grep -c 'HMMA' "$tmp/one.sass")"
  done
fi
