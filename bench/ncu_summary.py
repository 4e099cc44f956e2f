"""Kernel time per decode step from an Nsight Compute CSV (--csv --page raw, metric gpu__time_duration.sum).

    python bench/ncu_summary.py ncu_step_f16.csv [--step-kernel get_rows] [--top 25]

The window ncu profiled (--launch-skip / --launch-count) holds several decode steps; a step is counted by a
kernel launched a known number of times per step (--step-kernel, --per-step; e.g. `rms_norm` 65 times in a
32-layer Llama). Prints a markdown table of
kernels (count per step, µs per step, µs per launch) and the total kernel time per step.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

UNIT_US = {
    "nsecond": 1e-3,
    "ns": 1e-3,
    "usecond": 1.0,
    "us": 1.0,
    "msecond": 1e3,
    "ms": 1e3,
    "second": 1e6,
    "s": 1e6,
}


def read_rows(path: Path) -> list[tuple[str, float]]:
    """(kernel name, duration in µs) of every profiled launch, in launch order."""
    lines = path.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise ValueError(f"{path}: no ncu CSV header (a line starting with '\"ID\"')")
    reader = csv.reader(lines[start:])
    header = next(reader)
    units = next(reader)
    name_col, time_col = header.index("Kernel Name"), header.index("gpu__time_duration.sum")
    scale = UNIT_US.get(units[time_col])
    if scale is None:
        raise ValueError(f"{path}: unknown time unit {units[time_col]!r}")
    rows = []
    for row in reader:
        if len(row) > time_col and row[time_col]:
            rows.append((row[name_col], float(row[time_col].replace(",", "")) * scale))
    return rows


def short(name: str) -> str:
    """The kernel's function name with template arguments and parameters cut."""
    name = re.sub(r"^void\s+", "", name)
    depth, out = 0, []
    for ch in name:
        if ch in "<(":
            if depth == 0:
                out.append("<…>" if ch == "<" else "")
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path)
    p.add_argument(
        "--step-kernel", default="get_rows", help="regex of a kernel launched --per-step times a step"
    )
    p.add_argument("--per-step", type=int, default=1, help="launches of --step-kernel per step")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    rows = read_rows(args.csv)
    marker = re.compile(args.step_kernel)
    steps = sum(1 for name, _ in rows if marker.search(short(name))) / args.per_step
    if steps == 0:
        print(f"{args.csv}: no kernel matches --step-kernel {args.step_kernel!r}", file=sys.stderr)
        return 1
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for name, us in rows:
        total[short(name)] += us
        count[short(name)] += 1
    all_us = sum(total.values())
    print(
        f"{args.csv.name}: {len(rows)} launches, {steps:.2f} steps ({args.per_step} x {args.step_kernel!r})"
    )
    print(f"kernel time per step: {all_us / steps:.1f} µs\n")
    print("| kernel | launches per step | µs per step | µs per launch |")
    print("|---|---|---|---|")
    for name in sorted(total, key=total.__getitem__, reverse=True)[: args.top]:
        per_launch = total[name] / count[name]
        print(f"| `{name}` | {count[name] / steps:.1f} | {total[name] / steps:.1f} | {per_launch:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
