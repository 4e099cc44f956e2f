"""save_state / load_state with the segmented cache: the plan and the Q2/Q4/F16 regions travel with
llama.cpp's own state, so a restored context (same or another Llama of the model) continues bit for bit."""

from __future__ import annotations

import pickle
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from cocktail_gguf import Llama, _native
from cocktail_gguf.llama import CocktailState
from cocktail_gguf.plan import Plan

CHUNK = 16
CONTEXT = " ".join(
    f"note {i}: the lamp by door {i % 7} is {('red', 'blue', 'green')[i % 3]}" for i in range(40)
)
QUERY = " which lamp is red? answer:"
CONTINUATION = 6


def _llm(path: Path, llama_kwargs: dict, **kw: object) -> Llama:
    return Llama(
        str(path), n_ctx=1024, verbose=False, kv_mode="cocktail", chunk_size=CHUNK, **llama_kwargs, **kw
    )


def _continue(llm: Llama, n: int) -> tuple[list[int], np.ndarray]:
    """Feeds two fixed tokens, then greedy ones, from the current cache: tokens and logits after each."""
    tokens, rows = list(llm.tokenize(b" red blue", add_bos=False))[:2], []
    for i in range(n):
        if i >= len(tokens):
            tokens.append(int(rows[-1].argmax()))
        llm.eval([tokens[i]])
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        rows.append(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy())
    return tokens, np.stack(rows)


@pytest.mark.parametrize("shape", ["tiny-mha", "tiny-gqa"])
def test_state_round_trip_continues_bit_for_bit(
    tiny_models: dict[str, Path], llama_kwargs: dict, shape: str
) -> None:
    a = _llm(tiny_models[shape], llama_kwargs)
    n = len(a.tokenize(CONTEXT.encode(), add_bos=False))
    plan = Plan(CHUNK, tuple(("q2", "q4", "f16", "q2")[i % 4] for i in range(n // CHUNK)), n)
    a.ask(CONTEXT, QUERY, plan=plan, max_tokens=4, ignore_eos=True)
    state = a.save_state()
    assert isinstance(state, CocktailState) and state.plan is plan and len(state.segmented) > 0
    regions = a.kv_regions()
    want_tokens, want_logits = _continue(a, CONTINUATION)

    restored = pickle.loads(pickle.dumps(state))
    b = _llm(tiny_models[shape], llama_kwargs)
    b.load_state(restored)
    assert b.cocktail_plan == plan and b.kv_regions() == regions
    got_tokens, got_logits = _continue(b, CONTINUATION)
    assert got_tokens == want_tokens
    assert np.array_equal(got_logits, want_logits)

    # the same Llama, after other work, goes back to the saved point too
    a.ask("something else entirely " * 10, QUERY, mode="q2", max_tokens=3)
    a.load_state(state)
    assert _continue(a, CONTINUATION)[0] == want_tokens
    a.close()
    b.close()


def test_plain_state_drops_the_regions(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    llm = _llm(tiny_models["tiny-gqa"], llama_kwargs)
    llm.eval(llm.tokenize(b"hello world", add_bos=True))
    plain = llm.save_state()
    assert not isinstance(plain, CocktailState)
    llm.ask(CONTEXT, QUERY, mode="q4", max_tokens=2)
    llm.load_state(plain)
    assert llm.cocktail_plan is None and all(not r.compacted for r in llm.kv_regions().values())
    llm.close()


def test_bad_segmented_state_raises_and_leaves_a_clean_context(
    tiny_models: dict[str, Path], llama_kwargs: dict
) -> None:
    a = _llm(tiny_models["tiny-gqa"], llama_kwargs)
    a.ask(CONTEXT, QUERY, mode="q4", max_tokens=2)
    state = a.save_state()
    assert isinstance(state, CocktailState)
    truncated = CocktailState(state, state.segmented[: len(state.segmented) // 2], state.plan)
    with pytest.raises(ValueError, match="truncated"):
        a.load_state(truncated)
    assert a.cocktail_plan is None or all(not r.compacted for r in a.kv_regions().values())
    garbage = CocktailState(state, b"\x00" * 64, state.plan)
    with pytest.raises(ValueError, match="bad magic"):
        a.load_state(garbage)
    other = _llm(tiny_models["tiny-mha"], llama_kwargs)  # another model: its llama.cpp state is refused first
    with pytest.raises((RuntimeError, _native.NativeError)):
        other.load_state(state)
    # still usable
    assert a.ask(CONTEXT, QUERY, mode="q2", max_tokens=2).plan is not None
    a.close()
    other.close()
