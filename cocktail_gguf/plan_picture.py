"""Pictures of a `Plan` (like the paper's Fig. 1 / Fig. 3): the context coloured by chunk precision
(self-contained HTML) and the similarity of each chunk with both thresholds (PNG, matplotlib)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .plan import BITS_PER_ELEMENT, PRECISIONS

if TYPE_CHECKING:
    from .plan import Plan

COLOURS: dict[str, str] = {"f16": "#2e7d32", "q4": "#f9a825", "q2": "#c62828", "tail": "#607d8b"}
"""Precision colours, shared by the HTML page and the plot (F16 green, Q4 amber, Q2 red, tail grey)."""
_BACKGROUNDS: dict[str, str] = {"f16": "#c8e6c9", "q4": "#fff3c4", "q2": "#ffcdd2", "tail": "#eceff1"}
_LABELS: dict[str, str] = {"f16": "F16", "q4": "Q4", "q2": "Q2"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.3em; margin-bottom: 0.2em; }
.meta { color: #555; font-size: 0.9em; margin: 0.2em 0; }
.legend { display: flex; gap: 1.2em; flex-wrap: wrap; margin: 1em 0; font-size: 0.95em; }
.legend span.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: -0.15em;
  margin-right: 0.35em; border-radius: 3px; }
.context { white-space: pre-wrap; line-height: 1.7; font-family: ui-monospace, monospace;
  font-size: 0.85em; border: 1px solid #ddd; padding: 1em; border-radius: 6px; }
.context span { border-radius: 2px; padding: 0.05em 0; }
.f16 { background: #c8e6c9; } .q4 { background: #fff3c4; } .q2 { background: #ffcdd2; }
.tail { background: #eceff1; outline: 1px dashed #607d8b; }
.cells { display: flex; flex-wrap: wrap; gap: 2px; }
.cells span { display: inline-block; width: 0.9em; height: 0.9em; }
"""


def _legend(plan: Plan) -> str:
    counts = plan.counts
    n = max(plan.n_chunks, 1)
    items = []
    for p in PRECISIONS:
        items.append(
            f'<div><span class="swatch" style="background:{_BACKGROUNDS[p]};'
            f'border:1px solid {COLOURS[p]}"></span>'
            f"{_LABELS[p]} ({BITS_PER_ELEMENT[p]:g} bits): <b>{counts[p]}</b> chunks "
            f"({100.0 * counts[p] / n:.1f} %)</div>"
        )
    items.append(
        f'<div><span class="swatch" style="background:{_BACKGROUNDS["tail"]};'
        f'border:1px dashed {COLOURS["tail"]}">'
        f"</span>tail (F16, not planned): <b>{plan.n_tail_tokens}</b> tokens</div>"
    )
    return '<div class="legend">' + "".join(items) + "</div>"


def _chunk_title(plan: Plan, i: int) -> str:
    start, end = plan.chunk_token_range(i)
    title = f"chunk {i}, tokens {start}-{end - 1}, {_LABELS[plan.precisions[i]]}"
    if plan.similarities is not None:
        title += f", similarity {plan.similarities[i]:.4f}"
    return html.escape(title, quote=True)


def plan_html(plan: Plan, texts: Sequence[str] | None = None, title: str | None = None) -> str:
    """A self-contained HTML page: header (query, encoder, thresholds), legend with counts, and the
    context with each chunk's text on its precision's colour (hover: index, tokens, similarity).
    ``texts`` (one per chunk) overrides the plan's own ``chunk_texts``; without either, each chunk
    is drawn as a coloured cell."""
    chunk_texts = list(texts) if texts is not None else (list(plan.chunk_texts) if plan.chunk_texts else None)
    if chunk_texts is not None and len(chunk_texts) != plan.n_chunks:
        raise ValueError(f"{len(chunk_texts)} texts for a plan of {plan.n_chunks} chunks")
    heading = html.escape(title or "Cocktail KV plan")
    meta = [
        f"{plan.n_context_tokens} context tokens = {plan.n_chunks} chunks x {plan.chunk_size} "
        f"+ {plan.n_tail_tokens} tail; {plan.bits_per_element:.2f} bits/element over the chunks, "
        f"{plan.context_bits_per_element:.2f} over the context"
    ]
    if plan.query is not None:
        meta.insert(0, f"query: <b>{html.escape(plan.query)}</b>")
    if plan.encoder:
        meta.append(f"encoder: {html.escape(plan.encoder)}")
    if plan.thresholds is not None:
        t = plan.thresholds
        meta.append(
            f"similarity range [{t.s_min:.4f}, {t.s_max:.4f}]; alpha {t.alpha:g} → T_low {t.t_low:.4f}; "
            f"beta {t.beta:g} → T_high {t.t_high:.4f}; s &gt; T_high → F16, s &lt; T_low → Q2, else Q4"
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{heading}</title><style>{_CSS}</style></head><body>",
        f"<h1>{heading}</h1>",
        *(f'<p class="meta">{m}</p>' for m in meta),
        _legend(plan),
    ]
    if chunk_texts is not None:
        spans = [
            f'<span class="{p}" title="{_chunk_title(plan, i)}">{html.escape(text)}</span>'
            for i, (p, text) in enumerate(zip(plan.precisions, chunk_texts, strict=True))
        ]
        tail_text = plan.tail_text if texts is None else None
        if tail_text:
            spans.append(f'<span class="tail" title="tail (F16)">{html.escape(tail_text)}</span>')
        parts.append('<div class="context">' + "".join(spans) + "</div>")
    else:
        cells = [
            f'<span class="{p}" title="{_chunk_title(plan, i)}"></span>'
            for i, p in enumerate(plan.precisions)
        ]
        if plan.n_tail_tokens:
            cells.append('<span class="tail" title="tail (F16)"></span>')
        parts.append('<div class="cells">' + "".join(cells) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def save_similarity_png(plan: Plan, path: str | Path, title: str | None = None) -> Path:
    """Similarity per chunk (dots coloured by precision) with T_low and T_high, as a PNG."""
    if plan.similarities is None or plan.thresholds is None:
        raise ValueError(
            "this plan has no similarities/thresholds (made by hand, or no full chunk): nothing to plot"
        )
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("the similarity plot needs matplotlib: `pip install matplotlib`") from exc
    t = plan.thresholds
    fig = Figure(figsize=(10, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(plan.n_chunks))
    ax.plot(x, plan.similarities, color="#9e9e9e", linewidth=0.8, zorder=1)
    for p in PRECISIONS:
        idx = [i for i in x if plan.precisions[i] == p]
        ax.scatter(
            idx,
            [plan.similarities[i] for i in idx],
            s=14,
            color=COLOURS[p],
            label=f"{_LABELS[p]} ({len(idx)})",
            zorder=2,
        )
    ax.axhline(
        t.t_high, color=COLOURS["f16"], linestyle="--", linewidth=1.0, label=f"T_high = {t.t_high:.3f}"
    )
    ax.axhline(t.t_low, color=COLOURS["q2"], linestyle="--", linewidth=1.0, label=f"T_low = {t.t_low:.3f}")
    ax.set_xlabel(f"chunk ({plan.chunk_size} tokens each)")
    ax.set_ylabel("similarity to the query")
    head = title or (f"query: {plan.query}" if plan.query else "Cocktail KV plan")
    ax.set_title(head if len(head) <= 90 else head[:87] + "...", fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.set_xlim(-0.5, max(plan.n_chunks - 0.5, 0.5))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(str(out), format="png")
    return out
