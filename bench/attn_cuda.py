"""CUDA mixed-region attention kernel alone, one layer of a decode step: time, bytes read, achieved bandwidth
against the device's copy bandwidth (BENCH.md metrics attn_kernel_gbps, copy_gbps), per model shape, depth
and precision mix. Run on the GPU machine against a CUDA build:

    COCKTAIL_COMMIT=<sha> python bench/attn_cuda.py --out bench/results/attn_cuda.json

(COCKTAIL_COMMIT: the commit to record where the tree is no current git checkout, e.g. on the device machine.
`--orders forward rotated zigzag` times each packed layer under each order in which the warps can take their
units, through COCKTAIL_UNIT_ORDER; `--mha-kernels auto mma scalar` under each choice of kernel for one query
head per KV head, through COCKTAIL_MHA_KERNEL; `--gqa-layouts pairs rows` under each layout of the tensor-core
kernel for 4 query heads per KV head, through COCKTAIL_GQA_LAYOUT (several: every combination). Without them a
setting already in the environment is used and recorded. `--mixes` also takes F16-heavier mixes than the
default four. `--launches stream graph`: the calls launched one by one (stream, the default) and/or captured
into one CUDA graph and replayed, as llama.cpp's CUDA backend runs a decode step.)

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
    # more F16 (only where asked for with --mixes): where the MHA kernels cross over
    "3/30/67": {"f16": 0.03, "q4": 0.3, "q2": 0.67},
    "6/30/64": {"f16": 0.06, "q4": 0.3, "q2": 0.64},
    "25/25/50": {"f16": 0.25, "q4": 0.25, "q2": 0.5},
    "50/20/30": {"f16": 0.5, "q4": 0.2, "q2": 0.3},
    "75/10/15": {"f16": 0.75, "q4": 0.1, "q2": 0.15},
}


# what the kernels read from the environment at each launch, for measuring: field -> (variable, values);
# unit_order: in which order a warp takes its units; mha_kernel: the kernel for one query head per KV head;
# gqa_layout: the tensor-core kernel's layout for 4 query heads per KV head
SETTINGS = {
    "unit_order": ("COCKTAIL_UNIT_ORDER", ("forward", "rotated", "zigzag")),
    "mha_kernel": ("COCKTAIL_MHA_KERNEL", ("auto", "mma", "scalar")),
    "gqa_layout": ("COCKTAIL_GQA_LAYOUT", ("auto", "pairs", "rows")),
}
LAUNCHES = ("stream", "graph")  # how the timed calls are launched (record field "launch")


def variants(chosen: dict[str, list[str] | None]) -> list[dict[str, str]]:
    """Every combination of the chosen values ({} where none is chosen: the environment as it is)."""
    out: list[dict[str, str]] = [{}]
    for field, values in chosen.items():
        if values:
            out = [{**v, field: x} for v in out for x in values]
    return out


def measure(shape: str, depth: int, mix: dict[str, float], n_iters: int, rng: np.random.Generator,
            settings: list[dict[str, str]], launches: list[str]) -> list[dict]:  # fmt: skip
    """One packed layer, timed under each of `settings` (record field -> value, set in the environment; a
    field not given keeps what the caller's environment has, and is recorded where set) x `launches`."""
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
    for setting in settings:
        for field, value in setting.items():
            os.environ[SETTINGS[field][0]] = value
        env = {f: os.environ[var] for f, (var, _) in SETTINGS.items() if os.environ.get(var)}
        for launch in launches:
            r = native_ops.attn_cuda_bench(q, regions, n_head_kv=h_kv, kq_scale=d**-0.5, tail_k=tail_k,
                                           tail_v=tail_v, n_iters=n_iters,
                                           graph=launch == "graph")  # fmt: skip
            out.append({"ms": r["ms"], "bytes_read": r["bytes_read"], "kv_bytes": kv_bytes,
                        "settings": {**env, "launch": launch}, "attn_kernel_gbps": r["attn_kernel_gbps"],
                        "copy_gbps": r["copy_gbps"]})  # fmt: skip
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--depths", nargs="+", type=int, default=[8192, 32768, 65536])
    p.add_argument("--mixes", nargs="+", default=list(MIXES)[:4], choices=list(MIXES))
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--orders", nargs="+", choices=SETTINGS["unit_order"][1],
                   help="unit orders to time (COCKTAIL_UNIT_ORDER; default: the kernels')")  # fmt: skip
    p.add_argument("--mha-kernels", nargs="+", choices=SETTINGS["mha_kernel"][1],
                   help="kernels to time for one query head per KV head (COCKTAIL_MHA_KERNEL)")  # fmt: skip
    p.add_argument("--gqa-layouts", nargs="+", choices=SETTINGS["gqa_layout"][1],
                   help="layouts to time for 4 query heads per KV head (COCKTAIL_GQA_LAYOUT)")  # fmt: skip
    p.add_argument("--launches", nargs="+", choices=LAUNCHES, default=["stream"],
                   help="stream: one launch per call; graph: the calls in one CUDA graph")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("bench/results/attn_cuda.json"))
    args = p.parse_args()
    rng = np.random.default_rng(0)
    settings = variants(
        {"unit_order": args.orders, "mha_kernel": args.mha_kernels, "gqa_layout": args.gqa_layouts}
    )
    records = []
    for shape in args.shapes:
        for depth in args.depths:
            for name in args.mixes:
                for m in measure(shape, depth, MIXES[name], args.iters, rng, settings, args.launches):
                    base = {"model": f"{shape}-shape-layer", "backend": "cuda", "kv_mode": "cocktail",
                            "impl": "ours", "mix": MIXES[name], "mix_name": name, "depth": depth,
                            "kv_bytes": m["kv_bytes"], "n_runs": args.iters}  # fmt: skip
                    base.update(m["settings"])
                    records.append({**base, "metric": "attn_kernel_ms", "value": m["ms"]})
                    records.append({**base, "metric": "attn_kernel_gbps", "value": m["attn_kernel_gbps"],
                                    "bytes_read": m["bytes_read"]})  # fmt: skip
                    records.append({**base, "metric": "copy_gbps", "value": m["copy_gbps"]})
                    share = 100 * m["attn_kernel_gbps"] / m["copy_gbps"]
                    tag = " ".join(m["settings"].values())
                    print(f"{shape:10s} {depth:6d} {name:8s} {tag:14s} {m['ms'] * 1000:8.1f} us  "
                          f"{m['kv_bytes'] / 2**20:7.2f} MiB  {m['attn_kernel_gbps']:7.1f} GB/s  "
                          f"({share:.0f} % of copy {m['copy_gbps']:.0f} GB/s)", flush=True)  # fmt: skip
    doc = kv_bench.result_document("attn_cuda", records, "python " + " ".join(sys.argv))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    head = f"# attn_cuda\n\ncommit {doc['commit']}, {doc['machine']}, {doc['date']}\n\n`{doc['command']}`\n"
    shown = [f for f in (*SETTINGS, "launch") if any(f in r for r in records)]  # the settings that were set
    lines = [head,
             "| shape (one layer) | depth | mix |" + "".join(f" {f.replace('_', ' ')} |" for f in shown)
             + " KV MiB | kernel µs | GB/s | % of copy |",
             "|---|---|---|" + "---|" * len(shown) + "---|---|---|---|"]  # fmt: skip
    keys = [(r["model"], r["depth"], r["mix_name"], *(r.get(f) for f in shown), r["metric"]) for r in records]
    by = dict(zip(keys, records, strict=True))
    for key, r in by.items():
        if key[-1] != "attn_kernel_ms":
            continue
        gbps = by[(*key[:-1], "attn_kernel_gbps")]["value"]
        copy = by[(*key[:-1], "copy_gbps")]["value"]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} |" + "".join(f" {x} |" for x in key[3:-1])
                     + f" {r['kv_bytes'] / 2**20:.2f} | {1000 * r['value']:.1f} | "
                     f"{gbps:.0f} | {100 * gbps / copy:.0f} % |")  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
