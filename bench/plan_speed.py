"""Planner speed: plan_ms for a context of 8K / 32K LLM tokens with MiniLM (sentence-transformers),
MiniLM as GGUF through our llama.cpp, and BM25. Target: 32K tokens (1 000 chunks) with MiniLM ≤ 10 s
on 2 CPU cores.

Each record times `plan_context` on token ids (gemma-3-270m tokenizer) with the encoder already
loaded: "cold" = empty embedding cache (every chunk embedded), "warm" = same document, new query
(only the query embedded). Loading times are recorded as `encoder_load_ms`.

    python bench/plan_speed.py [--depths 8192 32768] [--encoders minilm minilm-gguf bm25] [--runs 3]

GPU (CUDA build; bench/device/plan_speed_gpu.sh on the H100): GGUF encoders (minilm-gguf or a .gguf
path) with --gpu-layers -1 --n-batch 2048 --pack-tokens 2048; their embeddings are then also compared
with the same GGUF on the CPU (metric embedding_cos_vs_cpu_min). Target: 32K tokens ≤ 0.3 s on the H100.

Writes bench/results/plan_speed.json (format: shared BENCH.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "plan_speed.json"

# A plain-English word list: chunks tokenize like prose (≈ 1.1 WordPiece tokens per gemma token).
_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have "
    "an they you were her all she there would their we him been has when who will more no if out so said "
    "what up its about into than them can only other new some could time these two may then do first any "
    "my now such like our over man me even most made after also did many before must through back years "
    "where much your way well down should because each just those people how too little state good very "
    "make world still own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take three river "
    "mountain llama village market harvest winter bridge engine letter garden history science music water "
    "council teacher doctor island forest station morning evening journey question answer number system"
).split()


def synthetic_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    sentences = []
    while n_words > 0:
        k = min(n_words, rng.randint(8, 22))
        words = [rng.choice(_WORDS) for _ in range(k)]
        sentences.append(" ".join(words).capitalize() + ".")
        n_words -= k
    return " ".join(sentences)


def context_ids(llm: Any, n_tokens: int) -> list[int]:
    ids: list[int] = []
    words = n_tokens
    while len(ids) < n_tokens:
        ids = llm.tokenize(synthetic_text(words).encode(), add_bos=False, special=False)
        words = int(words * 1.3) + 16
    return list(ids[:n_tokens])


def _load_average() -> float | None:
    """1-minute load average: other processes on the cores inflate wall times."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU ({name})"


def gpu_name() -> str:
    """ ", GPU <name>" for the first GPU our library sees (a CUDA build), else ""."""
    from cocktail_gguf import _native

    gpus = [d for d in _native.devices() if d.get("type") == "gpu"]
    return f", GPU {gpus[0]['description']}" if gpus else ""


def commit() -> str:
    if os.environ.get("COMMIT"):  # the device machine's copy has no .git
        return os.environ["COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "uncommitted"
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--encoders", nargs="+", default=["minilm", "minilm-gguf", "bm25"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", help="GGUF whose tokenizer chunks the context (default: gemma-3-270m)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--gpu-layers", type=int, default=0, help="GGUF encoders: layers on the GPU (-1: all)"
    )
    parser.add_argument("--n-batch", type=int, default=None, help="GGUF encoders: n_batch (default 256)")
    parser.add_argument("--pack-tokens", type=int, default=None, help="GGUF encoders: tokens per decode")
    parser.add_argument("--n-threads", type=int, default=None, help="GGUF encoders: CPU threads per context")
    parser.add_argument(
        "--n-contexts", type=int, default=None, help="GGUF encoders: contexts decoding packs in threads"
    )
    parser.add_argument(
        "--flash-attn",
        choices=["on", "off"],
        default=None,
        help="GGUF encoders: llama.cpp's fused attention (default: off)",
    )
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cocktail_gguf import Llama
    from cocktail_gguf.encoders import EmbeddingCache, GGUFEncoder, get_encoder, minilm_gguf_path
    from cocktail_gguf.models import default_model_path
    from cocktail_gguf.planner import plan_context

    model = args.model or str(default_model_path())
    llm = Llama(model, vocab_only=True, verbose=False)
    model_name = "gemma-3-270m-q4_k_m" if args.model is None else Path(model).stem
    contexts = {d: context_ids(llm, d) for d in args.depths}
    queries = ["Which river runs past the llama village?", "What did the council decide about the bridge?"]

    load_before = _load_average()
    records: list[dict[str, Any]] = []

    def gguf_options(gpu_layers: int) -> dict[str, Any]:
        opts: dict[str, Any] = {"n_gpu_layers": gpu_layers}
        if args.n_batch is not None:
            opts["n_batch"] = args.n_batch
        if args.pack_tokens is not None:
            opts["pack_tokens"] = args.pack_tokens
        if args.flash_attn is not None:
            opts["flash_attn"] = args.flash_attn == "on"
        if args.n_threads is not None:
            opts["n_threads"] = args.n_threads
        if args.n_contexts is not None:
            opts["n_contexts"] = args.n_contexts
        return opts

    def load(spec: str, gpu_layers: int) -> Any:
        if spec == "minilm-gguf":
            return GGUFEncoder(minilm_gguf_path(), **gguf_options(gpu_layers))
        if spec.endswith(".gguf"):
            return GGUFEncoder(spec, **gguf_options(gpu_layers))
        return get_encoder(spec)

    def is_gguf(spec: str) -> bool:
        return spec == "minilm-gguf" or spec.endswith(".gguf")

    for spec in args.encoders:
        start = time.perf_counter()
        encoder = load(spec, args.gpu_layers)
        load_ms = (time.perf_counter() - start) * 1e3
        on_gpu = is_gguf(spec) and args.gpu_layers != 0 and bool(gpu_name())
        # first call pays lazy initialisation (torch kernels, llama.cpp graph): not part of plan time
        plan_context(contexts[min(contexts)][:256], queries[0], tokenizer=llm, encoder=encoder, cache=None)
        base = {
            "model": model_name,
            "backend": "cuda" if on_gpu else "cpu",
            "kv_mode": "cocktail",
            "impl": "ours",
            "encoder": Path(spec).name if is_gguf(spec) else spec,
            "chunk_size": 32,
        }
        if isinstance(encoder, GGUFEncoder):  # the settings in effect (defaults included)
            base["encoder_settings"] = {
                "n_batch": encoder.llm.n_batch,
                "pack_tokens": encoder.pack_tokens,
                "flash_attn": "on" if encoder.flash_attn else "off",
                "n_threads": encoder.n_threads,
                "n_contexts": encoder.n_contexts,
            }
        records.append(
            {
                **base,
                "mix": None,
                "depth": None,
                "metric": "encoder_load_ms",
                "value": round(load_ms, 1),
                "n_runs": 1,
                "min": round(load_ms, 1),
                "max": round(load_ms, 1),
            }
        )
        for depth, ids in contexts.items():
            for cache_state in ("cold", "warm"):
                times, cpu_times = [], []
                phases: dict[str, list[float]] = {}
                plan = None
                for _run in range(args.runs):
                    cache = EmbeddingCache()
                    if cache_state == "warm":
                        plan_context(
                            ids, queries[1], tokenizer=llm, encoder=encoder, cache=cache, progress=False
                        )
                    before = dict(getattr(encoder, "timings", {}))
                    start, cpu_start = time.perf_counter(), time.process_time()
                    plan = plan_context(
                        ids, queries[0], tokenizer=llm, encoder=encoder, cache=cache, progress=False
                    )
                    times.append((time.perf_counter() - start) * 1e3)
                    cpu_times.append((time.process_time() - cpu_start) * 1e3)
                    for key, total in getattr(encoder, "timings", {}).items():  # GGUF encoders' phases
                        scale = 1e3 if key.endswith("_s") else 1
                        phases.setdefault(key, []).append((total - before[key]) * scale)
                assert plan is not None
                rec = {
                    **base,
                    "mix": plan.fractions,
                    "depth": depth,
                    "metric": "plan_ms",
                    "cache": cache_state,
                    "value": round(statistics.median(times), 1),
                    "n_runs": args.runs,
                    "min": round(min(times), 1),
                    "max": round(max(times), 1),
                    "n_chunks": plan.n_chunks,
                    # process CPU time (all threads): less sensitive to other load than wall time
                    "cpu_ms": round(statistics.median(cpu_times), 1),
                    # the encoder's share (GGUF: ms tokenizing, in llama_decode, fetching; decodes), medians
                    **{
                        f"encoder_{k.removesuffix('_s')}" + ("_ms" if k.endswith("_s") else ""): round(
                            statistics.median(v), 1
                        )
                        for k, v in phases.items()
                    },
                }
                records.append(rec)
                print(
                    f"{spec:12s} depth {depth:6d} {cache_state}: plan {rec['value']:9.1f} ms "
                    f"(min {rec['min']:.1f}, max {rec['max']:.1f}; cpu {rec['cpu_ms']:.0f} ms); "
                    f"counts {plan.counts}"
                    + "".join(f"; {k} {v}" for k, v in rec.items() if k.startswith("encoder_")),
                    flush=True,
                )
        print(f"{spec:12s} load {load_ms:.0f} ms", flush=True)
        if on_gpu:  # the GPU's embeddings against the same GGUF on the CPU, over the chunks of one context
            from cocktail_gguf.planner import as_tokenizer, chunk_texts, split_chunks

            chunks, tail = split_chunks(contexts[min(contexts)], 32)
            texts, _ = chunk_texts(as_tokenizer(llm), chunks, tail)
            cpu = load(spec, 0)
            cos = (encoder.embed(texts) * cpu.embed(texts)).sum(axis=1)
            cpu.close()
            records.append(
                {
                    **base,
                    "mix": None,
                    "depth": None,
                    "metric": "embedding_cos_vs_cpu_min",
                    "value": round(float(cos.min()), 6),
                    "n_runs": 1,
                    "n_texts": len(texts),
                }
            )
            print(f"{spec:12s} GPU vs CPU embeddings: min cosine {cos.min():.6f} over {len(texts)} chunks")

    result = {
        "bench": "plan_speed",
        "commit": commit(),
        "machine": machine() + gpu_name(),
        "command": " ".join(
            ["python", "bench/plan_speed.py", *(a.replace(f"{ROOT}/", "") for a in sys.argv[1:])]
        ),
        "date": datetime.date.today().isoformat(),
        "load_average_1m": {"before": load_before, "after": _load_average()},
        "records": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
