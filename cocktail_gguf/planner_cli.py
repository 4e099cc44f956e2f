"""`cocktail-gguf plan` (chunk precisions for a context and query) and `cocktail-gguf convert-encoder`.

`add_parser(subparsers)` registers both; cli.py lists it in `_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .planner import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_CHUNK_SIZE


def _read_context(arg: str) -> str:
    if arg == "-":
        return sys.stdin.read()
    path = Path(arg)
    if not path.is_file():
        raise SystemExit(f"cocktail-gguf plan: --context {arg!r} is not a file")
    return path.read_text(encoding="utf-8", errors="replace")


def _load_tokenizer(model: str | None) -> Any:
    from .llama import Llama
    from .models import default_model_path

    path = model or str(default_model_path())
    return Llama(path, vocab_only=True, verbose=False)


def _gguf_encoder_on_gpu(spec: str | None, n_gpu_layers: int) -> Any:
    """The GGUF encoder ``spec`` names (minilm-gguf or a .gguf file) with n_gpu_layers on the GPU."""
    from .encoders import GGUFEncoder, gguf_encoder_path

    path = gguf_encoder_path(spec) if spec is not None else None
    if path is not None:
        return GGUFEncoder(path, n_gpu_layers=n_gpu_layers)
    raise ValueError(f"--encoder-gpu-layers needs a GGUF encoder (minilm-gguf or a .gguf file), not {spec!r}")


def _cmd_plan(args: argparse.Namespace) -> int:
    from .planner import plan_context

    context = _read_context(args.context)
    llm = _load_tokenizer(args.model)
    start = time.perf_counter()
    try:
        gpu_encoder = None
        if args.encoder_gpu_layers is not None:
            gpu_encoder = _gguf_encoder_on_gpu(args.encoder, args.encoder_gpu_layers)
        try:
            plan = plan_context(
                context,
                args.query,
                tokenizer=llm,
                encoder=gpu_encoder or args.encoder,
                chunk_size=args.chunk_size,
                alpha=args.alpha,
                beta=args.beta,
                progress=False if args.no_progress else None,
            )
        finally:
            if gpu_encoder is not None:  # its contexts' GPU buffers and decode threads
                gpu_encoder.close()
        plan_ms = (time.perf_counter() - start) * 1e3
        if args.html:
            plan.save_html(args.html)
        if args.png:
            plan.save_similarity_png(args.png)
    except (ValueError, ImportError) as exc:
        print(f"cocktail-gguf plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = plan.to_dict(include_texts=args.json_texts)
        data["plan_ms"] = round(plan_ms, 1)
        print(json.dumps(data, ensure_ascii=False))
        return 0
    print(plan.summary())
    print(f"chunks (F = F16, 4 = Q4, 2 = Q2): {plan.precision_string() or '(none)'}")
    print(f"planned in {plan_ms:.0f} ms (encoder loading included)")
    for label, path in (("html", args.html), ("png", args.png)):
        if path:
            print(f"{label}: {path}")
    return 0


def _cmd_convert_encoder(args: argparse.Namespace) -> int:
    from .bert_to_gguf import convert_bert_to_gguf
    from .encoders import default_minilm_path

    source = Path(args.source) if args.source else default_minilm_path()
    out = convert_bert_to_gguf(source, args.output, outtype=args.outtype)
    print(f"{source} -> {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.outtype})")
    return 0


def _number_in_unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not in [0, 1]")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _gpu_layers(text: str) -> int:
    """argparse type of --n-gpu-layers: -1 (all layers) or a layer count."""
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1:
        raise argparse.ArgumentTypeError(f"{text!r} is not -1 (all layers) or a layer count")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Registers the `plan` and `convert-encoder` subcommands."""
    p = sub.add_parser(
        "plan",
        help="per-chunk KV precision (F16/Q4/Q2) of a context for a query",
        description="Chunk the context on the model's tokens, score each chunk against the query, "
        "and assign F16 / Q4 / Q2 by the Cocktail thresholds.",
    )
    p.add_argument("--model", "-m", help="GGUF whose tokenizer chunks the context (default: gemma-3-270m)")
    p.add_argument("--context", "-c", required=True, help="context text file ('-' = stdin)")
    p.add_argument("--query", "-q", required=True)
    p.add_argument("--chunk-size", type=_positive_int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--alpha", type=_number_in_unit, default=DEFAULT_ALPHA, help="larger → more Q2 chunks")
    p.add_argument("--beta", type=_number_in_unit, default=DEFAULT_BETA, help="larger → more F16 chunks")
    p.add_argument(
        "--encoder",
        "-e",
        default=None,
        help="minilm (default) | minilm-gguf | bm25 | path to a .gguf encoder | path to a model folder",
    )
    p.add_argument(
        "--encoder-gpu-layers",
        type=_gpu_layers,
        default=None,
        help="a GGUF encoder's layers on the GPU (-1: all; CUDA build), with 1536-token packs decoded by 3 "
        "llama contexts",
    )
    p.add_argument("--html", help="write the context coloured by precision to this HTML file")
    p.add_argument("--png", help="write the similarity-per-chunk plot to this PNG file (matplotlib)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--json-texts", action="store_true", help="with --json: include the chunk texts")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_plan)

    c = sub.add_parser(
        "convert-encoder",
        help="convert a BERT sentence-transformers folder (MiniLM, Contriever) to a GGUF encoder",
    )
    c.add_argument("--source", "-s", help="model folder (default: the packaged all-MiniLM-L6-v2)")
    c.add_argument("--output", "-o", required=True, help="GGUF file to write")
    c.add_argument("--outtype", choices=("f32", "f16", "q8_0"), default="f16")
    c.set_defaults(func=_cmd_convert_encoder)
