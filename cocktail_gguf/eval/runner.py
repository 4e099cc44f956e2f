"""Runs every method on the same samples with one loaded model and writes the records.

One `Llama(kv_mode="cocktail", keep_f16_context=True)` serves f16 and every planned method: the
context is prefilled once per sample in F16, then each method restores that copy, compacts with its
plan and decodes (greedy). llama.cpp's q8_0 / q4_0 KV caches need their own contexts (flash attention).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..llama import Llama
from ..plan import Plan
from ..planner import assign_precisions, plan_context
from .methods import ENCODERS, KIVI_RESIDUAL, LLAMA_TYPES, Method, parse_method
from .scoring import score
from .tasks import Sample

LLAMA_TYPE_BYTES = {"q8_0": 34 / 32, "q4_0": 18 / 32}  # bytes per element of llama.cpp's block formats
STOP = ["\n"]


def fixed_plan(method: Method, n: int) -> Plan | None:
    """The plan of a method that needs no search (None: llama.cpp's own cache)."""
    if method.kind == "uniform":
        return Plan.uniform(n, 32, str(method.precision))
    if method.kind == "kivi2":
        k, tail = n // 32, n % 32
        n_f16 = min(k, max(0, math.ceil((KIVI_RESIDUAL - tail) / 32)))
        return Plan(32, ("q2",) * (k - n_f16) + ("f16",) * n_f16, n)
    if method.kind in ("f16", "llama.cpp"):
        return None
    raise ValueError(f"method {method.name!r} needs a query to plan")


@dataclass
class Runner:
    model_path: str
    n_ctx: int
    methods: Sequence[str]
    contriever: str | None = None
    n_threads: int | None = None
    progress: Callable[[str], None] | None = None
    _main: Llama = field(init=False)
    _quant: dict[str, Llama] = field(init=False, default_factory=dict)
    _methods: list[Method] = field(init=False)

    def __post_init__(self) -> None:
        self._methods = [parse_method(m) for m in self.methods]
        names = [m.name for m in self._methods]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"methods listed twice: {sorted(dup)}")
        if any(m.encoder == "contriever" for m in self._methods) and not self.contriever:
            raise ValueError(
                "a cocktail-contriever method needs contriever=<local sentence-transformers folder>"
            )
        # flash attention everywhere: llama.cpp's quantized V needs it, and f16 is then the same kernel
        # the random control shuffles the plan of the first Cocktail method listed (default: "cocktail")
        self._random_base = next((m for m in self._methods if m.kind == "cocktail"), parse_method("cocktail"))
        common: dict[str, Any] = {"n_ctx": self.n_ctx, "verbose": False, "n_batch": 512, "flash_attn": True}
        if self.n_threads:
            common.update(n_threads=self.n_threads, n_threads_batch=self.n_threads)
        self._main = Llama(self.model_path, kv_mode="cocktail", keep_f16_context=True, **common)
        for m in self._methods:
            if m.kind == "llama.cpp" and m.llama_type not in self._quant:
                t = LLAMA_TYPES[str(m.llama_type)]
                self._quant[str(m.llama_type)] = Llama(self.model_path, type_k=t, type_v=t, **common)
        self._f16_per_token: float | None = None

    @property
    def llm(self) -> Llama:
        return self._main

    def count_tokens(self, text: str) -> int:
        return len(self._main.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        for llm in (self._main, *self._quant.values()):
            llm.close()

    # --- plans ---------------------------------------------------------------------------------
    def _encoder_spec(self, name: str) -> str:
        return str(self.contriever) if name == "contriever" else ENCODERS[name]

    def plans(
        self, ids: list[int], question: str, seed: str
    ) -> tuple[dict[str, Plan | None], dict[str, float]]:
        """Plan of every method (None: llama.cpp's own cache), planning seconds per encoder and chunk size."""
        n = len(ids)
        searched: dict[tuple[str, int], Plan] = {}
        plan_s: dict[str, float] = {}

        def searched_plan(encoder: str, cs: int) -> Plan:
            if (encoder, cs) not in searched:
                t0 = time.perf_counter()
                searched[(encoder, cs)] = plan_context(
                    ids, question, tokenizer=self._main, encoder=self._encoder_spec(encoder), chunk_size=cs,
                    keep_texts=False, progress=False, cache=None,
                )  # fmt: skip
                plan_s[f"{encoder}-cs{cs}"] = time.perf_counter() - t0
            return searched[(encoder, cs)]

        out: dict[str, Plan | None] = {}
        for m in self._methods:
            if m.kind in ("f16", "llama.cpp", "uniform", "kivi2"):
                out[m.name] = fixed_plan(m, n)
            elif m.kind == "random":
                rb = self._random_base
                base = searched_plan(rb.encoder, rb.chunk_size)
                shuffled = list(assign_precisions(base.similarities or (), rb.alpha, rb.beta)[0])
                random.Random(seed).shuffle(shuffled)
                out[m.name] = Plan(rb.chunk_size, tuple(shuffled), n)
            else:
                base = searched_plan(m.encoder, m.chunk_size)
                chosen, thresholds = assign_precisions(base.similarities or (), m.alpha, m.beta)
                out[m.name] = Plan(
                    m.chunk_size, chosen, n, similarities=base.similarities, thresholds=thresholds,
                    encoder=base.encoder, query=question,
                )  # fmt: skip
        return out, plan_s

    # --- KV bytes ------------------------------------------------------------------------------
    def f16_bytes_per_token(self) -> float:
        """F16 K+V bytes of one token over the layers the segmented cache serves (all full-attention
        layers; the sliding-window layers of iSWA models are left out for every method)."""
        if self._f16_per_token is None:
            meta = self._main.metadata
            arch = meta["general.architecture"]
            n_head = int(meta[f"{arch}.attention.head_count"])
            n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
            head_dim = int(
                meta.get(f"{arch}.attention.key_length", int(meta[f"{arch}.embedding_length"]) // n_head)
            )
            ids = self._main.tokenize(b"x " * 40, add_bos=False)
            q = self._main.tokenize(b" y", add_bos=False)
            self._main.load_context(ids, q, Plan.uniform(len(ids), 32, "f16"))
            n_layers = len(self._main.kv_regions())
            self._f16_per_token = float(n_layers * 2 * n_head_kv * head_dim * 2)
        return self._f16_per_token

    def _kv_bytes(self, method: Method, plan: Plan | None, n: int) -> float:
        per_token = self.f16_bytes_per_token()
        if method.kind == "f16":
            return n * per_token
        if method.kind == "llama.cpp":
            return n * per_token / 2 * LLAMA_TYPE_BYTES[str(method.llama_type)]
        assert plan is not None
        regions = sum(r.total_bytes for r in self._main.kv_regions().values())  # allocated, measured
        return regions + plan.n_tail_tokens * per_token

    # --- one sample -----------------------------------------------------------------------------
    def run_sample(self, sample: Sample, n_tokens_target: int) -> list[dict[str, Any]]:
        llm = self._main
        ids = list(llm.tokenize(sample.context.encode("utf-8"), add_bos=False, special=False))
        qids = list(llm.tokenize(sample.query.encode("utf-8"), add_bos=False, special=True))
        plans, plan_s = self.plans(
            ids, sample.question, seed=f"{sample.task}/{sample.index}/{n_tokens_target}"
        )
        f16_bytes = len(ids) * self.f16_bytes_per_token()
        records = []
        for m in self._methods:
            plan = plans[m.name]
            target = self._quant[str(m.llama_type)] if m.kind == "llama.cpp" else llm
            mode = "f16" if plan is None else "cocktail"
            ans = target.ask_tokens(
                ids,
                qids,
                plan,
                query_text=sample.question,
                mode=mode,
                max_tokens=sample.max_tokens,
                stop=STOP,
            )
            kv = self._kv_bytes(m, plan, len(ids))
            rec: dict[str, Any] = {
                "task": sample.task,
                "index": sample.index,
                "length": n_tokens_target,
                "n_context_tokens": len(ids),
                "method": m.name,
                "output": ans.text,
                "answers": list(sample.answers),
                "depths": [round(d, 4) for d in sample.depths],
                "kv_bytes": kv,
                "kv_ratio": kv / f16_bytes,
                "counts": plan.counts if plan is not None else None,
                "decode_s": ans.timings["decode_s"],
            }
            rec.update(score(sample.task, ans.text, sample.answers))
            if m.kind in ("cocktail", "random"):
                src = self._random_base if m.kind == "random" else m
                key = f"{src.encoder}-cs{src.chunk_size}"
                rec["plan_s"] = plan_s.get(key)
            records.append(rec)
        return records

    # --- perplexity -------------------------------------------------------------------------------
    def perplexity(self, docs: Sequence[str], n_windows: int, window: int) -> list[dict[str, Any]]:
        """Per window and method: mean NLL of the second half of a ``window``-token window (BOS first),
        the first half in the method's cache. Our methods: first half prefilled in F16 and compacted
        (all chunks in the format); the scored half then reads it from the regions, its own tokens F16.
        llama.cpp types: every token in the quantized cache (its usual protocol)."""
        llm = self._main
        half = window // 2
        windows: list[list[int]] = []
        for doc in docs:
            toks = list(llm.tokenize(doc.encode("utf-8"), add_bos=False, special=False))
            for s in range(0, len(toks) - (window - 1) + 1, window - 1):
                if len(windows) < n_windows:
                    windows.append(toks[s : s + window - 1])
        if len(windows) < n_windows:
            raise ValueError(f"the corpus holds {len(windows)} windows of {window} tokens, not {n_windows}")
        records = []
        for w_index, w in enumerate(windows):
            context, first, rest = w[: half - 1], w[half - 1 : half], w[half:]
            for m in self._methods:
                if m.kind not in ("f16", "uniform", "kivi2", "llama.cpp"):
                    continue
                plan = fixed_plan(m, len(context))
                target = self._quant[str(m.llama_type)] if m.kind == "llama.cpp" else llm
                target.load_context(context, first, plan, mode="f16" if plan is None else "cocktail")
                # the token after `first` was predicted during the prefill: score from the one after it
                lp = target.next_token_logprobs(rest)
                kv = self._kv_bytes(m, plan, len(context))
                records.append(
                    {
                        "window": w_index,
                        "method": m.name,
                        "n_scored": int(lp.size),
                        "nll": float(-lp.mean()),
                        "kv_ratio": kv / (len(context) * self.f16_bytes_per_token()),
                    }
                )
            if self.progress:
                self.progress(f"perplexity window {w_index + 1}/{len(windows)}")
        return records


def run(
    runner: Runner,
    samples: Sequence[tuple[int, Sample]],
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every method on every (target length, sample)."""
    out = []
    for i, (length, sample) in enumerate(samples):
        recs = runner.run_sample(sample, length)
        out.extend(recs)
        for r in recs:
            if on_record:
                on_record(r)
        if runner.progress:
            runner.progress(f"[{i + 1}/{len(samples)}] {sample.task} #{sample.index} @ {length}")
    return out


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
