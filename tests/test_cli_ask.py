"""`cocktail-gguf ask` end to end on the tiny model (BM25 planner: no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocktail_gguf.cli import main

WORDS = "alpha beta gamma delta the river runs past old stone walls and quiet fields".split()


def _context(path: Path) -> Path:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(400)) + " The secret number is 4217."
    path.write_text(text)
    return path


@pytest.mark.parametrize("mode", ["cocktail", "q2", "f16"])
def test_ask_json(tiny_models: dict[str, Path], tmp_path: Path, capsys, mode: str) -> None:  # type: ignore[no-untyped-def]
    ctx = _context(tmp_path / "ctx.txt")
    argv = ["ask", "-m", str(tiny_models["tiny-gqa"]), "-c", str(ctx), "-q", "What is the secret number?"]
    assert main([*argv, "--kv-mode", mode, "--encoder", "bm25", "-n", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kv_mode"] == mode
    assert 0 < out["n_generated_tokens"] <= 6
    assert set(out["timings"]) >= {"plan_s", "prefill_s", "compaction_s", "decode_s"}
    if mode == "f16":
        assert out["plan"] is None and out["kv_bytes"]["regions"] == 0
        return
    plan = out["plan"]
    counts = {p: plan["precisions"].count(p) for p in ("f16", "q4", "q2")}
    assert sum(counts.values()) == len(plan["precisions"]) > 0
    if mode == "q2":
        assert counts["q2"] == len(plan["precisions"])
    assert out["kv_bytes"]["regions"] > 0 and out["kv_bytes"]["llama_cache"] > 0


def test_ask_missing_context_file(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="nope.txt"):
        main(["ask", "-m", str(tiny_models["tiny-mha"]), "-c", str(tmp_path / "nope.txt"), "-q", "x"])


def test_ask_empty_query_is_an_error(tiny_models: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ctx = _context(tmp_path / "ctx.txt")
    assert (
        main(["ask", "-m", str(tiny_models["tiny-mha"]), "-c", str(ctx), "-q", " ", "--encoder", "bm25"]) == 2
    )
    assert "query=' '" in capsys.readouterr().err


GPU_ARGV = {"ask": ["ask", "-m", "x.gguf", "-c", "c.txt", "-q", "q"], "chat": ["chat", "-m", "x.gguf"]}


@pytest.mark.parametrize("command", ["ask", "chat"])
def test_gpu_layers_option(
    tiny_models: dict[str, Path],
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--n-gpu-layers / -ngl reaches the Llama (default 0: CPU); bad values are refused, named."""
    from cocktail_gguf import cli, llama

    argv = GPU_ARGV[command]
    args = cli.build_parser().parse_args([*argv, "-ngl", "-1"])
    assert args.n_gpu_layers == -1
    assert cli.build_parser().parse_args(argv).n_gpu_layers == 0
    seen: dict[str, object] = {}

    class Spy(llama.Llama):
        def __init__(self, *a: object, **kw: object) -> None:
            seen.update(kw)
            super().__init__(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(llama, "Llama", Spy)
    cli.llama_from_args(args, str(tiny_models["tiny-mha"]), 256).close()
    assert seen["n_gpu_layers"] == -1
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args([*argv, "--n-gpu-layers", "-4"])
    assert exc.value.code == 2 and "'-4'" in capsys.readouterr().err
