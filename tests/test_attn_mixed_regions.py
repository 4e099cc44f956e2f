"""Mixed-region attention (CPU) against float64 attention over the dequantized regions + tail.

Tolerance. The native op runs in fp32 (u = 2^-24) over exactly the values the float64 reference reads from
the packed bytes, so the only differences are rounding. With S = kq_scale * max over (row, token) of
sum_d |q_d k_d| (the largest partial sum a score can have), a score is off by a small multiple of u*S, which
shifts every probability by the same relative amount and the output row (an average of V rows) by that times
2*max|V|; summing N weighted rows adds ~sqrt(N)*u*max|V| (random-walk growth of rounding errors). So

    tol = 16 * u * max|V| * (2*S + sqrt(N + 4) + 4)

with a safety factor of 16. The rigorous worst case (gamma(D)*S instead of u*S) is 100-1000x larger than
any error we measure and would hide real bugs; measured errors stay below 0.1*tol (README.md), while dropping
one token or mapping a query head to the wrong KV head exceeds tol by >20x (test_reference_detects_*).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import reference_attention as ref

from cocktail_gguf import native_ops

ORDER = ("q2", "q4", "f16")


@dataclass
class Case:
    head_dim: int
    n_head_kv: int
    group: int  # query heads per KV head
    chunk_size: int
    n_ctx: int
    plan: str  # random | all_f16 | all_q4 | all_q2
    n_tail: int
    n_q: int
    v_transposed: bool
    mask_f16: bool
    q_gain: float
    n_threads: int
    seed: int


@dataclass
class Built:
    q: np.ndarray
    k: np.ndarray  # (H, n_cells, D) fp16, any strides
    v: np.ndarray
    chunks: dict[str, list[np.ndarray]]  # per precision, each chunk's cells in plan order
    mask: np.ndarray | None
    kq_scale: float


def _build(c: Case) -> Built:
    rng = np.random.default_rng(c.seed)
    H, D = c.n_head_kv, c.head_dim
    n_cells = c.n_ctx + c.n_tail
    k = rng.standard_normal((H, n_cells, D)) * np.where(rng.random(D) < 0.08, 8.0, 1.0)
    k = k.astype(np.float16)
    v64 = rng.standard_normal((H, n_cells, D)) * 2.0 + 0.5
    if c.v_transposed:  # llama.cpp's V without flash attention: [n_cells, head_dim, n_head_kv]
        v = np.ascontiguousarray(v64.astype(np.float16).transpose(0, 2, 1)).transpose(0, 2, 1)
    else:
        v = v64.astype(np.float16)
    # q as a strided view (heads every other slot) to exercise the strides
    q_store = (rng.standard_normal((c.n_q, 2 * H * c.group, D)) * c.q_gain).astype(np.float32)
    q = q_store[:, ::2, :]

    chunks: dict[str, list[np.ndarray]] = {p: [] for p in ORDER}
    for start in range(0, c.n_ctx, c.chunk_size):
        cells = np.arange(start, min(start + c.chunk_size, c.n_ctx))
        if len(cells) < c.chunk_size:
            prec = "f16"  # the remainder that does not fill a chunk stays FP16
        elif c.plan == "random":
            prec = ORDER[rng.integers(3)]
        else:
            prec = c.plan.removeprefix("all_")
        chunks[prec].append(cells)

    mask = None
    if c.n_tail:
        # query tokens are the last n_q tail tokens (causal), plus random holes
        i = np.arange(c.n_q)[:, None]
        j = np.arange(c.n_tail)[None, :]
        visible = j <= c.n_tail - c.n_q + i
        visible &= rng.random((c.n_q, c.n_tail)) > 0.25
        m = np.where(visible, 0.0, -np.inf)
        mask = m.astype(np.float16 if c.mask_f16 else np.float32)
    return Built(q, k, v, chunks, mask, 1.0 / np.sqrt(D))


def _regions(b: Built, c: Case, permute: np.random.Generator | None) -> list[native_ops.PackedRegion]:
    out = []
    for prec in ORDER:
        chunks = list(b.chunks[prec])
        if permute is not None:
            chunks = [chunks[i] for i in permute.permutation(len(chunks))]
        cells = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        out.append(native_ops.pack_kv_region(prec, b.k, b.v, cells, n_threads=2))
    return out


def _run(b: Built, c: Case, regions: list[native_ops.PackedRegion], n_threads: int) -> np.ndarray:
    tail = {}
    if c.n_tail:
        tail = {"tail_k": b.k[:, c.n_ctx :], "tail_v": b.v[:, c.n_ctx :], "mask": b.mask}
    return native_ops.attn_mixed_regions(
        b.q, regions, n_head_kv=c.n_head_kv, kq_scale=b.kq_scale, n_threads=n_threads, **tail
    )


def _reference(b: Built, c: Case, regions: list[native_ops.PackedRegion]) -> tuple[np.ndarray, float]:
    """float64 attention over the regions as the documented layout reads them, and the tolerance."""
    parts = [
        (
            ref.region_values(r.k, r.precision, "k", r.n_tokens, c.n_head_kv, c.head_dim),
            ref.region_values(r.v, r.precision, "v", r.n_tokens, c.n_head_kv, c.head_dim),
        )
        for r in regions
    ]
    tail = None
    if c.n_tail:
        tail = (b.k[:, c.n_ctx :].astype(np.float64), b.v[:, c.n_ctx :].astype(np.float64))
    mask = None if b.mask is None else b.mask.astype(np.float64)
    out = ref.mixed_attention(b.q, parts, b.kq_scale, tail, mask)

    ks = [k for k, _ in parts] + ([tail[0]] if tail else [])
    vs = [v for _, v in parts] + ([tail[1]] if tail else [])
    tol = ref.attention_tolerance(b.q, np.concatenate(ks, axis=1), np.concatenate(vs, axis=1), b.kq_scale)
    return out, tol


def _random_case(seed: int) -> Case:
    rng = np.random.default_rng(1000 + seed)
    plan = ["random", "random", "random", "all_f16", "all_q4", "all_q2"][rng.integers(6)]
    n_q = int(rng.choice([1, 1, 2, 5]))
    n_tail = int(rng.choice([0, n_q, n_q + 7, n_q + 40]))
    chunk_size = int(rng.choice([1, 7, 16, 32, 64]))
    n_chunks = int(rng.integers(0, 12)) if chunk_size > 1 else int(rng.integers(0, 200))
    n_ctx = chunk_size * n_chunks + int(rng.integers(0, chunk_size))
    return Case(
        head_dim=int(rng.choice([32, 64, 128, 256])),
        n_head_kv=int(rng.choice([1, 2, 3])),
        group=int(rng.choice([1, 4, 8])),
        chunk_size=chunk_size,
        n_ctx=n_ctx,
        plan=plan,
        n_tail=n_tail,
        n_q=n_q,
        v_transposed=bool(rng.random() < 0.3),
        mask_f16=bool(rng.random() < 0.3),
        q_gain=float(rng.choice([1.0, 4.0])),
        n_threads=int(rng.choice([1, 2, 3])),
        seed=seed,
    )


CASES = [_random_case(i) for i in range(36)]


@pytest.fixture
def kernels(request: pytest.FixtureRequest) -> Iterator[str]:
    """Selects the CPU kernel variant for one test ("avx2" skips on CPUs without it) and restores AVX2."""
    name: str = request.param
    if name == "avx2" and not native_ops.cpu_simd(1):
        pytest.skip("no AVX2/FMA/F16C on this CPU")
    native_ops.cpu_simd(1 if name == "avx2" else 0)
    yield name
    native_ops.cpu_simd(1)


# every case on the AVX2 kernels, every third one also on the portable scalar kernels
RUNS = [(c, "avx2") for c in CASES] + [(c, "scalar") for c in CASES if c.seed % 3 == 0]


RUN_IDS = [f"{k}-case{c.seed}" for c, k in RUNS]


@pytest.mark.parametrize(("case", "kernels"), RUNS, ids=RUN_IDS, indirect=["kernels"])
def test_matches_float64_reference_in_any_chunk_order(case: Case, kernels: str) -> None:
    b = _build(case)
    regions = _regions(b, case, None)
    got = _run(b, case, regions, case.n_threads)
    want, tol = _reference(b, case, regions)
    assert np.max(np.abs(got - want), initial=0.0) <= tol

    # same rows, any thread count: the partition changes, each row's arithmetic does not
    np.testing.assert_array_equal(_run(b, case, regions, 1), got)

    # chunks reordered inside each region: still equal to attention over what is stored
    permuted = _regions(b, case, np.random.default_rng(case.seed))
    got_p = _run(b, case, permuted, case.n_threads)
    want_p, tol_p = _reference(b, case, permuted)
    assert np.max(np.abs(got_p - want_p), initial=0.0) <= tol_p
    # ... and to the unpermuted result when reordering leaves the stored values alone (whole 32-token blocks)
    if case.chunk_size % 32 == 0 or case.plan == "all_f16":
        assert np.max(np.abs(got_p - got), initial=0.0) <= tol + tol_p


def test_regions_in_any_list_order_and_empty_ones() -> None:
    c = Case(128, 2, 4, 32, 300, "random", 9, 3, False, False, 1.0, 2, seed=77)
    b = _build(c)
    regions = _regions(b, c, None)
    base = _run(b, c, regions, 2)
    empty = native_ops.PackedRegion("q4", 0, np.zeros(0, np.uint8), np.zeros(0, np.uint8))
    shuffled = [regions[2], empty, regions[0], regions[1], empty]
    _, tol = _reference(b, c, regions)
    assert np.max(np.abs(_run(b, c, shuffled, 2) - base)) <= 2 * tol


def test_rows_that_see_nothing_are_zero() -> None:
    c = Case(64, 1, 4, 32, 0, "random", 6, 2, False, False, 1.0, 1, seed=5)
    b = _build(c)
    b.mask = np.zeros((2, 6), dtype=np.float32)
    b.mask[0, :] = -np.inf
    got = _run(b, c, [], 1)
    want, tol = _reference(b, c, [])
    assert np.all(got[0] == 0)
    assert np.max(np.abs(got - want)) <= tol
    nothing = native_ops.attn_mixed_regions(b.q, [], n_head_kv=1, kq_scale=1.0)
    assert np.all(nothing == 0)


def test_many_rows_per_kv_head_tile_and_peaky_softmax() -> None:
    # 7 tokens x 8 heads = 56 rows on one KV head: several 16-row tiles; large q makes the online max move
    c = Case(128, 1, 8, 16, 500, "random", 20, 7, True, True, 12.0, 3, seed=8)
    b = _build(c)
    regions = _regions(b, c, None)
    want, tol = _reference(b, c, regions)
    for n_threads in (1, 2, 5):
        assert np.max(np.abs(_run(b, c, regions, n_threads) - want)) <= tol


def test_reference_detects_a_dropped_token_and_a_wrong_head_mapping() -> None:
    """The comparison can fail: small, plausible bugs exceed the tolerance by far."""
    c = Case(128, 2, 4, 32, 256, "random", 5, 1, False, False, 1.0, 1, seed=3)
    b = _build(c)
    regions = _regions(b, c, None)
    got = _run(b, c, regions, 1)
    want, tol = _reference(b, c, regions)
    assert np.max(np.abs(got - want)) <= tol

    longest = max(range(3), key=lambda i: regions[i].n_tokens)
    r = regions[longest]
    parts = []
    for i, reg in enumerate(regions):
        kk = ref.region_values(reg.k, reg.precision, "k", reg.n_tokens, 2, 128)
        vv = ref.region_values(reg.v, reg.precision, "v", reg.n_tokens, 2, 128)
        if i == longest:
            kk, vv = kk[:, 1:], vv[:, 1:]
        parts.append((kk, vv))
    tail = (b.k[:, 256:].astype(np.float64), b.v[:, 256:].astype(np.float64))
    dropped = ref.mixed_attention(b.q, parts, b.kq_scale, tail, b.mask)
    assert r.n_tokens > 1
    assert np.max(np.abs(got - dropped)) > 20 * tol

    # query head h must read KV head h // group, not h % n_head_kv
    q_swapped = b.q[:, [0, 4, 1, 5, 2, 6, 3, 7], :]
    swapped = native_ops.attn_mixed_regions(
        np.ascontiguousarray(q_swapped),
        regions,
        n_head_kv=2,
        kq_scale=b.kq_scale,
        tail_k=b.k[:, 256:],
        tail_v=b.v[:, 256:],
        mask=b.mask,
    )
    # slots 0, 2, 5, 7 hold heads 0, 1, 6, 7, which keep their KV head; slots 1, 3, 4, 6 get the other one
    assert np.max(np.abs(swapped[:, [0, 2, 5, 7], :] - want[:, [0, 1, 6, 7], :])) <= tol
    assert np.max(np.abs(swapped[:, [1, 3, 4, 6], :] - want[:, [4, 5, 2, 3], :])) > 20 * tol


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"head_dim": 48}, "head_dim = 48"),
        ({"n_head": 6}, "n_head = 6"),
        ({"precision": 7}, r"regions\[0\].precision = 7"),
        ({"n_threads": 0}, "n_threads = 0"),
    ],
)
def test_bad_arguments_are_reported(change: dict[str, int], needle: str) -> None:
    from cocktail_gguf._native import check, ffi, lib

    D = change.get("head_dim", 64)
    q = np.zeros((1, change.get("n_head", 4), D), dtype=np.float32)
    out = np.zeros_like(q)
    buf = np.zeros(4096, dtype=np.uint8)
    reg = ffi.new("struct cocktail_kv_region[]", 1)
    reg[0].precision = change.get("precision", 1)
    reg[0].n_tokens = 32
    reg[0].k = reg[0].v = ffi.cast("void *", buf.ctypes.data)
    a = ffi.new("struct cocktail_attn_args *")
    a.n_q_tokens, a.n_head, a.n_head_kv, a.head_dim, a.kq_scale = 1, q.shape[1], 4, D, 1.0
    a.q, a.q_nb_token, a.q_nb_head = ffi.cast("float *", q.ctypes.data), *q.strides[:2]
    a.out, a.out_nb_token, a.out_nb_head = ffi.cast("float *", out.ctypes.data), *out.strides[:2]
    a.regions, a.n_regions = reg, 1
    with pytest.raises(ValueError, match=needle):
        check(lib().cocktail_attn_mixed_regions(a, change.get("n_threads", 1)), "attn")
