"""`Llama`: llama-cpp-python's Llama on our libllama, with the Cocktail KV-cache options."""

from __future__ import annotations

import math
from typing import Any

import llama_cpp

KV_MODES = ("f16", "cocktail", "q4", "q2")
"""f16: llama.cpp's own cache, untouched. cocktail: per-chunk F16/Q4/Q2 by query relevance.
q4 / q2: every context chunk at that precision (same code path as cocktail; baselines)."""

_NOT_YET = (
    "kv_mode={mode!r} needs the segmented Q2/Q4/F16 KV cache, which this build does not have yet; "
    "use kv_mode='f16'"
)


def validate_kv_options(kv_mode: Any, chunk_size: Any, alpha: Any, beta: Any) -> None:
    """Raises ValueError naming the first bad Cocktail option."""
    if not isinstance(kv_mode, str) or kv_mode not in KV_MODES:
        raise ValueError(f"kv_mode={kv_mode!r} is not one of {', '.join(KV_MODES)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= 256:
        raise ValueError(f"chunk_size={chunk_size!r} must be an integer in 1..256")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}={value!r} must be a finite number in [0, 1]")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name}={value!r} must be in [0, 1]")


class Llama(llama_cpp.Llama):
    """Drop-in `llama_cpp.Llama` with Cocktail options.

    Every llama-cpp-python argument is accepted unchanged. Extra keyword arguments:
    kv_mode ("f16" | "cocktail" | "q4" | "q2"), chunk_size (tokens per chunk, 1..256),
    alpha / beta (threshold fractions of the similarity range, paper defaults 0.6 / 0.1),
    encoder (name, path or object embedding chunk texts and the query).
    """

    def __init__(
        self,
        model_path: str,
        *args: Any,
        kv_mode: str = "f16",
        chunk_size: int = 32,
        alpha: float = 0.6,
        beta: float = 0.1,
        encoder: Any = None,
        **kwargs: Any,
    ) -> None:
        validate_kv_options(kv_mode, chunk_size, alpha, beta)
        if kv_mode != "f16":
            raise NotImplementedError(_NOT_YET.format(mode=kv_mode))
        self.kv_mode = kv_mode
        self.chunk_size = chunk_size
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.encoder = encoder
        super().__init__(model_path, *args, **kwargs)

    def close(self) -> None:
        # __init__ may raise before llama_cpp.Llama set up its resources (bad options above)
        if hasattr(self, "_stack"):
            super().close()
