// Compaction on CUDA: packs a region (native/README.md layouts) straight from a layer's fp16 cache in device memory,
// with the CPU pack's own quantization functions (cocktail_kv_format.h, host + device), so the bytes are the same.
// This file is compiled with -fmad=false (CMakeLists.txt): a fused multiply-add would round differently.
#include "cocktail_api.h"
#include "cocktail_cuda.h"
#include "cocktail_errors.h"
#include "cocktail_kv_format.h"

#include <cuda_runtime.h>

#include <memory>
#include <stdexcept>
#include <string>

namespace cocktail::cuda_pack_impl {

const __device__ __forceinline__ uint8_t * element(const PackSource & s, int head, int pos, int channel) {
    return s.data + static_cast<size_t>(head) * s.nb_head + static_cast<size_t>(s.cells[pos]) * s.nb_token +
           static_cast<size_t>(channel) * s.nb_channel;
}

// One block per (head, 32-token block), one thread per channel: scale and min over the block's tokens, then the
// channel's 32 codes (tokens past the end: code 0). Same order of operations as quantize_k_block.
__global__ void pack_k(int bits, uint8_t * dst, int n_tokens, int head_dim, PackSource src) {
    const int n_blocks = region_n_blocks(n_tokens);
    const int head = blockIdx.x / n_blocks, b = blockIdx.x % n_blocks, d = threadIdx.x;
    const int t0 = b * kBlockTokens, nt = min(kBlockTokens, n_tokens - t0);
    const int qmax = (1 << bits) - 1;
    float     x[kBlockTokens];
    for (int t = 0; t < nt; ++t) {
        x[t] = load_fp16(element(src, head, t0 + t, d));
    }
    float mn = x[0], mx = x[0];
    for (int t = 1; t < nt; ++t) {
        mn = x[t] < mn ? x[t] : mn;
        mx = x[t] > mx ? x[t] : mx;
    }
    uint8_t * block = dst + static_cast<size_t>(blockIdx.x) *
                                quant_block_bytes(bits == 4 ? COCKTAIL_PREC_Q4 : COCKTAIL_PREC_Q2, head_dim);
    uint16_t  s16, m16;
    float     m, inv;
    group_params(mn, mx, qmax, &s16, &m16, &m, &inv);
    reinterpret_cast<uint16_t *>(block)[d]            = s16;
    reinterpret_cast<uint16_t *>(block)[head_dim + d] = m16;
    uint8_t e[kBlockTokens];
    for (int t = 0; t < kBlockTokens; ++t) {
        e[t] = t < nt ? quantize_code(x[t], m, inv, static_cast<float>(qmax)) : 0;
    }
    pack_codes32(e, bits, block + 4 * head_dim + d * (32 * bits / 8));
}

// One block per (head, 32-token block), one thread per (token, group of 32 channels), as quantize_v_block.
__global__ void pack_v(int bits, uint8_t * dst, int n_tokens, int head_dim, PackSource src) {
    const int n_blocks = region_n_blocks(n_tokens);
    const int n_groups = head_dim / kGroupChannels;
    const int head = blockIdx.x / n_blocks, b = blockIdx.x % n_blocks;
    const int t = threadIdx.x / n_groups, g = threadIdx.x % n_groups;
    const int nt    = min(kBlockTokens, n_tokens - b * kBlockTokens);
    const int qmax  = (1 << bits) - 1;
    uint8_t * block = dst + static_cast<size_t>(blockIdx.x) *
                                quant_block_bytes(bits == 4 ? COCKTAIL_PREC_Q4 : COCKTAIL_PREC_Q2, head_dim);
    const int sm    = t * n_groups + g;
    uint16_t  s16 = 0, m16 = 0;
    uint8_t   e[kGroupChannels] = {};
    if (t < nt) {
        float x[kGroupChannels];
        for (int i = 0; i < kGroupChannels; ++i) {
            x[i] = load_fp16(element(src, head, b * kBlockTokens + t, g * kGroupChannels + i));
        }
        float mn = x[0], mx = x[0];
        for (int i = 1; i < kGroupChannels; ++i) {
            mn = x[i] < mn ? x[i] : mn;
            mx = x[i] > mx ? x[i] : mx;
        }
        float m, inv;
        group_params(mn, mx, qmax, &s16, &m16, &m, &inv);
        for (int i = 0; i < kGroupChannels; ++i) {
            e[i] = quantize_code(x[i], m, inv, static_cast<float>(qmax));
        }
    }
    reinterpret_cast<uint16_t *>(block)[sm]                           = s16;
    reinterpret_cast<uint16_t *>(block)[kBlockTokens * n_groups + sm] = m16;
    pack_codes32(e, bits, block + 4 * head_dim + sm * (32 * bits / 8));
}

// F16 region [head][token][head_dim]: the source bits, one thread per element.
__global__ void pack_f16(uint16_t * dst, int n_tokens, int head_dim, PackSource src) {
    const int head = blockIdx.y, t = blockIdx.x, d = threadIdx.x;
    uint16_t  h;
    memcpy(&h, element(src, head, t, d), 2);
    dst[(static_cast<size_t>(head) * n_tokens + t) * head_dim + d] = h;
}

}  // namespace cocktail::cuda_pack_impl

namespace cocktail {

void cuda_pack_region(int                precision,
                      int                part,
                      uint8_t *          dst,
                      int                n_tokens,
                      int                n_head_kv,
                      int                head_dim,
                      const PackSource & src) {
    using namespace cuda_pack_impl;
    if (n_tokens == 0) {
        return;
    }
    if (head_dim > 1024 || head_dim % kGroupChannels != 0) {
        throw std::runtime_error("packing on the GPU: head_dim " + std::to_string(head_dim) +
                                 " (a multiple of 32, at most 1024)");
    }
    const int n_units = n_head_kv * region_n_blocks(n_tokens);
    if (precision == COCKTAIL_PREC_F16) {
        pack_f16<<<dim3(n_tokens, n_head_kv), head_dim>>>(reinterpret_cast<uint16_t *>(dst), n_tokens, head_dim, src);
    } else if (part == COCKTAIL_KV_K) {
        pack_k<<<n_units, head_dim>>>(precision_bits(precision), dst, n_tokens, head_dim, src);
    } else {
        pack_v<<<n_units, kBlockTokens * head_dim / kGroupChannels>>>(precision_bits(precision), dst, n_tokens,
                                                                      head_dim, src);
    }
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) {
        cuda_throw(err, "pack kernel launch");
    }
    if (cudaError_t err = cudaStreamSynchronize(nullptr); err != cudaSuccess) {
        cuda_throw(err, "pack kernel");
    }
}

}  // namespace cocktail

extern "C" int cocktail_pack_region_cuda(int          precision,
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
                                         const int *  cells) {
    using namespace cocktail;
    const char * what = "cocktail_pack_region_cuda";
    if (int rc = pack_region_args_check(what, precision, part, dst, dst_size, n_tokens, n_head_kv, head_dim, src,
                                        src_n_cells, cells);
        rc != COCKTAIL_OK) {
        return rc;
    }
    if (n_tokens == 0) {
        return COCKTAIL_OK;
    }
    const size_t need = region_bytes(precision, n_tokens, n_head_kv, head_dim);
    // the source's byte span: from element (0, 0, 0) to one past the last element of the last cell
    const size_t span = static_cast<size_t>(src_n_cells - 1) * src_nb_token +
                        static_cast<size_t>(head_dim - 1) * src_nb_channel +
                        static_cast<size_t>(n_head_kv - 1) * src_nb_head + 2;
    try {  // on the current device
        auto       d_src   = cuda_upload(static_cast<const uint8_t *>(src), span, nullptr);
        auto       d_cells = cuda_upload(reinterpret_cast<const uint8_t *>(cells), n_tokens * sizeof(int32_t), nullptr);
        auto       d_dst   = cuda_alloc(need, nullptr);
        PackSource s{ d_src.get(), src_nb_token, src_nb_channel, src_nb_head,
                      reinterpret_cast<const int32_t *>(d_cells.get()) };
        cuda_pack_region(precision, part, d_dst.get(), n_tokens, n_head_kv, head_dim, s);
        cuda_download(static_cast<uint8_t *>(dst), d_dst.get(), need);
    } catch (const std::exception & e) {
        return fail(COCKTAIL_EINTERNAL, std::string(what) + ": " + e.what());
    }
    return COCKTAIL_OK;
}
