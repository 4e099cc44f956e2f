"""Adds a whole-grid timeline probe to the CUDA attention kernels, IN PLACE: for
bench/device/grid_probe.sh on the device's copy of the tree only (never for a build that is kept).
Thread 0 of every block of the partial kernels (both: scalar and tensor-core) and of the merge records
%globaltimer at its start and end; cocktail_attn_mixed_regions_cuda_bench (bench/attn_cuda.py) then
runs 20 more back-to-back iterations and prints one GRID line: the time per iteration (events) and,
for the last two iterations, where it goes: the gap from the previous merge's last block to the
partial's first block, the spread of the partial's block starts and ends, the gap to the merge's
first block and the merge's span."""

from __future__ import annotations

import re
from pathlib import Path

NATIVE = Path(__file__).resolve().parents[2] / "native"

SYMBOLS = """
// --- grid probe (bench/device/grid_probe.py) ---
__device__ unsigned long long probe_ps[2][8192], probe_pe[2][8192], probe_ms[2][1024], probe_me[2][1024];
__device__ unsigned           probe_count;

__device__ __forceinline__ unsigned long long probe_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
"""

PARTIAL_ENTRY = "    const int qi = blockIdx.z, split = blockIdx.y;\n"
PARTIAL_START = """    const unsigned probe_b =
        blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned probe_it =
        (*reinterpret_cast<volatile unsigned *>(&probe_count) / (p.n_head * p.n_q)) & 1;
    if (threadIdx.x == 0 && probe_b < 8192) {
        probe_ps[probe_it][probe_b] = probe_now();
    }
"""
PARTIAL_END = """    if (threadIdx.x == 0 && probe_b < 8192) {
        probe_pe[probe_it][probe_b] = probe_now();
    }
"""
MERGE_ENTRY = re.compile(r"( *const int +qi = blockIdx\.y, h = blockIdx\.x;\n)")
MERGE_START = """    const unsigned probe_b  = blockIdx.x + gridDim.x * blockIdx.y;
    const unsigned probe_it =
        (*reinterpret_cast<volatile unsigned *>(&probe_count) / (gridDim.x * gridDim.y)) & 1;
    if (threadIdx.x == 0 && probe_b < 1024) {
        probe_ms[probe_it][probe_b] = probe_now();
    }
"""
MERGE_EXIT = "\n}\n\n// The tail's strides (bytes)"
MERGE_END = """
    if (threadIdx.x == 0 && probe_b < 1024) {
        probe_me[probe_it][probe_b] = probe_now();
        atomicAdd(&probe_count, 1u);
    }"""

REPORT = r"""
// --- grid probe report (bench/device/grid_probe.py) ---
#include <algorithm>
#include <cstdio>
static void probe_report(const cocktail::CudaGraphAttn & call) {
    using namespace cocktail::cuda_impl;
    constexpr int kIters = 20;
    void * ptr = nullptr;
    for (const void * sym : { (const void *) &probe_ps, (const void *) &probe_pe, (const void *) &probe_ms,
                              (const void *) &probe_me, (const void *) &probe_count }) {
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
    static unsigned long long ps[2][8192], pe[2][8192], mst[2][1024], me[2][1024];
    cudaMemcpyFromSymbol(ps, probe_ps, sizeof(ps));
    cudaMemcpyFromSymbol(pe, probe_pe, sizeof(pe));
    cudaMemcpyFromSymbol(mst, probe_ms, sizeof(mst));
    cudaMemcpyFromSymbol(me, probe_me, sizeof(me));
    const int last = (kIters - 1) & 1, prev = last ^ 1;  // iterations kIters - 1 and kIters - 2
    auto vals = [](const unsigned long long * a, int n) {
        std::vector<double> v;
        for (int i = 0; i < n; ++i) {
            if (a[i] != 0) {
                v.push_back(static_cast<double>(a[i]));
            }
        }
        std::sort(v.begin(), v.end());
        return v;
    };
    const auto ps1 = vals(ps[last], 8192), pe1 = vals(pe[last], 8192), ms1 = vals(mst[last], 1024),
               me1 = vals(me[last], 1024), me0 = vals(me[prev], 1024);
    if (ps1.empty() || pe1.empty() || ms1.empty() || me1.empty() || me0.empty()) {
        fprintf(stderr, "GRID no records\n");
        return;
    }
    const double t0 = ps1.front();
    auto         at = [&](const std::vector<double> & v, double f) {
        return (v[std::min(v.size() - 1, static_cast<size_t>(f * (v.size() - 1) + 0.5))] - t0) * 1e-3;
    };
    fprintf(stderr,
            "GRID iter %.2f us | merge(prev) end -> partial start %.2f | partial blocks %zu: "
            "starts 0 .. %.2f (median %.2f), ends min %.2f p10 %.2f median %.2f p90 %.2f max %.2f | "
            "merge blocks %zu: start %.2f .. %.2f, end max %.2f | next gap from events %.2f\n",
            1e3 * ms / kIters, (t0 - me0.back()) * 1e-3, ps1.size(), at(ps1, 1.0), at(ps1, 0.5), at(pe1, 0.0),
            at(pe1, 0.1), at(pe1, 0.5), at(pe1, 0.9), at(pe1, 1.0), ms1.size(), at(ms1, 0.0), at(ms1, 1.0),
            at(me1, 1.0), 1e3 * ms / kIters - at(me1, 1.0) - (t0 - me0.back()) * 1e-3);
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
        if PARTIAL_ENTRY not in s:
            raise SystemExit(f"grid_probe: partial kernel entry not found in {name}")
        s = s.replace(PARTIAL_ENTRY, PARTIAL_ENTRY + PARTIAL_START)
        s, n = re.subn(
            r"( *write_split<D, [A-Za-z]+>\(p, qi, split, [^;]*;\n)", lambda m: m.group(1) + PARTIAL_END, s
        )
        if n != 1:
            raise SystemExit(f"grid_probe: {n} write_split calls in {name}")
        if name == "cocktail_attn_cuda.cu":
            s, n = MERGE_ENTRY.subn(lambda m: m.group(1) + MERGE_START, s)
            if n != 1 or MERGE_EXIT not in s:
                raise SystemExit("grid_probe: merge kernel text not found")
            s = s.replace(MERGE_EXIT, MERGE_END + MERGE_EXIT, 1)
            bench = 'extern "C" int cocktail_attn_mixed_regions_cuda_bench('
            hook = "    cudaEventDestroy(t0);\n    cudaEventDestroy(t1);\n    if (err == cudaSuccess) {\n"
            if bench not in s or hook not in s:
                raise SystemExit("grid_probe: bench function not found")
            s = s.replace(bench, REPORT, 1)
            s = s.replace(hook, "    probe_report(c.call);\n" + hook, 1)
        f.write_text(s)


if __name__ == "__main__":
    main()
