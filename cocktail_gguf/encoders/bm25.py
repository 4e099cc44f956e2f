"""BM25 (Okapi) scorer: no model, no torch; the chunks of the context are the corpus.

similarity_i = Σ_{t in query terms} IDF(t) · tf(t, i)·(k1 + 1) / (tf(t, i) + k1·(1 − b + b·len_i / avg_len))
with IDF(t) = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5)) (never negative), N = number of chunks.
Query terms count with repetition (as in rank_bm25). Terms are lower-cased `\\w+` runs.

These scores are not cosines, but the planner's thresholds are relative to [s_min, s_max], so they
split chunks the same way. A query sharing no term with any chunk scores every chunk 0: all
similarities are equal and every chunk becomes Q4 (the planner's documented rule).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

_TERM = re.compile(r"\w+", re.UNICODE)


def bm25_terms(text: str) -> list[str]:
    """Lower-cased word terms of ``text``."""
    return _TERM.findall(text.lower())


@dataclass(frozen=True)
class BM25Scorer:
    """`SimilarityScorer` ranking chunks by BM25 against the query (k1, b: the usual Okapi constants)."""

    k1: float = 1.5
    b: float = 0.75

    def __post_init__(self) -> None:
        if not (math.isfinite(self.k1) and self.k1 > 0.0):
            raise ValueError(f"k1={self.k1!r} must be a finite number > 0")
        if not (math.isfinite(self.b) and 0.0 <= self.b <= 1.0):
            raise ValueError(f"b={self.b!r} must be in [0, 1]")

    @property
    def name(self) -> str:
        return f"bm25(k1={self.k1:g},b={self.b:g})"

    def similarities(self, query: str, texts: list[str]) -> np.ndarray:
        docs = [Counter(bm25_terms(t)) for t in texts]
        n = len(docs)
        scores = np.zeros(n, dtype=np.float64)
        if n == 0:
            return scores
        lengths = np.array([sum(d.values()) for d in docs], dtype=np.float64)
        avg_len = float(lengths.mean())
        # An all-empty corpus has avg_len 0: every tf is 0 anyway, so any positive norm works.
        norm = self.k1 * (1.0 - self.b + self.b * lengths / avg_len) if avg_len > 0 else np.full(n, self.k1)
        df: Counter[str] = Counter()
        for d in docs:
            df.update(d.keys())
        for term in bm25_terms(query):
            if term not in df:
                continue
            idf = math.log(1.0 + (n - df[term] + 0.5) / (df[term] + 0.5))
            tf = np.array([d.get(term, 0) for d in docs], dtype=np.float64)
            scores += idf * tf * (self.k1 + 1.0) / (tf + norm)
        return scores
