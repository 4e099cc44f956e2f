// The segmented cache's CUDA side as host C++ calls (inside libllama): device copies of regions and the graph
// attention op. Defined in cocktail_attn_cuda.cu; a CPU build gets cocktail_cuda_stub.cpp, where every call fails.
#pragma once

#include "cocktail_api.h"
#include "cocktail_kv_format.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cocktail {

// Throws std::runtime_error "what: <CUDA error string>" for a cudaError_t, after clearing CUDA's recorded error (ggml
// checks cudaGetLastError() after its own calls).
[[noreturn]] void cuda_throw(int err, const std::string & what);

// Makes the CUDA device that holds `near` (a device pointer: a layer's cache; nullptr: the current device) current
// until destroyed. Throws std::runtime_error when near is not CUDA device memory or there is no device.
class CudaDeviceScope {
  public:
    explicit CudaDeviceScope(const void * near);
    ~CudaDeviceScope();
    CudaDeviceScope(const CudaDeviceScope &)             = delete;
    CudaDeviceScope & operator=(const CudaDeviceScope &) = delete;

  private:
    int previous_ = 0;
};

// `bytes` (> 0) uninitialized bytes on the CUDA device that holds `near` (as CudaDeviceScope), freed with the last
// owner. Throws std::runtime_error naming the CUDA error.
std::shared_ptr<uint8_t> cuda_alloc(size_t bytes, const void * near);

// cuda_alloc() holding a copy of `bytes` host bytes.
std::shared_ptr<uint8_t> cuda_upload(const uint8_t * src, size_t bytes, const void * near);

// Copies `bytes` device bytes to host memory. Throws std::runtime_error naming the CUDA error.
void cuda_download(uint8_t * dst, const uint8_t * src, size_t bytes);

// Packs a region on the GPU, as pack_region() (the same bytes): src.data and src.cells point to device memory (the
// layer's fp16 cache and the region's cells), dst to region_bytes() bytes on the same device, which must be current
// (CudaDeviceScope). Waits for the kernel. Throws std::runtime_error naming the CUDA error.
void cuda_pack_region(int                precision,
                      int                part,
                      uint8_t *          dst,
                      int                n_tokens,
                      int                n_head_kv,
                      int                head_dim,
                      const PackSource & src);

// Regions attended by the query tokens of sequence `seq` (device pointers).
struct CudaRegionSet {
    int32_t                    seq;
    const cocktail_kv_region * regions;
    int                        n_regions;
};

// One call of the graph op: `args` as for the CPU op with every pointer on the device (args.regions unused: `sets`
// instead), q_seq[i] = the sequence of query token i (device), and scratch for the split-K partial results.
struct CudaGraphAttn {
    cocktail_attn_args         args{};
    std::vector<CudaRegionSet> sets;
    const int32_t *            q_seq         = nullptr;
    void *                     scratch       = nullptr;
    size_t                     scratch_bytes = 0;
};

// Scratch bytes cuda_graph_attn() uses at most for calls of this shape (any tail length) on the current device (0
// without CUDA).
size_t cuda_graph_attn_scratch(const CudaGraphAttn & call);

// Zeroes `bytes` device bytes at dst on `stream` (a cudaStream_t), asynchronously (CUDA-graph capturable).
void cuda_zero_async(void * dst, size_t bytes, void * stream);

// Launches the attention kernels on `stream` (a cudaStream_t): no synchronization and no allocation, so it can be
// captured in a CUDA graph. A smaller scratch than cuda_graph_attn_scratch() asks for means fewer token splits.
// COCKTAIL_OK, or an error code with the message set (cocktail_last_error).
int cuda_graph_attn(const CudaGraphAttn & call, void * stream);

}  // namespace cocktail
