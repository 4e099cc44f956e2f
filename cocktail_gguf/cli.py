"""`cocktail-gguf` command line: info, generate, plan, convert-encoder (registered in `_SUBCOMMANDS`)."""

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


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_info, _add_generate, _add_planner]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cocktail-gguf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
