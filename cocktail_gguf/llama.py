"""`Llama`: llama-cpp-python's Llama on our libllama, with the Cocktail KV-cache options."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from . import _native, segmented_cache
from .encoders import check_encoder_spec
from .plan import Plan
from .planner import validate_planner_options
from .segmented_cache import LayerRegions

KV_MODES = ("f16", "cocktail", "q4", "q2")
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
    """Seconds spent in each phase: plan_s, prefill_s, compaction_s, decode_s (wall clock)."""

    def __str__(self) -> str:
        return self.text


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


class Llama(llama_cpp.Llama):
    """Drop-in `llama_cpp.Llama` with Cocktail options.

    Every llama-cpp-python argument is accepted unchanged. Extra keyword arguments:
    kv_mode ("f16" | "cocktail" | "q4" | "q2"), chunk_size (tokens per chunk, 1..256),
    alpha / beta (threshold fractions of the similarity range, paper defaults 0.6 / 0.1),
    encoder (name, path or object embedding chunk texts and the query).

    `ask(context, query)` runs the Cocktail flow: plan, prefill, compaction into Q2/Q4/F16
    regions, decode. kv_mode="f16" is plain llama.cpp (ask() then runs without a plan).
    """

    def __init__(
        self,
        model_path: str,
        *args: Any,
        kv_mode: str = "f16",
        chunk_size: int = 32,
        alpha: float = 0.6,
        beta: float = 0.1,
        encoder: Any = None,
        **kwargs: Any,
    ) -> None:
        validate_kv_options(kv_mode, chunk_size, alpha, beta)
        check_encoder_spec(encoder)  # before the model loads: a missing encoder path fails fast
        self.kv_mode = kv_mode
        self.chunk_size = chunk_size
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.encoder = encoder
        self._cocktail_plan: Plan | None = None
        self._planner: Any = None
        try:
            super().__init__(model_path, *args, **kwargs)
        except ValueError as exc:
            if not str(exc).startswith("Failed to load model"):
                raise
            raise ValueError(f"{exc}: {_gguf_problem(model_path)}") from exc
        if kv_mode != "f16":
            try:
                segmented_cache.check_supported(self._ctx.ctx)
            except BaseException:
                self.close()
                raise

    @property
    def cocktail_plan(self) -> Plan | None:
        """The plan of the last `ask` (None before, and in kv_mode="f16")."""
        return self._cocktail_plan

    def kv_regions(self) -> dict[int, LayerRegions]:
        """Regions of each layer in the segmented cache, by model layer index (empty in kv_mode="f16";
        sliding-window layers of iSWA models are not listed: they keep llama.cpp's cache)."""
        if self.kv_mode == "f16":
            return {}
        return segmented_cache.layer_regions(self._ctx.ctx, llama_cpp.llama_model_n_layer(self._model.model))

    def kv_bytes(self) -> dict[str, int]:
        """Allocated KV bytes: llama.cpp's own cache ("llama_cache") and our Q2/Q4/F16 regions ("regions")."""
        regions = sum(r.total_bytes for r in self.kv_regions().values())
        return {"llama_cache": _native.memory_bytes(self._ctx.ctx)["kv_cache"], "regions": regions}

    def ask(
        self,
        context: str,
        query: str,
        plan: Plan | None = None,
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        stop: str | Sequence[str] | None = None,
        return_logits: bool = False,
        ignore_eos: bool = False,
    ) -> Answer:
        """Answers ``query`` about ``context`` with the KV cache of this ``kv_mode``.

        The context is tokenized with BOS (when the model adds one), the query right after it.
        plan: per-chunk precisions of the context's tokens (``Plan.n_context_tokens`` must be its
        token count, `cocktail_gguf.planner` tokenizes the same way); default: uniform for
        "q4" / "q2", the planner (encoder, chunk_size, alpha, beta of this Llama) for "cocktail".
        temperature 0 is greedy. Generation stops at an end-of-generation token (unless
        ``ignore_eos``), a ``stop`` string or ``max_tokens``. ``Answer.timings`` has the seconds spent
        planning, prefilling, compacting and decoding.
        """
        if self._ctx.ctx is None:
            raise ValueError("this Llama is closed (close() freed its model and context)")
        if not isinstance(context, str):
            raise ValueError(f"context={context!r} must be a string")
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query={query!r} must be a non-empty string")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"max_tokens={max_tokens!r} must be a non-negative integer")
        if plan is not None and not isinstance(plan, Plan):
            raise ValueError(f"plan={plan!r} is not a cocktail_gguf Plan")
        if plan is not None and self.kv_mode == "f16":
            raise ValueError(
                "plan given with kv_mode='f16', which keeps llama.cpp's cache: use kv_mode='cocktail'"
            )
        if stop is not None and not isinstance(stop, str):
            if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
                raise ValueError(f"stop={stop!r} must be a string or a sequence of strings")
        stops = [stop] if isinstance(stop, str) else list(stop or [])

        context_ids = list(self.tokenize(context.encode("utf-8"), add_bos=False, special=False))
        query_ids = list(self.tokenize(query.encode("utf-8"), add_bos=False, special=True))
        prefix = [self.token_bos()] if self._model.add_bos_token() else []
        prompt = prefix + context_ids + query_ids
        if len(prompt) + max_tokens > self.n_ctx():
            raise ValueError(
                f"{len(prompt)} prompt tokens + max_tokens={max_tokens} do not fit n_ctx={self.n_ctx()}"
            )
        t0 = time.perf_counter()
        plan = self._plan_for(context_ids, query, plan)
        t1 = time.perf_counter()

        self._clear_cache()
        if plan is not None:
            segmented_cache.set_plan(self._ctx.ctx, plan, pos0=len(prefix))
        self._cocktail_plan = plan
        self.eval(prompt)
        t2 = time.perf_counter()
        if plan is not None:
            segmented_cache.compact(self._ctx.ctx)
        t3 = time.perf_counter()

        sampler = self._init_sampler(
            top_k=top_k, top_p=top_p, min_p=min_p, temp=temperature, repeat_penalty=repeat_penalty
        )
        vocab = self._model.vocab
        n_vocab = self.n_vocab()
        tokens: list[int] = []
        rows: list[np.ndarray] = []
        n_decoded = 0  # tokens evaluated after the prompt (decode steps)
        for _ in range(max_tokens):
            if return_logits:  # before sampling: the row the token is chosen from
                ptr = llama_cpp.llama_get_logits_ith(self._ctx.ctx, -1)
                rows.append(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy())
            token = int(sampler.sample(self._ctx, -1))
            if not ignore_eos and llama_cpp.llama_vocab_is_eog(vocab, token):
                del rows[len(tokens) :]
                break
            tokens.append(token)
            if stops and _first_stop(self.detokenize(tokens).decode("utf-8", errors="replace"), stops) >= 0:
                break
            self.eval([token])
            n_decoded += 1
        t4 = time.perf_counter()
        if plan is not None:
            segmented_cache.check(self._ctx.ctx)
        text = self.detokenize(tokens).decode("utf-8", errors="replace")
        cut = _first_stop(text, stops)
        text = text if cut < 0 else text[:cut]
        logits = None
        if return_logits:
            logits = np.stack(rows) if rows else np.zeros((0, n_vocab), dtype=np.float32)
        timings = {
            "plan_s": t1 - t0,
            "prefill_s": t2 - t1,
            "compaction_s": t3 - t2,
            "decode_s": t4 - t3,
            "n_decoded": float(n_decoded),
        }
        return Answer(
            text=text, tokens=tokens, plan=plan, n_prompt_tokens=len(prompt), logits=logits, timings=timings
        )

    def _plan_for(self, context_ids: list[int], query: str, plan: Plan | None) -> Plan | None:
        if self.kv_mode == "f16":
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
        if self.kv_mode in ("q4", "q2"):
            return Plan.uniform(len(context_ids), self.chunk_size, self.kv_mode)
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
            )
        result: Plan = self._planner.plan(context_ids, query)
        return result

    def _clear_cache(self) -> None:
        """Empties llama.cpp's cache and drops the segmented cache's plan and regions."""
        segmented_cache.clear(self._ctx.ctx)
        mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        if mem is not None:
            llama_cpp.llama_memory_clear(mem, True)
        segmented_cache.forget(self._ctx.ctx)
        self.n_tokens = 0
        self._requires_eval = True

    # llama-cpp-python's own entry points (create_completion, generate, ...) run after an ask(), or any plan
    # or compaction through segmented_cache, on a clean cache: its prefix reuse does not know that the
    # context moved into the regions (or that regions of another prompt would join the attention).
    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
        if segmented_cache.changed(self._ctx.ctx):
            self._clear_cache()
        return super().generate(tokens, *args, **kwargs)

    def reset(self) -> None:
        if segmented_cache.changed(self._ctx.ctx):
            self._clear_cache()
        super().reset()

    def save_state(self) -> Any:
        if segmented_cache.changed(self._ctx.ctx):
            raise NotImplementedError(
                "save_state() after ask() with a segmented cache: the Q2/Q4/F16 regions are not saved (v1)"
            )
        return super().save_state()

    def close(self) -> None:
        # __init__ may raise before llama_cpp.Llama set up its resources (bad options above);
        # llama_free drops the context's segmented cache (ggml_patches/0003)
        if hasattr(self, "_stack"):
            if getattr(self, "_ctx", None) is not None:
                segmented_cache.forget(self._ctx.ctx)  # a later context may get the same address
            super().close()
