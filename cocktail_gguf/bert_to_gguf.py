"""Converts a local BERT-family encoder folder (sentence-transformers or plain Hugging Face, e.g. MiniLM,
Contriever) into a llama.cpp "bert" GGUF, so the planner can embed through our own library without torch.

What is written (llama.cpp's BERT loader, src/models/bert.cpp, reads it):
- HF tensor names mapped to llama.cpp's (`token_embd`, `position_embd`, `token_types`,
  `token_embd_norm`, `blk.N.attn_q|k|v|output|output_norm`, `blk.N.ffn_up|down`,
  `blk.N.layer_output_norm`); the pooler / MLM heads are dropped;
- the WordPiece vocabulary in llama.cpp's "phantom space" form (word starts get U+2581, "##"
  continuations lose the "##", [SPECIAL] tokens stay as they are), tokenizer model "bert";
- pooling type from the sentence-transformers Pooling module (mean or CLS; a plain HF folder gets
  mean, as Contriever needs), and `cocktail.encoder.normalize` / `cocktail.encoder.max_seq_length`
  so `GGUFEncoder` normalises and truncates as sentence-transformers does.
Weights are read from model.safetensors with our own small reader (no torch); a folder with only
pytorch_model.bin needs torch.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OUTTYPES = ("f32", "f16", "q8_0")
KEY_NORMALIZE = "cocktail.encoder.normalize"
KEY_MAX_SEQ_LENGTH = "cocktail.encoder.max_seq_length"
KEY_SOURCE = "cocktail.encoder.source"

_SAFETENSORS_DTYPES: dict[str, Any] = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": "bf16",
    "I64": np.int64,
    "I32": np.int32,
}

_GLOBAL_NAMES = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.LayerNorm": "token_embd_norm",
}
_LAYER_NAMES = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_SKIPPED = re.compile(r"^(embeddings\.position_ids|pooler\..*|cls\..*)$")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$")
_GLOBAL = re.compile(r"^(.+)\.(weight|bias|gamma|beta)$")
# Tensors llama.cpp adds or reads as F32 whatever the output type (like convert_hf_to_gguf.py).
_ALWAYS_F32 = ("position_embd.weight", "token_types.weight")


@dataclass(frozen=True)
class EncoderConfig:
    """What the converter learns from the folder besides the weights."""

    n_layer: int
    n_embd: int
    n_head: int
    n_ff: int
    n_ctx_train: int
    n_token_types: int
    layer_norm_eps: float
    pooling: str  # "mean" | "cls"
    normalize: bool
    max_seq_length: int


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays (BF16 widened to F32)."""
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(
                f"{path}: tensor {name!r} has dtype {info['dtype']!r}, which this reader does not handle"
            )
        start, end = info["data_offsets"]
        raw = data[base + start : base + end]
        if dtype == "bf16":
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=dtype)
        out[name] = arr.reshape(info["shape"])
    return out


def _read_weights(model_dir: Path) -> dict[str, np.ndarray]:
    st_file = model_dir / "model.safetensors"
    if st_file.exists():
        return read_safetensors(st_file)
    bin_file = model_dir / "pytorch_model.bin"
    if bin_file.exists():
        try:
            import torch
        except ImportError as exc:
            raise ImportError(
                f"{bin_file} is a torch checkpoint: reading it needs torch (`pip install torch`)"
            ) from exc
        state = torch.load(str(bin_file), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
    raise ValueError(f"encoder folder {str(model_dir)!r} has no model.safetensors or pytorch_model.bin")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _st_pooling_and_normalize(model_dir: Path) -> tuple[str, bool]:
    """Pooling ("mean" | "cls") and whether a Normalize module follows, from sentence-transformers'
    modules.json; a plain HF folder (no modules.json) pools by mean without normalising (Contriever)."""
    modules = _read_json(model_dir / "modules.json")
    if modules is None:
        return "mean", False
    pooling = None
    normalize = False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer":
            continue
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            cfg = _read_json(model_dir / module.get("path", "") / "config.json") or {}
            mode = cfg.get("pooling_mode")
            if isinstance(mode, list) and len(mode) == 1:
                mode = mode[0]
            if mode is None:
                flags = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
                mode = (
                    {
                        "pooling_mode_mean_tokens": "mean",
                        "pooling_mode_cls_token": "cls",
                    }.get(flags[0], flags[0])
                    if len(flags) == 1
                    else flags
                )
            if mode not in ("mean", "cls"):
                raise ValueError(f"pooling mode {mode!r} of {model_dir} is not supported (mean or cls only)")
            pooling = str(mode)
        else:
            raise ValueError(
                f"sentence-transformers module {module.get('type')!r} of {model_dir} is not supported"
            )
    return pooling or "mean", normalize


def read_encoder_config(model_dir: str | Path) -> EncoderConfig:
    path = Path(model_dir)
    cfg = _read_json(path / "config.json")
    if cfg is None:
        raise ValueError(f"encoder folder {str(path)!r} has no config.json")
    if cfg.get("model_type") != "bert":
        raise ValueError(f"model_type={cfg.get('model_type')!r} in {path}/config.json: only 'bert' converts")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"position_embedding_type={cfg['position_embedding_type']!r}: only 'absolute' converts"
        )
    tok_cfg = _read_json(path / "tokenizer_config.json") or {}
    if tok_cfg.get("do_lower_case", True) is False:
        raise ValueError(
            f"{path} has a cased vocabulary (do_lower_case=false); llama.cpp's WordPiece lower-cases"
        )
    pooling, normalize = _st_pooling_and_normalize(path)
    st_cfg = _read_json(path / "sentence_bert_config.json") or {}
    n_ctx = int(cfg["max_position_embeddings"])
    return EncoderConfig(
        n_layer=int(cfg["num_hidden_layers"]),
        n_embd=int(cfg["hidden_size"]),
        n_head=int(cfg["num_attention_heads"]),
        n_ff=int(cfg["intermediate_size"]),
        n_ctx_train=n_ctx,
        n_token_types=int(cfg.get("type_vocab_size", 2)),
        layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
        pooling=pooling,
        normalize=normalize,
        max_seq_length=min(int(st_cfg.get("max_seq_length", n_ctx)), n_ctx),
    )


def gguf_tensor_name(hf_name: str) -> str | None:
    """llama.cpp's name for an HF BERT tensor; None for tensors the BERT graph does not use."""
    name = hf_name.removeprefix("bert.")
    if _SKIPPED.match(name):
        return None
    suffix_map = {"gamma": "weight", "beta": "bias"}
    m = _LAYER.match(name)
    if m:
        block, part, kind = m.groups()
        if part in _LAYER_NAMES:
            return f"blk.{block}.{_LAYER_NAMES[part]}.{suffix_map.get(kind, kind)}"
    m = _GLOBAL.match(name)
    if m and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{suffix_map.get(m.group(2), m.group(2))}"
    raise ValueError(f"tensor {hf_name!r} is not part of a BERT encoder this converter knows")


def read_wordpiece_vocab(model_dir: str | Path) -> tuple[list[str], list[int]]:
    """vocab.txt as llama.cpp "bert" tokens (phantom-space form) and token types."""
    import gguf

    path = Path(model_dir)
    vocab_file = path / "vocab.txt"
    if not vocab_file.exists():
        raise ValueError(f"encoder folder {str(path)!r} has no vocab.txt (WordPiece vocabulary)")
    words = vocab_file.read_text(encoding="utf-8").split("\n")
    if words and words[-1] == "":
        words.pop()
    specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    for cfg_name in ("special_tokens_map.json", "tokenizer_config.json"):
        cfg = _read_json(path / cfg_name) or {}
        for key in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            value = cfg.get(key)
            if value:
                specials.add(value["content"] if isinstance(value, dict) else value)
    tokens: list[str] = []
    types: list[int] = []
    for word in words:
        if word.startswith("[") and word.endswith("]"):
            tokens.append(word)
        elif word.startswith("##"):
            tokens.append(word[2:])
        else:
            tokens.append("\u2581" + word)
        kind = gguf.TokenType.CONTROL if word in specials else gguf.TokenType.NORMAL
        types.append(int(kind))
    return tokens, types


def convert_bert_to_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    *,
    outtype: str = "f16",
    name: str | None = None,
) -> Path:
    """Writes ``model_dir`` (BERT encoder folder) as a llama.cpp GGUF at ``out_path``; returns the path.

    outtype: "f32" | "f16" (default) | "q8_0" for the matrices; norms, biases, position and
    token-type embeddings stay F32.
    """
    try:
        import gguf
    except ImportError as exc:
        raise ImportError("writing GGUF files needs the gguf package: `pip install gguf`") from exc
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype={outtype!r} is not one of {', '.join(OUTTYPES)}")
    src = Path(model_dir)
    cfg = read_encoder_config(src)
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"hidden_size={cfg.n_embd} is not a multiple of num_attention_heads={cfg.n_head}")
    tokens, types = read_wordpiece_vocab(src)
    weights = _read_weights(src)

    index = {tok: i for i, tok in enumerate(tokens)}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]
    writer = gguf.GGUFWriter(str(tmp), arch="bert")
    try:
        writer.add_name(name or src.resolve().name)
        writer.add_file_type(int(file_type))
        writer.add_context_length(cfg.n_ctx_train)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(cfg.n_ff)
        writer.add_block_count(cfg.n_layer)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_eps)
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType.MEAN if cfg.pooling == "mean" else gguf.PoolingType.CLS)
        writer.add_bool(KEY_NORMALIZE, cfg.normalize)
        writer.add_uint32(KEY_MAX_SEQ_LENGTH, cfg.max_seq_length)
        writer.add_string(KEY_SOURCE, str(src.resolve()))

        writer.add_tokenizer_model("bert")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_type_count(cfg.n_token_types)
        for tok, add in (
            ("[CLS]", writer.add_bos_token_id),
            ("[SEP]", writer.add_sep_token_id),
            ("[UNK]", writer.add_unk_token_id),
            ("[PAD]", writer.add_pad_token_id),
            ("[MASK]", writer.add_mask_token_id),
        ):
            if tok in index:
                add(index[tok])

        seen: set[str] = set()
        for hf_name, array in weights.items():
            gname = gguf_tensor_name(hf_name)
            if gname is None:
                continue
            seen.add(gname)
            if gname == "token_embd.weight" and array.shape[0] != len(tokens):
                raise ValueError(
                    f"{src}: {array.shape[0]} token embeddings but {len(tokens)} words in vocab.txt"
                )
            data = np.ascontiguousarray(array, dtype=np.float32)
            if data.ndim == 1 or gname in _ALWAYS_F32 or outtype == "f32":
                writer.add_tensor(gname, data)
            elif outtype == "f16":
                writer.add_tensor(gname, data.astype(np.float16))
            else:
                q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                writer.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        if "token_embd.weight" not in seen:
            raise ValueError(f"{src}: no embeddings.word_embeddings.weight among the weights")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(out)
    return out
