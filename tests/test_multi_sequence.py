"""Several sequences in one context, each with its own plan, decoded in one batch (`Llama.ask_batch`).

Sequence s is prefilled while the sequences before it are already compacted (its prefill tokens go through our
op with no regions of their own), then every step decodes one token per sequence in a single ubatch, where
each token attends to its own sequence's regions and cells. Greedy answers must equal `ask` one pair at a
time on a one-sequence context.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import llama_cpp
import pytest

from cocktail_gguf import Llama, _native, segmented_cache
from cocktail_gguf.plan import Plan

pytestmark = pytest.mark.skipif(
    os.environ.get("COCKTAIL_TEST_N_GPU_LAYERS", "0") != "0", reason="segmented cache v1: CPU only"
)

N_CTX = 4096
CHUNK = 16
MAX_TOKENS = 10


def _words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(
        "".join(rng.choice("etaoinshrdlucmfw") for _ in range(rng.randint(2, 6))) for _ in range(n)
    )


CONTEXTS = [_words(300, 1), _words(170, 2), _words(240, 3)]
QUERIES = [" what is the key? answer:", " and then what", " tell me more:"]
KINDS = ["mixed", "f16", "q2"]


def _plan(llm: Llama, context: str, kind: str) -> Plan:
    n = len(llm.tokenize(context.encode(), add_bos=False, special=False))
    if kind == "mixed":
        return Plan(CHUNK, tuple(("f16", "q4", "q2", "q2")[i % 4] for i in range(n // CHUNK)), n)
    return Plan.uniform(n, CHUNK, kind)


def _llm(path: Path, n_seq_max: int = 1, **kw: object) -> Llama:
    return Llama(
        str(path), n_ctx=N_CTX, verbose=False, kv_mode="cocktail", chunk_size=CHUNK, n_seq_max=n_seq_max, **kw
    )


@pytest.mark.parametrize("shape", ["tiny-mha", "tiny-gqa"])
def test_batch_equals_one_at_a_time(tiny_models: dict[str, Path], shape: str) -> None:
    single = _llm(tiny_models[shape])
    plans = [_plan(single, c, k) for c, k in zip(CONTEXTS, KINDS, strict=True)]
    ref = [
        single.ask(c, q, plan=p, max_tokens=MAX_TOKENS, ignore_eos=True).tokens
        for c, q, p in zip(CONTEXTS, QUERIES, plans, strict=True)
    ]
    ref_f16 = [
        single.ask(c, q, max_tokens=MAX_TOKENS, mode="f16").tokens
        for c, q in zip(CONTEXTS, QUERIES, strict=True)
    ]
    single.close()

    llm = _llm(tiny_models[shape], n_seq_max=4)
    answers = llm.ask_batch(CONTEXTS, QUERIES, plans, max_tokens=MAX_TOKENS, ignore_eos=True)
    assert [a.tokens for a in answers] == ref
    assert all(len(t) == MAX_TOKENS for t in ref)
    for s, (a, plan) in enumerate(zip(answers, plans, strict=True)):
        assert a.plan is plan
        regions = llm.kv_regions(s)
        assert regions and all(
            r.compacted and r.n_tokens == {p: c * CHUNK for p, c in plan.counts.items()}
            for r in regions.values()
        )
    assert llm.kv_regions(3) == {}  # the unused fourth sequence
    # staging released: the tails of all three sequences + their answers, padded to 256 cells
    cells = segmented_cache.kv_cells(llm._ctx.ctx)
    assert cells.size == 256 and cells.full == N_CTX

    # a one-pair ask on the same context afterwards, and the llama.cpp-cache mode in a batch
    again = llm.ask(CONTEXTS[0], QUERIES[0], plan=plans[0], max_tokens=MAX_TOKENS, ignore_eos=True)
    assert again.tokens == ref[0] and llm.kv_regions(1) == {}
    f16 = llm.ask_batch(CONTEXTS, QUERIES, max_tokens=MAX_TOKENS, mode="f16")
    assert [a.tokens for a in f16] == ref_f16 and all(a.plan is None for a in f16)
    llm.close()


def test_batch_stops_each_sequence_on_its_own(tiny_models: dict[str, Path]) -> None:
    llm = _llm(tiny_models["tiny-gqa"], n_seq_max=3)
    plans = [_plan(llm, c, "q2") for c in CONTEXTS]
    full = llm.ask_batch(CONTEXTS, QUERIES, plans, max_tokens=MAX_TOKENS, ignore_eos=True)
    stop = full[1].text[2:5]  # a piece of the second answer only
    assert stop and stop not in full[0].text and stop not in full[2].text
    cut = llm.ask_batch(CONTEXTS, QUERIES, plans, max_tokens=MAX_TOKENS, ignore_eos=True, stop=stop)
    assert cut[0].tokens == full[0].tokens and cut[2].tokens == full[2].tokens
    assert cut[1].text == full[1].text[: full[1].text.index(stop)] and len(cut[1].tokens) < MAX_TOKENS
    none = llm.ask_batch(CONTEXTS[:2], QUERIES[:2], plans[:2], max_tokens=0)
    assert [a.tokens for a in none] == [[], []]
    llm.close()


def test_batch_bad_inputs(tiny_models: dict[str, Path]) -> None:
    llm = _llm(tiny_models["tiny-gqa"], n_seq_max=2)
    with pytest.raises(ValueError, match="3 \\(context, query\\) pairs but this Llama has n_seq_max=2"):
        llm.ask_batch(CONTEXTS, QUERIES, max_tokens=2)
    with pytest.raises(ValueError, match="2 contexts and 1 queries"):
        llm.ask_batch(CONTEXTS[:2], QUERIES[:1])
    with pytest.raises(ValueError, match="not a string"):
        llm.ask_batch("one context", "one query")
    with pytest.raises(ValueError, match=r"queries\[1\]='  '"):
        llm.ask_batch(CONTEXTS[:2], [QUERIES[0], "  "])
    with pytest.raises(ValueError, match="1 plans for 2 contexts"):
        llm.ask_batch(CONTEXTS[:2], QUERIES[:2], [None])
    with pytest.raises(ValueError, match="more than n_ctx=4096"):
        llm.ask_batch([CONTEXTS[0] * 4] * 2, QUERIES[:2], max_tokens=2, mode="f16")
    with pytest.raises(ValueError, match="n_seq_max=0 must be an integer in 1..256"):
        _llm(tiny_models["tiny-gqa"], n_seq_max=0)
    llm.ask_batch(CONTEXTS[:2], QUERIES[:2], max_tokens=1, mode="q4")
    with pytest.raises(ValueError, match=r"sequences \[1\] hold plans"):
        llm.save_state()
    llm.ask(CONTEXTS[0], QUERIES[0], max_tokens=1)
    assert llm.save_state().segmented  # one pair again: saved with its regions
    ctx = segmented_cache._ctx_ptr(llm._ctx.ctx)
    with pytest.raises(ValueError, match=r"seq_id 2 is not in \[0, 2\)"):
        _native.check(_native.lib().cocktail_compact(ctx, 2), "compact")
    llm.close()


def test_token_shared_by_a_compacted_sequence_is_reported(tiny_models: dict[str, Path]) -> None:
    llm = _llm(tiny_models["tiny-gqa"], n_seq_max=2)
    plan = _plan(llm, CONTEXTS[0], "q4")
    # the same pair twice: both sequences hold the same positions, so llama.cpp lets one token continue both
    llm.ask_batch(CONTEXTS[:1] * 2, QUERIES[:1] * 2, [plan, plan], max_tokens=1)
    mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
    last = llama_cpp.llama_memory_seq_pos_max(mem, 0)
    assert last == llama_cpp.llama_memory_seq_pos_max(mem, 1)
    batch = llm._batch.batch
    batch.n_tokens = 1
    batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.logits[0] = 5, last + 1, 2, True
    batch.seq_id[0][0], batch.seq_id[0][1] = 0, 1
    assert llama_cpp.llama_decode(llm._ctx.ctx, batch) == 0
    with pytest.raises(_native.NativeError, match="a token belongs to 2 sequences, one of them compacted"):
        segmented_cache.check(llm._ctx.ctx)
    llm.close()
