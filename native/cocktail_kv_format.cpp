#include "cocktail_kv_format.h"

#include "cocktail_errors.h"

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

namespace cocktail {

// Named namespace: libllama is a unity build, so file-local names must not collide with other native/ files.
namespace kv_format_impl {
namespace {

// Asymmetric quantization of n contiguous values with qmax = 2^bits - 1; writes codes[0..n).
void quantize_group(const float * x, int n, int qmax, uint8_t * codes, uint16_t * scale16, uint16_t * min16) {
    float mn = x[0], mx = x[0];
    for (int i = 1; i < n; ++i) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    float m, inv;
    group_params(mn, mx, qmax, scale16, min16, &m, &inv);
    const float fq = static_cast<float>(qmax);
    for (int i = 0; i < n; ++i) {
        codes[i] = quantize_code(x[i], m, inv, fq);
    }
}

void unpack_codes32(const uint8_t * in, int bits, uint8_t * e) {
    if (bits == 4) {
        for (int j = 0; j < 16; ++j) {
            e[j]      = in[j] & 0x0F;
            e[j + 16] = in[j] >> 4;
        }
    } else {
        for (int j = 0; j < 8; ++j) {
            for (int k = 0; k < 4; ++k) {
                e[j + 8 * k] = (in[j] >> (2 * k)) & 0x03;
            }
        }
    }
}

// Gathers region tokens [t0, t0+nt) of one head into buf[nt][head_dim] as float.
void gather_tokens(const PackSource & src, int head, int t0, int nt, int head_dim, float * buf) {
    const uint8_t * base = src.data + static_cast<size_t>(head) * src.nb_head;
    for (int t = 0; t < nt; ++t) {
        const uint8_t * row = base + static_cast<size_t>(src.cells[t0 + t]) * src.nb_token;
        float *         out = buf + static_cast<size_t>(t) * head_dim;
        if (src.nb_channel == sizeof(uint16_t)) {
            uint16_t h[kGroupChannels];
            for (int c0 = 0; c0 < head_dim; c0 += kGroupChannels) {
                std::memcpy(h, row + static_cast<size_t>(c0) * 2, sizeof(h));
                for (int c = 0; c < kGroupChannels; ++c) {
                    out[c0 + c] = fp16_to_fp32(h[c]);
                }
            }
        } else {
            for (int c = 0; c < head_dim; ++c) {
                out[c] = load_fp16(row + static_cast<size_t>(c) * src.nb_channel);
            }
        }
    }
}

// One (head, block) of a quantized K: scale[D] fp16, min[D] fp16, then codes[D][32 tokens packed].
// Loops run over channels innermost (contiguous in buf) so the compiler vectorizes them.
void quantize_k_block(const float * buf, int nt, int head_dim, int bits, uint8_t * dst) {
    const int                         qmax   = (1 << bits) - 1;
    const float                       fq     = static_cast<float>(qmax);
    const int                         cbytes = 32 * bits / 8;
    const int                         D      = head_dim;
    uint8_t *                         codes  = dst + static_cast<size_t>(D) * 4;
    thread_local std::vector<float>   tmp;
    thread_local std::vector<uint8_t> ct;  // codes [32 tokens][D]
    tmp.resize(static_cast<size_t>(4) * D);
    ct.assign(static_cast<size_t>(kBlockTokens) * D, 0);
    float * mn  = tmp.data();
    float * mx  = mn + D;
    float * m   = mx + D;
    float * inv = m + D;
    for (int d = 0; d < D; ++d) {
        mn[d] = mx[d] = buf[d];
    }
    for (int t = 1; t < nt; ++t) {
        const float * row = buf + static_cast<size_t>(t) * D;
        for (int d = 0; d < D; ++d) {
            mn[d] = row[d] < mn[d] ? row[d] : mn[d];
            mx[d] = row[d] > mx[d] ? row[d] : mx[d];
        }
    }
    for (int d = 0; d < D; ++d) {
        uint16_t s16, m16;
        group_params(mn[d], mx[d], qmax, &s16, &m16, &m[d], &inv[d]);
        std::memcpy(dst + static_cast<size_t>(d) * 2, &s16, 2);
        std::memcpy(dst + static_cast<size_t>(D + d) * 2, &m16, 2);
    }
    for (int t = 0; t < nt; ++t) {
        const float * row = buf + static_cast<size_t>(t) * D;
        uint8_t *     c   = ct.data() + static_cast<size_t>(t) * D;
        for (int d = 0; d < D; ++d) {
            c[d] = quantize_code(row[d], m[d], inv[d], fq);
        }
    }
    uint8_t e[kBlockTokens];
    for (int d = 0; d < D; ++d) {
        for (int t = 0; t < kBlockTokens; ++t) {
            e[t] = ct[static_cast<size_t>(t) * D + d];
        }
        pack_codes32(e, bits, codes + static_cast<size_t>(d) * cbytes);
    }
}

// One (head, block) of a quantized V: scale[32 tokens][D/32] fp16, min[32][D/32] fp16, codes[32][D/32][32 packed].
void quantize_v_block(const float * buf, int nt, int head_dim, int bits, uint8_t * dst) {
    const int  qmax     = (1 << bits) - 1;
    const int  cbytes   = 32 * bits / 8;
    const int  n_groups = head_dim / kGroupChannels;
    uint16_t * scales   = reinterpret_cast<uint16_t *>(dst);
    uint16_t * mins     = scales + kBlockTokens * n_groups;
    uint8_t *  codes    = dst + static_cast<size_t>(head_dim) * 4;
    uint8_t    e[kGroupChannels];
    for (int t = 0; t < kBlockTokens; ++t) {
        for (int g = 0; g < n_groups; ++g) {
            const size_t sm = static_cast<size_t>(t) * n_groups + g;
            uint16_t     s = 0, m = 0;
            std::fill(e, e + kGroupChannels, 0);
            if (t < nt) {
                quantize_group(buf + static_cast<size_t>(t) * head_dim + g * kGroupChannels, kGroupChannels, qmax, e,
                               &s, &m);
            }
            std::memcpy(scales + sm, &s, 2);
            std::memcpy(mins + sm, &m, 2);
            pack_codes32(e, bits, codes + sm * cbytes);
        }
    }
}

}  // namespace
}  // namespace kv_format_impl

size_t region_bytes(int precision, int n_tokens, int n_head_kv, int head_dim) {
    if (precision == COCKTAIL_PREC_F16) {
        return static_cast<size_t>(n_head_kv) * static_cast<size_t>(n_tokens) * static_cast<size_t>(head_dim) * 2;
    }
    return static_cast<size_t>(n_head_kv) * static_cast<size_t>(region_n_blocks(n_tokens)) *
           quant_block_bytes(precision, head_dim);
}

int region_args_check(const char * what, int precision, int part, int n_tokens, int n_head_kv, int head_dim) {
    const std::string w = what;
    if (!precision_valid(precision)) {
        return fail(COCKTAIL_EINVAL,
                    w + ": precision " + std::to_string(precision) + " is not F16 (0), Q4 (1) or Q2 (2)");
    }
    if (part != COCKTAIL_KV_K && part != COCKTAIL_KV_V) {
        return fail(COCKTAIL_EINVAL, w + ": part " + std::to_string(part) + " is not K (0) or V (1)");
    }
    if (n_tokens < 0) {
        return fail(COCKTAIL_EINVAL, w + ": n_tokens " + std::to_string(n_tokens) + " is negative");
    }
    if (n_head_kv <= 0) {
        return fail(COCKTAIL_EINVAL, w + ": n_head_kv " + std::to_string(n_head_kv) + " must be positive");
    }
    if (head_dim <= 0 || head_dim % kGroupChannels != 0) {
        return fail(COCKTAIL_EINVAL,
                    w + ": head_dim " + std::to_string(head_dim) + " must be a positive multiple of 32");
    }
    return COCKTAIL_OK;
}

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
                           const int *  cells) {
    if (int rc = region_args_check(what, precision, part, n_tokens, n_head_kv, head_dim); rc != COCKTAIL_OK) {
        return rc;
    }
    const std::string w    = what;
    const size_t      need = region_bytes(precision, n_tokens, n_head_kv, head_dim);
    if (dst_size < need || (need > 0 && dst == nullptr)) {
        return fail(COCKTAIL_EINVAL, w + ": dst_size " + std::to_string(dst_size) + " is smaller than the region's " +
                                         std::to_string(need) + " bytes");
    }
    if (n_tokens > 0 && (src == nullptr || cells == nullptr)) {
        return fail(COCKTAIL_EINVAL, w + ": src or cells is NULL");
    }
    for (int i = 0; i < n_tokens; ++i) {
        if (cells[i] < 0 || cells[i] >= src_n_cells) {
            return fail(COCKTAIL_EINVAL, w + ": cells[" + std::to_string(i) + "] = " + std::to_string(cells[i]) +
                                             " is outside [0, " + std::to_string(src_n_cells) + ")");
        }
    }
    return COCKTAIL_OK;
}

int pack_region_units(int n_tokens, int n_head_kv) {
    return n_head_kv * region_n_blocks(n_tokens);
}

void pack_region_part(int                precision,
                      int                part,
                      void *             dst,
                      int                n_tokens,
                      int                n_head_kv,
                      int                head_dim,
                      const PackSource & src,
                      int                ith,
                      int                nth) {
    using namespace kv_format_impl;  // NOLINT: this file's internals
    const int n_blocks = region_n_blocks(n_tokens);
    const int n_units  = n_head_kv * n_blocks;
    const int u0       = static_cast<int>(static_cast<long long>(n_units) * ith / nth);
    const int u1       = static_cast<int>(static_cast<long long>(n_units) * (ith + 1) / nth);
    if (u0 >= u1) {
        return;
    }
    uint8_t *                       out = static_cast<uint8_t *>(dst);
    thread_local std::vector<float> buf;
    buf.resize(static_cast<size_t>(kBlockTokens) * head_dim);
    for (int u = u0; u < u1; ++u) {
        const int head = u / n_blocks;
        const int b    = u % n_blocks;
        const int t0   = b * kBlockTokens;
        const int nt   = std::min(kBlockTokens, n_tokens - t0);
        if (precision == COCKTAIL_PREC_F16) {
            // plain fp16 [head][token][head_dim]: copy the source bits (no rounding)
            const uint8_t * base = src.data + static_cast<size_t>(head) * src.nb_head;
            for (int t = 0; t < nt; ++t) {
                const uint8_t * row = base + static_cast<size_t>(src.cells[t0 + t]) * src.nb_token;
                uint8_t *       o   = out + ((static_cast<size_t>(head) * n_tokens + t0 + t) * head_dim) * 2;
                if (src.nb_channel == 2) {
                    std::memcpy(o, row, static_cast<size_t>(head_dim) * 2);
                } else {
                    for (int c = 0; c < head_dim; ++c) {
                        std::memcpy(o + c * 2, row + static_cast<size_t>(c) * src.nb_channel, 2);
                    }
                }
            }
            continue;
        }
        gather_tokens(src, head, t0, nt, head_dim, buf.data());
        uint8_t * block = out + static_cast<size_t>(u) * quant_block_bytes(precision, head_dim);
        if (part == COCKTAIL_KV_K) {
            quantize_k_block(buf.data(), nt, head_dim, precision_bits(precision), block);
        } else {
            quantize_v_block(buf.data(), nt, head_dim, precision_bits(precision), block);
        }
    }
}

void pack_region(int                precision,
                 int                part,
                 void *             dst,
                 int                n_tokens,
                 int                n_head_kv,
                 int                head_dim,
                 const PackSource & src,
                 int                n_threads) {
    const int n_units = pack_region_units(n_tokens, n_head_kv);
    const int nth     = std::max(1, std::min(n_threads, n_units));
    if (nth == 1) {
        pack_region_part(precision, part, dst, n_tokens, n_head_kv, head_dim, src, 0, 1);
        return;
    }
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(nth) - 1);
    for (int ith = 1; ith < nth; ++ith) {
        workers.emplace_back(pack_region_part, precision, part, dst, n_tokens, n_head_kv, head_dim, std::cref(src), ith,
                             nth);
    }
    pack_region_part(precision, part, dst, n_tokens, n_head_kv, head_dim, src, 0, nth);
    for (auto & w : workers) {
        w.join();
    }
}

void dequant_region(int precision, int part, const void * src, int n_tokens, int n_head_kv, int head_dim, float * dst) {
    using namespace kv_format_impl;  // NOLINT: this file's internals
    const uint8_t * in = static_cast<const uint8_t *>(src);
    if (precision == COCKTAIL_PREC_F16) {
        const size_t n = static_cast<size_t>(n_head_kv) * n_tokens * head_dim;
        for (size_t i = 0; i < n; ++i) {
            dst[i] = load_fp16(in + i * 2);
        }
        return;
    }
    const int    bits     = precision_bits(precision);
    const int    cbytes   = 32 * bits / 8;
    const int    n_blocks = region_n_blocks(n_tokens);
    const int    n_groups = head_dim / kGroupChannels;
    const size_t bb       = quant_block_bytes(precision, head_dim);
    uint8_t      e[32];
    for (int head = 0; head < n_head_kv; ++head) {
        for (int b = 0; b < n_blocks; ++b) {
            const uint8_t * block = in + (static_cast<size_t>(head) * n_blocks + b) * bb;
            const uint8_t * codes = block + static_cast<size_t>(head_dim) * 4;
            const int       t0    = b * kBlockTokens;
            const int       nt    = std::min(kBlockTokens, n_tokens - t0);
            float *         out   = dst + (static_cast<size_t>(head) * n_tokens + t0) * head_dim;
            if (part == COCKTAIL_KV_K) {
                for (int d = 0; d < head_dim; ++d) {
                    const float s = load_fp16(block + static_cast<size_t>(d) * 2);
                    const float m = load_fp16(block + static_cast<size_t>(head_dim + d) * 2);
                    unpack_codes32(codes + static_cast<size_t>(d) * cbytes, bits, e);
                    for (int t = 0; t < nt; ++t) {
                        out[static_cast<size_t>(t) * head_dim + d] = m + s * static_cast<float>(e[t]);
                    }
                }
            } else {
                for (int t = 0; t < nt; ++t) {
                    for (int g = 0; g < n_groups; ++g) {
                        const size_t sm = static_cast<size_t>(t) * n_groups + g;
                        const float  s  = load_fp16(block + sm * 2);
                        const float  m  = load_fp16(block + (static_cast<size_t>(kBlockTokens) * n_groups + sm) * 2);
                        unpack_codes32(codes + sm * cbytes, bits, e);
                        for (int c = 0; c < kGroupChannels; ++c) {
                            out[static_cast<size_t>(t) * head_dim + g * kGroupChannels + c] =
                                m + s * static_cast<float>(e[c]);
                        }
                    }
                }
            }
        }
    }
}

}  // namespace cocktail

// ---- C API ----

extern "C" {

int cocktail_region_bytes(int precision, int part, int n_tokens, int n_head_kv, int head_dim, size_t * out_bytes) {
    if (out_bytes == nullptr) {
        return cocktail::fail(COCKTAIL_EINVAL, "cocktail_region_bytes: out_bytes is NULL");
    }
    const int rc = cocktail::region_args_check("cocktail_region_bytes", precision, part, n_tokens, n_head_kv, head_dim);
    if (rc != COCKTAIL_OK) {
        return rc;
    }
    *out_bytes = cocktail::region_bytes(precision, n_tokens, n_head_kv, head_dim);
    return COCKTAIL_OK;
}

int cocktail_pack_region(int          precision,
                         int          part,
                         void *       dst,
                         size_t       dst_size,
                         int          n_tokens,
                         int          n_head_kv,
                         int          head_dim,
                         const void * src,
                         size_t       src_nb_token,
                         size_t       src_nb_channel,
                         size_t       src_nb_head,
                         int          src_n_cells,
                         const int *  cells,
                         int          n_threads) {
    const char * what = "cocktail_pack_region";
    if (int rc = cocktail::pack_region_args_check(what, precision, part, dst, dst_size, n_tokens, n_head_kv, head_dim,
                                                  src, src_n_cells, cells);
        rc != COCKTAIL_OK) {
        return rc;
    }
    if (n_threads < 1) {
        return cocktail::fail(COCKTAIL_EINVAL,
                              std::string(what) + ": n_threads " + std::to_string(n_threads) + " must be >= 1");
    }
    static_assert(sizeof(int) == sizeof(int32_t), "cells are int32");
    const cocktail::PackSource s{ static_cast<const uint8_t *>(src), src_nb_token, src_nb_channel, src_nb_head,
                                  reinterpret_cast<const int32_t *>(cells) };
    cocktail::pack_region(precision, part, dst, n_tokens, n_head_kv, head_dim, s, n_threads);
    return COCKTAIL_OK;
}

int cocktail_dequant_region(int          precision,
                            int          part,
                            const void * src,
                            size_t       src_size,
                            int          n_tokens,
                            int          n_head_kv,
                            int          head_dim,
                            float *      dst) {
    const char * what = "cocktail_dequant_region";
    const int    rc   = cocktail::region_args_check(what, precision, part, n_tokens, n_head_kv, head_dim);
    if (rc != COCKTAIL_OK) {
        return rc;
    }
    const size_t need = cocktail::region_bytes(precision, n_tokens, n_head_kv, head_dim);
    if (src_size < need || (need > 0 && (src == nullptr || dst == nullptr))) {
        return cocktail::fail(COCKTAIL_EINVAL, std::string(what) + ": src_size " + std::to_string(src_size) +
                                                   " is smaller than the region's " + std::to_string(need) +
                                                   " bytes (or src/dst is NULL)");
    }
    cocktail::dequant_region(precision, part, src, n_tokens, n_head_kv, head_dim, dst);
    return COCKTAIL_OK;
}

}  // extern "C"
