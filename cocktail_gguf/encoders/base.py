"""The encoder protocols and the batched, cached, progress-reporting embedding driver.

Two kinds of retriever feed the planner:
- an `Encoder` embeds texts; the planner takes the cosine similarity of each chunk to the query;
- a `SimilarityScorer` scores chunks against the query directly (BM25). Its scores need not be
  cosines: the planner's thresholds are fractions of the observed [s_min, s_max] range, so any
  score where "higher = more relevant" splits the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..progress import progress_bar
from .cache import EmbeddingCache

PROGRESS_MIN_TEXTS = 256
"""With progress=None (auto), a bar is shown only from this many texts to embed."""

DEFAULT_BATCH_SIZE = 64
"""Texts per `Encoder.embed` call when neither the caller nor the encoder (``preferred_batch_size``) says."""


@runtime_checkable
class Encoder(Protocol):
    """Embeds texts: ``embed(texts)`` returns float32 [len(texts), dim]."""

    @property
    def name(self) -> str: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...


@runtime_checkable
class SimilarityScorer(Protocol):
    """Scores texts against a query directly (no embeddings): higher = more relevant."""

    @property
    def name(self) -> str: ...

    def similarities(self, query: str, texts: list[str]) -> np.ndarray: ...


def force_hf_offline() -> None:
    """Models load from local folders only: never let transformers / huggingface_hub go online."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def check_embeddings(rows: Any, texts: Sequence[str], who: str) -> np.ndarray:
    """``rows`` as a float32 [len(texts), dim] array; ValueError when its shape is wrong or a value is
    not finite (naming the text whose row is bad)."""
    n_texts = len(texts)
    arr = np.asarray(rows, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n_texts or arr.shape[1] == 0:
        raise ValueError(
            f"encoder {who} returned shape {arr.shape} for {n_texts} texts; expected [{n_texts}, dim]"
        )
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        excerpt = texts[i] if len(texts[i]) <= 60 else texts[i][:57] + "..."
        raise ValueError(f"encoder {who} returned a non-finite embedding (NaN/inf) for the text {excerpt!r}")
    return arr


def _progress_bar(total: int, progress: bool | None, desc: str) -> Any:
    return progress_bar(total, progress, desc, "text", PROGRESS_MIN_TEXTS)


def embed_texts(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    batch_size: int | None = None,
    progress: bool | None = None,
    cache: EmbeddingCache | None = None,
) -> np.ndarray:
    """Embeds ``texts`` in batches through ``encoder``, reusing and filling ``cache``.

    Texts are embedded longest first so each batch pads little; rows come back in input order.
    batch_size: texts per `embed` call (None: the encoder's ``preferred_batch_size`` attribute if it
    has one, else `DEFAULT_BATCH_SIZE`); the progress bar advances once per call.
    progress: True / False / None (auto: a tqdm bar from `PROGRESS_MIN_TEXTS` texts, if installed).
    """
    if batch_size is None:
        batch_size = getattr(encoder, "preferred_batch_size", None) or DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    texts = list(texts)
    name = encoder.name
    cached = cache.get_many(name, texts) if cache is not None else [None] * len(texts)
    todo: dict[str, list[int]] = {}
    for i, (text, row) in enumerate(zip(texts, cached, strict=True)):
        if row is None:
            todo.setdefault(text, []).append(i)
    unique = sorted(todo, key=len, reverse=True)
    dim = next((len(r) for r in cached if r is not None), None)
    new_rows: dict[str, np.ndarray] = {}
    bar = _progress_bar(len(unique), progress, f"embedding ({name})")
    try:
        for start in range(0, len(unique), batch_size):
            batch = unique[start : start + batch_size]
            rows = check_embeddings(encoder.embed(list(batch)), batch, name)
            if dim is not None and rows.shape[1] != dim:
                raise ValueError(f"encoder {name} returned dim {rows.shape[1]}, earlier rows have {dim}")
            dim = rows.shape[1]
            if cache is not None:
                cache.put_many(name, batch, rows)
            new_rows.update(zip(batch, rows, strict=True))
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    if not texts:
        return np.zeros((0, dim or 0), dtype=np.float32)
    out = np.empty((len(texts), dim or 0), dtype=np.float32)
    for i, (text, row) in enumerate(zip(texts, cached, strict=True)):
        out[i] = row if row is not None else new_rows[text]
    return out


def cosine_similarities(chunk_rows: np.ndarray, query_row: np.ndarray) -> np.ndarray:
    """Cosine of each chunk row with the query row, in float64; ValueError for a zero vector."""
    chunks = np.asarray(chunk_rows, dtype=np.float64)
    query = np.asarray(query_row, dtype=np.float64).reshape(-1)
    if chunks.ndim != 2 or (len(chunks) and chunks.shape[1] != query.shape[0]):
        raise ValueError(
            f"chunk embeddings of shape {chunks.shape} do not match a query of dim {query.shape[0]}"
        )
    q_norm = float(np.linalg.norm(query))
    if not q_norm > 0.0:
        raise ValueError("the query embedding is the zero vector: cosine similarity is undefined")
    norms = np.linalg.norm(chunks, axis=1)
    if len(norms) and not (norms > 0.0).all():
        i = int(np.argmin(norms > 0.0))
        raise ValueError(f"the embedding of chunk {i} is the zero vector: cosine similarity is undefined")
    result: np.ndarray = (chunks @ query) / (norms * q_norm)
    return result
