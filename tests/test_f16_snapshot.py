"""keep_f16_context: a host-RAM F16 copy of the context KV that later asks restore (re-planning, no prefill).

A restored copy holds llama.cpp's exact F16 values, so an ask after a restore must equal an ask on a fresh
context (same greedy tokens; logits within F16_LOGIT_TOL: the fresh run evaluates BOS+context+query in one
batch, the kept one in two, which changes llama.cpp's fp summation order only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cocktail_gguf import Llama
from cocktail_gguf.plan import Plan

F16_LOGIT_TOL = 1e-2
CHUNK = 16
CONTEXT = " ".join(f"item{i} is {(i * 37) % 101}" for i in range(60))
QUERIES = (" what is item7? answer:", " which item is 42? answer:")


def _llm(path: Path, llama_kwargs: dict, **kw: object) -> Llama:
    return Llama(
        str(path), n_ctx=1024, verbose=False, kv_mode="cocktail", chunk_size=CHUNK, **llama_kwargs, **kw
    )


def _plans(n: int) -> dict[str, Plan]:
    k = n // CHUNK
    return {
        "mixed": Plan(CHUNK, tuple(("f16", "q4", "q2")[i % 3] for i in range(k)), n),
        "q2": Plan.uniform(n, CHUNK, "q2"),
        "reversed": Plan(CHUNK, tuple(("q2", "q4", "f16")[i % 3] for i in range(k)), n),
    }


@pytest.mark.parametrize("shape", ["tiny-mha", "tiny-gqa"])
def test_restored_context_equals_fresh_prefill(
    tiny_models: dict[str, Path], llama_kwargs: dict, shape: str
) -> None:
    kept = _llm(tiny_models[shape], llama_kwargs, keep_f16_context=True)
    fresh = _llm(tiny_models[shape], llama_kwargs)
    n = len(kept.tokenize(CONTEXT.encode(), add_bos=False))
    first = kept.ask(CONTEXT, QUERIES[0], plan=_plans(n)["mixed"], max_tokens=10, return_logits=True)
    assert first.timings["prefill_s"] > 0 and kept.f16_snapshot_bytes > 0
    for query in QUERIES:
        for name, plan in _plans(n).items():
            got = kept.ask(CONTEXT, query, plan=plan, max_tokens=10, return_logits=True)
            want = fresh.ask(CONTEXT, query, plan=plan, max_tokens=10, return_logits=True)
            assert got.tokens == want.tokens, (query, name)
            assert np.abs(got.logits - want.logits).max() < F16_LOGIT_TOL, (query, name)
            regions = kept.kv_regions()
            assert all(r.n_tokens == {p: c * CHUNK for p, c in plan.counts.items()} for r in regions.values())
        # plain llama.cpp F16 on the same loaded model, from the same copy
        got = kept.ask(CONTEXT, query, mode="f16", max_tokens=10, return_logits=True)
        want = fresh.ask(CONTEXT, query, mode="f16", max_tokens=10, return_logits=True)
        assert got.plan is None and all(not r.compacted for r in kept.kv_regions().values())
        assert got.tokens == want.tokens
        assert np.abs(got.logits - want.logits).max() < F16_LOGIT_TOL
    # a repeated ask from the copy is bit-identical (the same batches run)
    again = kept.ask(CONTEXT, QUERIES[0], plan=_plans(n)["mixed"], max_tokens=10, return_logits=True)
    assert again.tokens == first.tokens and np.array_equal(again.logits, first.logits)
    kept.close()
    fresh.close()


def test_extended_context_reuses_the_copy(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    """A chat-like second turn: the old context is a prefix of the new one; only the rest is evaluated."""
    kept = _llm(tiny_models["tiny-gqa"], llama_kwargs, keep_f16_context=True)
    fresh = _llm(tiny_models["tiny-gqa"], llama_kwargs)
    longer = CONTEXT + " and item99 is 5"
    kept.ask(CONTEXT, QUERIES[0], mode="q4", max_tokens=4)
    size_before = kept.f16_snapshot_bytes
    got = kept.ask(longer, QUERIES[1], mode="q2", max_tokens=10, return_logits=True)
    want = fresh.ask(longer, QUERIES[1], mode="q2", max_tokens=10, return_logits=True)
    assert kept.f16_snapshot_bytes > size_before  # the copy now holds the longer context
    assert got.tokens == want.tokens
    assert np.abs(got.logits - want.logits).max() < F16_LOGIT_TOL
    # an unrelated context does not match the copy: a full prefill, still right
    other = "zzz " * 50
    got = kept.ask(other, QUERIES[0], mode="q4", max_tokens=6)
    assert got.tokens == fresh.ask(other, QUERIES[0], mode="q4", max_tokens=6).tokens
    kept.close()
    fresh.close()


def test_bad_mode_and_option(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="keep_f16_context='yes'"):
        _llm(tiny_models["tiny-gqa"], llama_kwargs, keep_f16_context="yes")
    llm = _llm(tiny_models["tiny-gqa"], llama_kwargs)
    with pytest.raises(ValueError, match="mode='q3'"):
        llm.ask(CONTEXT, QUERIES[0], mode="q3")
    with pytest.raises(ValueError, match="plan given with kv_mode='f16'"):
        llm.ask(CONTEXT, QUERIES[0], mode="f16", plan=Plan.uniform(32, CHUNK, "q2"))
    llm.close()


@pytest.mark.parametrize("mode", ["f16", "mixed"])
def test_next_token_logprobs_match_decode_steps(
    tiny_models: dict[str, Path], llama_kwargs: dict, mode: str
) -> None:
    """Teacher-forced scores of a batch after the compacted context = the decode steps' own logits
    (the batch path of the mixed-region op against its one-token path)."""
    llm = _llm(tiny_models["tiny-gqa"], llama_kwargs, keep_f16_context=True)
    ids = llm.tokenize(CONTEXT.encode(), add_bos=False)
    query = llm.tokenize(QUERIES[0].encode(), add_bos=False)
    plan = _plans(len(ids))["mixed"] if mode == "mixed" else None
    call_mode = "f16" if plan is None else "cocktail"
    ans = llm.ask_tokens(ids, query, plan, mode=call_mode, max_tokens=24, ignore_eos=True, return_logits=True)
    assert len(ans.tokens) == 24
    assert llm.load_context(ids, query, plan, mode=call_mode) is plan
    got = llm.next_token_logprobs(ans.tokens, batch_size=5)
    rows = ans.logits[1:].astype(np.float64)
    top = rows.max(axis=1, keepdims=True)
    want = rows[np.arange(23), ans.tokens[1:]] - (np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0])
    assert got.shape == (23,)
    assert np.abs(got - want).max() < F16_LOGIT_TOL
    with pytest.raises(ValueError, match="batch_size=0"):
        llm.next_token_logprobs(ans.tokens, batch_size=0)
    llm.close()


def test_prefill_progress_bar_counts_every_token(
    tiny_models: dict[str, Path], llama_kwargs: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    llm = _llm(tiny_models["tiny-gqa"], llama_kwargs, progress=True, n_batch=64)
    quiet = _llm(tiny_models["tiny-gqa"], llama_kwargs, progress=False, n_batch=64)
    with_bar = llm.ask(CONTEXT, QUERIES[0], mode="q4", max_tokens=6)
    assert "prefill" in capsys.readouterr().err
    without = quiet.ask(CONTEXT, QUERIES[0], mode="q4", max_tokens=6)
    assert "prefill" not in capsys.readouterr().err
    assert with_bar.tokens == without.tokens  # same batches, same answer
    with pytest.raises(ValueError, match="progress='yes'"):
        _llm(tiny_models["tiny-gqa"], llama_kwargs, progress="yes")
    llm.close()
    quiet.close()
