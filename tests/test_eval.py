"""The evaluation harness: seeded tasks, standard scoring, intervals, and an end-to-end run on the tiny model
(every method answers the same samples; outputs are rebuilt from the raw records)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cocktail_gguf.cli import main
from cocktail_gguf.eval import scoring, tasks
from cocktail_gguf.eval.corpus import load_corpus, sentences
from cocktail_gguf.eval.methods import parse_method
from cocktail_gguf.eval.runner import fixed_plan


def _count(text: str) -> int:  # a stand-in tokenizer: words
    return len(text.split())


def test_tasks_are_seeded_and_hold_their_needles() -> None:
    corpus = load_corpus()
    assert len(corpus) == 3 and all(len(d) > 60_000 for d in corpus)
    for task in tasks.TASKS:
        a = tasks.make_samples(task, 3, 600, corpus, _count, seed=7)
        b = tasks.make_samples(task, 3, 600, corpus, _count, seed=7)
        c = tasks.make_samples(task, 3, 600, corpus, _count, seed=8)
        assert a == b and a != c
        later = tasks.make_samples(task, 2, 600, corpus, _count, seed=7, start=1)  # added to a run of 1
        assert later == a[1:] and [s.index for s in later] == [1, 2]
        for s in a:
            assert 300 < _count(s.context) <= 600
            assert all(ans in s.context for ans in s.answers), task
            assert s.question in s.query or task == "passkey"
            assert all(0 < d < 1 for d in s.depths)
    with pytest.raises(ValueError, match="task='nope'"):
        tasks.make_samples("nope", 1, 600, corpus, _count)
    with pytest.raises(ValueError, match="n_tokens=10"):
        tasks.make_samples("passkey", 1, 10, corpus, _count)
    with pytest.raises(ValueError, match="start=-1"):
        tasks.make_samples("passkey", 1, 600, corpus, _count, start=-1)


def test_corpus_and_sentences(tmp_path: Path) -> None:
    assert sentences('He said "Go." Then he left! Why? "No," she said.') == [
        'He said "Go."',
        "Then he left!",
        "Why?",
        '"No," she said.',
    ]
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus([tmp_path / "missing.txt"])
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    with pytest.raises(ValueError, match="need at least 1000"):
        load_corpus([short])


def test_scoring_rules() -> None:
    assert scoring.score("passkey", " 12345. Remember", ["12345"]) == {"score": 1.0}
    assert scoring.score("niah_multivalue", "1, 2 and 4", ["1", "2", "3", "4"])["score"] == 0.75
    qa = scoring.score("qa", " Port Elwin.\nmore", ["Port Elwin"])
    assert qa == {"score": 1.0, "em": 1.0}
    partial = scoring.score("qa", " the port of Elwin", ["Port Elwin"])
    assert partial["em"] == 0.0 and 0.0 < partial["score"] < 1.0
    assert scoring.f1("x y z", "y z w") == pytest.approx(2 / 3)


def test_intervals() -> None:
    m, ci = scoring.mean_ci95([1, 1, 0, 1, 0])
    assert m == 0.6 and 0.3 < ci < 0.5  # Wilson, n = 5
    m, ci = scoring.mean_ci95([0.5, 0.7, 0.6, 0.4])
    assert m == pytest.approx(0.55) and ci == pytest.approx(3.18 * np.std([0.5, 0.7, 0.6, 0.4], ddof=1) / 2)
    d, lo, hi = scoring.paired_delta_ci95([1, 1, 1, 0], [1, 0, 1, 0])
    assert d == 0.25 and lo <= d <= hi
    assert math.isnan(scoring.mean_ci95([])[0])


def test_methods_and_fixed_plans() -> None:
    m = parse_method("cocktail-bm25-a0.5-b0.2-cs64")
    assert (m.encoder, m.alpha, m.beta, m.chunk_size) == ("bm25", 0.5, 0.2, 64)
    with pytest.raises(ValueError, match="method 'cocktail-a0.9-b0.2'"):
        parse_method("cocktail-a0.9-b0.2")
    with pytest.raises(ValueError, match="'q3'"):
        parse_method("q3")
    kivi = fixed_plan(parse_method("kivi2"), 1000)  # 31 chunks + 8 tail tokens: 128 recent tokens F16
    assert kivi is not None and kivi.precisions[-4:] == ("f16",) * 4 and set(kivi.precisions[:-4]) == {"q2"}
    assert fixed_plan(parse_method("llama-q4_0"), 1000) is None


def test_eval_end_to_end_on_the_tiny_model(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ev"
    argv = ["eval", "--model", str(tiny_models["tiny-gqa"]), "--tasks", "passkey,qa", "--lengths", "300",
            "-n", "2", "--methods", "f16,f16-regions,q2,kivi2,cocktail-bm25,random,llama-q4_0",
            "--perplexity-windows", "1", "--perplexity-window", "512", "--threads", "2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    raw = [json.loads(line) for line in Path(f"{out}.samples.jsonl").read_text().splitlines()]
    assert len(raw) == 2 * 2 * 7
    by = {(r["task"], r["index"], r["method"]): r for r in raw}
    for task in ("passkey", "qa"):
        for i in range(2):
            ref = by[(task, i, "f16")]
            assert ref["kv_ratio"] == 1.0 and ref["counts"] is None
            assert by[(task, i, "q2")]["kv_ratio"] < 0.3  # measured region bytes: 3 bits of 16 + tail
            assert by[(task, i, "random")]["counts"] == by[(task, i, "cocktail-bm25")]["counts"]
    doc = json.loads(Path(f"{out}.json").read_text())
    assert doc["bench"] == "eval_accuracy" and doc["command"].startswith("cocktail-gguf eval")
    metrics = {(r["task"], r["kv_mode"], r["metric"]) for r in doc["records"]}
    assert ("retrieval", "cocktail-bm25", "accuracy") in metrics
    assert ("perplexity", "q2", "perplexity") in metrics
    table = Path(f"{out}.md").read_text()
    assert "| f16-regions |" in table and "Perplexity" in table
    # the summary is rebuilt from the raw records alone
    Path(f"{out}.md").unlink()
    assert main(["eval", "--from-samples", "--out", str(out)]) == 0
    assert Path(f"{out}.md").read_text() == table
