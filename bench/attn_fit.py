"""Splits the attention kernel's time per layer into a fixed part and a marginal rate, from a result of
bench/attn_cuda.py: for each (shape, mix, settings) the line through its two deepest points,
time = fixed + KV bytes / rate. The fixed part is what does not grow with the context (launches, the query
tables, the epilogue, the merge, the last unit's rounding); the rate is what each further byte of KV costs,
as a share of the copy bandwidth.

    python bench/attn_fit.py bench/results/attn_gqa_layouts_6a9705f.json [more results]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

SETTING_FIELDS = ("unit_order", "mha_kernel", "gqa_layout", "launch")


def fit(records: list[dict]) -> list[tuple[str, float, float, float]]:
    """(label, fixed µs, marginal GB/s, marginal share of copy) per series with at least two depths."""
    copy: dict[tuple, float] = {}
    series: dict[tuple, dict[int, tuple[float, int]]] = defaultdict(dict)
    for r in records:
        key = (r["model"], r["mix_name"], *(r.get(f, "") for f in SETTING_FIELDS))
        if r["metric"] == "attn_kernel_ms":
            series[key][r["depth"]] = (r["value"] * 1000.0, r["kv_bytes"])
        elif r["metric"] == "copy_gbps":
            copy[(*key, r["depth"])] = r["value"]
    out = []
    for key, points in series.items():
        if len(points) < 2:
            continue
        d1, d2 = sorted(points)[-2:]
        (t1, b1), (t2, b2) = points[d1], points[d2]
        if b2 == b1 or t2 <= t1:
            continue
        us_per_byte = (t2 - t1) / (b2 - b1)
        gbps = 1e-3 / us_per_byte
        label = " ".join(str(x) for x in key if x) + f" (depths {d1}, {d2})"
        out.append((label, t1 - us_per_byte * b1, gbps, gbps / copy[(*key, d2)]))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="bench/attn_cuda.py JSON results")
    args = p.parse_args()
    for path in args.results:
        doc = json.loads(path.read_text())
        if doc.get("bench") != "attn_cuda":
            raise ValueError(f"{path}: bench={doc.get('bench')!r}, not an attn_cuda result")
        print(f"{path} (commit {doc['commit']})")
        for label, fixed, gbps, share in fit(doc["records"]):
            rate = f"marginal {gbps:6.0f} GB/s = {100 * share:3.0f} % of copy"
            print(f"  {label:60s} fixed {fixed:5.1f} µs  {rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
