"""The segmented cache with the KV cache in GPU memory (CUDA build, a GPU): regions on the device, attention
by ggml's CUDA backend through our op (ggml_patches/0005), against the same plan run on the CPU in one build.

Bound: the CPU run (n_gpu_layers=0) and the GPU run differ in summation order and in cuBLAS vs CPU matmul
rounding, not in the regions (the GPU pack writes the CPU pack's bytes, tests/test_pack_cuda.py). Greedy
tokens must agree up to the first step whose top-2 logit margin is within the logit tolerance (a near-tie
may flip), and logits at the steps before agree within LOGIT_TOL relative to their spread.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cuda_env import needs_cuda

from cocktail_gguf import Llama
from cocktail_gguf.plan import Plan

CHUNK = 16
N_CTX = 2048
MAX_TOKENS = 12
LOGIT_TOL = 0.02  # max |logit difference| / std(logits)


pytestmark = needs_cuda


def _words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(
        "".join(rng.choice("etaoinshrdlucmfw") for _ in range(rng.randint(2, 6))) for _ in range(n)
    )


CONTEXT = _words(400, 5)
QUERY = " what is the key? answer:"


def _llm(path: Path, n_gpu_layers: int, kv_mode: str = "cocktail", chunk: int = CHUNK, **kw: Any) -> Llama:
    return Llama(
        str(path),
        n_ctx=N_CTX,
        verbose=False,
        kv_mode=kv_mode,
        chunk_size=chunk,
        n_gpu_layers=n_gpu_layers,
        flash_attn=True,
        **kw,
    )


def _plan(llm: Llama, context: str, kind: str, seed: int = 0, chunk: int = CHUNK) -> Plan:
    n = len(llm.tokenize(context.encode(), add_bos=False, special=False))
    if kind == "mixed":
        rng = random.Random(seed)
        return Plan(chunk, tuple(rng.choice(("f16", "q4", "q2", "q2")) for _ in range(n // chunk)), n)
    return Plan.uniform(n, chunk, kind)


def _step_error(cpu_logits: np.ndarray, gpu_logits: np.ndarray, i: int) -> float:
    """max |logit difference| / std(logits) at step i."""
    return float(np.max(np.abs(cpu_logits[i] - gpu_logits[i]))) / float(np.std(cpu_logits[i]))


def _agree(
    cpu_tokens: list[int],
    cpu_logits: np.ndarray,
    gpu_tokens: list[int],
    gpu_logits: np.ndarray,
    tol: float = LOGIT_TOL,
) -> None:
    for i, (a, b) in enumerate(zip(cpu_tokens, gpu_tokens, strict=False)):
        err = _step_error(cpu_logits, gpu_logits, i)
        assert err < tol, f"step {i}: logits differ by {err:.4f} x std"
        if a != b:
            top2 = np.sort(cpu_logits[i])[-2:]
            margin = (top2[1] - top2[0]) / float(np.std(cpu_logits[i]))
            assert margin < 2 * tol, f"step {i}: token {a} vs {b} with a clear margin"
            return
    assert len(cpu_tokens) == len(gpu_tokens)


def _divergence(cpu_logits: np.ndarray, gpu_logits: np.ndarray, n: int) -> float:
    """Max of `_step_error` over the first n steps."""
    return max(_step_error(cpu_logits, gpu_logits, i) for i in range(n))


@pytest.mark.parametrize("kind", ["mixed", "q2", "q4", "f16"])
@pytest.mark.parametrize("shape", ["tiny-mha", "tiny-gqa"])
def test_gpu_regions_match_the_cpu_op(tiny_models: dict[str, Path], shape: str, kind: str) -> None:
    cpu = _llm(tiny_models[shape], 0)
    plan = _plan(cpu, CONTEXT, kind, seed=len(kind))
    ref = cpu.ask(CONTEXT, QUERY, plan=plan, max_tokens=MAX_TOKENS, ignore_eos=True, return_logits=True)
    cpu.close()
    gpu = _llm(tiny_models[shape], -1)
    got = gpu.ask(CONTEXT, QUERY, plan=plan, max_tokens=MAX_TOKENS, ignore_eos=True, return_logits=True)
    regions = gpu.kv_regions()
    gpu.close()
    assert ref.logits is not None and got.logits is not None
    _agree(ref.tokens, ref.logits, got.tokens, got.logits)
    # the regions are the plan's, byte for byte the sizes of the CPU run's
    assert sum(r.total_bytes for r in regions.values()) > 0


def test_gemma_on_the_gpu_matches_the_cpu(gemma_path: Path) -> None:
    """The real model, gemma-3-270m (Q4_K_M, iSWA: the full-attention layers segmented, the sliding-window
    layers as llama.cpp keeps them), a mixed plan: greedy tokens and logits of the GPU against the CPU build.
    Its quantized matmuls round differently on the two backends, so the bound is llama.cpp's own CPU-vs-GPU
    divergence with its F16 cache on the same prompt (twice that, at least LOGIT_TOL)."""

    def ask(n_gpu_layers: int, kv_mode: str, plan: Plan | None) -> Any:
        llm = _llm(gemma_path, n_gpu_layers, kv_mode=kv_mode, chunk=32)
        try:
            if plan is None and kv_mode == "cocktail":
                plan = _plan(llm, CONTEXT, "mixed", seed=3, chunk=32)
            answer = llm.ask(
                CONTEXT, QUERY, plan=plan, max_tokens=MAX_TOKENS, ignore_eos=True, return_logits=True
            )
            assert answer.logits is not None
            return answer, plan
        finally:
            llm.close()

    (base_cpu, _), (base_gpu, _) = ask(0, "f16", None), ask(-1, "f16", None)
    # the steps up to the first token where llama.cpp's own backends part (that step included)
    pairs = list(zip(base_cpu.tokens, base_gpu.tokens, strict=False))
    same = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs) - 1)
    backend = _divergence(base_cpu.logits, base_gpu.logits, same + 1)
    ref, plan = ask(0, "cocktail", None)
    got, _ = ask(-1, "cocktail", plan)
    assert plan is not None and set(plan.precisions) == {"f16", "q4", "q2"}
    _agree(ref.tokens, ref.logits, got.tokens, got.logits, tol=max(LOGIT_TOL, 2 * backend))


def test_gpu_batch_of_sequences_equals_one_at_a_time(tiny_models: dict[str, Path]) -> None:
    contexts = [_words(300, 1), _words(170, 2), _words(240, 3)]
    queries = [" what is the key? answer:", " and then what", " tell me more:"]
    single = _llm(tiny_models["tiny-gqa"], -1)
    plans = [
        _plan(single, c, k, seed=i)
        for i, (c, k) in enumerate(zip(contexts, ["mixed", "f16", "q2"], strict=True))
    ]
    ref = [
        single.ask(c, q, plan=p, max_tokens=MAX_TOKENS, ignore_eos=True).tokens
        for c, q, p in zip(contexts, queries, plans, strict=True)
    ]
    single.close()
    batch = _llm(tiny_models["tiny-gqa"], -1, n_seq_max=3)
    got = batch.ask_batch(contexts, queries, plans, max_tokens=MAX_TOKENS, ignore_eos=True)
    batch.close()
    assert [a.tokens for a in got] == ref


def test_gpu_model_loads_with_numpy_imported_first(
    tiny_models: dict[str, Path], child_env: dict[str, str]
) -> None:
    """numpy before cocktail_gguf leaves libstdc++ out of the global symbol scope: libggml-cuda must not
    export its copies of libstdc++'s template instances (CMakeLists.txt), or model loading crashes."""
    from children import CHILD_CWD

    code = (
        "import numpy, sys; from cocktail_gguf import Llama; "
        f"llm = Llama({str(tiny_models['tiny-mha'])!r}, n_gpu_layers=-1, n_ctx=256, verbose=True); "
        "print('loaded', llm.n_vocab())"
    )
    cmd = [sys.executable, "-c", code]
    done = subprocess.run(cmd, cwd=CHILD_CWD, env=child_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "loaded 512" in done.stdout
