// Mixed-region attention for grouped-query heads on tensor cores: the contract, split plan and merge of the scalar
// kernel (cocktail_attn_cuda.cu), for GQA groups where the scalar kernel spends one FMA per code and query head.
// A one-head variant (kOneHead, MHA) swaps the operands of S (mma_unit says how); it reads F16 units faster than the
// scalar kernel and quantized ones slower, so cocktail_attn_cuda.cu takes it by the launch's F16 share. Groups of up
// to 4 query heads (kHeadPairs) swap them too, with the heads' values and remainders as column pairs of B, so that no
// mma is spent on the A rows that 4 heads leave empty in the rows layout (kHeadRows).
//
// A block is (query token, KV head, up to 8 of its query heads, token split); each warp takes 32-token units in
// turn and computes S = Q K^T and O^T += V^T P^T with mma.sync m16n8k16 (fp16 operands, fp32 accumulators):
//  - S: A (16 x 16) rows 0-7 the query heads' fp16 values, rows 8-15 their rounding remainders (also fp16), so that
//    C rows g and g + 8 add up to a product with ~22-bit operands; B the K codes. O^T: A the V codes, B P^T twice
//    (its fp16 values, then its remainders, into the same accumulators). Codes are exact in fp16, and the other
//    operands are scaled by powers of two that keep them in fp16's normal range (the remainders too).
//  - Codes as read from the region's layout (native/README.md), turned into fp16 by a mask and a half2
//    multiply-add ((x & mask) | 0x6400 is 1024 + code << shift, exactly); F16 rows as they are.
//  - K scale and min (per channel): A = q * scale, and q . min added to every token's score. V scale and min (per
//    token and group of 32 channels): B = p * scale for that group's rows, sum(p * min) added at the end.
// Fragment layouts (PTX ISA, mma.m16n8k16 with .f16): lane = 4 g + t; A a0 = (row g, k 2t..2t+1), a1 = (row g + 8,
// k 2t..2t+1), a2 = (row g, k 2t+8..2t+9), a3 = (row g + 8, k 2t+8..2t+9); B b0 = (k 2t..2t+1, col g),
// b1 = (k 2t+8..2t+9, col g); C c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g + 8, same cols).
#pragma once

#include "cocktail_attn_cuda_common.cuh"

namespace cocktail::cuda_impl {

constexpr int kMmaRows = 8;  // query heads per block (A rows 0-7; 8-15 hold their remainders)

// How a block's query heads meet the codes (mma_unit): kHeadRows, up to 8 heads as A rows 0-7 (their remainders
// rows 8-15) times the codes as B; kOneHead, one head (MHA) and kHeadPairs, up to kPairHeads heads, with the codes as
// A and the heads as B's columns 2h (fp16 values) and 2h + 1 (remainders): kOneHead repeats its head in all four
// column pairs.
enum MmaLayout { kHeadRows, kOneHead, kHeadPairs };

constexpr int kPairHeads = 4;

// Query heads per block of layout L.
__host__ __device__ constexpr int layout_heads(MmaLayout L) {
    return L == kHeadRows ? kMmaRows : L == kOneHead ? 1 : kPairHeads;
}

// Floats per head row of a warp's probability buffer (kOneHead, kHeadPairs): 4 more than a unit, so that the rows'
// float2 stores of one g fall on other banks.
constexpr int kPbufRow = kUnit + 4;

constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

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

// 2^x for x <= 0 (ex2.approx: ~2 ulp; results below 2^-126 flush to 0, weights that small add nothing).
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
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

// Token (0..31 in the unit) of column n (0..7) of score tile j (0..3), for every kind: the tokens 2n, 2n+1, 2n+16,
// 2n+17 that one 2-byte load of a quantized K channel's codes holds (QuantCodes).
__device__ __forceinline__ int tile_token(int j, int n) {
    return 2 * n + (j & 1) + 16 * (j >> 1);
}

// The channels of k-step ks for lane t: 32 (ks / 2) + 8 t + 4 (ks % 2) + {0..3}: k = 2t, 2t+1, 2t+8, 2t+9 of the
// A and B fragments. A lane's channels of k-steps 2kp and 2kp + 1 are 8 consecutive ones (16-byte loads).
__device__ __forceinline__ int kstep_channel(int ks, int t) {
    return 32 * (ks >> 1) + 8 * t + 4 * (ks & 1);
}

// V tile x (0..3) of group gi, column n: channel 32 gi + {2n, 2n+1, 2n+16, 2n+17}[x] (what one 2-byte load of a
// token group's quantized codes holds).
__device__ __forceinline__ int v_channel(int gi, int x, int n) {
    return 32 * gi + 2 * n + (x & 1) + 16 * (x >> 1);
}

// Floats per row of the shared query table: 4 more than D so that rows g and g + 1 fall on other banks.
template <int D> constexpr int kSqnRow = D + 4;

// A fragments (split_frag) of the query rows as they are, one per 4 channels (a k-step's 2t, 2t+1, 2t+8, 2t+9 for
// the lane that reads them), per row 1 more than D / 4 so that a warp's 32 reads take the minimum 4 wavefronts.
template <int D> constexpr int kSqaRow = D / 4 + 1;

// Bytes per K channel / V token group of a staged unit: Q4 rows as they are, Q2 rows (8 bytes) padded to 16, so that
// every code address is a base plus a constant.
constexpr int kCodeRow = 16;

// Staged code rows are followed by one empty row after every kKPadRows K channels and after every kVPadTokens V tokens
// (kVPadTokens * D / 32 rows): the lanes of a code load (one row per t, 8 channels or 4 tokens apart) then read four
// bank quads, not one (a 4-way bank conflict on every code load without it).
constexpr int kKPadRows = 8, kVPadTokens = 4;

// The slot of K channel 8 t + c (c >= 0 a constant: the lane's part, t, stays a multiply).
__device__ __forceinline__ int k_slot(int t, int c) {
    return (kKPadRows + 1) * t + c + c / kKPadRows;
}

// The slot of V token 4 t + o's first group row (o >= 0 a constant).
template <int D> __device__ __forceinline__ int v_slot(int t, int o) {
    return (kVPadTokens * D / 32 + 1) * t + o * D / 32 + o / kVPadTokens;
}

// How lane column n reads Q4 / Q2 codes (native/README.md): a K channel's codes (32 tokens) and a V token's group
// (32 channels) are packed alike, so the 2-byte load at byte `at` of one holds elements 2n, 2n+1 (its bytes 0, 1, at
// bit lo) and 2n+16, 2n+17 (at bit lo + 4). Q4: 16 bytes per channel / group, at 2n, 4-bit fields at bit 0 and 4;
// Q2: 8 bytes, element e at byte e % 8, bit 2 (e / 8): at 2 (n % 4), 2-bit fields at bit 2 (n / 4) and 4 above.
struct QuantCodes {
    int      at;
    uint32_t m_lo, m_hi;
    CodeFix  f_lo, f_hi;

    __device__ __forceinline__ QuantCodes(bool q4, int n) :
        at(q4 ? 2 * n : 2 * (n & 3)),
        m_lo(q4 ? 0x000F000Fu : 0x00030003u << (2 * (n >> 2))),
        m_hi(q4 ? 0x00F000F0u : 0x00300030u << (2 * (n >> 2))),
        f_lo(q4 ? 0 : 2 * (n >> 2)),
        f_hi(q4 ? 4 : 2 * (n >> 2) + 4) {}

    // The two 2-byte loads of elements a and b (half2 low and high) as four half2: 2n, 2n+1, 2n+16, 2n+17.
    __device__ __forceinline__ void frags(uint32_t la, uint32_t lb, uint32_t (&b)[4]) const {
        const uint32_t y = __byte_perm(la, lb, 0x5410), y1 = y >> 8;
        b[0] = code_pair(y, m_lo, f_lo);
        b[1] = code_pair(y1, m_lo, f_lo);
        b[2] = code_pair(y, m_hi, f_hi);
        b[3] = code_pair(y1, m_hi, f_hi);
    }
};

__device__ __forceinline__ uint32_t ld_u16(const uint8_t * p) {
    return *reinterpret_cast<const uint16_t *>(p);
}

// The V scales (or mins) of this lane's 8 score tokens, all groups: half (j, e, gi) is token tile_token(j, 2t + e),
// i.e. tokens 4t .. 4t+3 and 16 + 4t .. 16 + 4t + 3: two runs of 4 tokens x D / 32 groups.
template <int D> struct VRow {
    static constexpr int kG = D / 32, kBytes = 8 * kG;  // bytes of one run
    uint32_t             w[4 * kG];

    // from the table at byte `at` of the staged V block (scales: 0, mins: 2 D)
    __device__ __forceinline__ void load(const uint8_t * vblock, int at, int t) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const uint8_t * src = vblock + at + 2 * (4 * t + 16 * r) * kG;
            if constexpr (kBytes == 8) {
                const uint2 v = *reinterpret_cast<const uint2 *>(src);
                w[2 * r] = v.x, w[2 * r + 1] = v.y;
            } else {
#pragma unroll
                for (int i = 0; i < kBytes / 16; ++i) {
                    const uint4 v             = reinterpret_cast<const uint4 *>(src)[i];
                    w[r * kBytes / 4 + 4 * i] = v.x, w[r * kBytes / 4 + 4 * i + 1] = v.y;
                    w[r * kBytes / 4 + 4 * i + 2] = v.z, w[r * kBytes / 4 + 4 * i + 3] = v.w;
                }
            }
        }
    }

    __device__ __forceinline__ float at(int j, int e, int gi) const {
        const int     idx = ((j >> 1) * 4 + 2 * e + (j & 1)) * kG + gi;
        const __half2 h   = bits_h2(w[idx / 2]);
        return __half2float((idx & 1) ? __high2half(h) : __low2half(h));
    }

    __device__ __forceinline__ float abs_max() const {
        __half2 m = __habs2(bits_h2(w[0]));
#pragma unroll
        for (int i = 1; i < 4 * kG; ++i) {
            m = __hmax2(m, __habs2(bits_h2(w[i])));
        }
        return fmaxf(__low2float(m), __high2float(m));
    }
};

// O is accumulated transposed (O^T = V^T P^T): C rows are channels, columns query heads, so that the remainder rows
// of P add into the same accumulators (one mma each for P's fp16 values and remainders) and O takes D / 4 floats per
// lane, not D / 2. Row r (0..15) of tile m (0, 1) of V group gi is channel vt_channel(gi, m, r): rows g, g + 8 of
// tile m are the channels 2g + 16m, 2g + 1 + 16m that the lane's code loads hold (QuantCodes::frags with n = g).
__device__ __forceinline__ int vt_channel(int gi, int m, int r) {
    return 32 * gi + 2 * (r & 7) + (r >> 3) + 16 * m;
}

template <int D> struct MmaWarp {
    float o[D / 32][2][4];  // [V group][tile][c0..c3]: channel rows g, g + 8 of the tile by query heads 2t, 2t + 1
                            // (kOne: by the value and remainder parts of the one head, to be added)
    float vmin[4];          // sum of p * V min per group (C of P times the min table: groups 2t, 2t+1)
    float m;                // running max of row g in log2 units (the same in its four lanes; kOne: in every lane)
    float l;                // this lane's share of row g's sum (kOne: of its 4 tokens' sum, the same in the row)
    int   e;                // o holds 2^e times the output
};

// Byte strides of an F16 region ([head][token][D]) or of the tail (the call's), for K or V.
struct F16Layout {
    size_t nb_token, nb_head, nb_channel;

    __device__ __forceinline__ F16Layout(const Params & p, const Segment & s, bool tail, bool v, int D) {
        if (!tail) {
            nb_token = 2 * D, nb_head = static_cast<size_t>(s.n_tokens) * 2 * D, nb_channel = 2;
        } else {
            nb_token   = v ? p.tv_nb_token : p.tk_nb_token;
            nb_head    = v ? p.tv_nb_head : p.tk_nb_head;
            nb_channel = v ? p.tv_nb_channel : 2;
        }
    }
};

// K channels c .. c + 7 of a tail row without 16-byte alignment. Out of line: a rare layout, kept out of the hot code.
__device__ __noinline__ uint4 tail_k_slice(const uint8_t * row) {
    uint32_t x[4];
    for (int i = 0; i < 4; ++i) {
        x[i] = ld_u16(row + 4 * i) | ld_u16(row + 4 * i + 2) << 16;
    }
    return make_uint4(x[0], x[1], x[2], x[3]);
}

// One 32-token unit of segment s for this warp's rows: scores, online softmax (in log2 units: exp2), O += P V.
// kQuantUnit: a Q4 or Q2 unit (s.kind says which), its K and V blocks read from kblock / vblock (the warp's
// shared-memory copies); kF16Unit: an F16 region's unit; kTailUnit: the tail's (its strides and mask). The quantized
// K loop stays rolled (the kernel's code has to fit the instruction cache; unrolled by 2 it was no faster); the
// F16 / tail K loop is unrolled, so that its global loads are all in flight at once (all-F16 6 % faster).
// kOneHead (one query head per KV head, MHA): S^T = K Q^T with K as A (rows tokens: the fragments the codes give
// anyway) and the query as B, its fp16 values in the even columns and remainders in the odd ones, so that every lane
// of a row holds its two tokens' scores (columns 2t + 2t+1) and no mma is spent on absent heads: 2 score mmas per
// k-step, not 4, and one O^T mma per tile (P^T's values and remainders as the even and odd columns), not 2. The
// softmax then runs per token over the warp, and the probabilities go through `pbuf` (the warp's shared memory) to
// the lanes that hold their tokens' V codes. The sketch of the kernel (MmaWarp) is the same otherwise.
// kHeadPairs (up to 4 query heads): the same S^T, with head h's values and remainders in B columns 2h, 2h + 1, so
// that lane t holds head t's scores (its softmax runs over the rows g); the probabilities go through `pbuf` per head,
// O^T's B columns are the same pairs (one mma per tile, not 2), and o's columns 2t, 2t + 1 are head t's parts.
enum MmaUnit { kQuantUnit, kF16Unit, kTailUnit };

// Over the eight rows g of a fragment (lanes 4g + t, the same t).
__device__ __forceinline__ float col_max8(float x) {
    for (int o = 4; o < 32; o <<= 1) {
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    }
    return x;
}

__device__ __forceinline__ float col_sum8(float x) {
    for (int o = 4; o < 32; o <<= 1) {
        x += __shfl_xor_sync(0xffffffffu, x, o);
    }
    return x;
}

// kOne: a B column pair of split_frag's output {values 0-1, remainders 0-1, values 2-3, remainders 2-3}: values in
// even columns, remainders in odd ones.
__device__ __forceinline__ void one_b(const uint32_t (&s)[4], int g, uint32_t & b0, uint32_t & b1) {
    b0 = (g & 1) ? s[1] : s[0];
    b1 = (g & 1) ? s[3] : s[2];
}

template <int D, MmaUnit kind, MmaLayout L>
__device__ __forceinline__ void mma_unit(const Params &  p,
                                         const Segment & s,
                                         int             qi,
                                         int             h_kv,
                                         int             unit,
                                         int             lane,
                                         const float *   sqn,
                                         const uint4 *   sqa,
                                         float           q_unscale,
                                         const uint8_t * kblock,
                                         const uint8_t * vblock,
                                         float *         pbuf,
                                         MmaWarp<D> &    w) {
    constexpr int  kG = D / 32;
    const int      g = lane >> 2, t = lane & 3;
    constexpr bool kQuant = kind == kQuantUnit, tail = kind == kTailUnit;
    constexpr bool kOne = L == kOneHead, kPairs = L == kHeadPairs, kSwap = L != kHeadRows;  // kSwap: S^T = K Q^T
    // this lane's score tokens and their mask (log2 units): columns 2t, 2t+1 of the four score tiles, or (kSwap) rows
    // g, g + 8 of the two (tokens tile_token(j, g), j = 0..3: the same in the row's four lanes)
    constexpr int  kE = kSwap ? 1 : 2;
    bool           vis[4][kE];
    float          add[4][kE];
    bool           any = false;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < kE; ++e) {
            const int tok = unit * kUnit + tile_token(j, kSwap ? g : 2 * t + e);
            vis[j][e]     = tok < s.n_tokens;
            add[j][e]     = 0.0f;
            if (tail && vis[j][e] && p.mask != nullptr) {
                const uint8_t * row = p.mask + qi * p.mask_nb_row;
                add[j][e] = (p.mask_f16 ? h2f(row + 2 * tok) : reinterpret_cast<const float *>(row)[tok]) * kLog2e;
                vis[j][e] = add[j][e] != -INFINITY;
            }
            any = any || vis[j][e];
        }
    }
    if (tail && !__any_sync(0xffffffffu, any)) {  // the cache's view is padded with masked cells
        return;
    }

    // S = Q K^T: quantized K as q * scale (A) times codes (B) plus q . min (the min row as B in every column, q
    // from the split table: C rows g and g + 8 hold the bias of row g, no shuffle). kSwap: the codes as A, q * scale
    // as B; q . min a dot product over the warp (kOneHead) or the min row as A in every row times q as B (kHeadPairs:
    // C columns 2t, 2t + 1 hold head t's bias).
    constexpr int    kTiles          = kSwap ? 2 : 4;
    float            sacc[kTiles][4] = {};
    float            unscale = q_unscale, bias = 0.0f;
    const QuantCodes qc(s.kind == kQ4, g);
    // S += this k-step's product: a = the query's split_frag (q * scale), kc[j] = channels c0, c0+1 | c0+2, c0+3 of
    // token tile_token(j, g)
    const auto       score_mma = [&](const uint32_t (&a)[4], const uint32_t (&kc)[4][2]) {
        if constexpr (kSwap) {
            uint32_t b0, b1;
            one_b(a, g, b0, b1);
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                const uint32_t ak[4] = { kc[2 * m][0], kc[2 * m + 1][0], kc[2 * m][1], kc[2 * m + 1][1] };
                mma_16816(sacc[m], ak, b0, b1);
            }
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                mma_16816(sacc[j], a, kc[j][0], kc[j][1]);
            }
        }
    };
    const int     qr   = kOne ? 0 : kPairs ? g >> 1 : g;  // the query row of this lane's A row or B column
    const float * qrow = sqn + qr * kSqnRow<D>;
    const int     gc   = (g >> 1) & (kG - 1);             // kOne: this lane's V B column's group (O += P V)
    uint32_t      vsc[2][2];  // kOne: the V scales of this lane's B rows (k-step; k 2t, 2t+1 | 2t+8, 2t+9)
    int           ev = 14;    // o's exponent for this unit (O += P V; F16: p * 2^14 <= 2^14)
    if constexpr (kQuant) {
        __half2 kmax2 = __float2half2_rn(0.0f);
#pragma unroll
        for (int kp = 0; kp < kG; ++kp) {
            const uint4 w4 = *reinterpret_cast<const uint4 *>(kblock + 2 * (32 * kp + 8 * t));
            kmax2          = __hmax2(kmax2, __hmax2(__hmax2(__habs2(bits_h2(w4.x)), __habs2(bits_h2(w4.y))),
                                                    __hmax2(__habs2(bits_h2(w4.z)), __habs2(bits_h2(w4.w)))));
        }
        const float kmax = fmaxf(__low2float(kmax2), __high2float(kmax2));
        const int   eb   = scale_exp(row_max4(kmax), 13);  // |q * scale| < 2 * 2^14 (q is scaled to [1, 2))
        const float sb   = exp2i(eb);
        unscale *= exp2i(-eb);
        const uint8_t * codes   = kblock + 4 * D + qc.at;
        float           bacc[4] = {};
        if constexpr (kOne) {
            // q . min: lane (g, t) takes k-steps g, g + 8, ...: every channel once; before the K loop, so that the
            // shuffles overlap its work
            float dot = 0.0f;
#pragma unroll
            for (int ks = g; ks < 2 * kG; ks += 8) {
                const int    c0 = kstep_channel(ks, t);
                const float4 q  = *reinterpret_cast<const float4 *>(qrow + c0);
                float        mn[4];
                load_halves<4>(kblock + 2 * D + 2 * c0, mn);
                dot += q.x * mn[0] + q.y * mn[1] + q.z * mn[2] + q.w * mn[3];
            }
            bias = warp_sum(dot) * q_unscale;
        }
#pragma unroll 1
        for (int kp = 0; kp < kG; ++kp) {
            float ks[8];
            load_halves<8>(kblock + 2 * (32 * kp + 8 * t), ks);
            const uint4 km = *reinterpret_cast<const uint4 *>(kblock + 2 * D + 2 * (32 * kp + 8 * t));
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int    c0 = kstep_channel(2 * kp + h, t);
                const float4 q  = *reinterpret_cast<const float4 *>(qrow + c0);
                uint32_t     a[4];
                split_frag(q.x * (ks[4 * h] * sb), q.y * (ks[4 * h + 1] * sb), q.z * (ks[4 * h + 2] * sb),
                           q.w * (ks[4 * h + 3] * sb), a);
                uint32_t        b0[4], b1[4];  // channels c0, c0+1 and c0+2, c0+3; this lane's token of each tile
                const uint8_t * c = codes + k_slot(t, c0 - 8 * t) * kCodeRow;  // c0 .. c0 + 3: one pad group
                qc.frags(ld_u16(c), ld_u16(c + kCodeRow), b0);
                qc.frags(ld_u16(c + 2 * kCodeRow), ld_u16(c + 3 * kCodeRow), b1);
                const uint32_t kc[4][2] = {
                    { b0[0], b1[0] },
                    { b0[1], b1[1] },
                    { b0[2], b1[2] },
                    { b0[3], b1[3] }
                };
                score_mma(a, kc);
                const uint4 qa = sqa[qr * kSqaRow<D> + c0 / 4];
                if constexpr (kPairs) {
                    const uint32_t m01 = h == 0 ? km.x : km.z, m23 = h == 0 ? km.y : km.w;
                    const uint32_t am[4] = { m01, m01, m23, m23 };
                    const uint32_t sq[4] = { qa.x, qa.y, qa.z, qa.w };
                    uint32_t       b0, b1;
                    one_b(sq, g, b0, b1);
                    mma_16816(bacc, am, b0, b1);
                } else if constexpr (!kOne) {
                    const uint32_t aq[4] = { qa.x, qa.y, qa.z, qa.w };
                    mma_16816(bacc, aq, h == 0 ? km.x : km.z, h == 0 ? km.y : km.w);
                }
            }
        }
        if constexpr (kOne) {
            __half2 smax = __float2half2_rn(0.0f);
#pragma unroll
            for (int ks = 0; ks < 2; ++ks) {
#pragma unroll
                for (int i = 0; i < 2; ++i) {  // k 2t, 2t+1 (i = 0); 2t+8, 2t+9 (i = 1)
                    const uint8_t * at = vblock + 2 * (tile_token(2 * ks + i, 2 * t) * kG + gc);
                    const __half2   h  = __halves2half2(*reinterpret_cast<const __half *>(at),
                                                        *reinterpret_cast<const __half *>(at + 4 * kG));
                    vsc[ks][i]         = h2_bits(h);
                    smax               = __hmax2(smax, __habs2(h));
                }
            }
            ev = scale_exp(warp_max(fmaxf(__low2float(smax), __high2float(smax))), 13);  // |p * scale| < 2^14
        } else {
            bias = (kPairs ? bacc[0] + bacc[1] : bacc[0] + bacc[2]) * q_unscale;
        }
    } else {
        const F16Layout kl(p, s, tail, false, D);
#pragma unroll
        for (int kp = 0; kp < kG; ++kp) {
            uint4 rows[4];  // channels 32 kp + 8 t .. + 7 of this lane's token in each score tile
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int       tok = unit * kUnit + tile_token(j, g);
                const uint8_t * at  = s.k + tok * kl.nb_token + h_kv * kl.nb_head + 2 * (32 * kp + 8 * t);
                rows[j]             = tok >= s.n_tokens     ? make_uint4(0, 0, 0, 0) :
                                      !tail || p.tail_k_vec ? *reinterpret_cast<const uint4 *>(at) :
                                                              tail_k_slice(at);
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int      c0   = kstep_channel(2 * kp + h, t);
                const uint4    qa   = sqa[qr * kSqaRow<D> + c0 / 4];
                const uint32_t a[4] = { qa.x, qa.y, qa.z, qa.w };
                uint32_t       kc[4][2];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    kc[j][0] = h == 0 ? rows[j].x : rows[j].z;
                    kc[j][1] = h == 0 ? rows[j].y : rows[j].w;
                }
                score_mma(a, kc);
            }
        }
    }

    // online softmax over row g (this lane's 8 tokens, then the row's 4 lanes); kSwap: over query head t's 32 tokens
    // (this lane's 4, then the 8 rows)
    unscale *= kLog2e;
    bias *= kLog2e;
    float sc[4][kE], rmax = -INFINITY;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < kE; ++e) {
            const float x =
                kSwap ? sacc[j >> 1][2 * (j & 1)] + sacc[j >> 1][2 * (j & 1) + 1] : sacc[j][e] + sacc[j][2 + e];
            sc[j][e] = vis[j][e] ? x * unscale + bias + add[j][e] : -INFINITY;
            rmax     = fmaxf(rmax, sc[j][e]);
        }
    }
    const float m_new = fmaxf(w.m, kSwap ? col_max8(rmax) : row_max4(rmax));
    if (m_new == -INFINITY) {  // nothing seen yet by any row (the rows share the tokens and their visibility)
        return;
    }
    const float corr = w.m == -INFINITY ? 0.0f : fast_exp2(w.m - m_new);
    float       pr[4][2], psum = 0.0f;  // pr[j][e]: token tile_token(j, 2t + e)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < kE; ++e) {
            pr[j][e] = vis[j][e] ? fast_exp2(sc[j][e] - m_new) : 0.0f;
            psum += pr[j][e];
        }
    }
    w.m = m_new;
    w.l = w.l * corr + psum;
    // kSwap: from the rows' tokens (tile_token(j, g)) to the columns' (tile_token(j, 2t + e)); kHeadPairs: head t's
    // row of pbuf in, head g / 2's (the lane's B columns) out
    if constexpr (kSwap) {
        if (kPairs || t == 0) {
            float * row                                   = pbuf + (kPairs ? t * kPbufRow : 0);
            *reinterpret_cast<float2 *>(row + 2 * g)      = make_float2(pr[0][0], pr[1][0]);
            *reinterpret_cast<float2 *>(row + 16 + 2 * g) = make_float2(pr[2][0], pr[3][0]);
        }
        __syncwarp();
        const float * row = pbuf + (kPairs ? (g >> 1) * kPbufRow : 0);
        const float4  lo  = *reinterpret_cast<const float4 *>(row + 4 * t);
        const float4  hi  = *reinterpret_cast<const float4 *>(row + 16 + 4 * t);
        pr[0][0] = lo.x, pr[1][0] = lo.y, pr[0][1] = lo.z, pr[1][1] = lo.w;
        pr[2][0] = hi.x, pr[3][0] = hi.y, pr[2][1] = hi.z, pr[3][1] = hi.w;
    }

    // O += P V: quantized V as codes (A: rows channels, k tokens) times p * scale (B) plus sum(p * min) per group;
    // F16 V as its values times p. A's k-steps are the score tiles as they are: k 2t, 2t+1 of k-step ks = tile 2ks's
    // columns 2t, 2t+1, k 2t+8, 2t+9 = tile 2ks + 1's, so B row k holds the matching token. B's columns: the query
    // heads (P^T's values, then its remainders, per V group); kOne: V group (n / 2) % kG's p * scale, values in even
    // columns n and remainders in odd ones, so that one B serves every group's tiles (for a tile of group gi, the
    // lanes t with t % kG == gi hold its columns 2t, 2t+1: the others' sums are not used).
    VRow<D> vs;
    if constexpr (kQuant && !kOne) {
        vs.load(vblock, 0, t);
        ev = scale_exp(row_max4(vs.abs_max()), 13);  // |p * scale| < 2^14
    }
    // o holds 2^e times the output: e only ever decreases (p * scale * 2^e stays below 2^14), so that o is rescaled
    // only when a row's max or e changes, not on every unit
    const int   e_new = corr == 0.0f ? ev : min(ev, w.e);
    const float f     = corr == 0.0f ? 0.0f : corr * exp2i(max(e_new - w.e, -126));
    // vmin's rows are P's (kHeadPairs: head g / 2, whose factors lane 4 g + g / 2 has)
    const float fv    = kPairs ? __shfl_sync(0xffffffffu, f, 4 * g + (g >> 1)) : f;
    const float cv    = kPairs ? __shfl_sync(0xffffffffu, corr, 4 * g + (g >> 1)) : corr;
    if (fv != 1.0f) {  // (f is 1 only where corr is)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            w.vmin[i] *= cv;
        }
    }
    // o's columns are query heads 2t and 2t + 1: their rows' factors (lane 4h holds row h); kSwap: this lane's head
    const float f0 = kSwap ? f : __shfl_sync(0xffffffffu, f, 8 * t);
    const float f1 = kSwap ? f : __shfl_sync(0xffffffffu, f, 8 * t + 4);
    if (f0 != 1.0f || f1 != 1.0f) {
#pragma unroll
        for (int gi = 0; gi < kG; ++gi) {
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                w.o[gi][m][0] *= f0, w.o[gi][m][1] *= f1, w.o[gi][m][2] *= f0, w.o[gi][m][3] *= f1;
            }
        }
    }
    w.e             = e_new;
    const float sev = exp2i(e_new);
    float       prs[4][2];  // p * 2^e
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            prs[j][e] = pr[j][e] * sev;
        }
    }
    if constexpr (kQuant) {
        // sum(p * min) per group: P (A, k-steps as below; p <= 1, unscaled: 2^e can exceed fp16's range) times the
        // min table (B: token x group, column g = group g; lanes past the last group read group g % kG, their
        // columns are not used). kHeadPairs: A rows 2h and 2h + 1 are both head h.
        const uint8_t * mins = vblock + 2 * D + 2 * (4 * t * kG + (g & (kG - 1)));
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
            uint32_t a[4];
            split_frag(pr[2 * ks][0], pr[2 * ks][1], pr[2 * ks + 1][0], pr[2 * ks + 1][1], a);
            const uint8_t * m = mins + 2 * 16 * ks * kG;  // tokens 16 ks + 4t + {0, 2} (b0), {1, 3} (b1)
            mma_16816(w.vmin, a, ld_u16(m) | ld_u16(m + 4 * kG) << 16, ld_u16(m + 2 * kG) | ld_u16(m + 6 * kG) << 16);
        }
    }
    // V group gi's A fragments of k-step ks: [k 2t.. | k 2t+8..][channel 2g, 2g+1, 2g+16, 2g+17] (see vt_channel)
    const F16Layout vl(p, s, tail, true, D);
    const auto      v_frags = [&](int gi, int ks, uint32_t (&b)[2][4]) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int ta = tile_token(2 * ks + half, 2 * t), tb = tile_token(2 * ks + half, 2 * t + 1);
            if constexpr (kQuant) {
                const uint8_t * codes = vblock + 4 * D + gi * kCodeRow + qc.at;
                qc.frags(ld_u16(codes + v_slot<D>(t, ta - 4 * t) * kCodeRow),
                         ld_u16(codes + v_slot<D>(t, tb - 4 * t) * kCodeRow), b[half]);
            } else {
                // channel pairs as 4-byte loads (F16 regions, tails with contiguous channels) or two 2-byte loads
                // under the tail's channel stride
                const bool v32 = !tail || p.tail_v_vec;
                uint32_t   wd[2][2];  // [token a, b][channels 2n, 2n+1 | 2n+16, 2n+17]
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int       tok = unit * kUnit + (r == 0 ? ta : tb);
                    const uint8_t * row = s.v + tok * vl.nb_token + h_kv * vl.nb_head;
#pragma unroll
                    for (int x = 0; x < 2; ++x) {
                        const uint8_t * at = row + v_channel(gi, 2 * x, g) * vl.nb_channel;
                        wd[r][x]           = tok >= s.n_tokens ? 0 :
                                             v32               ? *reinterpret_cast<const uint32_t *>(at) :
                                                                 ld_u16(at) | ld_u16(at + vl.nb_channel) << 16;
                    }
                }
#pragma unroll
                for (int x = 0; x < 2; ++x) {
                    b[half][2 * x]     = __byte_perm(wd[0][x], wd[1][x], 0x5410);
                    b[half][2 * x + 1] = __byte_perm(wd[0][x], wd[1][x], 0x7632);
                }
            }
        }
    };
    if constexpr (kOne) {
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
            float x[4] = { prs[2 * ks][0], prs[2 * ks][1], prs[2 * ks + 1][0], prs[2 * ks + 1][1] };
            if constexpr (kQuant) {
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    const float2 sc2 = __half22float2(bits_h2(vsc[ks][i]));
                    x[2 * i] *= sc2.x;
                    x[2 * i + 1] *= sc2.y;
                }
            }
            uint32_t pb[4], b0, b1;
            split_frag(x[0], x[1], x[2], x[3], pb);
            one_b(pb, g, b0, b1);
#pragma unroll
            for (int gi = 0; gi < kG; ++gi) {
                uint32_t b[2][4];
                v_frags(gi, ks, b);
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    const uint32_t a[4] = { b[0][2 * m], b[0][2 * m + 1], b[1][2 * m], b[1][2 * m + 1] };
                    mma_16816(w.o[gi][m], a, b0, b1);
                }
            }
        }
    } else {
#pragma unroll
        for (int gi = 0; gi < kG; ++gi) {
            float pv[4][2];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    pv[j][e] = kQuant ? prs[j][e] * vs.at(j, e, gi) : prs[j][e];
                }
            }
#pragma unroll
            for (int ks = 0; ks < 2; ++ks) {
                // P^T as B (k = the score tiles' tokens as below, column g = row g of P): fp16 values, then remainders
                uint32_t pb[4];
                split_frag(pv[2 * ks][0], pv[2 * ks][1], pv[2 * ks + 1][0], pv[2 * ks + 1][1], pb);
                uint32_t b[2][4];
                v_frags(gi, ks, b);
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    const uint32_t a[4] = { b[0][2 * m], b[0][2 * m + 1], b[1][2 * m], b[1][2 * m + 1] };
                    if constexpr (kPairs) {  // column g: head g / 2's value (g even) or remainder
                        uint32_t b0, b1;
                        one_b(pb, g, b0, b1);
                        mma_16816(w.o[gi][m], a, b0, b1);
                    } else {
                        mma_16816(w.o[gi][m], a, pb[0], pb[2]);
                        mma_16816(w.o[gi][m], a, pb[1], pb[3]);
                    }
                }
            }
        }
    }
}

// Bytes of one staged K (or V) block: the scale and min tables (4 D), then D code rows of kCodeRow bytes (Q2 rows
// padded) and the empty rows between them (D / kKPadRows for K, 32 / kVPadTokens for V: room for the larger).
template <int D>
constexpr int kStagedBlock =
    4 * D + kCodeRow * (D + (D / kKPadRows > 32 / kVPadTokens ? D / kKPadRows : 32 / kVPadTokens));

// The copies of stage_unit for one K (or V) block at src: its scale and min tables, then its D code rows, an empty
// row after every pad of them.
template <int D, int kind, int pad>
__device__ __forceinline__ void stage_block(const uint8_t * src, int lane, uint8_t * dst) {
    copy_chunks<4 * D / 16, 16>(dst, src, lane);
    if constexpr (kind == kQ4) {
        copy_chunks<D, 16, 16, kCodeRow, pad>(dst + 4 * D, src + 4 * D, lane);
    } else {
        copy_chunks<D, 8, 8, kCodeRow, pad>(dst + 4 * D, src + 4 * D, lane);
    }
}

// Starts the warp's copy of a quantized unit's K and V blocks to dst (K block, then V block at kStagedBlock): the
// scale and min tables (4 D bytes) as they are, then D code rows of 16 (Q4) or 8 (Q2) bytes, each in a 16-byte slot
// (k_slot, v_slot).
template <int D>
__device__ __forceinline__ void stage_unit(const Segment & s, int h_kv, int unit, int lane, uint8_t * dst) {
    const size_t blocks = unit_block(s, h_kv, unit);
    if (s.kind == kQ4) {
        const size_t at = blocks * block_bytes<D, kQ4>();
        stage_block<D, kQ4, kKPadRows>(s.k + at, lane, dst);
        stage_block<D, kQ4, kVPadTokens * D / 32>(s.v + at, lane, dst + kStagedBlock<D>);
    } else {
        const size_t at = blocks * block_bytes<D, kQ2>();
        stage_block<D, kQ2, kKPadRows>(s.k + at, lane, dst);
        stage_block<D, kQ2, kVPadTokens * D / 32>(s.v + at, lane, dst + kStagedBlock<D>);
    }
}

template <int D> struct MmaShared {
    alignas(16) float sqn[kMmaRows *
                          kSqnRow<D>];  // [g][channel]: scaled query rows times 2^qexp[g] (largest |value| in [1, 2))

    union {
        // per warp, two stages of a quantized unit's K and V blocks: the next unit copies in while this one computes
        alignas(16) uint8_t stage[kWarps][2][2 * kStagedBlock<D>];
        float acc[kWarps][kMmaRows * D];  // at the end: the warps' unnormalized outputs
    };

    uint4 sqa[kMmaRows * kSqaRow<D>];                       // the same rows as A fragments (split_frag of 4 channels)
    alignas(16) float pbuf[kWarps][kPairHeads * kPbufRow];  // kSwap: a unit's probabilities on their way between lanes
    float m[kWarps][kMmaRows], l[kWarps][kMmaRows];
    int   qexp[kMmaRows];
};

// Dynamic shared memory (sizeof(MmaShared<D>), over the 48 KiB of static shared memory for D = 128): the launch
// raises the kernel's limit first (cocktail_attn_cuda.cu, resident_blocks). L: how the block's query heads (one for
// kOneHead, MHA; up to 4 for kHeadPairs; up to 8 for kHeadRows) meet the codes (mma_unit says how).
template <int D, MmaLayout L> __global__ void __launch_bounds__(kWarps * 32, 3) attn_partial_mma(const Params p) {
    static_assert(D == 32 || D == 64 || D == 128, "tensor-core kernel: head_dim 32, 64 or 128");
    extern __shared__ uint4 mma_smem[];
    MmaShared<D> &          sh   = *reinterpret_cast<MmaShared<D> *>(mma_smem);
    constexpr bool          kOne = L == kOneHead, kPairs = L == kHeadPairs;
    constexpr int           kRows = layout_heads(L);  // query rows in the tables

    const int qi = blockIdx.z, split = blockIdx.y;
    const int h_kv = blockIdx.x / p.n_gblocks, gb = blockIdx.x % p.n_gblocks;
    const int h0 = h_kv * p.group + gb * kRows, n_g = min(kRows, p.group - gb * kRows);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;

    // query rows (each warp its own, lane c its channels 4c .. 4c + 3), each scaled to [1, 2) by a power of two so
    // that its fp16 split keeps ~22 bits: as they are (sqn) and as A fragments (sqa); one barrier publishes them. The
    // rows' loads go first, then the copy of the warp's first unit, so that both latencies overlap the tables' work.
    constexpr int kWarpRows = (kRows + kWarps - 1) / kWarps;
    float4        x[kWarpRows];
#pragma unroll
    for (int i = 0; i < kWarpRows; ++i) {
        const int r = warp + i * kWarps;
        x[i]        = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < n_g && lane < D / 4) {
            const float * src = reinterpret_cast<const float *>(reinterpret_cast<const uint8_t *>(p.q) +
                                                                qi * p.q_nb_token + (h0 + r) * p.q_nb_head) +
                                4 * lane;
            x[i]              = make_float4(p.scale * src[0], p.scale * src[1], p.scale * src[2], p.scale * src[3]);
        }
    }
    UnitWalk   walk(p, qi, split, warp);
    WarpStages ws(sh.stage[warp][0], sh.stage[warp][1]);
    const auto copy = [&](const Segment & seg, int u, uint8_t * dst) {
        stage_unit<D>(seg, h_kv, u, lane, dst);
    };
    ws.prefetch(walk, copy);
#pragma unroll
    for (int i = 0; i < kWarpRows; ++i) {
        const int r = warp + i * kWarps;
        if (r < kRows) {
            float4 &    y = x[i];
            const int   e = scale_exp(warp_max(fmaxf(fmaxf(fabsf(y.x), fabsf(y.y)), fmaxf(fabsf(y.z), fabsf(y.w)))), 0);
            const float f = exp2i(e);
            y.x *= f, y.y *= f, y.z *= f, y.w *= f;
            if (lane < D / 4) {
                *reinterpret_cast<float4 *>(sh.sqn + r * kSqnRow<D> + 4 * lane) = y;
                uint32_t a[4];
                split_frag(y.x, y.y, y.z, y.w, a);
                sh.sqa[r * kSqaRow<D> + lane] = make_uint4(a[0], a[1], a[2], a[3]);
            }
            if (lane == 0) {
                sh.qexp[r] = e;
            }
        }
    }
    __syncthreads();
    const float q_unscale = exp2i(-sh.qexp[kOne ? 0 : kPairs ? t : g]);  // of this lane's scores' head

    MmaWarp<D> w;
#pragma unroll
    for (int gi = 0; gi < D / 32; ++gi) {
#pragma unroll
        for (int m = 0; m < 2; ++m) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                w.o[gi][m][i] = 0.0f;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        w.vmin[i] = 0.0f;
    }
    w.m = -INFINITY, w.l = 0.0f, w.e = 0;
    float * pbuf = sh.pbuf[warp];
    walk.run([&](const Segment & s, int unit, int next, int next_unit) {
        uint8_t * here = ws.enter(p, s, unit, next, next_unit, copy);
        if (quantized(s.kind)) {
            mma_unit<D, kQuantUnit, L>(p, s, qi, h_kv, unit, lane, sh.sqn, sh.sqa, q_unscale, here,
                                       here + kStagedBlock<D>, pbuf, w);
        } else if (s.kind == kF16) {
            mma_unit<D, kF16Unit, L>(p, s, qi, h_kv, unit, lane, sh.sqn, sh.sqa, q_unscale, nullptr, nullptr, pbuf, w);
        } else {
            mma_unit<D, kTailUnit, L>(p, s, qi, h_kv, unit, lane, sh.sqn, sh.sqa, q_unscale, nullptr, nullptr, pbuf, w);
        }
        __syncwarp();  // every lane is done with this stage (and pbuf) before the next unit refills them
    });

    // row sums over the row's four lanes (kOneHead: over the eight rows, the four lanes of a row alike; kHeadPairs:
    // head t's over the eight rows); this lane's columns of row g (remainder rows added) into the table (kOneHead,
    // kHeadPairs: the value and remainder columns added)
    w.l = L != kHeadRows ? col_sum8(w.l) : row_sum4(w.l);
    if (kOne ? lane == 0 : kPairs ? g == 0 : t == 0) {
        const int row   = kOne ? 0 : kPairs ? t : g;
        sh.m[warp][row] = w.m * kLn2;  // write_split and the merge take natural units
        sh.l[warp][row] = w.l;
    }
    const float unscale = exp2i(-w.e);
    __syncthreads();  // the output table overlays the other warps' stages
    const float vmin[2] = { w.vmin[0] + w.vmin[2], w.vmin[1] + w.vmin[3] };  // row g, groups 2t and 2t + 1
#pragma unroll
    for (int gi = 0; gi < D / 32; ++gi) {
        if constexpr (kOne) {  // group gi's V-min sum is in lanes 4g' + gi / 2 (any g'), its o in lanes t == gi
            const float mins = __shfl_sync(0xffffffffu, vmin[gi & 1], 4 * g + (gi >> 1));
            if (t == gi) {
#pragma unroll
                for (int m = 0; m < 2; ++m) {
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        sh.acc[warp][vt_channel(gi, m, g + 8 * r)] =
                            (w.o[gi][m][2 * r] + w.o[gi][m][2 * r + 1]) * unscale + mins;
                    }
                }
            }
        } else if constexpr (kPairs) {  // head t's o: its value and remainder columns; its V-min sums (rows 2t and
                                        // 2t + 1 alike) are in lane 8t + gi / 2
            const float mins = __shfl_sync(0xffffffffu, vmin[gi & 1], 8 * t + (gi >> 1));
#pragma unroll
            for (int m = 0; m < 2; ++m) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    sh.acc[warp][t * D + vt_channel(gi, m, g + 8 * r)] =
                        (w.o[gi][m][2 * r] + w.o[gi][m][2 * r + 1]) * unscale + mins;
                }
            }
        } else {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int   h = 2 * t + e;  // this lane's column e of o; its row's V-min sums are in lane 4h + gi / 2
                const float mins = __shfl_sync(0xffffffffu, vmin[gi & 1], 4 * h + (gi >> 1));
#pragma unroll
                for (int m = 0; m < 2; ++m) {
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        sh.acc[warp][h * D + vt_channel(gi, m, g + 8 * r)] = w.o[gi][m][2 * r + e] * unscale + mins;
                    }
                }
            }
        }
    }
    __syncthreads();
    write_split<D, kMmaRows, kRows>(p, qi, split, h0, n_g, sh.m, sh.l, &sh.acc[0][0]);
}

}  // namespace cocktail::cuda_impl
