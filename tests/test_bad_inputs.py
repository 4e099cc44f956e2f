"""Bad inputs get a Python exception naming the bad value, never a crash.

Already covered elsewhere (not repeated here): kv_mode / chunk_size / alpha / beta out of range
(test_generate.py, test_planner.py), a missing model file (test_generate.py), an empty query, a plan for
a 5-token context and max_tokens past n_ctx in ask() (test_cocktail_e2e.py), unknown encoder specs given
to get_encoder (test_encoders.py), bad set_plan arguments at the C API (test_cocktail_e2e.py,
test_capi_sequences.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cocktail_gguf import Llama
from cocktail_gguf.plan import Plan

pytestmark = pytest.mark.skipif(
    os.environ.get("COCKTAIL_TEST_N_GPU_LAYERS", "0") != "0", reason="segmented cache v1: CPU only"
)

CONTEXT = " ".join(["alpha beta gamma delta"] * 8)
QUERY = " what comes after beta?"

# Loads each file in a child process (llama.cpp may abort on a broken file: the parent must survive that)
# and reports, per file, the exception type and message, or "loaded".
_LOADER = textwrap.dedent(
    """
    import json, sys
    from cocktail_gguf import Llama
    results = {}
    for path in sys.argv[2:]:
        try:
            Llama(path, verbose=False, kv_mode=sys.argv[1]).close()
            results[path] = ["loaded", ""]
        except Exception as exc:
            results[path] = [type(exc).__name__, str(exc)]
        print(json.dumps({path: results[path]}), flush=True)
    print("RESULTS " + json.dumps(results))
    """
)


def _malformed_files(valid: Path, out: Path) -> dict[str, Path]:
    """Broken variants of a valid tiny GGUF: empty, random bytes, a GGUF magic and version followed by
    garbage, and the file cut inside its header, its metadata, its tensor table and its tensor data."""
    import numpy as np

    data = valid.read_bytes()
    rng = np.random.default_rng(8)
    files = {
        "empty": b"",
        "random": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "magic-then-garbage": data[:8] + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "huge-counts": data[:8] + (2**62).to_bytes(8, "little") + (2**62).to_bytes(8, "little") + data[24:],
    }
    for cut in (6, 30, 300, 3000, len(data) // 3, len(data) - 64):
        files[f"cut-at-{cut}"] = data[:cut]
    paths = {}
    for name, blob in files.items():
        p = out / f"{name}.gguf"
        p.write_bytes(blob)
        paths[name] = p
    return paths


@pytest.mark.parametrize("kv_mode", ["f16", "cocktail"])
def test_malformed_gguf_raises_in_a_clean_process(
    tiny_models: dict[str, Path], tmp_path: Path, child_env: dict[str, str], kv_mode: str
) -> None:
    files = _malformed_files(tiny_models["tiny-mha"], tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, kv_mode, *map(str, files.values())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=child_env,
    )
    died = f"the loader process died ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, died
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS "))
    results = json.loads(line.removeprefix("RESULTS "))
    for name, path in files.items():
        kind, message = results[str(path)]
        assert kind == "ValueError", f"{name}: {kind} {message}"
        assert str(path) in message, f"{name}: {message!r} does not name the file"
        why = "not a GGUF file" if path.stat().st_size < 4 or name == "random" else "llama.cpp could not load"
        assert why in message, f"{name}: {message!r} does not say {why!r}"


def test_missing_encoder_path_is_named_at_construction(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-encoder.gguf"
    with pytest.raises(ValueError, match="no-such-encoder.gguf"):
        Llama(str(tiny_models["tiny-mha"]), verbose=False, kv_mode="cocktail", encoder=str(missing))
    with pytest.raises(ValueError, match="no-such-encoder.gguf"):
        Llama(str(tiny_models["tiny-mha"]), verbose=False, kv_mode="cocktail", encoder=missing)
    with pytest.raises(ValueError, match="encoder=42"):
        Llama(str(tiny_models["tiny-mha"]), verbose=False, kv_mode="cocktail", encoder=42)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"kv_mode": "Q4"}, "kv_mode='Q4'"),
        ({"chunk_size": True}, "chunk_size=True"),
        ({"chunk_size": -32}, "chunk_size=-32"),
        ({"chunk_size": "32"}, "chunk_size='32'"),
        ({"alpha": "0.5"}, "alpha='0.5'"),
        ({"alpha": 0.7, "beta": 0.4}, r"alpha=0.7 \+ beta=0.4"),
        ({"beta": float("inf")}, "beta=inf"),
    ],
)
def test_bad_options_more(tiny_models: dict[str, Path], kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Llama(str(tiny_models["tiny-mha"]), verbose=False, **kwargs)


@pytest.fixture(scope="module")
def llm(tiny_models: dict[str, Path]) -> Llama:
    return Llama(str(tiny_models["tiny-gqa"]), n_ctx=256, verbose=False, kv_mode="cocktail", chunk_size=16)


def _n_context_tokens(llm: Llama, context: str = CONTEXT) -> int:
    return len(llm.tokenize(context.encode(), add_bos=False, special=False))


def test_context_longer_than_n_ctx(llm: Llama, tiny_models: dict[str, Path]) -> None:
    long_context = " ".join(["alpha beta gamma delta"] * 200)
    n = _n_context_tokens(llm, long_context)
    assert n > 256
    with pytest.raises(ValueError, match=r"prompt tokens \+ max_tokens=0 do not fit n_ctx=256"):
        llm.ask(long_context, QUERY, plan=Plan.uniform(n, 16, "q4"), max_tokens=0)
    f16 = Llama(str(tiny_models["tiny-gqa"]), n_ctx=256, verbose=False)
    with pytest.raises(ValueError, match="do not fit n_ctx=256"):
        f16.ask(long_context, QUERY, max_tokens=0)
    f16.close()


@pytest.mark.parametrize(
    ("make_plan", "named"),
    [
        # same number of 16-token chunks, one token more or less: still the wrong context
        (lambda n: Plan.uniform(n + 1, 16, "q4"), "plan.n_context_tokens={n1} but the context has {n} "),
        (lambda n: Plan.uniform(n - 1, 16, "q4"), "plan.n_context_tokens={n_1} but the context has {n} "),
        (lambda n: Plan.uniform(n, 300, "q4"), "plan.chunk_size=300"),
        (lambda n: "q4", "plan='q4' is not a cocktail_gguf Plan"),
    ],
)
def test_plan_that_does_not_fit(llm: Llama, make_plan: object, named: str) -> None:
    n = _n_context_tokens(llm)
    with pytest.raises(ValueError, match=named.format(n=n, n1=n + 1, n_1=n - 1)):
        llm.ask(CONTEXT, QUERY, plan=make_plan(n), max_tokens=2)  # type: ignore[operator]
    # the context is still usable
    assert llm.ask(CONTEXT, QUERY, plan=Plan.uniform(n, 16, "q2"), max_tokens=2).n_prompt_tokens > n


def test_plan_with_kv_mode_f16(tiny_models: dict[str, Path]) -> None:
    f16 = Llama(str(tiny_models["tiny-gqa"]), n_ctx=256, verbose=False, kv_mode="f16")
    n = _n_context_tokens(f16)
    with pytest.raises(ValueError, match="plan given with kv_mode='f16'"):
        f16.ask(CONTEXT, QUERY, plan=Plan.uniform(n, 16, "q4"), max_tokens=2)
    f16.close()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"context": b"bytes"}, "context=b'bytes' must be a string"),
        ({"context": None}, "context=None must be a string"),
        ({"query": None}, "query=None must be a non-empty string"),
        ({"query": "   "}, "query='   ' must be a non-empty string"),
        ({"max_tokens": -1}, "max_tokens=-1"),
        ({"max_tokens": 2.0}, "max_tokens=2.0"),
        ({"max_tokens": True}, "max_tokens=True"),
        ({"stop": 5}, "stop=5"),
        ({"stop": ["ok", 7]}, r"stop=\['ok', 7\]"),
    ],
)
def test_bad_ask_arguments(llm: Llama, kwargs: dict, named: str) -> None:
    args = {"context": CONTEXT, "query": QUERY, "max_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=named):
        llm.ask(**args)
