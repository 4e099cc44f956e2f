"""Chunk-level quantization search (Cocktail, arXiv 2503.23294, §III-A): context → `Plan`.

1. Tokenize the context with the LLM's tokenizer (or take its token ids as they will be prefilled)
   and cut it into chunks of ``chunk_size`` tokens; the remainder that does not fill a chunk is the
   F16 tail and is not planned.
2. Detokenize each chunk and score it against the query: cosine similarity of encoder embeddings,
   or a scorer's own score (BM25).
3. With s_min / s_max over the chunks: ``T_low = s_min + (s_max - s_min) * alpha``,
   ``T_high = s_max - (s_max - s_min) * beta``; s_i > T_high → F16, s_i < T_low → Q2, else Q4.

Edge cases (rules, all tested):
- context shorter than one chunk: a plan with no chunks (everything is tail); nothing is embedded;
- one chunk, or all similarities equal: T_low = T_high = s, no chunk is strictly above or below,
  so every chunk is Q4 (the formula applied as written);
- alpha + beta > 1 would put T_low above T_high: ValueError (alpha + beta = 1 is allowed: T_low =
  T_high, chunks split into F16 / Q2 with only exact ties at Q4);
- empty or whitespace-only query, NaN / inf / zero embeddings or scores: ValueError naming them.
"""

from __future__ import annotations

import codecs
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .encoders import (
    DEFAULT_CACHE,
    EmbeddingCache,
    Encoder,
    EncoderSpec,
    SimilarityScorer,
    cosine_similarities,
    embed_texts,
    get_encoder,
)
from .plan import Plan, Thresholds

DEFAULT_CHUNK_SIZE = 32
DEFAULT_ALPHA = 0.6
DEFAULT_BETA = 0.1


@runtime_checkable
class Tokenizer(Protocol):
    """The LLM's tokenizer as the planner needs it."""

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class LlamaTokenizer:
    """`Tokenizer` over a `llama_cpp.Llama` (e.g. loaded with ``vocab_only=True``): no BOS, no
    special-token parsing, so the ids are the context's own."""

    llm: Any
    _pieces: dict[int, bytes] = field(default_factory=dict, compare=False, repr=False)

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _piece(self, token: int) -> bytes:
        import ctypes

        import llama_cpp

        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.llm._model.vocab, token, buf, size, 0, False)
            if n >= 0:
                return bytes(buf.raw[:n])
            size = -n

    def detokenize_bytes(self, ids: Sequence[int]) -> bytes:
        """The bytes llama-cpp-python's `detokenize` gives (its pieces joined, a BOS's leading space dropped),
        from a per-token cache: planning detokenizes every chunk of a long context."""
        if getattr(getattr(self.llm, "_model", None), "vocab", None) is None:  # not a llama_cpp.Llama
            return bytes(self.llm.detokenize([int(i) for i in ids]))
        pieces = self._pieces
        try:
            text = b"".join([pieces[t] for t in ids])  # the common case: every piece seen before
        except KeyError:
            for t in set(ids):
                if t not in pieces:
                    pieces[int(t)] = self._piece(int(t))
            text = b"".join([pieces[t] for t in ids])
        if text[:1] == b" " and int(ids[0]) == self.llm.token_bos():
            return text[1:]
        return text

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.detokenize_bytes(ids).decode("utf-8", errors="replace")


def as_tokenizer(obj: Any) -> Tokenizer:
    """``obj`` as a `Tokenizer`: a llama_cpp.Llama is wrapped in `LlamaTokenizer`; anything with
    ``tokenize(str)`` and ``detokenize(ids)`` is used as is."""
    llama_cpp = sys.modules.get("llama_cpp")
    if llama_cpp is not None and isinstance(obj, llama_cpp.Llama):
        return LlamaTokenizer(obj)
    if isinstance(obj, Tokenizer):
        return obj
    raise ValueError(
        f"tokenizer={obj!r} is neither a llama_cpp.Llama nor has tokenize(text) / detokenize(ids)"
    )


def validate_planner_options(chunk_size: Any, alpha: Any, beta: Any) -> None:
    """Raises ValueError naming the first bad option."""
    if (
        isinstance(chunk_size, (bool, np.bool_))
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.floating, np.integer)
        ):
            raise ValueError(f"{name}={value!r} must be a number in [0, 1]")
        if not (math.isfinite(float(value)) and 0.0 <= float(value) <= 1.0):
            raise ValueError(f"{name}={value!r} must be a number in [0, 1]")
    if float(alpha) + float(beta) > 1.0:
        raise ValueError(
            f"alpha={alpha!r} + beta={beta!r} = {float(alpha) + float(beta):g} > 1: T_low would lie above "
            "T_high; keep alpha + beta <= 1"
        )


def thresholds_for(similarities: Sequence[float] | np.ndarray, alpha: float, beta: float) -> Thresholds:
    """The two cut points over the observed similarity range (needs at least one similarity)."""
    validate_planner_options(1, alpha, beta)
    s = np.asarray(similarities, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"similarities of shape {s.shape}: need a non-empty 1-D sequence")
    if not np.isfinite(s).all():
        i = int(np.argmin(np.isfinite(s)))
        raise ValueError(f"similarity of chunk {i} is {float(s[i])!r}, not a finite number")
    s_min, s_max = float(s.min()), float(s.max())
    spread = s_max - s_min
    return Thresholds(
        alpha=float(alpha),
        beta=float(beta),
        s_min=s_min,
        s_max=s_max,
        t_low=s_min + spread * float(alpha),
        t_high=s_max - spread * float(beta),
    )


def assign_precisions(
    similarities: Sequence[float] | np.ndarray, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA
) -> tuple[tuple[str, ...], Thresholds | None]:
    """Per-chunk precision from similarities: s > T_high → "f16", s < T_low → "q2", else "q4".
    No similarities → no precisions and no thresholds."""
    if len(similarities) == 0:
        validate_planner_options(1, alpha, beta)
        return (), None
    t = thresholds_for(similarities, alpha, beta)
    out = tuple(
        "f16" if s > t.t_high else "q2" if s < t.t_low else "q4"
        for s in np.asarray(similarities, dtype=np.float64)
    )
    return out, t


def split_chunks(token_ids: Sequence[int], chunk_size: int) -> tuple[list[list[int]], list[int]]:
    """Full chunks of ``chunk_size`` ids, and the remaining tail (shorter than a chunk)."""
    validate_planner_options(chunk_size, 0.0, 0.0)
    ids = list(map(int, token_ids))
    n_full = len(ids) // chunk_size * chunk_size
    return [ids[i : i + chunk_size] for i in range(0, n_full, chunk_size)], ids[n_full:]


def chunk_texts(
    tokenizer: Tokenizer, chunks: Sequence[Sequence[int]], tail: Sequence[int]
) -> tuple[list[str], str]:
    """Detokenized chunks and tail. When the tokenizer gives bytes (``detokenize_bytes``), a UTF-8
    character split across a chunk border is kept whole in the chunk where it ends."""
    to_bytes = getattr(tokenizer, "detokenize_bytes", None)
    if to_bytes is None:
        return [tokenizer.detokenize(c) for c in chunks], tokenizer.detokenize(tail) if tail else ""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = [decoder.decode(to_bytes(c)) for c in chunks]
    return texts, decoder.decode(to_bytes(tail) if tail else b"", final=True)


def _context_ids(context: str | Sequence[int] | np.ndarray, tokenizer: Tokenizer) -> list[int]:
    if isinstance(context, str):
        return tokenizer.tokenize(context)
    if isinstance(context, bytes):
        raise ValueError("context is bytes: pass text (str) or token ids")
    ids = np.asarray(context)
    if ids.size and (ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(
            f"context token ids must be a 1-D sequence of integers, got dtype {ids.dtype} shape {ids.shape}"
        )
    if ids.size and ids.min() < 0:
        raise ValueError(f"context token id {int(ids.min())} is negative")
    out: list[int] = ids.reshape(-1).tolist()
    return out


def chunk_similarities(
    encoder: Encoder | SimilarityScorer,
    texts: Sequence[str],
    query: str,
    *,
    batch_size: int | None = None,
    progress: bool | None = None,
    cache: EmbeddingCache | None = DEFAULT_CACHE,
) -> np.ndarray:
    """Relevance of each chunk text to the query (float64): cosine of embeddings, or the scorer's score."""
    if isinstance(encoder, SimilarityScorer) and not isinstance(encoder, Encoder):
        scores = np.asarray(encoder.similarities(query, list(texts)), dtype=np.float64)
        if scores.shape != (len(texts),):
            raise ValueError(f"scorer {encoder.name} returned shape {scores.shape} for {len(texts)} chunks")
    else:
        rows = embed_texts(encoder, texts, batch_size=batch_size, progress=progress, cache=cache)
        query_row = embed_texts(encoder, [query], batch_size=1, progress=False, cache=cache)[0]
        scores = cosine_similarities(rows, query_row)
    if not np.isfinite(scores).all():
        i = int(np.argmin(np.isfinite(scores)))
        bad = float(scores[i])
        raise ValueError(f"similarity of chunk {i} is {bad!r}, not a finite number ({encoder.name})")
    return scores


def plan_context(
    context: str | Sequence[int] | np.ndarray,
    query: str,
    *,
    tokenizer: Any,
    encoder: EncoderSpec = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    batch_size: int | None = None,
    progress: bool | None = None,
    cache: EmbeddingCache | None = DEFAULT_CACHE,
    keep_texts: bool = True,
) -> Plan:
    """Plans the KV precision of every ``chunk_size``-token chunk of ``context`` for ``query``.

    context: text (tokenized with ``tokenizer``, no BOS) or the token ids exactly as they will sit
    in the KV cache. tokenizer: a `Tokenizer` or a llama_cpp.Llama (``vocab_only=True`` suffices).
    encoder: see `cocktail_gguf.encoders.get_encoder` (default: packaged MiniLM).
    batch_size: texts per encoder call (None: the encoder's preference, e.g. 1024 for a GGUF encoder
    on the GPU, else 64). progress: tqdm bar while embedding (None = only for long contexts).
    cache: chunk embeddings by (encoder, text); None disables. keep_texts: store the chunk texts in
    the plan (for its picture).
    """
    validate_planner_options(chunk_size, alpha, beta)
    if not isinstance(query, str):
        raise ValueError(f"query={query!r} must be a string")
    if not query.strip():
        raise ValueError(f"query={query!r} is empty: the planner ranks chunks by relevance to a query")
    tok = as_tokenizer(tokenizer)
    ids = _context_ids(context, tok)
    chunks, tail = split_chunks(ids, chunk_size)
    texts, tail_text = chunk_texts(tok, chunks, tail)
    if not chunks:
        return Plan(
            chunk_size,
            (),
            len(ids),
            similarities=(),
            query=query,
            chunk_texts=() if keep_texts else None,
            tail_text=tail_text if keep_texts else None,
        )
    enc = get_encoder(encoder)
    scores = chunk_similarities(enc, texts, query, batch_size=batch_size, progress=progress, cache=cache)
    precisions, thresholds = assign_precisions(scores, alpha, beta)
    return Plan(
        chunk_size=chunk_size,
        precisions=precisions,
        n_context_tokens=len(ids),
        similarities=tuple(float(s) for s in scores),
        thresholds=thresholds,
        encoder=enc.name,
        query=query,
        chunk_texts=tuple(texts) if keep_texts else None,
        tail_text=tail_text if keep_texts else None,
    )


@dataclass
class Planner:
    """The planner's settings bound once (what `cocktail_gguf.Llama` keeps); ``plan(context, query)``.

    The encoder is resolved on first use, so building a Planner loads no model.
    """

    tokenizer: Any
    encoder: EncoderSpec = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    batch_size: int | None = None
    progress: bool | None = None
    cache: EmbeddingCache | None = field(default_factory=lambda: DEFAULT_CACHE)

    def __post_init__(self) -> None:
        validate_planner_options(self.chunk_size, self.alpha, self.beta)
        self.tokenizer = as_tokenizer(self.tokenizer)

    def plan(self, context: str | Sequence[int] | np.ndarray, query: str, keep_texts: bool = True) -> Plan:
        if (
            self.encoder is None
            or isinstance(self.encoder, (str, bytes))
            or hasattr(self.encoder, "__fspath__")
        ):
            self.encoder = get_encoder(self.encoder)
        return plan_context(
            context,
            query,
            tokenizer=self.tokenizer,
            encoder=self.encoder,
            chunk_size=self.chunk_size,
            alpha=self.alpha,
            beta=self.beta,
            batch_size=self.batch_size,
            progress=self.progress,
            cache=self.cache,
            keep_texts=keep_texts,
        )
