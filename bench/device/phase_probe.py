"""Adds clock64 phase prints to the tensor-core attention kernel (native/cocktail_attn_cuda_mma.cuh), IN
PLACE: for bench/device/phase_probe.sh on the device's copy of the tree only. Lane 0 of each warp of six
blocks prints, per launch: the cycles of the prologue (query tables), the wait for the first unit's copy,
the first unit, the other units, the epilogue (block barrier + split rows), and the block's globaltimer
start / end. Works on the kernel of 97fa0fb (the copy passed to enter() as a lambda) and later."""

from __future__ import annotations

from pathlib import Path

KERNEL = Path(__file__).resolve().parents[2] / "native" / "cocktail_attn_cuda_mma.cuh"

ENTRY = "    const int qi = blockIdx.z, split = blockIdx.y;\n"
START = (
    "    long long T[8] = {};\n"
    "    unsigned long long G0, G1;\n"
    "    int nu = 0;\n"
    '    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(G0));\n'
    "    T[0] = clock64();\n"
)
TABLES = "    const float q_unscale = exp2i(-sh.qexp[kOne ? 0 : g]);\n"
ENTER_NEW = "        uint8_t * here = ws.enter(p, s, unit, next, next_unit, copy);\n"
ENTER_OLD = "            stage_unit<D>(seg, h_kv, u, lane, dst);\n        });\n"
UNIT_END = (
    "        __syncwarp();  // every lane is done with this stage (and pbuf) before the next unit refills "
    "them\n"
    "    });\n"
)
SPLIT = "    write_split<D, kMmaRows>(p, qi, split, h0, n_g, sh.m, sh.l, &sh.acc[0][0]);\n"
PRINT = r"""    T[5] = clock64();
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(G1));
    const bool pick = (blockIdx.x == 0 || blockIdx.x == gridDim.x - 1) &&
                      (blockIdx.y == 0 || blockIdx.y == gridDim.y / 2 || blockIdx.y == gridDim.y - 1);
    if (lane == 0 && pick) {
        unsigned smid;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
        printf("PHASE D%d one%d b%d,%d w%d sm%u units %d | pro %lld stage1 %lld unit1 %lld rest %lld "
               "epi %lld | total %lld cyc | g0 %llu g1 %llu\n",
               D, int(kOne), blockIdx.x, blockIdx.y, warp, smid, nu, T[1] - T[0], T[2] - T[1],
               T[3] - T[2], T[4] - T[3], T[5] - T[4], T[5] - T[0], G0, G1);
    }
"""


def main() -> None:
    s = KERNEL.read_text()

    def after(anchor: str, text: str, before: bool = False) -> None:
        nonlocal s
        if anchor not in s:
            raise SystemExit(f"phase_probe: kernel text not found: {anchor.strip()[:60]!r}")
        s = s.replace(anchor, text + anchor if before else anchor + text, 1)

    after(ENTRY, START, before=True)
    after(TABLES, "    T[1] = clock64();\n")
    after(ENTER_NEW if ENTER_NEW in s else ENTER_OLD, "        if (nu == 0) T[2] = clock64();\n")
    sync_line = UNIT_END.split("\n")[0] + "\n"
    if UNIT_END not in s:
        raise SystemExit("phase_probe: the unit loop's end not found")
    s = s.replace(
        UNIT_END,
        sync_line + "        if (nu == 0) T[3] = clock64();\n        ++nu;\n    });\n    T[4] = clock64();\n",
        1,
    )
    after(SPLIT, PRINT)
    KERNEL.write_text(s)


if __name__ == "__main__":
    main()
