// Quantized KV region formats (KIVI-style K per channel, V per token); byte layouts in native/README.md.
// Pure C++17, no llama.cpp internals: the compaction step and the tests call these.
#pragma once

#include "cocktail_api.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

// Functions the CUDA pack kernel (cocktail_pack_cuda.cu) shares with the CPU code, so both give the same bytes.
#ifdef __CUDACC__
#    define COCKTAIL_HD __host__ __device__
#else
#    define COCKTAIL_HD
#endif

namespace cocktail {

// Tokens per K/V block of a quantized region, and channels per V quantization group.
constexpr int kBlockTokens   = 32;
constexpr int kGroupChannels = 32;

// ---- fp16 <-> fp32 (IEEE binary16, round to nearest even; no dependence on ggml's tables) ----

COCKTAIL_HD inline float fp32_from_bits(uint32_t w) {
    float f;
    std::memcpy(&f, &w, sizeof(f));
    return f;
}

COCKTAIL_HD inline uint32_t fp32_to_bits(float f) {
    uint32_t w;
    std::memcpy(&w, &f, sizeof(w));
    return w;
}

COCKTAIL_HD inline float fp16_to_fp32(uint16_t h) {
    const uint32_t w            = static_cast<uint32_t>(h) << 16;
    const uint32_t sign         = w & 0x80000000u;
    const uint32_t two_w        = w + w;
    const float    normalized   = fp32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float    denormalized = fp32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t bits         = two_w < (1u << 27) ? fp32_to_bits(denormalized) : fp32_to_bits(normalized);
    return fp32_from_bits(sign | bits);
}

COCKTAIL_HD inline uint16_t fp32_to_fp16(float f) {
    float          base   = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w      = fp32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign   = w & 0x80000000u;
    uint32_t       bias   = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) {
        bias = 0x71000000u;
    }
    base                    = fp32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits     = fp32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa = bits & 0x00000FFFu;
    return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : exp_bits + mantissa));
}

COCKTAIL_HD inline float load_fp16(const void * p) {
    uint16_t h;
    std::memcpy(&h, p, sizeof(h));
    return fp16_to_fp32(h);
}

// ---- quantization of one group (native/README.md) ----

// Smallest fp16 >= x (x finite and >= 0): scales round up so that min + scale*qmax covers the max.
COCKTAIL_HD inline uint16_t fp16_round_up(float x) {
    uint16_t h = fp32_to_fp16(x);
    if (fp16_to_fp32(h) < x && h < 0x7BFFu) {
        ++h;
    }
    return h;
}

// Largest fp16 <= x: mins round down so that every value is >= min (exact for fp16 sources).
COCKTAIL_HD inline uint16_t fp16_round_down(float x) {
    uint16_t h = fp32_to_fp16(x);
    if (fp16_to_fp32(h) > x) {
        if (h == 0x0000u) {
            h = 0x8001u;  // +0 -> the negative subnormal next below
        } else if (h & 0x8000u) {
            h = h == 0xFBFFu ? h : static_cast<uint16_t>(h + 1);
        } else {
            --h;
        }
    }
    return h;
}

// fp16 (scale, min) of a group with minimum mn and maximum mx; also returns min and 1/scale as float.
COCKTAIL_HD inline void
group_params(float mn, float mx, int qmax, uint16_t * scale16, uint16_t * min16, float * m, float * inv) {
    const uint16_t m_h = fp16_round_down(mn);
    *m                 = fp16_to_fp32(m_h);
    const uint16_t s_h = fp16_round_up((mx - *m) / static_cast<float>(qmax));
    const float    s   = fp16_to_fp32(s_h);
    *inv               = s > 0.0f ? 1.0f / s : 0.0f;
    *scale16           = s_h;
    *min16             = m_h;
}

// Round half up of the clamped (x - m) / scale. Comparisons (not fmin/fmax: those are libm calls without
// -ffast-math) written so that NaN maps to code 0.
COCKTAIL_HD inline uint8_t quantize_code(float x, float m, float inv, float qmax) {
    float v = (x - m) * inv;
    v       = v > 0.0f ? v : 0.0f;
    v       = v < qmax ? v : qmax;
    return static_cast<uint8_t>(static_cast<int>(v + 0.5f));
}

// Packs 32 codes: Q4 byte j = e[j] | e[j+16] << 4 (16 bytes); Q2 byte j = e[j] | e[j+8] << 2 | e[j+16] << 4 |
// e[j+24] << 6 (8 bytes). Element e = token (K) or channel (V).
COCKTAIL_HD inline void pack_codes32(const uint8_t * e, int bits, uint8_t * out) {
    if (bits == 4) {
        for (int j = 0; j < 16; ++j) {
            out[j] = static_cast<uint8_t>(e[j] | (e[j + 16] << 4));
        }
    } else {
        for (int j = 0; j < 8; ++j) {
            out[j] = static_cast<uint8_t>(e[j] | (e[j + 8] << 2) | (e[j + 16] << 4) | (e[j + 24] << 6));
        }
    }
}

// ---- region geometry ----

// Code bits per element: 4 or 2 for the quantized precisions, 16 for F16.
COCKTAIL_HD inline int precision_bits(int precision) {
    return precision == COCKTAIL_PREC_Q4 ? 4 : precision == COCKTAIL_PREC_Q2 ? 2 : 16;
}

inline bool precision_valid(int precision) {
    return precision == COCKTAIL_PREC_F16 || precision == COCKTAIL_PREC_Q4 || precision == COCKTAIL_PREC_Q2;
}

COCKTAIL_HD inline int region_n_blocks(int n_tokens) {
    return (n_tokens + kBlockTokens - 1) / kBlockTokens;
}

// Bytes of one quantized (head, 32-token block), K or V alike: fp16 scale+min per 32 elements + packed codes.
COCKTAIL_HD inline size_t quant_block_bytes(int precision, int head_dim) {
    const size_t n_elem = static_cast<size_t>(kBlockTokens) * static_cast<size_t>(head_dim);
    return n_elem / kBlockTokens * 4 + n_elem * static_cast<size_t>(precision_bits(precision)) / 8;
}

// Bytes of one region's K or V (part = COCKTAIL_KV_K / COCKTAIL_KV_V; both parts have the same size).
// Preconditions: arguments accepted by region_args_check().
size_t region_bytes(int precision, int n_tokens, int n_head_kv, int head_dim);

// COCKTAIL_OK or fail(COCKTAIL_EINVAL, ...) naming the bad value. `what` prefixes the message.
int region_args_check(const char * what, int precision, int part, int n_tokens, int n_head_kv, int head_dim);

// The checks of cocktail_pack_region's arguments (host pointers): the region's, dst_size, and every cell in
// [0, src_n_cells).
int pack_region_args_check(const char * what,
                           int          precision,
                           int          part,
                           const void * dst,
                           size_t       dst_size,
                           int          n_tokens,
                           int          n_head_kv,
                           int          head_dim,
                           const void * src,
                           int          src_n_cells,
                           const int *  cells);

// Source of a pack: fp16 element (cell, channel, head) at data + cell*nb_token + channel*nb_channel + head*nb_head.
// cells[i] is the source cell of region position i (i < n_tokens).
struct PackSource {
    const uint8_t * data;
    size_t          nb_token;
    size_t          nb_channel;
    size_t          nb_head;
    const int32_t * cells;
};

// Number of independent work units of a pack (one per head and 32-token block); pack_region_part() splits them.
int pack_region_units(int n_tokens, int n_head_kv);

// Quantizes (or copies, for F16) the units [ith*n/nth, (ith+1)*n/nth) of the region into dst.
// Preconditions: region_args_check() passed, dst holds region_bytes(), every cells[i] is a valid cell.
void pack_region_part(int                precision,
                      int                part,
                      void *             dst,
                      int                n_tokens,
                      int                n_head_kv,
                      int                head_dim,
                      const PackSource & src,
                      int                ith,
                      int                nth);

// Whole region, on n_threads std::threads (1 = the calling thread only).
void pack_region(int                precision,
                 int                part,
                 void *             dst,
                 int                n_tokens,
                 int                n_head_kv,
                 int                head_dim,
                 const PackSource & src,
                 int                n_threads);

// Dequantizes a region to float dst[n_head_kv][n_tokens][head_dim] (tests, debugging).
void dequant_region(int precision, int part, const void * src, int n_tokens, int n_head_kv, int head_dim, float * dst);

}  // namespace cocktail
