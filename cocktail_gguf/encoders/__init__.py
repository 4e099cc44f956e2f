"""Retrievers for the planner: embed chunks and query (or score chunks directly) to rank relevance.

`get_encoder(spec)` picks one:
- None / "minilm": the packaged all-MiniLM-L6-v2 through sentence-transformers (torch);
- "minilm-gguf": the same model converted once to GGUF (cached under ~/.cache/cocktail-gguf) and
  run through our llama.cpp library: no torch at planning time;
- "bm25": BM25 over the chunks (no model);
- a path to a .gguf file: `GGUFEncoder`;
- a path to a folder: `SentenceTransformerEncoder` (sentence-transformers config, or a plain HF
  transformer such as facebook/contriever, mean-pooled);
- an object with ``embed(texts)`` or ``similarities(query, texts)`` and a ``name``: used as is.
Loaded models are kept per spec, so planning again does not reload them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .base import Encoder, SimilarityScorer, cosine_similarities, embed_texts
from .bm25 import BM25Scorer
from .cache import DEFAULT_CACHE, EmbeddingCache
from .gguf_encoder import GGUFEncoder
from .sentence_transformers_encoder import SentenceTransformerEncoder, default_minilm_path

EncoderSpec = Any
"""None | "minilm" | "minilm-gguf" | "bm25" | .gguf path | model folder path | Encoder | SimilarityScorer"""

NAMED_ENCODERS = ("minilm", "minilm-gguf", "bm25")

_loaded: dict[str, Encoder | SimilarityScorer] = {}
_lock = threading.Lock()


def cache_dir() -> Path:
    """$COCKTAIL_GGUF_CACHE, else $XDG_CACHE_HOME/cocktail-gguf, else ~/.cache/cocktail-gguf."""
    env = os.environ.get("COCKTAIL_GGUF_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cocktail-gguf"


def minilm_gguf_path(outtype: str = "f16") -> Path:
    """The packaged all-MiniLM-L6-v2 as GGUF, converted on first use into `cache_dir()`."""
    from ..bert_to_gguf import convert_bert_to_gguf

    out = cache_dir() / "encoders" / f"all-MiniLM-L6-v2-{outtype}.gguf"
    if not out.exists():
        convert_bert_to_gguf(default_minilm_path(), out, outtype=outtype, name="all-MiniLM-L6-v2")
    return out


def gguf_encoder_path(spec: str) -> Path | None:
    """The GGUF file an encoder spec names ("minilm-gguf": the packaged MiniLM, converted on first use; an
    existing .gguf file), else None."""
    if spec == "minilm-gguf":
        return minilm_gguf_path()
    path = Path(spec).expanduser()
    return path if path.is_file() and path.suffix.lower() == ".gguf" else None


def _load(spec: str) -> Encoder | SimilarityScorer:
    if spec == "minilm":
        return SentenceTransformerEncoder.default()
    if spec == "bm25":
        return BM25Scorer()
    check_encoder_spec(spec)
    gguf = gguf_encoder_path(spec)
    if gguf is not None:
        return GGUFEncoder(gguf)
    return SentenceTransformerEncoder(Path(spec).expanduser())


def check_encoder_spec(spec: EncoderSpec) -> None:
    """Raises ValueError naming ``spec`` if `get_encoder` would refuse it; loads nothing."""
    if spec is None or isinstance(spec, (Encoder, SimilarityScorer)):
        return
    if isinstance(spec, (str, Path)):
        text = str(spec)
        path = Path(text).expanduser()
        if text in NAMED_ENCODERS or (path.is_file() and path.suffix.lower() == ".gguf") or path.is_dir():
            return
        raise ValueError(
            f"encoder={text!r} is not one of {', '.join(NAMED_ENCODERS)}, an existing .gguf file, "
            "or a model folder"
        )
    raise ValueError(
        f"encoder={spec!r} is neither a name, a path, nor an object with `name` and "
        "`embed(texts)` or `similarities(query, texts)`"
    )


def get_encoder(spec: EncoderSpec = None) -> Encoder | SimilarityScorer:
    """The encoder or scorer named by ``spec`` (see the module doc); loaded models are reused."""
    if spec is None:
        spec = "minilm"
    if isinstance(spec, Path):
        spec = str(spec)
    if isinstance(spec, str):
        key = spec if spec in NAMED_ENCODERS else str(Path(spec).expanduser().resolve())
        with _lock:
            if key not in _loaded:
                _loaded[key] = _load(spec)
            return _loaded[key]
    if isinstance(spec, (Encoder, SimilarityScorer)):
        return spec
    raise ValueError(
        f"encoder={spec!r} is neither a name, a path, nor an object with `name` and "
        "`embed(texts)` or `similarities(query, texts)`"
    )


__all__ = [
    "BM25Scorer",
    "DEFAULT_CACHE",
    "EmbeddingCache",
    "Encoder",
    "EncoderSpec",
    "GGUFEncoder",
    "NAMED_ENCODERS",
    "SentenceTransformerEncoder",
    "SimilarityScorer",
    "check_encoder_spec",
    "cosine_similarities",
    "default_minilm_path",
    "embed_texts",
    "get_encoder",
    "gguf_encoder_path",
    "minilm_gguf_path",
]
