"""`Plan`: the precision (F16 / Q4 / Q2) of every context chunk, made by the planner or by hand.

A plan covers the first ``n_context_tokens // chunk_size`` chunks of the context; the remainder at
the end (``n_tail_tokens`` tokens) does not fill a chunk and always stays F16, as do the query and
every generated token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS: tuple[str, ...] = ("f16", "q4", "q2")
"""Chunk precisions, most to least precise."""

NATIVE_CODES: dict[str, int] = {"f16": 0, "q4": 1, "q2": 2}
"""`enum cocktail_precision` in native/cocktail_api.h."""

BITS_PER_ELEMENT: dict[str, float] = {"f16": 16.0, "q4": 5.0, "q2": 3.0}
"""Storage per K/V element: q4/q2 are 4-/2-bit codes plus an fp16 scale and fp16 min per 32 elements."""

PLAN_FORMAT = "cocktail-plan/1"
"""The "format" field of `Plan.to_json()`."""

_ALIASES: dict[str, str] = {"f16": "f16", "fp16": "f16", "q4": "q4", "q2": "q2"}
_CODE_TO_NAME: dict[int, str] = {code: name for name, code in NATIVE_CODES.items()}


def precision_name(value: str | int) -> str:
    """Canonical name ("f16" | "q4" | "q2") of a precision given by name (any case) or native code."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"precision={value!r} must be one of {', '.join(PRECISIONS)} or a code 0..2")
    if isinstance(value, (int, np.integer)):
        if int(value) in _CODE_TO_NAME:
            return _CODE_TO_NAME[int(value)]
        raise ValueError(
            f"precision code {value!r} is not one of {sorted(_CODE_TO_NAME)} (F16=0, Q4=1, Q2=2)"
        )
    if isinstance(value, str) and value.lower() in _ALIASES:
        return _ALIASES[value.lower()]
    raise ValueError(f"precision={value!r} must be one of {', '.join(PRECISIONS)} or a code 0..2")


def _check_chunk_size(chunk_size: Any) -> int:
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)):
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    return int(chunk_size)


def _check_n_tokens(name: str, n: Any) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{name}={n!r} must be a non-negative integer")
    return int(n)


@dataclass(frozen=True)
class Thresholds:
    """The planner's cut points: ``t_low = s_min + (s_max - s_min) * alpha``,
    ``t_high = s_max - (s_max - s_min) * beta``; s > t_high → F16, s < t_low → Q2, else Q4."""

    alpha: float
    beta: float
    s_min: float
    s_max: float
    t_low: float
    t_high: float

    def to_dict(self) -> dict[str, float]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "s_min": self.s_min,
            "s_max": self.s_max,
            "t_low": self.t_low,
            "t_high": self.t_high,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        try:
            return cls(**{k: float(data[k]) for k in ("alpha", "beta", "s_min", "s_max", "t_low", "t_high")})
        except KeyError as exc:
            raise ValueError(f"thresholds {data!r} lack the field {exc.args[0]!r}") from exc


@dataclass(frozen=True)
class Plan:
    """Per-chunk KV precision for one context.

    Build one with the planner (`cocktail_gguf.planner.plan_context`), or by hand with
    `Plan.uniform` / `Plan.from_precisions`. ``similarities`` / ``thresholds`` / ``encoder`` /
    ``query`` are filled by the planner; ``chunk_texts`` / ``tail_text`` (the detokenized chunks)
    are only used for the picture.
    """

    chunk_size: int
    precisions: tuple[str, ...]
    n_context_tokens: int
    similarities: tuple[float, ...] | None = None
    thresholds: Thresholds | None = None
    encoder: str | None = None
    query: str | None = None
    chunk_texts: tuple[str, ...] | None = None
    tail_text: str | None = None

    def __post_init__(self) -> None:
        # Normalise in place (frozen: object.__setattr__) so any sequence / code spelling is accepted.
        chunk_size = _check_chunk_size(self.chunk_size)
        n_context = _check_n_tokens("n_context_tokens", self.n_context_tokens)
        if isinstance(self.precisions, (str, bytes)):
            raise ValueError(f"precisions={self.precisions!r} must be a sequence of precisions, not a string")
        precisions = tuple(precision_name(p) for p in self.precisions)
        if len(precisions) != n_context // chunk_size:
            raise ValueError(
                f"{len(precisions)} chunk precisions do not match n_context_tokens={n_context} with "
                f"chunk_size={chunk_size}: that context has {n_context // chunk_size} full chunks"
            )
        object.__setattr__(self, "chunk_size", chunk_size)
        object.__setattr__(self, "n_context_tokens", n_context)
        object.__setattr__(self, "precisions", precisions)
        if self.similarities is not None:
            sims = tuple(float(s) for s in self.similarities)
            if len(sims) != len(precisions):
                raise ValueError(f"{len(sims)} similarities for {len(precisions)} chunks")
            bad = [i for i, s in enumerate(sims) if not math.isfinite(s)]
            if bad:
                raise ValueError(f"similarity of chunk {bad[0]} is {sims[bad[0]]!r}, not a finite number")
            object.__setattr__(self, "similarities", sims)
        if self.chunk_texts is not None:
            texts = tuple(self.chunk_texts)
            if len(texts) != len(precisions):
                raise ValueError(f"{len(texts)} chunk texts for {len(precisions)} chunks")
            object.__setattr__(self, "chunk_texts", texts)

    # --- construction by hand -------------------------------------------------------------
    @classmethod
    def uniform(cls, n_tokens: int, chunk_size: int = 32, precision: str | int = "q4") -> Plan:
        """Every full chunk of an ``n_tokens`` context at one precision (the uniform baselines)."""
        n = _check_n_tokens("n_tokens", n_tokens)
        size = _check_chunk_size(chunk_size)
        return cls(size, (precision_name(precision),) * (n // size), n)

    @classmethod
    def from_precisions(
        cls,
        precisions: Iterable[str | int],
        chunk_size: int = 32,
        n_context_tokens: int | None = None,
    ) -> Plan:
        """A plan from per-chunk precisions (names or native codes); the context defaults to exactly
        ``len(precisions) * chunk_size`` tokens (no tail)."""
        precs = tuple(precision_name(p) for p in precisions)
        size = _check_chunk_size(chunk_size)
        n = len(precs) * size if n_context_tokens is None else n_context_tokens
        return cls(size, precs, n)

    # --- derived numbers ------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return len(self.precisions)

    @property
    def n_tail_tokens(self) -> int:
        """Tokens after the last full chunk: not part of the plan, kept F16."""
        return self.n_context_tokens - self.n_chunks * self.chunk_size

    @property
    def counts(self) -> dict[str, int]:
        """Number of chunks per precision (every precision present, zeros included)."""
        return {p: self.precisions.count(p) for p in PRECISIONS}

    @property
    def fractions(self) -> dict[str, float] | None:
        """Share of chunks per precision (BENCH.md's "mix"); None for a plan without chunks."""
        if not self.n_chunks:
            return None
        return {p: c / self.n_chunks for p, c in self.counts.items()}

    @property
    def bits_per_element(self) -> float:
        """Average KV bits per element over the planned chunks (16.0 when there are none)."""
        if not self.n_chunks:
            return BITS_PER_ELEMENT["f16"]
        return sum(BITS_PER_ELEMENT[p] * c for p, c in self.counts.items()) / self.n_chunks

    @property
    def context_bits_per_element(self) -> float:
        """Average KV bits per element over the whole context, the F16 tail included."""
        if not self.n_context_tokens:
            return BITS_PER_ELEMENT["f16"]
        chunk_bits = self.bits_per_element * self.n_chunks * self.chunk_size
        tail_bits = BITS_PER_ELEMENT["f16"] * self.n_tail_tokens
        return (chunk_bits + tail_bits) / self.n_context_tokens

    def native_codes(self) -> np.ndarray:
        """Per-chunk `enum cocktail_precision` codes (F16=0, Q4=1, Q2=2) as a uint8 array."""
        return np.fromiter((NATIVE_CODES[p] for p in self.precisions), dtype=np.uint8, count=self.n_chunks)

    def chunk_indices(self, precision: str | int) -> np.ndarray:
        """Indices of the chunks at one precision, in context order (int64)."""
        name = precision_name(precision)
        return np.array([i for i, p in enumerate(self.precisions) if p == name], dtype=np.int64)

    def chunk_token_range(self, index: int) -> tuple[int, int]:
        """[start, end) token positions of chunk ``index`` in the context."""
        if not 0 <= index < self.n_chunks:
            raise IndexError(f"chunk index {index} is outside 0..{self.n_chunks - 1}")
        return index * self.chunk_size, (index + 1) * self.chunk_size

    def validate(self, n_tokens: int) -> None:
        """Raises ValueError unless this plan fits a context of ``n_tokens`` tokens, i.e. covers
        exactly floor(n_tokens / chunk_size) chunks (the rest of the tokens are the F16 tail)."""
        n = _check_n_tokens("n_tokens", n_tokens)
        if n // self.chunk_size != self.n_chunks:
            raise ValueError(
                f"plan has {self.n_chunks} chunks of {self.chunk_size} tokens but n_tokens={n} "
                f"holds {n // self.chunk_size} full chunks"
            )

    # --- text forms -----------------------------------------------------------------------
    def precision_string(self) -> str:
        """One letter per chunk: F (F16), 4 (Q4), 2 (Q2)."""
        letters = {"f16": "F", "q4": "4", "q2": "2"}
        return "".join(letters[p] for p in self.precisions)

    def summary(self) -> str:
        c = self.counts
        text = (
            f"{self.n_chunks} chunks x {self.chunk_size} tokens + {self.n_tail_tokens} tail tokens "
            f"(F16): f16 {c['f16']}, q4 {c['q4']}, q2 {c['q2']}; "
            f"{self.bits_per_element:.2f} bits/element over chunks, "
            f"{self.context_bits_per_element:.2f} over the context"
        )
        if self.thresholds is not None:
            t = self.thresholds
            text += (
                f"; similarity {t.s_min:.4g}..{t.s_max:.4g}, T_low {t.t_low:.4g}, T_high {t.t_high:.4g} "
                f"(alpha {t.alpha:g}, beta {t.beta:g})"
            )
        if self.encoder:
            text += f"; encoder {self.encoder}"
        return text

    def to_dict(self, include_texts: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": PLAN_FORMAT,
            "chunk_size": self.chunk_size,
            "n_context_tokens": self.n_context_tokens,
            "n_chunks": self.n_chunks,
            "n_tail_tokens": self.n_tail_tokens,
            "precisions": list(self.precisions),
            "counts": self.counts,
            "bits_per_element": self.bits_per_element,
            "similarities": None if self.similarities is None else list(self.similarities),
            "thresholds": None if self.thresholds is None else self.thresholds.to_dict(),
            "encoder": self.encoder,
            "query": self.query,
        }
        if include_texts:
            data["chunk_texts"] = None if self.chunk_texts is None else list(self.chunk_texts)
            data["tail_text"] = self.tail_text
        return data

    def to_json(self, include_texts: bool = True, indent: int | None = None) -> str:
        """JSON text; `Plan.from_json` reads it back (derived fields such as counts are recomputed)."""
        return json.dumps(self.to_dict(include_texts), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if not isinstance(data, dict):
            raise ValueError(f"a plan must be a JSON object, not {type(data).__name__}")
        fmt = data.get("format", PLAN_FORMAT)
        if fmt != PLAN_FORMAT:
            raise ValueError(f"plan format {fmt!r} is not {PLAN_FORMAT!r}")
        for key in ("chunk_size", "precisions", "n_context_tokens"):
            if key not in data:
                raise ValueError(f"plan JSON lacks the field {key!r}")
        thresholds = data.get("thresholds")
        sims = data.get("similarities")
        texts = data.get("chunk_texts")
        return cls(
            chunk_size=data["chunk_size"],
            precisions=tuple(data["precisions"]),
            n_context_tokens=data["n_context_tokens"],
            similarities=None if sims is None else tuple(sims),
            thresholds=None if thresholds is None else Thresholds.from_dict(thresholds),
            encoder=data.get("encoder"),
            query=data.get("query"),
            chunk_texts=None if texts is None else tuple(texts),
            tail_text=data.get("tail_text"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"plan JSON does not parse: {exc}") from exc
        return cls.from_dict(data)

    # --- pictures (cocktail_gguf.plan_picture) ---------------------------------------------
    def to_html(self, texts: Sequence[str] | None = None, title: str | None = None) -> str:
        """Self-contained HTML page: the context coloured by chunk precision, legend and counts."""
        from .plan_picture import plan_html

        return plan_html(self, texts=texts, title=title)

    def save_html(
        self, path: str | Path, texts: Sequence[str] | None = None, title: str | None = None
    ) -> Path:
        out = Path(path)
        out.write_text(self.to_html(texts=texts, title=title), encoding="utf-8")
        return out

    def save_similarity_png(self, path: str | Path, title: str | None = None) -> Path:
        """Similarity per chunk with both thresholds (needs matplotlib and a planner-made plan)."""
        from .plan_picture import save_similarity_png

        return save_similarity_png(self, path, title=title)
