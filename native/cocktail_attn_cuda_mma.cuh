// Mixed-region attention for grouped-query heads on tensor cores: the contract, split plan and merge of the scalar
// kernel (cocktail_attn_cuda.cu), for GQA groups where the scalar kernel spends one FMA per code and query head.
//
// A block is (query token, KV head, up to 8 of its query heads, token split); each warp takes 32-token units in
// turn and computes S = Q K^T and O += P V with mma.sync m16n8k16 (fp16 operands, fp32 accumulators):
//  - A operand (16 x 16): rows 0-7 the query heads' fp16 values, rows 8-15 their rounding remainders (also fp16),
//    so that C rows g and g + 8 add up to a product with ~22-bit operands: codes are exact in fp16, and the
//    operands are scaled by powers of two that keep them in fp16's normal range (the remainders too).
//  - B operand: the region's codes as read from its layout (native/README.md), turned into fp16 by a mask and a
//    half2 multiply-add ((x & mask) | 0x6400 is 1024 + code << shift, exactly); F16 rows as they are.
//  - K scale and min (per channel): A = q * scale, and q . min added to every token's score. V scale and min (per
//    token and group of 32 channels): A = p * scale for that group's columns, sum(p * min) added at the end.
// Fragment layouts (PTX ISA, mma.m16n8k16 with .f16): lane = 4 g + t; A a0 = (row g, k 2t..2t+1), a1 = (row g + 8,
// k 2t..2t+1), a2 = (row g, k 2t+8..2t+9), a3 = (row g + 8, k 2t+8..2t+9); B b0 = (k 2t..2t+1, col g),
// b1 = (k 2t+8..2t+9, col g); C c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g + 8, same cols).
#pragma once

#include "cocktail_attn_cuda_common.cuh"

namespace cocktail::cuda_impl {

constexpr int kMmaRows = 8;  // query heads per block (A rows 0-7; 8-15 hold their remainders)

// head_dim values the tensor-core kernel takes (its V accumulators, D / 2 floats per lane, bound the rest)
__host__ __device__ constexpr bool mma_head_dim(int D) {
    return D == 32 || D == 64 || D == 128;
}

__device__ __forceinline__ uint32_t h2_bits(__half2 h) {
    return *reinterpret_cast<const uint32_t *>(&h);
}

__device__ __forceinline__ __half2 bits_h2(uint32_t x) {
    return *reinterpret_cast<const __half2 *>(&x);
}

// d += A B for one m16n8k16 tile.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The A fragment of a row's four values (x0, x1 at k 2t, 2t+1; x2, x3 at k 2t+8, 2t+9): fp16 values in row g,
// their remainders x - fp16(x) in row g + 8.
__device__ __forceinline__ void split_frag(float x0, float x1, float x2, float x3, uint32_t (&a)[4]) {
    const __half2 h01 = __floats2half2_rn(x0, x1), h23 = __floats2half2_rn(x2, x3);
    const float2  r01 = __half22float2(h01), r23 = __half22float2(h23);
    a[0] = h2_bits(h01);
    a[1] = h2_bits(__floats2half2_rn(x0 - r01.x, x1 - r01.y));
    a[2] = h2_bits(h23);
    a[3] = h2_bits(__floats2half2_rn(x2 - r23.x, x3 - r23.y));
}

// 2^e as a float, e in [-126, 127].
__device__ __forceinline__ float exp2i(int e) {
    return __int_as_float((e + 127) << 23);
}

// The power of two e that brings x's top bit to 2^top (x * 2^e in [2^top, 2^(top+1))); 0 for x == 0. Clamped so
// that 2^e and 2^-e stay normal floats.
__device__ __forceinline__ int scale_exp(float x, int top) {
    if (!(x > 0.0f)) {
        return 0;
    }
    const int e = ((__float_as_int(x) >> 23) & 0xff) - 127;
    return max(-100, min(100, top - e));
}

__device__ __forceinline__ float row_max4(float x) {  // over the 4 lanes of a fragment row (t = 0..3)
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float row_sum4(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Two codes as fp16 in one half2: bits `mask` (one field per 16-bit half) of y under 0x6400 read 1024 + c * 2^s;
// h * 2^-s - 1024 * 2^-s (CodeFix(s)) is c, exactly.
struct CodeFix {
    __half2 mul, add;

    __device__ __forceinline__ explicit CodeFix(int s) :
        mul(__float2half2_rn(exp2i(-s))),
        add(__float2half2_rn(-1024.0f * exp2i(-s))) {}
};

__device__ __forceinline__ uint32_t code_pair(uint32_t y, uint32_t mask, const CodeFix & fix) {
    return h2_bits(__hfma2(bits_h2((y & mask) | 0x64006400u), fix.mul, fix.add));
}

// Token (0..31 in the unit) of column n (0..7) of score tile j (0..3): the order in which a lane's code loads hold
// them. Q4 K: the 2-byte load at byte 2n of a channel holds tokens 2n, 2n+1 (low nibbles), 2n+16, 2n+17 (high);
// Q2 K: the byte n holds tokens n, n+8, n+16, n+24; F16 rows: any order, this one.
template <int kind> __device__ __forceinline__ int tile_token(int j, int n) {
    if constexpr (kind == kQ4) {
        return 2 * n + (j & 1) + 16 * (j >> 1);
    } else {
        return 8 * j + n;
    }
}

// The channels of k-step ks for lane t: 32 (ks / 2) + 8 t + 4 (ks % 2) + {0..3}: k = 2t, 2t+1, 2t+8, 2t+9 of the
// A and B fragments. A lane's channels of k-steps 2kp and 2kp + 1 are 8 consecutive ones (16-byte loads).
__device__ __forceinline__ int kstep_channel(int ks, int t) {
    return 32 * (ks >> 1) + 8 * t + 4 * (ks & 1);
}

// V tile x (0..3) of group gi, column n: channel 32 gi + {2n, 2n+1, 2n+16, 2n+17}[x] (one 2-byte Q4 load at byte 2n
// of a token's group holds all four).
__device__ __forceinline__ int v_channel(int gi, int x, int n) {
    return 32 * gi + 2 * n + (x & 1) + 16 * (x >> 1);
}

// Where byte `off` of a quantized K or V block lies in the warp's shared-memory copy: 16-byte chunk q at
// q ^ (q / 8 % 8), so that lanes reading the same bytes of chunks 128 bytes apart (lanes t = 0..3: a channel's
// codes 8 channels apart, a token's 4 tokens apart) hit different banks. Keeps every 16-byte chunk whole.
__device__ __forceinline__ int swz(int off) {
    return off ^ (((off >> 7) & 7) << 4);
}

// Floats per row of the shared query table: 4 more than D so that rows g and g + 1 fall on other banks.
template <int D> constexpr int kSqnRow = D + 4;

// K codes of k-step channels c0..c0+3 (from the staged K block) as B fragments of the four score tiles (lane's
// column g).
template <int D, int kind>
__device__ __forceinline__ void k_code_frags(const uint8_t * kblock,
                                             int             c0,
                                             int             g,
                                             uint32_t (&b0)[4],
                                             uint32_t (&b1)[4]) {
    uint32_t ld[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        ld[i] = kind == kQ4 ? *reinterpret_cast<const uint16_t *>(kblock + swz(4 * D + (c0 + i) * 16 + 2 * g)) :
                              static_cast<uint32_t>(kblock[swz(4 * D + (c0 + i) * 8 + g)]);
    }
#pragma unroll
    for (int pair = 0; pair < 2; ++pair) {
        uint32_t (&b)[4] = pair == 0 ? b0 : b1;
        const uint32_t y = __byte_perm(ld[2 * pair], ld[2 * pair + 1], 0x5410);  // channel c, c+1 in bytes 0-1, 2-3
        if constexpr (kind == kQ4) {
            const uint32_t y1 = y >> 8;                                          // the second token's byte
            const CodeFix  lo(0), hi(4);
            b[0] = code_pair(y, 0x000F000Fu, lo);
            b[1] = code_pair(y1, 0x000F000Fu, lo);
            b[2] = code_pair(y, 0x00F000F0u, hi);
            b[3] = code_pair(y1, 0x00F000F0u, hi);
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                b[j] = code_pair(y, 0x00030003u << (2 * j), CodeFix(2 * j));
            }
        }
    }
}

// Loads N bytes (4, 8, 16 or 32) at byte off (aligned to min(N, 16)) of a staged block into words.
template <int N> __device__ __forceinline__ void load_words(const uint8_t * block, int off, uint32_t (&w)[N / 4]) {
    if constexpr (N == 4) {
        w[0] = *reinterpret_cast<const uint32_t *>(block + swz(off));
    } else if constexpr (N == 8) {
        const uint2 v = *reinterpret_cast<const uint2 *>(block + swz(off));
        w[0] = v.x, w[1] = v.y;
    } else {
#pragma unroll
        for (int i = 0; i < N / 16; ++i) {
            const uint4 v = *reinterpret_cast<const uint4 *>(block + swz(off + 16 * i));
            w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
        }
    }
}

// The V scales (or mins) of this lane's 8 score tokens, all groups: half (j, e, gi) is token tile_token(j, 2t + e).
// Q4 tokens come as two runs of 4 (4t.. and 16 + 4t..), Q2 ones as four runs of 2 (8j + 2t..).
template <int D, int kind> struct VRow {
    static constexpr int kG = D / 32;
    uint32_t             w[8 * kG / 2];

    // from the table at byte `at` of the staged V block (scales: 0, mins: 2 D)
    __device__ __forceinline__ void load(const uint8_t * vblock, int at, int t) {
        constexpr int kRun = kind == kQ4 ? 4 : 2, kRuns = 8 / kRun, kBytes = 2 * kRun * kG;
#pragma unroll
        for (int r = 0; r < kRuns; ++r) {
            const int tok0 = kind == kQ4 ? 4 * t + 16 * r : 8 * r + 2 * t;
            uint32_t  part[kBytes / 4];
            load_words<kBytes>(vblock, at + 2 * tok0 * kG, part);
#pragma unroll
            for (int i = 0; i < kBytes / 4; ++i) {
                w[r * kBytes / 4 + i] = part[i];
            }
        }
    }

    __device__ __forceinline__ float at(int j, int e, int gi) const {
        const int     idx = kind == kQ4 ? ((j >> 1) * 4 + 2 * e + (j & 1)) * kG + gi : (j * 2 + e) * kG + gi;
        const __half2 h   = bits_h2(w[idx / 2]);
        return __half2float((idx & 1) ? __high2half(h) : __low2half(h));
    }

    __device__ __forceinline__ float abs_max() const {
        __half2 m = __habs2(bits_h2(w[0]));
#pragma unroll
        for (int i = 1; i < 8 * kG / 2; ++i) {
            m = __hmax2(m, __habs2(bits_h2(w[i])));
        }
        return fmaxf(__low2float(m), __high2float(m));
    }
};

template <int D> struct MmaWarp {
    float o[D / 32][4][4];  // [V group][tile][c0..c3]: rows g and g + 8 (remainders) of this lane's columns
    float vmin[D / 32];     // sum of p * V min over this lane's tokens, per group (added at the end)
    float m;                // running max of row g (the same in its four lanes)
    float l;                // this lane's share of row g's sum
    int   e;                // o holds 2^e times the output
};

// The unit's V codes of group gi, k-step ks as B fragments of the four V tiles. Tokens: b0 rows 2t, 2t+1 are score
// tile 2ks's columns 2t, 2t+1, b1 rows tile 2ks + 1's (the A fragment of P takes the score fragments as they are).
template <int D, int kind>
__device__ __forceinline__ void v_code_frags(const Params &  p,
                                             const Segment & s,
                                             const uint8_t * vblock,
                                             int             h_kv,
                                             int             unit,
                                             int             gi,
                                             int             ks,
                                             int             g,
                                             int             t,
                                             uint32_t (&b0)[4],
                                             uint32_t (&b1)[4]) {
    constexpr int kG = D / 32;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        uint32_t (&b)[4] = half == 0 ? b0 : b1;
        const int ta = tile_token<kind>(2 * ks + half, 2 * t), tb = tile_token<kind>(2 * ks + half, 2 * t + 1);
        if constexpr (kind == kQ4 || kind == kQ2) {
            constexpr int   kRow  = kind == kQ4 ? 16 : 8;  // bytes of a token's group
            const int       at    = 4 * D + gi * kRow + (kind == kQ4 ? 2 * g : 2 * (g & 3));
            const uint32_t  la    = *reinterpret_cast<const uint16_t *>(vblock + swz(at + ta * kG * kRow));
            const uint32_t  lb    = *reinterpret_cast<const uint16_t *>(vblock + swz(at + tb * kG * kRow));
            const uint32_t  y = __byte_perm(la, lb, 0x5410), y1 = y >> 8;  // channels 2n (y) and 2n + 1 (y1)
            // Q4: channel 2n in the low nibble, 2n + 16 in the high one; Q2: channel c at byte c % 8, bits
            // 2 (c / 8): channels 2n, 2n+1 at bit 2 (g / 4), channels 2n + 16, 2n + 17 four bits higher
            const int       lo = kind == kQ4 ? 0 : 2 * (g >> 2), hi = lo + 4;
            const uint32_t  m  = kind == kQ4 ? 0x000F000Fu : 0x00030003u;
            const CodeFix   fix_lo(lo), fix_hi(hi);
            b[0] = code_pair(y, m << lo, fix_lo);
            b[1] = code_pair(y1, m << lo, fix_lo);
            b[2] = code_pair(y, m << hi, fix_hi);
            b[3] = code_pair(y1, m << hi, fix_hi);
        } else {
            uint32_t w[2][2];  // [token a, b][channels 2n, 2n+1 | 2n+16, 2n+17]
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int tok = unit * kUnit + (r == 0 ? ta : tb);
#pragma unroll
                for (int x = 0; x < 2; ++x) {
                    const int c = v_channel(gi, 2 * x, g);
                    w[r][x]     = 0;
                    if (tok < s.n_tokens) {
                        if constexpr (kind == kF16) {
                            w[r][x] = *reinterpret_cast<const uint32_t *>(
                                s.v + ((static_cast<size_t>(h_kv) * s.n_tokens + tok) * D + c) * 2);
                        } else {
                            const uint8_t * row = s.v + tok * p.tv_nb_token + h_kv * p.tv_nb_head;
                            if (p.tail_v_vec) {
                                w[r][x] = *reinterpret_cast<const uint32_t *>(row + 2 * c);
                            } else {
                                w[r][x] = *reinterpret_cast<const uint16_t *>(row + c * p.tv_nb_channel) |
                                          static_cast<uint32_t>(
                                              *reinterpret_cast<const uint16_t *>(row + (c + 1) * p.tv_nb_channel))
                                              << 16;
                            }
                        }
                    }
                }
            }
#pragma unroll
            for (int x = 0; x < 2; ++x) {
                b[2 * x]     = __byte_perm(w[0][x], w[1][x], 0x5410);
                b[2 * x + 1] = __byte_perm(w[0][x], w[1][x], 0x7632);
            }
        }
    }
}

// One 32-token unit of segment s for this warp's rows: scores, online softmax, O += P V. Quantized units read their
// K and V blocks from kblock / vblock (the warp's shared-memory copies), F16 and tail ones from the segment.
template <int D, int kind>
__device__ __forceinline__ void mma_unit(const Params &  p,
                                         const Segment & s,
                                         int             qi,
                                         int             h_kv,
                                         int             unit,
                                         int             lane,
                                         const float *   sqn,
                                         float           q_unscale,
                                         const uint8_t * kblock,
                                         const uint8_t * vblock,
                                         MmaWarp<D> &    w) {
    constexpr int  kG     = D / 32;
    constexpr bool kQuant = kind == kQ4 || kind == kQ2;
    const int      g = lane >> 2, t = lane & 3;

    // this lane's score tokens (columns 2t, 2t+1 of the four score tiles) and their mask
    bool  vis[4][2];
    float add[4][2];
    bool  any = false;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int tok = unit * kUnit + tile_token<kind>(j, 2 * t + e);
            vis[j][e]     = tok < s.n_tokens;
            add[j][e]     = 0.0f;
            if constexpr (kind == kTail) {
                if (vis[j][e] && p.mask != nullptr) {
                    const uint8_t * row = p.mask + qi * p.mask_nb_row;
                    add[j][e]           = p.mask_f16 ? h2f(row + 2 * tok) : reinterpret_cast<const float *>(row)[tok];
                    vis[j][e]           = add[j][e] != -INFINITY;
                }
            }
            any = any || vis[j][e];
        }
    }
    if constexpr (kind == kTail) {  // the cache's view is padded with masked cells: skip units that see nothing
        if (!__any_sync(0xffffffffu, any)) {
            return;
        }
    }

    // S = Q K^T: quantized K as q * scale (A) times codes (B) plus q . min
    float           sacc[4][4] = {};
    float           unscale = q_unscale, bias = 0.0f;
    if constexpr (kQuant) {
        float ks[kG][8], kmax = 0.0f;
#pragma unroll
        for (int kp = 0; kp < kG; ++kp) {
            load_halves<8>(kblock + swz(2 * (32 * kp + 8 * t)), ks[kp]);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                kmax = fmaxf(kmax, fabsf(ks[kp][i]));
            }
        }
        const int   eb = scale_exp(row_max4(kmax), 13);  // |q * scale| < 2 * 2^14 (q is scaled to [1, 2))
        const float sb = exp2i(eb);
        unscale *= exp2i(-eb);
#pragma unroll
        for (int kp = 0; kp < kG; ++kp) {
            float km[8];
            load_halves<8>(kblock + swz(2 * D + 2 * (32 * kp + 8 * t)), km);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int    c0 = kstep_channel(2 * kp + h, t);
                const float4 q  = *reinterpret_cast<const float4 *>(sqn + g * kSqnRow<D> + c0);
                bias = fmaf(q.x, km[4 * h],
                            fmaf(q.y, km[4 * h + 1], fmaf(q.z, km[4 * h + 2], fmaf(q.w, km[4 * h + 3], bias))));
                uint32_t a[4];
                split_frag(q.x * (ks[kp][4 * h] * sb), q.y * (ks[kp][4 * h + 1] * sb), q.z * (ks[kp][4 * h + 2] * sb),
                           q.w * (ks[kp][4 * h + 3] * sb), a);
                uint32_t b0[4], b1[4];
                k_code_frags<D, kind>(kblock, c0, g, b0, b1);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    mma_16816(sacc[j], a, b0[j], b1[j]);
                }
            }
        }
        bias = row_sum4(bias) * q_unscale;
    } else {
#pragma unroll
        for (int kp = 0; kp < kG; ++kp) {
            uint4 rows[4];  // channels 32 kp + 8 t .. + 7 of this lane's token in each score tile
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int tok = unit * kUnit + tile_token<kind>(j, g);
                const int c   = 32 * kp + 8 * t;
                rows[j]       = make_uint4(0, 0, 0, 0);
                if (tok < s.n_tokens) {
                    if constexpr (kind == kF16) {
                        rows[j] = *reinterpret_cast<const uint4 *>(
                            s.k + ((static_cast<size_t>(h_kv) * s.n_tokens + tok) * D + c) * 2);
                    } else {
                        const uint8_t * row = s.k + tok * p.tk_nb_token + h_kv * p.tk_nb_head + 2 * c;
                        if (p.tail_k_vec) {
                            rows[j] = *reinterpret_cast<const uint4 *>(row);
                        } else {
                            uint32_t x[4];
#pragma unroll
                            for (int i = 0; i < 4; ++i) {
                                x[i] = *reinterpret_cast<const uint16_t *>(row + 4 * i) |
                                       static_cast<uint32_t>(*reinterpret_cast<const uint16_t *>(row + 4 * i + 2))
                                           << 16;
                            }
                            rows[j] = make_uint4(x[0], x[1], x[2], x[3]);
                        }
                    }
                }
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float4 q = *reinterpret_cast<const float4 *>(sqn + g * kSqnRow<D> + kstep_channel(2 * kp + h, t));
                uint32_t     a[4];
                split_frag(q.x, q.y, q.z, q.w, a);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    mma_16816(sacc[j], a, h == 0 ? rows[j].x : rows[j].z, h == 0 ? rows[j].y : rows[j].w);
                }
            }
        }
    }

    // online softmax over row g (this lane's 8 tokens, then the row's 4 lanes)
    float sc[4][2], rmax = -INFINITY;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            sc[j][e] = vis[j][e] ? (sacc[j][e] + sacc[j][2 + e]) * unscale + bias + add[j][e] : -INFINITY;
            rmax     = fmaxf(rmax, sc[j][e]);
        }
    }
    const float m_new = fmaxf(w.m, row_max4(rmax));
    if (m_new == -INFINITY) {  // nothing seen yet by any row (the rows share the tokens and their visibility)
        return;
    }
    const float corr = w.m == -INFINITY ? 0.0f : expf(w.m - m_new);
    float       pr[4][2], psum = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            pr[j][e] = vis[j][e] ? expf(sc[j][e] - m_new) : 0.0f;
            psum += pr[j][e];
        }
    }
    w.m = m_new;
    w.l = w.l * corr + psum;

    // O += P V: quantized V as p * scale (A, per group) times codes (B) plus sum(p * min) per group
    VRow<D, kind> vs, vm;
    int           ev = 14;  // F16: p * 2^14 < 2^15
    if constexpr (kQuant) {
        vs.load(vblock, 0, t);
        vm.load(vblock, 2 * D, t);
        ev = scale_exp(row_max4(vs.abs_max()), 13);  // |p * scale| < 2^14
    }
    const float f = corr * exp2i(ev - w.e);
    if (f != 1.0f) {
#pragma unroll
        for (int gi = 0; gi < kG; ++gi) {
#pragma unroll
            for (int x = 0; x < 4; ++x) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    w.o[gi][x][i] *= f;
                }
            }
        }
    }
    w.e             = ev;
    const float sev = exp2i(ev);
#pragma unroll
    for (int gi = 0; gi < kG; ++gi) {
        float pv[4][2];
        if constexpr (kQuant) {
            float mins = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    pv[j][e] = pr[j][e] * (vs.at(j, e, gi) * sev);
                    mins     = fmaf(pr[j][e], vm.at(j, e, gi), mins);
                }
            }
            w.vmin[gi] = fmaf(w.vmin[gi], corr, mins);
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    pv[j][e] = pr[j][e] * sev;
                }
            }
        }
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
            uint32_t a[4];
            split_frag(pv[2 * ks][0], pv[2 * ks][1], pv[2 * ks + 1][0], pv[2 * ks + 1][1], a);
            uint32_t b0[4], b1[4];
            v_code_frags<D, kind>(p, s, vblock, h_kv, unit, gi, ks, g, t, b0, b1);
#pragma unroll
            for (int x = 0; x < 4; ++x) {
                mma_16816(w.o[gi][x], a, b0[x], b1[x]);
            }
        }
    }
}

// Asynchronous 16-byte copy global -> shared (cp.async, L1 bypassed), its group commit and wait.
__device__ __forceinline__ void cp_async16(void * dst, const void * src) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

__device__ __forceinline__ void cp_async_wait_all_but_newest() {
    asm volatile("cp.async.wait_group 1;" ::: "memory");
}

// Bytes of a quantized unit's K block (its V block is as long).
template <int D> __device__ __forceinline__ int unit_block_bytes(int kind) {
    return kind == kQ4 ? static_cast<int>(block_bytes<D, kQ4>()) : static_cast<int>(block_bytes<D, kQ2>());
}

// Starts the warp's copy of a quantized unit's K and V blocks to dst (K block, then V block; chunks placed by swz).
template <int D> __device__ __forceinline__ void stage_unit(const Segment & s, int h_kv, int unit, int lane, uint8_t * dst) {
    const int       bytes = unit_block_bytes<D>(s.kind);
    const size_t    at    = (static_cast<size_t>(h_kv) * ((s.n_tokens + kUnit - 1) / kUnit) + unit) * bytes;
    const uint8_t * k = s.k + at, *v = s.v + at;
    for (int i = 16 * lane; i < bytes; i += 16 * 32) {
        cp_async16(dst + swz(i), k + i);
        cp_async16(dst + bytes + swz(i), v + i);
    }
}

template <int D> struct MmaShared {
    alignas(16) float sqn[kMmaRows * kSqnRow<D>];  // [g][channel]: scaled query rows, each in [1, 2) times 2^-qexp[g]

    union {
        // per warp, two stages of a quantized unit's K and V blocks: the next unit copies in while this one computes
        alignas(16) uint8_t stage[kWarps][2][2 * block_bytes<D, kQ4>()];
        float acc[kWarps][kMmaRows * D];  // at the end: the warps' unnormalized outputs
    };

    float m[kWarps][kMmaRows], l[kWarps][kMmaRows];
    int   qexp[kMmaRows];
};

template <int D> __global__ void __launch_bounds__(kWarps * 32, 3) attn_partial_mma(const Params p) {
    static_assert(D == 32 || D == 64 || D == 128, "tensor-core kernel: head_dim 32, 64 or 128");
    __shared__ MmaShared<D> sh;

    const int qi = blockIdx.z, split = blockIdx.y;
    const int h_kv = blockIdx.x / p.n_gblocks, gb = blockIdx.x % p.n_gblocks;
    const int h0 = h_kv * p.group + gb * kMmaRows, n_g = min(kMmaRows, p.group - gb * kMmaRows);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;

    for (int i = threadIdx.x; i < kMmaRows * D; i += blockDim.x) {
        const int r = i / D, d = i % D;
        sh.sqn[r * kSqnRow<D> + d] = r < n_g ?
                        p.scale * *reinterpret_cast<const float *>(reinterpret_cast<const uint8_t *>(p.q) +
                                                                   qi * p.q_nb_token + (h0 + r) * p.q_nb_head + 4 * d) :
                        0.0f;
    }
    __syncthreads();
    for (int r = warp; r < kMmaRows; r += kWarps) {  // each row to [1, 2): its fp16 split keeps ~22 bits
        float mx = 0.0f;
        for (int d = lane; d < D; d += 32) {
            mx = fmaxf(mx, fabsf(sh.sqn[r * kSqnRow<D> + d]));
        }
        const int e = scale_exp(warp_max(mx), 0);
        for (int d = lane; d < D; d += 32) {
            sh.sqn[r * kSqnRow<D> + d] *= exp2i(e);
        }
        if (lane == 0) {
            sh.qexp[r] = e;
        }
    }
    __syncthreads();
    const float q_unscale = exp2i(-sh.qexp[g]);

    MmaWarp<D> w;
#pragma unroll
    for (int gi = 0; gi < D / 32; ++gi) {
        w.vmin[gi] = 0.0f;
#pragma unroll
        for (int x = 0; x < 4; ++x) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                w.o[gi][x][i] = 0.0f;
            }
        }
    }
    w.m = -INFINITY, w.l = 0.0f, w.e = 0;
    int  cur    = 0;      // the stage that holds (or gets) the current unit
    bool staged = false;  // the current unit's copy was started with the previous unit
    auto quant  = [](int kind) { return kind == kQ4 || kind == kQ2; };
    for_each_unit(p, qi, split, warp, [&](const Segment & s, int unit, int next, int next_unit) {
        uint8_t * here = sh.stage[warp][cur];
        if (quant(s.kind) && !staged) {
            stage_unit<D>(s, h_kv, unit, lane, here);
            cp_async_commit();
        }
        staged = next >= 0 && quant(p.seg[next].kind);
        if (staged) {
            stage_unit<D>(p.seg[next], h_kv, next_unit, lane, sh.stage[warp][cur ^ 1]);
        }
        cp_async_commit();  // (maybe empty) the newest group: every older one, this unit's, is waited for
        cp_async_wait_all_but_newest();
        __syncwarp();
        const uint8_t * vb = here + (quant(s.kind) ? unit_block_bytes<D>(s.kind) : 0);
        switch (s.kind) {
            case kF16:
                mma_unit<D, kF16>(p, s, qi, h_kv, unit, lane, sh.sqn, q_unscale, here, vb, w);
                break;
            case kQ4:
                mma_unit<D, kQ4>(p, s, qi, h_kv, unit, lane, sh.sqn, q_unscale, here, vb, w);
                break;
            case kQ2:
                mma_unit<D, kQ2>(p, s, qi, h_kv, unit, lane, sh.sqn, q_unscale, here, vb, w);
                break;
            default:
                mma_unit<D, kTail>(p, s, qi, h_kv, unit, lane, sh.sqn, q_unscale, here, vb, w);
                break;
        }
        __syncwarp();  // every lane is done with this stage before the copy after next refills it
        cur ^= 1;
    });

    // row sums over the row's four lanes; this lane's columns of row g (remainder rows added) into the table
    w.l = row_sum4(w.l);
    if (t == 0) {
        sh.m[warp][g] = w.m;
        sh.l[warp][g] = w.l;
    }
    const float unscale = exp2i(-w.e);
    __syncthreads();  // the output table overlays the other warps' stages
#pragma unroll
    for (int gi = 0; gi < D / 32; ++gi) {
        const float mins = row_sum4(w.vmin[gi]);
#pragma unroll
        for (int x = 0; x < 4; ++x) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                sh.acc[warp][g * D + v_channel(gi, x, 2 * t + e)] =
                    (w.o[gi][x][e] + w.o[gi][x][2 + e]) * unscale + mins;
            }
        }
    }
    __syncthreads();
    write_split<D, kMmaRows>(p, qi, split, h0, n_g, sh.m, sh.l, &sh.acc[0][0]);
}

}  // namespace cocktail::cuda_impl
