"""Seeded fuzzing of the native pack + mixed-region attention against the float64 reference.

Each case draws a shape (head_dim a multiple of 32 in 32..256, 1..4 KV heads, GQA 1/2/4/8), a chunk size
(1..64), a plan with a random precision mix (precisions absent, so empty regions, included), a random split
of each precision into regions in a random list order with extra empty regions, chunks placed at random
cells of the fp16 source cache, an F16 tail of random length with a random 0 / -inf mask (f32 or f16, rows
that see nothing included), 1..5 query tokens, transposed V or not, 1..3 threads and the AVX2 or the scalar
kernels. The bulk are small (<= ~250 context tokens); every 50th case is large (up to 2048 tokens, D 256).

Tolerance: `reference_attention.attention_tolerance`, the rule of tests/test_attn_mixed_regions.py (fp32
rounding of scores and of the weighted V sum against float64 over exactly the values the documented layout
reads from the packed bytes). Zero cases may exceed it. test_fuzz_detects_a_dropped_token shows that
comparison is tight enough to catch one missing token in almost every case.

Pack round trip: every element within scale/2 (+ fp32 rounding of min + scale * code), the bound of
native/README.md, on random shapes, cells (repeated ones too) and value ranges up to fp16's limits.

COCKTAIL_FUZZ_CASES=N runs N attention and N pack cases (default 1000 each, ~15 s on 2 cores);
COCKTAIL_FUZZ_SEED=S shifts the seeds (a failure prints the seed that reproduces it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import reference_attention as ref

from cocktail_gguf import native_ops

N_CASES = int(os.environ.get("COCKTAIL_FUZZ_CASES", "1000"))
SEED0 = int(os.environ.get("COCKTAIL_FUZZ_SEED", "0"))
N_BATCHES = 10  # pytest items per fuzz test: a failure names its batch, the message names the seed
U32 = 2.0**-24
PRECISIONS = ("f16", "q4", "q2")
HAS_AVX2 = native_ops.cpu_simd(-1) or native_ops.cpu_simd(1)


@dataclass(frozen=True)
class FuzzCase:
    seed: int
    head_dim: int
    n_head_kv: int
    group: int
    chunk_size: int
    n_chunks: int
    n_rem: int  # context tokens after the last full chunk (they become one more, shorter, F16 chunk)
    weights: tuple[float, float, float]  # f16, q4, q2 share of the chunks (zeros: empty regions)
    n_tail: int
    n_q: int
    mask: str  # none | f32 | f16
    hole_rate: float  # share of causally visible tail tokens masked anyway
    v_transposed: bool
    q_gain: float
    n_threads: int
    scalar: bool  # the portable scalar kernels instead of AVX2


def fuzz_case(seed: int) -> FuzzCase:
    rng = np.random.default_rng([0xC0C7, seed])
    big = seed % 50 == 49
    if big:
        head_dim = int(rng.choice([128, 256]))
        chunk_size = int(rng.integers(16, 65))
        n_chunks = int(rng.integers(8, 2048 // chunk_size + 1))
    else:
        head_dim = 32 * int(rng.integers(1, 9))
        chunk_size = int(rng.integers(1, 65))
        n_chunks = int(rng.integers(0, max(1, 240 // chunk_size) + 1))
    w = rng.dirichlet(np.ones(3)) * (rng.random(3) > 0.3)  # each precision absent with p = 0.3
    n_q = int(rng.integers(1, 6))
    n_tail = int(rng.choice([0, n_q, n_q + int(rng.integers(1, 70))]))
    return FuzzCase(
        seed=seed,
        head_dim=head_dim,
        n_head_kv=int(rng.integers(1, 5)),
        group=int(rng.choice([1, 2, 4, 8])),
        chunk_size=chunk_size,
        n_chunks=n_chunks,
        n_rem=int(rng.integers(0, chunk_size)),
        weights=(float(w[0]), float(w[1]), float(w[2])),
        n_tail=n_tail,
        n_q=n_q,
        mask=str(rng.choice(["none", "f32", "f16"])) if n_tail else "none",
        hole_rate=float(rng.choice([0.0, 0.3, 0.95])),
        v_transposed=bool(rng.random() < 0.4),
        q_gain=float(rng.choice([0.25, 1.0, 4.0])),
        n_threads=int(rng.integers(1, 4)),
        scalar=bool(rng.random() < 0.25) or not HAS_AVX2,
    )


@dataclass
class Inputs:
    q: np.ndarray
    k: np.ndarray  # (H, n_cells, D) fp16: context cells first, then the tail
    v: np.ndarray
    n_ctx: int
    regions: list[native_ops.PackedRegion]
    mask: np.ndarray | None
    kq_scale: float


def build(c: FuzzCase) -> Inputs:
    rng = np.random.default_rng([0xF022, c.seed])
    H, D = c.n_head_kv, c.head_dim
    n_ctx = c.n_chunks * c.chunk_size + c.n_rem
    n_cells = n_ctx + c.n_tail
    k64 = rng.standard_normal((H, n_cells, D)) * np.where(rng.random(D) < 0.08, 8.0, 1.0)
    k64 += rng.standard_normal((H, 1, D))  # per-channel offsets, as real keys have
    k = k64.astype(np.float16)
    v = (rng.standard_normal((H, n_cells, D)) * 2.0 + 0.5).astype(np.float16)
    if c.v_transposed:  # llama.cpp's V without flash attention: [n_cells, head_dim, n_head_kv] in memory
        v = np.ascontiguousarray(v.transpose(0, 2, 1)).transpose(0, 2, 1)
    n_head = H * c.group
    q = (rng.standard_normal((c.n_q, 2 * n_head, D)) * c.q_gain).astype(np.float32)
    q = q[:, ::2, :] if rng.random() < 0.5 else np.ascontiguousarray(q[:, :n_head, :])

    # chunks at random cells of the context (llama.cpp's cell of a position is anywhere), then per precision
    cell_of = rng.permutation(n_ctx)
    chunks: dict[str, list[np.ndarray]] = {p: [] for p in PRECISIONS}
    weights = np.array(c.weights)
    for i in range(c.n_chunks):
        p = PRECISIONS[rng.choice(3, p=weights / weights.sum())] if weights.sum() > 0 else "f16"
        chunks[p].append(cell_of[i * c.chunk_size : (i + 1) * c.chunk_size])
    if c.n_rem:
        chunks["f16"].append(cell_of[c.n_chunks * c.chunk_size :])

    regions: list[native_ops.PackedRegion] = []
    for p in PRECISIONS:
        order = [chunks[p][i] for i in rng.permutation(len(chunks[p]))]
        n_split = int(rng.integers(1, min(3, len(order)) + 1)) if order else 1
        cuts = (
            np.sort(rng.choice(np.arange(1, len(order)), size=n_split - 1, replace=False))
            if n_split > 1
            else []
        )
        for part in np.split(np.arange(len(order)), cuts):
            cells = np.concatenate([order[j] for j in part]) if len(part) else np.zeros(0, np.int32)
            regions.append(native_ops.pack_kv_region(p, k, v, cells, n_threads=int(rng.integers(1, 4))))
    empty = np.zeros(0, np.uint8)
    for _ in range(int(rng.integers(0, 3))):
        regions.append(native_ops.PackedRegion(PRECISIONS[rng.integers(3)], 0, empty, empty))
    regions = [regions[i] for i in rng.permutation(len(regions))]

    mask = None
    if c.mask != "none":
        i = np.arange(c.n_q)[:, None]
        j = np.arange(c.n_tail)[None, :]
        visible = (j <= c.n_tail - c.n_q + i) & (rng.random((c.n_q, c.n_tail)) >= c.hole_rate)
        mask = np.where(visible, 0.0, -np.inf).astype(np.float16 if c.mask == "f16" else np.float32)
    return Inputs(q, k, v, n_ctx, regions, mask, float(1.0 / np.sqrt(D)))


@pytest.fixture
def restore_simd() -> Iterator[None]:
    yield
    native_ops.cpu_simd(1)


def run_native(c: FuzzCase, x: Inputs, n_threads: int) -> np.ndarray:
    native_ops.cpu_simd(0 if c.scalar else 1)
    tail = {}
    if c.n_tail:
        tail = {"tail_k": x.k[:, x.n_ctx :], "tail_v": x.v[:, x.n_ctx :], "mask": x.mask}
    return native_ops.attn_mixed_regions(
        x.q, x.regions, n_head_kv=c.n_head_kv, kq_scale=x.kq_scale, n_threads=n_threads, **tail
    )


def reference(c: FuzzCase, x: Inputs, drop_one: bool = False) -> tuple[np.ndarray, float]:
    """float64 attention over what the documented layout reads from the packed regions, and the tolerance.
    drop_one: without the longest region's token of highest score (a plausible bug, for the self-test)."""
    H, D = c.n_head_kv, c.head_dim
    parts = [
        (
            ref.region_values(r.k, r.precision, "k", r.n_tokens, H, D),
            ref.region_values(r.v, r.precision, "v", r.n_tokens, H, D),
        )
        for r in x.regions
    ]
    if drop_one:
        i = max(range(len(parts)), key=lambda j: parts[j][0].shape[1])
        k_rows = np.repeat(parts[i][0], c.group, axis=0)  # (n_head, N, D): head h reads KV head h // group
        t = int(np.argmax(np.einsum("qhd,hnd->qhn", x.q.astype(np.float64), k_rows).max(axis=(0, 1))))
        parts[i] = (np.delete(parts[i][0], t, axis=1), np.delete(parts[i][1], t, axis=1))
    tail = None
    if c.n_tail:
        tail = (x.k[:, x.n_ctx :].astype(np.float64), x.v[:, x.n_ctx :].astype(np.float64))
    out = ref.mixed_attention(
        x.q, parts, x.kq_scale, tail, None if x.mask is None else x.mask.astype(np.float64)
    )
    ks = [kk for kk, _ in parts] + ([tail[0]] if tail else [])
    vs = [vv for _, vv in parts] + ([tail[1]] if tail else [])
    tol = ref.attention_tolerance(x.q, np.concatenate(ks, axis=1), np.concatenate(vs, axis=1), x.kq_scale)
    return out, tol


def _batches(n: int) -> list[range]:
    step = -(-n // N_BATCHES)
    return [range(SEED0 + i, SEED0 + min(i + step, n)) for i in range(0, n, step)]


@pytest.mark.parametrize("seeds", _batches(N_CASES), ids=lambda r: f"seeds{r.start}-{r.stop - 1}")
def test_fuzz_attention_matches_float64_reference(seeds: range, restore_simd: None) -> None:
    failures = []
    for seed in seeds:
        c = fuzz_case(seed)
        x = build(c)
        got = run_native(c, x, c.n_threads)
        want, tol = reference(c, x)
        err = float(np.max(np.abs(got - want), initial=0.0))
        if not err <= tol:  # NaN fails too
            failures.append(f"seed {seed}: max err {err:.3g} > tol {tol:.3g}; {c}")
            continue
        # rows are computed independently of the tiling: bitwise equal for another thread count
        if not np.array_equal(run_native(c, x, 1 + c.n_threads % 3), got):
            failures.append(f"seed {seed}: result depends on the thread count; {c}")
    assert not failures, f"{len(failures)} of {len(seeds)} cases fail:\n" + "\n".join(failures[:5])


def test_fuzz_covers_the_space() -> None:
    """The generator reaches every corner the fuzz test claims (so a narrowed generator is noticed)."""
    cases = [fuzz_case(s) for s in range(1000)]
    assert {c.head_dim for c in cases} == set(range(32, 257, 32))
    assert {c.group for c in cases} == {1, 2, 4, 8}
    assert {c.n_head_kv for c in cases} == {1, 2, 3, 4}
    assert {c.n_q for c in cases} == {1, 2, 3, 4, 5}
    assert {c.n_threads for c in cases} == {1, 2, 3}
    assert {c.mask for c in cases} == {"none", "f32", "f16"}
    assert {c.v_transposed for c in cases} == {False, True}
    assert min(c.chunk_size for c in cases) == 1 and max(c.chunk_size for c in cases) == 64
    assert any(c.n_chunks == 0 for c in cases) and any(c.n_tail == 0 for c in cases)
    assert any(sum(w == 0 for w in c.weights) == 2 for c in cases)  # one precision only
    assert max(c.n_chunks * c.chunk_size for c in cases) >= 1024


def test_fuzz_detects_a_dropped_token(restore_simd: None) -> None:
    """The comparison can fail: one context token missing exceeds the tolerance in nearly every case."""
    checked = detected = 0
    for seed in range(SEED0, SEED0 + 60):
        c = fuzz_case(seed)
        x = build(c)
        if max(r.n_tokens for r in x.regions) < 2:
            continue
        got = run_native(c, x, c.n_threads)
        wrong, tol = reference(c, x, drop_one=True)
        checked += 1
        detected += bool(np.max(np.abs(got - wrong)) > tol)
    assert checked >= 40
    assert detected >= 0.9 * checked, f"only {detected} of {checked} dropped tokens exceed the tolerance"


# --- pack / quantize round trip ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PackCase:
    seed: int
    precision: str
    part: str
    n_head_kv: int
    head_dim: int
    n_cells: int
    n_tokens: int
    data: str  # gauss | outliers | constant | tiny | huge | offset
    transposed: bool
    n_threads: int


def pack_case(seed: int) -> PackCase:
    rng = np.random.default_rng([0x9AC4, seed])
    n_cells = int(rng.integers(1, 300))
    return PackCase(
        seed=seed,
        precision=str(rng.choice(PRECISIONS)),
        part=str(rng.choice(["k", "v"])),
        n_head_kv=int(rng.integers(1, 5)),
        head_dim=32 * int(rng.integers(1, 9)),
        n_cells=n_cells,
        n_tokens=int(rng.integers(0, 2 * n_cells)),
        data=str(rng.choice(["gauss", "outliers", "constant", "tiny", "huge", "offset"])),
        transposed=bool(rng.random() < 0.5),
        n_threads=int(rng.integers(1, 4)),
    )


def pack_source(c: PackCase) -> np.ndarray:
    rng = np.random.default_rng([0x50C, c.seed])
    shape = (c.n_head_kv, c.n_cells, c.head_dim)
    x = rng.standard_normal(shape)
    if c.data == "outliers":
        x *= np.where(rng.random(c.head_dim) < 0.1, 30.0, 1.0)
    elif c.data == "constant":
        x = np.round(x[:, :1, :1] * 4) * np.ones(shape)  # constant groups: exact after the round trip
    elif c.data == "tiny":
        x *= 1e-6  # fp16 subnormals: scale and min are subnormal too
    elif c.data == "huge":
        x = np.clip(x * 20000.0, -65504.0, 65504.0)  # ranges up to fp16's largest finite values
    elif c.data == "offset":
        x = x * 0.01 + 300.0  # small spread far from zero: the min carries the value
    src = x.astype(np.float16)
    if c.transposed:
        src = np.ascontiguousarray(src.transpose(0, 2, 1)).transpose(0, 2, 1)
    return src


def _scale_per_element(buf: np.ndarray, c: PackCase) -> tuple[np.ndarray, np.ndarray]:
    """Documented (layout-read) values and per-element scale (H, N, D) of a packed quantized region."""
    codes, scale, mn = ref.parse_region(buf, c.precision, c.part, c.n_tokens, c.n_head_kv, c.head_dim)
    assert codes.max(initial=0) <= (1 << ref.BITS[c.precision]) - 1
    values = ref.dequantize(codes, scale, mn, c.part, c.n_tokens)
    H, D, N = c.n_head_kv, c.head_dim, c.n_tokens
    if c.part == "k":  # scale (H, nb, D): one per channel per 32 tokens
        full = np.repeat(scale, 32, axis=1)
    else:  # scale (H, nb, 32 tokens, D/32): one per token per 32 channels
        full = np.repeat(scale.reshape(H, -1, D // 32), 32, axis=2)
    return values, full[:, :N].reshape(H, N, D)


@pytest.mark.parametrize("seeds", _batches(N_CASES), ids=lambda r: f"seeds{r.start}-{r.stop - 1}")
def test_fuzz_pack_round_trip_within_half_a_step(seeds: range) -> None:
    failures = []
    for seed in seeds:
        c = pack_case(seed)
        src = pack_source(c)
        rng = np.random.default_rng([0xCE11, seed])
        cells = rng.integers(0, c.n_cells, size=c.n_tokens)  # repeats allowed
        buf = native_ops.pack_region(c.precision, c.part, src, cells, n_threads=c.n_threads)
        x = src[:, cells].astype(np.float64)
        native = native_ops.dequant_region(c.precision, c.part, buf, c.n_tokens, c.n_head_kv, c.head_dim)
        if c.precision == "f16":
            if not np.array_equal(native.astype(np.float16).view(np.uint16), src[:, cells].view(np.uint16)):
                failures.append(f"seed {seed}: F16 region is not an exact copy; {c}")
            continue
        documented, scale = _scale_per_element(buf, c)
        if not np.allclose(
            native, documented, rtol=0, atol=4 * U32 * (np.abs(documented).max(initial=0) + 1)
        ):
            failures.append(f"seed {seed}: dequant differs from the documented layout; {c}")
            continue
        err = np.abs(native - x)
        bound = scale / 2 + 4 * U32 * (np.abs(x) + np.abs(documented) + 1.0)
        if not np.all(err <= bound):
            worst = np.unravel_index(np.argmax(err - bound), err.shape)
            failures.append(
                f"seed {seed}: |err| {err[worst]:.4g} > scale/2 {scale[worst] / 2:.4g} at {worst}; {c}"
            )
        if c.data == "constant" and np.any(err):
            failures.append(f"seed {seed}: constant groups are not exact; {c}")
    assert not failures, f"{len(failures)} of {len(seeds)} cases fail:\n" + "\n".join(failures[:5])
