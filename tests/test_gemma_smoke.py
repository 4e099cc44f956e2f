"""The real model: gemma-3-270m (Q4_K_M, iSWA) from PyPI generates deterministically."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocktail_gguf import Llama

pytestmark = pytest.mark.slow


def test_gemma_greedy_deterministic(gemma_path: Path, llama_kwargs: dict) -> None:
    prompt = "Paris is the capital of"
    outs = []
    for _ in range(2):
        llm = Llama(str(gemma_path), n_ctx=512, verbose=False, **llama_kwargs)
        outs.append(llm(prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"])
        llm.close()
    assert outs[0] == outs[1]
    assert outs[0].strip(), "expected a non-empty continuation"
    assert "France" in outs[0]


def test_demo_finds_the_pass_key(gemma_path: Path) -> None:
    """`cocktail-gguf demo` (the README's first command) on the embedded model, BM25 planner (no torch)."""
    import subprocess
    import sys

    from children import CHILD_CWD, child_env

    done = subprocess.run(
        [sys.executable, "-m", "cocktail_gguf.cli", "demo", "--context-tokens", "1024", "--encoder", "bm25"],
        capture_output=True, text=True, timeout=600, check=False, cwd=CHILD_CWD, env=child_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "the Cocktail cache found the pass key" in done.stdout, done.stdout
    assert "plan {'f16': " in done.stdout and "context KV:" in done.stdout
