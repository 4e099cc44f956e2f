"""The real model: gemma-3-270m (iSWA) finds a passkey in ~4K tokens with its context at 2 bits, except the
passkey's own chunk at F16 (segmented cache on the full-attention layers; sliding-window layers as is)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cocktail_gguf import Llama, segmented_cache
from cocktail_gguf.plan import Plan

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("COCKTAIL_TEST_N_GPU_LAYERS", "0") != "0", reason="segmented cache v1: CPU only"
    ),
]

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY = "68431"
NEEDLE = f"The pass key is {KEY}. Remember it. {KEY} is the pass key. "
QUERY = "\nWhat is the pass key? The pass key is"
CHUNK = 32


def test_passkey_in_4k_tokens_with_q2_context(gemma_path: Path, llama_kwargs: dict) -> None:
    before = INTRO + FILLER * 70
    context = before + NEEDLE + FILLER * 100
    llm = Llama(
        str(gemma_path), n_ctx=4608, verbose=False, kv_mode="cocktail", chunk_size=CHUNK, **llama_kwargs
    )

    def n_tokens(text: str) -> int:
        return len(llm.tokenize(text.encode(), add_bos=False, special=False))

    n, start, end = n_tokens(context), n_tokens(before), n_tokens(before + NEEDLE)
    assert 3800 < n < 4400
    # chunks touching the needle (one token of slack for merges at its edges) stay F16, the rest 2-bit
    precisions = tuple(
        "f16" if c * CHUNK <= end and (c + 1) * CHUNK >= start - 1 else "q2" for c in range(n // CHUNK)
    )
    plan = Plan(CHUNK, precisions, n)
    assert plan.counts["f16"] <= 2 and plan.counts["q2"] >= 120

    staging = llm.kv_bytes()["llama_cache"]
    answer = llm.ask(context, QUERY, plan=plan, max_tokens=6)
    assert KEY in answer.text, answer.text

    # the F16 staging cells of the 3 full-attention layers are released (head_dim 256, 1 KV head, K+V fp16);
    # down to the size of the sliding-window cache (window 512 + ubatch 512 cells, swa_full=False with a
    # segmented kv_mode): llama.cpp sizes that one from the full-attention cache's size
    cells = segmented_cache.kv_cells(llm._ctx.ctx)
    assert (cells.full, cells.size) == (4608, 1024)
    released = llm.kv_bytes()["llama_cache"]
    assert staging - released == (4608 - 1024) * 3 * 2 * 256 * 2

    regions = llm.kv_regions()
    n_layer = 18
    assert 0 < len(regions) < n_layer, "only the full-attention layers of the iSWA model are segmented"
    for r in regions.values():
        assert r.compacted
        assert r.n_tokens == {p: c * CHUNK for p, c in plan.counts.items()}

    # the next ask grows it back (the sliding-window cache keeps its size) and releases it again
    again = llm.ask(context[: len(context) // 4], QUERY, max_tokens=2, mode="q4")
    assert again.plan is not None and llm.kv_bytes()["llama_cache"] == released
    llm.reset()
    assert llm.kv_bytes()["llama_cache"] == staging
    llm.close()
