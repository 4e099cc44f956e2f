"""Standard scoring of the tasks and their intervals."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(task: str, output: str, answers: Sequence[str]) -> dict[str, float]:
    """{"score": main metric in [0, 1], plus "em" for qa}."""
    if task == "qa":
        answer = first_line(output).rstrip(".")
        return {
            "score": max(f1(answer, a) for a in answers),
            "em": max(exact_match(answer, a) for a in answers),
        }
    found = [a.lower() in output.lower() for a in answers]
    return {"score": sum(found) / len(found)}


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % interval: Wilson for 0/1 scores, t-based otherwise."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        return math.nan, math.nan
    m = float(x.mean())
    if np.isin(x, (0.0, 1.0)).all():
        z = 1.959964
        centre = (m + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(m * (1 - m) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return m, max(abs(centre + half - m), abs(m - (centre - half)))
    if n < 2:
        return m, math.nan
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 8: 2.36, 10: 2.26, 15: 2.14, 20: 2.09, 30: 2.05}
    crit = t[min((k for k in t if k >= n), default=30)] if n <= 30 else 1.96
    return m, crit * float(x.std(ddof=1)) / math.sqrt(n)


def paired_delta_ci95(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a - b over paired samples and its 95 % bootstrap interval (low, high)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    return float(d.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))
