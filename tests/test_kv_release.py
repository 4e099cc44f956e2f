"""The F16 staging cache is released after compaction: llama.cpp's cache shrinks to the cells the query and
answer need (native/cocktail_kv_resize.cpp), grows again when more tokens come, and is full-size again for
the next prefill. Answers do not change: the tail cells keep their order when they move, so decoding gives
the same tokens and logits as with the full-size cache; after a growth the cells sit elsewhere than in the
full-size cache, so only the summation order differs (F16_LOGIT_TOL of test_cocktail_e2e)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from cocktail_gguf import Llama, _native, segmented_cache
from cocktail_gguf.plan import Plan
from cocktail_gguf.random_gguf import SHAPES

pytestmark = pytest.mark.skipif(
    os.environ.get("COCKTAIL_TEST_N_GPU_LAYERS", "0") != "0", reason="segmented cache v1: CPU only"
)

N_CTX = 4096
CHUNK = 16
F16_LOGIT_TOL = 1e-2
QUERY = " what is the key? answer:"


def _context(n_words: int, seed: int = 5) -> str:
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkq"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(n_words))


CONTEXT = _context(700)


def _llm(path: Path, **kw: object) -> Llama:
    return Llama(str(path), n_ctx=N_CTX, verbose=False, kv_mode="cocktail", chunk_size=CHUNK, **kw)


def _mixed(llm: Llama) -> Plan:
    n = len(llm.tokenize(CONTEXT.encode(), add_bos=False, special=False))
    return Plan(CHUNK, tuple(("f16", "q4", "q2", "q2")[i % 4] for i in range(n // CHUNK)), n)


def _cache_bytes_per_cell(shape: str) -> int:
    s = SHAPES[shape]
    return s.n_layer * 2 * s.n_head_kv * s.head_dim * 2  # K and V, fp16


@pytest.mark.parametrize("shape", ["tiny-mha", "tiny-gqa"])
def test_cache_shrinks_after_compaction_and_answers_do_not_change(
    tiny_models: dict[str, Path], shape: str
) -> None:
    kept = _llm(tiny_models[shape], release_staging=False)
    plan = _mixed(kept)
    ref = kept.ask(CONTEXT, QUERY, plan=plan, max_tokens=10, return_logits=True, ignore_eos=True)
    assert segmented_cache.kv_cells(kept._ctx.ctx).size == N_CTX
    full_bytes = kept.kv_bytes()["llama_cache"]
    assert full_bytes == N_CTX * _cache_bytes_per_cell(shape)
    more = [t % 200 + 5 for t in range(900)]  # past the cells reserved for the answer: the cache grows
    ref_lp = kept.next_token_logprobs(more)
    kept.close()

    llm = _llm(tiny_models[shape])
    ans = llm.ask(CONTEXT, QUERY, plan=plan, max_tokens=10, return_logits=True, ignore_eos=True)
    cells = segmented_cache.kv_cells(llm._ctx.ctx)
    n_tail = llm.n_tokens - plan.n_chunks * CHUNK  # BOS, the context's remainder, query, answer
    assert cells.used == n_tail and cells.full == N_CTX
    assert cells.size == 256 >= n_tail + 1  # answer tokens reserved, padded to 256 cells
    assert llm.kv_bytes()["llama_cache"] == 256 * _cache_bytes_per_cell(shape) < full_bytes / 10
    assert ans.timings["release_s"] >= 0
    # 10 steps, at least 5 of them as long as their median: 5 medians fit in the whole decode
    assert 0 < 5 * ans.timings["decode_step_median_s"] <= ans.timings["decode_s"]
    assert ans.tokens == ref.tokens
    # Bit-for-bit equal on the machine this test was written on; on an AVX-512 EPYC (2026-11-25, and there
    # already at 9d11c3f) up to 2e-4 apart from the second step on: a last-bit difference in an attention sum
    # can move an activation's fp16 rounding before the next f16-weight product. The tokens stay exact.
    assert np.max(np.abs(ans.logits - ref.logits)) <= 1e-3

    lp = llm.next_token_logprobs(more)
    grown = segmented_cache.kv_cells(llm._ctx.ctx)
    assert grown.used == n_tail + len(more) and grown.used <= grown.size < N_CTX
    assert np.abs(lp - ref_lp).max() < F16_LOGIT_TOL

    # the next prefill gets the full-size cache back (also for a plain F16 ask on the same Llama)
    f16 = llm.ask(CONTEXT, QUERY, max_tokens=4, mode="f16")
    assert segmented_cache.kv_cells(llm._ctx.ctx).size == N_CTX
    assert llm.kv_bytes()["llama_cache"] == full_bytes and f16.tokens
    again = llm.ask(CONTEXT, QUERY, plan=plan, max_tokens=10, ignore_eos=True)
    assert again.tokens == ref.tokens
    llm.close()


def test_state_of_a_shrunk_cache_restores_anywhere(tiny_models: dict[str, Path]) -> None:
    path = tiny_models["tiny-gqa"]
    llm = _llm(path)
    plan = _mixed(llm)
    llm.ask(CONTEXT, QUERY, plan=plan, max_tokens=3, ignore_eos=True)
    state = llm.save_state()
    want = llm.next_token_logprobs([7, 8, 9, 10, 11])

    for release in (True, False):
        other = _llm(path, release_staging=release)
        other.ask(CONTEXT[:200], QUERY, max_tokens=2)  # something else first; shrunk when release
        other.load_state(state)
        cells = segmented_cache.kv_cells(other._ctx.ctx)
        assert cells.size == (256 if release else N_CTX)
        assert np.array_equal(other.next_token_logprobs([7, 8, 9, 10, 11]), want)
        other.close()
    llm.close()


def test_shrinking_before_compaction_keeps_the_plan(tiny_models: dict[str, Path]) -> None:
    """A resize between prefill and compaction: the segmented cache finds its layers in the new cache."""
    path = tiny_models["tiny-mha"]
    ref_llm = _llm(path, release_staging=False)
    plan = _mixed(ref_llm)
    ref = ref_llm.ask(CONTEXT, QUERY, plan=plan, max_tokens=6, ignore_eos=True)
    ref_llm.close()

    llm = _llm(path)
    ctx = llm._ctx.ctx
    prefix = [llm.token_bos()] if llm._model.add_bos_token() else []
    ids = llm.tokenize(CONTEXT.encode(), add_bos=False, special=False)
    query = llm.tokenize(QUERY.encode(), add_bos=False, special=True)
    segmented_cache.set_plan(ctx, plan, pos0=len(prefix))
    llm.eval(prefix + list(ids) + list(query))
    n_prompt = llm.n_tokens
    llm._resize_kv(n_prompt)  # everything still in F16: only the free cells go
    assert segmented_cache.kv_cells(ctx).size == -(-n_prompt // 256) * 256 < N_CTX
    segmented_cache.compact(ctx)
    tokens = []
    for _ in range(6):
        row = llama_cpp.llama_get_logits_ith(ctx, -1)
        token = int(np.argmax(np.ctypeslib.as_array(row, shape=(llm.n_vocab(),))))
        tokens.append(token)
        llm.eval([token])
    assert tokens == ref.tokens
    llm.close()


def test_bad_resize_arguments(tiny_models: dict[str, Path]) -> None:
    lib, ffi = _native.lib(), _native.ffi
    with pytest.raises(ValueError, match="cocktail_kv_resize: ctx is NULL"):
        _native.check(lib.cocktail_kv_resize(ffi.NULL, 0), "kv_resize")
    with pytest.raises(ValueError, match="NULL argument"):
        _native.check(lib.cocktail_kv_cells(ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL), "kv_cells")
    with pytest.raises(ValueError, match="release_staging='yes' must be True or False"):
        _llm(tiny_models["tiny-gqa"], release_staging="yes")
