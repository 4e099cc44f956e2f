"""`Llama`: llama-cpp-python's Llama on our libllama, with the Cocktail KV-cache options."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
from typing_extensions import TypedDict, Unpack

from . import _native, completion, segmented_cache
from .encoders import check_encoder_spec
from .f16_snapshot import F16Snapshot
from .plan import Plan
from .planner import validate_planner_options
from .progress import progress_bar
from .segmented_cache import LayerRegions

KV_MODES = ("f16", "cocktail", "q4", "q2")
PROGRESS_MIN_TOKENS = 4096
"""progress=None shows a prefill bar from this many tokens (on a terminal)."""
"""f16: llama.cpp's own cache, untouched. cocktail: per-chunk F16/Q4/Q2 by query relevance.
q4 / q2: every context chunk at that precision (same code path as cocktail; baselines)."""


def validate_kv_options(kv_mode: Any, chunk_size: Any, alpha: Any, beta: Any) -> None:
    """Raises ValueError naming the first bad Cocktail option."""
    if not isinstance(kv_mode, str) or kv_mode not in KV_MODES:
        raise ValueError(f"kv_mode={kv_mode!r} is not one of {', '.join(KV_MODES)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= 256:
        raise ValueError(f"chunk_size={chunk_size!r} must be an integer in 1..256")
    validate_planner_options(chunk_size, alpha, beta)


@dataclass(frozen=True)
class Answer:
    """What `Llama.ask` returns; ``str(answer)`` is the text."""

    text: str
    tokens: list[int]
    """Generated token ids (a final end-of-generation token is not included)."""
    plan: Plan | None
    """The plan the context ran with (None for kv_mode="f16")."""
    n_prompt_tokens: int
    """BOS + context + query tokens evaluated before generation."""
    logits: np.ndarray | None = None
    """[len(tokens), n_vocab] float32: the logits each token was chosen from (``return_logits=True``)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each phase: plan_s, prefill_s, compaction_s, decode_s (wall clock);
    decode_step_median_s: the median of the decode steps' own times (sampling, a streaming caller's handling
    of the token, one token's evaluation), a steady-state time per token that one slow step (the first one's
    graph capture, a cache resize) does not move."""

    def __str__(self) -> str:
        return self.text


class CocktailState(llama_cpp.LlamaState):
    """A `llama_cpp.LlamaState` plus the segmented cache's plan and regions (picklable)."""

    def __init__(self, base: llama_cpp.LlamaState, segmented: bytes, plan: Plan | None) -> None:
        super().__init__(
            input_ids=base.input_ids,
            scores=base.scores,
            n_tokens=base.n_tokens,
            llama_state=base.llama_state,
            llama_state_size=base.llama_state_size,
            seed=base.seed,
        )
        self.segmented = segmented
        self.plan = plan


class BatchOptions(TypedDict, total=False):
    """Keyword options of `Llama.ask_batch` (those of `ask` without return_logits)."""

    mode: str | None
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    stop: str | Sequence[str] | None
    ignore_eos: bool


class AskOptions(BatchOptions, total=False):
    """Keyword options of `Llama.ask` / `ask_tokens` (defaults: those of `Llama.ask_stream`)."""

    return_logits: bool


def _gguf_problem(path: str) -> str:
    """Why llama.cpp may have refused a model file, from its first bytes (its log is off unless verbose)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        return f"cannot read it ({exc})"
    if magic != b"GGUF":
        return f"not a GGUF file (it starts with {magic!r}, not b'GGUF')"
    return (
        "a GGUF file llama.cpp could not load (truncated, corrupt or an unsupported model; "
        "verbose=True shows llama.cpp's reason)"
    )


def _first_stop(text: str, stops: list[str]) -> int:
    """Index where the earliest stop string starts in text, -1 if none does."""
    hits = [text.index(s) for s in stops if s and s in text]
    return min(hits) if hits else -1


def _stop_completed(detokenize: Callable[[list[int]], bytes], tokens: list[int], stops: list[str]) -> bool:
    """Whether the text of ``tokens`` holds a stop string, checked once per appended token: an occurrence that
    was not there before ends in the last token, so only a tail of the tokens whose text is longer than the
    longest stop (plus a few bytes, for a cut UTF-8 character or a stripped leading space) is detokenized,
    not the whole answer at every step."""
    need = 4 * max((len(s) for s in stops), default=0) + 8  # bytes: 4 per character at most, and a margin
    start = len(tokens) - 1
    text = detokenize(tokens[start:])
    while start > 0 and len(text) < need:
        start = max(0, start - max(1, len(tokens) - start))  # double the tail
        text = detokenize(tokens[start:])
    return _first_stop(text.decode("utf-8", errors="replace"), stops) >= 0


class Llama(llama_cpp.Llama):
    """Drop-in `llama_cpp.Llama` with Cocktail options.

    Every llama-cpp-python argument is accepted unchanged. Extra keyword arguments:
    kv_mode ("f16" | "cocktail" | "q4" | "q2"), chunk_size (tokens per chunk, 1..256),
    alpha / beta (threshold fractions of the similarity range, paper defaults 0.6 / 0.1),
    encoder (name, path or object embedding chunk texts and the query), keep_f16_context (keep a host-RAM
    F16 copy of the last context for re-planning without prefill), progress (tqdm bars for prefill and
    planning: True, False, None = on a terminal for long inputs), release_staging (default True: after
    compaction llama.cpp's cache shrinks to the cells the query and answer need, so the F16 staging copy
    of the context is freed; the next prefill grows it back to n_ctx), n_seq_max (default 1: sequences
    one context holds, for `ask_batch`; > 1 makes llama.cpp's cache one stream shared by them,
    kv_unified=True).

    With a segmented kv_mode, llama.cpp's ``swa_full`` defaults to False (pass it to override): the
    sliding-window layers of an iSWA model (Gemma 3) then keep only their window, not n_ctx tokens.

    `ask(context, query)` runs the Cocktail flow: plan, prefill, compaction into Q2/Q4/F16
    regions, decode. kv_mode="f16" is plain llama.cpp (ask() then runs without a plan).
    """

    _ctx: Any  # llama-cpp-python's LlamaContext (replaced when n_seq_max > 1)

    def __init__(
        self,
        model_path: str,
        *args: Any,
        kv_mode: str = "f16",
        chunk_size: int = 32,
        alpha: float = 0.6,
        beta: float = 0.1,
        encoder: Any = None,
        keep_f16_context: bool = False,
        progress: bool | None = None,
        release_staging: bool = True,
        n_seq_max: int = 1,
        **kwargs: Any,
    ) -> None:
        validate_kv_options(kv_mode, chunk_size, alpha, beta)
        check_encoder_spec(encoder)  # before the model loads: a missing encoder path fails fast
        if not isinstance(keep_f16_context, bool):
            raise ValueError(f"keep_f16_context={keep_f16_context!r} must be True or False")
        self.keep_f16_context = keep_f16_context
        if not isinstance(release_staging, bool):
            raise ValueError(f"release_staging={release_staging!r} must be True or False")
        self.release_staging = release_staging
        if isinstance(n_seq_max, bool) or not isinstance(n_seq_max, int) or not 1 <= n_seq_max <= 256:
            raise ValueError(f"n_seq_max={n_seq_max!r} must be an integer in 1..256")
        self.n_seq_max = n_seq_max
        self._kv_shrunk = False  # llama.cpp's cache is smaller than n_ctx (cocktail_kv_resize)
        if kv_mode != "f16" and kwargs.get("swa_full") is None:
            kwargs["swa_full"] = False
        if progress not in (None, True, False):
            raise ValueError(f"progress={progress!r} must be True, False or None (auto)")
        self.progress = progress
        self._f16_snapshot: F16Snapshot | None = None
        self._segmented_checked = False
        self._chat_query: str | None = None
        self._last_answer_info: dict[str, Any] | None = None
        self.kv_mode = kv_mode
        self.chunk_size = chunk_size
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.encoder = encoder
        self._cocktail_plan: Plan | None = None
        self._segmented_active = False
        self._planner: Any = None
        try:
            super().__init__(model_path, *args, **kwargs)
        except ValueError as exc:
            if not str(exc).startswith("Failed to load model"):
                raise
            raise ValueError(f"{exc}: {_gguf_problem(model_path)}") from exc
        if n_seq_max > 1:
            self._recreate_context(n_seq_max)
        if kv_mode != "f16":
            try:
                self._check_segmented_supported()
            except BaseException:
                self.close()
                raise

    def _recreate_context(self, n_seq_max: int) -> None:
        """llama-cpp-python makes one-sequence contexts: make ours again with n_seq_max sequences on one
        KV stream (the segmented cache needs a single stream)."""
        from llama_cpp._internals import LlamaContext

        params = self.context_params
        params.n_seq_max = n_seq_max
        params.kv_unified = True
        self._ctx.close()  # before the new one: never two full caches at once
        try:
            ctx = LlamaContext(model=self._model, params=params, verbose=self.verbose)
        except BaseException:
            self.close()
            raise
        self._ctx = self._stack.enter_context(contextlib.closing(ctx))

    @property
    def cocktail_plan(self) -> Plan | None:
        """The plan of the last `ask` (None before, and in kv_mode="f16")."""
        return self._cocktail_plan

    def kv_regions(self, seq_id: int = 0) -> dict[int, LayerRegions]:
        """Regions of each layer in the segmented cache, by model layer index (empty when no segmented
        cache was used; sliding-window layers of iSWA models are not listed: they keep llama.cpp's cache).
        seq_id: the sequence (`ask_batch` puts pair i in sequence i)."""
        if not self._segmented_checked:
            return {}
        n_layer = llama_cpp.llama_model_n_layer(self._model.model)
        return segmented_cache.layer_regions(self._ctx.ctx, n_layer, seq_id)

    def kv_bytes(self) -> dict[str, int]:
        """Allocated KV bytes: llama.cpp's own cache ("llama_cache") and our Q2/Q4/F16 regions ("regions")."""
        regions = sum(r.total_bytes for s in range(self.n_seq_max) for r in self.kv_regions(s).values())
        return {"llama_cache": _native.memory_bytes(self._ctx.ctx)["kv_cache"], "regions": regions}

    def ask(
        self, context: str, query: str, plan: Plan | None = None, **options: Unpack[AskOptions]
    ) -> Answer:
        """Answers ``query`` about ``context`` with the KV cache of this ``kv_mode``.

        The context is tokenized with BOS (when the model adds one), the query right after it.
        plan: per-chunk precisions of the context's tokens (``Plan.n_context_tokens`` must be its
        token count, `cocktail_gguf.planner` tokenizes the same way); default: uniform for
        "q4" / "q2", the planner (encoder, chunk_size, alpha, beta of this Llama) for "cocktail".
        options (`AskOptions`): mode (this call's kv_mode, e.g. "f16" to compare on one loaded model),
        max_tokens (64), temperature (0 = greedy), top_k, top_p, min_p, repeat_penalty, stop,
        return_logits, ignore_eos. Generation stops at an end-of-generation token (unless
        ``ignore_eos``), a ``stop`` string or ``max_tokens``. ``Answer.timings`` has the seconds spent
        planning, prefilling, compacting and decoding.
        """
        self._check_open()
        context_ids, query_ids = self._pair_ids(context, query, "context", "query")
        return self.ask_tokens(context_ids, query_ids, plan, query_text=query, **options)

    def _pair_ids(
        self, context: Any, query: Any, context_name: str, query_name: str
    ) -> tuple[list[int], list[int]]:
        """Token ids of a context (no BOS, no special tokens) and its query (special tokens parsed), as `ask`
        and `ask_batch` tokenize them; the names are those the errors give the bad value."""
        if not isinstance(context, str):
            raise ValueError(f"{context_name}={context!r} must be a string")
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"{query_name}={query!r} must be a non-empty string")
        context_ids = list(self.tokenize(context.encode("utf-8"), add_bos=False, special=False))
        query_ids = list(self.tokenize(query.encode("utf-8"), add_bos=False, special=True))
        return context_ids, query_ids

    def ask_tokens(
        self,
        context_ids: Sequence[int],
        query_ids: Sequence[int],
        plan: Plan | None = None,
        *,
        query_text: str | None = None,
        **options: Unpack[AskOptions],
    ) -> Answer:
        """`ask` on token ids (a BOS is put first when the model adds one); ``query_text`` is what the
        planner embeds as the query (default: the detokenized ``query_ids``)."""
        stream = self.ask_stream(context_ids, query_ids, plan, query_text=query_text, **options)
        while True:
            try:
                next(stream)
            except StopIteration as done:
                answer: Answer = done.value
                return answer

    def ask_stream(
        self,
        context_ids: Sequence[int],
        query_ids: Sequence[int],
        plan: Plan | None = None,
        *,
        query_text: str | None = None,
        mode: str | None = None,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        stop: str | Sequence[str] | None = None,
        return_logits: bool = False,
        ignore_eos: bool = False,
    ) -> Generator[int, None, Answer]:
        """`ask_tokens` as a generator: yields each generated token id, returns the `Answer`.

        A token that completes a ``stop`` string is not yielded."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"max_tokens={max_tokens!r} must be a non-negative integer")
        if stop is not None and not isinstance(stop, str):
            if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
                raise ValueError(f"stop={stop!r} must be a string or a sequence of strings")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        plan, timings = self._load_context(context_ids, query_ids, plan, query_text, mode, max_tokens)
        t3 = time.perf_counter()

        sampler = self._init_sampler(
            top_k=top_k, top_p=top_p, min_p=min_p, temp=temperature, repeat_penalty=repeat_penalty
        )
        vocab = self._model.vocab
        n_vocab = self.n_vocab()
        tokens: list[int] = []
        rows: list[np.ndarray] = []
        n_decoded = 0  # tokens evaluated after the prompt (decode steps)
        steps: list[float] = []  # each decode step's seconds, from the end of the previous one
        t_step = t3
        for _ in range(max_tokens):
            if return_logits:  # before sampling: the row the token is chosen from
                ptr = llama_cpp.llama_get_logits_ith(self._ctx.ctx, -1)
                rows.append(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy())
            token = int(sampler.sample(self._ctx, -1))
            if not ignore_eos and llama_cpp.llama_vocab_is_eog(vocab, token):
                del rows[len(tokens) :]
                break
            tokens.append(token)
            if stops and _stop_completed(self.detokenize, tokens, stops):
                break
            yield token
            self.eval([token])
            n_decoded += 1
            t_now = time.perf_counter()
            steps.append(t_now - t_step)
            t_step = t_now
        t4 = time.perf_counter()
        if plan is not None:
            segmented_cache.check(self._ctx.ctx)
        text = self.detokenize(tokens).decode("utf-8", errors="replace")
        cut = _first_stop(text, stops)
        text = text if cut < 0 else text[:cut]
        logits = None
        if return_logits:
            logits = np.stack(rows) if rows else np.zeros((0, n_vocab), dtype=np.float32)
        timings.update(
            decode_s=t4 - t3,
            n_decoded=float(n_decoded),
            decode_step_median_s=statistics.median(steps) if steps else 0.0,
        )
        return Answer(
            text=text,
            tokens=tokens,
            plan=plan,
            n_prompt_tokens=self.n_tokens - n_decoded,
            logits=logits,
            timings=timings,
        )

    def ask_batch(
        self,
        contexts: Sequence[str],
        queries: Sequence[str],
        plans: Sequence[Plan | None] | None = None,
        **options: Unpack[BatchOptions],
    ) -> list[Answer]:
        """`ask` for several (context, query) pairs at once: pair i runs in sequence i of this context (at
        most ``n_seq_max``) with its own plan, and every decode step evaluates one token of each unfinished
        pair in a single batch. ``plans[i]`` as in `ask` (None: the planner / uniform plan of the mode).
        Options: those of `ask` except return_logits. With greedy sampling the answers equal `ask`'s one at
        a time. The cache must hold one prompt while it is prefilled plus the F16 tails of the others."""
        if isinstance(contexts, str) or isinstance(queries, str):
            raise ValueError("contexts and queries must be sequences of strings (one per pair), not a string")
        if len(contexts) != len(queries):
            raise ValueError(f"{len(contexts)} contexts and {len(queries)} queries: one query per context")
        pairs = [
            self._pair_ids(c, q, f"contexts[{i}]", f"queries[{i}]")
            for i, (c, q) in enumerate(zip(contexts, queries, strict=True))
        ]
        context_ids, query_ids = [c for c, _ in pairs], [q for _, q in pairs]
        return self.ask_batch_tokens(context_ids, query_ids, plans, query_texts=list(queries), **options)

    def ask_batch_tokens(
        self,
        context_ids: Sequence[Sequence[int]],
        query_ids: Sequence[Sequence[int]],
        plans: Sequence[Plan | None] | None = None,
        *,
        query_texts: Sequence[str] | None = None,
        **options: Unpack[BatchOptions],
    ) -> list[Answer]:
        """`ask_batch` on token ids (see `ask_tokens`)."""
        from .batch import ask_batch_tokens

        return ask_batch_tokens(self, context_ids, query_ids, plans, query_texts, **options)

    def load_context(
        self,
        context_ids: Sequence[int],
        query_ids: Sequence[int],
        plan: Plan | None = None,
        *,
        query_text: str | None = None,
        mode: str | None = None,
    ) -> Plan | None:
        """The first half of `ask_tokens`: plans, prefills BOS + context + query and compacts the context
        into its regions; the cache is then ready for decoding (e.g. `next_token_logprobs`). Returns
        the plan (None in mode "f16")."""
        return self._load_context(context_ids, query_ids, plan, query_text, mode, 0)[0]

    def _load_context(
        self,
        context_ids: Sequence[int],
        query_ids: Sequence[int],
        plan: Plan | None,
        query_text: str | None,
        mode: str | None,
        max_tokens: int,
    ) -> tuple[Plan | None, dict[str, float]]:
        self._check_open()
        mode = self.kv_mode if mode is None else mode
        if not isinstance(mode, str) or mode not in KV_MODES:
            raise ValueError(f"mode={mode!r} is not one of {', '.join(KV_MODES)}")
        if plan is not None and not isinstance(plan, Plan):
            raise ValueError(f"plan={plan!r} is not a cocktail_gguf Plan")
        if plan is not None and mode == "f16":
            raise ValueError(
                "plan given with kv_mode='f16', which keeps llama.cpp's cache: use kv_mode='cocktail'"
            )
        if not query_ids:
            raise ValueError("the query has no tokens")
        context_ids = [int(t) for t in context_ids]
        prefix = [self.token_bos()] if self._model.add_bos_token() else []
        prompt = prefix + context_ids + [int(t) for t in query_ids]
        if len(prompt) + max_tokens > self.n_ctx():
            raise ValueError(
                f"{len(prompt)} prompt tokens + max_tokens={max_tokens} do not fit n_ctx={self.n_ctx()}"
            )
        if mode != "f16":
            self._check_segmented_supported()
        if query_text is None:
            query_text = self.detokenize(list(query_ids)).decode("utf-8", errors="replace")

        t0 = time.perf_counter()
        plan = self._plan_for(context_ids, query_text, plan, mode)
        t1 = time.perf_counter()
        self._prefill(prompt, len(prefix) + len(context_ids), plan, pos0=len(prefix))
        t2 = time.perf_counter()
        if plan is not None:
            segmented_cache.compact(self._ctx.ctx)
        t3 = time.perf_counter()
        if plan is not None and self.release_staging:
            self._resize_kv(segmented_cache.kv_cells(self._ctx.ctx).used + max_tokens)
        t4 = time.perf_counter()
        return plan, {"plan_s": t1 - t0, "prefill_s": t2 - t1, "compaction_s": t3 - t2, "release_s": t4 - t3}

    def _resize_kv(self, n_cells: int) -> None:
        """llama.cpp's cache of this context gets max(n_cells, cells in use) cells (0: all n_ctx)."""
        ctx = self._ctx.ctx
        segmented_cache.kv_resize(ctx, n_cells)
        self._ctx.memory = llama_cpp.llama_get_memory(ctx)  # llama-cpp-python keeps the pointer
        cells = segmented_cache.kv_cells(ctx)
        self._kv_shrunk = cells.size < cells.full

    def _reserve_cells(self, n_tokens: int) -> None:
        """Grows a shrunk llama.cpp cache (at least doubling it) so that n_tokens more tokens fit."""
        if not self._kv_shrunk:
            return
        cells = segmented_cache.kv_cells(self._ctx.ctx)
        if cells.used + n_tokens > cells.size:
            self._resize_kv(max(cells.used + n_tokens, 2 * cells.size))

    def eval(self, tokens: Sequence[int]) -> None:
        self._reserve_cells(len(tokens))
        super().eval(tokens)

    def next_token_logprobs(self, tokens: Sequence[int], batch_size: int = 256) -> np.ndarray:
        """Evaluates ``tokens`` after what the cache holds; returns log p(tokens[i + 1] | all before) for
        i in 0..len(tokens)-2 (float64), the teacher-forced scores that perplexity is made of."""
        ids = [int(t) for t in tokens]
        if len(ids) + self.n_tokens > self.n_ctx():
            raise ValueError(f"{len(ids)} tokens after {self.n_tokens} do not fit n_ctx={self.n_ctx()}")
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or not 1 <= batch_size <= self.n_batch
        ):
            raise ValueError(f"batch_size={batch_size!r} must be an integer in 1..n_batch={self.n_batch}")
        self._reserve_cells(len(ids))
        n_vocab = self.n_vocab()
        out = np.zeros(max(0, len(ids) - 1), dtype=np.float64)
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            self._batch.set_batch(batch=chunk, n_past=self.n_tokens, logits_all=True)
            self._ctx.decode(self._batch)
            self.input_ids[self.n_tokens : self.n_tokens + len(chunk)] = chunk
            self.n_tokens += len(chunk)
            logits = np.ctypeslib.as_array(self._ctx.get_logits(), shape=(len(chunk), n_vocab))
            top = logits.max(axis=1, keepdims=True)
            lse = np.log(np.exp(logits - top).sum(axis=1, dtype=np.float64)) + top[:, 0]
            nxt = ids[start + 1 : start + len(chunk) + 1]
            rows = np.arange(len(nxt))
            out[start : start + len(nxt)] = logits[rows, nxt].astype(np.float64) - lse[: len(nxt)]
        if self._segmented_active:
            segmented_cache.check(self._ctx.ctx)
        return out

    def _prefill(self, prompt: list[int], n_keep: int, plan: Plan | None, pos0: int) -> None:
        """Clears the cache, sets the plan, and evaluates ``prompt``; with ``keep_f16_context`` the first
        ``n_keep`` tokens (BOS + context) come from / go to the host-RAM F16 copy."""
        self._clear_cache()
        if plan is not None:
            segmented_cache.set_plan(self._ctx.ctx, plan, pos0=pos0)
            self._segmented_active = True
        self._cocktail_plan = plan
        done = 0
        snapshot = self._f16_snapshot
        if snapshot is not None and snapshot.covers(prompt):
            snapshot.restore(self._ctx.ctx)
            done = len(snapshot.tokens)
            self.input_ids[:done] = snapshot.tokens
            self.n_tokens = done
        if self.keep_f16_context and n_keep > done:
            self._eval_with_progress(prompt[done:n_keep])
            self._f16_snapshot = None  # the old copy is freed before the new one is made
            self._f16_snapshot = F16Snapshot.save(self._ctx.ctx, prompt[:n_keep])
            done = n_keep
        self._eval_with_progress(prompt[done:])

    def _eval_with_progress(self, tokens: list[int]) -> None:
        bar = progress_bar(len(tokens), self.progress, "prefill", "tok", PROGRESS_MIN_TOKENS)
        if bar is None:
            self.eval(tokens)
            return
        with bar:
            for start in range(0, len(tokens), self.n_batch):
                piece = tokens[start : start + self.n_batch]
                self.eval(piece)
                bar.update(len(piece))

    @property
    def f16_snapshot_bytes(self) -> int:
        """Host-RAM bytes of the kept F16 copy of the last context (0 without ``keep_f16_context``)."""
        return self._f16_snapshot.nbytes if self._f16_snapshot is not None else 0

    def _check_open(self) -> None:
        if getattr(self, "_ctx", None) is None or self._ctx.ctx is None:
            raise ValueError("this Llama is closed (close() freed its model and context)")

    def _check_segmented_supported(self) -> None:
        if not self._segmented_checked:
            segmented_cache.check_supported(self._ctx.ctx)
            self._segmented_checked = True

    def _plan_for(self, context_ids: list[int], query: str, plan: Plan | None, mode: str) -> Plan | None:
        if mode == "f16":
            return None
        if plan is not None:
            if plan.chunk_size > 256:  # before the cache is cleared: the native plan takes 1..256
                raise ValueError(f"plan.chunk_size={plan.chunk_size} is larger than 256, the cache's limit")
            if plan.n_context_tokens != len(context_ids):
                raise ValueError(
                    f"plan.n_context_tokens={plan.n_context_tokens} but the context has "
                    f"{len(context_ids)} tokens"
                )
            return plan
        if mode in ("q4", "q2"):
            return dataclasses.replace(Plan.uniform(len(context_ids), self.chunk_size, mode), query=query)
        if self._planner is None:
            try:
                from .planner import Planner
            except ImportError as exc:  # pragma: no cover - the planner ships with the package
                raise RuntimeError(f"kv_mode='cocktail' without a plan needs the planner: {exc}") from exc
            self._planner = Planner(
                tokenizer=self,
                encoder=self.encoder,
                chunk_size=self.chunk_size,
                alpha=self.alpha,
                beta=self.beta,
                progress=self.progress,
            )
        result: Plan = self._planner.plan(context_ids, query)
        return result

    def _clear_cache(self) -> None:
        """Empties llama.cpp's cache and drops the segmented cache's plan and regions."""
        for seq in range(self.n_seq_max):  # also plans set through segmented_cache directly
            segmented_cache.clear(self._ctx.ctx, seq)
        self._segmented_active = False
        mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        if mem is not None:
            llama_cpp.llama_memory_clear(mem, True)
        segmented_cache.forget(self._ctx.ctx)
        self.n_tokens = 0
        self._requires_eval = True
        if self._kv_shrunk:  # empty now: the full-size cache comes back without copying anything
            self._resize_kv(0)

    # --- OpenAI-style entry points (cocktail_gguf.completion has the rules) ----------------------------
    def create_completion(
        self,
        prompt: str | list[int],
        *args: Any,
        cocktail_query: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """llama-cpp-python's `create_completion`; with a segmented kv_mode the query is ``cocktail_query``
        (default: the prompt's last non-empty line), the text before it the context, and the response
        has a "cocktail" entry (plan summary, KV bytes, timings)."""
        query = cocktail_query if cocktail_query is not None else self._chat_query
        if self.kv_mode == "f16":
            if cocktail_query is not None:
                raise ValueError(
                    f"cocktail_query={cocktail_query!r} given with kv_mode='f16' (no plan is made)"
                )
            return super().create_completion(prompt, *args, **kwargs)
        if args:
            raise TypeError("pass create_completion's options by keyword with the segmented KV cache")
        options = {
            "max_tokens": kwargs.pop("max_tokens", 16),
            "temperature": kwargs.pop("temperature", 0.8),
            "top_p": kwargs.pop("top_p", 0.95),
            "top_k": kwargs.pop("top_k", 40),
            "min_p": kwargs.pop("min_p", 0.05),
            "repeat_penalty": kwargs.pop("repeat_penalty", 1.0),
            "stop": kwargs.pop("stop", None),
            "stream": kwargs.pop("stream", False),
        }
        completion.check_sampling_args(kwargs)
        return completion.create_completion(self, prompt, cocktail_query=query, **options)

    def __call__(self, prompt: str | list[int], *args: Any, **kwargs: Any) -> Any:
        return self.create_completion(prompt, *args, **kwargs)

    def create_chat_completion(
        self,
        messages: list[Any],
        *args: Any,
        cocktail_query: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """llama-cpp-python's `create_chat_completion`; with a segmented kv_mode the last user message (or
        ``cocktail_query``) is the query, everything before it the context. Each call plans again for
        its own query: a new turn never decodes from a cache planned for an older one. The response (the
        last chunk when streaming) has a "cocktail" entry: plan summary, KV bytes, timings."""
        if self.kv_mode == "f16":
            if cocktail_query is not None:
                raise ValueError(
                    f"cocktail_query={cocktail_query!r} given with kv_mode='f16' (no plan is made)"
                )
            return super().create_chat_completion(messages, *args, **kwargs)
        self._chat_query = (
            cocktail_query if cocktail_query is not None else completion.last_user_text(messages)
        )
        self._last_answer_info = None
        try:
            result = super().create_chat_completion(messages, *args, **kwargs)
        finally:
            self._chat_query = None
        if not kwargs.get("stream", False):
            result["cocktail"] = self._last_answer_info
            return result
        return completion.tag_last_chunk(result, lambda: self._last_answer_info)

    # llama-cpp-python's own entry points (create_completion, generate, ...) run after an ask() on a clean
    # cache: its prefix reuse does not know that the context moved into the regions.
    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
        if self._segmented_active or segmented_cache.changed(self._ctx.ctx):
            self._clear_cache()
        return super().generate(tokens, *args, **kwargs)

    def reset(self) -> None:
        if self._segmented_active or segmented_cache.changed(self._ctx.ctx):
            self._clear_cache()
        super().reset()

    def save_state(self) -> llama_cpp.LlamaState:
        """llama-cpp-python's state; with a segmented cache in use also its plan and Q2/Q4/F16 regions
        (a `CocktailState`), so `load_state` continues exactly where this left off."""
        if self._segmented_checked:
            planned = [s for s in range(1, self.n_seq_max) if self.kv_regions(s)]
            if planned:
                raise ValueError(
                    f"save_state keeps sequence 0 only, but sequences {planned} hold plans (an ask_batch): "
                    "ask again for the pair to save"
                )
        base = super().save_state()
        if not self._segmented_active:
            return base
        return CocktailState(base, segmented_cache.state_bytes(self._ctx.ctx), self._cocktail_plan)

    def load_state(self, state: llama_cpp.LlamaState) -> None:
        segmented = state.segmented if isinstance(state, CocktailState) else b""
        if segmented:
            self._check_segmented_supported()
        if self._kv_shrunk:  # the state may hold more cells than the shrunk cache
            self._clear_cache()
        super().load_state(state)
        if self._segmented_checked:
            try:
                segmented_cache.restore_state(self._ctx.ctx, segmented)
            except BaseException:
                self._clear_cache()  # llama.cpp's half alone would decode without the context
                raise
        self._segmented_active = bool(segmented)
        self._cocktail_plan = state.plan if isinstance(state, CocktailState) else None
        if segmented and self.release_staging:
            self._resize_kv(segmented_cache.kv_cells(self._ctx.ctx).used)

    def close(self) -> None:
        # __init__ may raise before llama_cpp.Llama set up its resources (bad options above);
        # llama_free drops the context's segmented cache (ggml_patches/0003)
        if hasattr(self, "_stack"):
            if getattr(self, "_ctx", None) is not None and self._ctx.ctx is not None:
                segmented_cache.forget(self._ctx.ctx)  # a later context may get the same address
            super().close()
