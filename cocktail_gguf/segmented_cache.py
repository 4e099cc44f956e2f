"""Binding of the segmented KV cache's C API (native/cocktail_api.h, "segmented cache" section).

A llama_context gets a `Plan` before prefill (`set_plan`), is compacted after it (`compact`): every
planned chunk's K/V then lives in a Q2/Q4/F16 region of its layer and leaves llama.cpp's cache.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _native
from .plan import PRECISIONS, Plan

SEQ_ID = 0
"""The sequence a single-sequence context uses (every call takes ``seq_id``, default this)."""

_changed: set[int] = set()
"""Addresses of the llama contexts a plan or compaction went to since `forget`: their llama.cpp cache may
miss compacted positions, or stale regions may join their attention, so llama-cpp-python's prefix reuse
must not trust it (`cocktail_gguf.Llama` empties it first)."""


@dataclass(frozen=True)
class LayerRegions:
    """Sizes of one layer's regions: tokens and K / V bytes per precision ("f16", "q4", "q2")."""

    layer: int
    compacted: bool
    n_tokens: dict[str, int]
    k_bytes: dict[str, int]
    v_bytes: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.k_bytes.values()) + sum(self.v_bytes.values())


def _ctx_ptr(ctx: Any, changing: bool = False) -> Any:
    """A cffi `struct llama_context *` from llama-cpp-python's ctypes context pointer; ``changing``: the
    call may change the context's cache (recorded for `changed`)."""
    address = ctypes.cast(ctx, ctypes.c_void_p).value
    if not address:
        raise ValueError("the llama context is closed (NULL)")
    if changing:
        _changed.add(address)
    return _native.ffi.cast("struct llama_context *", address)


def changed(ctx: Any) -> bool:
    """True if `set_plan` or `compact` reached ctx since `forget(ctx)` (False for a closed context)."""
    return ctypes.cast(ctx, ctypes.c_void_p).value in _changed


def forget(ctx: Any) -> None:
    """For the owner of ctx, after it emptied the llama.cpp cache and cleared the plan: nothing is left."""
    _changed.discard(ctypes.cast(ctx, ctypes.c_void_p).value or 0)


def set_plan(ctx: Any, plan: Plan, pos0: int, seq_id: int = SEQ_ID) -> None:
    """Plans sequence ``seq_id``: the context's first token sits at position ``pos0`` (1 after a BOS)."""
    codes = np.ascontiguousarray(plan.native_codes(), dtype=np.uint8)
    buf = _native.ffi.from_buffer("uint8_t[]", codes) if codes.size else _native.ffi.NULL
    ptr = _ctx_ptr(ctx, changing=True)
    _native.check(
        _native.lib().cocktail_set_plan(
            ptr, seq_id, pos0, plan.chunk_size, buf, plan.n_chunks, plan.n_context_tokens
        ),
        "cocktail_set_plan",
    )


def check_supported(ctx: Any) -> None:
    """Raises (NativeError / ValueError, message naming the reason) if ctx cannot run the segmented cache."""
    _native.check(
        _native.lib().cocktail_set_plan(_ctx_ptr(ctx), SEQ_ID, 0, 1, _native.ffi.NULL, 0, 0),
        "segmented KV cache",
    )
    clear(ctx)


def clear(ctx: Any, seq_id: int = SEQ_ID) -> None:
    _native.check(_native.lib().cocktail_clear(_ctx_ptr(ctx), seq_id), "cocktail_clear")


def compact(ctx: Any, seq_id: int = SEQ_ID) -> None:
    _native.check(_native.lib().cocktail_compact(_ctx_ptr(ctx, changing=True), seq_id), "cocktail_compact")


def check(ctx: Any) -> None:
    """Raises NativeError if a graph build or attention op hit an error since the plan was set."""
    _native.check(_native.lib().cocktail_check(_ctx_ptr(ctx)), "segmented KV cache")


def layer_regions(ctx: Any, n_layer: int, seq_id: int = SEQ_ID) -> dict[int, LayerRegions]:
    """Regions of every layer in the segmented cache (sliding-window layers are not), by model layer index."""
    out: dict[int, LayerRegions] = {}
    info = _native.ffi.new("struct cocktail_layer_regions *")
    ptr = _ctx_ptr(ctx)
    for il in range(n_layer):
        _native.check(
            _native.lib().cocktail_region_info(ptr, seq_id, il, info), f"cocktail_region_info(layer {il})"
        )
        if not info.segmented:
            continue
        out[il] = LayerRegions(
            layer=il,
            compacted=bool(info.compacted),
            n_tokens={p: int(info.n_tokens[i]) for i, p in enumerate(PRECISIONS)},
            k_bytes={p: int(info.k_bytes[i]) for i, p in enumerate(PRECISIONS)},
            v_bytes={p: int(info.v_bytes[i]) for i, p in enumerate(PRECISIONS)},
        )
    return out


def state_bytes(ctx: Any, seq_id: int = SEQ_ID) -> bytes:
    """A sequence's plan and regions as bytes (empty without a plan); llama.cpp's state does not hold them."""
    ptr = _ctx_ptr(ctx)
    size = _native.ffi.new("size_t *", 0)
    _native.check(_native.lib().cocktail_state_get(ptr, seq_id, _native.ffi.NULL, size), "cocktail_state_get")
    if size[0] == 0:
        return b""
    buf = _native.ffi.new("uint8_t[]", size[0])
    _native.check(_native.lib().cocktail_state_get(ptr, seq_id, buf, size), "cocktail_state_get")
    return bytes(_native.ffi.buffer(buf, size[0]))


def restore_state(ctx: Any, data: bytes, seq_id: int = SEQ_ID) -> None:
    """Replaces a sequence's plan and regions with what `state_bytes` returned (b"" drops them)."""
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"segmented-cache state must be bytes, not {type(data).__name__}")
    buf = _native.ffi.from_buffer("uint8_t[]", data) if data else _native.ffi.NULL
    _native.check(
        _native.lib().cocktail_state_set(_ctx_ptr(ctx), seq_id, buf, len(data)), "cocktail_state_set"
    )


@dataclass(frozen=True)
class KvCells:
    """Cells of llama.cpp's standard KV cache of a context (the full-attention cache of an iSWA pair)."""

    size: int
    """cells allocated now"""
    used: int
    """cells holding tokens"""
    full: int
    """cells of the full-size cache (n_ctx per sequence)"""


def kv_cells(ctx: Any) -> KvCells:
    size, used, full = (_native.ffi.new("int64_t *") for _ in range(3))
    _native.check(_native.lib().cocktail_kv_cells(_ctx_ptr(ctx), size, used, full), "cocktail_kv_cells")
    return KvCells(size=int(size[0]), used=int(used[0]), full=int(full[0]))


def kv_resize(ctx: Any, n_cells: int) -> None:
    """Rebuilds llama.cpp's KV cache of ctx with max(n_cells, cells in use) cells (rounded up to 256, at most
    the full size; n_cells <= 0: the full size), keeping its tokens. Callers holding llama.cpp's memory
    pointer of ctx must fetch it again (llama_get_memory)."""
    _native.check(_native.lib().cocktail_kv_resize(_ctx_ptr(ctx), int(n_cells)), "cocktail_kv_resize")
