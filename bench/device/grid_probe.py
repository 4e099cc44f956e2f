"""Adds a whole-grid timeline probe to the CUDA attention kernels, IN PLACE: for
bench/device/grid_probe.sh on the device's copy of the tree only (never for a build that is kept).
Thread 0 of every block of the partial kernels (both: scalar and tensor-core) records %globaltimer at
its start, when its split rows are out (write_split) and at its exit (after merge_if_last: the blocks
that merge leave last); cocktail_attn_mixed_regions_cuda_bench (bench/attn_cuda.py) then runs 20 more
back-to-back launches and prints one GRID line: the time per launch (events) and, for the last two
launches, where it goes: the gap from the previous launch's last block exit to this launch's first
block start, the spread of the block starts, of the split rows' times and of the exits. (At 7213cff
the probe's first version timed the separate merge kernel of 8caecf2's kernels.)"""

from __future__ import annotations

import re
from pathlib import Path

NATIVE = Path(__file__).resolve().parents[2] / "native"

SYMBOLS = """
// --- grid probe (bench/device/grid_probe.py) ---
__device__ unsigned long long probe_ps[2][8192], probe_pr[2][8192], probe_pe[2][8192];
__device__ unsigned           probe_count;

__device__ __forceinline__ unsigned long long probe_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
"""

PARTIAL_ENTRY = "    const int qi = blockIdx.z, split = blockIdx.y;\n"
PARTIAL_START = """    const unsigned probe_n = gridDim.x * gridDim.y * gridDim.z;
    const unsigned probe_b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned probe_it = (*reinterpret_cast<volatile unsigned *>(&probe_count) / probe_n) & 1;
    if (threadIdx.x == 0 && probe_b < 8192) {
        probe_ps[probe_it][probe_b] = probe_now();
    }
"""
ROWS = re.compile(r"( *write_split<D, [A-Za-z, ]+>\(p, qi, split, [^;]*;\n)")
ROWS_OUT = """    if (threadIdx.x == 0 && probe_b < 8192) {
        probe_pr[probe_it][probe_b] = probe_now();
    }
"""
MERGE = "    merge_if_last<D>(p, qi, h0, n_g);\n"
EXIT = """    if (threadIdx.x == 0 && probe_b < 8192) {
        probe_pe[probe_it][probe_b] = probe_now();
        atomicAdd(&probe_count, 1u);
    }
"""

REPORT = r"""
// --- grid probe report (bench/device/grid_probe.py) ---
#include <algorithm>
#include <cstdio>
static void probe_report(const cocktail::CudaGraphAttn & call) {
    using namespace cocktail::cuda_impl;
    constexpr int kIters = 20;
    void *        ptr    = nullptr;
    for (const void * sym : { (const void *) &probe_ps, (const void *) &probe_pr, (const void *) &probe_pe,
                              (const void *) &probe_count }) {
        size_t n = 0;
        cudaGetSymbolAddress(&ptr, sym);
        cudaGetSymbolSize(&n, sym);
        cudaMemset(ptr, 0, n);
    }
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaEventRecord(e0);
    for (int i = 0; i < kIters; ++i) {
        cocktail::cuda_graph_attn(call, nullptr);
    }
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, e0, e1);
    static unsigned long long ps[2][8192], pr[2][8192], pe[2][8192];
    cudaMemcpyFromSymbol(ps, probe_ps, sizeof(ps));
    cudaMemcpyFromSymbol(pr, probe_pr, sizeof(pr));
    cudaMemcpyFromSymbol(pe, probe_pe, sizeof(pe));
    const int last = (kIters - 1) & 1, prev = last ^ 1;  // launches kIters - 1 and kIters - 2
    auto      vals = [](const unsigned long long * a) {
        std::vector<double> v;
        for (int i = 0; i < 8192; ++i) {
            if (a[i] != 0) {
                v.push_back(static_cast<double>(a[i]));
            }
        }
        std::sort(v.begin(), v.end());
        return v;
    };
    const auto ps1 = vals(ps[last]), pr1 = vals(pr[last]), pe1 = vals(pe[last]), pe0 = vals(pe[prev]);
    if (ps1.empty() || pr1.empty() || pe1.empty() || pe0.empty()) {
        fprintf(stderr, "GRID no records\n");
        return;
    }
    const double t0 = ps1.front();
    auto         at = [&](const std::vector<double> & v, double f) {
        return (v[std::min(v.size() - 1, static_cast<size_t>(f * (v.size() - 1) + 0.5))] - t0) * 1e-3;
    };
    fprintf(stderr,
            "GRID iter %.2f us | prev exit -> start %.2f | blocks %zu: starts 0 .. %.2f (median %.2f), "
            "rows out min %.2f p10 %.2f median %.2f p90 %.2f max %.2f | exits median %.2f max %.2f\n",
            1e3 * ms / kIters, (t0 - pe0.back()) * 1e-3, ps1.size(), at(ps1, 1.0), at(ps1, 0.5), at(pr1, 0.0),
            at(pr1, 0.1), at(pr1, 0.5), at(pr1, 0.9), at(pr1, 1.0), at(pe1, 0.5), at(pe1, 1.0));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
}

extern "C" int cocktail_attn_mixed_regions_cuda_bench("""


def main() -> None:
    common = NATIVE / "cocktail_attn_cuda_common.cuh"
    s = common.read_text()
    anchor = "#include <type_traits>\n"
    assert anchor in s, "grid_probe: common header changed"
    common.write_text(s.replace(anchor, anchor + SYMBOLS, 1))

    for name in ("cocktail_attn_cuda.cu", "cocktail_attn_cuda_mma.cuh"):
        f = NATIVE / name
        s = f.read_text()
        if PARTIAL_ENTRY not in s or s.count(MERGE) != 1:
            raise SystemExit(f"grid_probe: partial kernel entry or merge_if_last call not found in {name}")
        s = s.replace(PARTIAL_ENTRY, PARTIAL_ENTRY + PARTIAL_START)
        s = s.replace(MERGE, MERGE + EXIT)
        s, n = ROWS.subn(lambda m: m.group(1) + ROWS_OUT, s)
        if n != 1:
            raise SystemExit(f"grid_probe: {n} write_split calls in {name}")
        if name == "cocktail_attn_cuda.cu":
            bench = 'extern "C" int cocktail_attn_mixed_regions_cuda_bench('
            hook = "    cudaEventDestroy(t0);\n    cudaEventDestroy(t1);\n    if (err == cudaSuccess) {\n"
            if bench not in s or hook not in s:
                raise SystemExit("grid_probe: bench function not found")
            s = s.replace(bench, REPORT, 1)
            s = s.replace(hook, "    probe_report(c.call);\n" + hook, 1)
        f.write_text(s)


if __name__ == "__main__":
    main()
