"""Random-weight llama-architecture GGUF files, for tests (tiny shapes) and speed benchmarks (real shapes).

Weights are seeded random numbers: the files exercise every code path of a real model (GQA/MHA,
RoPE, the KV cache) without a download. Needs the `gguf` package (`pip install gguf`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LlamaShape:
    name: str
    n_embd: int
    n_head: int
    n_head_kv: int
    n_layer: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int = 4096

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


SHAPES: dict[str, LlamaShape] = {
    s.name: s
    for s in (
        LlamaShape("tiny-mha", n_embd=128, n_head=4, n_head_kv=4, n_layer=2, n_ff=256, n_vocab=512),
        LlamaShape("tiny-gqa", n_embd=256, n_head=4, n_head_kv=1, n_layer=2, n_ff=512, n_vocab=512),
        LlamaShape(
            "llama2-7b",
            n_embd=4096,
            n_head=32,
            n_head_kv=32,
            n_layer=32,
            n_ff=11008,
            n_vocab=32000,
            n_ctx_train=131072,
        ),
        LlamaShape(
            "llama3-8b",
            n_embd=4096,
            n_head=32,
            n_head_kv=8,
            n_layer=32,
            n_ff=14336,
            n_vocab=128256,
            n_ctx_train=131072,
        ),
    )
}

WEIGHT_TYPES = ("f32", "f16", "q4_0")


def _vocab(n_vocab: int) -> tuple[list[bytes], list[float], list[int]]:
    """SentencePiece-style vocabulary: 3 specials, 256 byte tokens, then word pieces of printable ASCII."""
    import gguf

    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{i:02X}>".encode() for i in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces: list[str] = []
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    for c in letters + letters.upper() + "0123456789.,;:!?'\"()-":
        pieces += ["\u2581" + c, c]
    for a in letters:
        for b in letters:
            pieces.append(a + b)
            pieces.append("\u2581" + a + b)
    for p in dict.fromkeys(pieces):
        if len(tokens) >= n_vocab:
            break
        tokens.append(p.encode())
        types.append(gguf.TokenType.NORMAL)
    while len(tokens) < n_vocab:
        tokens.append(f"<extra_{len(tokens)}>".encode())
        types.append(gguf.TokenType.USER_DEFINED)
    scores = [0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, [int(t) for t in types]


def _random_q4_0(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """Random Q4_0 bytes (fp16 scale + 16 bytes of nibbles per 32 weights): no quantizer pass needed."""
    n_blocks = rows * cols // 32
    out = np.empty((n_blocks, 18), dtype=np.uint8)
    # uniform codes 0..15 minus 8 have std ~4.6; scale so the weights have std `std`
    out[:, :2] = np.full(n_blocks, std / 4.6, dtype=np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
    return out.reshape(rows, cols // 32 * 18)


def write_random_llama(
    path: str | Path, shape: str | LlamaShape = "tiny-mha", *, seed: int = 0, weight_type: str = "f32"
) -> Path:
    """Writes a llama-architecture GGUF with seeded random weights and returns its path."""
    import gguf

    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"shape={shape!r} is not one of {', '.join(SHAPES)}")
        shape = SHAPES[shape]
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type={weight_type!r} is not one of {', '.join(WEIGHT_TYPES)}")
    path = Path(path)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"random-{shape.name}")
    w.add_context_length(shape.n_ctx_train)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        }[weight_type]
    )
    tokens, scores, types = _vocab(shape.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)

    def matrix(name: str, rows: int, cols: int) -> None:
        std = 1.0 / np.sqrt(cols)
        if weight_type == "q4_0" and cols % 32 == 0:
            data = _random_q4_0(rng, rows, cols, std)
            w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
            return
        data = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(std)
        w.add_tensor(name, data.astype(np.float16) if weight_type != "f32" else data)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    kv_dim = shape.head_dim * shape.n_head_kv
    # the embedding is read by row, keep it f32/f16 so token lookup stays exact and cheap
    emb = rng.standard_normal((shape.n_vocab, shape.n_embd), dtype=np.float32)
    w.add_tensor("token_embd.weight", emb.astype(np.float16) if weight_type != "f32" else emb)
    for i in range(shape.n_layer):
        norm(f"blk.{i}.attn_norm.weight", shape.n_embd)
        matrix(f"blk.{i}.attn_q.weight", shape.n_embd, shape.n_embd)
        matrix(f"blk.{i}.attn_k.weight", kv_dim, shape.n_embd)
        matrix(f"blk.{i}.attn_v.weight", kv_dim, shape.n_embd)
        matrix(f"blk.{i}.attn_output.weight", shape.n_embd, shape.n_embd)
        norm(f"blk.{i}.ffn_norm.weight", shape.n_embd)
        matrix(f"blk.{i}.ffn_gate.weight", shape.n_ff, shape.n_embd)
        matrix(f"blk.{i}.ffn_up.weight", shape.n_ff, shape.n_embd)
        matrix(f"blk.{i}.ffn_down.weight", shape.n_embd, shape.n_ff)
    norm("output_norm.weight", shape.n_embd)
    matrix("output.weight", shape.n_vocab, shape.n_embd)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
