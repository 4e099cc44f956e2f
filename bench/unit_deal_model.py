"""Host model of how the CUDA attention launch deals 32-token units to warps (for bench/NOTES.md, no GPU):
the load of the busiest warp slot, in quantized-unit times, under the round-robin dealing
(cocktail_attn_cuda_common.cuh, for_each_unit) and under the cost-aware dealing tried in 6674d6a (heavy F16 /
tail units first, then the light Q4 / Q2 ones so that slots with an extra heavy unit get about `heavy_cost`
fewer light ones; reverted in cc37e2d). Also checks that the cost-aware dealing visits every unit once over
random layouts. The round-robin model puts the tail unit with the F16 ones (the launch has it last): one unit.

    python bench/unit_deal_model.py > bench/results/unit_deal_model.txt
"""

from __future__ import annotations

import random


def cost_aware(n_heavy: int, n_all: int, slots: int, k: int, heavy_cost: float) -> list[int]:
    """Slot k's units (heavy ones first in class order, then light), as 6674d6a's for_each_unit dealt them."""
    a = n_heavy % slots
    end1 = n_all
    if a > 0:
        x = (n_all - n_heavy - (slots - a) * heavy_cost) / slots
        end1 = n_heavy + min(n_all - n_heavy, slots * max(0, round(x)))
    start2 = end1 + k - a if k >= a else n_all
    i = n_heavy + k if k >= n_heavy else k
    if i >= end1:
        i = start2
    out = []
    while i < n_all:
        out.append(i)
        prev = i
        if prev >= end1:
            i += slots - a
            continue
        i += slots
        if prev < n_heavy <= i:
            i = n_heavy + k
        if i >= end1:
            i = start2
    return out


def main() -> None:
    rng = random.Random(0)
    for _ in range(20000):
        slots = rng.choice([4, 8, 12, 96, 196, rng.randint(1, 300)])
        n_heavy = rng.randint(0, 3) if rng.random() < 0.2 else rng.randint(0, 400)
        n_all = n_heavy + rng.randint(0, 3000)
        w = rng.choice([2.0, 4.0])
        seen = sorted(u for k in range(slots) for u in cost_aware(n_heavy, n_all, slots, k, w))
        assert seen == list(range(n_all)), (slots, n_heavy, n_all)
    print("cost-aware dealing: every unit once over 20000 random layouts")
    print("case: slots S, heavy units (F16 + tail), light units, heavy_cost -> busiest / mean slot load")
    cases = {  # one head of attn_cuda.py's 10/30/60 plans: S = n_splits x 4 warps
        "Llama-2 32K (MHA)": (96, 103, 922, 4.0),
        "Llama-2 64K (MHA)": (96, 206, 1843, 4.0),
        "Llama-3 32K (GQA)": (196, 103, 922, 2.0),
        "Llama-3 64K (GQA)": (196, 206, 1843, 2.0),
        "Llama-3 8K (GQA)": (196, 27, 231, 2.0),
    }
    for name, (slots, nh, nl, w) in cases.items():
        load = [sum(w if i < nh else 1 for i in cost_aware(nh, nh + nl, slots, k, w)) for k in range(slots)]
        rr = [sum(w if i < nh else 1 for i in range(k, nh + nl, slots)) for k in range(slots)]
        print(
            f"{name}: S {slots}, {nh} heavy, {nl} light, heavy_cost {w}: round robin {max(rr):.2f} / "
            f"{sum(rr) / slots:.2f}, cost-aware {max(load):.2f} / {sum(load) / slots:.2f}"
        )


if __name__ == "__main__":
    main()
