"""Haystack text: the shipped public-domain prose (see corpus/SOURCES.md) or files a user gives."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

CORPUS_DIR = Path(__file__).with_name("corpus")

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z])")


def default_corpus_files() -> list[Path]:
    files = sorted(CORPUS_DIR.glob("*.txt"))
    if not files:
        raise RuntimeError(f"no default corpus files (*.txt) under {CORPUS_DIR}: the package is incomplete")
    return files


def load_corpus(files: Sequence[str | Path] | None = None) -> list[str]:
    """The documents (one string per file, whitespace inside paragraphs collapsed). ``files`` default:
    the shipped corpus. A missing, empty or non-UTF-8 file raises ValueError naming it."""
    paths = [Path(f) for f in files] if files else default_corpus_files()
    docs = []
    for path in paths:
        if not path.is_file():
            raise ValueError(f"corpus file {str(path)!r} does not exist")
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"corpus file {str(path)!r} is not UTF-8 text: {exc}") from exc
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", raw)]
        text = "\n".join(p for p in paragraphs if p)
        if len(text) < 1000:
            raise ValueError(
                f"corpus file {str(path)!r} has {len(text)} characters of text: need at least 1000"
            )
        docs.append(text)
    return docs


def sentences(text: str) -> list[str]:
    """Sentences of ``text`` (a paragraph break also ends one); each keeps its closing punctuation."""
    out: list[str] = []
    for paragraph in text.split("\n"):
        out.extend(s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip())
    return out
