#!/usr/bin/env bash
# Run ON the GPU machine (the device tool), from the repo root: planner speed with the GGUF MiniLM on the GPU.
# Carry .bundle and .whl (bench/device/make_bundle.sh) and .carry, made here with
#   python bench/device/vocab_only_gguf.py .carry/gemma-3-270m-vocab.gguf     (the tokenizer, 6 MiB)
#   cocktail-gguf convert-encoder -o .carry/all-MiniLM-L6-v2-q8_0.gguf --outtype q8_0   (25 MiB)
# (the f16 GGUF, 46 MiB, does not fit the 64 MiB carry limit next to the bundle).
# Usage: COMMIT=<sha> [PACKS="256 512 1024 2048"] [FLASH="on off"] [THREADS="1 16"] [CONTEXTS="1 2 3"] \
#          bash bench/device/plan_speed_gpu.sh
#   → $OUT/plan_speed_gpu_pack<P>[_fa<on|off>][_t<T>][_c<C>].json per tokens-per-decode value P (n_batch = P),
#     flash attention setting, CPU threads and contexts (each: the encoder's default when not given),
#     $OUT/build.log
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-/tmp/out}"
if [ ! -d /tmp/site/cocktail_gguf ]; then
  TESTS="${TESTS:-$repo/tests/test_build_info.py}" bash "$repo/bench/device/build_cuda.sh"
fi
cd /tmp  # the installed CUDA build, not the source tree
for pack in ${PACKS:-1536}; do
  for fa in ${FLASH:-default}; do
    for threads in ${THREADS:-default}; do
      for contexts in ${CONTEXTS:-default}; do
        opt=() name="pack$pack"
        [ "$fa" = default ] || { opt+=(--flash-attn "$fa"); name="${name}_fa$fa"; }
        [ "$threads" = default ] || { opt+=(--n-threads "$threads"); name="${name}_t$threads"; }
        [ "$contexts" = default ] || { opt+=(--n-contexts "$contexts"); name="${name}_c$contexts"; }
        PYTHONPATH=/tmp/site python3 "$repo/bench/plan_speed.py" --model "$repo/.carry/gemma-3-270m-vocab.gguf" \
          --encoders "$repo/.carry/all-MiniLM-L6-v2-q8_0.gguf" --gpu-layers -1 --n-batch "$pack" \
          --pack-tokens "$pack" "${opt[@]}" --runs "${RUNS:-5}" --depths ${DEPTHS:-8192 32768} \
          --out "$out/plan_speed_gpu_$name.json" 2>&1 | grep -E "plan |GPU vs CPU|load " | sed "s|^|$name: |"
      done
    done
  done
done
