"""The KV-cache methods an evaluation compares, by name.

f16                     llama.cpp's own F16 cache (the reference)
f16-regions             every context chunk in our F16 region (a check: must score as f16)
q4, q2                  our formats, every context chunk (uniform)
kivi2                   KIVI-like uniform 2-bit: Q2 except the last 128 context tokens (F16 residual)
llama-q8_0, llama-q4_0  llama.cpp's quantized KV cache (flash attention), same library
cocktail[-ENC][-aA][-bB][-csN]
                        the Cocktail planner: ENC minilm (default) | bm25 | gguf | contriever,
                        alpha A (0.6), beta B (0.1), chunk size N (32)
random                  control: the plan of the first cocktail method listed (default "cocktail")
                        with its chunk precisions in a random order (same bit budget, no search)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_METHODS = (
    "f16", "q4", "q2", "kivi2", "llama-q8_0", "llama-q4_0", "cocktail", "random",
    "cocktail-bm25", "cocktail-gguf", "cocktail-a0.5", "cocktail-a0.7", "cocktail-b0.05", "cocktail-b0.2",
    "cocktail-cs8", "cocktail-cs16", "cocktail-cs64", "cocktail-cs128",
)  # fmt: skip
ENCODERS = {"minilm": "minilm", "bm25": "bm25", "gguf": "minilm-gguf", "contriever": "contriever"}
LLAMA_TYPES = {"q8_0": 8, "q4_0": 2}  # ggml_type values
KIVI_RESIDUAL = 128  # tokens KIVI keeps in full precision (its R)

_COCKTAIL = re.compile(
    r"^cocktail(?:-(?P<enc>minilm|bm25|gguf|contriever))?(?:-a(?P<a>[0-9.]+))?(?:-b(?P<b>[0-9.]+))?"
    r"(?:-cs(?P<cs>[0-9]+))?$"
)


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    """"f16" | "uniform" | "kivi2" | "llama.cpp" | "cocktail" | "random" """
    precision: str | None = None  # uniform: "q4" | "q2"
    llama_type: str | None = None  # llama.cpp: "q8_0" | "q4_0"
    encoder: str = "minilm"
    alpha: float = 0.6
    beta: float = 0.1
    chunk_size: int = 32


def parse_method(name: str) -> Method:
    if name == "f16":
        return Method(name, "f16")
    if name in ("q4", "q2"):
        return Method(name, "uniform", precision=name)
    if name == "f16-regions":
        return Method(name, "uniform", precision="f16")
    if name == "kivi2":
        return Method(name, "kivi2")
    if name == "random":
        return Method(name, "random")
    if name.startswith("llama-") and name[6:] in LLAMA_TYPES:
        return Method(name, "llama.cpp", llama_type=name[6:])
    m = _COCKTAIL.match(name)
    if m is None:
        raise ValueError(
            f"method {name!r} is not f16, f16-regions, q4, q2, kivi2, random, llama-q8_0, llama-q4_0 or "
            "cocktail[-minilm|-bm25|-gguf|-contriever][-aALPHA][-bBETA][-csCHUNK]"
        )
    alpha = float(m["a"]) if m["a"] else 0.6
    beta = float(m["b"]) if m["b"] else 0.1
    cs = int(m["cs"]) if m["cs"] else 32
    if not (0 <= alpha <= 1 and 0 <= beta <= 1 and alpha + beta <= 1 and 1 <= cs <= 256):
        raise ValueError(
            f"method {name!r}: need 0 <= alpha, beta, alpha + beta <= 1 and chunk size in 1..256"
        )
    return Method(name, "cocktail", encoder=m["enc"] or "minilm", alpha=alpha, beta=beta, chunk_size=cs)
