"""Summaries of eval records: BENCH-format JSON records, a markdown table, an accuracy-vs-KV-bytes plot."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .scoring import mean_ci95, paired_delta_ci95
from .tasks import TASKS

RETRIEVAL = ("passkey", "niah_single", "niah_multikey", "niah_multivalue")


def _by(records: Sequence[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def _paired(rows: list[dict[str, Any]], ref: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    want = {(r["task"], r["index"]): r["score"] for r in ref}
    a = [r["score"] for r in rows if (r["task"], r["index"]) in want]
    b = [want[(r["task"], r["index"])] for r in rows if (r["task"], r["index"]) in want]
    return a, b


def summarize(records: Sequence[dict[str, Any]], model: str, backend: str = "cpu") -> list[dict[str, Any]]:
    """One BENCH record per (length, task or group, method): metric "accuracy" with ci95, the paired
    difference to f16 with its bootstrap interval, and the mean KV bytes / ratio to F16."""
    out = []
    for (length,), rows_l in sorted(_by(records, "length").items()):
        tasks_here = [t for t in TASKS if any(r["task"] == t for r in rows_l)]
        groups: dict[str, tuple[str, ...]] = {t: (t,) for t in tasks_here}
        if any(t in RETRIEVAL for t in tasks_here):
            groups["retrieval"] = tuple(t for t in tasks_here if t in RETRIEVAL)
        groups["all"] = tuple(tasks_here)
        by_method = _by(rows_l, "method")
        ref_all = by_method.get(("f16",), [])
        for group, members in groups.items():
            for (method,), rows_m in by_method.items():
                rows = [r for r in rows_m if r["task"] in members]
                if not rows:
                    continue
                mean, ci = mean_ci95([r["score"] for r in rows])
                rec: dict[str, Any] = {
                    "model": model, "backend": backend, "kv_mode": method, "impl": "llama.cpp"
                    if method.startswith("llama-") or method == "f16" else "ours",
                    "mix": _mix(rows), "depth": length, "task": group, "metric": "accuracy",
                    "value": mean, "ci95": ci, "n_samples": len(rows),
                    "kv_bytes": float(np.mean([r["kv_bytes"] for r in rows])),
                    "kv_ratio": float(np.mean([r["kv_ratio"] for r in rows])),
                }  # fmt: skip
                if "em" in rows[0]:
                    rec["em"] = float(np.mean([r["em"] for r in rows]))
                if method != "f16" and ref_all:
                    a, b = _paired(rows, [r for r in ref_all if r["task"] in members])
                    d, lo, hi = paired_delta_ci95(a, b)
                    rec.update(delta_vs_f16=d, delta_ci95=[lo, hi])
                plan_s = [r["plan_s"] for r in rows if r.get("plan_s") is not None]
                if plan_s:
                    rec["plan_s"] = float(np.mean(plan_s))
                out.append(rec)
    return out


def _mix(rows: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    counts = [r["counts"] for r in rows if r.get("counts")]
    if not counts:
        return None
    total = sum(sum(c.values()) for c in counts)
    return {p: round(sum(c[p] for c in counts) / total, 4) for p in ("f16", "q4", "q2")} if total else None


def summarize_perplexity(records: Sequence[dict[str, Any]], model: str, window: int) -> list[dict[str, Any]]:
    out = []
    by_method = _by(records, "method")
    ref = {r["window"]: r["nll"] for r in by_method.get(("f16",), [])}
    for (method,), rows in by_method.items():
        nll = float(np.mean([r["nll"] for r in rows]))
        rec: dict[str, Any] = {
            "model": model, "backend": "cpu", "kv_mode": method,
            "impl": "llama.cpp" if method.startswith("llama-") or method == "f16" else "ours",
            "mix": None, "depth": window, "task": "perplexity", "metric": "perplexity",
            "value": math.exp(nll),
            "n_samples": len(rows), "n_scored_tokens": int(sum(r["n_scored"] for r in rows)),
            "kv_ratio": float(np.mean([r["kv_ratio"] for r in rows])),
        }  # fmt: skip
        if ref and method != "f16":
            d = [r["nll"] - ref[r["window"]] for r in rows if r["window"] in ref]
            rel = math.exp(float(np.mean(d))) - 1
            _, lo, hi = paired_delta_ci95(d, [0.0] * len(d))
            rec.update(rel_vs_f16=rel, rel_ci95=[math.exp(lo) - 1, math.exp(hi) - 1])
        out.append(rec)
    return out


def _fmt(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "—"
    return (
        f"{100 * rec['value']:.1f} ± {100 * rec['ci95']:.1f}"
        if math.isfinite(rec["ci95"])
        else f"{100 * rec['value']:.1f}"
    )


def markdown(summary: Sequence[dict[str, Any]], ppl: Sequence[dict[str, Any]] = ()) -> str:
    """Per context length: methods × tasks (score in %, ± the 95 % interval), KV bytes vs F16, Δ retrieval."""
    lines = []
    for length in sorted({r["depth"] for r in summary}):
        rows = [r for r in summary if r["depth"] == length]
        tasks = [t for t in (*TASKS, "retrieval", "all") if any(r["task"] == t for r in rows)]
        methods = list(dict.fromkeys(r["kv_mode"] for r in rows))
        idx = {(r["kv_mode"], r["task"]): r for r in rows}
        n = max(r["n_samples"] for r in rows if r["task"] not in ("retrieval", "all"))
        lines += [f"### Context ~{length} tokens, {n} samples per task (score %, ± 95 % interval)", ""]
        lines.append(
            "| method | KV bytes vs F16 | " + " | ".join(tasks) + " | Δ retrieval vs f16 (95 % CI) |"
        )
        lines.append("|---" * (len(tasks) + 3) + "|")
        for m in methods:
            # KV bytes over every sample of the method (the "all" group), not one task's
            any_rec = idx.get((m, "all")) or next(r for r in rows if r["kv_mode"] == m)
            ret = idx.get((m, "retrieval"))
            delta = "—"
            if ret is not None and "delta_vs_f16" in ret:
                lo, hi = ret["delta_ci95"]
                delta = f"{100 * ret['delta_vs_f16']:+.1f} ({100 * lo:+.1f}, {100 * hi:+.1f})"
            cells = " | ".join(_fmt(idx.get((m, t))) for t in tasks)
            lines.append(f"| {m} | {any_rec['kv_ratio']:.3f} | {cells} | {delta} |")
        lines.append("")
    if ppl:
        window = ppl[0]["depth"]
        lines += [
            f"### Perplexity, {ppl[0]['n_samples']} windows of {window} tokens (second half scored)",
            "",
        ]
        lines += ["| method | KV bytes vs F16 | perplexity | vs f16 (95 % CI) |", "|---|---|---|---|"]
        for r in ppl:
            rel = "—"
            if "rel_vs_f16" in r:
                lo, hi = r["rel_ci95"]
                rel = f"{100 * r['rel_vs_f16']:+.2f} % ({100 * lo:+.2f}, {100 * hi:+.2f})"
            lines.append(f"| {r['kv_mode']} | {r['kv_ratio']:.3f} | {r['value']:.3f} | {rel} |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: Sequence[dict[str, Any]], path: Path, group: str = "retrieval") -> Path | None:
    """Accuracy of ``group`` vs KV bytes relative to F16, one point per method and context length."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in summary if r["task"] == group]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for length in sorted({r["depth"] for r in rows}):
        sub = [r for r in rows if r["depth"] == length]
        ax.errorbar(
            [r["kv_ratio"] for r in sub], [100 * r["value"] for r in sub],
            yerr=[100 * r["ci95"] for r in sub], fmt="o", capsize=3, label=f"~{length} tokens",
        )  # fmt: skip
        for r in sub:
            ax.annotate(r["kv_mode"], (r["kv_ratio"], 100 * r["value"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    ax.axvline(0.33, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("context KV bytes / F16 (full-attention layers)")
    ax.set_ylabel(f"{group} accuracy (%)")
    ax.set_title("Accuracy vs KV bytes")
    ax.legend()
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
