"""`cocktail-gguf eval`: accuracy of the KV-cache methods on generated long-context tasks, perplexity of
the uniform formats; writes BENCH-format JSON, a markdown table, a PNG and the raw per-sample records."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .methods import DEFAULT_METHODS, parse_method
from .tasks import TASKS


def _csv(kind: type, allowed: tuple[str, ...] | None = None) -> Any:
    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r} is empty")
        out = []
        for t in items:
            try:
                value = kind(t)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{t!r} is not a {kind.__name__}") from None
            if allowed is not None and value not in allowed:
                raise argparse.ArgumentTypeError(f"{t!r} is not one of {', '.join(allowed)}")
            out.append(value)
        return out

    return parse


def _tasks(text: str) -> list[str]:
    return [] if text.strip() == "none" else list(_csv(str, TASKS)(text))


def _methods(text: str) -> list[str]:
    names = _csv(str)(text)
    for n in names:
        try:
            parse_method(n)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return list(names)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="accuracy vs KV bytes of f16 / q4 / q2 / llama.cpp / Cocktail on long contexts"
    )
    p.add_argument("--model", "-m", help="GGUF path (default: the embedded gemma-3-270m Q4_K_M)")
    p.add_argument(
        "--tasks", type=_tasks, default=list(TASKS), help=f"comma list of {', '.join(TASKS)}, or none"
    )
    p.add_argument("--lengths", type=_csv(int), default=[4096], help="context lengths in tokens (comma list)")
    p.add_argument("--samples", "-n", type=int, default=10, help="samples per task and length")
    p.add_argument(
        "--methods",
        type=_methods,
        default=list(DEFAULT_METHODS),
        help="comma list (see cocktail_gguf.eval.methods)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--first-sample",
        type=int,
        default=0,
        help="index of the first sample (a run from index 5 adds samples 5.. to a run of -n 5)",
    )
    p.add_argument(
        "--corpus", nargs="+", help="haystack text files (default: the shipped public-domain prose)"
    )
    p.add_argument(
        "--contriever", help="local sentence-transformers folder of facebook/contriever (cocktail-contriever)"
    )
    p.add_argument("--perplexity-windows", type=int, default=0, help="windows for perplexity (0: skip)")
    p.add_argument("--perplexity-window", type=int, default=4096, help="tokens per perplexity window")
    p.add_argument("--threads", type=int, help="CPU threads (default: llama.cpp's)")
    p.add_argument(
        "--from-samples",
        action="store_true",
        help="no run: summarize OUT.samples.jsonl (and OUT.perplexity.jsonl) of an earlier run again",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("eval_results"),
        help="output prefix: OUT.json, OUT.md, OUT.png, OUT.samples.jsonl",
    )
    p.set_defaults(func=main)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def _resummarize(args: argparse.Namespace) -> int:
    """Rebuilds OUT.json / .md / .png from the raw records; keeps the original run's command, commit, date."""
    out_json = Path(f"{args.out}.json")
    if not out_json.is_file():
        raise SystemExit(f"cocktail-gguf eval --from-samples: {str(out_json)!r} does not exist")
    old = json.loads(out_json.read_text())
    records = _read_jsonl(Path(f"{args.out}.samples.jsonl"))
    ppl_records = _read_jsonl(Path(f"{args.out}.perplexity.jsonl"))
    model = next((r["model"] for r in old.get("records", [])), "model")
    window = next((r["depth"] for r in old.get("records", []) if r.get("task") == "perplexity"), 0)
    _write_outputs(args.out, old, records, ppl_records, model, window)
    return 0


def _write_outputs(
    out: Path,
    result: dict[str, Any],
    records: list[dict[str, Any]],
    ppl_records: list[dict[str, Any]],
    model: str,
    window: int,
) -> None:
    from . import report

    summary = report.summarize(records, model)
    ppl = report.summarize_perplexity(ppl_records, model, window) if ppl_records else []
    result = {**result, "records": summary + ppl}
    out_json = Path(f"{out}.json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    table = report.markdown(summary, ppl)
    header = (
        f"# cocktail-gguf eval ({model})\n\nCommand: `{result['command']}`  \n"
        f"Commit {result['commit']}, {result['date']}, {result['machine']}\n\n"
    )
    Path(f"{out}.md").write_text(header + table)
    report.plot(summary, Path(f"{out}.png"))
    print(table)


def main(args: argparse.Namespace) -> int:
    from ..models import default_model_path
    from . import tasks
    from .corpus import load_corpus
    from .runner import Runner, run, write_jsonl

    for name in ("samples", "perplexity_window", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"cocktail-gguf eval: --{name.replace('_', '-')}={value} must be positive")
    if args.perplexity_windows < 0:
        raise SystemExit(f"cocktail-gguf eval: --perplexity-windows={args.perplexity_windows} must be >= 0")
    if not args.tasks and not args.perplexity_windows:
        raise SystemExit("cocktail-gguf eval: --tasks none without --perplexity-windows: nothing to do")
    if any(n < 256 for n in args.lengths):
        raise SystemExit(f"cocktail-gguf eval: --lengths={args.lengths}: each length must be >= 256 tokens")
    if args.from_samples:
        return _resummarize(args)
    model = Path(args.model) if args.model else default_model_path()
    if not model.is_file():
        raise SystemExit(f"cocktail-gguf eval: --model {str(model)!r} does not exist")
    commit = _commit()  # the code that runs, whatever is committed while it does
    docs = load_corpus(args.corpus)
    n_ctx = max(max(args.lengths) + 256 if args.tasks else 0, args.perplexity_window + 64)

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    runner = Runner(
        str(model), n_ctx, args.methods, contriever=args.contriever, n_threads=args.threads, progress=say
    )
    try:
        samples = [
            (length, s)
            for length in args.lengths
            for task in args.tasks
            for s in tasks.make_samples(
                task, args.samples, length, docs, runner.count_tokens, args.seed, args.first_sample
            )
        ]
        raw_path = Path(f"{args.out}.samples.jsonl")
        records = run(runner, samples)
        write_jsonl(raw_path, records)
        ppl_records: list[dict[str, Any]] = []
        if args.perplexity_windows:
            ppl_records = runner.perplexity(docs, args.perplexity_windows, args.perplexity_window)
            write_jsonl(Path(f"{args.out}.perplexity.jsonl"), ppl_records)
    finally:
        runner.close()
    result = {
        "bench": "eval_accuracy",
        "commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores | CPU",
        "command": "cocktail-gguf eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "date": datetime.date.today().isoformat(),
    }
    _write_outputs(args.out, result, records, ppl_records, model.stem, args.perplexity_window)
    out_json, png = Path(f"{args.out}.json"), Path(f"{args.out}.png")
    say(f"wrote {out_json}, {args.out}.md" + (f", {png}" if png.is_file() else "") + f", {raw_path}")
    return 0
