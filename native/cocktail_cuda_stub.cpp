// CPU builds (GGML_CUDA=off): the CUDA entry points exist and fail with a clear message.
#include "cocktail_api.h"
#include "cocktail_cuda.h"
#include "cocktail_errors.h"

#include <stdexcept>

#if !COCKTAIL_CUDA

// these always throw, but their declarations (cocktail_cuda.h) are shared with CUDA builds, where they return
#    if defined(__GNUC__) && !defined(__clang__)
#        pragma GCC diagnostic ignored "-Wsuggest-attribute=noreturn"
#    endif

namespace cocktail {

namespace cuda_stub_impl {
const char * const kNoCuda = "this library was built without CUDA (GGML_CUDA=off)";
}  // namespace cuda_stub_impl

using cuda_stub_impl::kNoCuda;

void cuda_throw(int, const std::string & what) {
    throw std::runtime_error(what + ": " + kNoCuda);
}

CudaDeviceScope::CudaDeviceScope(const void *) {
    throw std::runtime_error(kNoCuda);
}

CudaDeviceScope::~CudaDeviceScope() = default;

std::shared_ptr<uint8_t> cuda_alloc(size_t, const void *) {
    throw std::runtime_error(kNoCuda);
}

std::shared_ptr<uint8_t> cuda_upload(const uint8_t *, size_t, const void *) {
    throw std::runtime_error(kNoCuda);
}

void cuda_pack_region(int, int, uint8_t *, int, int, int, const PackSource &) {
    throw std::runtime_error(kNoCuda);
}

void cuda_download(uint8_t *, const uint8_t *, size_t) {
    throw std::runtime_error(kNoCuda);
}

void cuda_zero_async(void *, size_t, void *) {}

size_t cuda_graph_attn_scratch(const CudaGraphAttn &) {
    return 0;
}

int cuda_graph_attn(const CudaGraphAttn &, void *) {
    return fail(COCKTAIL_EUNSUPPORTED, std::string("cuda_graph_attn: ") + kNoCuda);
}

}  // namespace cocktail

extern "C" {

int cocktail_attn_mixed_regions_cuda(const struct cocktail_attn_args * args) {
    (void) args;
    return cocktail::fail(COCKTAIL_EUNSUPPORTED,
                          std::string("cocktail_attn_mixed_regions_cuda: ") + cocktail::cuda_stub_impl::kNoCuda);
}

int cocktail_pack_region_cuda(int          precision,
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
    (void) precision, (void) part, (void) dst, (void) dst_size, (void) n_tokens, (void) n_head_kv, (void) head_dim;
    (void) src, (void) src_nb_token, (void) src_nb_channel, (void) src_nb_head, (void) src_n_cells, (void) cells;
    return cocktail::fail(COCKTAIL_EUNSUPPORTED,
                          std::string("cocktail_pack_region_cuda: ") + cocktail::cuda_stub_impl::kNoCuda);
}

int cocktail_attn_mixed_regions_cuda_bench(const struct cocktail_attn_args * args,
                                           int                               n_iters,
                                           int                               graph,
                                           double *                          ms,
                                           double *                          bytes_read,
                                           double *                          copy_gbps) {
    (void) n_iters, (void) graph, (void) ms, (void) bytes_read, (void) copy_gbps;
    return cocktail_attn_mixed_regions_cuda(args);
}

}  // extern "C"

#endif
