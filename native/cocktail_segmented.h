// Segmented KV cache: a sequence's plan, its per-layer Q2/Q4/F16 regions after compaction, and the registry
// the graph hook (cocktail_graph.cpp) finds them through. Internal to libllama; the C API is in cocktail_api.h.
#pragma once

#include "cocktail_api.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

struct ggml_tensor;
struct llama_context;
class llama_kv_cache;

namespace cocktail {

constexpr int kNumPrecisions = 3;  // F16, Q4, Q2: enum cocktail_precision values, also region indices

struct SegmentedCache;

// The bytes of one region: in host memory, or in CUDA device memory for a layer whose cache is on the GPU.
class RegionBuffer {
  public:
    // Takes `bytes`; with `device_near` (a device pointer: the layer's cache) they are copied to that GPU and the
    // host copy freed (throws std::runtime_error naming the CUDA error, or std::bad_alloc). The previous
    // contents are released first.
    void set(std::vector<uint8_t> && bytes, const void * device_near);
    // Takes `size` bytes of CUDA device memory (cuda_alloc).
    void set_device(std::shared_ptr<uint8_t> && bytes, size_t size);
    void clear();

    const uint8_t * data() const { return device_ ? device_.get() : host_.data(); }  // host or device pointer

    size_t size() const { return size_; }

    // The bytes in host memory: data() itself, or a copy made in `scratch` (throws as set()).
    const uint8_t * host_bytes(std::vector<uint8_t> & scratch) const;

  private:
    std::vector<uint8_t>     host_;
    std::shared_ptr<uint8_t> device_;
    size_t                   size_ = 0;
};

// One attention layer of the standard cache: its regions (indexed by precision) after compaction.
struct LayerRegions {
    SegmentedCache *    owner     = nullptr;
    int32_t             il        = -1;  // model layer index
    int32_t             n_head_kv = 0;
    int32_t             head_dim  = 0;
    const ggml_tensor * k_storage = nullptr;  // the cache's K tensor of this layer: how the hook finds us
    bool                on_device = false;    // the cache (and so the regions) in CUDA device memory
    RegionBuffer        k[kNumPrecisions];
    RegionBuffer        v[kNumPrecisions];
    cocktail_kv_region  regions[kNumPrecisions] = {};     // F16, Q4, Q2 (any order is exact)
    bool                seen                    = false;  // this layer's attention went through cocktail_build_attn
    std::string         unsupported;                      // first reason the hook could not take this layer
};

// The plan and regions of one sequence of one llama_context (several sequences need one KV stream: kv_unified).
struct SegmentedCache {
    llama_context *                            ctx    = nullptr;
    llama_kv_cache *                           kv     = nullptr;  // the standard cache (the base one of an iSWA pair)
    int32_t                                    seq_id = 0;
    int32_t                                    pos0   = 0;        // position of the first planned token
    int32_t                                    chunk_size       = 0;
    int32_t                                    n_context_tokens = 0;
    std::vector<uint8_t>                       precisions;  // per chunk
    bool                                       compacted = false;
    std::vector<std::unique_ptr<LayerRegions>> layers;

    std::atomic<bool> has_runtime_error{ false };
    std::mutex        error_mutex;
    std::string       runtime_error;

    int32_t n_plan_tokens() const { return chunk_size * static_cast<int32_t>(precisions.size()); }

    // Records the first error found while building or computing a graph; cocktail_check() reports it.
    void set_runtime_error(const std::string & msg);
};

// One planned sequence's entry for a layer, its owner kept alive.
struct SeqLayer {
    std::shared_ptr<SegmentedCache> owner;
    LayerRegions *                  layer;
};

// The layer whose K tensor is k_storage, in every planned sequence of its context (empty: not segmented).
std::vector<SeqLayer> find_layer(const ggml_tensor * k_storage);

// After the context's KV memory module was replaced (cocktail_kv_resize): the segmented cache of ctx, if any, finds
// its layers by the new cache's K tensors; graphs built before are not reused.
void rebind_cache(llama_context * ctx);

// Bumped by every plan / compaction / clear: a graph built at another epoch is not reused.
uint64_t current_epoch();

}  // namespace cocktail
