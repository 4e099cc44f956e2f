"""numpy wrappers of the native KV region formats and the CPU mixed-region attention.

Byte layouts and the attention contract: native/README.md. Arrays are passed to the C API without copies
where their strides allow it (the strides go along); results come back as new numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._native import check, ffi, lib

PRECISIONS: dict[str, int] = {"f16": 0, "q4": 1, "q2": 2}
PARTS: dict[str, int] = {"k": 0, "v": 1}
# Storage cost of a full 32-token block, scale+min included (the planner's constants).
BITS_PER_ELEMENT: dict[str, float] = {"f16": 16.0, "q4": 5.0, "q2": 3.0}
BLOCK_TOKENS = 32


def _precision(precision: str | int) -> int:
    if isinstance(precision, str):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
        return PRECISIONS[precision]
    return int(precision)


def _part(part: str | int) -> int:
    if isinstance(part, str):
        if part not in PARTS:
            raise ValueError(f"part {part!r} is not 'k' or 'v'")
        return PARTS[part]
    return int(part)


def _ptr(arr: np.ndarray, ctype: str = "void *") -> Any:
    return ffi.cast(ctype, arr.ctypes.data)


def _strides(arr: np.ndarray, name: str) -> tuple[int, ...]:
    if any(s < 0 for s in arr.strides):
        raise ValueError(f"{name} has negative strides {arr.strides}; pass a copy")
    return tuple(int(s) for s in arr.strides)


def region_bytes(precision: str | int, part: str | int, n_tokens: int, n_head_kv: int, head_dim: int) -> int:
    """Bytes of one region's K or V buffer."""
    out = ffi.new("size_t *")
    check(
        lib().cocktail_region_bytes(_precision(precision), _part(part), n_tokens, n_head_kv, head_dim, out),
        "cocktail_region_bytes",
    )
    return int(out[0])


def pack_region(
    precision: str | int,
    part: str | int,
    src: np.ndarray,
    cells: Sequence[int] | np.ndarray,
    n_threads: int = 1,
    device: str = "cpu",
) -> np.ndarray:
    """Gathers src[:, cells, :] (float16, shape (n_head_kv, n_cells, head_dim), any non-negative strides)
    into a packed region buffer (uint8).

    device: "cpu" (n_threads threads) or "cuda" (compaction's GPU pack, on the current GPU: the same bytes).
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not 'cpu' or 'cuda'")
    if src.dtype != np.float16 or src.ndim != 3:
        raise ValueError(f"src must be float16 (n_head_kv, n_cells, head_dim), got {src.dtype} {src.shape}")
    nb_head, nb_token, nb_channel = _strides(src, "src")
    n_head_kv, n_cells, head_dim = src.shape
    cells_arr = np.ascontiguousarray(np.asarray(cells, dtype=np.int32))
    if cells_arr.ndim != 1:
        raise ValueError(f"cells must be 1-d, got shape {cells_arr.shape}")
    n_tokens = int(cells_arr.shape[0])
    size = region_bytes(precision, part, n_tokens, n_head_kv, head_dim)
    dst = np.zeros(max(size, 1), dtype=np.uint8)
    args = (
        _precision(precision),
        _part(part),
        _ptr(dst),
        size,
        n_tokens,
        n_head_kv,
        head_dim,
        _ptr(src),
        nb_token,
        nb_channel,
        nb_head,
        n_cells,
        _ptr(cells_arr, "const int *"),
    )
    if device == "cuda":
        check(lib().cocktail_pack_region_cuda(*args), "cocktail_pack_region_cuda")
    else:
        check(lib().cocktail_pack_region(*args, n_threads), "cocktail_pack_region")
    return dst[:size]


def dequant_region(
    precision: str | int, part: str | int, packed: np.ndarray, n_tokens: int, n_head_kv: int, head_dim: int
) -> np.ndarray:
    """Packed region buffer -> float32 (n_head_kv, n_tokens, head_dim)."""
    buf = np.ascontiguousarray(packed, dtype=np.uint8)
    out = np.zeros((n_head_kv, n_tokens, head_dim), dtype=np.float32)
    check(
        lib().cocktail_dequant_region(
            _precision(precision),
            _part(part),
            _ptr(buf),
            buf.nbytes,
            n_tokens,
            n_head_kv,
            head_dim,
            _ptr(out, "float *"),
        ),
        "cocktail_dequant_region",
    )
    return out


@dataclass(frozen=True)
class PackedRegion:
    """One region's packed K and V (uint8 buffers) in the layout of native/README.md."""

    precision: str
    n_tokens: int
    k: np.ndarray
    v: np.ndarray


def pack_kv_region(
    precision: str,
    k_src: np.ndarray,
    v_src: np.ndarray,
    cells: Sequence[int] | np.ndarray,
    n_threads: int = 1,
) -> PackedRegion:
    """Packs K and V of the given cells (sources as in pack_region)."""
    return PackedRegion(
        precision=precision,
        n_tokens=len(cells),
        k=pack_region(precision, "k", k_src, cells, n_threads),
        v=pack_region(precision, "v", v_src, cells, n_threads),
    )


def _attn_args(
    q: np.ndarray,
    regions: Sequence[PackedRegion],
    n_head_kv: int,
    kq_scale: float,
    tail_k: np.ndarray | None,
    tail_v: np.ndarray | None,
    mask: np.ndarray | None,
) -> tuple[Any, np.ndarray, list[Any]]:
    """The C argument struct, the output array it writes, and what must stay alive while it is used."""
    if q.dtype != np.float32 or q.ndim != 3 or q.strides[2] != 4:
        raise ValueError(
            f"q must be float32 (n_q, n_head, head_dim), channels contiguous; got {q.dtype} {q.shape}"
        )
    n_q, n_head, head_dim = q.shape
    out = np.zeros_like(q, order="C")
    keep: list[Any] = [q]
    c_regions = ffi.new("struct cocktail_kv_region[]", max(len(regions), 1))
    for i, r in enumerate(regions):
        c_regions[i].precision = _precision(r.precision)
        c_regions[i].n_tokens = r.n_tokens
        for name in ("k", "v"):
            buf = np.ascontiguousarray(getattr(r, name), dtype=np.uint8)
            want = region_bytes(r.precision, name, r.n_tokens, n_head_kv, head_dim)
            if buf.nbytes < want:
                raise ValueError(f"regions[{i}].{name} has {buf.nbytes} bytes, the region needs {want}")
            keep.append(buf)
            setattr(c_regions[i], name, _ptr(buf))
    a = ffi.new("struct cocktail_attn_args *")
    a.n_q_tokens, a.n_head, a.n_head_kv, a.head_dim = n_q, n_head, n_head_kv, head_dim
    a.kq_scale = kq_scale
    a.q, a.q_nb_token, a.q_nb_head = _ptr(q, "const float *"), *_strides(q, "q")[:2]
    a.out, a.out_nb_token, a.out_nb_head = _ptr(out, "float *"), out.strides[0], out.strides[1]
    a.regions, a.n_regions = c_regions, len(regions)
    keep.append(c_regions)
    if tail_k is not None or tail_v is not None:
        if tail_k is None or tail_v is None:
            raise ValueError("tail_k and tail_v go together")
        for name, t in (("tail_k", tail_k), ("tail_v", tail_v)):
            if t.dtype != np.float16 or t.ndim != 3 or t.shape[0] != n_head_kv or t.shape[2] != head_dim:
                raise ValueError(
                    f"{name} must be float16 ({n_head_kv}, n_tail, {head_dim}), got {t.dtype} {t.shape}"
                )
        if tail_k.shape != tail_v.shape:
            raise ValueError(f"tail_k {tail_k.shape} and tail_v {tail_v.shape} differ")
        k_nb_head, k_nb_token, k_nb_channel = _strides(tail_k, "tail_k")
        if k_nb_channel != 2:
            raise ValueError(f"tail_k channels must be contiguous, stride is {k_nb_channel} bytes")
        v_nb_head, v_nb_token, v_nb_channel = _strides(tail_v, "tail_v")
        a.n_tail = tail_k.shape[1]
        a.tail_k, a.tail_k_nb_token, a.tail_k_nb_head = _ptr(tail_k), k_nb_token, k_nb_head
        a.tail_v, a.tail_v_nb_token, a.tail_v_nb_channel, a.tail_v_nb_head = (
            _ptr(tail_v),
            v_nb_token,
            v_nb_channel,
            v_nb_head,
        )
        if mask is not None:
            if mask.dtype not in (np.float32, np.float16) or mask.shape != (n_q, a.n_tail):
                raise ValueError(f"mask must be float32/16 {(n_q, a.n_tail)}, got {mask.dtype} {mask.shape}")
            if mask.strides[1] != mask.itemsize:
                mask = np.ascontiguousarray(mask)
            keep.append(mask)
            a.mask, a.mask_nb_row = _ptr(mask), _strides(mask, "mask")[0]
            a.mask_f16 = int(mask.dtype == np.float16)
    elif mask is not None:
        raise ValueError("mask without a tail")
    return a, out, keep


def attn_mixed_regions(
    q: np.ndarray,
    regions: Sequence[PackedRegion],
    *,
    n_head_kv: int,
    kq_scale: float,
    tail_k: np.ndarray | None = None,
    tail_v: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    n_threads: int = 1,
    device: str = "cpu",
) -> np.ndarray:
    """Attention of q (float32, (n_q_tokens, n_head, head_dim)) over the regions and an optional fp16 tail.

    tail_k, tail_v: float16 (n_head_kv, n_tail, head_dim) views with any non-negative strides (tail_k's
    channels contiguous). mask: float32 or float16 (n_q_tokens, n_tail), additive (0 / -inf).
    device: "cpu" (n_threads threads) or "cuda" (the CUDA kernels on the current GPU; host arrays in and out).
    Returns float32 (n_q_tokens, n_head, head_dim)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not 'cpu' or 'cuda'")
    a, out, _keep = _attn_args(q, regions, n_head_kv, kq_scale, tail_k, tail_v, mask)
    if device == "cuda":
        check(lib().cocktail_attn_mixed_regions_cuda(a), "cocktail_attn_mixed_regions_cuda")
    else:
        check(lib().cocktail_attn_mixed_regions(a, n_threads), "cocktail_attn_mixed_regions")
    return out


def attn_cuda_bench(
    q: np.ndarray,
    regions: Sequence[PackedRegion],
    *,
    n_head_kv: int,
    kq_scale: float,
    tail_k: np.ndarray | None = None,
    tail_v: np.ndarray | None = None,
    n_iters: int = 50,
    graph: bool = False,
) -> dict[str, float]:
    """Times the CUDA kernels on device copies of the inputs: ms per call, bytes one call reads, its GB/s,
    and the device's copy bandwidth (GB/s, bytes read + written). graph: the n_iters calls captured into one
    CUDA graph and timed as one replay (as llama.cpp replays a decode step), not launched one by one."""
    if n_iters < 1:
        raise ValueError(f"n_iters={n_iters} is not a positive number of calls")
    a, _out, _keep = _attn_args(q, regions, n_head_kv, kq_scale, tail_k, tail_v, None)
    ms, nbytes, copy = ffi.new("double *"), ffi.new("double *"), ffi.new("double *")
    rc = lib().cocktail_attn_mixed_regions_cuda_bench(a, n_iters, int(graph), ms, nbytes, copy)
    check(rc, "cuda bench")
    return {
        "ms": ms[0],
        "bytes_read": nbytes[0],
        "attn_kernel_gbps": nbytes[0] / (ms[0] * 1e-3) / 1e9,
        "copy_gbps": copy[0],
    }


def cpu_simd(mode: int = -1) -> bool:
    """Kernel variant: -1 query, 0 portable scalar code, 1 AVX2 when available. True when AVX2 is in use."""
    if mode not in (-1, 0, 1):
        raise ValueError(f"mode {mode} is not -1, 0 or 1")
    return bool(lib().cocktail_cpu_simd(mode))
