#!/usr/bin/env bash
# The accuracy / perplexity runs behind bench/results/eval_*.{json,md,png} (gemma-3-270m, CPU, 2 cores).
# Each run is `cocktail-gguf eval`; a quiet machine is not needed (accuracy does not depend on speed).
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
run() { echo "+ cocktail-gguf eval $*" >&2; python -m cocktail_gguf.cli eval --threads 2 "$@"; }
case "${1:-all}" in
  main|all)
    # the methods table at ~4K tokens: every task, our formats, llama.cpp q4_0 KV, Cocktail, controls
    run --lengths 4096 -n 5 --methods f16,q4,q2,kivi2,llama-q4_0,cocktail,random,cocktail-bm25,cocktail-gguf \
        --out $out/eval_gemma_4k ;;&
  ppl|all)
    # perplexity of the uniform formats vs llama.cpp's q8_0 / q4_0 KV (second half of 4096-token windows)
    run --tasks none --methods f16,f16-regions,q4,q2,kivi2,llama-q8_0,llama-q4_0 \
        --perplexity-windows 6 --perplexity-window 4096 --out $out/eval_gemma_ppl ;;&
  more)
    # 5 more samples per task (indexes 5-9) for the key methods of the 4K table, merged into its raw records
    # (vartrack is left out: every method scores 0 on it with this model); once, after `main`
    if grep -q '"index": 5,' $out/eval_gemma_4k.samples.jsonl; then
      echo "samples 5-9 are already in $out/eval_gemma_4k.samples.jsonl (run main first to start over)" >&2; exit 1
    fi
    run --tasks passkey,niah_single,niah_multikey,niah_multivalue,qa --lengths 4096 -n 5 --first-sample 5 \
        --methods f16,q2,cocktail,random --out /tmp/eval_gemma_4k_more
    cat /tmp/eval_gemma_4k_more.samples.jsonl >> $out/eval_gemma_4k.samples.jsonl
    python - "$out/eval_gemma_4k.json" <<'PY'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
d["command"] = "bash bench/eval_gemma.sh main; bash bench/eval_gemma.sh more (samples 5-9: f16, q2, cocktail, random)"
json.dump(d, open(p, "w"), indent=2)
PY
    run --from-samples --out $out/eval_gemma_4k ;;
  sweep|all)
    # alpha / beta / chunk-size sweep at ~2K tokens
    run --lengths 2048 -n 3 --methods f16,cocktail,cocktail-a0.5,cocktail-a0.7,cocktail-b0.05,cocktail-b0.2,cocktail-cs8,cocktail-cs16,cocktail-cs64,cocktail-cs128,random \
        --out $out/eval_gemma_sweep_2k ;;&
  long16)
    # 16K tokens: one sample per task, the key methods (a smoke run of the longest length the issue asks for)
    run --tasks passkey,niah_single,qa --lengths 16384 -n 1 --methods f16,q2,cocktail,random \
        --out $out/eval_gemma_16k ;;
  long|all)
    # longer contexts, fewer samples and methods (~2.5 min per sample on 2 cores)
    run --tasks passkey,niah_single,qa --lengths 8192 -n 1 --methods f16,q2,kivi2,llama-q4_0,cocktail,random \
        --out $out/eval_gemma_8k ;;
esac
