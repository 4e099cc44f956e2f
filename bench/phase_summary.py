"""Averages of the phase lines that bench/device/phase_probe.py's kernel prints (bench/device/phase_probe.sh).

    python bench/phase_summary.py phase_llama3-8b_2048.txt ...   → a markdown table on stdout

Per file: the last launch's 32 lines at most (warps that got no unit left out), cycles per phase averaged
over the printed warps, and the printed blocks' mean lifetime in µs (globaltimer)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

PHASES = ("pro", "stage1", "unit1", "rest", "epi", "total")


def _field(pattern: str, line: str) -> re.Match[str]:
    m = re.search(pattern, line)
    if m is None:
        raise SystemExit(f"not a phase line ({pattern!r} missing): {line}")
    return m


def summarize(path: Path) -> dict[str, float]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("PHASE ")][-32:]
    rows = []
    for ln in lines:
        units = int(_field(r"units (\d+)", ln).group(1))
        if units == 0:
            continue
        row = {k: float(_field(rf"\b{k} (-?\d+)", ln).group(1)) for k in PHASES}
        g0, g1 = (int(x) for x in _field(r"g0 (\d+) g1 (\d+)", ln).groups())
        row["units"], row["us"] = units, (g1 - g0) / 1000
        rows.append(row)
    if not rows:
        raise SystemExit(f"{path}: no phase lines")
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} | {"warps": len(rows)}


def main(paths: list[str]) -> None:
    print(
        "| file | warps | units | prologue | first copy | first unit | other units | epilogue "
        "| total cycles | block µs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        s = summarize(Path(p))
        print(
            f"| {Path(p).stem} | {s['warps']:.0f} | {s['units']:.2f} | {s['pro']:.0f} | {s['stage1']:.0f} "
            f"| {s['unit1']:.0f} | {s['rest']:.0f} | {s['epi']:.0f} | {s['total']:.0f} | {s['us']:.2f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
