"""Multi-turn chat with the segmented cache: each turn is planned for its own last user message (never decoded
from a cache planned for an older query), with or without the kept F16 copy of the context."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocktail_gguf import Llama

SYSTEM = " ".join(
    f"fact {i}: the box number {i} holds {('pens', 'keys', 'coins', 'maps')[i % 4]}." for i in range(40)
)


def _turns(llm: Llama) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}]
    out = []
    for question in ("what does box 7 hold?", "and which box holds maps?"):
        messages.append({"role": "user", "content": question})
        response = llm.create_chat_completion(messages, max_tokens=6, temperature=0.0)
        out.append(response)
        messages.append({"role": "assistant", "content": response["choices"][0]["message"]["content"]})
    return out


def test_each_turn_replans_for_its_own_query(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    kw = {"n_ctx": 2048, "verbose": False, "kv_mode": "cocktail", "encoder": "bm25", "chunk_size": 16}
    plain = Llama(str(tiny_models["tiny-gqa"]), **kw, **llama_kwargs)
    kept = Llama(str(tiny_models["tiny-gqa"]), **kw, keep_f16_context=True, **llama_kwargs)
    first, second = _turns(plain)
    p1, p2 = first["cocktail"]["plan"], second["cocktail"]["plan"]
    assert p1["query"] == "what does box 7 hold?" and p2["query"] == "and which box holds maps?"
    # the second turn's context is the first exchange plus everything before it, planned anew
    assert p2["n_context_tokens"] > p1["n_context_tokens"]
    assert plain.cocktail_plan is not None and plain.cocktail_plan.query == p2["query"]
    # keep_f16_context restores the F16 copy instead of prefilling again: same plans, same answers
    k1, k2 = _turns(kept)
    assert kept.f16_snapshot_bytes > 0
    for ours, ref in ((k1, first), (k2, second)):
        assert ours["cocktail"]["plan"]["precisions"] == ref["cocktail"]["plan"]["precisions"]
        assert ours["choices"][0]["message"]["content"] == ref["choices"][0]["message"]["content"]
    plain.close()
    kept.close()


def test_cocktail_query_and_its_errors(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    llm = Llama(str(tiny_models["tiny-gqa"]), n_ctx=2048, verbose=False, kv_mode="q4", **llama_kwargs)
    messages = [{"role": "user", "content": SYSTEM + " which box holds keys?"}]
    r = llm.create_chat_completion(messages, max_tokens=4, cocktail_query="which box holds keys?")
    assert r["cocktail"]["plan"]["query"] == "which box holds keys?"
    assert r["cocktail"]["plan"]["n_context_tokens"] > 100  # the long part before the query is the context
    with pytest.raises(ValueError, match="does not occur in the prompt"):
        llm.create_chat_completion(messages, max_tokens=4, cocktail_query="not in there")
    with pytest.raises(ValueError, match="grammar"):
        llm.create_completion(SYSTEM + "\nwhich?", max_tokens=4, grammar=object())
    with pytest.raises(ValueError, match="no user message"):
        llm.create_chat_completion([{"role": "system", "content": "hi"}], max_tokens=4)
    f16 = Llama(str(tiny_models["tiny-gqa"]), n_ctx=512, verbose=False, **llama_kwargs)
    with pytest.raises(ValueError, match="cocktail_query='x' given with kv_mode='f16'"):
        f16.create_completion("hello", max_tokens=2, cocktail_query="x")
    llm.close()
    f16.close()
