"""Whether the CUDA tests can run here: a CUDA build of our library and a CUDA device it sees."""

from __future__ import annotations

import pytest

from cocktail_gguf import _native


def cuda_problem() -> str | None:
    """Why CUDA tests cannot run (None: they can)."""
    if not _native.build_info().get("cuda"):
        return "library built without CUDA"
    if not any(d.get("type") == "gpu" or "CUDA" in str(d.get("name", "")) for d in _native.devices()):
        return "no CUDA device visible"
    return None


needs_cuda = pytest.mark.skipif(cuda_problem() is not None, reason=str(cuda_problem()))
