"""Quantized KV region formats: byte layout (against reference_attention.py), round-trip error bounds."""

from __future__ import annotations

import numpy as np
import pytest
import reference_attention as ref

from cocktail_gguf import native_ops

U32 = 2.0**-24  # float32 unit roundoff


def _source(
    rng: np.random.Generator, n_head_kv: int, n_cells: int, head_dim: int, transposed: bool
) -> np.ndarray:
    """fp16 cache (n_head_kv, n_cells, head_dim) with outlier channels (keys have them), stored contiguous per
    token (llama.cpp K) or transposed (V without flash attention): same logical array, other strides."""
    x = rng.standard_normal((n_head_kv, n_cells, head_dim))
    x *= np.where(rng.random(head_dim) < 0.08, 20.0, 1.0)
    x += rng.standard_normal((n_head_kv, 1, head_dim)) * 2.0
    x = x.astype(np.float16)
    if transposed:
        return np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)
    return x


@pytest.mark.parametrize("precision", ["f16", "q4", "q2"])
@pytest.mark.parametrize("n_tokens", [0, 1, 31, 32, 33, 100])
def test_region_bytes_follow_the_layout(precision: str, n_tokens: int) -> None:
    for head_dim in (32, 64, 128, 256):
        n_blocks = -(-n_tokens // 32)
        if precision == "f16":
            want = 3 * n_tokens * head_dim * 2
        else:
            want = 3 * n_blocks * head_dim * (20 if precision == "q4" else 12)
        for part in ("k", "v"):
            assert native_ops.region_bytes(precision, part, n_tokens, 3, head_dim) == want


@pytest.mark.parametrize("precision", ["f16", "q4", "q2"])
def test_bits_per_element_are_the_planner_constants(precision: str) -> None:
    n_tokens, n_head_kv, head_dim = 32 * 7, 2, 128
    n = native_ops.region_bytes(precision, "k", n_tokens, n_head_kv, head_dim)
    assert n * 8 / (n_tokens * n_head_kv * head_dim) == native_ops.BITS_PER_ELEMENT[precision]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((1, 0, 10, 2, 100), "head_dim 100"),
        ((1, 0, 10, 2, 0), "head_dim 0"),
        ((3, 0, 10, 2, 64), "precision 3"),
        ((1, 2, 10, 2, 64), "part 2"),
        ((1, 0, -1, 2, 64), "n_tokens -1"),
        ((1, 0, 10, 0, 64), "n_head_kv 0"),
    ],
)
def test_region_bytes_rejects_bad_arguments(args: tuple[int, ...], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        native_ops.region_bytes(*args)


def _check_quantized(
    src: np.ndarray, cells: np.ndarray, buf: np.ndarray, precision: str, part: str
) -> tuple[float, float]:
    """Asserts layout, codes and error bound of one packed region; returns (max |err|/scale, rel RMSE)."""
    n_head_kv, _, head_dim = src.shape
    n_tokens = len(cells)
    x = src[:, cells].astype(np.float64)
    qmax = (1 << ref.BITS[precision]) - 1

    # the documented byte layout, read by numpy, gives exactly what the native dequantizer returns
    native = native_ops.dequant_region(precision, part, buf, n_tokens, n_head_kv, head_dim).astype(np.float64)
    codes, scale, mn = ref.parse_region(buf, precision, part, n_tokens, n_head_kv, head_dim)
    documented = ref.dequantize(codes, scale, mn, part, n_tokens)
    span = np.abs(documented).max() + 1e-30
    np.testing.assert_allclose(native, documented, rtol=0, atol=4 * U32 * span)

    # scale/min are the documented choice: min = group min (fp16 source), scale = smallest fp16 >= range/qmax
    # (native computes range/qmax in float32, so one fp16 step of slack where that rounds across a boundary)
    rcodes, rscale, rmin = ref.quantize_region(x, precision, part)
    np.testing.assert_array_equal(mn, rmin)
    assert np.all(np.abs(scale - rscale) <= np.abs(rscale) * 2.0**-10)
    # codes: round half up of (x - min) / scale; float32 vs float64 arithmetic may differ next to a tie only
    diff = (codes != rcodes) & (scale == rscale)[..., None]
    assert diff.mean() < 1e-3, f"{diff.sum()} codes differ from the reference rounding"
    assert np.all(np.abs(codes.astype(int) - rcodes.astype(int))[diff] <= 1)
    assert codes.max() <= qmax

    # round trip: |x - x_hat| <= scale/2 (+ float32 rounding of min + scale*code)
    err = np.abs(native - x)
    scale_full = _broadcast_scale(scale, part, n_tokens)
    bound = scale_full / 2 + 4 * U32 * (np.abs(x) + np.abs(documented) + 1.0)
    assert np.all(err <= bound), f"max excess {np.max(err - bound)}"
    ratio = float(np.max(np.where(scale_full > 0, err / np.maximum(scale_full, 1e-30), 0.0)))
    rel_rmse = float(np.sqrt(np.mean(err**2) / np.mean(x**2)))
    return ratio, rel_rmse


def _broadcast_scale(scale: np.ndarray, part: str, n_tokens: int) -> np.ndarray:
    """Per-element scale (H, N, D) from the logical per-group scales."""
    if part == "k":
        H, nb, D = scale.shape
        full = np.broadcast_to(scale[:, :, None, :], (H, nb, 32, D)).reshape(H, nb * 32, D)
    else:
        H, nb, T, G = scale.shape
        full = np.broadcast_to(scale[..., None], (H, nb, T, G, 32)).reshape(H, nb * T, G * 32)
    return full[:, :n_tokens]


@pytest.mark.parametrize("precision", ["q4", "q2"])
@pytest.mark.parametrize("part", ["k", "v"])
@pytest.mark.parametrize("head_dim", [32, 64, 128, 256])
@pytest.mark.parametrize("transposed", [False, True])
def test_round_trip_within_half_a_step(precision: str, part: str, head_dim: int, transposed: bool) -> None:
    rng = np.random.default_rng([head_dim, len(precision), part == "k", transposed])
    src = _source(rng, 2, 150, head_dim, transposed)
    for n_tokens in (1, 31, 32, 33, 97):
        cells = rng.choice(150, size=n_tokens, replace=False)
        buf = native_ops.pack_region(precision, part, src, cells)
        ratio, _ = _check_quantized(src, cells, buf, precision, part)
        assert ratio <= 0.5 + 1e-3


@pytest.mark.parametrize("transposed", [False, True])
def test_f16_region_is_an_exact_copy(transposed: bool) -> None:
    rng = np.random.default_rng(5)
    src = _source(rng, 3, 80, 64, transposed)
    cells = rng.permutation(80)[:45]
    for part in ("k", "v"):
        buf = native_ops.pack_region("f16", part, src, cells)
        got = buf.view(np.float16).reshape(3, 45, 64)
        np.testing.assert_array_equal(got.view(np.uint16), src[:, cells].view(np.uint16))
        np.testing.assert_array_equal(native_ops.dequant_region("f16", part, buf, 45, 3, 64), src[:, cells])


@pytest.mark.parametrize("precision", ["q4", "q2"])
def test_padding_of_the_last_block(precision: str) -> None:
    rng = np.random.default_rng(9)
    src = _source(rng, 2, 40, 64, False)
    cells = np.arange(37)
    kb = native_ops.pack_region(precision, "k", src, cells)
    codes, _, _ = ref.parse_region(kb, precision, "k", 37, 2, 64)
    assert np.all(codes[:, 1, :, 5:] == 0)  # tokens 37..63 of block 1
    vb = native_ops.pack_region(precision, "v", src, cells)
    vcodes, vscale, vmin = ref.parse_region(vb, precision, "v", 37, 2, 64)
    assert np.all(vcodes[:, 1, 5:] == 0) and np.all(vscale[:, 1, 5:] == 0) and np.all(vmin[:, 1, 5:] == 0)


def test_constant_groups_are_exact() -> None:
    # K groups (one channel over 32 tokens) constant, then V groups (32 channels of one token) constant
    per_channel = np.broadcast_to(np.linspace(-8, 8, 32), (1, 64, 32)).astype(np.float16)
    per_token = np.broadcast_to(np.linspace(-8, 8, 64)[:, None], (1, 64, 32)).astype(np.float16)
    for precision in ("q4", "q2"):
        for part, src in (("k", per_channel), ("v", per_token)):
            buf = native_ops.pack_region(precision, part, src, np.arange(64))
            np.testing.assert_array_equal(native_ops.dequant_region(precision, part, buf, 64, 1, 32), src)


def test_pack_is_deterministic_across_threads() -> None:
    rng = np.random.default_rng(11)
    src = _source(rng, 4, 300, 128, False)
    cells = rng.permutation(300)[:250]
    for precision in ("q4", "q2", "f16"):
        for part in ("k", "v"):
            one = native_ops.pack_region(precision, part, src, cells, n_threads=1)
            three = native_ops.pack_region(precision, part, src, cells, n_threads=3)
            np.testing.assert_array_equal(one, three)


# Relative RMS error (measured values in README.md, bounds ~10 % above them). For Gaussian data min/max
# quantization gives about range/qmax/sqrt(12) with range ~ 4 sigma over 32 values: 0.077 (Q4), 0.385 (Q2).
# The "outliers" source has 8 % of channels 20x larger: harmless for K (per channel), costly for V.
REL_RMSE_BOUND = {
    ("gauss", "q4", "k"): 0.085,
    ("gauss", "q4", "v"): 0.085,
    ("gauss", "q2", "k"): 0.43,
    ("gauss", "q2", "v"): 0.43,
    ("outliers", "q4", "k"): 0.085,
    ("outliers", "q4", "v"): 0.13,
    ("outliers", "q2", "k"): 0.42,
    ("outliers", "q2", "v"): 0.66,
}


@pytest.mark.parametrize(("data", "precision", "part"), sorted(REL_RMSE_BOUND))
def test_relative_error_statistics(data: str, precision: str, part: str) -> None:
    rng = np.random.default_rng(3)
    if data == "gauss":
        src = rng.standard_normal((4, 512, 128)).astype(np.float16)
    else:
        src = _source(rng, 4, 512, 128, False)
    buf = native_ops.pack_region(precision, part, src, np.arange(512))
    _, rel_rmse = _check_quantized(src, np.arange(512), buf, precision, part)
    assert rel_rmse <= REL_RMSE_BOUND[(data, precision, part)]


def test_pack_rejects_bad_cells_and_buffers() -> None:
    src = np.zeros((1, 10, 32), dtype=np.float16)
    with pytest.raises(ValueError, match=r"cells\[2\] = 10 is outside \[0, 10\)"):
        native_ops.pack_region("q4", "k", src, [0, 1, 10])
    with pytest.raises(ValueError, match=r"cells\[0\] = -1"):
        native_ops.pack_region("q2", "v", src, [-1])
    with pytest.raises(ValueError, match="head_dim 48"):
        native_ops.pack_region("q4", "k", np.zeros((1, 10, 48), dtype=np.float16), [0])
    with pytest.raises(ValueError, match="src_size 10 is smaller"):
        native_ops.dequant_region("q4", "k", np.zeros(10, dtype=np.uint8), 32, 1, 32)
