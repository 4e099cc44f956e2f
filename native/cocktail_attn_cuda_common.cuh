// Shared by the CUDA attention kernels (cocktail_attn_cuda.cu: the scalar kernel, the host side and the merge;
// cocktail_attn_cuda_mma.cuh: the tensor-core kernel for grouped-query heads): the launch's parameters, the segment
// table and small device helpers. Included by cocktail_attn_cuda.cu only.
#pragma once

#include "cocktail_api.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace cocktail::cuda_impl {

constexpr int kWarps       = 4;
constexpr int kMaxSegments = 17;  // 16 regions + the tail
constexpr int kUnit        = 32;  // tokens per unit = quantization block

enum SegKind { kF16 = COCKTAIL_PREC_F16, kQ4 = COCKTAIL_PREC_Q4, kQ2 = COCKTAIL_PREC_Q2, kTail = 3 };

struct Segment {
    int             kind;
    int             n_tokens;
    int             unit0;  // first unit of this segment in the launch's unit list
    int             seq;    // only query tokens of this sequence attend to it; -1: every query token
    const uint8_t * k;
    const uint8_t * v;
};

struct Params {
    int             n_q, n_head, n_head_kv, group, n_gblocks, n_splits, n_units, n_segments;
    float           scale;
    const float *   q;
    size_t          q_nb_token, q_nb_head;
    Segment         seg[kMaxSegments];
    size_t          tk_nb_token, tk_nb_head, tv_nb_token, tv_nb_channel, tv_nb_head;
    int             tail_k_vec;  // the tail's K rows allow 16-byte loads of 8 channels
    int             tail_v_vec;  // the tail's V channels are contiguous, 8-byte loads of 4 channels
    const uint8_t * mask;
    size_t          mask_nb_row;
    int             mask_f16;
    const int32_t * q_seq;     // sequence of each query token (device), or nullptr: every segment is for every token
    float *         part_acc;  // [n_q][n_head][n_splits][D]
    float2 *        part_ml;   // [n_q][n_head][n_splits]: running max, sum of exp
    int             order;     // UnitOrder: in which order a warp takes its units (for_each_unit)
};

__device__ __forceinline__ float h2f(const uint8_t * p) {
    return __half2float(*reinterpret_cast<const __half *>(p));
}

__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) {
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    }
    return x;
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) {
        x += __shfl_xor_sync(0xffffffffu, x, o);
    }
    return x;
}

// Bytes of one (head, 32-token block) of a Q4 / Q2 region (native/README.md: 20*D, 12*D).
template <int D, int kind> __device__ constexpr size_t block_bytes() {
    return kind == kQ4 ? 20 * D : 12 * D;
}

// Index of head h_kv's 32-token block `unit` in a Q4 / Q2 segment ([head][block], native/README.md).
__device__ __forceinline__ size_t unit_block(const Segment & s, int h_kv, int unit) {
    return static_cast<size_t>(h_kv) * ((s.n_tokens + kUnit - 1) / kUnit) + unit;
}

// N consecutive fp16 values from p (aligned to 2*N bytes) as floats, in one load.
template <int N> __device__ __forceinline__ void load_halves(const uint8_t * p, float (&out)[N]) {
    static_assert(N == 1 || N == 2 || N == 4 || N == 8, "1, 2, 4 or 8 halves");
    if constexpr (N == 1) {
        out[0] = h2f(p);
    } else {
        using Word          = std::conditional_t<N == 2, uint32_t, std::conditional_t<N == 4, uint2, uint4>>;
        const Word      raw = *reinterpret_cast<const Word *>(p);
        const __half2 * h   = reinterpret_cast<const __half2 *>(&raw);
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
            const float2 f = __half22float2(h[i]);
            out[2 * i]     = f.x;
            out[2 * i + 1] = f.y;
        }
    }
}

// Asynchronous copy of 16 (L1 bypassed) or 8 bytes global -> shared (cp.async), its group commit and wait.
template <int bytes> __device__ __forceinline__ void cp_async(void * dst, const void * src) {
    static_assert(bytes == 16 || bytes == 8, "cp.async: 16 or 8 bytes");
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    if constexpr (bytes == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(s), "l"(src) : "memory");
    }
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

__device__ __forceinline__ void cp_async_wait_all_but_newest() {
    asm volatile("cp.async.wait_group 1;" ::: "memory");
}

// The warp's asynchronous copies of n chunks of `chunk` bytes: chunk c from byte c * from of src to byte
// (c + c / pad) * to of dst (pad > 0, a divisor of 32: one empty slot after every pad chunks; 0: none), unrolled so
// that every copy is one instruction with constant offsets.
template <int n, int chunk, int from = chunk, int to = chunk, int pad = 0>
__device__ __forceinline__ void copy_chunks(uint8_t * dst, const uint8_t * src, int lane) {
    static_assert(pad >= 0 && 32 % (pad > 0 ? pad : 1) == 0, "copy_chunks: pad divides 32");
    constexpr int slots    = pad > 0 ? 32 + 32 / pad : 32;  // dst slots of 32 chunks
    uint8_t *     lane_dst = dst + (pad > 0 ? lane + lane / pad : lane) * to;
#pragma unroll
    for (int i = 0; i < (n + 31) / 32; ++i) {
        if (n % 32 == 0 || lane + 32 * i < n) {
            cp_async<chunk>(lane_dst + i * slots * to, src + (lane + 32 * i) * from);
        }
    }
}

__device__ __forceinline__ bool quantized(int kind) {
    return kind == kQ4 || kind == kQ2;
}

// Orders in which a warp takes its units (Params::order; the dealing is the same): forward; rotated (warp slot k
// starts at its (k % count)-th unit and wraps around); zig-zag (odd slots backward). The regions come in segment
// order (F16 first): forward, every warp reads the F16 units (bandwidth-bound) at the start and the quantized ones
// (instruction-bound) after; rotated or zig-zag, both kinds run side by side all along, with the warps' reads
// spread over the region (rotated: over all of it while a slot has at most S units, over its first S units of
// each slot beyond that) or over two windows per head (zig-zag). Which is faster depends on the kernel
// (unit_order in cocktail_attn_cuda.cu; bench/NOTES.md has the measurements).
enum UnitOrder { kForward = 0, kRotated = 1, kZigZag = 2 };

// This warp's units of the block's split, skipping other sequences' regions, in p.order. Units are dealt
// round-robin over the splits, then over the block's warps, so that every block gets its share of each region (an
// F16 unit reads 5x the bytes of a Q2 one) and one wave of equal blocks stays balanced. The walk is made before the
// block's query tables, so that the first unit's copy (WarpStages::prefetch) overlaps their building.
struct UnitWalk {
    const Params & p;
    int            k, step, count, m0, q_seq;
    bool           back;
    int            si = 0;  // segment of the unit found last by from()
    int            j;       // position of the current unit in this slot's order; -1: no more
    int            su;      // its segment

    __device__ __forceinline__ UnitWalk(const Params & p, int qi, int split, int warp) :
        p(p),
        k(split + p.n_splits * warp),
        step(p.n_splits * kWarps),
        count(k < p.n_units ? (p.n_units - 1 - k) / step + 1 : 0),  // this slot's units k + m step
        m0(p.order == kRotated && count > 0 ? k % count : 0),
        q_seq(p.q_seq != nullptr ? p.q_seq[qi] : -1),
        back(p.order == kZigZag && (k & 1) != 0) {
        j  = from(0);
        su = si;
    }

    __device__ __forceinline__ int unit_at(int i) const {  // the unit at position i of this slot's order
        const int m = back ? count - 1 - i : m0 + i < count ? m0 + i : m0 + i - count;
        return k + m * step;
    }

    // the first position from i on whose unit the query token sees (si: its segment); -1: none
    __device__ __forceinline__ int from(int i) {
        for (; i < count; ++i) {
            const int u = unit_at(i);
            while (si > 0 && p.seg[si].unit0 > u) {
                --si;
            }
            while (si + 1 < p.n_segments && p.seg[si + 1].unit0 <= u) {
                ++si;
            }
            if (p.seg[si].seq < 0 || p.seg[si].seq == q_seq) {  // another sequence's regions: uniform per block
                return i;
            }
        }
        return -1;
    }

    // Calls f(segment, unit, next, next_unit) for each remaining unit; next is the index in p.seg of the warp's
    // following unit (-1 after the last one), next_unit its unit.
    template <class F> __device__ __forceinline__ void run(F && f) {
        while (j >= 0) {
            const int       u  = unit_at(j);
            const int       jn = from(j + 1);
            const Segment & s  = p.seg[su];
            f(s, u - s.unit0, jn >= 0 ? si : -1, jn >= 0 ? unit_at(jn) - p.seg[si].unit0 : 0);
            j  = jn;
            su = si;
        }
    }
};

// A warp's two shared-memory stages for quantized units (cp.async, double-buffered): enter(), before each unit,
// waits for the unit's copy (started with the previous unit, or now) and starts the copy of the warp's next unit into
// the other stage; it returns the unit's stage. copy(segment, unit, dst) issues one unit's copies. After the unit the
// warp calls __syncwarp(), so that no lane still reads a stage when the copy after next refills it.
struct WarpStages {
    uint8_t * a;
    uint8_t * b;
    bool      in_b   = false;  // the current unit's stage is b
    bool      staged = false;  // the current unit's copy was started with the previous unit (or by prefetch)

    __device__ __forceinline__ WarpStages(uint8_t * a, uint8_t * b) : a(a), b(b) {}

    template <class F>
    __device__ __forceinline__ uint8_t * enter(const Params &  p,
                                               const Segment & s,
                                               int             unit,
                                               int             next,
                                               int             next_unit,
                                               F &&            copy) {
        uint8_t * here = in_b ? b : a;
        if (quantized(s.kind) && !staged) {
            copy(s, unit, here);
            cp_async_commit();
        }
        staged = next >= 0 && quantized(p.seg[next].kind);
        if (staged) {
            copy(p.seg[next], next_unit, in_b ? a : b);
        }
        cp_async_commit();  // (maybe empty) the newest group: every older one, this unit's, is waited for
        cp_async_wait_all_but_newest();
        __syncwarp();
        in_b = !in_b;
        return here;
    }

    // Starts the copy of the walk's first unit (if quantized) into the first stage, before the block's query tables
    // are built; the first enter() then only waits for it.
    template <class F> __device__ __forceinline__ void prefetch(const UnitWalk & walk, F && copy) {
        if (walk.j >= 0 && quantized(walk.p.seg[walk.su].kind)) {
            copy(walk.p.seg[walk.su], walk.unit_at(walk.j) - walk.p.seg[walk.su].unit0, a);
            cp_async_commit();
            staged = true;
        }
    }
};

// Combines the block's warps' partial softmaxes (running max m, sum l, unnormalized rows acc[warp][g * D + d] for
// GS query heads) into split `split`'s rows of part_acc / part_ml, for query heads h0 .. h0 + n_g - 1 (n_g <=
// kRows <= GS: the rows the kernel can have, which bound the unrolled loop). Every thread of the block calls it after
// a barrier that publishes m, l and acc.
template <int D, int GS, int kRows = GS>
__device__ void write_split(const Params & p,
                            int            qi,
                            int            split,
                            int            h0,
                            int            n_g,
                            const float (&m)[kWarps][GS],
                            const float (&l)[kWarps][GS],
                            const float * acc) {
    static_assert(kRows <= GS, "write_split: more rows than the tables hold");
    constexpr int kThreads = kWarps * 32;  // (the kernels' block size)
    // unrolled, so that the rows' chains (m loads, max, exps, sums) overlap
#pragma unroll
    for (int it = 0; it < (kRows * D + kThreads - 1) / kThreads; ++it) {
        const int i = static_cast<int>(threadIdx.x) + it * kThreads;
        if (i < n_g * D) {
            const int g = i / D, d = i % D;
            float     mmax = -INFINITY;
#pragma unroll
            for (int k = 0; k < kWarps; ++k) {
                mmax = fmaxf(mmax, m[k][g]);
            }
            float sum = 0.0f, out = 0.0f;
            if (mmax != -INFINITY) {
#pragma unroll
                for (int k = 0; k < kWarps; ++k) {
                    const float f = m[k][g] == -INFINITY ? 0.0f : expf(m[k][g] - mmax);
                    sum += l[k][g] * f;
                    out += acc[k * GS * D + g * D + d] * f;
                }
            }
            const size_t row        = (static_cast<size_t>(qi) * p.n_head + h0 + g) * p.n_splits + split;
            p.part_acc[row * D + d] = out;
            if (d == 0) {
                p.part_ml[row] = make_float2(mmax, sum);
            }
        }
    }
}

}  // namespace cocktail::cuda_impl
