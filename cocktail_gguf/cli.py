"""`cocktail-gguf` command line: info, generate, ask, chat, bench, serve, plan, convert-encoder
(registered in `_SUBCOMMANDS`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_PROMPT = "The three most useful things to know about llamas are"


def _cmd_info(args: argparse.Namespace) -> int:
    from . import _native

    info: dict[str, Any] = {
        "cocktail_gguf": _native.version(),
        "build": _native.build_info(),
        "devices": _native.devices(),
    }
    import llama_cpp

    info["llama_cpp_python"] = llama_cpp.__version__
    info["system_info"] = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    build = info["build"]
    print(f"cocktail-gguf {info['cocktail_gguf']}  (llama-cpp-python {info['llama_cpp_python']} code)")
    print(f"  upstream:  {build['upstream']}  ggml {build['ggml_version']}")
    print(f"  patches:   {build['patches'] or '(none)'}")
    print(f"  CUDA:      {'on' if build['cuda'] else 'off'}")
    print(f"  library:   {build['library']}")
    print("  devices:")
    for dev in info["devices"]:
        mem = f"{dev['memory_total'] / 2**30:.1f} GiB" if dev["memory_total"] else "-"
        print(f"    {dev['type']:>4}  {dev['name']}: {dev['description']}  ({mem})")
    print(f"  system:    {info['system_info']}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .llama import Llama
    from .models import default_model_path

    model = args.model or str(default_model_path())
    llm = Llama(model, n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers, seed=args.seed, verbose=args.verbose)
    stream = llm.create_completion(
        args.prompt, max_tokens=args.max_tokens, temperature=args.temperature, stream=True
    )
    if not args.json:
        sys.stdout.write(args.prompt)
    text = []
    for chunk in stream:
        piece = chunk["choices"][0]["text"]
        text.append(piece)
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if args.json:
        print(json.dumps({"model": model, "prompt": args.prompt, "text": "".join(text)}))
    else:
        sys.stdout.write("\n")
    return 0


def add_llama_options(p: argparse.ArgumentParser) -> None:
    """The options `llama_from_args` reads: model, Cocktail KV cache, threads, GPU layers, llama.cpp's log."""
    from .llama import KV_MODES
    from .planner_cli import _gpu_layers, _number_in_unit, _positive_int

    p.add_argument("--model", "-m", help="GGUF path (default: the embedded gemma-3-270m Q4_K_M)")
    p.add_argument("--kv-mode", default="cocktail", choices=KV_MODES)
    p.add_argument("--chunk-size", type=_positive_int, default=32)
    p.add_argument("--alpha", type=_number_in_unit, default=0.6, help="larger -> more Q2 chunks")
    p.add_argument("--beta", type=_number_in_unit, default=0.1, help="larger -> more F16 chunks")
    p.add_argument("--encoder", "-e", default=None, help="minilm (default) | minilm-gguf | bm25 | path")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument(
        "--n-gpu-layers",
        "-ngl",
        type=_gpu_layers,
        default=0,
        help="model layers on the GPU with their KV cache (-1 = all; CUDA builds; default 0)",
    )
    p.add_argument("--verbose", action="store_true", help="llama.cpp's own log on stderr")


def llama_from_args(args: argparse.Namespace, model: str, n_ctx: int) -> Any:
    """`cocktail_gguf.Llama` built from the options of `add_llama_options`."""
    from .llama import Llama

    return Llama(
        model,
        n_ctx=n_ctx,
        n_threads=args.threads,
        n_gpu_layers=args.n_gpu_layers,
        kv_mode=args.kv_mode,
        chunk_size=args.chunk_size,
        alpha=args.alpha,
        beta=args.beta,
        encoder=args.encoder,
        verbose=args.verbose,
    )


def _cmd_ask(args: argparse.Namespace) -> int:
    from .llama import Llama
    from .models import default_model_path
    from .planner_cli import _read_context

    context = _read_context(args.context)
    model = args.model or str(default_model_path())
    n_ctx = args.n_ctx
    if n_ctx == 0:  # just large enough: context + query + answer
        vocab = Llama(model, vocab_only=True, verbose=False)
        n_prompt = len(vocab.tokenize(context.encode(), add_bos=True)) + len(
            vocab.tokenize(args.query.encode())
        )
        vocab.close()
        n_ctx = n_prompt + args.max_tokens + 16
    llm = llama_from_args(args, model, n_ctx)
    try:
        answer = llm.ask(context, args.query, max_tokens=args.max_tokens, temperature=args.temperature)
    except ValueError as exc:
        print(f"cocktail-gguf ask: {exc}", file=sys.stderr)
        return 2
    kv_bytes = llm.kv_bytes()
    result: dict[str, Any] = {
        "text": answer.text,
        "kv_mode": args.kv_mode,
        "n_prompt_tokens": answer.n_prompt_tokens,
        "n_generated_tokens": len(answer.tokens),
        "timings": answer.timings,
        "plan": answer.plan.to_dict(include_texts=False) if answer.plan is not None else None,
        "kv_bytes": kv_bytes,
    }
    llm.close()
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(answer.text.strip())
    t = answer.timings
    print(
        f"[{args.kv_mode}] {answer.n_prompt_tokens} prompt tokens: plan {t['plan_s']:.2f} s, "
        f"prefill {t['prefill_s']:.2f} s, compaction {t['compaction_s'] * 1e3:.0f} ms, "
        f"{len(answer.tokens)} tokens in {t['decode_s']:.2f} s",
        file=sys.stderr,
    )
    if answer.plan is not None:
        print(f"plan: {answer.plan.summary()}", file=sys.stderr)
        print(f"regions: {kv_bytes['regions'] / 2**20:.2f} MiB", file=sys.stderr)
    return 0


def _add_ask(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="answer a query about a long context with the Cocktail KV cache")
    add_llama_options(p)
    p.add_argument("--context", "-c", required=True, help="context text file ('-' = stdin)")
    p.add_argument("--query", "-q", required=True)
    p.add_argument("--max-tokens", "-n", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--n-ctx", type=int, default=0, help="context window (0 = sized to the prompt)")
    p.add_argument("--json", action="store_true", help="answer, plan, timings and KV bytes as JSON")
    p.set_defaults(func=_cmd_ask)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, build options, devices")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="complete a prompt (default model: gemma-3-270m from PyPI)")
    p.add_argument("--model", "-m", help="GGUF path (default: the embedded gemma-3-270m Q4_K_M)")
    p.add_argument("--prompt", "-p", default=DEFAULT_PROMPT)
    p.add_argument("--max-tokens", "-n", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--n-gpu-layers", "-ngl", type=int, default=-1, help="layers on the GPU (-1 = all)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verbose", action="store_true", help="llama.cpp's own log on stderr")
    p.set_defaults(func=_cmd_generate)


def _add_planner(sub: argparse._SubParsersAction) -> None:
    from . import planner_cli

    planner_cli.add_parser(sub)


def _add_chat(sub: argparse._SubParsersAction) -> None:
    from . import chat_cli

    chat_cli.add_parser(sub)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from . import kv_bench

    kv_bench.add_parser(sub)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from . import demo

    demo.add_parser(sub)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .eval import cli as eval_cli

    eval_cli.add_parser(sub)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from . import server
    except ImportError as exc:
        print(
            f"cocktail-gguf serve: {exc}; install the server extra: pip install 'cocktail-gguf[server]'",
            file=sys.stderr,
        )
        return 1
    return server.main(args.passthrough, prog="cocktail-gguf serve")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    # the server's options come from its pydantic settings (cocktail_gguf.server), parsed there, so that
    # the other commands do not need the server extra
    p = sub.add_parser(
        "serve", add_help=False, help="OpenAI-compatible HTTP server (`cocktail-gguf serve --help`)"
    )
    p.set_defaults(func=_cmd_serve, passthrough=[])


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_info,
    _add_generate,
    _add_demo,
    _add_ask,
    _add_chat,
    _add_bench,
    _add_eval,
    _add_serve,
    _add_planner,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cocktail-gguf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not hasattr(args, "passthrough"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if hasattr(args, "passthrough"):
        args.passthrough = rest
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
