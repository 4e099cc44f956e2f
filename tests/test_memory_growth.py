"""Repeated ask() in kv_mode="cocktail" does not grow the process: regions, plans, staging and Python objects
of one ask are released (or reused) by the next.

Three readings after a warm-up of WARMUP asks (allocator arenas, graph and compute buffers, llama-cpp-python's
sampler and token buffers reach their steady size) and again after ASKS more, each after gc.collect():
- bytes live in glibc malloc (mallinfo2: in-use heap chunks + mapped blocks). Every C/C++ allocation of ggml,
  llama.cpp and our native code, numpy's buffers and CPython's objects over 512 B go through it. Exact: it
  moves by < 0.05 MiB over 200 asks. Slack 1 MiB: a leak of >= 5 KiB per ask fails.
- CPython's allocated blocks (sys.getallocatedblocks): objects of any size. It moves by < 10 blocks over 200
  asks. Slack 100: one leaked object per ask fails.
- resident set size (/proc/self/statm, after malloc_trim(0)): memory outside malloc, e.g. a direct mmap. RSS
  carries allocator noise: after big numpy arrays have come and gone in the process (as the rest of the suite
  does) it swung by up to 8 MiB from one reading to the next (CI once failed a 4 MiB RSS bound at +6.8 MiB),
  because which freed heap pages get touched again depends on where re-made buffers land. Two sources are
  pinned first (_steady_allocator): glibc's moving mmap threshold (it rises each time a mapped block is freed,
  so ggml's buffers, freed and re-made by every ask's staging release, land in the heap after earlier tests
  freed big numpy arrays) and transparent huge pages (numpy madvises arrays >= 4 MiB; khugepaged collapses
  2 MiB at a time whenever it runs). Pinned, readings still moved by -2.2..+6.6 MiB while malloc's live bytes
  stayed flat to 0.02 MiB; slack 24 MiB, so RSS only catches leaks of >= 120 KiB per ask that bypass malloc.

Each ask here allocates 288 KiB of regions (2 layers, ~550 context tokens planned F16/Q4/Q2, K + V) besides
staging, logits and token lists: leaking the regions every time grows malloc's live bytes by ~56 MiB.
One thread: under a busy 2-core machine ggml's spinning thread barriers make 2-thread prefills ~10x slower,
and memory does not depend on it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cocktail_gguf import Llama
from cocktail_gguf.plan import Plan

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallinfo2 and /proc/self/statm"),
    pytest.mark.skipif(
        os.environ.get("COCKTAIL_TEST_N_GPU_LAYERS", "0") != "0", reason="segmented cache v1: CPU only"
    ),
]

WARMUP = 10
ASKS = 200
SLACK_MALLOC_BYTES = 1 << 20
SLACK_PY_BLOCKS = 100
SLACK_RSS_BYTES = 24 << 20
CHUNK = 16

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


@dataclass(frozen=True)
class _Reading:
    malloc_bytes: int
    py_blocks: int
    rss_bytes: int


def _read() -> _Reading:
    gc.collect()
    _LIBC.mallinfo2.restype = _MallInfo2
    info = _LIBC.mallinfo2()
    py_blocks = sys.getallocatedblocks()
    _LIBC.malloc_trim(0)
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return _Reading(info.uordblks + info.hblkhd, py_blocks, resident_pages * os.sysconf("SC_PAGE_SIZE"))


def _steady_allocator() -> None:
    """Fixed glibc mmap threshold, no transparent huge pages for this process (see the module docstring)."""
    m_mmap_threshold, pr_set_thp_disable = -3, 41
    assert _LIBC.mallopt(m_mmap_threshold, 128 << 10) == 1
    _LIBC.prctl(pr_set_thp_disable, 1, 0, 0, 0)  # may fail on old kernels: RSS is then just noisier


def _context(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkq"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(n_words))


def test_no_rss_growth_over_repeated_asks(tiny_models: dict[str, Path]) -> None:
    _steady_allocator()
    llm = Llama(
        str(tiny_models["tiny-mha"]),
        n_ctx=1024,
        verbose=False,
        kv_mode="cocktail",
        chunk_size=CHUNK,
        n_threads=1,
        n_threads_batch=1,
    )
    contexts = [_context(150, seed) for seed in range(3)]
    plans = []
    for i, context in enumerate(contexts):
        n = len(llm.tokenize(context.encode(), add_bos=False, special=False))
        # a different mix per context: regions of every size come and go
        plans.append(Plan(CHUNK, tuple(("f16", "q4", "q2")[(j + i) % 3] for j in range(n // CHUNK)), n))

    def ask(i: int) -> None:
        k = i % len(contexts)
        ans = llm.ask(contexts[k], " the key?", plan=plans[k], max_tokens=8, return_logits=True)
        assert len(ans.tokens) > 0 and ans.plan is plans[k]

    for i in range(WARMUP):
        ask(i)
    before = _read()
    for i in range(ASKS):
        ask(i)
    after = _read()
    assert sum(r.total_bytes for r in llm.kv_regions().values()) > 0
    llm.close()
    grew = f"over {ASKS} asks ({before} -> {after})"
    assert after.malloc_bytes - before.malloc_bytes <= SLACK_MALLOC_BYTES, f"malloc's live bytes grew {grew}"
    assert after.py_blocks - before.py_blocks <= SLACK_PY_BLOCKS, f"Python's allocated blocks grew {grew}"
    assert after.rss_bytes - before.rss_bytes <= SLACK_RSS_BYTES, f"RSS grew {grew}"
