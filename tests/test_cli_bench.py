"""`cocktail-gguf bench` on the tiny model with a small context (the measurement: cocktail_gguf.kv_bench)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocktail_gguf.cli import main

RECORD_FIELDS = {"model", "backend", "kv_mode", "impl", "mix", "depth", "metric", "value", "kv_bytes"}
RECORD_FIELDS |= {"n_runs", "min", "max"}


def test_bench_json(tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_models["tiny-gqa"]
    argv = ["bench", "-m", str(model), "--context-tokens", "96", "--decode", "3", "--threads", "1"]
    assert main([*argv, "--chunk-size", "8", "--runs", "2", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert {"bench", "commit", "machine", "command", "date", "records"} <= set(doc)
    assert doc["command"].startswith("cocktail-gguf ")
    records = doc["records"]
    assert all(RECORD_FIELDS <= set(r) for r in records)
    by = {(r["kv_mode"], r["metric"]): r for r in records}
    for mode in ("f16", "q4", "q2", "cocktail"):
        assert f"depth 96 {mode}" in captured.err  # progress, one line per mode
        for metric in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            rec = by[mode, metric]
            assert rec["value"] > 0 and rec["min"] <= rec["value"] <= rec["max"] and rec["n_runs"] == 2
            assert rec["depth"] == 96 and rec["model"] == "tiny-gqa" and rec["n_threads"] == 1
        assert ((mode, "compaction_ms") in by) == ((mode, "release_ms") in by) == (mode != "f16")
        # the median decode step (steady state) and the mean over all steps: the same order of time
        step, mean = by[mode, "ms_per_token_median_step"]["value"], by[mode, "ms_per_token"]["value"]
        assert 0 < step < 10 * mean and mean < 10 * step
    kv = {mode: by[mode, "decode_tokens_per_s"] for mode in ("f16", "q4", "q2", "cocktail")}
    assert kv["f16"]["kv_bytes_regions"] == 0 and kv["f16"]["mix"] is None
    assert kv["f16"]["impl"] == "llama.cpp" and kv["q4"]["impl"] == "ours"
    # 96 tokens = 12 chunks of 8, all in the regions: Q2 is the smallest, cocktail's mix has Q4 and F16 chunks
    regions = {mode: r["kv_bytes_regions"] for mode, r in kv.items()}
    assert 0 < regions["q2"] < regions["q4"] and regions["q2"] < regions["cocktail"]
    assert kv["q4"]["mix"] == {"f16": 0.0, "q4": 1.0, "q2": 0.0}
    assert sum(kv["cocktail"]["mix"].values()) == pytest.approx(1.0)
    for r in kv.values():
        assert r["kv_bytes"] == r["kv_bytes_llama_cache"] + r["kv_bytes_regions"]


def test_bench_table(tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "-m", str(tiny_models["tiny-mha"]), "--context-tokens", "64", "--decode", "2"]
    assert main([*argv, "--modes", "q2,f16", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 64 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["q2", "f16"]  # the order asked for
    assert "fixed plan" not in out  # cocktail's mix is only explained when it runs


def test_bench_llama_quantized_caches(
    tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """llama-q8_0 / llama-q4_0: llama.cpp's own quantized caches (flash attention), for comparison."""
    argv = ["bench", "-m", str(tiny_models["tiny-mha"]), "--context-tokens", "64", "--decode", "2"]
    assert main([*argv, "--modes", "f16,llama-q8_0,llama-q4_0", "--threads", "1", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)["records"]
    kv = {r["kv_mode"]: r for r in records if r["metric"] == "decode_tokens_per_s"}
    assert set(kv) == {"f16", "q8_0", "q4_0"}
    for r in kv.values():
        assert r["impl"] == "llama.cpp" and r["kv_bytes_regions"] == 0 and r["backend"] == "cpu"
    # q8_0 = 34 bytes per 32 values, q4_0 = 18: the same cells, fewer bytes
    assert kv["q4_0"]["kv_bytes"] < kv["q8_0"]["kv_bytes"] < kv["f16"]["kv_bytes"]
    metrics = {(r["kv_mode"], r["metric"]) for r in records}
    assert {("q4_0", "ms_per_token"), ("q8_0", "ms_per_token")} <= metrics


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--modes", "f16,q3"], "'f16,q3'"),
        (["--context-tokens", "0"], "'0'"),
        (["--decode", "x"], "'x'"),
        (["--mix", "0.5,0.5"], "'0.5,0.5'"),
        (["--mix", "0.5,0.6,0.1"], "'0.5,0.6,0.1'"),
        (["--runs", "-2"], "'-2'"),
        (["--n-gpu-layers", "-3"], "'-3'"),
        (["--modes", "llama-q5_0"], "'llama-q5_0'"),
    ],
)
def test_bench_bad_option_exits_2(options: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", *options])
    assert exc.value.code == 2
    assert named in capsys.readouterr().err


def test_bench_missing_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.gguf"
    assert main(["bench", "-m", str(missing), "--context-tokens", "64"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_bench_not_a_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file")
    assert main(["bench", "-m", str(bogus), "--context-tokens", "64", "--modes", "f16"]) == 2
    assert "Traceback" not in capsys.readouterr().err
