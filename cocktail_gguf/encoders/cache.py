"""`EmbeddingCache`: chunk embeddings kept in memory, keyed by (encoder name, text).

Re-planning the same document for a new query only embeds the query: every chunk is a cache hit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class EmbeddingCache:
    """Least-recently-used cache of embedding rows; ``max_entries`` bounds memory
    (50 000 MiniLM rows of 384 float32 ≈ 77 MB)."""

    max_entries: int = 50_000
    hits: int = 0
    misses: int = 0
    _rows: OrderedDict[tuple[str, str], np.ndarray] = field(
        default_factory=OrderedDict, init=False, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_entries, bool)
            or not isinstance(self.max_entries, int)
            or self.max_entries < 0
        ):
            raise ValueError(f"max_entries={self.max_entries!r} must be a non-negative integer")

    def __len__(self) -> int:
        return len(self._rows)

    def get_many(self, encoder_name: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The cached row of each text, or None where it is not cached."""
        out: list[np.ndarray | None] = []
        with self._lock:
            for text in texts:
                row = self._rows.get((encoder_name, text))
                if row is None:
                    self.misses += 1
                else:
                    self._rows.move_to_end((encoder_name, text))
                    self.hits += 1
                out.append(row)
        return out

    def put_many(self, encoder_name: str, texts: Sequence[str], rows: np.ndarray) -> None:
        if len(texts) != len(rows):
            raise ValueError(f"{len(texts)} texts but {len(rows)} embedding rows")
        if self.max_entries == 0:
            return
        with self._lock:
            for text, row in zip(texts, rows, strict=True):
                stored = np.array(row, dtype=np.float32, copy=True)
                stored.flags.writeable = False
                self._rows[(encoder_name, text)] = stored
                self._rows.move_to_end((encoder_name, text))
            while len(self._rows) > self.max_entries:
                self._rows.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self.hits = 0
            self.misses = 0


DEFAULT_CACHE = EmbeddingCache()
"""The process-wide cache the planner uses unless given another (or None)."""
