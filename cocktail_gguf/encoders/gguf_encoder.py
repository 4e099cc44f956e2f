"""Encoder running a BERT-family GGUF through our own llama.cpp library (llama_cpp.Llama; no torch).

`cocktail_gguf.bert_to_gguf` makes such a GGUF from a sentence-transformers folder; its keys
`cocktail.encoder.normalize` / `cocktail.encoder.max_seq_length` are honoured when present.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

POOLING_TYPES: dict[str, int] = {"model": -1, "mean": 1, "cls": 2, "last": 3}
"""llama.cpp's `enum llama_pooling_type`; "model" keeps the GGUF's own (`<arch>.pooling_type`)."""


class GGUFEncoder:
    """Embeds with a GGUF embedding model; rows are L2-normalised (cosine is what the planner uses).

    n_batch: the longest text in tokens (a BERT decodes a text in one ubatch); longer texts are
    truncated to ``max_tokens`` (≤ n_batch; default: the GGUF's sentence-transformers limit).
    pack_tokens: tokens per llama_decode when packing several texts. Every token of a BERT batch
    attends over the whole batch under a mask, so on a CPU packing fewer tokens wastes less (measured
    on 2 cores: 96 beats 256 by ~25 %, 512 by ~40 %); on a GPU (``n_gpu_layers`` != 0, a CUDA build)
    the per-decode cost dominates instead. Defaults: n_batch=256, pack_tokens=96 on the CPU,
    n_batch=pack_tokens=1536 with GPU layers (bench/results/plan_speed_gpu_8a5ead2.md: 1536 beat 2048 by 5 %).
    flash_attn: llama.cpp's fused attention; off by default: for MiniLM's head size (32) llama.cpp's
    CUDA backend has no such kernel and runs the op on the CPU (planning 2.2-3.4x slower; bench/NOTES.md).
    ``preferred_batch_size``: texts per `embed` call that the planner's driver uses (64 on the CPU;
    1024 with GPU layers, so that packs are full rather than cut at every 64 texts).
    n_contexts: llama contexts over the one set of weights, each decoding its own packs from a thread of
    its own, so that one decode's host work (llama.cpp's batch checks, KQ mask, graph build) overlaps
    another's GPU work; default 1 on the CPU (its threads are busy with the model), 3 with GPU layers
    (bench/results/plan_speed_gpu_contexts.md, 32K tokens on an H100: 1 / 2 / 3 / 4 contexts 270 / 168 /
    150 / 140 ms; each context holds its own compute buffer, ~160 MiB for 1536-token packs of MiniLM).
    ``timings`` adds up, over every `embed`, the seconds spent tokenizing, in llama_decode (on a GPU:
    until the GPU is done) and copying embeddings out, summed over the contexts' threads, and the number
    of decodes (bench/plan_speed.py).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        pooling: str = "model",
        n_threads: int | None = None,
        n_batch: int | None = None,
        pack_tokens: int | None = None,
        max_tokens: int | None = None,
        n_gpu_layers: int = 0,
        flash_attn: bool = False,
        n_contexts: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise ValueError(f"GGUF encoder file {str(path)!r} does not exist")
        if pooling not in POOLING_TYPES:
            raise ValueError(f"pooling={pooling!r} is not one of {', '.join(POOLING_TYPES)}")
        if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < -1:
            raise ValueError(f"n_gpu_layers={n_gpu_layers!r} must be an integer >= -1 (-1: every layer)")
        if n_batch is None:
            n_batch = 256 if n_gpu_layers == 0 else 1536
        if pack_tokens is None:
            pack_tokens = 96 if n_gpu_layers == 0 else 1536
        if isinstance(n_batch, bool) or not isinstance(n_batch, int) or n_batch < 8:
            raise ValueError(f"n_batch={n_batch!r} must be an integer >= 8")
        if isinstance(pack_tokens, bool) or not isinstance(pack_tokens, int) or pack_tokens < 1:
            raise ValueError(f"pack_tokens={pack_tokens!r} must be a positive integer")
        if not isinstance(flash_attn, bool):
            raise ValueError(f"flash_attn={flash_attn!r} must be True or False")
        if n_contexts is None:
            n_contexts = 1 if n_gpu_layers == 0 else 3
        if isinstance(n_contexts, bool) or not isinstance(n_contexts, int) or n_contexts < 1:
            raise ValueError(f"n_contexts={n_contexts!r} must be a positive integer")
        self.pack_tokens = pack_tokens
        self.preferred_batch_size = 64 if n_gpu_layers == 0 else 1024
        from .. import _native

        _native.lib()  # our libllama, before llama_cpp is imported
        import llama_cpp

        threads = n_threads or max(1, os.cpu_count() or 1)
        self.n_threads, self.flash_attn = threads, flash_attn
        self.llm: Any = llama_cpp.Llama(
            str(self.path),
            embedding=True,
            pooling_type=POOLING_TYPES[pooling],
            n_ctx=n_batch,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=n_gpu_layers,
            flash_attn=flash_attn,
            verbose=verbose,
        )
        if self.llm.pooling_type() in (
            llama_cpp.LLAMA_POOLING_TYPE_NONE,
            llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
        ):
            raise ValueError(
                f"{self.path} has no pooling type (one vector per token); pass pooling='mean' or 'cls'"
            )
        meta = self.llm.metadata
        limit = int(meta.get("cocktail.encoder.max_seq_length", 0)) or self.llm.n_ctx()
        self.max_tokens = min(max_tokens or limit, n_batch)
        self._name = f"gguf:{self.path}:{pooling}"
        self.timings: dict[str, float] = {"tokenize_s": 0.0, "decode_s": 0.0, "fetch_s": 0.0, "n_decodes": 0}
        self._timings_lock = threading.Lock()
        # Further llama contexts over the same weights, each decoding its own packs from a pool thread.
        from llama_cpp._internals import LlamaContext

        self._extra = [
            LlamaContext(model=self.llm._model, params=self.llm.context_params, verbose=verbose)
            for _ in range(n_contexts - 1)
        ]
        self.n_contexts = n_contexts
        self._free_contexts: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for ctx in [self.llm._ctx, *self._extra]:
            self._free_contexts.put(ctx.ctx)
        self._pool = ThreadPoolExecutor(n_contexts, "gguf-encoder") if n_contexts > 1 else None

    @property
    def name(self) -> str:
        return self._name

    def _fit(self, text: str) -> list[int]:
        """Token ids of [CLS] text [SEP], the text cut so that they are at most max_tokens (as
        sentence-transformers truncates)."""
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        keep = self.max_tokens - 2
        while len(ids) > self.max_tokens and keep > 0:
            text = self.llm.detokenize(ids[1 : 1 + keep]).decode("utf-8", errors="replace")
            ids = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            keep -= max(1, len(ids) - self.max_tokens)
        return list(ids)

    def _decode(self, ctx: Any, seqs: list[list[int]]) -> None:
        """One llama_decode of several texts (sequence i = seqs[i]) on the llama context ``ctx``, the batch
        filled from numpy arrays: on a GPU the per-token Python work of llama-cpp-python's `embed` would
        cost more than the model."""
        import llama_cpp

        lens = [len(x) for x in seqs]
        n = sum(lens)
        tok = np.concatenate(seqs).astype(np.int32)
        pos = np.concatenate([np.arange(k, dtype=np.int32) for k in lens])
        seq = np.repeat(np.arange(len(seqs), dtype=np.int32), lens)
        n_seq_id = np.ones(n, dtype=np.int32)
        out = np.ones(n, dtype=np.int8)  # pooling reads every token (llama.cpp would override and warn)
        seq_ptrs = (seq.ctypes.data + 4 * np.arange(n, dtype=np.uint64)).astype(np.uint64)
        batch = llama_cpp.llama_batch()
        batch.n_tokens = n
        batch.token = tok.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token))
        batch.pos = pos.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_pos))
        batch.n_seq_id = n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.seq_id = seq_ptrs.ctypes.data_as(ctypes.POINTER(ctypes.POINTER(llama_cpp.llama_seq_id)))
        batch.logits = out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        mem = llama_cpp.llama_get_memory(ctx)
        if mem:  # embedding models with a KV cache (causal ones): every batch starts empty
            llama_cpp.llama_memory_clear(mem, True)
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"{self.path}: llama_decode returned {rc} for {len(seqs)} texts of {n} tokens")

    def _packs(self, texts: list[str]) -> Iterator[tuple[int, list[list[int]]]]:
        """(index of the first text, token ids of each text) per llama_decode: at most pack_tokens tokens
        and n_seq_max texts. Every token of a BERT batch attends over the whole batch (masked), so small
        batches waste less on a CPU."""
        limit = min(self.pack_tokens, self.llm.n_batch)
        max_seqs = int(self.llm.context_params.n_seq_max)
        group: list[list[int]] = []
        used = first = 0  # tokens in the group; index of its first text
        for i, text in enumerate(texts):
            start = time.perf_counter()
            ids = self._fit(text)
            self._count("tokenize_s", time.perf_counter() - start)
            if group and (used + len(ids) > limit or len(group) >= max_seqs):
                yield first, group
                group, used, first = [], 0, i
            group.append(ids)
            used += len(ids)
        if group:
            yield first, group

    def _count(self, key: str, amount: float) -> None:
        with self._timings_lock:
            self.timings[key] += amount

    def _embed_pack(self, ctx: Any, first: int, group: list[list[int]], rows: np.ndarray) -> None:
        """Decodes ``group`` on ``ctx`` and copies its pooled rows to rows[first : first + len(group)]. On a
        GPU llama_decode returns only once the GPU is done: llama.cpp copies the pooled rows to pageable
        host memory, which waits for the stream."""
        import llama_cpp

        start = time.perf_counter()
        self._decode(ctx, group)
        fetched = time.perf_counter()
        base, row_bytes = rows.ctypes.data, rows.strides[0]
        for i in range(len(group)):
            ptr = llama_cpp.llama_get_embeddings_seq(ctx, i)
            if not ptr:
                raise RuntimeError(f"{self.path}: llama.cpp gave no pooled embedding of text {first + i}")
            ctypes.memmove(base + (first + i) * row_bytes, ptr, row_bytes)  # n_embd floats
        end = time.perf_counter()
        with self._timings_lock:
            self.timings["decode_s"] += fetched - start
            self.timings["fetch_s"] += end - fetched
            self.timings["n_decodes"] += 1

    def _embed_pack_pooled(self, first: int, group: list[list[int]], rows: np.ndarray) -> None:
        """`_embed_pack` on whichever context is free (one per worker thread of the pool)."""
        ctx = self._free_contexts.get()
        try:
            self._embed_pack(ctx, first, group, rows)
        finally:
            self._free_contexts.put(ctx)

    def embed(self, texts: list[str]) -> np.ndarray:
        n_embd = self.llm.n_embd()
        if not texts:
            return np.zeros((0, n_embd), dtype=np.float32)
        rows = np.empty((len(texts), n_embd), dtype=np.float32)
        if self._pool is None:
            for first, group in self._packs(texts):
                self._embed_pack(self.llm._ctx.ctx, first, group, rows)
        else:
            # The packs are tokenized here while the pool's threads decode the earlier ones, each on its own
            # context: one thread's host work (batch checks, the KQ mask, graph build) overlaps another's
            # GPU work.
            futures: list[Future[None]] = []
            try:
                for first, group in self._packs(texts):
                    futures.append(self._pool.submit(self._embed_pack_pooled, first, group, rows))
            finally:
                wait(futures)
            for future in futures:
                future.result()  # the first failure, if any
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        # A zero row stays zero (the planner names it) instead of becoming NaN here.
        normed: np.ndarray = rows / np.where(norms > 0, norms, 1.0)
        return normed

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for extra in self._extra:
            extra.close()
        self._extra = []
        self.llm.close()

    def __repr__(self) -> str:
        return f"GGUFEncoder({str(self.path)!r})"
