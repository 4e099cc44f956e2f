"""The GPU pack of compaction (native/cocktail_pack_cuda.cu) gives the CPU pack's bytes, bit for bit: random
shapes, cells and strides, partial last blocks, and awkward values (constant groups, subnormals, inf, NaN).
Skipped unless the library was built with CUDA and a GPU is visible."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_env import needs_cuda

from cocktail_gguf import native_ops
from cocktail_gguf._native import NativeError


def _cache(rng: np.random.Generator, n_head_kv: int, n_cells: int, head_dim: int, layout: str) -> np.ndarray:
    x = rng.standard_normal((n_head_kv, n_cells, head_dim)) * rng.choice([0.01, 1.0, 30.0])
    x *= np.where(rng.random(head_dim) < 0.1, 25.0, 1.0)
    x = x.astype(np.float16)
    if layout == "transposed":  # V without flash attention: channels strided, tokens contiguous
        return np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)
    if layout == "llama":  # llama.cpp's K / flash-attention V: [cell][head][channel]
        return np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    return x


def _awkward(rng: np.random.Generator, x: np.ndarray) -> None:
    """Constant channels and token groups, subnormals, +-inf, NaN and -0 written into x (in place)."""
    n_head_kv, n_cells, head_dim = x.shape
    x[:, :, rng.integers(head_dim)] = np.float16(1.5)
    x[:, rng.integers(n_cells), :32] = np.float16(-2.0)
    picks = rng.integers(0, x.size, size=12)
    values = np.array([6e-8, -6e-8, 3e-5, np.inf, -np.inf, np.nan, -0.0, 65504.0, -65504.0, 1e-7, 0.0, 2e-6])
    x.reshape(-1)[picks] = values.astype(np.float16)


CASES = list(range(40))


@needs_cuda
@pytest.mark.parametrize("seed", CASES)
def test_gpu_pack_is_the_cpu_pack(seed: int) -> None:
    rng = np.random.default_rng(9100 + seed)
    head_dim = int(rng.choice([32, 64, 128, 256]))
    n_head_kv = int(rng.choice([1, 2, 8]))
    n_cells = int(rng.integers(1, 700))
    layout = str(rng.choice(["plain", "transposed", "llama"]))
    src = _cache(rng, n_head_kv, n_cells, head_dim, layout)
    if seed % 3 == 0:
        _awkward(rng, src)
    n_tokens = int(rng.integers(1, 2 * n_cells + 1))
    cells = rng.integers(0, n_cells, size=n_tokens).astype(np.int32)
    for precision in ("f16", "q4", "q2"):
        for part in ("k", "v"):
            want = native_ops.pack_region(precision, part, src, cells, n_threads=2)
            got = native_ops.pack_region(precision, part, src, cells, device="cuda")
            assert got.shape == want.shape
            bad = np.flatnonzero(got != want)
            assert bad.size == 0, f"{precision}/{part}: {bad.size} bytes differ, first at {bad[:5]}"


@needs_cuda
def test_gpu_pack_of_a_32k_context() -> None:
    rng = np.random.default_rng(7)
    src = _cache(rng, 8, 32768, 128, "llama")
    cells = rng.permutation(32768).astype(np.int32)
    for precision in ("q4", "q2"):
        for part in ("k", "v"):
            want = native_ops.pack_region(precision, part, src, cells, n_threads=4)
            got = native_ops.pack_region(precision, part, src, cells, device="cuda")
            assert np.array_equal(got, want), f"{precision}/{part}"


@needs_cuda
def test_gpu_pack_rejects_bad_arguments() -> None:
    src = np.zeros((1, 10, 64), dtype=np.float16)
    with pytest.raises(ValueError, match=r"cells\[2\] = 10 is outside \[0, 10\)"):
        native_ops.pack_region("q4", "k", src, [0, 1, 10], device="cuda")
    with pytest.raises(ValueError, match="head_dim 48"):
        native_ops.pack_region("q4", "k", np.zeros((1, 10, 48), dtype=np.float16), [0], device="cuda")
    with pytest.raises(ValueError, match="device='tpu'"):
        native_ops.pack_region("q4", "k", src, [0], device="tpu")


def test_gpu_pack_without_cuda_names_the_reason() -> None:
    from cuda_env import cuda_problem

    if cuda_problem() is None:
        pytest.skip("this build has CUDA and a GPU")
    src = np.zeros((1, 4, 32), dtype=np.float16)
    with pytest.raises(NativeError, match="cocktail_pack_region_cuda"):
        native_ops.pack_region("q2", "v", src, [0, 1], device="cuda")
