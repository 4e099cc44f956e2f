"""KV bytes, prefill, compaction and decode speed per KV mode on CPU (default: gemma-3-270m).

    python bench/kv_modes_cpu.py --contexts 4096 8192 --decode 32

Writes bench/results/kv_modes_cpu.json (format: ../shared/BENCH.md) and a markdown table beside it.
Modes: llama.cpp's f16 cache, our uniform q4 / q2 and cocktail with a fixed plan (--mix f16,q4,q2
fractions of the context chunks, placed at seeded random chunks: this measures speed, not the search).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "river stone light garden winter market letter window harbor forest morning bridge lantern valley "
    "pocket candle meadow silver orchard thunder quiet yellow narrow gentle ancient hollow distant "
    "walked carried noticed remembered painted gathered followed opened crossed listened"
).split()
QUERY = "\nQuestion: what did the traveller remember about the bridge?\nAnswer:"


def filler(n_words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(n_words // 10 + 1):
        words = rng.choice(WORDS, size=10)
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def context_of(llm: Any, n_tokens: int, seed: int) -> str:
    """Filler text of exactly n_tokens tokens once tokenized the way Llama.ask tokenizes it."""
    ids = llm.tokenize(filler(n_tokens, seed).encode(), add_bos=False, special=False)
    if len(ids) < n_tokens:
        raise ValueError(f"filler too short: {len(ids)} < {n_tokens}")
    for cut in range(n_tokens, n_tokens - 16, -1):
        text = llm.detokenize(ids[:cut]).decode("utf-8", errors="ignore")
        if len(llm.tokenize(text.encode(), add_bos=False, special=False)) == n_tokens:
            return text
    return llm.detokenize(ids[:n_tokens]).decode("utf-8", errors="ignore")


def mixed_plan(n_tokens: int, chunk_size: int, mix: tuple[float, float, float], seed: int) -> Any:
    from cocktail_gguf.plan import Plan

    n_chunks = n_tokens // chunk_size
    n_f16 = round(mix[0] * n_chunks)
    n_q4 = round(mix[1] * n_chunks)
    precisions = ["f16"] * n_f16 + ["q4"] * n_q4 + ["q2"] * (n_chunks - n_f16 - n_q4)
    np.random.default_rng(seed).shuffle(precisions)
    return Plan.from_precisions(precisions, chunk_size=chunk_size, n_context_tokens=n_tokens)


def run_one(args: argparse.Namespace, mode: str, depth: int) -> list[dict[str, Any]]:
    from cocktail_gguf import Llama
    from cocktail_gguf.plan import Plan

    n_ctx = depth + 256 + args.decode
    llm = Llama(args.model, n_ctx=n_ctx, n_batch=512, n_threads=args.threads, kv_mode=mode, verbose=False)
    context = context_of(llm, depth, args.seed)
    n_ctx_tokens = len(llm.tokenize(context.encode(), add_bos=False, special=False))
    plan = None
    if mode in ("q4", "q2"):
        plan = Plan.uniform(n_ctx_tokens, args.chunk_size, mode)
    elif mode == "cocktail":
        plan = mixed_plan(n_ctx_tokens, args.chunk_size, args.mix, args.seed)
    runs = []
    for _ in range(args.runs):
        answer = llm.ask(context, QUERY, plan=plan, max_tokens=args.decode, ignore_eos=True)
        runs.append(answer)
    kv = llm.kv_bytes()
    llm.close()
    mix = None
    if plan is not None:
        mix = {k: v / plan.n_chunks for k, v in plan.counts.items()} if plan.n_chunks else None
    base = {
        "model": Path(args.model).stem,
        "backend": "cpu",
        "kv_mode": mode,
        "impl": "llama.cpp" if mode == "f16" else "ours",
        "mix": mix,
        "depth": depth,
        "kv_bytes": kv["llama_cache"] + kv["regions"],
        "kv_bytes_llama_cache": kv["llama_cache"],
        "kv_bytes_regions": kv["regions"],
        "n_threads": args.threads,
    }

    def rec(metric: str, values: list[float]) -> dict[str, Any]:
        return dict(
            base,
            metric=metric,
            value=statistics.median(values),
            n_runs=len(values),
            min=min(values),
            max=max(values),
        )

    n_prompt = runs[0].n_prompt_tokens
    out = [
        rec("prefill_tokens_per_s", [n_prompt / a.timings["prefill_s"] for a in runs]),
        rec("decode_tokens_per_s", [a.timings["n_decoded"] / a.timings["decode_s"] for a in runs]),
    ]
    if plan is not None:
        out.append(rec("compaction_ms", [1000 * a.timings["compaction_s"] for a in runs]))
    return out


def markdown(records: list[dict[str, Any]]) -> str:
    rows = {}
    for r in records:
        key = (r["depth"], r["kv_mode"])
        rows.setdefault(
            key, dict(kv=r["kv_bytes"], regions=r["kv_bytes_regions"], cache=r["kv_bytes_llama_cache"])
        )
        rows[key][r["metric"]] = r["value"]
    lines = [
        "| depth | kv_mode | KV MiB = llama.cpp cache + regions | prefill t/s | compaction ms | decode t/s |",
        "|---|---|---|---|---|---|",
    ]
    for (depth, mode), v in sorted(rows.items()):
        comp = f"{v['compaction_ms']:.1f}" if "compaction_ms" in v else "—"
        mib = f"{v['kv'] / 2**20:.1f} = {v['cache'] / 2**20:.1f} + {v['regions'] / 2**20:.2f}"
        speeds = f"{v['prefill_tokens_per_s']:.0f} | {comp} | {v['decode_tokens_per_s']:.1f}"
        lines.append(f"| {depth} | {mode} | {mib} | {speeds} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF (default: gemma-3-270m Q4_K_M from PyPI)")
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--modes", nargs="+", default=["f16", "q4", "q2", "cocktail"])
    p.add_argument("--mix", type=lambda s: tuple(float(x) for x in s.split(",")), default=(0.1, 0.3, 0.6))
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "kv_modes_cpu.json"))
    args = p.parse_args()
    if args.model is None:
        from cocktail_gguf.models import default_model_path

        args.model = str(default_model_path())
    records = []
    for depth in args.contexts:
        for mode in args.modes:
            t = time.perf_counter()
            records += run_one(args, mode, depth)
            print(
                f"depth {depth} {mode}: done in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True
            )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {
        "bench": "kv_modes_cpu",
        "commit": commit.stdout.strip() or "unknown",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores | CPU",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "records": records,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(records)
    out.with_suffix(".md").write_text(
        f"# kv_modes_cpu\n\ncommit {result['commit']}, {result['machine']}, {result['date']}\n\n"
        f"`{result['command']}`\n\n{table}"
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
