"""Planner: chunking on LLM tokens, thresholds exactly as the paper defines them, edge cases, CLI."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocktail_gguf.encoders import BM25Scorer, EmbeddingCache
from cocktail_gguf.plan import Plan
from cocktail_gguf.planner import (
    LlamaTokenizer,
    Planner,
    as_tokenizer,
    assign_precisions,
    chunk_texts,
    plan_context,
    split_chunks,
    thresholds_for,
    validate_planner_options,
)


class ByteTokenizer:
    """One token per UTF-8 byte (like a byte-level vocabulary); gives bytes back for exact chunk texts."""

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def detokenize_bytes(self, ids: Sequence[int]) -> bytes:
        return bytes(ids)

    def detokenize(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class CharTokenizer:
    """One token per character; no bytes interface."""

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)


class TableEncoder:
    """Embeds known texts to given vectors; counts calls and texts embedded."""

    def __init__(self, table: dict[str, Sequence[float]], name: str = "table") -> None:
        self.table = {k: np.asarray(v, dtype=np.float32) for k, v in table.items()}
        self.calls: list[list[str]] = []
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.table[t] for t in texts])

    @property
    def n_embedded(self) -> int:
        return sum(len(c) for c in self.calls)


def _unit(s: float) -> list[float]:
    """A 2-D vector whose cosine with the query [1, 0] is exactly s."""
    return [s, math.sqrt(1.0 - s * s)]


SIMS = (0.1, 0.5, 0.9, 0.3, 0.75)
CHUNKS = ("AAAA", "BBBB", "CCCC", "DDDD", "EEEE")


_tables = itertools.count()


def _encoder(
    sims: Sequence[float] = SIMS, chunks: Sequence[str] = CHUNKS, name: str | None = None
) -> TableEncoder:
    """A TableEncoder with a name of its own: the process-wide embedding cache keys rows by name."""
    table: dict[str, Sequence[float]] = {c: _unit(s) for c, s in zip(chunks, sims, strict=True)}
    table["query?"] = [1.0, 0.0]
    return TableEncoder(table, name or f"table-{next(_tables)}")


def test_hand_computed_plan() -> None:
    # s_min 0.1, s_max 0.9: T_low = 0.1 + 0.8 * 0.6 = 0.58, T_high = 0.9 - 0.8 * 0.1 = 0.82
    enc = _encoder()
    plan = plan_context(
        "".join(CHUNKS) + "xy", "query?", tokenizer=ByteTokenizer(), encoder=enc, chunk_size=4
    )
    t = plan.thresholds
    assert t is not None
    assert (t.s_min, t.s_max) == pytest.approx((0.1, 0.9))
    assert t.t_low == pytest.approx(0.58) and t.t_high == pytest.approx(0.82)
    assert plan.similarities == pytest.approx(SIMS)
    assert plan.precisions == ("q2", "q2", "f16", "q2", "q4")
    assert plan.n_context_tokens == 22 and plan.n_tail_tokens == 2
    assert plan.chunk_texts == CHUNKS and plan.tail_text == "xy"
    assert plan.encoder == enc.name and plan.query == "query?"
    assert "xy" not in [t for call in enc.calls for t in call]  # the tail is never embedded


def test_thresholds_for_other_alpha_beta() -> None:
    t = thresholds_for([-2.0, 0.0, 6.0], alpha=0.25, beta=0.5)
    assert (t.t_low, t.t_high) == (0.0, 2.0)  # -2 + 8 * 0.25, 6 - 8 * 0.5
    precs, _ = assign_precisions([-2.0, 0.0, 6.0, 2.0, 1.0], alpha=0.25, beta=0.5)
    # strict inequalities: s == T_low (0.0) and s == T_high (2.0) are Q4
    assert precs == ("q2", "q4", "f16", "q4", "q4")


def test_larger_alpha_more_q2_larger_beta_more_f16() -> None:
    sims = np.arange(101.0)  # 0..100; binary-fraction alpha/beta give exact thresholds
    q2 = [assign_precisions(sims, a, 0.0)[0].count("q2") for a in (0.125, 0.25, 0.5, 0.75)]
    f16 = [assign_precisions(sims, 0.125, b)[0].count("f16") for b in (0.0, 0.125, 0.25, 0.5)]
    assert q2 == [13, 25, 50, 75]  # s < 12.5, 25, 50, 75
    assert f16 == [0, 13, 25, 50]  # s > 100, 87.5, 75, 50


@settings(max_examples=80, deadline=None)
@given(
    sims=st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=1, max_size=60),
    alpha=st.floats(0.0, 1.0),
    beta=st.floats(0.0, 1.0),
)
def test_rule_on_random_similarities(sims: list[float], alpha: float, beta: float) -> None:
    if alpha + beta > 1.0:
        with pytest.raises(ValueError, match="alpha"):
            assign_precisions(sims, alpha, beta)
        return
    precs, t = assign_precisions(sims, alpha, beta)
    assert t is not None
    lo, hi = min(sims), max(sims)
    assert t.t_low == lo + (hi - lo) * alpha and t.t_high == hi - (hi - lo) * beta
    for s, p in zip(sims, precs, strict=True):
        assert p == ("f16" if s > t.t_high else "q2" if s < t.t_low else "q4")


def test_split_chunks() -> None:
    chunks, tail = split_chunks(list(range(10)), 4)
    assert chunks == [[0, 1, 2, 3], [4, 5, 6, 7]] and tail == [8, 9]
    assert split_chunks([], 4) == ([], [])
    assert split_chunks(list(range(8)), 4)[1] == []


def test_one_chunk_is_q4() -> None:
    enc = _encoder()
    plan = plan_context("AAAA", "query?", tokenizer=ByteTokenizer(), encoder=enc, chunk_size=4)
    assert plan.precisions == ("q4",)
    assert plan.thresholds is not None and plan.thresholds.t_low == plan.thresholds.t_high == pytest.approx(
        0.1
    )


def test_all_equal_similarities_are_q4() -> None:
    enc = _encoder(sims=(0.4,) * 5)
    plan = plan_context("".join(CHUNKS), "query?", tokenizer=ByteTokenizer(), encoder=enc, chunk_size=4)
    assert plan.precisions == ("q4",) * 5
    assert assign_precisions([0.0, 0.0], 0.6, 0.1)[0] == ("q4", "q4")


class FailingEncoder:
    name = "fails"

    def embed(self, texts: list[str]) -> np.ndarray:
        raise AssertionError(f"nothing should be embedded, got {texts!r}")


def test_context_shorter_than_a_chunk() -> None:
    plan = plan_context("abc", "query?", tokenizer=ByteTokenizer(), encoder=FailingEncoder(), chunk_size=4)
    assert plan.n_chunks == 0 and plan.n_tail_tokens == 3 and plan.tail_text == "abc"
    assert plan.thresholds is None and plan.similarities == ()
    plan.validate(3)
    empty = plan_context("", "query?", tokenizer=ByteTokenizer(), encoder=FailingEncoder())
    assert empty.n_context_tokens == 0 and empty.n_chunks == 0


@pytest.mark.parametrize("query", ["", "   \n"])
def test_empty_query(query: str) -> None:
    with pytest.raises(ValueError, match="query=.*empty"):
        plan_context("AAAA", query, tokenizer=ByteTokenizer(), encoder=_encoder(), chunk_size=4)


@pytest.mark.parametrize(
    ("chunk_size", "alpha", "beta", "named"),
    [
        (0, 0.6, 0.1, "chunk_size=0"),
        (-4, 0.6, 0.1, "chunk_size=-4"),
        (4.5, 0.6, 0.1, "chunk_size=4.5"),
        (True, 0.6, 0.1, "chunk_size=True"),
        (32, 1.5, 0.1, "alpha=1.5"),
        (32, -0.1, 0.1, "alpha=-0.1"),
        (32, float("nan"), 0.1, "alpha=nan"),
        (32, 0.6, float("inf"), "beta=inf"),
        (32, 0.6, "0.1", "beta='0.1'"),
        (32, 0.7, 0.4, "alpha=0.7 \\+ beta=0.4"),
    ],
)
def test_bad_options_name_the_value(chunk_size: object, alpha: object, beta: object, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        validate_planner_options(chunk_size, alpha, beta)
    with pytest.raises(ValueError, match=named):
        opts: dict = {"chunk_size": chunk_size, "alpha": alpha, "beta": beta}
        plan_context("AAAA", "query?", tokenizer=ByteTokenizer(), encoder=_encoder(), **opts)


def test_alpha_plus_beta_one_is_allowed() -> None:
    precs, t = assign_precisions(SIMS, alpha=0.5, beta=0.5)
    assert t is not None and t.t_low == t.t_high == pytest.approx(0.5)
    assert precs == ("q2", "q4", "f16", "q2", "f16")  # 0.5 ties T_low == T_high: Q4


def test_nan_embedding_is_named() -> None:
    enc = _encoder()
    enc.table["CCCC"] = np.array([np.nan, 1.0], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN.*'CCCC'"):
        plan_context(
            "".join(CHUNKS), "query?", tokenizer=ByteTokenizer(), encoder=enc, chunk_size=4, cache=None
        )


def test_zero_embeddings_are_named() -> None:
    enc = _encoder()
    enc.table["DDDD"] = np.zeros(2, dtype=np.float32)
    with pytest.raises(ValueError, match="chunk 3 is the zero vector"):
        plan_context(
            "".join(CHUNKS), "query?", tokenizer=ByteTokenizer(), encoder=enc, chunk_size=4, cache=None
        )
    enc = _encoder()
    enc.table["query?"] = np.zeros(2, dtype=np.float32)
    with pytest.raises(ValueError, match="query embedding is the zero vector"):
        plan_context(
            "".join(CHUNKS), "query?", tokenizer=ByteTokenizer(), encoder=enc, chunk_size=4, cache=None
        )


class NanScorer:
    name = "nan-scorer"

    def similarities(self, query: str, texts: list[str]) -> np.ndarray:
        out = np.arange(len(texts), dtype=np.float64)
        out[1] = np.nan
        return out


def test_nan_score_is_named() -> None:
    with pytest.raises(ValueError, match="chunk 1 is nan"):
        plan_context("AAAABBBB", "q", tokenizer=ByteTokenizer(), encoder=NanScorer(), chunk_size=4)


def test_token_ids_plan_like_text() -> None:
    text = "".join(CHUNKS) + "xy"
    ids = ByteTokenizer().tokenize(text)
    enc = _encoder()
    from_text = plan_context(text, "query?", tokenizer=ByteTokenizer(), encoder=enc, chunk_size=4)
    for ctx in (ids, np.array(ids, dtype=np.int32), tuple(ids)):
        plan = plan_context(ctx, "query?", tokenizer=ByteTokenizer(), encoder=enc, chunk_size=4)
        assert plan == from_text
    with pytest.raises(ValueError, match="token id -1"):
        plan_context([65, -1], "query?", tokenizer=ByteTokenizer(), encoder=_encoder())
    with pytest.raises(ValueError, match="1-D"):
        plan_context(
            np.zeros((2, 4), dtype=np.int64), "query?", tokenizer=ByteTokenizer(), encoder=_encoder()
        )
    with pytest.raises(ValueError, match="1-D sequence of integers"):
        plan_context([1.5, 2.0], "query?", tokenizer=ByteTokenizer(), encoder=_encoder())


def test_utf8_split_across_chunks_stays_whole() -> None:
    # "aaé" = 61 61 C3 A9: a 3-byte chunk cuts é after C3; it must appear whole in the next chunk
    chunks, tail = split_chunks(ByteTokenizer().tokenize("aaébbbb"), 3)
    texts, tail_text = chunk_texts(ByteTokenizer(), chunks, tail)
    assert texts == ["aa", "ébb"] and tail_text == "bb"
    assert "".join(texts) + tail_text == "aaébbbb"
    # a tokenizer without bytes falls back to per-chunk detokenize
    texts, tail_text = chunk_texts(CharTokenizer(), [[97, 98]], [99])
    assert texts == ["ab"] and tail_text == "c"


def test_cache_reuses_chunk_embeddings() -> None:
    cache = EmbeddingCache()
    enc = _encoder()
    text = "".join(CHUNKS)
    first = plan_context(text, "query?", tokenizer=ByteTokenizer(), encoder=enc, chunk_size=4, cache=cache)
    assert enc.n_embedded == 6  # 5 chunks + the query
    enc.table["other query"] = np.array([0.0, 1.0], dtype=np.float32)
    second = plan_context(
        text, "other query", tokenizer=ByteTokenizer(), encoder=enc, chunk_size=4, cache=cache
    )
    assert enc.n_embedded == 7  # only the new query
    assert first.precisions != second.precisions
    # the key holds the encoder name: another encoder does not see these rows
    other = _encoder(name="other")
    plan_context(text, "query?", tokenizer=ByteTokenizer(), encoder=other, chunk_size=4, cache=cache)
    assert other.n_embedded == 6
    plan_context(text, "query?", tokenizer=ByteTokenizer(), encoder=other, chunk_size=4, cache=None)
    assert other.n_embedded == 12


def test_batches_do_not_change_the_plan() -> None:
    sims = np.linspace(-0.9, 0.9, 13)
    chunks = [f"{i:04d}" for i in range(13)]
    text = "".join(chunks)
    plans = []
    for batch_size in (1, 3, 64):
        enc = _encoder(sims, chunks)
        plans.append(
            plan_context(
                text,
                "query?",
                tokenizer=ByteTokenizer(),
                encoder=enc,
                chunk_size=4,
                batch_size=batch_size,
                cache=None,
                progress=True,
            )
        )
        assert max(len(c) for c in enc.calls) <= max(batch_size, 1)
    assert plans[0].precisions == plans[1].precisions == plans[2].precisions
    assert plans[0].similarities == plans[1].similarities == plans[2].similarities
    assert plans[0].similarities == pytest.approx(sims)


def test_duplicate_chunks_embedded_once() -> None:
    enc = _encoder(sims=(0.2, 0.6), chunks=("AAAA", "BBBB"))
    plan = plan_context(
        "AAAABBBBAAAA", "query?", tokenizer=ByteTokenizer(), encoder=enc, chunk_size=4, cache=None
    )
    assert plan.similarities == pytest.approx((0.2, 0.6, 0.2))
    assert sorted(enc.calls[0]) == ["AAAA", "BBBB"]


def test_bm25_planner_puts_the_needle_in_f16() -> None:
    filler = "the weather report says rain is likely tomorrow afternoon. " * 12
    needle = "the llama password is blue falcon forty two. "
    context = filler + needle + filler
    plan = plan_context(
        context, "what is the llama password?", tokenizer=CharTokenizer(), encoder="bm25", chunk_size=48
    )
    assert plan.encoder == BM25Scorer().name
    f16 = [plan.chunk_texts[i] for i in plan.chunk_indices("f16")] if plan.chunk_texts else []
    assert f16 and all("llama" in t or "password" in t for t in f16)
    assert plan.counts["q2"] > plan.counts["f16"]


def test_planner_object() -> None:
    enc = _encoder()
    planner = Planner(ByteTokenizer(), encoder=enc, chunk_size=4, cache=None)
    plan = planner.plan("".join(CHUNKS), "query?")
    assert plan.precisions == ("q2", "q2", "f16", "q2", "q4")
    assert planner.plan("".join(CHUNKS), "query?", keep_texts=False).chunk_texts is None
    with pytest.raises(ValueError, match="alpha=2"):
        Planner(ByteTokenizer(), alpha=2)
    lazy = Planner(ByteTokenizer(), encoder="bm25", chunk_size=4)
    assert lazy.encoder == "bm25"  # nothing loaded until the first plan
    lazy.plan("AAAABBBB", "A")
    assert isinstance(lazy.encoder, BM25Scorer)


def test_as_tokenizer() -> None:
    tok = ByteTokenizer()
    assert as_tokenizer(tok) is tok
    with pytest.raises(ValueError, match="tokenizer=42"):
        as_tokenizer(42)


class FakeLlama:
    """What LlamaTokenizer uses of llama_cpp.Llama: bytes in, bytes out, add_bos/special flags."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        self.seen.append((add_bos, special))
        return ([1] if add_bos else []) + list(text)

    def detokenize(self, tokens: list[int]) -> bytes:
        return bytes(tokens)


def test_llama_tokenizer_adapter() -> None:
    llm = FakeLlama()
    tok = LlamaTokenizer(llm)
    assert tok.tokenize("hé") == [104, 195, 169]
    assert llm.seen == [(False, False)]
    assert tok.detokenize([104, 195, 169]) == "hé"
    assert tok.detokenize([195]) == "\ufffd"


# --- real tokenizers -------------------------------------------------------------------------


def test_cli_plan_on_a_tiny_model(
    tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import argparse

    from cocktail_gguf import planner_cli

    context = tmp_path / "ctx.txt"
    context.write_text(
        "the rain falls on the plain. " * 20 + "the llama password is blue falcon. " + "x y " * 30
    )
    parser = argparse.ArgumentParser()
    planner_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    html, png = tmp_path / "p.html", tmp_path / "p.png"
    args = parser.parse_args(
        [
            "plan",
            "--model",
            str(tiny_models["tiny-mha"]),
            "--context",
            str(context),
            "--query",
            "llama password",
            "--encoder",
            "bm25",
            "--chunk-size",
            "16",
            "--html",
            str(html),
            "--json",
        ]
        + (["--png", str(png)] if _has_matplotlib() else [])
    )
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    plan = Plan.from_dict(data)
    assert plan.chunk_size == 16 and plan.n_chunks > 10
    assert plan.counts["f16"] >= 1
    assert plan.chunk_texts is None  # texts only with --json-texts
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    if _has_matplotlib():
        assert png.read_bytes()[:4] == b"\x89PNG"
    bad = parser.parse_args(
        [
            "plan",
            "--model",
            str(tiny_models["tiny-mha"]),
            "--context",
            str(context),
            "--query",
            " ",
            "--encoder",
            "bm25",
        ]
    )
    assert bad.func(bad) == 2
    assert "query=' ' is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["plan", "--context", str(context), "--query", "q", "--alpha", "1.5"])


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_tiny_model_tokenizer_ids_and_text_agree(tiny_models: dict[str, Path]) -> None:
    from cocktail_gguf import Llama

    llm = Llama(str(tiny_models["tiny-mha"]), vocab_only=True, verbose=False)
    context = "the rain falls on the plain. " * 10 + "the llama password is blue falcon."
    ids = llm.tokenize(context.encode(), add_bos=False, special=False)
    by_text = plan_context(context, "llama password", tokenizer=llm, encoder="bm25", chunk_size=8)
    by_ids = plan_context(ids, "llama password", tokenizer=llm, encoder="bm25", chunk_size=8)
    assert by_text == by_ids
    assert by_text.n_context_tokens == len(ids)
    by_text.validate(len(ids))
    assert by_text.n_chunks == len(ids) // 8
    # chunk texts are the context cut on token borders (SentencePiece may add a leading space)
    assert "".join(by_text.chunk_texts or ()) + (by_text.tail_text or "") in (context, " " + context)


@pytest.mark.slow
def test_gemma_tokenizer_plan(gemma_path: Path) -> None:
    from cocktail_gguf import Llama

    llm = Llama(str(gemma_path), vocab_only=True, verbose=False)
    context = ("Llamas live in the Andes and eat grass. " * 30 + "The vault code is 7319. ") * 3
    plan = plan_context(context, "What is the vault code?", tokenizer=llm, encoder="bm25")
    ids = llm.tokenize(context.encode(), add_bos=False, special=False)
    assert plan.n_context_tokens == len(ids) and plan.n_chunks == len(ids) // 32
    joined = "".join(plan.chunk_texts or ()) + (plan.tail_text or "")
    assert joined == context
    assert plan.counts["f16"] >= 1
    for i in plan.chunk_indices("f16"):
        assert "vault" in (plan.chunk_texts or ())[i] or "code" in (plan.chunk_texts or ())[i]


def test_llama_tokenizer_detokenizes_like_llama_cpp_python(tiny_models: dict[str, Path]) -> None:
    """The planner's cached-piece detokenizer gives llama-cpp-python's bytes (incl. its BOS rule)."""
    import random

    from cocktail_gguf import Llama
    from cocktail_gguf.planner import LlamaTokenizer

    llm = Llama(str(tiny_models["tiny-gqa"]), vocab_only=True, verbose=False)
    tok = LlamaTokenizer(llm)
    rng = random.Random(4)
    for k in range(300):
        ids = [rng.randrange(llm.n_vocab()) for _ in range(rng.randint(0, 50))]
        if k % 4 == 0 and ids:
            ids[0] = llm.token_bos()
        assert tok.detokenize_bytes(ids) == bytes(llm.detokenize(ids)), ids
    text = " the quick brown fox"
    assert tok.detokenize(tok.tokenize(text)) == llm.detokenize(tok.tokenize(text)).decode()
    llm.close()
