"""CUDA mixed-region attention kernel alone, one layer of a decode step: time, bytes read, achieved bandwidth
against the device's copy bandwidth (BENCH.md metrics attn_kernel_gbps, copy_gbps), per model shape, depth
and precision mix. Run on the GPU machine against a CUDA build:

    COCKTAIL_COMMIT=<sha> python bench/attn_cuda.py --out bench/results/attn_cuda.json

(COCKTAIL_COMMIT: the commit to record where the tree is no current git checkout, e.g. on the device machine.
`--orders forward rotated zigzag` times each packed layer under each order in which the warps can take their
units, through COCKTAIL_UNIT_ORDER; without it a COCKTAIL_UNIT_ORDER already set is used and recorded.)

The kernel alone; decode tokens/s of whole models with it in llama.cpp's graph: bench/tpot_gpu.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from cocktail_gguf import kv_bench, native_ops

SHAPES = {  # (KV heads, query heads per KV head, head_dim) of one attention layer
    "llama2-7b": (32, 1, 128),
    "llama3-8b": (8, 4, 128),
}
MIXES = {
    "10/30/60": {"f16": 0.1, "q4": 0.3, "q2": 0.6},
    "all-q2": {"f16": 0.0, "q4": 0.0, "q2": 1.0},
    "all-q4": {"f16": 0.0, "q4": 1.0, "q2": 0.0},
    "all-f16": {"f16": 1.0, "q4": 0.0, "q2": 0.0},
}


ORDERS = ("forward", "rotated", "zigzag")  # COCKTAIL_UNIT_ORDER: in which order a warp takes its units


def measure(shape: str, depth: int, mix: dict[str, float], n_iters: int, rng: np.random.Generator,
            orders: list[str | None]) -> list[dict]:  # fmt: skip
    """One packed layer, timed under each unit order (None: COCKTAIL_UNIT_ORDER as the caller set it, or the
    kernels' default)."""
    h_kv, group, d = SHAPES[shape]
    k = rng.standard_normal((h_kv, depth, d)).astype(np.float16)
    v = rng.standard_normal((h_kv, depth, d)).astype(np.float16)
    q = rng.standard_normal((1, h_kv * group, d)).astype(np.float32)
    regions, start = [], 0
    for prec in ("f16", "q4", "q2"):
        n = int(round(mix[prec] * depth / 32)) * 32 if prec != "q2" else depth - start
        cells = np.arange(start, start + n)
        start += n
        regions.append(native_ops.pack_kv_region(prec, k, v, cells, n_threads=os.cpu_count() or 1))
    tail_k, tail_v = k[:, :1], v[:, :1]  # the token being decoded
    kv_bytes = sum(len(x.k) + len(x.v) for x in regions)
    out = []
    for order in orders:
        if order is not None:
            os.environ["COCKTAIL_UNIT_ORDER"] = order
        r = native_ops.attn_cuda_bench(q, regions, n_head_kv=h_kv, kq_scale=d**-0.5, tail_k=tail_k,
                                       tail_v=tail_v, n_iters=n_iters)  # fmt: skip
        out.append({"ms": r["ms"], "bytes_read": r["bytes_read"], "kv_bytes": kv_bytes,
                    "order": order or os.environ.get("COCKTAIL_UNIT_ORDER"),
                    "attn_kernel_gbps": r["attn_kernel_gbps"], "copy_gbps": r["copy_gbps"]})  # fmt: skip
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--depths", nargs="+", type=int, default=[8192, 32768, 65536])
    p.add_argument("--mixes", nargs="+", default=list(MIXES), choices=list(MIXES))
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--orders", nargs="+", choices=ORDERS,
                   help="unit orders to time (COCKTAIL_UNIT_ORDER; default: the kernels')")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("bench/results/attn_cuda.json"))
    args = p.parse_args()
    rng = np.random.default_rng(0)
    orders: list[str | None] = list(args.orders) if args.orders else [None]
    records = []
    for shape in args.shapes:
        for depth in args.depths:
            for name in args.mixes:
                for m in measure(shape, depth, MIXES[name], args.iters, rng, orders):
                    base = {"model": f"{shape}-shape-layer", "backend": "cuda", "kv_mode": "cocktail",
                            "impl": "ours", "mix": MIXES[name], "mix_name": name, "depth": depth,
                            "kv_bytes": m["kv_bytes"], "n_runs": args.iters}  # fmt: skip
                    if m["order"] is not None:
                        base["unit_order"] = m["order"]
                    records.append({**base, "metric": "attn_kernel_ms", "value": m["ms"]})
                    records.append({**base, "metric": "attn_kernel_gbps", "value": m["attn_kernel_gbps"],
                                    "bytes_read": m["bytes_read"]})  # fmt: skip
                    records.append({**base, "metric": "copy_gbps", "value": m["copy_gbps"]})
                    share = 100 * m["attn_kernel_gbps"] / m["copy_gbps"]
                    print(f"{shape:10s} {depth:6d} {name:8s} {m['order'] or '':8s} {m['ms'] * 1000:8.1f} us  "
                          f"{m['kv_bytes'] / 2**20:7.2f} MiB  {m['attn_kernel_gbps']:7.1f} GB/s  "
                          f"({share:.0f} % of copy {m['copy_gbps']:.0f} GB/s)", flush=True)  # fmt: skip
    doc = kv_bench.result_document("attn_cuda", records, "python " + " ".join(sys.argv))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    head = f"# attn_cuda\n\ncommit {doc['commit']}, {doc['machine']}, {doc['date']}\n\n`{doc['command']}`\n"
    with_order = any("unit_order" in r for r in records)
    lines = [head,
             "| shape (one layer) | depth | mix |" + (" unit order |" if with_order else "")
             + " KV MiB | kernel µs | GB/s | % of copy |",
             "|---|---|---|" + ("---|" if with_order else "") + "---|---|---|---|"]  # fmt: skip
    by = {(r["model"], r["depth"], r["mix_name"], r.get("unit_order"), r["metric"]): r for r in records}
    for (model, depth, mix, order, metric), r in by.items():
        if metric != "attn_kernel_ms":
            continue
        gbps = by[(model, depth, mix, order, "attn_kernel_gbps")]["value"]
        copy = by[(model, depth, mix, order, "copy_gbps")]["value"]
        lines.append(f"| {model} | {depth} | {mix} |" + (f" {order} |" if with_order else "")
                     + f" {r['kv_bytes'] / 2**20:.2f} | {1000 * r['value']:.1f} | "
                     f"{gbps:.0f} | {100 * gbps / copy:.0f} % |")  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
