"""A host-RAM copy of one sequence's F16 KV cache (llama.cpp's state of sequence 0), keyed by its tokens.

`Llama(keep_f16_context=True)` saves one after prefilling a context, so a later `ask` (another query,
another plan, or a chat turn that extends the context) restores it instead of prefilling again: the
new plan is then compacted from exact F16 values, never re-quantized from Q2/Q4.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp

SEQ_ID = 0


@dataclass(frozen=True)
class F16Snapshot:
    tokens: tuple[int, ...]
    """The tokens whose KV the copy holds, from position 0."""
    data: Any
    """ctypes uint8 array: llama_state_seq_get_data of sequence 0."""

    @property
    def nbytes(self) -> int:
        return int(ctypes.sizeof(self.data))

    @classmethod
    def save(cls, ctx: Any, tokens: Sequence[int]) -> F16Snapshot:
        size = int(llama_cpp.llama_state_seq_get_size(ctx, SEQ_ID))
        data = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(ctx, data, size, SEQ_ID))
        if written != size:
            raise RuntimeError(f"llama_state_seq_get_data wrote {written} of {size} bytes")
        return cls(tuple(int(t) for t in tokens), data)

    def covers(self, prompt: Sequence[int]) -> bool:
        """True if every token of the copy starts ``prompt`` and at least one token follows them."""
        n = len(self.tokens)
        return 0 < n < len(prompt) and tuple(prompt[:n]) == self.tokens

    def restore(self, ctx: Any) -> None:
        """Replaces sequence 0 of an empty cache with the copy (positions 0..len(tokens)-1)."""
        if not llama_cpp.llama_state_seq_set_data(ctx, self.data, self.nbytes, SEQ_ID):
            raise RuntimeError(f"llama_state_seq_set_data refused the {self.nbytes}-byte F16 snapshot")
