// Mixed-region attention on CUDA: the same contract as the CPU op (native/README.md, cocktail_attn_args), as a
// split-K decode kernel. One block = one (query token, KV head, group of its query heads, token split); its four
// warps take 32-token units (one quantization block) in turn, dequantize K and V in registers, keep an online
// softmax per query head and merge in shared memory; a second kernel merges the splits (log-sum-exp). GQA groups of
// 4+ query heads run the tensor-core kernel of cocktail_attn_cuda_mma.cuh instead (same plan, same merge), and so
// does MHA where F16 and tail tokens are a large share of the launch (choose_kernel).
#include "cocktail_api.h"
#include "cocktail_attn_cpu.h"
#include "cocktail_attn_cuda_common.cuh"
#include "cocktail_attn_cuda_mma.cuh"
#include "cocktail_cuda.h"
#include "cocktail_errors.h"
#include "cocktail_kv_format.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace cocktail::cuda_impl {

// Codes become floats in 2.0f's mantissa: a code moved to bits 3-6 (Q4) or 5-6 (Q2) of a byte (bit 7 clear), that
// byte put under 2.0f's top exponent byte, reads as 2 (1 + code / M) exactly (M = kCodeMul): one byte-permute per
// code (a quarter-rate integer conversion, or a permute plus a subtraction, otherwise), and no bit to set (1.0f's
// exponent would need bit 7 of the byte: one more logic instruction per four codes). As
// sum_i (M / 2) w_i * 2 (1 + code_i / M) = sum_i w_i code_i + M sum_i w_i, the callers weigh the codes by
// kCodeWeight w = (M / 2) w and take M sum(w) off once, through the minimum terms (K: the bias; V: the p * min
// column).
template <int kind> constexpr float kCodeMul    = kind == kQ4 ? 16.0f : 4.0f;
template <int kind> constexpr float kCodeWeight = kCodeMul<kind> / 2;

// The codes of w at bit offset `at` in every byte (Q4: 0 or 4; Q2: 0, 2, 4 or 6) moved where code_float reads them:
// a rotation, and a mask (bits from the neighbouring byte off).
template <int kind> __device__ __forceinline__ uint32_t code_bytes(uint32_t w, int at) {
    constexpr int      to   = kind == kQ4 ? 3 : 5;
    constexpr uint32_t keep = kind == kQ4 ? 0x78787878u : 0x60606060u;
    return __funnelshift_l(w, w, (to - at) & 31) & keep;
}

// 2 (1 + code / kCodeMul) from byte b (0..3) of a word made by code_bytes.
template <int b> __device__ __forceinline__ float code_float(uint32_t x) {
    return __int_as_float(__byte_perm(x, 0x40000000u, 0x7044 | (b << 8)));
}

// Channels c0..c0+3 and c0+16..c0+19 of one fp16 V row (contiguous channels, 8-byte aligned) as 8 floats.
__device__ __forceinline__ void load_v8(const uint8_t * row, int c0, float (&v)[8]) {
    float a[4], b[4];
    load_halves<4>(row + 2 * c0, a);
    load_halves<4>(row + 2 * (c0 + 16), b);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        v[i]     = a[i];
        v[4 + i] = b[i];
    }
}

// v[j] (j < 8) is this lane's share of token j's score; the eight lanes of an aligned group swap halves three times
// (xor 4, 2, 1) so that lane r of the group ends with the sum over the group of v[r].
__device__ __forceinline__ float reduce_scatter8(float (&v)[8], int r) {
#pragma unroll
    for (int half = 4; half >= 1; half >>= 1) {
        const bool upper = (r & half) != 0;
#pragma unroll
        for (int j = 0; j < half; ++j) {
            const float send = upper ? v[j] : v[j + half];
            const float keep = upper ? v[j + half] : v[j];
            v[j]             = keep + __shfl_xor_sync(0xffffffffu, send, half);
        }
    }
    return v[0];
}

// Shared memory of one block: the scaled query rows, and per warp the query folded with the unit's K scales and the
// unit's probabilities folded with V's scales and mins; the warps' partial outputs reuse the tables at the end.
constexpr int kPsmRow = kUnit + 1;

template <int D, int GS> struct Shared {
    static constexpr int kGroups = D / 32;  // V groups of 32 channels

    float sq[GS * D];                       // [g][channel]

    union {
        struct {
            float qs[kWarps][GS * D];  // [g][channel]: q * K scale of this unit
            // [component][token], component = V group * 2GS + (p*s for g..., p*m for g...); rows of 33 floats keep
            // the owners' writes (one token per lane) and the value lanes' reads free of bank conflicts
            float psm[kWarps][kGroups * 2 * GS * kPsmRow];
        } t;

        float acc[kWarps][GS * D];  // [g][channel]
    };
};

// Lane roles inside a warp (native/README.md layouts):
//  scores: lane = 8*G + r; lanes of group G take tokens 8G..8G+7 of the unit, lane r of a group the channels
//          r, r+8, ... (quantized K: its 8 bytes of each channel's packed codes; F16 K: 16-byte slices). After a
//          reduce-scatter lane l holds token l's score.
//  values: lane = slot*4*kGroups + 4*gi + s; a lane owns 8 channels of V group gi, 32*gi + 4s + {0..3} and
//          32*gi + 16 + 4s + {0..3} (one 4-byte word of a token's Q4 codes, or the matching Q2 bits), for the
//          unit's tokens slot, slot + 32/(4*kGroups), ...
template <int D, int GS> struct WarpState {
    float m[GS];
    float l[GS];
    float acc[GS][8];  // this lane's 8 V channels
    float macc[GS];    // sum of p * V min of this lane's group over a quarter of its tokens (the four lanes of the
                       // group, s = 0..3, add up at the end, then add it to their channels)
};

// Score of token `lane` of the unit against the GS query rows (before the mask). kblock: a Q4 / Q2 unit's K block
// (global memory, or the warp's shared-memory copy).
template <int D, int GS, int kind>
__device__ __forceinline__ void unit_scores(const Params &  p,
                                            const Segment & s,
                                            int             h_kv,
                                            int             unit,
                                            int             lane,
                                            const float *   sq,
                                            float *         qs_tab,
                                            const uint8_t * kblock,
                                            float (&score)[GS]) {
    const int G = lane >> 3, r = lane & 7;
    float     acc[GS][8];
#pragma unroll
    for (int g = 0; g < GS; ++g) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            acc[g][j] = 0.0f;
        }
    }
    if constexpr (kind == kQ4 || kind == kQ2) {
        // q.k = sum_d (q_d * scale_d) * code_d + sum_d q_d * min_d: scales folded into the query once per unit. With
        // codes read as 2 (1 + code / M) (code_float), q_d * scale_d * M / 2 weighs them and the bias takes
        // sum_d q_d * scale_d * M off again:
        // q.k = sum_d (q_d * scale_d * M / 2) * 2 (1 + code_d / M) + q_d * (min_d - M scale_d)
        constexpr int   kCpl   = D / 32;  // channels per lane in the fold
        constexpr int   kBytes = kind == kQ4 ? 16 : 8;
        const uint8_t * base   = kblock;
        float           sc[kCpl], mn[kCpl], bias[GS];
#pragma unroll
        for (int i = 0; i < kCpl; ++i) {  // channels lane + 32 i: coalesced loads, conflict-free table writes
            sc[i] = h2f(base + 2 * (lane + 32 * i)) * kCodeWeight<kind>;
            mn[i] = h2f(base + 2 * (D + lane + 32 * i)) - 2 * sc[i];
        }
#pragma unroll
        for (int g = 0; g < GS; ++g) {
            bias[g] = 0.0f;
        }
#pragma unroll
        for (int i = 0; i < kCpl; ++i) {
            const int c = lane + 32 * i;
#pragma unroll
            for (int g = 0; g < GS; ++g) {
                const float qv    = sq[g * D + c];
                qs_tab[g * D + c] = qv * sc[i];
                bias[g]           = fmaf(qv, mn[i], bias[g]);
            }
        }
        __syncwarp();
        // Q4: bytes 0-7 / 8-15 of a channel hold tokens 0-7 / 8-15 (low nibble) and 16-23 / 24-31 (high nibble);
        // Q2: bytes 0-7 hold tokens 0-7, 8-15, 16-23, 24-31 at shifts 0, 2, 4, 6
        const uint8_t * codes = base + 4 * D + (kind == kQ4 ? (G & 1) * 8 : 0);
        const int       at    = kind == kQ4 ? (G >> 1) * 4 : 2 * G;
#pragma unroll
        for (int k = 0; k < D / 8; ++k) {
            const int      c  = r + 8 * k;
            const uint2    w  = *reinterpret_cast<const uint2 *>(codes + c * kBytes);
            const uint32_t x0 = code_bytes<kind>(w.x, at), x1 = code_bytes<kind>(w.y, at);
            float          qv[GS];
#pragma unroll
            for (int g = 0; g < GS; ++g) {
                qv[g] = qs_tab[g * D + c];
            }
            const float f[8] = { code_float<0>(x0), code_float<1>(x0), code_float<2>(x0), code_float<3>(x0),
                                 code_float<0>(x1), code_float<1>(x1), code_float<2>(x1), code_float<3>(x1) };
#pragma unroll
            for (int g = 0; g < GS; ++g) {
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    acc[g][j] = fmaf(qv[g], f[j], acc[g][j]);
                }
            }
        }
#pragma unroll
        for (int g = 0; g < GS; ++g) {
            score[g] = reduce_scatter8(acc[g], r) + warp_sum(bias[g]);
        }
    } else {
        // F16 region ([head][token][D] rows, 16-byte slices) or the tail (any strides, 2-byte loads)
#pragma unroll
        for (int k = 0; k < (D + 63) / 64; ++k) {
            const int sl = r + 8 * k;  // this lane's slice of 8 channels
            if (8 * sl < D) {
                float qv[GS][8];
#pragma unroll
                for (int g = 0; g < GS; ++g) {
#pragma unroll
                    for (int i = 0; i < 8; ++i) {
                        qv[g][i] = sq[g * D + 8 * sl + i];
                    }
                }
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int t = unit * kUnit + 8 * G + j;
                    if (t >= s.n_tokens) {
                        continue;
                    }
                    float kv[8];
                    if constexpr (kind == kF16) {
                        load_halves<8>(s.k + ((static_cast<size_t>(h_kv) * s.n_tokens + t) * D + 8 * sl) * 2, kv);
                    } else {
                        const uint8_t * row = s.k + t * p.tk_nb_token + h_kv * p.tk_nb_head + 16 * sl;
                        if (p.tail_k_vec) {
                            load_halves<8>(row, kv);
                        } else {
#pragma unroll
                            for (int i = 0; i < 8; ++i) {
                                kv[i] = h2f(row + 2 * i);
                            }
                        }
                    }
#pragma unroll
                    for (int g = 0; g < GS; ++g) {
#pragma unroll
                        for (int i = 0; i < 8; ++i) {
                            acc[g][j] = fmaf(qv[g][i], kv[i], acc[g][j]);
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int g = 0; g < GS; ++g) {
            score[g] = reduce_scatter8(acc[g], r);
        }
    }
}

// Bytes of one stage of the scalar kernel: a Q4 / Q2 unit's K block (a Q4 block's size at most), then its V block's
// scale and min tables (4 D bytes); the V codes are loaded into registers at the start of the unit instead.
template <int D> constexpr int kScalarStage = static_cast<int>(block_bytes<D, kQ4>()) + 4 * D;

// Whether the scalar kernel (D, GS) copies each warp's next quantized unit into shared memory while it computes the
// current one: head_dim up to 128, where two stages per warp fit the 48 KiB of static shared memory with its tables.
template <int D, int GS>
constexpr bool kScalarStaged = D <= 128 && sizeof(Shared<D, GS>) + kWarps * 2 * kScalarStage<D> <= 48 * 1024;

// Starts the warp's copy of quantized unit `unit` of segment s (head h_kv) into a stage (kScalarStage bytes).
template <int D, int kind>
__device__ __forceinline__ void stage_scalar_kind(const Segment & s, int h_kv, int unit, int lane, uint8_t * dst) {
    constexpr int bytes = static_cast<int>(block_bytes<D, kind>());
    const size_t  at    = unit_block(s, h_kv, unit) * bytes;
    copy_chunks<bytes / 16, 16>(dst, s.k + at, lane);
    copy_chunks<4 * D / 16, 16>(dst + block_bytes<D, kQ4>(), s.v + at, lane);
}

template <int D>
__device__ __forceinline__ void stage_scalar_unit(const Segment & s, int h_kv, int unit, int lane, uint8_t * dst) {
    if (s.kind == kQ4) {
        stage_scalar_kind<D, kQ4>(s, h_kv, unit, lane, dst);
    } else {
        stage_scalar_kind<D, kQ2>(s, h_kv, unit, lane, dst);
    }
}

// stage: the unit's copy in shared memory (kScalarStage bytes) if the kernel stages (quantized units only), else null.
template <int D, int GS, int kind>
__device__ void unit_update(const Params &     p,
                            const Segment &    s,
                            int                qi,
                            int                h_kv,
                            int                unit,
                            int                lane,
                            int                n_g,
                            const float *      sq,
                            float *            qs_tab,
                            float *            psm_tab,
                            const uint8_t *    stage,
                            WarpState<D, GS> & w) {
    constexpr int  kGroups        = D / 32;
    constexpr bool kQuant         = kind == kQ4 || kind == kQ2;
    constexpr int  kLanesPerToken = 4 * kGroups;
    constexpr int  kTokensPerStep = 32 / kLanesPerToken;
    constexpr int  kSteps         = kUnit / kTokensPerStep;
    const int      slot = lane / kLanesPerToken, gi = (lane % kLanesPerToken) / 4, s4 = lane % 4;
    const int      t       = unit * kUnit + lane;
    bool           visible = t < s.n_tokens;
    float          bias    = 0.0f;
    if constexpr (kind == kTail) {  // the cache's view is padded with masked cells: skip units that see nothing
        if (visible && p.mask != nullptr) {
            const uint8_t * row = p.mask + qi * p.mask_nb_row;
            bias                = p.mask_f16 ? h2f(row + 2 * t) : reinterpret_cast<const float *>(row)[t];
            visible             = bias != -INFINITY;
        }
        if (!__any_sync(0xffffffffu, visible)) {
            return;
        }
    }
    const size_t    block  = kQuant ? unit_block(s, h_kv, unit) * block_bytes<D, kind>() : 0;
    const uint8_t * vbase  = kQuant ? s.v + block : nullptr;
    const uint8_t * kblock = kQuant ? (kScalarStaged<D, GS> ? stage : s.k + block) : nullptr;
    const uint8_t * vtab   = kQuant && kScalarStaged<D, GS> ? stage + block_bytes<D, kQ4>() : vbase;  // V scale, min
    // this lane's V code words of the unit, loaded before the scores so that both streams are in flight together
    uint32_t        vword[kQuant ? kSteps : 1];
    if constexpr (kQuant) {
#pragma unroll
        for (int k = 0; k < kSteps; ++k) {
            const int tt = slot + kTokensPerStep * k;
            vword[k] = kind == kQ4 ?
                           *reinterpret_cast<const uint32_t *>(vbase + 4 * D + (tt * kGroups + gi) * 16 + 4 * s4) :
                           *reinterpret_cast<const uint32_t *>(vbase + 4 * D + (tt * kGroups + gi) * 8 + 4 * (s4 & 1));
        }
    }
    __syncwarp();  // the previous unit's reads of this warp's tables are done
    float score[GS];
    unit_scores<D, GS, kind>(p, s, h_kv, unit, lane, sq, qs_tab, kblock, score);
    float prob[GS];
    bool  any = false;
#pragma unroll
    for (int g = 0; g < GS; ++g) {
        const float sc   = visible ? score[g] + bias : -INFINITY;
        const float mmax = fmaxf(w.m[g], warp_max(sc));
        if (g >= n_g || mmax == -INFINITY) {
            prob[g] = 0.0f;
            continue;
        }
        prob[g]          = visible ? expf(sc - mmax) : 0.0f;
        const float corr = w.m[g] == -INFINITY ? 0.0f : expf(w.m[g] - mmax);
        w.l[g]           = w.l[g] * corr + warp_sum(prob[g]);
        w.m[g]           = mmax;
        w.macc[g] *= corr;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            w.acc[g][i] *= corr;
        }
        any = any || prob[g] != 0.0f;
    }
    if (!__any_sync(0xffffffffu, any)) {
        return;
    }
    // this lane's token: p * scale * M / 2 and p * (min - scale * M) of each V group (codes read as 2 (1 + code / M),
    // see code_float; F16 / tail: p and 0), for the value lanes
    {
        float vs[kGroups], vm[kGroups];
        if constexpr (kQuant) {
            load_halves<kGroups>(vtab + 2 * lane * kGroups, vs);
            load_halves<kGroups>(vtab + 2 * D + 2 * lane * kGroups, vm);
#pragma unroll
            for (int gi = 0; gi < kGroups; ++gi) {
                vs[gi] *= kCodeWeight<kind>;
                vm[gi] -= 2 * vs[gi];
            }
        } else {
#pragma unroll
            for (int gi = 0; gi < kGroups; ++gi) {
                vs[gi] = 1.0f;
                vm[gi] = 0.0f;
            }
        }
#pragma unroll
        for (int gi = 0; gi < kGroups; ++gi) {
#pragma unroll
            for (int g = 0; g < GS; ++g) {
                psm_tab[(gi * 2 * GS + g) * kPsmRow + lane]      = prob[g] * vs[gi];
                psm_tab[(gi * 2 * GS + GS + g) * kPsmRow + lane] = prob[g] * vm[gi];
            }
        }
    }
    __syncwarp();
    if constexpr (kQuant) {  // the p * min column: lane s4 of the group takes steps s4, s4 + 4, ... of its tokens
        const float * e = psm_tab + (gi * 2 * GS + GS) * kPsmRow + slot + kTokensPerStep * s4;
#pragma unroll
        for (int k = 0; k < kSteps; k += 4) {
#pragma unroll
            for (int g = 0; g < GS; ++g) {
                w.macc[g] += e[g * kPsmRow + kTokensPerStep * k];
            }
        }
    }
    const int ch0 = 32 * gi + 4 * s4;  // channels ch0 + {0..3} and ch0 + 16 + {0..3}
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
        const int     tt = slot + kTokensPerStep * k;
        const float * e  = psm_tab + gi * 2 * GS * kPsmRow + tt;  // component j of this token: e[j * kPsmRow]
        float         ps[GS];
#pragma unroll
        for (int g = 0; g < GS; ++g) {
            ps[g] = e[g * kPsmRow];
        }
        float v[8];
        if constexpr (kQuant) {
            // Q4: byte j of a token's group holds channel j (low nibble) and j + 16 (high); Q2: channels j, j + 8,
            // j + 16, j + 24 at bit offsets 0, 2, 4, 6
            const int      at = kind == kQ4 ? 0 : 2 * (s4 >> 1);
            const uint32_t lo = code_bytes<kind>(vword[k], at), hi = code_bytes<kind>(vword[k], at + 4);
            v[0] = code_float<0>(lo), v[1] = code_float<1>(lo), v[2] = code_float<2>(lo);
            v[3] = code_float<3>(lo), v[4] = code_float<0>(hi), v[5] = code_float<1>(hi);
            v[6] = code_float<2>(hi), v[7] = code_float<3>(hi);
        } else {
            const int t_abs = unit * kUnit + tt;
            if (t_abs >= s.n_tokens) {
                continue;
            }
            if constexpr (kind == kF16) {
                load_v8(s.v + (static_cast<size_t>(h_kv) * s.n_tokens + t_abs) * D * 2, ch0, v);
            } else {
                const uint8_t * row = s.v + t_abs * p.tv_nb_token + h_kv * p.tv_nb_head;
                if (p.tail_v_vec) {
                    load_v8(row, ch0, v);
                } else {
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        v[i]     = h2f(row + (ch0 + i) * p.tv_nb_channel);
                        v[4 + i] = h2f(row + (ch0 + 16 + i) * p.tv_nb_channel);
                    }
                }
            }
        }
#pragma unroll
        for (int g = 0; g < GS; ++g) {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                w.acc[g][i] = fmaf(ps[g], v[i], w.acc[g][i]);
            }
        }
    }
}

template <int D, int GS>
__global__ void __launch_bounds__(kWarps * 32,
                                  GS == 1 ? 6 :
                                  GS == 2 ? 4 :
                                            3)
attn_partial(const Params p) {
    __shared__ Shared<D, GS> sh;

    const int qi = blockIdx.z, split = blockIdx.y;
    const int h_kv = blockIdx.x / p.n_gblocks, gb = blockIdx.x % p.n_gblocks;
    const int h0 = h_kv * p.group + gb * GS, n_g = min(GS, p.group - gb * GS);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    // the query rows' loads first, then the copy of each warp's first unit, so that both latencies overlap
    constexpr int kQLoads = (GS * D + kWarps * 32 - 1) / (kWarps * 32);
    float         qv[kQLoads];
#pragma unroll
    for (int it = 0; it < kQLoads; ++it) {
        const int i = static_cast<int>(threadIdx.x) + it * kWarps * 32, g = i / D, d = i % D;
        qv[it] = i < GS * D && g < n_g ?
                     p.scale * *reinterpret_cast<const float *>(reinterpret_cast<const uint8_t *>(p.q) +
                                                                qi * p.q_nb_token + (h0 + g) * p.q_nb_head + 4 * d) :
                     0.0f;
    }
    // each warp's two stages (kScalarStaged): the next quantized unit copies in while this one computes
    __shared__ __align__(16) uint8_t stages[kScalarStaged<D, GS> ? kWarps * 2 * kScalarStage<D> : 16];
    WarpStages                       ws(stages + 2 * warp * kScalarStage<D>, stages + (2 * warp + 1) * kScalarStage<D>);
    const auto                       copy = [&](const Segment & seg, int u, uint8_t * dst) {
        stage_scalar_unit<D>(seg, h_kv, u, lane, dst);
    };
    UnitWalk walk(p, qi, split, warp);
    if constexpr (kScalarStaged<D, GS>) {
        ws.prefetch(walk, copy);
    }
#pragma unroll
    for (int it = 0; it < kQLoads; ++it) {
        if (const int i = static_cast<int>(threadIdx.x) + it * kWarps * 32; i < GS * D) {
            sh.sq[i] = qv[it];
        }
    }
    __syncthreads();

    WarpState<D, GS> w;
#pragma unroll
    for (int g = 0; g < GS; ++g) {
        w.m[g]    = -INFINITY;
        w.l[g]    = 0.0f;
        w.macc[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            w.acc[g][i] = 0.0f;
        }
    }
    float * qs_tab  = sh.t.qs[warp];
    float * psm_tab = sh.t.psm[warp];
    walk.run([&](const Segment & s, int unit, int next, int next_unit) {
        uint8_t * here = nullptr;
        if constexpr (kScalarStaged<D, GS>) {
            here = ws.enter(p, s, unit, next, next_unit, copy);
        }
        switch (s.kind) {
            case kF16:
                unit_update<D, GS, kF16>(p, s, qi, h_kv, unit, lane, n_g, sh.sq, qs_tab, psm_tab, nullptr, w);
                break;
            case kQ4:
                unit_update<D, GS, kQ4>(p, s, qi, h_kv, unit, lane, n_g, sh.sq, qs_tab, psm_tab, here, w);
                break;
            case kQ2:
                unit_update<D, GS, kQ2>(p, s, qi, h_kv, unit, lane, n_g, sh.sq, qs_tab, psm_tab, here, w);
                break;
            default:
                unit_update<D, GS, kTail>(p, s, qi, h_kv, unit, lane, n_g, sh.sq, qs_tab, psm_tab, nullptr, w);
                break;
        }
        if constexpr (kScalarStaged<D, GS>) {
            __syncwarp();  // every lane is done with this stage before the copy after next refills it
        }
    });
    // the lanes that own the same channels (other token slots) add up; the tables become the output buffer
    constexpr int kLanesPerToken = 4 * (D / 32);
#pragma unroll
    for (int g = 0; g < GS; ++g) {  // the four lanes of a V group add their quarters of the p * min sums
        w.macc[g] += __shfl_xor_sync(0xffffffffu, w.macc[g], 1);
        w.macc[g] += __shfl_xor_sync(0xffffffffu, w.macc[g], 2);
    }
#pragma unroll
    for (int o = kLanesPerToken; o < 32; o <<= 1) {
#pragma unroll
        for (int g = 0; g < GS; ++g) {
            w.macc[g] += __shfl_xor_sync(0xffffffffu, w.macc[g], o);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                w.acc[g][i] += __shfl_xor_sync(0xffffffffu, w.acc[g][i], o);
            }
        }
    }
    __shared__ float s_m[kWarps][GS], s_l[kWarps][GS];
    __syncthreads();  // every warp is done with its tables
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < GS; ++g) {
            s_m[warp][g] = w.m[g];
            s_l[warp][g] = w.l[g];
        }
    }
    if (lane < kLanesPerToken) {
        const int ch0 = 32 * (lane / 4) + 4 * (lane % 4);
#pragma unroll
        for (int g = 0; g < GS; ++g) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                sh.acc[warp][g * D + ch0 + i]      = w.acc[g][i] + w.macc[g];
                sh.acc[warp][g * D + ch0 + 16 + i] = w.acc[g][4 + i] + w.macc[g];
            }
        }
    }
    __syncthreads();
    write_split<D, GS>(p, qi, split, h0, n_g, s_m, s_l, &sh.acc[0][0]);
}

constexpr int kMergeWarps = 8;

// x reduced over the block (every thread gets the result); `red` holds one float per warp.
template <bool kMax> __device__ float block_reduce(float x, float * red) {
    x              = kMax ? warp_max(x) : warp_sum(x);
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) {
        red[warp] = x;
    }
    __syncthreads();
    x = red[0];
    for (int w = 1; w < kMergeWarps; ++w) {
        x = kMax ? fmaxf(x, red[w]) : x + red[w];
    }
    __syncthreads();  // red is reused
    return x;
}

// Splits' rows of part_acc that each thread of the merge has in flight at once.
constexpr int kMergeBatch = 4;

// One block per (query token, head): merges the splits' partial softmaxes into the output row. Thread i sums channels
// 4c .. 4c + 3 (c = i % (D / 4)) of the rows of splits i / (D / 4), + P, + 2P, ... (P = threads / (D / 4)), as
// float4 loads, kMergeBatch rows in flight; the first batch is loaded before the splits' weights are found, so that
// its latency overlaps theirs. The per-thread sums meet in shared memory. part_acc is 16-byte aligned (launch_merge).
// Dynamic shared memory: n_splits rounded up to 4, then kMergeWarps * 32 float4.
__global__ void __launch_bounds__(kMergeWarps * 32) attn_merge(const float *  part_acc,
                                                               const float2 * part_ml,
                                                               int            n_splits,
                                                               int            n_head,
                                                               int            D,
                                                               uint8_t *      out,
                                                               size_t         out_nb_token,
                                                               size_t         out_nb_head) {
    extern __shared__ float merge_smem[];
    __shared__ float        red[kMergeWarps];
    float *                 wts  = merge_smem;                                                       // [n_splits]
    float4 *                sums = reinterpret_cast<float4 *>(merge_smem + (n_splits + 3) / 4 * 4);  // [threads]
    const int               qi = blockIdx.y, h = blockIdx.x;
    const size_t            row0  = (static_cast<size_t>(qi) * n_head + h) * n_splits;
    const int               quads = D / 4, rows = blockDim.x / quads, c = threadIdx.x % quads, r0 = threadIdx.x / quads;
    const float4 *          acc4 = reinterpret_cast<const float4 *>(part_acc + row0 * D) + c;

    const auto load_batch = [&](int s, float4(&x)[kMergeBatch]) {
#pragma unroll
        for (int k = 0; k < kMergeBatch; ++k) {
            const int sk = s + k * rows;
            x[k]         = sk < n_splits ? acc4[static_cast<size_t>(sk) * quads] : make_float4(0, 0, 0, 0);
        }
    };
    float4 x[kMergeBatch];
    load_batch(r0, x);

    float mmax = -INFINITY;
    for (int s = threadIdx.x; s < n_splits; s += blockDim.x) {
        mmax = fmaxf(mmax, part_ml[row0 + s].x);
    }
    mmax    = block_reduce<true>(mmax, red);
    float l = 0.0f;
    for (int s = threadIdx.x; s < n_splits; s += blockDim.x) {
        const float2 ml = part_ml[row0 + s];
        const float  f  = mmax == -INFINITY || ml.x == -INFINITY ? 0.0f : expf(ml.x - mmax);
        wts[s]          = f;
        l += ml.y * f;
    }
    l = block_reduce<false>(l, red);  // its barrier also publishes wts

    float4 acc = make_float4(0, 0, 0, 0);
    for (int s = r0;; s += kMergeBatch * rows) {
#pragma unroll
        for (int k = 0; k < kMergeBatch; ++k) {
            const int   sk = s + k * rows;
            const float f  = sk < n_splits ? wts[sk] : 0.0f;
            acc.x = fmaf(f, x[k].x, acc.x), acc.y = fmaf(f, x[k].y, acc.y);
            acc.z = fmaf(f, x[k].z, acc.z), acc.w = fmaf(f, x[k].w, acc.w);
        }
        if (s + kMergeBatch * rows >= n_splits) {
            break;
        }
        load_batch(s + kMergeBatch * rows, x);
    }
    sums[threadIdx.x] = acc;
    __syncthreads();
    const float * sum1 = reinterpret_cast<const float *>(sums);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float a = 0.0f;
        for (int r = 0; r < rows; ++r) {
            a += sum1[r * D + d];
        }
        reinterpret_cast<float *>(out + qi * out_nb_token + h * out_nb_head)[d] = l > 0.0f ? a / l : 0.0f;
    }
}

// The tail's strides (bytes) from the call's arguments, and whether its K rows / V channels allow vector loads
// (contiguous channels, every row and head start aligned) from the device copies k and v.
void set_tail_layout(Params & p, const cocktail_attn_args & a, const void * k, const void * v) {
    p.tk_nb_token = a.tail_k_nb_token, p.tk_nb_head = a.tail_k_nb_head;
    p.tv_nb_token = a.tail_v_nb_token, p.tv_nb_channel = a.tail_v_nb_channel, p.tv_nb_head = a.tail_v_nb_head;
    const auto aligned = [](const void * ptr, size_t nb_a, size_t nb_b, size_t to) {
        return reinterpret_cast<uintptr_t>(ptr) % to == 0 && nb_a % to == 0 && nb_b % to == 0;
    };
    p.tail_k_vec = aligned(k, p.tk_nb_token, p.tk_nb_head, 16);
    p.tail_v_vec = p.tv_nb_channel == 2 && aligned(v, p.tv_nb_token, p.tv_nb_head, 8);
}

int cuda_fail(cudaError_t err, const char * what) {
    return fail(COCKTAIL_EINTERNAL,
                std::string("cocktail_attn_mixed_regions_cuda: ") + what + ": " + cudaGetErrorString(err));
}

// Query heads per block of the scalar kernel: the GQA group rounded up to a power of two, at most 4 and at most
// 512 / D (registers: 16 score and value accumulators per query head and lane; shared memory: the per-warp tables
// grow with GS * D).
constexpr int kMaxGs = 4;

constexpr int max_group_size(int D) {
    return 512 / D < kMaxGs ? 512 / D : kMaxGs;
}

// GQA groups of this size and more run on the tensor-core kernel (attn_partial_mma), where head_dim allows.
constexpr int kMmaMinGroup = 4;

// The partial kernel of a launch: gs query heads per block, on tensor cores (attn_partial_mma: gs = kMmaRows for GQA
// groups in the rows layout, kPairHeads in the pairs layout, 1 for MHA) or not (attn_partial<D, gs>).
struct Kernel {
    int  gs;
    bool mma;
};

// Which kernel runs MHA (one query head per KV head), where head_dim allows the tensor-core kernel's one-head
// variant: COCKTAIL_MHA_KERNEL=auto (the default), mma or scalar, read at each launch (for measuring, as
// COCKTAIL_UNIT_ORDER: unit_order). Per unit the scalar kernel is faster on Q4 / Q2, the tensor-core one on F16
// (and so the tail); taking its units in the rotated order, the tensor-core kernel runs F16 units beside quantized
// ones, and any mix of the two is faster there (bench/results/attn_mha_low_f16.md, Llama-2 shape, tensor-core
// rotated against scalar forward, 32K / 64K: 3 % F16 74.4 / 137.2 against 79.1 / 142.8 us; 10 % 75.2 / 139.4
// against 86.7 / 161.3 (attn_mha_repeat.md); all Q2 73.0 / 135.7 against 67.2 / 122.6; all F16 203.6 / 394.6
// against 231.4 / 452.5). auto takes the tensor-core kernel from kMmaF16Share of F16 and tail tokens on.
enum MhaKernel { kMhaAuto, kMhaMma, kMhaScalar };

constexpr double kMmaF16Share = 0.02;

// A measuring setting from the environment: index = the position of its value in `values` (N names), or -1 where
// the variable is unset or empty; an unknown value is EINVAL naming the variable, the value and the choices.
template <size_t N> int env_choice(const char * name, const char * const (&values)[N], int & index) {
    const char *      env = std::getenv(name);
    const std::string v   = env != nullptr ? env : "";
    index                 = -1;
    std::string choices;
    for (size_t i = 0; i < N; ++i) {
        if (v == values[i]) {
            index = static_cast<int>(i);
        }
        choices += std::string(i == 0 ? "" : i + 1 == N ? " or " : ", ") + values[i];
    }
    if (!v.empty() && index < 0) {
        return fail(COCKTAIL_EINVAL, std::string(name) + "=" + v + ": " + choices);
    }
    return COCKTAIL_OK;
}

// The layout of the tensor-core kernel for GQA groups of kMmaMinGroup .. kPairHeads query heads (MmaLayout):
// COCKTAIL_GQA_LAYOUT=auto (the default: pairs), pairs or rows, read at each launch (for measuring, as
// COCKTAIL_MHA_KERNEL). Larger groups take the rows layout whatever it says.
enum GqaLayout { kGqaAuto, kGqaPairs, kGqaRows };

// A measuring setting whose choices are enum E's values in kNames' order, E's first (auto) where unset.
template <typename E, size_t N> int env_enum(const char * name, const char * const (&names)[N], E & k) {
    int       i  = -1;
    const int rc = env_choice(name, names, i);
    k            = static_cast<E>(i < 0 ? 0 : i);
    return rc;
}

int gqa_layout(GqaLayout & k) {
    static const char * const kNames[] = { "auto", "pairs", "rows" };  // in GqaLayout's order
    return env_enum("COCKTAIL_GQA_LAYOUT", kNames, k);
}

int mha_kernel(MhaKernel & k) {
    static const char * const kNames[] = { "auto", "mma", "scalar" };  // in MhaKernel's order
    return env_enum("COCKTAIL_MHA_KERNEL", kNames, k);
}

// The share of p's tokens in F16 regions and the tail.
double f16_share(const Params & p) {
    double all = 0.0, f16 = 0.0;
    for (int i = 0; i < p.n_segments; ++i) {
        all += p.seg[i].n_tokens;
        f16 += p.seg[i].kind == kF16 || p.seg[i].kind == kTail ? p.seg[i].n_tokens : 0;
    }
    return all > 0.0 ? f16 / all : 0.0;
}

// The kernel for p's query heads per KV head, head_dim D and (MHA) F16 share; rc: mha_kernel's or gqa_layout's (on
// an error, the kernel that auto would take).
Kernel choose_kernel(const Params & p, int D, int & rc) {
    rc = COCKTAIL_OK;
    if (!mma_head_dim(D)) {
        // (scalar kernel below)
    } else if (p.group >= kMmaMinGroup) {
        GqaLayout gl = kGqaAuto;
        rc           = gqa_layout(gl);
        return { p.group <= kPairHeads && gl != kGqaRows ? kPairHeads : kMmaRows, true };
    } else if (p.group == 1) {
        MhaKernel mk = kMhaAuto;
        rc           = mha_kernel(mk);
        if (mk == kMhaMma || (mk == kMhaAuto && f16_share(p) >= kMmaF16Share)) {
            return { 1, true };
        }
    }
    const int cap = max_group_size(D);
    int       gs  = 1;
    while (gs < p.group && gs < cap) {
        gs *= 2;
    }
    return { gs, false };
}

template <int D> const void * partial_kernel_d(Kernel k) {
    if constexpr (mma_head_dim(D)) {
        if (k.mma) {
            return k.gs == 1          ? reinterpret_cast<const void *>(&attn_partial_mma<D, kOneHead>) :
                   k.gs == kPairHeads ? reinterpret_cast<const void *>(&attn_partial_mma<D, kHeadPairs>) :
                                        reinterpret_cast<const void *>(&attn_partial_mma<D, kHeadRows>);
        }
    }
    if (k.gs == 1) {
        return reinterpret_cast<const void *>(&attn_partial<D, 1>);
    }
    if (k.gs == 2) {
        return reinterpret_cast<const void *>(&attn_partial<D, 2>);
    }
    if constexpr (max_group_size(D) >= 4) {
        return reinterpret_cast<const void *>(&attn_partial<D, 4>);
    }
    return nullptr;
}

// The partial kernel for head_dim D (supported) and k = choose_kernel(...).
const void * partial_kernel(int D, Kernel k) {
    switch (D) {
        case 32:
            return partial_kernel_d<32>(k);
        case 64:
            return partial_kernel_d<64>(k);
        case 128:
            return partial_kernel_d<128>(k);
        default:
            return partial_kernel_d<256>(k);
    }
}

// Dynamic shared memory of the partial kernel (D, k): the tensor-core kernel's tables, none for the scalar one.
size_t partial_smem(int D, Kernel k) {
    if (!k.mma || !mma_head_dim(D)) {
        return 0;
    }
    return D == 32 ? sizeof(MmaShared<32>) : D == 64 ? sizeof(MmaShared<64>) : sizeof(MmaShared<128>);
}

// Blocks of the partial kernel (D, k) the whole current device holds at once (SMs x blocks per SM), cached per
// device: the launch plan asks for it on every call, before every launch, so the first call on a device also
// raises the kernel's dynamic shared-memory limit there.
int resident_blocks(int D, Kernel k) {
    constexpr int           kMaxDevices = 16;
    static std::atomic<int> cache[kMaxDevices][4][kMmaRows + 1][2];
    int                     dev = 0;
    cudaGetDevice(&dev);
    const int di = D == 32 ? 0 : D == 64 ? 1 : D == 128 ? 2 : 3;
    if (dev >= kMaxDevices) {
        dev = kMaxDevices - 1;  // only a plan: a wrong cached value costs speed, not correctness
    }
    std::atomic<int> & slot = cache[dev][di][k.gs][k.mma ? 1 : 0];
    int                n    = slot.load(std::memory_order_relaxed);
    if (n == 0) {
        int          n_sm = 0, per_sm = 0;
        const size_t smem = partial_smem(D, k);
        cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev);
        if (smem > 0) {
            cudaFuncSetAttribute(partial_kernel(D, k), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(smem));
        }
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, partial_kernel(D, k), kWarps * 32, smem);
        n = std::max(1, n_sm * per_sm);
        slot.store(n, std::memory_order_relaxed);
    }
    return n;
}

bool head_dim_supported(int D) {
    return D == 32 || D == 64 || D == 128 || D == 256;
}

// Fills p.n_gblocks and p.n_splits (at most max_splits) for kernel k.
// Splits: one wave of blocks over the whole GPU (every block's work is alike, so one wave balances), at least one
// unit per warp.
void plan_launch(Params & p, int D, Kernel k, int max_splits) {
    p.n_gblocks           = (p.group + k.gs - 1) / k.gs;
    const int base_blocks = p.n_head_kv * p.n_gblocks * p.n_q;
    p.n_splits = std::max(1, std::min({ resident_blocks(D, k) / base_blocks, (p.n_units + kWarps - 1) / kWarps,
                                        std::max(1, max_splits) }));
}

// The merge kernel: out rows (strides in bytes) from n_splits partial results (0: zeros).
int launch_merge(const Params & p,
                 int            n_splits,
                 int            D,
                 void *         out,
                 size_t         out_nb_token,
                 size_t         out_nb_head,
                 cudaStream_t   stream) {
    if (reinterpret_cast<uintptr_t>(p.part_acc) % 16 != 0) {  // (float4 loads; the scratch is 256-byte aligned)
        return fail(COCKTAIL_EINTERNAL, "cocktail_attn_mixed_regions_cuda: split scratch not 16-byte aligned");
    }
    const size_t smem = ((static_cast<size_t>(n_splits) + 3) / 4 * 4 + 4 * kMergeWarps * 32) * sizeof(float);
    attn_merge<<<dim3(p.n_head, p.n_q), kMergeWarps * 32, smem, stream>>>(
        p.part_acc, p.part_ml, n_splits, p.n_head, D, static_cast<uint8_t *>(out), out_nb_token, out_nb_head);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
        return cuda_fail(err, "attn_merge launch");
    }
    return COCKTAIL_OK;
}

// The order in which the warps take their units (UnitOrder) for kernel k: rotated for the tensor-core kernels,
// forward for the scalar one (bench/results/attn_cuda_orders_784a12e.md: at 64K the Llama-3 mix takes 55.5 us
// rotated, 57.1 zig-zag, 62.4 forward; the Llama-2 mix 161.8 forward, 166.0 zig-zag, 188.1 rotated on the scalar
// kernel and, attn_mha_orders3.md, 170.1 forward, 155.7 zig-zag, 139.3 rotated on the tensor-core kernel).
// COCKTAIL_UNIT_ORDER=forward|rotated|zigzag in the environment sets it for every kernel, for measuring: read at
// each launch, so a captured CUDA graph keeps the order it was captured with (and, like any getenv, not to be
// changed from another thread while a launch runs).
int unit_order(Kernel k, int & order) {
    static const char * const kNames[] = { "forward", "rotated", "zigzag" };  // in UnitOrder's order
    int                       i        = -1;
    const int                 rc       = env_choice("COCKTAIL_UNIT_ORDER", kNames, i);
    order                              = i >= 0 ? i : k.mma ? kRotated : kForward;
    return rc;
}

// The partial kernel over p (head_dim D, checked by graph_params), at most max_splits token splits.
int run(int D, Params & p, cudaStream_t stream, int max_splits) {
    int          rc = COCKTAIL_OK;
    const Kernel k  = choose_kernel(p, D, rc);
    if (rc != COCKTAIL_OK) {
        return rc;
    }
    plan_launch(p, D, k, max_splits);
    if (rc = unit_order(k, p.order); rc != COCKTAIL_OK) {
        return rc;
    }
    const dim3 grid(p.n_head_kv * p.n_gblocks, p.n_splits, p.n_q);
    void *     args[] = { &p };
    cudaLaunchKernel(partial_kernel(D, k), grid, dim3(kWarps * 32), args, partial_smem(D, k), stream);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
        return cuda_fail(err, "attn_partial launch");
    }
    return COCKTAIL_OK;
}

// Device copy of one host buffer, freed with the object.
struct DeviceBuffer {
    void * ptr = nullptr;

    ~DeviceBuffer() {
        if (ptr) {
            cudaFree(ptr);
        }
    }

    cudaError_t upload(const void * src, size_t bytes) {
        if (bytes == 0) {
            return cudaSuccess;
        }
        if (cudaError_t err = cudaMalloc(&ptr, bytes); err != cudaSuccess) {
            return err;
        }
        return src ? cudaMemcpy(ptr, src, bytes, cudaMemcpyHostToDevice) : cudaSuccess;
    }
};

// Device copies of an attention call's inputs (pointers in the args are host memory) as a graph op call, so that
// the C API runs the graph op's own path (segment table, split plan, merge); its scratch and output.
struct DeviceCall {
    CudaGraphAttn                   call;
    std::vector<cocktail_kv_region> regions;  // the args' regions, device pointers
    std::vector<DeviceBuffer>       bufs;
    DeviceBuffer                    scratch, out;
    size_t                          out_bytes = 0, bytes_read = 0;
    int                             n_units = 0;
};

int upload_call(const cocktail_attn_args & a, DeviceCall & c) {
    if (int rc = attn_mixed_regions_check(a); rc != COCKTAIL_OK) {
        return rc;
    }
    if (a.n_regions + 1 > kMaxSegments) {
        return fail(COCKTAIL_EUNSUPPORTED, "cocktail_attn_mixed_regions_cuda: " + std::to_string(a.n_regions) +
                                               " regions (the kernel takes up to " + std::to_string(kMaxSegments - 1) +
                                               ")");
    }
    const int D = a.head_dim, n_q = a.n_q_tokens;
    if (!head_dim_supported(D)) {
        return fail(COCKTAIL_EUNSUPPORTED, "cocktail_attn_mixed_regions_cuda: head_dim " + std::to_string(D) +
                                               " (CUDA kernels: 32, 64, 128, 256)");
    }
    cocktail_attn_args & d = c.call.args;
    d                      = a;
    c.bufs.resize(2 * a.n_regions + 4);
    size_t             nb = 0;
    std::vector<float> q_host(static_cast<size_t>(n_q) * a.n_head * D);  // packed [n_q][n_head][D]
    for (int i = 0; i < n_q; ++i) {
        for (int h = 0; h < a.n_head; ++h) {
            const auto * row = reinterpret_cast<const float *>(reinterpret_cast<const uint8_t *>(a.q) +
                                                               i * a.q_nb_token + h * a.q_nb_head);
            std::copy(row, row + D, q_host.begin() + (static_cast<size_t>(i) * a.n_head + h) * D);
        }
    }
    cudaError_t err = c.bufs[nb].upload(q_host.data(), q_host.size() * sizeof(float));
    d.q             = static_cast<const float *>(c.bufs[nb++].ptr);
    d.q_nb_token = static_cast<size_t>(a.n_head) * D * sizeof(float), d.q_nb_head = D * sizeof(float);
    c.bytes_read = q_host.size() * sizeof(float);
    c.regions.assign(a.regions, a.regions + a.n_regions);
    for (cocktail_kv_region & reg : c.regions) {
        if (reg.n_tokens == 0 || err != cudaSuccess) {
            continue;
        }
        const size_t bytes = region_bytes(reg.precision, reg.n_tokens, a.n_head_kv, D);
        err                = c.bufs[nb].upload(reg.k, bytes);
        reg.k              = c.bufs[nb++].ptr;
        if (err == cudaSuccess) {
            err = c.bufs[nb].upload(reg.v, bytes);
        }
        reg.v = c.bufs[nb++].ptr;
        c.n_units += (reg.n_tokens + kUnit - 1) / kUnit;
        c.bytes_read += 2 * bytes;
    }
    d.regions = nullptr, d.n_regions = 0;  // the graph op reads c.call.sets
    c.call.sets.push_back(CudaRegionSet{ -1, c.regions.data(), static_cast<int>(c.regions.size()) });
    if (a.n_tail > 0 && err == cudaSuccess) {
        // the tail's byte span: from its first element to one past its last, under any non-negative strides
        auto span = [&](size_t nb_token, size_t nb_a, size_t nb_b, size_t n_a, size_t n_b) {
            return (a.n_tail - 1) * nb_token + (n_a - 1) * nb_a + (n_b - 1) * nb_b + 2;
        };
        err      = c.bufs[nb].upload(a.tail_k, span(a.tail_k_nb_token, a.tail_k_nb_head, 2, a.n_head_kv, D));
        d.tail_k = c.bufs[nb++].ptr;
        if (err == cudaSuccess) {
            err = c.bufs[nb].upload(a.tail_v,
                                    span(a.tail_v_nb_token, a.tail_v_nb_head, a.tail_v_nb_channel, a.n_head_kv, D));
        }
        d.tail_v = c.bufs[nb++].ptr;
        if (a.mask != nullptr && err == cudaSuccess) {
            err    = c.bufs[nb].upload(a.mask, (n_q - 1) * a.mask_nb_row + a.n_tail * (a.mask_f16 ? 2 : 4));
            d.mask = c.bufs[nb++].ptr;
        }
        c.n_units += (a.n_tail + kUnit - 1) / kUnit;
        c.bytes_read += static_cast<size_t>(a.n_tail) * a.n_head_kv * D * 4;
    }
    if (err != cudaSuccess) {
        return cuda_fail(err, "copying the inputs");
    }
    c.out_bytes    = static_cast<size_t>(n_q) * a.n_head * D * sizeof(float);
    d.out_nb_token = static_cast<size_t>(a.n_head) * D * sizeof(float), d.out_nb_head = D * sizeof(float);
    c.call.scratch_bytes = cuda_graph_attn_scratch(c.call);
    if ((err = c.scratch.upload(nullptr, c.call.scratch_bytes)) != cudaSuccess ||
        (err = c.out.upload(nullptr, c.out_bytes)) != cudaSuccess) {
        return cuda_fail(err, "allocating scratch");
    }
    c.call.scratch = c.scratch.ptr;
    d.out          = static_cast<float *>(c.out.ptr);
    // poison: a row the kernels forget to write comes back NaN
    if ((err = cudaMemset(c.out.ptr, 0xff, c.out_bytes)) != cudaSuccess ||
        (err = cudaMemset(c.scratch.ptr, 0xff, c.call.scratch_bytes)) != cudaSuccess) {
        return cuda_fail(err, "poisoning the outputs");
    }
    return COCKTAIL_OK;
}

// The output rows [n_q][n_head][head_dim] of `src` into the args' output (any strides).
void write_rows(const cocktail_attn_args & a, const float * src) {
    for (int i = 0; i < a.n_q_tokens; ++i) {
        for (int h = 0; h < a.n_head; ++h) {
            float * row =
                reinterpret_cast<float *>(reinterpret_cast<uint8_t *>(a.out) + i * a.out_nb_token + h * a.out_nb_head);
            const float * from = src + (static_cast<size_t>(i) * a.n_head + h) * a.head_dim;
            std::copy(from, from + a.head_dim, row);
        }
    }
}

// Kernel parameters of a graph op call (pointers already on the device); scratch is not set here.
int graph_params(const CudaGraphAttn & c, Params & p) {
    const cocktail_attn_args & a = c.args;
    if (!head_dim_supported(a.head_dim)) {
        return fail(COCKTAIL_EUNSUPPORTED,
                    "segmented cache on CUDA: head_dim " + std::to_string(a.head_dim) + " (kernels: 32, 64, 128, 256)");
    }
    p     = Params{};
    p.n_q = a.n_q_tokens, p.n_head = a.n_head, p.n_head_kv = a.n_head_kv, p.group = a.n_head / a.n_head_kv;
    p.scale = a.kq_scale;
    p.q = a.q, p.q_nb_token = a.q_nb_token, p.q_nb_head = a.q_nb_head;
    p.q_seq    = c.q_seq;
    int  units = 0;
    auto add   = [&](int kind, int n_tokens, int seq, const void * k, const void * v) {
        if (p.n_segments == kMaxSegments) {
            return false;
        }
        Segment & s = p.seg[p.n_segments++];
        s.kind = kind, s.n_tokens = n_tokens, s.unit0 = units, s.seq = seq;
        s.k = static_cast<const uint8_t *>(k), s.v = static_cast<const uint8_t *>(v);
        units += (n_tokens + kUnit - 1) / kUnit;
        return true;
    };
    bool fits = true;
    for (const CudaRegionSet & set : c.sets) {
        for (int r = 0; r < set.n_regions; ++r) {
            const cocktail_kv_region & reg = set.regions[r];
            if (reg.n_tokens > 0) {
                fits = fits && add(reg.precision, reg.n_tokens, set.seq, reg.k, reg.v);
            }
        }
    }
    if (a.n_tail > 0) {
        fits = fits && add(kTail, a.n_tail, -1, a.tail_k, a.tail_v);
        set_tail_layout(p, a, a.tail_k, a.tail_v);
        p.mask = static_cast<const uint8_t *>(a.mask), p.mask_nb_row = a.mask_nb_row, p.mask_f16 = a.mask_f16;
    }
    if (!fits) {
        return fail(COCKTAIL_EUNSUPPORTED, "segmented cache on CUDA: more than " + std::to_string(kMaxSegments - 1) +
                                               " non-empty regions in one layer (at most 5 compacted sequences "
                                               "with every precision in one batch)");
    }
    p.n_units = units;
    return COCKTAIL_OK;
}

size_t scratch_bytes_per_split(const Params & p, int D) {
    return static_cast<size_t>(p.n_q) * p.n_head * (D * sizeof(float) + sizeof(float2));
}

}  // namespace cocktail::cuda_impl

namespace cocktail {

size_t cuda_graph_attn_scratch(const CudaGraphAttn & call) {
    cuda_impl::Params p;
    if (cuda_impl::graph_params(call, p) != COCKTAIL_OK) {
        return 0;
    }
    // the most splits any context length gives, for every kernel the launch may take (MHA: either, as the F16 share
    // changes): the op's size, and so its graph node, stays the same as the tail grows (ggml-cuda then replays its
    // CUDA graph)
    const int D  = call.args.head_dim;
    int       rc = COCKTAIL_OK, n_splits = 0;
    p.n_units           = 1 << 24;
    cuda_impl::Kernel k = cuda_impl::choose_kernel(p, D, rc);
    cuda_impl::plan_launch(p, D, k, 1 << 30);
    n_splits = p.n_splits;
    if (k.gs == 1) {
        k.mma = !k.mma && cuda_impl::mma_head_dim(D);
        cuda_impl::plan_launch(p, D, k, 1 << 30);
        n_splits = std::max(n_splits, p.n_splits);
    }
    return cuda_impl::scratch_bytes_per_split(p, D) * n_splits;
}

int cuda_graph_attn(const CudaGraphAttn & call, void * stream) {
    using namespace cuda_impl;
    const cocktail_attn_args & a = call.args;
    Params                     p;
    if (int rc = graph_params(call, p); rc != COCKTAIL_OK) {
        return rc;
    }
    const size_t per_split  = scratch_bytes_per_split(p, a.head_dim);
    const int    max_splits = static_cast<int>(std::min<size_t>(call.scratch_bytes / per_split, 1 << 30));
    auto *       st         = static_cast<cudaStream_t>(stream);
    int          n_splits   = 0;  // nothing visible: the merge writes zeros, as the CPU op
    if (p.n_units > 0) {
        if (max_splits < 1) {
            return fail(COCKTAIL_EINTERNAL, "segmented cache on CUDA: scratch of " +
                                                std::to_string(call.scratch_bytes) + " bytes, " +
                                                std::to_string(per_split) + " needed at least");
        }
        p.part_acc = static_cast<float *>(call.scratch);
        p.part_ml =
            reinterpret_cast<float2 *>(static_cast<uint8_t *>(call.scratch) +
                                       static_cast<size_t>(p.n_q) * p.n_head * max_splits * a.head_dim * sizeof(float));
        if (int rc = run(a.head_dim, p, st, max_splits); rc != COCKTAIL_OK) {
            return rc;
        }
        n_splits = p.n_splits;
    }
    return launch_merge(p, n_splits, a.head_dim, a.out, a.out_nb_token, a.out_nb_head, st);
}

}  // namespace cocktail

extern "C" int cocktail_attn_mixed_regions_cuda(const struct cocktail_attn_args * args) {
    using namespace cocktail;
    using namespace cocktail::cuda_impl;
    if (args == nullptr) {
        return fail(COCKTAIL_EINVAL, "cocktail_attn_mixed_regions_cuda: args is NULL");
    }
    DeviceCall c;
    if (int rc = upload_call(*args, c); rc != COCKTAIL_OK) {
        return rc;
    }
    if (int rc = cuda_graph_attn(c.call, nullptr); rc != COCKTAIL_OK) {  // nothing visible: the merge writes zeros
        return rc;
    }
    cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
        return cuda_fail(err, "running the kernels");
    }
    std::vector<float> out_host(c.out_bytes / sizeof(float));
    if ((err = cudaMemcpy(out_host.data(), c.out.ptr, c.out_bytes, cudaMemcpyDeviceToHost)) != cudaSuccess) {
        return cuda_fail(err, "copying the output");
    }
    write_rows(*args, out_host.data());
    return COCKTAIL_OK;
}

namespace {

// The bench's stream, events and graph, released on every return.
struct BenchTimers {
    cudaStream_t    stream = nullptr;  // nullptr: the default stream (graph == 0)
    cudaEvent_t     t0 = nullptr, t1 = nullptr;
    cudaGraph_t     graph = nullptr;
    cudaGraphExec_t exec  = nullptr;

    ~BenchTimers() {
        if (exec != nullptr) {
            cudaGraphExecDestroy(exec);
        }
        if (graph != nullptr) {
            cudaGraphDestroy(graph);
        }
        if (t0 != nullptr) {
            cudaEventDestroy(t0);
        }
        if (t1 != nullptr) {
            cudaEventDestroy(t1);
        }
        if (stream != nullptr) {
            cudaStreamDestroy(stream);
        }
    }
};

// n_iters calls on timers.stream captured into timers.exec; a failed call ends the capture first.
int capture_calls(const cocktail::CudaGraphAttn & call, int n_iters, BenchTimers & timers) {
    using cocktail::cuda_impl::cuda_fail;
    cudaError_t err = cudaStreamBeginCapture(timers.stream, cudaStreamCaptureModeThreadLocal);
    if (err != cudaSuccess) {
        return cuda_fail(err, "starting the graph capture");
    }
    int rc = COCKTAIL_OK;
    for (int i = 0; i < n_iters && rc == COCKTAIL_OK; ++i) {
        rc = cocktail::cuda_graph_attn(call, timers.stream);
    }
    err = cudaStreamEndCapture(timers.stream, &timers.graph);
    if (rc != COCKTAIL_OK) {
        return rc;
    }
    if (err != cudaSuccess || (err = cudaGraphInstantiate(&timers.exec, timers.graph, 0)) != cudaSuccess) {
        return cuda_fail(err, "capturing the calls into a graph");
    }
    return COCKTAIL_OK;
}

}  // namespace

extern "C" int cocktail_attn_mixed_regions_cuda_bench(const struct cocktail_attn_args * args,
                                                      int                               n_iters,
                                                      int                               graph,
                                                      double *                          ms,
                                                      double *                          bytes_read,
                                                      double *                          copy_gbps) {
    using namespace cocktail;
    using namespace cocktail::cuda_impl;
    if (args == nullptr || ms == nullptr || bytes_read == nullptr || copy_gbps == nullptr || n_iters < 1) {
        return fail(COCKTAIL_EINVAL, "cocktail_attn_mixed_regions_cuda_bench: NULL output or n_iters < 1");
    }
    DeviceCall c;
    if (int rc = upload_call(*args, c); rc != COCKTAIL_OK) {
        return rc;
    }
    if (c.n_units == 0) {
        return fail(COCKTAIL_EINVAL, "cocktail_attn_mixed_regions_cuda_bench: no tokens to attend to");
    }
    BenchTimers timers;
    cudaError_t err = cudaEventCreate(&timers.t0);
    if (err == cudaSuccess) {
        err = cudaEventCreate(&timers.t1);
    }
    if (err == cudaSuccess && graph != 0) {
        err = cudaStreamCreateWithFlags(&timers.stream, cudaStreamNonBlocking);
    }
    if (err != cudaSuccess) {
        return cuda_fail(err, "creating the bench's events and stream");
    }
    cudaStream_t st = timers.stream;
    cudaEvent_t  t0 = timers.t0, t1 = timers.t1;
    float        elapsed = 0.0f;
    for (int i = 0; i < 3; ++i) {  // warm-up (and the kernels' one-time attributes, outside any capture)
        if (int rc = cuda_graph_attn(c.call, st); rc != COCKTAIL_OK) {
            return rc;
        }
    }
    if (graph != 0) {
        if (int rc = capture_calls(c.call, n_iters, timers); rc != COCKTAIL_OK) {
            return rc;
        }
        if ((err = cudaGraphLaunch(timers.exec, st)) != cudaSuccess ||
            (err = cudaStreamSynchronize(st)) != cudaSuccess) {
            return cuda_fail(err, "replaying the graph");
        }
        cudaEventRecord(t0, st);
        cudaGraphLaunch(timers.exec, st);
        cudaEventRecord(t1, st);
    } else {
        cudaEventRecord(t0);
        for (int i = 0; i < n_iters; ++i) {
            cuda_graph_attn(c.call, nullptr);
        }
        cudaEventRecord(t1);
    }
    if ((err = cudaEventSynchronize(t1)) == cudaSuccess) {
        cudaEventElapsedTime(&elapsed, t0, t1);
        *ms                     = elapsed / n_iters;
        *bytes_read             = static_cast<double>(c.bytes_read);
        // copy bandwidth of this device: 1 GiB device-to-device, bytes read + written per second
        const size_t copy_bytes = size_t(1) << 30;
        DeviceBuffer src, dst;
        if ((err = src.upload(nullptr, copy_bytes)) == cudaSuccess &&
            (err = dst.upload(nullptr, copy_bytes)) == cudaSuccess) {
            cudaMemcpy(dst.ptr, src.ptr, copy_bytes, cudaMemcpyDeviceToDevice);
            cudaEventRecord(t0);
            for (int i = 0; i < 10; ++i) {
                cudaMemcpy(dst.ptr, src.ptr, copy_bytes, cudaMemcpyDeviceToDevice);
            }
            cudaEventRecord(t1);
            if ((err = cudaEventSynchronize(t1)) == cudaSuccess) {
                cudaEventElapsedTime(&elapsed, t0, t1);
                *copy_gbps = 2.0 * copy_bytes * 10 / (elapsed * 1e-3) / 1e9;
            }
        }
    }
    if (err == cudaSuccess) {
        err = cudaGetLastError();
    }
    return err == cudaSuccess ? COCKTAIL_OK : cuda_fail(err, "timing the kernels");
}
