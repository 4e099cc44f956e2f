"""float64 numpy reference of the KV region formats (native/README.md) and of attention.

Written from the documented byte layout only, so the tests check the native code against the document.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32  # tokens per K/V block of a quantized region; channels per V group
BITS = {"q4": 4, "q2": 2}


def fp16_round_down(x: np.ndarray) -> np.ndarray:
    """Largest float16 <= x, as float64."""
    h = np.asarray(x, dtype=np.float64).astype(np.float16)
    over = h.astype(np.float64) > x
    h[over] = np.nextafter(h[over], np.float16(-np.inf))
    return h.astype(np.float64)


def fp16_round_up(x: np.ndarray) -> np.ndarray:
    """Smallest float16 >= x, as float64."""
    h = np.asarray(x, dtype=np.float64).astype(np.float16)
    under = h.astype(np.float64) < x
    h[under] = np.nextafter(h[under], np.float16(np.inf))
    return h.astype(np.float64)


def quantize_groups(x: np.ndarray, valid: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric quantization over the last axis (a group of 32 elements, `valid` marks real ones).

    min = largest fp16 <= group min, scale = smallest fp16 >= (max - min) / qmax,
    code = floor(clip((x - min) / scale, 0, qmax) + 0.5); padding gets code 0, empty groups scale = min = 0.
    Returns (codes, scale, min) with scale/min shaped like x[..., 0]."""
    qmax = (1 << bits) - 1
    any_valid = valid.any(axis=-1)
    mn = np.where(valid, x, np.inf).min(axis=-1)
    mx = np.where(valid, x, -np.inf).max(axis=-1)
    mn = np.where(any_valid, mn, 0.0)
    mx = np.where(any_valid, mx, 0.0)
    m = fp16_round_down(mn)
    s = fp16_round_up((mx - m) / qmax)
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    v = np.clip((x - m[..., None]) * inv[..., None], 0, qmax)
    codes = np.where(valid, np.floor(v + 0.5), 0).astype(np.uint8)
    return codes, s, m


def quantize_region(x: np.ndarray, precision: str, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: (H, N, D) values of fp16 sources. Returns codes, scale, min in logical order:
    K: codes (H, nb, D, 32), scale/min (H, nb, D);
    V: codes (H, nb, 32, D//32, 32), scale/min (H, nb, 32, D//32)."""
    H, N, D = x.shape
    nb = -(-N // BLOCK)
    xp = np.zeros((H, nb * BLOCK, D))
    xp[:, :N] = x
    valid_tok = np.arange(nb * BLOCK) < N
    if part == "k":
        g = xp.reshape(H, nb, BLOCK, D).transpose(0, 1, 3, 2)  # (H, nb, D, 32 tokens)
        valid = np.broadcast_to(valid_tok.reshape(nb, 1, BLOCK), g.shape)
    else:
        g = xp.reshape(H, nb, BLOCK, D // BLOCK, BLOCK)  # (H, nb, token, group, 32 channels)
        valid = np.broadcast_to(valid_tok.reshape(nb, BLOCK, 1, 1), g.shape)
    return quantize_groups(g, valid, BITS[precision])


def dequantize(codes: np.ndarray, scale: np.ndarray, mn: np.ndarray, part: str, n_tokens: int) -> np.ndarray:
    """Logical codes/scale/min (as from quantize_region or parse_region) -> float64 (H, N, D)."""
    vals = mn[..., None] + scale[..., None] * codes
    if part == "k":
        H, nb, D, _ = vals.shape
        full = vals.transpose(0, 1, 3, 2).reshape(H, nb * BLOCK, D)
    else:
        H, nb, _, G, _ = vals.shape
        full = vals.reshape(H, nb * BLOCK, G * BLOCK)
    return full[:, :n_tokens]


def _unpack32(b: np.ndarray, bits: int) -> np.ndarray:
    """Packed code bytes (..., 16 or 8) -> codes (..., 32): Q4 byte j = e[j] | e[j+16] << 4,
    Q2 byte j = e[j] | e[j+8] << 2 | e[j+16] << 4 | e[j+24] << 6."""
    if bits == 4:
        return np.concatenate([b & 0x0F, b >> 4], axis=-1)
    return np.concatenate([(b >> (2 * k)) & 0x03 for k in range(4)], axis=-1)


def parse_region(
    buf: np.ndarray, precision: str, part: str, n_tokens: int, n_head_kv: int, head_dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads a packed quantized region per native/README.md. Returns logical (codes, scale, min)."""
    bits = BITS[precision]
    H, D = n_head_kv, head_dim
    nb = -(-n_tokens // BLOCK)
    cb = BLOCK * bits // 8
    block_bytes = 4 * D + D * cb  # = D * (4 + 4 * bits): 20*D for Q4, 12*D for Q2
    blocks = np.asarray(buf, dtype=np.uint8)[: H * nb * block_bytes].reshape(H, nb, block_bytes)
    sm = blocks[..., : 4 * D].copy().view(np.float16).astype(np.float64)  # (H, nb, 2*D)
    scale, mn = sm[..., :D], sm[..., D:]
    codes_b = blocks[..., 4 * D :]
    if part == "k":
        codes = _unpack32(codes_b.reshape(H, nb, D, cb), bits)  # (H, nb, D, 32 tokens)
        return codes, scale, mn
    G = D // BLOCK
    codes = _unpack32(codes_b.reshape(H, nb, BLOCK, G, cb), bits)  # (H, nb, token, group, 32 channels)
    return codes, scale.reshape(H, nb, BLOCK, G), mn.reshape(H, nb, BLOCK, G)


def region_values(
    buf: np.ndarray, precision: str, part: str, n_tokens: int, n_head_kv: int, head_dim: int
) -> np.ndarray:
    """Packed region (any precision) -> float64 (H, N, D), read per the documented layout."""
    if precision == "f16":
        n = n_head_kv * n_tokens * head_dim
        raw = np.asarray(buf, dtype=np.uint8)[: 2 * n].copy().view(np.float16)
        return raw.astype(np.float64).reshape(n_head_kv, n_tokens, head_dim)
    codes, scale, mn = parse_region(buf, precision, part, n_tokens, n_head_kv, head_dim)
    return dequantize(codes, scale, mn, part, n_tokens)


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, kq_scale: float, mask: np.ndarray | None = None
) -> np.ndarray:
    """softmax(kq_scale * q.k + mask) . v in float64 with GQA.

    q (n_q, n_head, D); k, v (n_head_kv, N, D); mask (n_q, N) additive or None. Query head h uses KV head
    h // (n_head // n_head_kv). Rows that see no token are 0."""
    q = q.astype(np.float64)
    n_q, n_head, _ = q.shape
    group = n_head // k.shape[0]
    kk = np.repeat(k.astype(np.float64), group, axis=0)
    vv = np.repeat(v.astype(np.float64), group, axis=0)
    s = np.einsum("qhd,hnd->qhn", q, kk) * kq_scale
    if mask is not None:
        s = s + mask.astype(np.float64)[:, None, :]
    if s.shape[-1] == 0:
        return np.zeros_like(q)
    m = s.max(axis=-1, keepdims=True)
    seen = np.isfinite(m)
    p = np.exp(s - np.where(seen, m, 0.0))
    den = p.sum(axis=-1, keepdims=True)
    out = np.einsum("qhn,hnd->qhd", p, vv) / np.where(seen, den, 1.0)
    return np.where(seen, out, 0.0)


def mixed_attention(
    q: np.ndarray,
    parts: list[tuple[np.ndarray, np.ndarray]],
    kq_scale: float,
    tail: tuple[np.ndarray, np.ndarray] | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Attention over dequantized regions (visible to all query tokens) + a tail with its mask."""
    ks = [k for k, _ in parts]
    vs = [v for _, v in parts]
    n_q = q.shape[0]
    n_regions = sum(k.shape[1] for k in ks)
    masks = [np.zeros((n_q, n_regions))]
    if tail is not None:
        ks.append(tail[0])
        vs.append(tail[1])
        masks.append(np.zeros((n_q, tail[0].shape[1])) if mask is None else mask.astype(np.float64))
    k = np.concatenate([x.astype(np.float64) for x in ks], axis=1)
    v = np.concatenate([x.astype(np.float64) for x in vs], axis=1)
    return attention(q, k, v, kq_scale, np.concatenate(masks, axis=1))


def attention_tolerance(q: np.ndarray, k: np.ndarray, v: np.ndarray, kq_scale: float) -> float:
    """Allowed max |native - float64| of fp32 attention over exactly these K/V values (all tokens, masked
    ones too): ``16 u max|V| (2 S + sqrt(N + 4) + 4)``, u = 2^-24, S = kq_scale * max over (row, token) of
    sum_d |q_d k_d|. Derivation in tests/test_attn_mixed_regions.py; 0 when there is no token.

    q (n_q, n_head, D); k, v (n_head_kv, N, D) with query head h on KV head h // (n_head // n_head_kv)."""
    n_q, n_head, head_dim = q.shape
    n_head_kv, n, _ = k.shape
    if n == 0:
        return 0.0
    qa = np.abs(q.astype(np.float64)).reshape(n_q, n_head_kv, n_head // n_head_kv, head_dim)
    s_abs = kq_scale * np.einsum("qhgd,hnd->qhgn", qa, np.abs(k.astype(np.float64))).max()
    u32 = 2.0**-24
    return float(16 * u32 * np.abs(v).max() * (2 * s_abs + np.sqrt(n + 4) + 4))
