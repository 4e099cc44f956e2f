"""Seeded random sequences of segmented-cache C API calls, prefills and decodes on one llama context.

A small model of the native state (plan, compacted, whether a graph ran since the plan, which positions
llama.cpp's cache holds, how many tokens llama-cpp-python thinks it evaluated) predicts every call's
outcome: a valid call must succeed, a misuse (set_plan with a bad argument, compact without a plan,
without a prefill since the plan, twice, with planned positions missing or nothing after them,
region_info of a layer that does not exist) must raise ValueError / RuntimeError naming the problem and
leave the state as it was. Interleaved: prefills of other prompts, decodes, resets, asks and plain
completions, which must give the tokens of a fresh context (a completion after plans and compactions made
through `segmented_cache` runs on an emptied cache). After each sequence a plain completion, an ask and
another completion must all equal the fresh-context results.

Nothing is timed; the steps are bounded (SEQUENCES x STEPS on each tiny model, ~5 s on 2 cores).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cocktail_gguf import Llama, _native, segmented_cache
from cocktail_gguf.plan import PRECISIONS, Plan
from cocktail_gguf.random_gguf import SHAPES

pytestmark = pytest.mark.skipif(
    os.environ.get("COCKTAIL_TEST_N_GPU_LAYERS", "0") != "0", reason="segmented cache v1: CPU only"
)

N_CTX = 512
SEQUENCES = 4
STEPS = 50
MAX_TOKENS = 6


def _words(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkq"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(n_words))


CONTEXTS = [_words(40, 11), _words(90, 12), _words(130, 13)]
QUERIES = [" what is the key? answer:", " and then?"]
PROMPTS = ["hello there", "the quick brown fox"]
PLAN_KINDS = ("mixed16", "q4x8", "f16x32")


def _plan(kind: str, n_tokens: int) -> Plan:
    if kind == "mixed16":
        return Plan(16, tuple(("f16", "q4", "q2", "q2")[i % 4] for i in range(n_tokens // 16)), n_tokens)
    if kind == "q4x8":
        return Plan.uniform(n_tokens, 8, "q4")
    return Plan.uniform(n_tokens, 32, "f16")


def _llm(path: Path, kv_mode: str = "cocktail") -> Llama:
    # one thread: on a busy 2-core machine ggml's spinning barriers make 2-thread prefills ~10x slower
    return Llama(str(path), n_ctx=N_CTX, verbose=False, kv_mode=kv_mode, n_threads=1, n_threads_batch=1)


def _ids(llm: Llama, text: str) -> list[int]:
    return list(llm.tokenize(text.encode(), add_bos=False, special=False))


def _completion(llm: Llama, prompt: str) -> str:
    out: Any = llm(prompt, max_tokens=MAX_TOKENS, temperature=0.0)
    return str(out["choices"][0]["text"])


@pytest.fixture(scope="module")
def fresh() -> dict[tuple[str, ...], Any]:
    """Results on freshly made contexts: asks (tokens) per (shape, context, query, plan kind) and plain
    completions (text) per (shape, prompt), each from its own new Llama. Filled lazily."""
    cache: dict[tuple[str, ...], Any] = {}
    return cache


def _fresh_ask(fresh: dict, path: Path, shape: str, ci: int, qi: int, kind: str) -> list[int]:
    key = ("ask", shape, str(ci), str(qi), kind)
    if key not in fresh:
        llm = _llm(path)
        plan = _plan(kind, len(_ids(llm, CONTEXTS[ci])))
        fresh[key] = llm.ask(CONTEXTS[ci], QUERIES[qi], plan=plan, max_tokens=MAX_TOKENS).tokens
        llm.close()
    return list(fresh[key])


def _fresh_completion(fresh: dict, path: Path, shape: str, pi: int) -> str:
    key = ("completion", shape, str(pi))
    if key not in fresh:
        llm = _llm(path, "f16")
        fresh[key] = _completion(llm, PROMPTS[pi])
        llm.close()
    return str(fresh[key])


@dataclass
class State:
    """What the native side and llama-cpp-python should hold now."""

    plan: Plan | None = None
    pos0: int = 0
    compacted: bool = False
    ran: bool = False  # a graph ran (an eval) since the plan was set
    positions: set[int] = field(default_factory=set)  # positions of sequence 0 in llama.cpp's cache
    n_tokens: int = 0  # llama-cpp-python's count of evaluated tokens (the next position)
    changed: bool = False  # segmented_cache.set_plan / compact reached the context since Llama emptied it

    def n_plan(self) -> int:
        assert self.plan is not None
        return self.plan.n_chunks * self.plan.chunk_size

    def compact_outcomes(self, hooked_before: bool) -> list[str | None]:
        """What cocktail_compact may do now: None (succeed) or a substring of its error. hooked_before: a
        graph ran under an earlier plan of this context; libraries that remember that (native/
        cocktail_segmented.cpp's `hooked`) compact a new plan without a graph since, older ones refuse."""
        if self.plan is None:
            return ["has no plan"]
        if self.compacted:
            return ["is already compacted"]
        not_hooked = "never went through the segmented-cache hook"
        if not self.ran:
            return [not_hooked, self._positions_outcome()] if hooked_before else [not_hooked]
        return [self._positions_outcome()]

    def _positions_outcome(self) -> str | None:
        planned = range(self.pos0, self.pos0 + self.n_plan())
        missing = [p for p in planned if p not in self.positions]
        if missing:
            return f"position {missing[0]} of sequence 0 is not in the KV cache"
        if self.n_plan() > 0 and max(self.positions) < planned.stop:
            return "no token follows the planned chunks"
        return None


class Runner:
    def __init__(self, path: Path, shape: str, fresh: dict, seed: int) -> None:
        self.path, self.shape, self.fresh = path, shape, fresh
        self.rng = random.Random(seed)
        self.llm = _llm(path)
        self.ctx = self.llm._ctx.ctx
        self.n_layer = SHAPES[shape].n_layer
        self.bos = [self.llm.token_bos()] if self.llm._model.add_bos_token() else []
        self.st = State()
        self.hooked = False  # a graph ran under a plan of this context that is gone now
        self.log: list[str] = []

    # --- checks -----------------------------------------------------------------------------------------
    def check_regions(self) -> None:
        regions = segmented_cache.layer_regions(self.ctx, self.n_layer)
        st = self.st
        if st.plan is None:
            assert regions == {}, self.where()
            return
        assert sorted(regions) == list(range(self.n_layer)), self.where()
        for r in regions.values():
            assert r.compacted == st.compacted, self.where()
            want = {p: (c * st.plan.chunk_size if st.compacted else 0) for p, c in st.plan.counts.items()}
            assert r.n_tokens == want, self.where()
            for p in PRECISIONS:
                assert (r.k_bytes[p] > 0) == (r.v_bytes[p] > 0) == (want[p] > 0), self.where()
        segmented_cache.check(self.ctx)

    def where(self) -> str:
        return f"{self.shape}, after: " + " | ".join(self.log[-8:])

    def expect_error(self, needle: str, call: Any, *args: Any) -> None:
        with pytest.raises((ValueError, RuntimeError)) as info:
            call(*args)
        assert needle in str(info.value), f"{info.value!r} does not say {needle!r}; {self.where()}"

    # --- steps ------------------------------------------------------------------------------------------
    def step(self) -> None:
        ops = [
            (self.set_plan, 5),
            (self.set_plan_bad, 3),
            (self.clear, 2),
            (self.compact, 5),
            (self.region_info_bad, 1),
            (self.prefill, 4),
            (self.decode, 3),
            (self.reset, 1),
            (self.ask, 2),
            (self.ask_bad, 1),
            (self.completion, 1),
            (self.flow, 3),
            (self.resize, 2),
        ]
        op = self.rng.choices([f for f, _ in ops], weights=[w for _, w in ops])[0]
        op()
        self.check_regions()

    def set_plan(self) -> None:
        kind = self.rng.choice(PLAN_KINDS)
        ci = self.rng.randrange(len(CONTEXTS))
        pos0 = self.rng.choice([len(self.bos), len(self.bos), 0, 7])
        self.log.append(f"set_plan({kind}, context {ci}, pos0 {pos0})")
        self._set_plan(_plan(kind, len(_ids(self.llm, CONTEXTS[ci]))), pos0)

    def _set_plan(self, plan: Plan, pos0: int) -> None:
        segmented_cache.set_plan(self.ctx, plan, pos0)
        self._plan_dropped()
        self.st.plan, self.st.pos0, self.st.compacted, self.st.ran = plan, pos0, False, False
        self.st.changed = True

    def set_plan_bad(self) -> None:
        lib, ffi = _native.lib(), _native.ffi
        ptr = segmented_cache._ctx_ptr(self.ctx)
        precs = ffi.new("uint8_t[]", [0, 1, 2, 9])
        cases = [
            ((1, 1, 16, precs, 2, 64), "seq_id 1"),
            ((0, 1, 0, precs, 2, 64), "chunk_size 0"),
            ((0, 1, 300, precs, 1, 400), "chunk_size 300"),
            ((0, 1, 16, precs, 4, 64), "precision 9 of chunk 3"),
            ((0, 1, 16, precs, -2, 64), "n_chunks -2"),
            ((0, 1, 16, ffi.NULL, 2, 64), "n_chunks 2 with precisions NULL"),
            ((0, -3, 16, precs, 2, 64), "pos0 -3"),
            ((0, 1, 16, precs, 3, 40), "longer than the context's n_context_tokens 40"),
            ((0, 1, 16, precs, 2, N_CTX), f"longer than the llama context's n_ctx {N_CTX}"),
        ]
        args, needle = self.rng.choice(cases)
        self.log.append(f"set_plan_bad({needle})")
        self.expect_error(needle, lambda: _native.check(lib.cocktail_set_plan(ptr, *args), "set_plan"))

    def flow(self) -> None:
        """The raw Cocktail flow: plan, prefill context + query, compact (must succeed), a few decodes."""
        ci, qi = self.rng.randrange(len(CONTEXTS)), self.rng.randrange(len(QUERIES))
        kind = self.rng.choice(PLAN_KINDS)
        self.log.append(f"flow(context {ci}, query {qi}, {kind})")
        self._set_plan(_plan(kind, len(_ids(self.llm, CONTEXTS[ci]))), len(self.bos))
        self._prefill(ci, qi)
        assert self.st.compact_outcomes(self.hooked) == [None], self.where()
        self.compact()
        assert self.st.compacted, self.where()
        self.decode()

    def resize(self) -> None:
        """llama.cpp's cache rebuilt with another size (cocktail_kv_resize): nothing it holds changes, later
        evals grow it again when needed."""
        before = segmented_cache.kv_cells(self.ctx)
        n_cells = self.rng.choice([0, -5, before.used, before.used + self.rng.randint(1, 300), 10 * N_CTX])
        self.log.append(f"resize({n_cells})")
        self.llm._resize_kv(n_cells)
        after = segmented_cache.kv_cells(self.ctx)
        want = N_CTX if n_cells <= 0 else min(N_CTX, max(256, -(-max(n_cells, before.used) // 256) * 256))
        assert (after.used, after.full, after.size) == (before.used, N_CTX, want), self.where()

    def clear(self) -> None:
        self.log.append("clear")
        segmented_cache.clear(self.ctx)
        self._plan_dropped()
        self.st.plan, self.st.compacted = None, False

    def _plan_dropped(self) -> None:
        """The native plan was replaced or cleared: remember whether a graph ran under it."""
        self.hooked = self.hooked or (self.st.plan is not None and self.st.ran)

    def compact(self) -> None:
        outcomes = self.st.compact_outcomes(self.hooked)
        self.log.append(f"compact (expect {' or '.join(o or 'success' for o in outcomes)})")
        self.st.changed = True
        try:
            segmented_cache.compact(self.ctx)
        except (ValueError, RuntimeError) as exc:
            assert any(o is not None and o in str(exc) for o in outcomes), f"{exc!r}; {self.where()}"
            return
        assert None in outcomes, f"compact succeeded; {self.where()}"
        self.st.compacted = True
        self.st.positions -= set(range(self.st.pos0, self.st.pos0 + self.st.n_plan()))

    def region_info_bad(self) -> None:
        layer = self.rng.choice([-1, self.n_layer, 99])
        self.log.append(f"region_info({layer})")
        info = _native.ffi.new("struct cocktail_layer_regions *")
        ptr = segmented_cache._ctx_ptr(self.ctx)
        self.expect_error(
            f"layer {layer} is not in [0, {self.n_layer})",
            lambda: _native.check(_native.lib().cocktail_region_info(ptr, 0, layer, info), "region_info"),
        )

    def _eval(self, tokens: list[int]) -> None:
        self.llm.eval(tokens)  # removes positions >= n_tokens first, then appends
        st = self.st
        st.positions = {p for p in st.positions if p < st.n_tokens} | set(
            range(st.n_tokens, st.n_tokens + len(tokens))
        )
        st.n_tokens += len(tokens)
        st.ran = st.ran or bool(tokens)
        assert self.llm.n_tokens == st.n_tokens, self.where()

    def prefill(self) -> None:
        """Another prompt from position 0 (llama-cpp-python's reset + eval), under whatever plan is set."""
        ci, qi = self.rng.randrange(len(CONTEXTS)), self.rng.randrange(len(QUERIES))
        self.log.append(f"prefill(context {ci}, query {qi})")
        self._prefill(ci, qi)

    def _prefill(self, ci: int, qi: int) -> None:
        self.llm.n_tokens = 0
        self.st.n_tokens = 0
        self._eval(self.bos + _ids(self.llm, CONTEXTS[ci]) + _ids(self.llm, QUERIES[qi]))

    def decode(self) -> None:
        n = self.rng.randint(1, 4)
        if self.st.n_tokens + n > N_CTX:
            return
        self.log.append(f"decode({n})")
        self._eval([self.rng.randrange(259, 500) for _ in range(n)])

    def reset(self) -> None:
        self.log.append("reset")
        self.llm.reset()  # next eval starts at 0; if the segmented cache touched the context, it is emptied
        if self.st.changed:
            self._plan_dropped()
            self.st = State()
        else:  # llama.cpp's cache keeps its positions until the next eval
            self.st.n_tokens = 0

    def ask(self) -> None:
        ci, qi = self.rng.randrange(len(CONTEXTS)), self.rng.randrange(len(QUERIES))
        kind = self.rng.choice(PLAN_KINDS)
        self.log.append(f"ask(context {ci}, query {qi}, {kind})")
        plan = _plan(kind, len(_ids(self.llm, CONTEXTS[ci])))
        ans = self.llm.ask(CONTEXTS[ci], QUERIES[qi], plan=plan, max_tokens=MAX_TOKENS)
        self._plan_dropped()
        assert ans.tokens == _fresh_ask(self.fresh, self.path, self.shape, ci, qi, kind), self.where()
        n_plan = plan.n_chunks * plan.chunk_size
        self.st = State(plan=plan, pos0=len(self.bos), compacted=True, ran=True, n_tokens=self.llm.n_tokens)
        self.st.changed = True
        self.st.positions = set(range(self.llm.n_tokens)) - set(range(len(self.bos), len(self.bos) + n_plan))

    def ask_bad(self) -> None:
        """A rejected ask (a plan for another context, a chunk size the cache refuses) leaves the context as
        it was; then a good one."""
        n = len(_ids(self.llm, CONTEXTS[0]))
        bad, needle = self.rng.choice(
            [
                (Plan.uniform(n + 1, 8, "q4"), f"plan.n_context_tokens={n + 1} but the context has {n} "),
                (Plan.uniform(n - 17, 16, "q2"), f"plan.n_context_tokens={n - 17}"),
                (Plan.uniform(n, 300, "q4"), "plan.chunk_size=300 is larger than 256"),
            ]
        )
        self.log.append(f"ask_bad({needle})")
        self.expect_error(needle, lambda: self.llm.ask(CONTEXTS[0], QUERIES[0], plan=bad, max_tokens=2))
        self.ask()

    def completion(self) -> None:
        pi = self.rng.randrange(len(PROMPTS))
        self.log.append(f"completion({pi})")
        assert _completion(self.llm, PROMPTS[pi]) == _fresh_completion(
            self.fresh, self.path, self.shape, pi
        ), self.where()
        # on a cleared cache if the segmented cache had touched it, else on the intact one (prefix reuse)
        if self.st.changed:
            self._plan_dropped()
        self.st = State(n_tokens=self.llm.n_tokens, positions=set(range(self.llm.n_tokens)))

    def final(self) -> None:
        """Whatever came before: plain completion, ask and completion again equal a fresh context's."""
        self.log.append("final")
        self.completion()
        self.ask()
        self.completion()
        self.check_regions()


@pytest.mark.parametrize("shape", ["tiny-mha", "tiny-gqa"])
@pytest.mark.parametrize("seed", range(SEQUENCES))
def test_random_call_sequences(tiny_models: dict[str, Path], fresh: dict, shape: str, seed: int) -> None:
    runner = Runner(tiny_models[shape], shape, fresh, seed=1000 * seed + len(shape))
    for _ in range(STEPS):
        runner.step()
    runner.final()
    ops = {entry.split("(")[0].split(" ")[0] for entry in runner.log}
    assert {"set_plan", "compact", "prefill", "ask"} <= ops, runner.log
    runner.llm.close()


def test_compact_misuse_in_order(tiny_models: dict[str, Path]) -> None:
    """The named misuses, deterministic: each raises, then the context still answers like a fresh one."""
    path = tiny_models["tiny-gqa"]
    llm = _llm(path)
    ctx = llm._ctx.ctx
    ids = _ids(llm, CONTEXTS[1])
    bos = [llm.token_bos()] if llm._model.add_bos_token() else []
    plan = _plan("mixed16", len(ids))
    with pytest.raises(RuntimeError, match="has no plan"):
        segmented_cache.compact(ctx)
    segmented_cache.set_plan(ctx, plan, len(bos))
    segmented_cache.set_plan(ctx, plan, len(bos))  # twice: replaces the first
    with pytest.raises(RuntimeError, match="never went through the segmented-cache hook"):
        segmented_cache.compact(ctx)  # no prefill since the plan
    n_plan = plan.n_chunks * plan.chunk_size
    llm.eval(bos + ids[:n_plan])
    with pytest.raises(RuntimeError, match="no token follows the planned chunks"):
        segmented_cache.compact(ctx)  # the context's remainder and the query are missing
    llm.eval(ids[n_plan:] + _ids(llm, QUERIES[0]))
    segmented_cache.compact(ctx)
    with pytest.raises(RuntimeError, match="already compacted"):
        segmented_cache.compact(ctx)
    segmented_cache.check(ctx)
    segmented_cache.set_plan(ctx, plan, len(bos))  # a new plan on the compacted cache: its positions are gone
    llm.eval([300])
    with pytest.raises(RuntimeError, match=f"position {len(bos)} of sequence 0 is not in the KV cache"):
        segmented_cache.compact(ctx)
    segmented_cache.clear(ctx)
    segmented_cache.clear(ctx)
    assert llm.kv_regions() == {}
    fresh: dict = {}
    assert _completion(llm, PROMPTS[0]) == _fresh_completion(fresh, path, "tiny-gqa", 0)
    ans = llm.ask(CONTEXTS[1], QUERIES[0], plan=plan, max_tokens=MAX_TOKENS)
    assert ans.tokens == _fresh_ask(fresh, path, "tiny-gqa", 1, 0, "mixed16")
    llm.close()


def test_calls_on_a_closed_context_raise(tiny_models: dict[str, Path]) -> None:
    llm = _llm(tiny_models["tiny-mha"])
    llm.close()
    for call in (segmented_cache.clear, segmented_cache.compact, segmented_cache.check):
        with pytest.raises(ValueError, match="closed"):
            call(llm._ctx.ctx)
    with pytest.raises(ValueError, match="closed"):
        llm.ask(CONTEXTS[0], QUERIES[0], max_tokens=2)
