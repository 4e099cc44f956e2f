// Quantized KV region formats (KIVI-style K per channel, V per token); byte layouts in native/README.md.
// Pure C++17, no llama.cpp internals: the compaction step and the tests call these.
#pragma once

#include "cocktail_api.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace cocktail {

// Tokens per K/V block of a quantized region, and channels per V quantization group.
constexpr int kBlockTokens   = 32;
constexpr int kGroupChannels = 32;

// ---- fp16 <-> fp32 (IEEE binary16, round to nearest even; no dependence on ggml's tables) ----

inline float fp32_from_bits(uint32_t w) {
    float f;
    std::memcpy(&f, &w, sizeof(f));
    return f;
}

inline uint32_t fp32_to_bits(float f) {
    uint32_t w;
    std::memcpy(&w, &f, sizeof(w));
    return w;
}

inline float fp16_to_fp32(uint16_t h) {
    const uint32_t w            = static_cast<uint32_t>(h) << 16;
    const uint32_t sign         = w & 0x80000000u;
    const uint32_t two_w        = w + w;
    const float    normalized   = fp32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float    denormalized = fp32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t bits         = two_w < (1u << 27) ? fp32_to_bits(denormalized) : fp32_to_bits(normalized);
    return fp32_from_bits(sign | bits);
}

inline uint16_t fp32_to_fp16(float f) {
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

inline float load_fp16(const void * p) {
    uint16_t h;
    std::memcpy(&h, p, sizeof(h));
    return fp16_to_fp32(h);
}

// ---- region geometry ----

// Code bits per element: 4 or 2 for the quantized precisions, 16 for F16.
inline int precision_bits(int precision) {
    return precision == COCKTAIL_PREC_Q4 ? 4 : precision == COCKTAIL_PREC_Q2 ? 2 : 16;
}

inline bool precision_valid(int precision) {
    return precision == COCKTAIL_PREC_F16 || precision == COCKTAIL_PREC_Q4 || precision == COCKTAIL_PREC_Q2;
}

inline int region_n_blocks(int n_tokens) {
    return (n_tokens + kBlockTokens - 1) / kBlockTokens;
}

// Bytes of one quantized (head, 32-token block), K or V alike: fp16 scale+min per 32 elements + packed codes.
inline size_t quant_block_bytes(int precision, int head_dim) {
    const size_t n_elem = static_cast<size_t>(kBlockTokens) * static_cast<size_t>(head_dim);
    return n_elem / kBlockTokens * 4 + n_elem * static_cast<size_t>(precision_bits(precision)) / 8;
}

// Bytes of one region's K or V (part = COCKTAIL_KV_K / COCKTAIL_KV_V; both parts have the same size).
// Preconditions: arguments accepted by region_args_check().
size_t region_bytes(int precision, int n_tokens, int n_head_kv, int head_dim);

// COCKTAIL_OK or fail(COCKTAIL_EINVAL, ...) naming the bad value. `what` prefixes the message.
int region_args_check(const char * what, int precision, int part, int n_tokens, int n_head_kv, int head_dim);

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
