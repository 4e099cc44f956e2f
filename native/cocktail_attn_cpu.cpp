#include "cocktail_attn_cpu.h"

#include "cocktail_errors.h"
#include "cocktail_kv_format.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

// AVX2 kernels are compiled with target attributes and picked at run time: libllama is not built with
// -march=native, and a wheel must still run on CPUs without AVX2.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#    define COCKTAIL_X86_DISPATCH 1
#    include <immintrin.h>
#    define COCKTAIL_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#    define COCKTAIL_X86_DISPATCH 0
#endif

namespace cocktail {

// Named namespace: libllama is a unity build, so file-local names must not collide with other native/ files.
namespace attn_cpu_impl {
namespace {

constexpr int   kRowTile = 16;  // most (query token, head) rows sharing one pass over a KV head's blocks
constexpr float kNegInf  = -INFINITY;

// Per-block kernels. Rows r < R share one KV head; scores/probabilities live in sc[r*32 + t], accumulators in
// o[r*D + d], query rows (already times kq_scale) in qf[r*D + d], one block's V as float in vbuf[t*D + d].
struct Kernels {
    // qs = qf * scale[d], bias[r] = sum_d qf*min[d] for a quantized K block (scale[D], min[D] fp16 at `block`)
    void (*fold_q)(const float * qf, int R, int D, const uint8_t * block, float * qs, float * bias);
    // sc[r][t] = bias[r] + sum_d qs[r][d] * code[d][t] for all 32 tokens of a quantized K block
    void (
        *scores_quant)(int bits, const uint8_t * codes, const float * qs, const float * bias, int R, int D, float * sc);
    // sc[r][t] = sum_d qf[r][d] * k_t[d], k_t fp16 with contiguous channels, t < nt
    void (*scores_f16)(const uint8_t * const * krows, int nt, const float * qf, int R, int D, float * sc);
    // online softmax: scores -> exp(s - M_new) in place, updates M, L, rescales o
    void (*softmax_block)(float * sc, int R, int nt, float * M, float * L, float * o, int D);
    // o[r][d] += sum_t p[r][t] * v_t[d] for a quantized V block / fp16 V rows (channel stride nb_channel);
    // vbuf (32 x D floats) is scratch for the dequantized block
    void (*accum_v_quant)(int             bits,
                          const uint8_t * block,
                          const float *   p,
                          int             R,
                          int             nt,
                          int             D,
                          float *         vbuf,
                          float *         o);
    void (*accum_v_f16)(const uint8_t * const * vrows,
                        size_t                  nb_channel,
                        const float *           p,
                        int                     R,
                        int                     nt,
                        int                     D,
                        float *                 vbuf,
                        float *                 o);
};

// ---- portable kernels ----

namespace scalar {

void unpack32(const uint8_t * in, int bits, float * e) {
    if (bits == 4) {
        for (int j = 0; j < 16; ++j) {
            e[j]      = static_cast<float>(in[j] & 0x0F);
            e[j + 16] = static_cast<float>(in[j] >> 4);
        }
    } else {
        for (int j = 0; j < 8; ++j) {
            for (int k = 0; k < 4; ++k) {
                e[j + 8 * k] = static_cast<float>((in[j] >> (2 * k)) & 0x03);
            }
        }
    }
}

void fold_q(const float * qf, int R, int D, const uint8_t * block, float * qs, float * bias) {
    for (int r = 0; r < R; ++r) {
        bias[r] = 0.0f;
    }
    for (int d = 0; d < D; ++d) {
        const float s = load_fp16(block + static_cast<size_t>(d) * 2);
        const float m = load_fp16(block + static_cast<size_t>(D + d) * 2);
        for (int r = 0; r < R; ++r) {
            qs[r * D + d] = qf[r * D + d] * s;
            bias[r] += qf[r * D + d] * m;
        }
    }
}

void scores_quant(int bits, const uint8_t * codes, const float * qs, const float * bias, int R, int D, float * sc) {
    const int cbytes = 32 * bits / 8;
    for (int r = 0; r < R; ++r) {
        for (int t = 0; t < kBlockTokens; ++t) {
            sc[r * 32 + t] = bias[r];
        }
    }
    float e[32];
    for (int d = 0; d < D; ++d) {
        unpack32(codes + static_cast<size_t>(d) * cbytes, bits, e);
        for (int r = 0; r < R; ++r) {
            const float w = qs[r * D + d];
            for (int t = 0; t < kBlockTokens; ++t) {
                sc[r * 32 + t] += w * e[t];
            }
        }
    }
}

void scores_f16(const uint8_t * const * krows, int nt, const float * qf, int R, int D, float * sc) {
    thread_local std::vector<float> k;
    k.resize(static_cast<size_t>(D));
    for (int t = 0; t < nt; ++t) {
        for (int d = 0; d < D; ++d) {
            k[d] = load_fp16(krows[t] + static_cast<size_t>(d) * 2);
        }
        for (int r = 0; r < R; ++r) {
            float acc = 0.0f;
            for (int d = 0; d < D; ++d) {
                acc += qf[r * D + d] * k[d];
            }
            sc[r * 32 + t] = acc;
        }
    }
}

void softmax_block(float * sc, int R, int nt, float * M, float * L, float * o, int D) {
    for (int r = 0; r < R; ++r) {
        float * s  = sc + r * 32;
        float   bm = kNegInf;
        for (int t = 0; t < nt; ++t) {
            bm = std::max(bm, s[t]);
        }
        if (bm == kNegInf) {  // every token of this block is masked for this row
            std::fill(s, s + nt, 0.0f);
            continue;
        }
        const float mn    = std::max(M[r], bm);
        const float alpha = M[r] == kNegInf ? 0.0f : std::exp(M[r] - mn);
        float       sum   = 0.0f;
        for (int t = 0; t < nt; ++t) {
            s[t] = std::exp(s[t] - mn);
            sum += s[t];
        }
        if (alpha != 1.0f) {
            L[r] *= alpha;
            for (int d = 0; d < D; ++d) {
                o[r * D + d] *= alpha;
            }
        }
        L[r] += sum;
        M[r] = mn;
    }
}

void dequant_v_quant(int bits, const uint8_t * block, int nt, int D, float * vbuf) {
    const int       cbytes   = 32 * bits / 8;
    const int       n_groups = D / kGroupChannels;
    const uint8_t * codes    = block + static_cast<size_t>(D) * 4;
    float           e[32];
    for (int t = 0; t < nt; ++t) {
        for (int g = 0; g < n_groups; ++g) {
            const size_t sm = static_cast<size_t>(t) * n_groups + g;
            const float  s  = load_fp16(block + sm * 2);
            const float  m  = load_fp16(block + (static_cast<size_t>(kBlockTokens) * n_groups + sm) * 2);
            unpack32(codes + sm * cbytes, bits, e);
            float * out = vbuf + static_cast<size_t>(t) * D + g * kGroupChannels;
            for (int c = 0; c < kGroupChannels; ++c) {
                out[c] = m + s * e[c];
            }
        }
    }
}

void gather_v_f16(const uint8_t * const * vrows, size_t nb_channel, int nt, int D, float * vbuf) {
    for (int t = 0; t < nt; ++t) {
        for (int d = 0; d < D; ++d) {
            vbuf[static_cast<size_t>(t) * D + d] = load_fp16(vrows[t] + d * nb_channel);
        }
    }
}

void accum_pv(const float * p, int R, int nt, const float * vbuf, int D, float * o) {
    for (int r = 0; r < R; ++r) {
        for (int t = 0; t < nt; ++t) {
            const float   w = p[r * 32 + t];
            const float * v = vbuf + static_cast<size_t>(t) * D;
            for (int d = 0; d < D; ++d) {
                o[r * D + d] += w * v[d];
            }
        }
    }
}

void accum_v_quant(int bits, const uint8_t * block, const float * p, int R, int nt, int D, float * vbuf, float * o) {
    dequant_v_quant(bits, block, nt, D, vbuf);
    accum_pv(p, R, nt, vbuf, D, o);
}

void accum_v_f16(const uint8_t * const * vrows,
                 size_t                  nb_channel,
                 const float *           p,
                 int                     R,
                 int                     nt,
                 int                     D,
                 float *                 vbuf,
                 float *                 o) {
    gather_v_f16(vrows, nb_channel, nt, D, vbuf);
    accum_pv(p, R, nt, vbuf, D, o);
}

}  // namespace scalar

constexpr Kernels kScalar = { scalar::fold_q,        scalar::scores_quant,  scalar::scores_f16,
                              scalar::softmax_block, scalar::accum_v_quant, scalar::accum_v_f16 };

// ---- AVX2 + FMA + F16C kernels ----

#if COCKTAIL_X86_DISPATCH
namespace avx2 {

COCKTAIL_AVX2 inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s        = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s        = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

COCKTAIL_AVX2 inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s        = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s        = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

COCKTAIL_AVX2 inline __m256 load8_fp16(const uint8_t * p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
}

// 8 byte codes -> 8 floats
COCKTAIL_AVX2 inline __m256 u8x8_to_ps(__m128i c) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c));
}

// exp(x) for x <= 0 (Cephes polynomial, ~1 ulp); x < -87 (incl. -inf) gives exactly 0.
COCKTAIL_AVX2 inline __m256 exp_nonpos(__m256 x) {
    const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
    x                 = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 fx         = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x                 = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x                 = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y          = _mm256_set1_ps(1.9875691500e-4f);
    y                 = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y                 = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y                 = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y                 = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y                 = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y                 = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e   = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), keep);
}

COCKTAIL_AVX2 void fold_q(const float * qf, int R, int D, const uint8_t * block, float * qs, float * bias) {
    const uint8_t * scales = block;
    const uint8_t * mins   = block + static_cast<size_t>(D) * 2;
    for (int r = 0; r < R; ++r) {
        __m256 acc = _mm256_setzero_ps();
        for (int d = 0; d < D; d += 8) {
            const __m256 q = _mm256_loadu_ps(qf + r * D + d);
            _mm256_storeu_ps(qs + r * D + d, _mm256_mul_ps(q, load8_fp16(scales + d * 2)));
            acc = _mm256_fmadd_ps(q, load8_fp16(mins + d * 2), acc);
        }
        bias[r] = hsum(acc);
    }
}

// NH rows x 16 tokens (half 0: tokens 0-15, half 1: 16-31) per pass: 2*NH accumulators stay in registers.
template <int NH, int BITS>
COCKTAIL_AVX2 void scores_quant_tile(const uint8_t * codes, const float * qs, const float * bias, int D, float * sc) {
    const __m128i mask = _mm_set1_epi8(BITS == 4 ? 0x0F : 0x03);
    for (int half = 0; half < 2; ++half) {
        __m256 acc[NH][2];
        for (int g = 0; g < NH; ++g) {
            acc[g][0] = acc[g][1] = _mm256_set1_ps(bias[g]);
        }
        for (int d = 0; d < D; ++d) {
            __m128i lo, hi;
            if (BITS == 4) {
                // byte j: token j (low nibble), token j+16 (high nibble)
                const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i *>(codes + d * 16));
                const __m128i c = half ? _mm_and_si128(_mm_srli_epi16(b, 4), mask) : _mm_and_si128(b, mask);
                lo              = c;
                hi              = _mm_srli_si128(c, 8);
            } else {
                // byte j: tokens j, j+8, j+16, j+24 at bits 0, 2, 4, 6
                const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(codes + d * 8));
                lo              = _mm_and_si128(half ? _mm_srli_epi16(b, 4) : b, mask);
                hi              = _mm_and_si128(half ? _mm_srli_epi16(b, 6) : _mm_srli_epi16(b, 2), mask);
            }
            const __m256 c0 = u8x8_to_ps(lo);
            const __m256 c1 = u8x8_to_ps(hi);
            for (int g = 0; g < NH; ++g) {
                const __m256 w = _mm256_broadcast_ss(qs + g * D + d);
                acc[g][0]      = _mm256_fmadd_ps(w, c0, acc[g][0]);
                acc[g][1]      = _mm256_fmadd_ps(w, c1, acc[g][1]);
            }
        }
        for (int g = 0; g < NH; ++g) {
            _mm256_storeu_ps(sc + g * 32 + half * 16, acc[g][0]);
            _mm256_storeu_ps(sc + g * 32 + half * 16 + 8, acc[g][1]);
        }
    }
}

template <int BITS>
COCKTAIL_AVX2 void scores_quant_bits(const uint8_t * codes,
                                     const float *   qs,
                                     const float *   bias,
                                     int             R,
                                     int             D,
                                     float *         sc) {
    int r = 0;
    for (; r + 4 <= R; r += 4) {
        scores_quant_tile<4, BITS>(codes, qs + r * D, bias + r, D, sc + r * 32);
    }
    switch (R - r) {
        case 3:
            scores_quant_tile<3, BITS>(codes, qs + r * D, bias + r, D, sc + r * 32);
            break;
        case 2:
            scores_quant_tile<2, BITS>(codes, qs + r * D, bias + r, D, sc + r * 32);
            break;
        case 1:
            scores_quant_tile<1, BITS>(codes, qs + r * D, bias + r, D, sc + r * 32);
            break;
        default:
            break;
    }
}

COCKTAIL_AVX2 void
scores_quant(int bits, const uint8_t * codes, const float * qs, const float * bias, int R, int D, float * sc) {
    if (bits == 4) {
        scores_quant_bits<4>(codes, qs, bias, R, D, sc);
    } else {
        scores_quant_bits<2>(codes, qs, bias, R, D, sc);
    }
}

// NT tokens x NH rows of dot products.
template <int NT, int NH>
COCKTAIL_AVX2 void scores_f16_tile(const uint8_t * const * krows, const float * qf, int D, float * sc) {
    __m256 acc[NT][NH];
    for (int i = 0; i < NT; ++i) {
        for (int g = 0; g < NH; ++g) {
            acc[i][g] = _mm256_setzero_ps();
        }
    }
    for (int d = 0; d < D; d += 8) {
        __m256 k[NT];
        for (int i = 0; i < NT; ++i) {
            k[i] = load8_fp16(krows[i] + d * 2);
        }
        for (int g = 0; g < NH; ++g) {
            const __m256 q = _mm256_loadu_ps(qf + g * D + d);
            for (int i = 0; i < NT; ++i) {
                acc[i][g] = _mm256_fmadd_ps(q, k[i], acc[i][g]);
            }
        }
    }
    for (int i = 0; i < NT; ++i) {
        for (int g = 0; g < NH; ++g) {
            sc[g * 32 + i] = hsum(acc[i][g]);
        }
    }
}

template <int NT>
COCKTAIL_AVX2 void scores_f16_rows(const uint8_t * const * krows, const float * qf, int R, int D, float * sc) {
    int r = 0;
    for (; r + 4 <= R; r += 4) {
        scores_f16_tile<NT, 4>(krows, qf + r * D, D, sc + r * 32);
    }
    switch (R - r) {
        case 3:
            scores_f16_tile<NT, 3>(krows, qf + r * D, D, sc + r * 32);
            break;
        case 2:
            scores_f16_tile<NT, 2>(krows, qf + r * D, D, sc + r * 32);
            break;
        case 1:
            scores_f16_tile<NT, 1>(krows, qf + r * D, D, sc + r * 32);
            break;
        default:
            break;
    }
}

COCKTAIL_AVX2 void scores_f16(const uint8_t * const * krows, int nt, const float * qf, int R, int D, float * sc) {
    int t = 0;
    for (; t + 2 <= nt; t += 2) {
        scores_f16_rows<2>(krows + t, qf, R, D, sc + t);
    }
    if (t < nt) {
        scores_f16_rows<1>(krows + t, qf, R, D, sc + t);
    }
}

COCKTAIL_AVX2 void softmax_block(float * sc, int R, int nt, float * M, float * L, float * o, int D) {
    for (int r = 0; r < R; ++r) {
        float * s = sc + r * 32;
        for (int t = nt; t < kBlockTokens; ++t) {
            s[t] = kNegInf;
        }
        __m256 v[4];
        for (int i = 0; i < 4; ++i) {
            v[i] = _mm256_loadu_ps(s + 8 * i);
        }
        const float bm = hmax(_mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3])));
        if (bm == kNegInf) {
            std::fill(s, s + kBlockTokens, 0.0f);
            continue;
        }
        const float  mn    = std::max(M[r], bm);
        const float  alpha = M[r] == kNegInf ? 0.0f : std::exp(M[r] - mn);
        const __m256 vm    = _mm256_set1_ps(mn);
        __m256       sum   = _mm256_setzero_ps();
        for (int i = 0; i < 4; ++i) {
            const __m256 p = exp_nonpos(_mm256_sub_ps(v[i], vm));
            _mm256_storeu_ps(s + 8 * i, p);
            sum = _mm256_add_ps(sum, p);
        }
        if (alpha != 1.0f) {
            L[r] *= alpha;
            const __m256 va = _mm256_set1_ps(alpha);
            for (int d = 0; d < D; d += 8) {
                _mm256_storeu_ps(o + r * D + d, _mm256_mul_ps(va, _mm256_loadu_ps(o + r * D + d)));
            }
        }
        L[r] += hsum(sum);
        M[r] = mn;
    }
}

COCKTAIL_AVX2 void dequant_v_quant(int bits, const uint8_t * block, int nt, int D, float * vbuf) {
    const int                       n_groups = D / kGroupChannels;
    const uint8_t *                 codes    = block + static_cast<size_t>(D) * 4;
    const __m128i                   m4       = _mm_set1_epi8(0x0F);
    const __m128i                   m2       = _mm_set1_epi8(0x03);
    // scale[32][G] then min[32][G]: 2*D fp16 values, converted 8 at a time
    alignas(32) float               sm[2 * 32 * 16];
    float *                         smf = D <= 512 ? sm : nullptr;
    thread_local std::vector<float> big;
    if (smf == nullptr) {
        big.resize(static_cast<size_t>(2) * D);
        smf = big.data();
    }
    for (int i = 0; i < 2 * D; i += 8) {
        _mm256_storeu_ps(smf + i, load8_fp16(block + static_cast<size_t>(i) * 2));
    }
    for (int t = 0; t < nt; ++t) {
        for (int g = 0; g < n_groups; ++g) {
            const size_t sm_i = static_cast<size_t>(t) * n_groups + g;
            const __m256 s    = _mm256_broadcast_ss(smf + sm_i);
            const __m256 m    = _mm256_broadcast_ss(smf + D + sm_i);
            float *      out  = vbuf + static_cast<size_t>(t) * D + g * kGroupChannels;
            __m128i      c[4];
            if (bits == 4) {
                const __m128i b  = _mm_loadu_si128(reinterpret_cast<const __m128i *>(codes + sm_i * 16));
                const __m128i lo = _mm_and_si128(b, m4);
                const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
                c[0]             = lo;
                c[1]             = _mm_srli_si128(lo, 8);
                c[2]             = hi;
                c[3]             = _mm_srli_si128(hi, 8);
            } else {
                const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(codes + sm_i * 8));
                c[0]            = _mm_and_si128(b, m2);
                c[1]            = _mm_and_si128(_mm_srli_epi16(b, 2), m2);
                c[2]            = _mm_and_si128(_mm_srli_epi16(b, 4), m2);
                c[3]            = _mm_and_si128(_mm_srli_epi16(b, 6), m2);
            }
            for (int i = 0; i < 4; ++i) {
                _mm256_storeu_ps(out + 8 * i, _mm256_fmadd_ps(u8x8_to_ps(c[i]), s, m));
            }
        }
    }
}

COCKTAIL_AVX2 void gather_v_f16(const uint8_t * const * vrows, size_t nb_channel, int nt, int D, float * vbuf) {
    if (nb_channel != 2) {
        scalar::gather_v_f16(vrows, nb_channel, nt, D, vbuf);
        return;
    }
    for (int t = 0; t < nt; ++t) {
        for (int d = 0; d < D; d += 8) {
            _mm256_storeu_ps(vbuf + static_cast<size_t>(t) * D + d, load8_fp16(vrows[t] + d * 2));
        }
    }
}

// NH rows x 16 channels of o in registers while streaming the block's tokens.
template <int NH> COCKTAIL_AVX2 void accum_pv_tile(const float * p, int nt, const float * vbuf, int D, float * o) {
    for (int d = 0; d < D; d += 16) {
        __m256 acc[NH][2];
        for (int g = 0; g < NH; ++g) {
            acc[g][0] = _mm256_loadu_ps(o + g * D + d);
            acc[g][1] = _mm256_loadu_ps(o + g * D + d + 8);
        }
        for (int t = 0; t < nt; ++t) {
            const __m256 v0 = _mm256_loadu_ps(vbuf + static_cast<size_t>(t) * D + d);
            const __m256 v1 = _mm256_loadu_ps(vbuf + static_cast<size_t>(t) * D + d + 8);
            for (int g = 0; g < NH; ++g) {
                const __m256 w = _mm256_broadcast_ss(p + g * 32 + t);
                acc[g][0]      = _mm256_fmadd_ps(w, v0, acc[g][0]);
                acc[g][1]      = _mm256_fmadd_ps(w, v1, acc[g][1]);
            }
        }
        for (int g = 0; g < NH; ++g) {
            _mm256_storeu_ps(o + g * D + d, acc[g][0]);
            _mm256_storeu_ps(o + g * D + d + 8, acc[g][1]);
        }
    }
}

COCKTAIL_AVX2 void accum_pv(const float * p, int R, int nt, const float * vbuf, int D, float * o) {
    int r = 0;
    for (; r + 4 <= R; r += 4) {
        accum_pv_tile<4>(p + r * 32, nt, vbuf, D, o + r * D);
    }
    switch (R - r) {
        case 3:
            accum_pv_tile<3>(p + r * 32, nt, vbuf, D, o + r * D);
            break;
        case 2:
            accum_pv_tile<2>(p + r * 32, nt, vbuf, D, o + r * D);
            break;
        case 1:
            accum_pv_tile<1>(p + r * 32, nt, vbuf, D, o + r * D);
            break;
        default:
            break;
    }
}

// Fused dequantize + accumulate for up to 4 rows: NH rows x 16 channels of o stay in registers while the
// block's tokens stream; each token's 16 codes are dequantized once in registers.
template <int NH, int BITS>
COCKTAIL_AVX2 void accum_vq_tile(const float * smf, const uint8_t * codes, const float * p, int nt, int D, float * o) {
    const int     n_groups = D / kGroupChannels;
    const __m128i mask     = _mm_set1_epi8(BITS == 4 ? 0x0F : 0x03);
    constexpr int cbytes   = 32 * BITS / 8;
    for (int g = 0; g < n_groups; ++g) {
        for (int half = 0; half < 2; ++half) {
            float * oc = o + g * kGroupChannels + half * 16;
            __m256  acc[NH][2];
            for (int r = 0; r < NH; ++r) {
                acc[r][0] = _mm256_loadu_ps(oc + r * D);
                acc[r][1] = _mm256_loadu_ps(oc + r * D + 8);
            }
            for (int t = 0; t < nt; ++t) {
                const int       sm_i = t * n_groups + g;
                const uint8_t * c    = codes + static_cast<size_t>(sm_i) * cbytes;
                __m128i         lo, hi;
                if (BITS == 4) {
                    // byte j: channel j (low nibble), channel j+16 (high nibble)
                    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i *>(c));
                    const __m128i x = half ? _mm_and_si128(_mm_srli_epi16(b, 4), mask) : _mm_and_si128(b, mask);
                    lo              = x;
                    hi              = _mm_srli_si128(x, 8);
                } else {
                    // byte j: channels j, j+8, j+16, j+24 at bits 0, 2, 4, 6
                    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(c));
                    lo              = _mm_and_si128(half ? _mm_srli_epi16(b, 4) : b, mask);
                    hi              = _mm_and_si128(half ? _mm_srli_epi16(b, 6) : _mm_srli_epi16(b, 2), mask);
                }
                const __m256 s  = _mm256_broadcast_ss(smf + sm_i);
                const __m256 m  = _mm256_broadcast_ss(smf + D + sm_i);
                const __m256 v0 = _mm256_fmadd_ps(u8x8_to_ps(lo), s, m);
                const __m256 v1 = _mm256_fmadd_ps(u8x8_to_ps(hi), s, m);
                for (int r = 0; r < NH; ++r) {
                    const __m256 w = _mm256_broadcast_ss(p + r * 32 + t);
                    acc[r][0]      = _mm256_fmadd_ps(w, v0, acc[r][0]);
                    acc[r][1]      = _mm256_fmadd_ps(w, v1, acc[r][1]);
                }
            }
            for (int r = 0; r < NH; ++r) {
                _mm256_storeu_ps(oc + r * D, acc[r][0]);
                _mm256_storeu_ps(oc + r * D + 8, acc[r][1]);
            }
        }
    }
}

template <int BITS>
COCKTAIL_AVX2 void
accum_vq_rows(const float * smf, const uint8_t * codes, const float * p, int R, int nt, int D, float * o) {
    switch (R) {
        case 4:
            accum_vq_tile<4, BITS>(smf, codes, p, nt, D, o);
            break;
        case 3:
            accum_vq_tile<3, BITS>(smf, codes, p, nt, D, o);
            break;
        case 2:
            accum_vq_tile<2, BITS>(smf, codes, p, nt, D, o);
            break;
        default:
            accum_vq_tile<1, BITS>(smf, codes, p, nt, D, o);
            break;
    }
}

COCKTAIL_AVX2 void
accum_v_quant(int bits, const uint8_t * block, const float * p, int R, int nt, int D, float * vbuf, float * o) {
    if (R > 4) {  // several row tiles: dequantize the block once, then reuse it from L1
        dequant_v_quant(bits, block, nt, D, vbuf);
        accum_pv(p, R, nt, vbuf, D, o);
        return;
    }
    float * smf = vbuf;  // scale[32][G] then min[32][G] as float (2*D values)
    for (int i = 0; i < 2 * D; i += 8) {
        _mm256_storeu_ps(smf + i, load8_fp16(block + static_cast<size_t>(i) * 2));
    }
    const uint8_t * codes = block + static_cast<size_t>(D) * 4;
    if (bits == 4) {
        accum_vq_rows<4>(smf, codes, p, R, nt, D, o);
    } else {
        accum_vq_rows<2>(smf, codes, p, R, nt, D, o);
    }
}

template <int NH>
COCKTAIL_AVX2 void accum_vf16_tile(const uint8_t * const * vrows, const float * p, int nt, int D, float * o) {
    for (int d = 0; d < D; d += 16) {
        __m256 acc[NH][2];
        for (int r = 0; r < NH; ++r) {
            acc[r][0] = _mm256_loadu_ps(o + r * D + d);
            acc[r][1] = _mm256_loadu_ps(o + r * D + d + 8);
        }
        for (int t = 0; t < nt; ++t) {
            const __m256 v0 = load8_fp16(vrows[t] + d * 2);
            const __m256 v1 = load8_fp16(vrows[t] + d * 2 + 16);
            for (int r = 0; r < NH; ++r) {
                const __m256 w = _mm256_broadcast_ss(p + r * 32 + t);
                acc[r][0]      = _mm256_fmadd_ps(w, v0, acc[r][0]);
                acc[r][1]      = _mm256_fmadd_ps(w, v1, acc[r][1]);
            }
        }
        for (int r = 0; r < NH; ++r) {
            _mm256_storeu_ps(o + r * D + d, acc[r][0]);
            _mm256_storeu_ps(o + r * D + d + 8, acc[r][1]);
        }
    }
}

COCKTAIL_AVX2 void accum_v_f16(const uint8_t * const * vrows,
                               size_t                  nb_channel,
                               const float *           p,
                               int                     R,
                               int                     nt,
                               int                     D,
                               float *                 vbuf,
                               float *                 o) {
    if (R > 4 || nb_channel != 2) {
        gather_v_f16(vrows, nb_channel, nt, D, vbuf);
        accum_pv(p, R, nt, vbuf, D, o);
        return;
    }
    switch (R) {
        case 4:
            accum_vf16_tile<4>(vrows, p, nt, D, o);
            break;
        case 3:
            accum_vf16_tile<3>(vrows, p, nt, D, o);
            break;
        case 2:
            accum_vf16_tile<2>(vrows, p, nt, D, o);
            break;
        default:
            accum_vf16_tile<1>(vrows, p, nt, D, o);
            break;
    }
}

}  // namespace avx2

constexpr Kernels kAvx2 = { avx2::fold_q,        avx2::scores_quant,  avx2::scores_f16,
                            avx2::softmax_block, avx2::accum_v_quant, avx2::accum_v_f16 };
#endif  // COCKTAIL_X86_DISPATCH

bool cpu_has_avx2() {
#if COCKTAIL_X86_DISPATCH
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return false;
#endif
}

std::atomic<int> g_simd{ -1 };  // -1: not decided yet

const Kernels & kernels() {
#if COCKTAIL_X86_DISPATCH
    return cpu_simd_enabled() ? kAvx2 : kScalar;
#else
    return kScalar;
#endif
}

// ---- work partition ----

struct Partition {
    int G;              // query heads per KV head
    int n_rows;         // rows per KV head: n_q_tokens * G, row = token * G + head-in-group
    int rows_per_tile;  // whole GQA groups when they fit
    int tiles_per_head;
    int n_items;        // n_head_kv * tiles_per_head
};

Partition make_partition(const cocktail_attn_args & a, int nth) {
    Partition p{};
    p.G      = a.n_head / a.n_head_kv;
    p.n_rows = a.n_q_tokens * p.G;
    int T    = std::min(p.n_rows, kRowTile);
    if (T >= p.G) {
        T = T / p.G * p.G;
    }
    // split tiles further (down to single rows) while there are fewer items than threads
    while (T > 1 && static_cast<long long>(a.n_head_kv) * ((p.n_rows + T - 1) / T) < nth) {
        T = (T + 1) / 2;
    }
    p.rows_per_tile  = std::max(T, 1);
    p.tiles_per_head = p.n_rows == 0 ? 0 : (p.n_rows + p.rows_per_tile - 1) / p.rows_per_tile;
    p.n_items        = a.n_head_kv * p.tiles_per_head;
    return p;
}

// ---- one tile: rows [r0, r1) of KV head hkv over every region and the tail ----

struct Scratch {
    std::vector<float> mem;
    float *            qf, *qs, *o, *bias, *M, *L, *sc, *vbuf;

    void ensure(int R, int D) {
        const size_t rd = static_cast<size_t>(R) * D;
        mem.resize(3 * rd + 3 * static_cast<size_t>(R) + static_cast<size_t>(R) * 32 + 32 * static_cast<size_t>(D));
        qf   = mem.data();
        qs   = qf + rd;
        o    = qs + rd;
        bias = o + rd;
        M    = bias + R;
        L    = M + R;
        sc   = L + R;
        vbuf = sc + static_cast<size_t>(R) * 32;
    }
};

float mask_value(const cocktail_attn_args & a, int iq, int j) {
    const uint8_t * row = static_cast<const uint8_t *>(a.mask) + static_cast<size_t>(iq) * a.mask_nb_row;
    if (a.mask_f16) {
        return load_fp16(row + static_cast<size_t>(j) * 2);
    }
    float v;
    std::memcpy(&v, row + static_cast<size_t>(j) * 4, sizeof(v));
    return v;
}

void run_tile(const Kernels &            K,
              const cocktail_attn_args & a,
              const Partition &          P,
              int                        hkv,
              int                        r0,
              int                        r1,
              Scratch &                  S) {
    const int R = r1 - r0;
    const int D = a.head_dim;
    S.ensure(R, D);
    for (int i = 0; i < R; ++i) {
        const int       iq  = (r0 + i) / P.G;
        const int       h   = hkv * P.G + (r0 + i) % P.G;
        const uint8_t * src = reinterpret_cast<const uint8_t *>(a.q) + static_cast<size_t>(iq) * a.q_nb_token +
                              static_cast<size_t>(h) * a.q_nb_head;
        const float *   q   = reinterpret_cast<const float *>(src);
        for (int d = 0; d < D; ++d) {
            S.qf[i * D + d] = q[d] * a.kq_scale;
        }
        S.M[i] = kNegInf;
        S.L[i] = 0.0f;
    }
    std::fill(S.o, S.o + static_cast<size_t>(R) * D, 0.0f);

    const uint8_t * krows[kBlockTokens];
    const uint8_t * vrows[kBlockTokens];

    for (int ri = 0; ri < a.n_regions; ++ri) {
        const cocktail_kv_region & reg = a.regions[ri];
        const int                  n   = reg.n_tokens;
        if (n == 0) {
            continue;
        }
        const uint8_t * kb = static_cast<const uint8_t *>(reg.k);
        const uint8_t * vb = static_cast<const uint8_t *>(reg.v);
        if (reg.precision == COCKTAIL_PREC_F16) {
            const size_t head0 = static_cast<size_t>(hkv) * n;
            for (int t0 = 0; t0 < n; t0 += kBlockTokens) {
                const int nt = std::min(kBlockTokens, n - t0);
                for (int t = 0; t < nt; ++t) {
                    krows[t] = kb + (head0 + t0 + t) * D * 2;
                    vrows[t] = vb + (head0 + t0 + t) * D * 2;
                }
                K.scores_f16(krows, nt, S.qf, R, D, S.sc);
                K.softmax_block(S.sc, R, nt, S.M, S.L, S.o, D);
                K.accum_v_f16(vrows, 2, S.sc, R, nt, D, S.vbuf, S.o);
            }
            continue;
        }
        const int    bits     = precision_bits(reg.precision);
        const int    n_blocks = region_n_blocks(n);
        const size_t bb       = quant_block_bytes(reg.precision, D);
        for (int b = 0; b < n_blocks; ++b) {
            const int       nt  = std::min(kBlockTokens, n - b * kBlockTokens);
            const size_t    off = (static_cast<size_t>(hkv) * n_blocks + b) * bb;
            const uint8_t * kbl = kb + off;
            K.fold_q(S.qf, R, D, kbl, S.qs, S.bias);
            K.scores_quant(bits, kbl + static_cast<size_t>(D) * 4, S.qs, S.bias, R, D, S.sc);
            K.softmax_block(S.sc, R, nt, S.M, S.L, S.o, D);
            K.accum_v_quant(bits, vb + off, S.sc, R, nt, D, S.vbuf, S.o);
        }
    }

    if (a.n_tail > 0) {
        const int       iq0 = r0 / P.G;
        const int       iq1 = (r1 - 1) / P.G;
        const uint8_t * tk  = static_cast<const uint8_t *>(a.tail_k) + static_cast<size_t>(hkv) * a.tail_k_nb_head;
        const uint8_t * tv  = static_cast<const uint8_t *>(a.tail_v) + static_cast<size_t>(hkv) * a.tail_v_nb_head;
        for (int j0 = 0; j0 < a.n_tail; j0 += kBlockTokens) {
            // fixed 32-token windows, skipped when masked for every row of the tile: a row's blocks (and so its
            // rounding) do not depend on which other rows share its tile; masked tokens add exact zeros
            const int nt      = std::min(kBlockTokens, a.n_tail - j0);
            bool      visible = a.mask == nullptr;
            for (int iq = iq0; iq <= iq1 && !visible; ++iq) {
                for (int t = 0; t < nt && !visible; ++t) {
                    visible = mask_value(a, iq, j0 + t) != kNegInf;
                }
            }
            if (!visible) {
                continue;
            }
            for (int t = 0; t < nt; ++t) {
                krows[t] = tk + static_cast<size_t>(j0 + t) * a.tail_k_nb_token;
                vrows[t] = tv + static_cast<size_t>(j0 + t) * a.tail_v_nb_token;
            }
            K.scores_f16(krows, nt, S.qf, R, D, S.sc);
            if (a.mask != nullptr) {
                for (int i = 0; i < R; ++i) {
                    const int iq = (r0 + i) / P.G;
                    for (int t = 0; t < nt; ++t) {
                        S.sc[i * 32 + t] += mask_value(a, iq, j0 + t);
                    }
                }
            }
            K.softmax_block(S.sc, R, nt, S.M, S.L, S.o, D);
            K.accum_v_f16(vrows, a.tail_v_nb_channel, S.sc, R, nt, D, S.vbuf, S.o);
        }
    }

    for (int i = 0; i < R; ++i) {
        const int   iq  = (r0 + i) / P.G;
        const int   h   = hkv * P.G + (r0 + i) % P.G;
        uint8_t *   dst = reinterpret_cast<uint8_t *>(a.out) + static_cast<size_t>(iq) * a.out_nb_token +
                          static_cast<size_t>(h) * a.out_nb_head;
        float *     out = reinterpret_cast<float *>(dst);
        const float inv = S.L[i] > 0.0f ? 1.0f / S.L[i] : 0.0f;
        for (int d = 0; d < D; ++d) {
            out[d] = S.o[i * D + d] * inv;
        }
    }
}

std::string field(const char * name, long long v) {
    return std::string("cocktail_attn_mixed_regions: ") + name + " = " + std::to_string(v);
}

}  // namespace
}  // namespace attn_cpu_impl

bool cpu_simd_enabled() {
    using namespace attn_cpu_impl;  // NOLINT: this file's internals
    int v = g_simd.load(std::memory_order_relaxed);
    if (v < 0) {
        v = cpu_has_avx2() ? 1 : 0;
        g_simd.store(v, std::memory_order_relaxed);
    }
    return v == 1;
}

int attn_mixed_regions_check(const cocktail_attn_args & a) {
    using namespace attn_cpu_impl;  // NOLINT: this file's internals
    if (a.n_q_tokens < 0) {
        return fail(COCKTAIL_EINVAL, field("n_q_tokens", a.n_q_tokens) + " is negative");
    }
    if (a.n_head_kv <= 0 || a.n_head <= 0 || a.n_head % a.n_head_kv != 0) {
        return fail(COCKTAIL_EINVAL, field("n_head", a.n_head) + ", n_head_kv = " + std::to_string(a.n_head_kv) +
                                         ": both must be positive and n_head a multiple of n_head_kv");
    }
    if (a.head_dim <= 0 || a.head_dim % kGroupChannels != 0) {
        return fail(COCKTAIL_EINVAL, field("head_dim", a.head_dim) + " must be a positive multiple of 32");
    }
    if (!std::isfinite(a.kq_scale)) {
        return fail(COCKTAIL_EINVAL, std::string("cocktail_attn_mixed_regions: kq_scale = ") +
                                         std::to_string(a.kq_scale) + " is not finite");
    }
    if (a.n_q_tokens > 0 && (a.q == nullptr || a.out == nullptr)) {
        return fail(COCKTAIL_EINVAL, "cocktail_attn_mixed_regions: q or out is NULL");
    }
    if (a.q_nb_token % 4 || a.q_nb_head % 4 || a.out_nb_token % 4 || a.out_nb_head % 4 ||
        reinterpret_cast<uintptr_t>(a.q) % 4 || reinterpret_cast<uintptr_t>(a.out) % 4) {
        return fail(COCKTAIL_EINVAL, field("q_nb_token", static_cast<long long>(a.q_nb_token)) +
                                         ": q, out and their strides must be multiples of 4 bytes");
    }
    if (a.n_regions < 0 || (a.n_regions > 0 && a.regions == nullptr)) {
        return fail(COCKTAIL_EINVAL, field("n_regions", a.n_regions) + " with regions " + (a.regions ? "set" : "NULL"));
    }
    for (int i = 0; i < a.n_regions; ++i) {
        const cocktail_kv_region & r   = a.regions[i];
        const std::string          who = "cocktail_attn_mixed_regions: regions[" + std::to_string(i) + "]";
        if (!precision_valid(r.precision)) {
            return fail(COCKTAIL_EINVAL, who + ".precision = " + std::to_string(r.precision) + " is not 0, 1 or 2");
        }
        if (r.n_tokens < 0) {
            return fail(COCKTAIL_EINVAL, who + ".n_tokens = " + std::to_string(r.n_tokens) + " is negative");
        }
        if (r.n_tokens > 0 && (r.k == nullptr || r.v == nullptr)) {
            return fail(COCKTAIL_EINVAL, who + ": k or v is NULL with n_tokens = " + std::to_string(r.n_tokens));
        }
    }
    if (a.n_tail < 0) {
        return fail(COCKTAIL_EINVAL, field("n_tail", a.n_tail) + " is negative");
    }
    if (a.n_tail > 0) {
        if (a.tail_k == nullptr || a.tail_v == nullptr) {
            return fail(COCKTAIL_EINVAL, field("n_tail", a.n_tail) + " but tail_k or tail_v is NULL");
        }
        if (a.tail_k_nb_token % 2 || a.tail_k_nb_head % 2 || a.tail_v_nb_token % 2 || a.tail_v_nb_channel % 2 ||
            a.tail_v_nb_head % 2) {
            return fail(COCKTAIL_EINVAL, field("tail_k_nb_token", static_cast<long long>(a.tail_k_nb_token)) +
                                             ": tail strides must be multiples of 2 bytes (fp16)");
        }
        if (a.tail_v_nb_channel == 0) {
            return fail(COCKTAIL_EINVAL, field("tail_v_nb_channel", 0) + " (V channels need a stride)");
        }
        if (a.mask_f16 != 0 && a.mask_f16 != 1) {
            return fail(COCKTAIL_EINVAL, field("mask_f16", a.mask_f16) + " is not 0 or 1");
        }
        if (a.mask != nullptr && a.mask_nb_row % (a.mask_f16 ? 2 : 4)) {
            return fail(COCKTAIL_EINVAL, field("mask_nb_row", static_cast<long long>(a.mask_nb_row)) +
                                             " is not a multiple of the mask element size");
        }
    }
    return COCKTAIL_OK;
}

int attn_mixed_regions_items(const cocktail_attn_args & args, int nth) {
    using namespace attn_cpu_impl;  // NOLINT: this file's internals
    return make_partition(args, std::max(nth, 1)).n_items;
}

void attn_mixed_regions_part(const cocktail_attn_args & args, int ith, int nth) {
    using namespace attn_cpu_impl;  // NOLINT: this file's internals
    const Partition P  = make_partition(args, nth);
    const int       i0 = static_cast<int>(static_cast<long long>(P.n_items) * ith / nth);
    const int       i1 = static_cast<int>(static_cast<long long>(P.n_items) * (ith + 1) / nth);
    if (i0 >= i1) {
        return;
    }
    thread_local Scratch S;
    const Kernels &      K = kernels();
    for (int item = i0; item < i1; ++item) {
        const int hkv = item / P.tiles_per_head;
        const int r0  = (item % P.tiles_per_head) * P.rows_per_tile;
        const int r1  = std::min(P.n_rows, r0 + P.rows_per_tile);
        run_tile(K, args, P, hkv, r0, r1, S);
    }
}

int attn_mixed_regions(const cocktail_attn_args & args, int n_threads) {
    using namespace attn_cpu_impl;  // NOLINT: this file's internals
    if (n_threads < 1) {
        return fail(COCKTAIL_EINVAL, field("n_threads", n_threads) + " must be >= 1");
    }
    const int rc = attn_mixed_regions_check(args);
    if (rc != COCKTAIL_OK) {
        return rc;
    }
    const int nth = std::max(1, std::min(n_threads, attn_mixed_regions_items(args, n_threads)));
    if (nth == 1) {
        attn_mixed_regions_part(args, 0, 1);
        return COCKTAIL_OK;
    }
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(nth) - 1);
    for (int ith = 1; ith < nth; ++ith) {
        workers.emplace_back([&args, ith, nth] { attn_mixed_regions_part(args, ith, nth); });
    }
    attn_mixed_regions_part(args, 0, nth);
    for (auto & w : workers) {
        w.join();
    }
    return COCKTAIL_OK;
}

}  // namespace cocktail

extern "C" {

int cocktail_attn_mixed_regions(const struct cocktail_attn_args * args, int n_threads) {
    if (args == nullptr) {
        return cocktail::fail(COCKTAIL_EINVAL, "cocktail_attn_mixed_regions: args is NULL");
    }
    return cocktail::attn_mixed_regions(*args, n_threads);
}

int cocktail_cpu_simd(int mode) {
    using cocktail::attn_cpu_impl::g_simd;
    if (mode == 0) {
        g_simd.store(0);
    } else if (mode == 1) {
        g_simd.store(cocktail::attn_cpu_impl::cpu_has_avx2() ? 1 : 0);
    }
    return cocktail::cpu_simd_enabled() ? 1 : 0;
}

}  // extern "C"
