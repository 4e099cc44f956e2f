"""Generation through cocktail_gguf.Llama equals plain llama_cpp.Llama on the same library."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from cocktail_gguf import Llama

PROMPT = "the quick brown fox jumps over the lazy dog and"


def _greedy(llm: llama_cpp.Llama, n: int = 24) -> list[int]:
    tokens = llm.tokenize(PROMPT.encode())
    out = []
    for tok in llm.generate(tokens, temp=0.0, top_k=1):
        out.append(tok)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("shape", ["tiny-mha", "tiny-gqa"])
def test_same_tokens_as_llama_cpp(tiny_models: dict[str, Path], shape: str, llama_kwargs: dict) -> None:
    path = str(tiny_models[shape])
    ours = _greedy(Llama(path, n_ctx=256, verbose=False, kv_mode="f16", **llama_kwargs))
    again = _greedy(Llama(path, n_ctx=256, verbose=False, **llama_kwargs))
    stock = _greedy(llama_cpp.Llama(path, n_ctx=256, verbose=False, **llama_kwargs))
    assert len(ours) == 24
    assert ours == again == stock
    assert len(set(ours)) > 1, "random weights should not collapse to one token"


def test_completion_text_deterministic(tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    path = str(tiny_models["tiny-mha"])
    a = Llama(path, n_ctx=128, verbose=False, **llama_kwargs)("hello", max_tokens=12, temperature=0.0)
    b = Llama(path, n_ctx=128, verbose=False, **llama_kwargs)("hello", max_tokens=12, temperature=0.0)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"]["completion_tokens"] == 12


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kv_mode": "fp16"}, "kv_mode='fp16'"),
        ({"kv_mode": None}, "kv_mode=None"),
        ({"chunk_size": 0}, "chunk_size=0"),
        ({"chunk_size": 257}, "chunk_size=257"),
        ({"chunk_size": 32.0}, "chunk_size=32.0"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"beta": float("nan")}, "beta=nan"),
        ({"beta": -0.1}, "beta=-0.1"),
    ],
)
def test_bad_options_raise_value_error(tiny_models: dict[str, Path], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(".", r"\.")):
        Llama(str(tiny_models["tiny-mha"]), verbose=False, **kwargs)


@pytest.mark.parametrize("mode", ["cocktail", "q4", "q2"])
def test_segmented_modes_construct(tiny_models: dict[str, Path], mode: str) -> None:
    llm = Llama(str(tiny_models["tiny-mha"]), verbose=False, kv_mode=mode)
    assert llm.kv_mode == mode and llm.cocktail_plan is None and llm.kv_regions() == {}
    llm.close()


def test_missing_model_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ValueError, match="nope.gguf"):
        Llama(str(missing), verbose=False)
