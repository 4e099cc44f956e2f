"""cocktail-gguf: llama.cpp GGUF inference with a query-aware mixed-precision KV cache."""

from __future__ import annotations

from . import _native

# Point llama-cpp-python at our libllama before anything imports it.
_native.lib()

from .llama import KV_MODES, Answer, Llama  # noqa: E402
from .models import default_model_path  # noqa: E402
from .plan import Plan  # noqa: E402

__version__ = _native.version()

__all__ = ["KV_MODES", "Answer", "Llama", "Plan", "__version__", "default_model_path"]
