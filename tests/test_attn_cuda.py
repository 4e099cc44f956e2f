"""Mixed-region attention on CUDA (native/cocktail_attn_cuda.cu) against the float64 reference and the CPU op,
over the CPU reference tests' random shapes and plans plus long contexts that exercise the split-K merge.

Tolerance: the float64 reference bound of test_attn_mixed_regions (the kernel is fp32 throughout, like the CPU
op; only the summation order differs). Skipped unless the library was built with CUDA and a GPU is visible.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_attn_mixed_regions as cpu
from cuda_env import needs_cuda

from cocktail_gguf import _native, native_ops


def _cuda(b: cpu.Built, c: cpu.Case, regions: list[native_ops.PackedRegion]) -> np.ndarray:
    tail = {}
    if c.n_tail:
        tail = {"tail_k": b.k[:, c.n_ctx :], "tail_v": b.v[:, c.n_ctx :], "mask": b.mask}
    return native_ops.attn_mixed_regions(
        b.q, regions, n_head_kv=c.n_head_kv, kq_scale=b.kq_scale, device="cuda", **tail
    )


def _long_case(seed: int) -> cpu.Case:
    rng = np.random.default_rng(5000 + seed)
    return cpu.Case(
        head_dim=int(rng.choice([64, 128, 256])),
        n_head_kv=int(rng.choice([1, 2, 8])),
        group=int(rng.choice([1, 4, 8])),
        chunk_size=32,
        n_ctx=int(rng.integers(2000, 9000)),
        plan="random",
        n_tail=int(rng.choice([1, 5, 33])),
        n_q=1,
        v_transposed=bool(rng.random() < 0.5),
        mask_f16=False,
        q_gain=float(rng.choice([1.0, 4.0])),
        n_threads=2,
        seed=seed,
    )


def _check(case: cpu.Case) -> None:
    """The CUDA op against the float64 reference (its bound) and the CPU op (twice the bound)."""
    b = cpu._build(case)
    regions = cpu._regions(b, case, None)
    got = _cuda(b, case, regions)
    assert np.isfinite(got).all(), "an output row was not written (poisoned NaN came back)"
    want, tol = cpu._reference(b, case, regions)
    assert np.max(np.abs(got - want), initial=0.0) <= tol
    on_cpu = cpu._run(b, case, regions, 2)
    assert np.max(np.abs(got - on_cpu), initial=0.0) <= 2 * tol


CASES = [cpu._random_case(i) for i in range(200)] + [_long_case(i) for i in range(12)]
IDS = [f"{'case' if i < 200 else 'long'}{c.seed}-ctx{c.n_ctx}" for i, c in enumerate(CASES)]


@needs_cuda
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_matches_reference_and_cpu(case: cpu.Case) -> None:
    _check(case)


@needs_cuda
@pytest.mark.parametrize("group", [2, 3, 5, 6, 12, 16])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_group_sizes(group: int, head_dim: int) -> None:
    """Query heads per KV head outside the random cases' 1 / 4 / 8: the scalar kernel's 2 heads per block,
    the tensor-core kernel's blocks of 8 heads with unused rows (5, 6) and several blocks per KV head (12,
    16), and head_dim 256, which stays on the scalar kernel whatever the group."""
    transposed = group % 2 == 1
    _check(cpu.Case(head_dim, 2, group, 32, 700, "random", 9, 2, transposed, False, 4.0, 2, seed=300 + group))


@needs_cuda
@pytest.mark.parametrize("layout", ["pairs", "rows"])
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_many_units_per_warp_with_later_maxima(
    group: int, head_dim: int, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 query tokens x 8 KV heads leave ~6 splits, so each warp runs ~8 units of 32 tokens in a row (the
    random cases give most warps one). The F16 chunks and the tail, which come after the Q2 / Q4 regions, get
    K scaled up so that they raise the running max late: the rescaling of everything accumulated before them
    (O, the sum and the V-min sums of the quantized units) is what this checks, in both GQA layouts."""
    monkeypatch.setenv("COCKTAIL_GQA_LAYOUT", layout)
    c = cpu.Case(head_dim, 8, group, 32, 6000, "random", 33, 8, False, False, 1.0, 2, seed=77 + group)
    b = cpu._build(c)
    late = np.concatenate([*b.chunks["f16"], np.arange(c.n_ctx, c.n_ctx + c.n_tail)])
    b.k[:, late] *= np.float16(3.0)
    regions = cpu._regions(b, c, None)
    got = _cuda(b, c, regions)
    want, tol = cpu._reference(b, c, regions)
    assert np.max(np.abs(got - want)) <= tol


# The random cases once more under each choice the host makes by shape (head_dim 32 to 128): one query
# head per KV head (MHA) on the scalar kernel or the tensor-core kernel's one-head variant
# (COCKTAIL_MHA_KERNEL; auto, the default, picks by the plan's F16 share); four (Llama-3, Mistral) on the
# tensor-core kernel with the heads as B's column pairs or as A's rows, the layout of larger groups
# (COCKTAIL_GQA_LAYOUT; auto: pairs).
CHOICES_BY_GROUP = {
    1: ("COCKTAIL_MHA_KERNEL", ("mma", "scalar")),
    4: ("COCKTAIL_GQA_LAYOUT", ("pairs", "rows")),
}
KERNEL_CASES = [
    (c, CHOICES_BY_GROUP[c.group][0], value, f"{i}-{value}")
    for c, i in zip(CASES, IDS, strict=True)
    if c.group in CHOICES_BY_GROUP and c.head_dim <= 128
    for value in CHOICES_BY_GROUP[c.group][1]
]


@needs_cuda
@pytest.mark.parametrize(
    ("case", "variable", "value"), [k[:3] for k in KERNEL_CASES], ids=[k[3] for k in KERNEL_CASES]
)
def test_on_each_kernel(case: cpu.Case, variable: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    _check(case)


@needs_cuda
@pytest.mark.parametrize("order", ["forward", "rotated", "zigzag"])
@pytest.mark.parametrize(
    ("group", "variable", "kernel"),
    [
        (1, "COCKTAIL_MHA_KERNEL", "mma"),
        (1, "COCKTAIL_MHA_KERNEL", "scalar"),
        (4, "COCKTAIL_GQA_LAYOUT", "pairs"),
        (4, "COCKTAIL_GQA_LAYOUT", "rows"),
    ],
)
def test_every_unit_order(
    order: str, group: int, variable: str, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COCKTAIL_UNIT_ORDER (the order in which a warp takes its units; the kernels default to forward or
    rotated) changes only the order of the sums: each order against the reference and the CPU op, with ~8
    units per warp, several regions of each precision, 8 query tokens and the tail, on each kernel."""
    monkeypatch.setenv("COCKTAIL_UNIT_ORDER", order)
    monkeypatch.setenv(variable, kernel)
    _check(cpu.Case(128, 8, group, 32, 6000, "random", 33, 8, False, False, 1.0, 2, seed=400 + group))


@needs_cuda
@pytest.mark.parametrize(
    ("variable", "value", "group"),
    [
        ("COCKTAIL_UNIT_ORDER", "sideways", 1),
        ("COCKTAIL_MHA_KERNEL", "systolic", 1),
        ("COCKTAIL_GQA_LAYOUT", "diagonal", 4),
    ],
)
def test_unknown_kernel_setting_is_named(
    variable: str, value: str, group: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    c = cpu.Case(64, 2, group, 32, 300, "random", 3, 1, False, False, 1.0, 2, seed=5)
    b = cpu._build(c)
    with pytest.raises(ValueError, match=f"{variable}={value}"):
        _cuda(b, c, cpu._regions(b, c, None))


@needs_cuda
def test_many_regions_and_rows_that_see_nothing() -> None:
    c = cpu.Case(128, 2, 4, 32, 600, "random", 9, 3, False, False, 1.0, 2, seed=91)
    b = cpu._build(c)
    regions = cpu._regions(b, c, None)
    empty = native_ops.PackedRegion("q2", 0, np.zeros(0, np.uint8), np.zeros(0, np.uint8))
    many = [empty, *regions, empty, *reversed(regions)]  # duplicates count twice, as on the CPU
    np.testing.assert_allclose(_cuda(b, c, many), cpu._run(b, c, many, 2), rtol=0, atol=1e-4)
    nothing = native_ops.attn_mixed_regions(b.q, [], n_head_kv=c.n_head_kv, kq_scale=1.0, device="cuda")
    assert not nothing.any()
    too_many = [regions[0]] * 17
    with pytest.raises(_native.NativeError, match="17 regions"):
        _cuda(b, c, too_many)


@needs_cuda
@pytest.mark.parametrize("group", [1, 4])
def test_tail_strides_and_masked_padding(group: int) -> None:
    """The tail's vector loads (16-byte K, 8-byte V) need aligned rows: a tail whose rows are head_dim + 1
    halves apart takes the scalar loads, a contiguous one the vector loads, a transposed V the strided loads;
    tail units that the mask hides wholly (llama.cpp pads its cache view) are skipped. Against the CPU op."""
    rng = np.random.default_rng(17 + group)
    d, n_kv, n_tail, n_q = 128, 2, 200, 3
    q = rng.standard_normal((n_q, n_kv * group, d)).astype(np.float32)
    wide_k = rng.standard_normal((n_kv, n_tail, d + 1)).astype(np.float16)
    wide_v = rng.standard_normal((n_kv, n_tail, d + 1)).astype(np.float16)
    mask = np.full((n_q, n_tail), -np.inf, np.float32)
    mask[0, 40:75] = 0.0  # units 0 and 3-6 hidden from row 0
    mask[1, :] = 0.0
    mask[2, 199] = 0.0  # only the last cell
    layouts = {
        "unaligned": (wide_k[..., :d], wide_v[..., :d]),
        "contiguous": (np.ascontiguousarray(wide_k[..., :d]), np.ascontiguousarray(wide_v[..., :d])),
        "v transposed": (
            np.ascontiguousarray(wide_k[..., :d]),
            np.ascontiguousarray(wide_v[..., :d].transpose(0, 2, 1)).transpose(0, 2, 1),
        ),
    }
    for name, (k, v) in layouts.items():
        args = dict(n_head_kv=n_kv, kq_scale=0.2, tail_k=k, tail_v=v, mask=mask)
        got = native_ops.attn_mixed_regions(q, [], device="cuda", **args)  # type: ignore[arg-type]
        want = native_ops.attn_mixed_regions(q, [], n_threads=2, **args)  # type: ignore[arg-type]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)


@needs_cuda
def test_bench_times_both_launch_modes() -> None:
    """The bench's two launch modes (one launch per call; the calls in one CUDA graph) time the same call."""
    c = _long_case(0)
    b = cpu._build(c)
    regions = cpu._regions(b, c, None)
    kv_bytes = sum(len(r.k) + len(r.v) for r in regions)
    tail_k, tail_v = b.k[:, c.n_ctx :], b.v[:, c.n_ctx :]
    runs = [
        native_ops.attn_cuda_bench(
            b.q,
            regions,
            n_head_kv=c.n_head_kv,
            kq_scale=b.kq_scale,
            tail_k=tail_k,
            tail_v=tail_v,
            n_iters=5,
            graph=g,
        )
        for g in (False, True)
    ]
    for r in runs:
        assert r["ms"] > 0.0 and r["copy_gbps"] > 0.0
        assert r["bytes_read"] >= kv_bytes
    assert runs[0]["bytes_read"] == runs[1]["bytes_read"]
    # the bench left the device usable: the op still matches its reference
    _check(c)


def test_bench_refuses_no_calls() -> None:
    c = cpu._random_case(0)
    b = cpu._build(c)
    with pytest.raises(ValueError, match="n_iters=0"):
        native_ops.attn_cuda_bench(b.q, [], n_head_kv=c.n_head_kv, kq_scale=1.0, n_iters=0)


@pytest.mark.skipif(bool(_native.build_info().get("cuda")), reason="CUDA build")
def test_cpu_build_refuses_cuda_with_a_message() -> None:
    c = cpu._random_case(0)
    b = cpu._build(c)
    with pytest.raises(_native.NativeError, match="built without CUDA"):
        _cuda(b, c, cpu._regions(b, c, None))
    with pytest.raises(_native.NativeError, match="built without CUDA"):
        native_ops.attn_cuda_bench(
            b.q, cpu._regions(b, c, None), n_head_kv=c.n_head_kv, kq_scale=1.0, graph=True
        )
    with pytest.raises(ValueError, match="device='tpu'"):
        native_ops.attn_mixed_regions(b.q, [], n_head_kv=c.n_head_kv, kq_scale=1.0, device="tpu")
