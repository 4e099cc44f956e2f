"""KV bytes, prefill, compaction and decode speed per kv_mode (`cocktail-gguf bench`, bench/kv_modes_cpu.py).

For each context length and mode: a synthetic context of exactly that many tokens, then
`Llama.ask` (prefill → compaction → decode, end-of-generation ignored) ``runs`` times. Records are
in the format of shared/BENCH.md. Modes: llama.cpp's f16 cache, llama.cpp's own quantized caches
("llama-q8_0", "llama-q4_0": type_k = type_v, flash attention), our uniform q4 / q2, and cocktail
with a fixed plan (``mix`` = F16 / Q4 / Q2 fractions of the context chunks at seeded random
chunks): this measures speed, not the planner's search. ``n_gpu_layers`` puts the model and its
cache on the GPU (CUDA builds).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .llama import KV_MODES
from .plan import Plan

DEFAULT_MODES: tuple[str, ...] = ("f16", "q4", "q2", "cocktail")
LLAMA_KV_TYPES = {"llama-q8_0": 8, "llama-q4_0": 2}  # bench modes: llama.cpp's cache of that ggml type
BENCH_MODES: tuple[str, ...] = (*KV_MODES, *LLAMA_KV_TYPES)
DEFAULT_MIX: tuple[float, float, float] = (0.1, 0.3, 0.6)
WORDS = (
    "river stone light garden winter market letter window harbor forest morning bridge lantern valley "
    "pocket candle meadow silver orchard thunder quiet yellow narrow gentle ancient hollow distant "
    "walked carried noticed remembered painted gathered followed opened crossed listened"
).split()
QUERY = "\nQuestion: what did the traveller remember about the bridge?\nAnswer:"


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures; `validate` names the first bad value."""

    model: str
    contexts: tuple[int, ...] = (4096,)
    modes: tuple[str, ...] = DEFAULT_MODES
    decode: int = 32
    """Tokens decoded after the prompt (end-of-generation ignored)."""
    runs: int = 1
    chunk_size: int = 32
    mix: tuple[float, float, float] = DEFAULT_MIX
    """F16 / Q4 / Q2 fractions of the context chunks of the "cocktail" mode's fixed plan."""
    threads: int | None = None
    seed: int = 0
    n_gpu_layers: int = 0
    """Layers on the GPU (-1: all); the KV cache goes with them."""
    flash_attn: bool | None = None
    """None: llama.cpp's default (on where supported); the llama-* modes always use it."""

    @classmethod
    def from_args(cls, args: Any, contexts: tuple[int, ...]) -> BenchConfig:
        """From argparse options named like the fields (model None: the embedded default model)."""
        from .models import default_model_path

        return cls(
            model=args.model or str(default_model_path()),
            contexts=contexts,
            modes=tuple(args.modes),
            decode=args.decode,
            runs=args.runs,
            chunk_size=args.chunk_size,
            mix=args.mix,
            threads=args.threads,
            seed=args.seed,
            n_gpu_layers=getattr(args, "n_gpu_layers", 0),
            flash_attn=getattr(args, "flash_attn", None),
        )

    def validate(self) -> None:
        for name in ("decode", "runs", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not self.contexts or any(not isinstance(n, int) or n < 1 for n in self.contexts):
            raise ValueError(f"contexts={self.contexts!r} must be positive token counts")
        bad = [m for m in self.modes if m not in BENCH_MODES]
        if not self.modes or bad:
            raise ValueError(f"modes={self.modes!r}: each must be one of {', '.join(BENCH_MODES)}")
        if (
            isinstance(self.n_gpu_layers, bool)
            or not isinstance(self.n_gpu_layers, int)
            or self.n_gpu_layers < -1
        ):
            raise ValueError(f"n_gpu_layers={self.n_gpu_layers!r} must be -1 (all) or a layer count")
        if len(self.mix) != 3 or any(not 0.0 <= f <= 1.0 for f in self.mix) or abs(sum(self.mix) - 1) > 1e-6:
            raise ValueError(f"mix={self.mix!r} must be 3 fractions (f16, q4, q2) in [0, 1] summing to 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads!r} must be a positive integer")


def filler(n_words: int, seed: int) -> str:
    """Seeded sentences of ten words from `WORDS`, at least ``n_words`` words."""
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(n_words // 10 + 1):
        words = rng.choice(WORDS, size=10)
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def context_of(llm: Any, n_tokens: int, seed: int) -> str:
    """Filler text of exactly n_tokens tokens (when the tokenizer allows it) tokenized as Llama.ask does."""
    n_words = n_tokens
    ids = llm.tokenize(filler(n_words, seed).encode(), add_bos=False, special=False)
    while len(ids) < n_tokens:  # a tokenizer with short tokens needs fewer words
        n_words *= 2
        ids = llm.tokenize(filler(n_words, seed).encode(), add_bos=False, special=False)
    for cut in range(n_tokens, max(n_tokens - 16, 0), -1):
        text = llm.detokenize(ids[:cut]).decode("utf-8", errors="ignore")
        if len(llm.tokenize(text.encode(), add_bos=False, special=False)) == n_tokens:
            return str(text)
    return str(llm.detokenize(ids[:n_tokens]).decode("utf-8", errors="ignore"))


def mixed_plan(n_tokens: int, chunk_size: int, mix: tuple[float, float, float], seed: int) -> Plan:
    """A plan with ``mix`` F16 / Q4 / Q2 fractions of the chunks at seeded random places."""
    n_chunks = n_tokens // chunk_size
    n_f16 = round(mix[0] * n_chunks)
    n_q4 = min(round(mix[1] * n_chunks), n_chunks - n_f16)
    precisions = ["f16"] * n_f16 + ["q4"] * n_q4 + ["q2"] * (n_chunks - n_f16 - n_q4)
    np.random.default_rng(seed).shuffle(precisions)
    return Plan.from_precisions(precisions, chunk_size=chunk_size, n_context_tokens=n_tokens)


def run_mode(config: BenchConfig, mode: str, depth: int) -> list[dict[str, Any]]:
    """Records (BENCH.md) of one mode at one context length: prefill and decode tokens/s, compaction ms."""
    from .llama import Llama

    query_margin = 256  # BOS + the query's tokens, with room to spare
    extra: dict[str, Any] = {}
    if mode in LLAMA_KV_TYPES:
        extra = dict(type_k=LLAMA_KV_TYPES[mode], type_v=LLAMA_KV_TYPES[mode], flash_attn=True)
    elif config.flash_attn is not None:
        extra = dict(flash_attn=config.flash_attn)
    llm = Llama(
        config.model,
        n_ctx=depth + query_margin + config.decode,
        n_batch=512,
        n_threads=config.threads,
        kv_mode="f16" if mode in LLAMA_KV_TYPES else mode,
        swa_full=False,  # every mode: sliding-window layers hold only their window (llama.cpp's smallest)
        n_gpu_layers=config.n_gpu_layers,
        verbose=False,
        **extra,
    )
    try:
        context = context_of(llm, depth, config.seed)
        n_ctx_tokens = len(llm.tokenize(context.encode(), add_bos=False, special=False))
        plan = None
        if mode in ("q4", "q2"):
            plan = Plan.uniform(n_ctx_tokens, config.chunk_size, mode)
        elif mode == "cocktail":
            plan = mixed_plan(n_ctx_tokens, config.chunk_size, config.mix, config.seed)
        runs = [
            llm.ask(context, QUERY, plan=plan, max_tokens=config.decode, ignore_eos=True)
            for _ in range(config.runs)
        ]
        kv = llm.kv_bytes()
        n_threads = llm.context_params.n_threads
    finally:
        llm.close()
    base = {
        "model": Path(config.model).stem,
        "backend": "cpu" if config.n_gpu_layers == 0 else "cuda",
        "kv_mode": mode.removeprefix("llama-"),
        "impl": "llama.cpp" if mode == "f16" or mode in LLAMA_KV_TYPES else "ours",
        "mix": None if plan is None else plan.fractions,
        "depth": n_ctx_tokens,
        "kv_bytes": kv["llama_cache"] + kv["regions"],
        "kv_bytes_llama_cache": kv["llama_cache"],
        "kv_bytes_regions": kv["regions"],
        "n_threads": n_threads,
    }

    def record(metric: str, values: list[float]) -> dict[str, Any]:
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
        record("prefill_tokens_per_s", [n_prompt / a.timings["prefill_s"] for a in runs]),
        record("decode_tokens_per_s", [a.timings["n_decoded"] / a.timings["decode_s"] for a in runs]),
        record("ms_per_token", [1000 * a.timings["decode_s"] / a.timings["n_decoded"] for a in runs]),
        record("ms_per_token_median_step", [1000 * a.timings["decode_step_median_s"] for a in runs]),
    ]
    if plan is not None:
        out.append(record("compaction_ms", [1000 * a.timings["compaction_s"] for a in runs]))
        out.append(record("release_ms", [1000 * a.timings["release_s"] for a in runs]))
    return out


def run(config: BenchConfig, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every context length × mode of ``config``; ``progress`` gets one line per finished pair."""
    config.validate()
    records: list[dict[str, Any]] = []
    for depth in config.contexts:
        for mode in config.modes:
            start = time.perf_counter()
            records += run_mode(config, mode, depth)
            if progress is not None:
                progress(f"depth {depth} {mode}: done in {time.perf_counter() - start:.1f} s")
    return records


def markdown(records: list[dict[str, Any]]) -> str:
    """One table row per (depth, kv_mode): KV MiB after the answer, prefill t/s, compaction (+ staging
    release) ms, decode t/s, ms per token (all decode steps) and the median step's ms (medians over runs;
    "—" where the records predate the median step)."""
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for r in records:
        key = (r["depth"], r["kv_mode"])
        rows.setdefault(
            key, dict(kv=r["kv_bytes"], regions=r["kv_bytes_regions"], cache=r["kv_bytes_llama_cache"])
        )
        rows[key][r["metric"]] = r["value"]
    lines = [
        "| depth | kv_mode | KV MiB = llama.cpp cache + regions | prefill t/s | compaction + release ms "
        "| decode t/s | ms/token | median step ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (depth, mode), v in rows.items():  # in the order measured
        comp = f"{v['compaction_ms']:.1f} + {v.get('release_ms', 0.0):.1f}" if "compaction_ms" in v else "—"
        mib = f"{v['kv'] / 2**20:.1f} = {v['cache'] / 2**20:.1f} + {v['regions'] / 2**20:.2f}"
        step = f"{v['ms_per_token_median_step']:.2f}" if "ms_per_token_median_step" in v else "—"
        decode = f"{v['decode_tokens_per_s']:.1f} | {v['ms_per_token']:.2f} | {step}"
        speeds = f"{v['prefill_tokens_per_s']:.0f} | {comp} | {decode}"
        lines.append(f"| {depth} | {mode} | {mib} | {speeds} |")
    return "\n".join(lines) + "\n"


def _commit() -> str:
    """Short git commit of the package's checkout; the package version when it is not one."""
    from . import _native

    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        done = None
    if done is not None and done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    return f"cocktail-gguf {_native.version()}"


def _machine() -> str:
    """ "<GPU description>, N cores" when a GPU is visible to the library, else "<cpu>, N cores | CPU"."""
    from . import _native

    gpus = [str(d.get("description")) for d in _native.devices() if d.get("type") == "gpu"]
    if gpus:
        return f"{', '.join(gpus)}, {os.cpu_count()} cores"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores | CPU"


def result_document(bench: str, records: list[dict[str, Any]], command: str) -> dict[str, Any]:
    """The BENCH.md envelope: bench, commit, machine, command, date, records."""
    return {
        "bench": bench,
        "commit": os.environ.get("COCKTAIL_COMMIT") or _commit(),
        "machine": _machine(),
        "command": command,
        "date": datetime.date.today().isoformat(),
        "records": records,
    }


# --- `cocktail-gguf bench` --------------------------------------------------------------------
def parse_modes(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated kv modes (each once, in the given order)."""
    modes = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in modes if m not in BENCH_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"{text!r}: modes are a comma list of {', '.join(BENCH_MODES)}")
    return modes


def parse_mix(text: str) -> tuple[float, float, float]:
    """argparse type: "f16,q4,q2" fractions of the context chunks, e.g. 0.1,0.3,0.6."""
    try:
        mix = tuple(float(x) for x in text.split(","))
    except ValueError:
        mix = ()
    if len(mix) != 3 or any(not 0.0 <= f <= 1.0 for f in mix) or abs(sum(mix) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"{text!r} is not 3 fractions f16,q4,q2 in [0, 1] summing to 1")
    return (mix[0], mix[1], mix[2])


def _cmd_bench(args: argparse.Namespace) -> int:
    config = BenchConfig.from_args(args, (args.context_tokens,))
    if not Path(config.model).is_file():
        print(f"cocktail-gguf bench: --model {config.model!r} is not a file", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        records = run(config, progress=progress)
    except (ValueError, RuntimeError) as exc:  # a model llama.cpp cannot load, or one a mode refuses
        print(f"cocktail-gguf bench: {exc}", file=sys.stderr)
        return 2
    if args.json:
        command = " ".join(["cocktail-gguf", *sys.argv[1:]])
        print(json.dumps(result_document("cocktail_gguf_bench", records, command), indent=2))
        return 0
    print(f"{Path(config.model).name}, {config.decode} decoded tokens, median of {config.runs} run(s)")
    if "cocktail" in config.modes:
        f16, q4, q2 = config.mix
        print(
            f"cocktail = a fixed plan of {f16:.0%} F16 / {q4:.0%} Q4 / {q2:.0%} Q2 chunks (speed, not search)"
        )
    print(markdown(records), end="")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Registers the `bench` subcommand."""
    from .planner_cli import _gpu_layers, _positive_int

    p = sub.add_parser(
        "bench",
        help="prefill / compaction / decode speed and KV bytes per kv_mode on a synthetic context",
        description="For a synthetic context of --context-tokens tokens and each of --modes: prefill "
        "tokens/s, compaction ms, decode tokens/s and allocated KV bytes (Llama.kv_bytes()). cocktail runs a "
        "fixed plan (--mix), so this measures speed, not the planner's search.",
    )
    p.add_argument("--model", "-m", help="GGUF path (default: the embedded gemma-3-270m Q4_K_M)")
    p.add_argument("--context-tokens", type=_positive_int, default=4096, help="context length (tokens)")
    p.add_argument(
        "--modes",
        type=parse_modes,
        default=DEFAULT_MODES,
        help="comma list of f16, q4, q2, cocktail and llama.cpp's own quantized caches llama-q8_0, "
        "llama-q4_0 (default: f16,q4,q2,cocktail)",
    )
    p.add_argument("--decode", "-n", type=_positive_int, default=32, help="tokens decoded per run")
    p.add_argument("--runs", type=_positive_int, default=1, help="runs per mode (median reported)")
    p.add_argument("--chunk-size", type=_positive_int, default=32)
    p.add_argument(
        "--mix",
        type=parse_mix,
        default=DEFAULT_MIX,
        help="cocktail's f16,q4,q2 chunk fractions (0.1,0.3,0.6)",
    )
    p.add_argument("--threads", type=_positive_int, default=os.cpu_count() or 1, help="default: all cores")
    p.add_argument("--seed", type=int, default=0, help="filler text and cocktail chunk placement")
    p.add_argument(
        "--n-gpu-layers",
        type=_gpu_layers,
        default=0,
        help="model layers on the GPU, their KV cache with them (-1: all; CUDA builds)",
    )
    p.add_argument(
        "--flash-attn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flash attention on/off (default: llama.cpp's choice; the llama-* modes always use it)",
    )
    p.add_argument("--json", action="store_true", help="the records as JSON (format: shared/BENCH.md)")
    p.set_defaults(func=_cmd_bench)
