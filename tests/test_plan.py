"""Plan: construction by hand, derived numbers (hand-computed), native codes, JSON, validation, pictures."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocktail_gguf.plan import BITS_PER_ELEMENT, NATIVE_CODES, PLAN_FORMAT, Plan, Thresholds, precision_name


def _planner_made() -> Plan:
    # similarities 0.1 .. 0.9 as in the planner test; thresholds alpha 0.6, beta 0.1 → 0.58 / 0.82
    return Plan(
        chunk_size=4,
        precisions=("q2", "q2", "f16", "q2", "q4"),
        n_context_tokens=22,
        similarities=(0.1, 0.5, 0.9, 0.3, 0.75),
        thresholds=Thresholds(alpha=0.6, beta=0.1, s_min=0.1, s_max=0.9, t_low=0.58, t_high=0.82),
        encoder="fake",
        query="where <is> the & needle?",
        chunk_texts=("aaaa", "bb<b", "need", "cc\ncc", "dddd"),
        tail_text="xy",
    )


def test_constants_match_the_native_enum_and_the_formats() -> None:
    header = (Path(__file__).resolve().parents[1] / "native" / "cocktail_api.h").read_text()
    for name, code in NATIVE_CODES.items():
        assert re.search(rf"COCKTAIL_PREC_{name.upper()}\s*=\s*{code}\b", header), name
    # 4-/2-bit codes + fp16 scale + fp16 min per 32 elements
    assert BITS_PER_ELEMENT == {"f16": 16.0, "q4": 4 + 32 / 32, "q2": 2 + 32 / 32}


def test_counts_bits_tail_by_hand() -> None:
    plan = _planner_made()
    assert plan.n_chunks == 5
    assert plan.n_tail_tokens == 2
    assert plan.counts == {"f16": 1, "q4": 1, "q2": 3}
    assert plan.fractions == {"f16": 0.2, "q4": 0.2, "q2": 0.6}
    assert plan.bits_per_element == pytest.approx((16 + 5 + 3 * 3) / 5)  # 6.0
    # 20 chunk tokens at 6.0 bits + 2 tail tokens at 16 bits
    assert plan.context_bits_per_element == pytest.approx((20 * 6.0 + 2 * 16.0) / 22)
    assert plan.precision_string() == "22F24"
    assert plan.chunk_token_range(2) == (8, 12)
    assert plan.chunk_indices("q2").tolist() == [0, 1, 3]
    assert plan.chunk_indices(0).tolist() == [2]


def test_native_codes() -> None:
    codes = _planner_made().native_codes()
    assert codes.dtype == np.uint8
    assert codes.tolist() == [2, 2, 0, 2, 1]
    assert Plan.uniform(10, 4, "f16").native_codes().tolist() == [0, 0]


def test_uniform_and_from_precisions() -> None:
    plan = Plan.uniform(100, 32, "q4")
    assert plan.precisions == ("q4", "q4", "q4")
    assert plan.n_tail_tokens == 4
    assert plan.bits_per_element == 5.0
    assert plan.similarities is None and plan.thresholds is None
    by_codes = Plan.from_precisions([0, 1, 2, "Q4", "F16"], chunk_size=8)
    assert by_codes.precisions == ("f16", "q4", "q2", "q4", "f16")
    assert by_codes.n_context_tokens == 40
    with_tail = Plan.from_precisions(["q2"], chunk_size=8, n_context_tokens=15)
    assert with_tail.n_tail_tokens == 7


def test_no_chunks() -> None:
    plan = Plan.uniform(31, 32)
    assert plan.n_chunks == 0 and plan.n_tail_tokens == 31
    assert plan.counts == {"f16": 0, "q4": 0, "q2": 0}
    assert plan.fractions is None
    assert plan.bits_per_element == 16.0
    assert plan.context_bits_per_element == 16.0
    assert plan.native_codes().shape == (0,)
    assert Plan.uniform(0, 32).context_bits_per_element == 16.0


def test_frozen() -> None:
    plan = Plan.uniform(64, 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.chunk_size = 16  # type: ignore[misc]
    assert isinstance(plan.precisions, tuple)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"chunk_size": 0, "precisions": (), "n_context_tokens": 0}, "chunk_size=0"),
        ({"chunk_size": True, "precisions": (), "n_context_tokens": 0}, "chunk_size=True"),
        ({"chunk_size": 4.0, "precisions": (), "n_context_tokens": 0}, "chunk_size=4.0"),
        ({"chunk_size": 4, "precisions": (), "n_context_tokens": -1}, "n_context_tokens=-1"),
        ({"chunk_size": 4, "precisions": ("q3",), "n_context_tokens": 4}, "'q3'"),
        ({"chunk_size": 4, "precisions": (7,), "n_context_tokens": 4}, "7"),
        ({"chunk_size": 4, "precisions": "q4", "n_context_tokens": 4}, "'q4'"),
        ({"chunk_size": 4, "precisions": ("q4",), "n_context_tokens": 8}, "n_context_tokens=8"),
        (
            {"chunk_size": 4, "precisions": ("q4",), "n_context_tokens": 4, "similarities": (1.0, 2.0)},
            "2 similar",
        ),
        (
            {"chunk_size": 4, "precisions": ("q4",), "n_context_tokens": 4, "similarities": (float("nan"),)},
            "nan",
        ),
        (
            {"chunk_size": 4, "precisions": ("q4",), "n_context_tokens": 4, "chunk_texts": ("a", "b")},
            "2 chunk texts",
        ),
    ],
)
def test_bad_plans_name_the_value(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        Plan(**kwargs)


def test_precision_name() -> None:
    assert precision_name("FP16") == "f16"
    assert precision_name(np.uint8(2)) == "q2"
    with pytest.raises(ValueError, match="True"):
        precision_name(True)  # type: ignore[arg-type]


def test_validate() -> None:
    plan = Plan.uniform(100, 32)  # 3 chunks
    for n in (96, 100, 127):
        plan.validate(n)
    for n in (95, 128, 0):
        with pytest.raises(ValueError, match=f"n_tokens={n}"):
            plan.validate(n)
    with pytest.raises(ValueError, match="n_tokens=-3"):
        plan.validate(-3)


def test_json_round_trip() -> None:
    plan = _planner_made()
    text = plan.to_json()
    data = json.loads(text)
    assert data["format"] == PLAN_FORMAT
    assert data["counts"] == {"f16": 1, "q4": 1, "q2": 3}
    assert data["bits_per_element"] == pytest.approx(6.0)
    assert Plan.from_json(text) == plan
    lean = Plan.from_json(plan.to_json(include_texts=False))
    assert (
        lean.chunk_texts is None and lean.precisions == plan.precisions and lean.thresholds == plan.thresholds
    )
    hand = Plan.uniform(70, 32, "q2")
    assert Plan.from_json(hand.to_json()) == hand


def test_bad_json() -> None:
    with pytest.raises(ValueError, match="does not parse"):
        Plan.from_json("{")
    with pytest.raises(ValueError, match="'chunk_size'"):
        Plan.from_json('{"precisions": [], "n_context_tokens": 0}')
    with pytest.raises(ValueError, match="'cocktail-plan/9'"):
        Plan.from_json(
            '{"format": "cocktail-plan/9", "chunk_size": 4, "precisions": [], "n_context_tokens": 0}'
        )
    with pytest.raises(ValueError, match="list"):
        Plan.from_json("[]")


@settings(max_examples=60, deadline=None)
@given(
    codes=st.lists(st.sampled_from(["f16", "q4", "q2"]), max_size=40),
    chunk_size=st.integers(1, 64),
    extra=st.integers(0, 63),
)
def test_properties(codes: list[str], chunk_size: int, extra: int) -> None:
    n = len(codes) * chunk_size + extra % chunk_size
    plan = Plan(chunk_size, tuple(codes), n)
    assert sum(plan.counts.values()) == plan.n_chunks == len(codes)
    assert 3.0 <= plan.bits_per_element <= 16.0
    assert 3.0 <= plan.context_bits_per_element <= 16.0
    assert plan.n_chunks * chunk_size + plan.n_tail_tokens == n
    assert Plan.from_json(plan.to_json()) == plan
    assert [NATIVE_CODES[p] for p in plan.precisions] == plan.native_codes().tolist()
    plan.validate(n)


def test_html_picture(tmp_path: Path) -> None:
    plan = _planner_made()
    page = plan.to_html(title="needle <test>")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "http" not in page  # self-contained
    assert "needle &lt;test&gt;" in page
    assert "where &lt;is&gt; the &amp; needle?" in page  # the query, escaped
    assert page.count('<span class="q2"') == 3 and page.count('<span class="f16"') == 1
    assert page.count('<span class="q4"') == 1 and page.count('<span class="tail"') == 1
    assert "bb&lt;b" in page and "cc\ncc" in page
    assert "<b>3</b> chunks (60.0 %)" in page  # legend counts
    assert "similarity 0.9000" in page and "T_high 0.8200" in page
    out = plan.save_html(tmp_path / "plan.html", title="needle <test>")
    assert out.read_text(encoding="utf-8") == page
    # a hand-made plan without texts is drawn as cells
    cells = Plan.uniform(70, 32, "q4").to_html()
    assert '<div class="cells">' in cells and cells.count('<span class="q4"') == 2
    with pytest.raises(ValueError, match="1 texts"):
        plan.to_html(texts=["only one"])


def test_png_picture(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib (optional) draws the similarity plot")
    out = _planner_made().save_similarity_png(tmp_path / "sim.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError, match="no similarities"):
        Plan.uniform(64, 32).save_similarity_png(tmp_path / "x.png")
