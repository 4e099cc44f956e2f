"""Merges bench/plan_speed.py results (one JSON per GGUF-encoder setting, e.g. the
$OUT/plan_speed_gpu_pack<P>[_fa<on|off>].json of bench/device/plan_speed_gpu.sh) into one JSON and a
markdown table beside it.

    python bench/plan_speed_table.py bench/results/plan_speed_gpu.json IN.json [IN.json ...] [--command "..."]

Each input's settings (tokens per decode, flash attention, CPU threads, contexts) come from its records
(older inputs: from its recorded command line).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any


def settings(command: str) -> dict[str, Any]:
    """n_batch, pack_tokens and flash_attn of one plan_speed.py command line (None where not given)."""

    def value(flag: str) -> str | None:
        m = re.search(rf"{flag}[ =](\S+)", command)
        return m.group(1) if m else None

    pack, batch, fa = value("--pack-tokens"), value("--n-batch"), value("--flash-attn")
    return {
        "pack_tokens": int(pack) if pack else None,
        "n_batch": int(batch) if batch else None,
        "flash_attn": fa or "off",
    }


def merge(inputs: list[dict[str, Any]], command: str | None) -> dict[str, Any]:
    """The records of every input, each with its encoder's settings at the top level (recorded by
    plan_speed.py since it records them; else read from the input's command line)."""
    commits = sorted({doc["commit"] for doc in inputs})
    records = [
        {**settings(doc["command"]), **r, **r.get("encoder_settings", {})}
        for doc in inputs
        for r in doc["records"]
    ]
    return {
        "bench": "plan_speed",
        "commit": ",".join(commits),
        "machine": inputs[0]["machine"],
        "command": command or " ; ".join(doc["command"] for doc in inputs),
        "date": inputs[0]["date"],
        "records": records,
    }


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# plan_speed_gpu",
        "",
        f"{doc['machine']} | commit {doc['commit']} | {doc['date']}",
        "",
        f"`{doc['command']}`",
        "",
        "plan_ms: chunk detokenization, encoder tokenization, embedding, similarities, thresholds; "
        "cold = every chunk embedded, warm = cached chunk embeddings (new query). Encoder columns: medians "
        "of the same runs (ms tokenizing, in llama_decode, copying embeddings out; decodes per plan).",
        "",
        "| tokens per decode | flash attn | CPU threads | contexts | depth | cache | plan ms (median) | min "
        "| max | tokenize | decode | fetch | decodes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["records"]:
        if r["metric"] != "plan_ms":
            continue
        keys = ("encoder_tokenize_ms", "encoder_decode_ms", "encoder_fetch_ms", "encoder_n_decodes")
        enc = [r.get(k, "—") for k in keys]
        lines.append(
            f"| {r['pack_tokens']} | {r['flash_attn']} | {r.get('n_threads', '—')} "
            f"| {r.get('n_contexts', 1)} | {r['depth']} | {r['cache']} | {r['value']} "
            f"| {r['min']} | {r['max']} | {enc[0]} | {enc[1]} | {enc[2]} | {enc[3]} |"
        )
    cos = [r for r in doc["records"] if r["metric"] == "embedding_cos_vs_cpu_min"]
    if cos:
        lines += ["", "GPU vs CPU embeddings (same GGUF), min cosine over a context's chunks:"]
        lines += [
            f"- {r['pack_tokens']} tokens per decode, flash attn {r['flash_attn']}, "
            f"{r.get('n_contexts', 1)} context(s): {r['value']}"
            for r in cos
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("inputs", type=Path, nargs="+")
    p.add_argument("--command", help="the command that produced the inputs (default: their own)")
    args = p.parse_args()
    doc = merge([json.loads(path.read_text()) for path in args.inputs], args.command)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
