"""End to end: kv_mode="cocktail" / "q4" / "q2" on tiny random GGUFs (segmented Q2/Q4/F16 cache, CPU).

Bounds: an all-F16 plan holds exactly the fp16 values of llama.cpp's cache, only the summation order (and
llama.cpp's fp16 rounding of q and of the softmax weights, which our op keeps in fp32) differ, so logits
agree within F16_LOGIT_TOL. Quantized plans: max |logit error| / std(logits) over the decode steps read
from the regions (measured on these models: Q4 0.08-0.10, mixed 0.30, Q2 0.46-0.54; Q2/Q4 ~ 5 = the ratio
of their quantization steps, 3 vs 15 levels) stays under REL_TOL, with about 1.5x margin.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from cocktail_gguf import Llama, _native, segmented_cache
from cocktail_gguf.plan import Plan
from cocktail_gguf.random_gguf import SHAPES

F16_LOGIT_TOL = 1e-2  # llama.cpp's own flash-attn vs non-flash-attn logits differ by ~6e-3 here
REL_TOL = {"q4": 0.15, "mixed": 0.45, "q2": 0.75}
CHUNK = 16
N_CTX = 1024


def _context(n_words: int, seed: int = 3) -> str:
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkq"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(n_words))


CONTEXT = _context(160)
QUERY = " what is the key? answer:"


def _llm(path: Path, kv_mode: str, llama_kwargs: dict, **kw: object) -> Llama:
    return Llama(
        str(path), n_ctx=N_CTX, verbose=False, kv_mode=kv_mode, chunk_size=CHUNK, **llama_kwargs, **kw
    )


def _n_context_tokens(llm: Llama) -> int:
    return len(llm.tokenize(CONTEXT.encode(), add_bos=False, special=False))


def _mixed(n_tokens: int) -> Plan:
    n = n_tokens // CHUNK
    return Plan(CHUNK, tuple(("f16", "q4", "q2", "q2")[i % 4] for i in range(n)), n_tokens)


def _region_bytes(precision: str, n_tokens: int, n_head_kv: int, head_dim: int) -> int:
    if precision == "f16":
        return n_tokens * n_head_kv * head_dim * 2
    bits = {"q4": 4, "q2": 2}[precision]
    # 32-token blocks; bits per element + fp16 scale and min per 32 elements
    return n_head_kv * math.ceil(n_tokens / 32) * 32 * head_dim * (bits + 1) // 8


@pytest.fixture(scope="module")
def f16_answers(tiny_models: dict[str, Path], llama_kwargs: dict) -> dict[tuple[str, bool], object]:
    out = {}
    for shape in ("tiny-mha", "tiny-gqa"):
        for fa in (False, True):
            llm = _llm(tiny_models[shape], "f16", llama_kwargs, flash_attn=fa)
            out[(shape, fa)] = llm.ask(CONTEXT, QUERY, max_tokens=12, return_logits=True)
            llm.close()
    return out


@pytest.mark.parametrize("flash_attn", [False, True], ids=["no-fa", "fa"])
@pytest.mark.parametrize("shape", ["tiny-mha", "tiny-gqa"])
def test_all_f16_plan_equals_f16_mode(
    tiny_models: dict[str, Path], llama_kwargs: dict, f16_answers: dict, shape: str, flash_attn: bool
) -> None:
    ref = f16_answers[(shape, flash_attn)]
    llm = _llm(tiny_models[shape], "cocktail", llama_kwargs, flash_attn=flash_attn)
    n = _n_context_tokens(llm)
    ans = llm.ask(CONTEXT, QUERY, plan=Plan.uniform(n, CHUNK, "f16"), max_tokens=12, return_logits=True)
    assert len(ref.tokens) > 3
    assert ans.tokens == ref.tokens
    assert ans.logits.shape == ref.logits.shape
    assert np.abs(ans.logits - ref.logits).max() < F16_LOGIT_TOL
    regions = llm.kv_regions()
    assert sorted(regions) == list(range(SHAPES[shape].n_layer))
    assert all(
        r.compacted and r.n_tokens == {"f16": n // CHUNK * CHUNK, "q4": 0, "q2": 0} for r in regions.values()
    )


@pytest.mark.parametrize("shape", ["tiny-mha", "tiny-gqa"])
def test_mixed_plan_regions_and_logits(
    tiny_models: dict[str, Path], llama_kwargs: dict, f16_answers: dict, shape: str
) -> None:
    ref = f16_answers[(shape, False)]
    s = SHAPES[shape]
    llm = _llm(tiny_models[shape], "cocktail", llama_kwargs)
    n = _n_context_tokens(llm)
    plan = _mixed(n)
    ans = llm.ask(CONTEXT, QUERY, plan=plan, max_tokens=12, return_logits=True)
    assert llm.cocktail_plan is plan and ans.plan is plan
    for layer, r in llm.kv_regions().items():
        assert r.n_tokens == {p: c * CHUNK for p, c in plan.counts.items()}, layer
        for p, count in plan.counts.items():
            want = _region_bytes(p, count * CHUNK, s.n_head_kv, s.head_dim)
            assert r.k_bytes[p] == r.v_bytes[p] == want, (layer, p)
    # the first token comes from the prefill (F16 staging cache): identical; later steps read the regions
    assert ans.tokens[0] == ref.tokens[0]
    assert np.abs(ans.logits[0] - ref.logits[0]).max() < F16_LOGIT_TOL
    assert _quant_error(ans, ref) < REL_TOL["mixed"]


def _quant_error(ans: object, ref: object) -> float:
    """max |logit error| / std(ref logits) over the decode steps where both runs had the same prefix."""
    same = 1
    while same < min(len(ans.tokens), len(ref.tokens)) and ans.tokens[same - 1] == ref.tokens[same - 1]:
        same += 1
    err = np.abs(ans.logits[1:same] - ref.logits[1:same]).max()
    return float(err / ref.logits[1:same].std())


def test_q4_closer_to_f16_than_q2(
    tiny_models: dict[str, Path], llama_kwargs: dict, f16_answers: dict
) -> None:
    ref = f16_answers[("tiny-gqa", False)]
    errs = {}
    for mode in ("q4", "q2"):
        llm = _llm(tiny_models["tiny-gqa"], mode, llama_kwargs)
        ans = llm.ask(CONTEXT, QUERY, max_tokens=12, return_logits=True)
        assert set(ans.plan.precisions) == {mode}
        errs[mode] = _quant_error(ans, ref)
        llm.close()
    assert 0 < errs["q4"] < REL_TOL["q4"]
    assert errs["q2"] < REL_TOL["q2"]
    assert errs["q2"] > 3 * errs["q4"]


def test_later_multi_token_ubatch_reads_regions(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    """A several-token ubatch after compaction (causal among its tokens) equals the f16 cache's result; the
    prefill runs in several ubatches (n_batch 96)."""
    follow = [300, 301, 302, 303, 304, 305, 306]
    logits = {}
    for mode in ("f16", "cocktail"):
        llm = _llm(tiny_models["tiny-gqa"], mode, llama_kwargs, n_batch=96)
        plan = None if mode == "f16" else Plan.uniform(_n_context_tokens(llm), CHUNK, "f16")
        llm.ask(CONTEXT, QUERY, plan=plan, max_tokens=0)
        llm.eval(follow)
        logits[mode] = np.array(llm._ctx.get_logits()[: llm.n_vocab()])
        llm.close()
    assert np.abs(logits["f16"] - logits["cocktail"]).max() < F16_LOGIT_TOL


def test_repeated_asks_and_plain_completion(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    path = tiny_models["tiny-mha"]
    llm = _llm(path, "q2", llama_kwargs)
    first = llm.ask(CONTEXT, QUERY, max_tokens=8)
    llm.ask(_context(90, seed=5), " other question:", max_tokens=8)
    assert llm.ask(CONTEXT, QUERY, max_tokens=8).tokens == first.tokens
    # a completion after an ask: a one-line prompt is all query (empty context, nothing quantized),
    # so it answers as kv_mode="f16"
    ours = llm("hello there", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    plain = _llm(path, "f16", llama_kwargs)("hello there", max_tokens=8, temperature=0.0)
    assert ours == plain["choices"][0]["text"]


def test_uniform_modes_construct_and_report(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    llm = _llm(tiny_models["tiny-gqa"], "q4", llama_kwargs)
    assert llm.kv_regions() == {}
    n = _n_context_tokens(llm)
    llm.ask(CONTEXT, QUERY, max_tokens=2)
    regions = llm.kv_regions()
    assert {r.n_tokens["q4"] for r in regions.values()} == {n // CHUNK * CHUNK}
    s = SHAPES["tiny-gqa"]
    assert regions[0].total_bytes == 2 * _region_bytes("q4", n // CHUNK * CHUNK, s.n_head_kv, s.head_dim)


def test_bad_arguments_name_the_value(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    llm = _llm(tiny_models["tiny-mha"], "cocktail", llama_kwargs)
    ctx = llm._ctx.ctx
    lib, ffi = _native.lib(), _native.ffi
    ptr = segmented_cache._ctx_ptr(ctx)
    precs = ffi.new("uint8_t[]", [0, 1, 7])

    def call(*args: object) -> None:
        _native.check(lib.cocktail_set_plan(ptr, *args), "cocktail_set_plan")

    with pytest.raises(ValueError, match="precision 7 of chunk 2"):
        call(0, 1, 16, precs, 3, 48)
    with pytest.raises(ValueError, match="chunk_size 0"):
        call(0, 1, 0, precs, 2, 48)
    with pytest.raises(ValueError, match="chunk_size 257"):
        call(0, 1, 257, precs, 2, 600)
    with pytest.raises(ValueError, match="seq_id 1"):
        call(1, 1, 16, precs, 2, 48)
    with pytest.raises(ValueError, match="32 tokens, longer than the context's n_context_tokens 20"):
        call(0, 1, 16, precs, 2, 20)
    with pytest.raises(ValueError, match=f"longer than the llama context's n_ctx {N_CTX}"):
        call(0, 1, 16, precs, 2, N_CTX)
    segmented_cache.clear(ctx)
    with pytest.raises(_native.NativeError, match="has no plan"):
        segmented_cache.compact(ctx)
    with pytest.raises(ValueError, match=r"layer 99 is not in \[0, 2\)"):
        info = ffi.new("struct cocktail_layer_regions *")
        _native.check(lib.cocktail_region_info(ptr, 0, 99, info), "info")
    with pytest.raises(ValueError, match="n_context_tokens=5 but the context has"):
        llm.ask(CONTEXT, QUERY, plan=Plan.uniform(5, 1, "q4"))
    with pytest.raises(ValueError, match="query=''"):
        llm.ask(CONTEXT, "")
    with pytest.raises(ValueError, match="max_tokens=1000"):
        llm.ask(CONTEXT, QUERY, max_tokens=1000)


def test_unsupported_cache_type_is_refused(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    import llama_cpp

    with pytest.raises(_native.NativeError, match="type_k=q8_0"):
        _llm(
            tiny_models["tiny-mha"],
            "cocktail",
            llama_kwargs,
            type_k=llama_cpp.GGML_TYPE_Q8_0,
            flash_attn=True,
        )


def test_cocktail_mode_plans_with_the_planner(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    llm = _llm(tiny_models["tiny-gqa"], "cocktail", llama_kwargs, encoder="bm25")
    context = CONTEXT + " zebra zebra zebra zebra " + _context(40, seed=9)
    ans = llm.ask(context, " zebra?", max_tokens=2)
    plan = ans.plan
    assert plan is llm.cocktail_plan and plan.encoder is not None and plan.encoder.startswith("bm25")
    assert plan.n_context_tokens == len(llm.tokenize(context.encode(), add_bos=False, special=False))
    assert plan.counts["f16"] >= 1 and plan.counts["q2"] >= 1
    for r in llm.kv_regions().values():
        assert r.n_tokens == {p: c * CHUNK for p, c in plan.counts.items()}
