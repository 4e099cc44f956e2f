"""KV bytes, prefill, compaction and decode speed per KV mode on CPU (default: gemma-3-270m).

    python bench/kv_modes_cpu.py --contexts 4096 8192 --decode 32

Writes bench/results/kv_modes_cpu.json (format: ../shared/BENCH.md) and a markdown table beside it.
Modes: llama.cpp's f16 cache, our uniform q4 / q2 and cocktail with a fixed plan (--mix f16,q4,q2
fractions of the context chunks, placed at seeded random chunks: this measures speed, not the search).
The measurement is `cocktail_gguf.kv_bench` (also behind `cocktail-gguf bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cocktail_gguf import kv_bench

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF (default: gemma-3-270m Q4_K_M from PyPI)")
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--modes", nargs="+", default=list(kv_bench.DEFAULT_MODES))
    p.add_argument("--mix", type=kv_bench.parse_mix, default=kv_bench.DEFAULT_MIX)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "kv_modes_cpu.json"))
    args = p.parse_args()
    config = kv_bench.BenchConfig.from_args(args, tuple(args.contexts))
    try:
        config.validate()
    except ValueError as exc:
        p.error(str(exc))
    records = kv_bench.run(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    result = kv_bench.result_document("kv_modes_cpu", records, command)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = kv_bench.markdown(records)
    out.with_suffix(".md").write_text(
        f"# kv_modes_cpu\n\ncommit {result['commit']}, {result['machine']}, {result['date']}\n\n"
        f"`{result['command']}`\n\n{table}"
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
