"""Decode speed (TPOT) at long context on a GPU: llama.cpp's f16 / q4_0 caches vs our segmented cache.

    python bench/tpot_gpu.py --cases llama2-7b:32768 llama3-8b:65536 --modes cocktail,f16,llama-q4_0

Models: random Q4_0 weights in real shapes (cocktail_gguf.random_gguf), written to --models-dir once.
Every model layer and the KV cache on the GPU, flash attention on. Each (case, mode) is measured by
`cocktail_gguf.kv_bench` in its own process (a crash loses one row, not the run): a synthetic context of
the case's depth, `Llama.ask` (prefill -> compaction -> decode --decode tokens, end-of-generation ignored).
cocktail runs a fixed plan (--mix F16/Q4/Q2 fractions of the chunks at seeded places): speed, not search.
Writes --out (JSON, ../shared/BENCH.md) and a markdown table beside it, after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cocktail_gguf import kv_bench
from cocktail_gguf.random_gguf import SHAPES, write_random_llama

ROOT = Path(__file__).resolve().parents[1]


def _case(text: str) -> tuple[str, int]:
    shape, _, depth = text.partition(":")
    if shape not in SHAPES or not depth.isdigit() or int(depth) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not SHAPE:DEPTH with SHAPE one of {', '.join(SHAPES)}")
    return shape, int(depth)


def _model(models_dir: Path, shape: str) -> Path:
    path = models_dir / f"{shape}-random-q4_0.gguf"
    if not path.is_file():
        start = time.perf_counter()
        tmp = path.with_suffix(".partial")
        write_random_llama(tmp, shape, seed=0, weight_type="q4_0")
        tmp.rename(path)
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return path


def _one(args: argparse.Namespace, model: Path, depth: int, mode: str) -> list[dict[str, Any]]:
    """One (model, depth, mode) in a child process: its records, or one record naming the failure."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "records.json"
        code = (
            "import json, sys; from cocktail_gguf import kv_bench as b; "
            f"c = b.BenchConfig(model={str(model)!r}, contexts=({depth},), modes=({mode!r},), "
            f"decode={args.decode}, runs={args.runs}, mix={args.mix!r}, seed={args.seed}, n_gpu_layers=-1, "
            "flash_attn=True); "
            f"json.dump(b.run_mode(c, {mode!r}, {depth}), open({str(out)!r}, 'w'))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if done.returncode == 0 and out.is_file():
            records: list[dict[str, Any]] = json.loads(out.read_text())
            return records
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    failure = {"error": " | ".join(tail), "exit": done.returncode}
    return [{"model": model.stem, "kv_mode": mode, "depth": depth, **failure}]


def _table(records: list[dict[str, Any]]) -> str:
    ok = [r for r in records if "error" not in r]
    lines = []
    # one table per model: kv_bench's rows are keyed by depth and mode
    for model in dict.fromkeys(r["model"] for r in ok):
        lines.append(f"**{model}**\n\n" + kv_bench.markdown([r for r in ok if r["model"] == model]))
    # ratios of ms per token over all decode steps, and of the median step (steady state: one slow step, such
    # as the first one's CUDA-graph capture, moves the mean of 32 steps by tens of µs per step)
    by: dict[tuple[str, int, str], dict[str, float]] = {}
    for r in ok:
        if r["metric"] in ("ms_per_token", "ms_per_token_median_step"):
            by.setdefault((r["model"], r["depth"], r["metric"]), {})[r["kv_mode"]] = r["value"]
    for (model, depth, metric), ms in by.items():
        if "cocktail" in ms:
            what = "TPOT" if metric == "ms_per_token" else "median step"
            ratios = ", ".join(f"{ms['cocktail'] / ms[m]:.2f}x {m}" for m in ("f16", "q4_0") if m in ms)
            lines.append(f"- {model} @ {depth}: cocktail {what} {ms['cocktail']:.2f} ms = {ratios}")
    for r in records:
        if "error" in r:
            what = f"{r['model']} @ {r['depth']} {r['kv_mode']}"
            lines.append(f"- FAILED {what} (exit {r['exit']}): {r['error']}")
    return "\n".join(lines) + "\n"


def _markdown(doc: dict[str, Any], records: list[dict[str, Any]]) -> str:
    return (
        f"# tpot_gpu\n\ncommit {doc['commit']}, {doc['machine']}, {doc['date']}\n\n"
        f"`{doc['command']}`\n\n{_table(records)}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=_case, nargs="+", default=[("llama2-7b", 32768), ("llama3-8b", 65536)])
    p.add_argument("--modes", type=kv_bench.parse_modes, default=("cocktail", "f16", "llama-q4_0"))
    p.add_argument("--mix", type=kv_bench.parse_mix, default=kv_bench.DEFAULT_MIX)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "cocktail-bench-models")
    p.add_argument("--time-limit", type=float, default=0, help="seconds; no row starts after it (0: none)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tpot_gpu.json")
    p.add_argument("--table-from", type=Path, help="only rewrite the markdown of this results JSON (no runs)")
    args = p.parse_args()
    if args.table_from is not None:
        doc = json.loads(args.table_from.read_text())
        args.table_from.with_suffix(".md").write_text(_markdown(doc, doc["records"]))
        return 0
    args.models_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    records: list[dict[str, Any]] = []
    for shape, depth in args.cases:
        model = _model(args.models_dir, shape)
        for mode in args.modes:
            if args.time_limit and time.perf_counter() - start > args.time_limit:
                print(f"time limit: {shape} @ {depth} {mode} not run", file=sys.stderr, flush=True)
                continue
            t0 = time.perf_counter()
            records += _one(args, model, depth, mode)
            print(f"{shape} @ {depth} {mode}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            doc = kv_bench.result_document("tpot_gpu", records, command)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=2) + "\n")
            args.out.with_suffix(".md").write_text(_markdown(doc, records))
    print(_table(records))
    return 0 if records and all("error" not in r for r in records) else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
