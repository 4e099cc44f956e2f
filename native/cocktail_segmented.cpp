// Segmented KV cache: plans, compaction into Q2/Q4/F16 regions, the registry, and their C API.
#include "cocktail_segmented.h"

#include "cocktail_cuda.h"
#include "cocktail_errors.h"
#include "cocktail_hooks.h"
#include "cocktail_kv_format.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "llama-arch.h"
#include "llama-hparams.h"
#include "llama-kv-cache-iswa.h"
#include "llama-kv-cache.h"
#include "llama-model.h"
#include "llama.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

namespace cocktail {

// Named namespace: libllama is a unity build, so file-local names must not collide with other sources.
namespace segmented_impl {
namespace {

struct Registry {
    std::mutex                                                                                    mutex;
    // the planned sequences of each context
    std::unordered_map<const llama_context *, std::map<int32_t, std::shared_ptr<SegmentedCache>>> by_ctx;
    // the K tensor of every layer of a context with a plan -> (context, model layer)
    std::unordered_map<const ggml_tensor *, std::pair<const llama_context *, int32_t>>            by_k;
    // layers of a context whose attention went through the hook under an earlier plan (il -> unsupported reason):
    // a new plan over a restored F16 cache (no graph built since) can then be compacted
    std::unordered_map<const llama_context *, std::unordered_map<int32_t, std::string>>           hooked;
};

Registry & registry() {
    static Registry r;
    return r;
}

std::atomic<uint64_t> g_epoch{ 1 };

// Drops seq_id's plan (seq_id < 0: every sequence of ctx). Caller holds the registry mutex.
void unregister_locked(Registry & r, const llama_context * ctx, int32_t seq_id) {
    auto it = r.by_ctx.find(ctx);
    if (it == r.by_ctx.end()) {
        return;
    }
    auto & seqs   = it->second;
    auto & hooked = r.hooked[ctx];
    for (auto s = seqs.begin(); s != seqs.end();) {
        if (seq_id >= 0 && s->first != seq_id) {
            ++s;
            continue;
        }
        for (const auto & layer : s->second->layers) {
            if (layer->seen) {
                hooked[layer->il] = layer->unsupported;
            }
        }
        s = seqs.erase(s);
    }
    if (seqs.empty()) {
        for (auto k = r.by_k.begin(); k != r.by_k.end();) {
            k = k->second.first == ctx ? r.by_k.erase(k) : std::next(k);
        }
        r.by_ctx.erase(it);
    }
    g_epoch.fetch_add(1);
}

std::shared_ptr<SegmentedCache> find_seq(const llama_context * ctx, int32_t seq_id) {
    Registry &                  r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto                        it = r.by_ctx.find(ctx);
    if (it == r.by_ctx.end()) {
        return nullptr;
    }
    auto s = it->second.find(seq_id);
    return s == it->second.end() ? nullptr : s->second;
}

std::vector<std::shared_ptr<SegmentedCache>> find_all(const llama_context * ctx) {
    Registry &                                   r = registry();
    std::lock_guard<std::mutex>                  lock(r.mutex);
    std::vector<std::shared_ptr<SegmentedCache>> out;
    if (auto it = r.by_ctx.find(ctx); it != r.by_ctx.end()) {
        for (const auto & [seq, st] : it->second) {
            out.push_back(st);
        }
    }
    return out;
}

int check_seq(const char * what, const llama_context * ctx, int32_t seq_id) {
    if (ctx == nullptr) {
        return fail(COCKTAIL_EINVAL, std::string(what) + ": ctx is NULL");
    }
    const auto n_seq_max = static_cast<int32_t>(llama_n_seq_max(ctx));
    if (seq_id < 0 || seq_id >= n_seq_max) {
        return fail(COCKTAIL_EINVAL, std::string(what) + ": seq_id " + std::to_string(seq_id) + " is not in [0, " +
                                         std::to_string(n_seq_max) + ") (the context's n_seq_max)");
    }
    return COCKTAIL_OK;
}

// The standard KV cache of ctx (the full-attention half of an iSWA pair), or nullptr with the reason set.
llama_kv_cache * standard_cache(llama_context * ctx, const llama_model & model) {
    llama_memory_i * mem = llama_get_memory(ctx);
    if (mem == nullptr) {
        fail(COCKTAIL_EUNSUPPORTED,
             std::string("model architecture ") + llm_arch_name(model.arch) + " has no KV cache: nothing to segment");
        return nullptr;
    }
    if (auto * kv = dynamic_cast<llama_kv_cache *>(mem)) {
        return kv;
    }
    if (auto * iswa = dynamic_cast<llama_kv_cache_iswa *>(mem)) {
        return iswa->get_base();
    }
    fail(COCKTAIL_EUNSUPPORTED, std::string("model architecture ") + llm_arch_name(model.arch) +
                                    " does not use the standard KV cache (recurrent, hybrid or MLA-style memory): "
                                    "the segmented cache needs it");
    return nullptr;
}

// A cache tensor in the memory of a CUDA device (this build has CUDA): its layer's regions go there too.
bool on_cuda_device(const ggml_tensor * t) {
    return COCKTAIL_CUDA && t->buffer != nullptr && !ggml_backend_buffer_is_host(t->buffer) &&
           std::strncmp(ggml_backend_buffer_name(t->buffer), "CUDA", 4) == 0;
}

// Why this model/context cannot run the segmented cache (COCKTAIL_EUNSUPPORTED), or OK.
int check_model(llama_context * ctx, const llama_model & model, llama_kv_cache * kv) {
    const llama_hparams & hp   = model.hparams;
    const std::string     arch = llm_arch_name(model.arch);
    if (kv->get_n_stream() != 1) {
        return fail(COCKTAIL_EUNSUPPORTED, "the context has n_seq_max = " + std::to_string(llama_n_seq_max(ctx)) +
                                               " with a KV stream per sequence: the segmented cache needs one "
                                               "stream for all sequences (kv_unified = true)");
    }
    if (kv->type_k() != GGML_TYPE_F16 || kv->type_v() != GGML_TYPE_F16) {
        return fail(COCKTAIL_EUNSUPPORTED,
                    std::string("KV cache types are type_k=") + ggml_type_name(kv->type_k()) +
                        ", type_v=" + ggml_type_name(kv->type_v()) +
                        ": the segmented cache stages the context in F16 (use type_k=type_v=f16)");
    }
    if (hp.attn_soft_cap || model.arch == LLM_ARCH_GROK) {
        return fail(COCKTAIL_EUNSUPPORTED,
                    "model architecture " + arch +
                        " caps attention logits (softcap): not supported by the segmented cache (v1)");
    }
    if (hp.f_max_alibi_bias != 0.0f) {
        return fail(COCKTAIL_EUNSUPPORTED,
                    "model architecture " + arch + " uses ALiBi: not supported by the segmented cache (v1)");
    }
    for (uint32_t il : kv->get_layer_ids()) {
        const ggml_tensor * k = kv->get_k_storage(static_cast<int32_t>(il));
        if (k->buffer == nullptr || (!ggml_backend_buffer_is_host(k->buffer) && !on_cuda_device(k))) {
            return fail(COCKTAIL_EUNSUPPORTED, "layer " + std::to_string(il) + "'s KV cache is in " +
                                                   (k->buffer ? ggml_backend_buffer_name(k->buffer) : "no buffer") +
                                                   " memory: the segmented cache runs on the CPU" +
                                                   (COCKTAIL_CUDA ? " and CUDA devices" : " (this build has no CUDA)") +
                                                   " (use n_gpu_layers=0 or offload_kqv=False)");
        }
        const uint32_t dk = hp.n_embd_head_k(il), dv = hp.n_embd_head_v(il);
        if (dk != dv || dk % kGroupChannels != 0) {
            return fail(COCKTAIL_EUNSUPPORTED, "layer " + std::to_string(il) + " has K/V head sizes " +
                                                   std::to_string(dk) + "/" + std::to_string(dv) +
                                                   ": the segmented cache needs equal sizes, multiples of 32");
        }
    }
    return COCKTAIL_OK;
}

// Views of layer il's whole K and V cache (one stream), as PackSources without cells, and the tensors they view.
struct LayerViews {
    PackSource          k;
    PackSource          v;
    const ggml_tensor * k_storage;
    const ggml_tensor * v_storage;
};

LayerViews layer_views(llama_kv_cache * kv, int32_t il, uint32_t stream) {
    ggml_init_params          ip   = { ggml_tensor_overhead() * 4, nullptr, true };
    ggml_context *            tctx = ggml_init(ip);
    llama_kv_cache::slot_info sinfo;
    sinfo.s0                  = stream;
    sinfo.s1                  = stream;
    sinfo.strm                = { 0 };
    sinfo.idxs                = { { 0 } };
    const ggml_tensor * kview = kv->get_k(tctx, il, kv->get_size(), sinfo);
    const ggml_tensor * vview = kv->get_v(tctx, il, kv->get_size(), sinfo);
    LayerViews          out{};
    out.k_storage = kview->view_src ? kview->view_src : kview;
    out.v_storage = vview->view_src ? vview->view_src : vview;
    out.k         = { static_cast<const uint8_t *>(kview->data), kview->nb[2], kview->nb[0], kview->nb[1], nullptr };
    if (vview->nb[1] > vview->nb[2]) {  // transposed V (flash attention off): [cell, head, channel] view
        out.v = { static_cast<const uint8_t *>(vview->data), vview->nb[0], vview->nb[2], vview->nb[1], nullptr };
    } else {
        out.v = { static_cast<const uint8_t *>(vview->data), vview->nb[2], vview->nb[0], vview->nb[1], nullptr };
    }
    ggml_free(tctx);
    return out;
}

// A layer whose cache is in CUDA memory: its regions are packed by the GPU straight from the cache, on its device.
void pack_on_device(LayerRegions &     layer,
                    const LayerViews & views,
                    const std::vector<int32_t> (&cells)[kNumPrecisions]) {
    const void *    near = views.k_storage->data;
    CudaDeviceScope scope(near);
    for (int p = 0; p < kNumPrecisions; ++p) {
        const int    n     = static_cast<int>(cells[p].size());
        const size_t bytes = region_bytes(p, n, layer.n_head_kv, layer.head_dim);
        layer.k[p].clear();
        layer.v[p].clear();
        if (n > 0) {
            auto d_cells  = cuda_upload(reinterpret_cast<const uint8_t *>(cells[p].data()), n * sizeof(int32_t), near);
            auto kb       = cuda_alloc(bytes, near);
            auto vb       = cuda_alloc(bytes, near);
            PackSource ks = views.k, vs = views.v;
            ks.cells = vs.cells = reinterpret_cast<const int32_t *>(d_cells.get());
            cuda_pack_region(p, COCKTAIL_KV_K, kb.get(), n, layer.n_head_kv, layer.head_dim, ks);
            cuda_pack_region(p, COCKTAIL_KV_V, vb.get(), n, layer.n_head_kv, layer.head_dim, vs);
            layer.k[p].set_device(std::move(kb), bytes);
            layer.v[p].set_device(std::move(vb), bytes);
        }
        layer.regions[p] = { p, n, layer.k[p].data(), layer.v[p].data() };
    }
}

int compact(SegmentedCache & st) {
    const std::string what = "cocktail_compact";
    if (st.compacted) {
        return fail(COCKTAIL_ESTATE, what + ": sequence " + std::to_string(st.seq_id) +
                                         " is already compacted (cocktail_clear, then a new plan and prefill)");
    }
    for (const auto & layer : st.layers) {
        if (!layer->unsupported.empty()) {
            return fail(COCKTAIL_EUNSUPPORTED,
                        what + ": layer " + std::to_string(layer->il) + ": " + layer->unsupported);
        }
        if (!layer->seen) {
            return fail(COCKTAIL_EUNSUPPORTED,
                        what + ": layer " + std::to_string(layer->il) +
                            "'s attention never went through the segmented-cache hook (prefill the context first; "
                            "an architecture with a non-standard attention path is not supported)");
        }
    }
    llama_synchronize(st.ctx);

    // cell of every planned position
    const int32_t          n_plan = st.n_plan_tokens();
    std::vector<int32_t>   cell_of(static_cast<size_t>(n_plan), -1);
    const llama_kv_cells & cells   = st.kv->get_cells(st.seq_id);
    llama_pos              pos_max = -1;
    for (const auto & pc : cells.seq_pos_get(st.seq_id)) {
        const llama_pos p = pc.first;
        pos_max           = std::max(pos_max, p);
        if (p < st.pos0 || p >= st.pos0 + n_plan) {
            continue;
        }
        int32_t & c = cell_of[static_cast<size_t>(p - st.pos0)];
        if (c >= 0) {
            return fail(COCKTAIL_EUNSUPPORTED,
                        what + ": position " + std::to_string(p) +
                            " is held by several cells (multi-position tokens are not supported)");
        }
        c = static_cast<int32_t>(pc.second);
    }
    for (int32_t i = 0; i < n_plan; ++i) {
        if (cell_of[static_cast<size_t>(i)] < 0) {
            return fail(COCKTAIL_ESTATE, what + ": position " + std::to_string(st.pos0 + i) + " of sequence " +
                                             std::to_string(st.seq_id) +
                                             " is not in the KV cache: prefill the planned context before compacting");
        }
    }
    if (n_plan > 0 && pos_max < st.pos0 + n_plan) {
        return fail(COCKTAIL_ESTATE, what + ": no token follows the planned chunks (last position " +
                                         std::to_string(pos_max) + "): prefill the query after the context");
    }

    // cells of each region, chunks in plan order (region order is free: attention is a sum over tokens)
    std::vector<int32_t> region_cells[kNumPrecisions];
    for (size_t c = 0; c < st.precisions.size(); ++c) {
        auto & dst = region_cells[st.precisions[c]];
        for (int32_t t = 0; t < st.chunk_size; ++t) {
            dst.push_back(cell_of[c * static_cast<size_t>(st.chunk_size) + static_cast<size_t>(t)]);
        }
    }

    const int      n_threads = std::max(1, static_cast<int>(llama_n_threads(st.ctx)));
    const uint32_t stream    = st.kv->get_stream(st.seq_id);
    std::string    problem;
    try {
        for (auto & layer : st.layers) {
            const LayerViews views = layer_views(st.kv, layer->il, stream);
            if (layer->on_device) {
                pack_on_device(*layer, views, region_cells);
                continue;
            }
            for (int p = 0; p < kNumPrecisions; ++p) {
                const int            n     = static_cast<int>(region_cells[p].size());
                const size_t         bytes = region_bytes(p, n, layer->n_head_kv, layer->head_dim);
                std::vector<uint8_t> kb(bytes, 0), vb(bytes, 0);
                if (n > 0) {
                    PackSource ks = views.k, vs = views.v;
                    ks.cells = region_cells[p].data();
                    vs.cells = region_cells[p].data();
                    pack_region(p, COCKTAIL_KV_K, kb.data(), n, layer->n_head_kv, layer->head_dim, ks, n_threads);
                    pack_region(p, COCKTAIL_KV_V, vb.data(), n, layer->n_head_kv, layer->head_dim, vs, n_threads);
                }
                layer->k[p].set(std::move(kb), nullptr);
                layer->v[p].set(std::move(vb), nullptr);
                layer->regions[p] = { p, n, layer->k[p].data(), layer->v[p].data() };
            }
        }
    } catch (const std::bad_alloc &) {
        problem = "out of memory allocating the regions";
    } catch (const std::runtime_error & e) {
        problem = std::string("placing the regions on the GPU: ") + e.what();
    }
    if (!problem.empty()) {
        for (auto & layer : st.layers) {
            for (int p = 0; p < kNumPrecisions; ++p) {
                layer->k[p].clear();
                layer->v[p].clear();
                layer->regions[p] = {};
            }
        }
        return fail(COCKTAIL_ENOMEM, what + ": " + problem);
    }

    // the staging F16 copies leave llama.cpp's cache: its mask then hides those cells and new tokens reuse them
    if (n_plan > 0 && !st.kv->seq_rm(st.seq_id, st.pos0, st.pos0 + n_plan)) {
        return fail(COCKTAIL_EINTERNAL, what + ": llama.cpp refused to remove positions " + std::to_string(st.pos0) +
                                            ".." + std::to_string(st.pos0 + n_plan - 1) + " from its cache");
    }
    st.compacted = true;
    g_epoch.fetch_add(1);
    return COCKTAIL_OK;
}

}  // namespace
}  // namespace segmented_impl

void RegionBuffer::set(std::vector<uint8_t> && bytes, const void * device_near) {
    clear();
    const size_t n = bytes.size();
    if (device_near != nullptr && n > 0) {
        device_ = cuda_upload(bytes.data(), n, device_near);
    } else {
        host_ = std::move(bytes);
    }
    size_ = n;
}

void RegionBuffer::set_device(std::shared_ptr<uint8_t> && bytes, size_t size) {
    clear();
    device_ = std::move(bytes);
    size_   = size;
}

void RegionBuffer::clear() {
    std::vector<uint8_t>().swap(host_);
    device_.reset();
    size_ = 0;
}

const uint8_t * RegionBuffer::host_bytes(std::vector<uint8_t> & scratch) const {
    if (!device_) {
        return host_.data();
    }
    scratch.resize(size_);
    cuda_download(scratch.data(), device_.get(), size_);
    return scratch.data();
}

void SegmentedCache::set_runtime_error(const std::string & msg) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (runtime_error.empty()) {
        runtime_error = msg;
    }
    has_runtime_error.store(true);
}

std::vector<SeqLayer> find_layer(const ggml_tensor * k_storage) {
    segmented_impl::Registry &  r = segmented_impl::registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    std::vector<SeqLayer>       out;
    auto                        it = r.by_k.find(k_storage);
    if (it == r.by_k.end()) {
        return out;
    }
    const auto & [ctx, il] = it->second;
    for (const auto & [seq, st] : r.by_ctx[ctx]) {
        for (const auto & layer : st->layers) {
            if (layer->il == il) {
                out.push_back({ st, layer.get() });
            }
        }
    }
    return out;
}

void rebind_cache(llama_context * ctx) {
    segmented_impl::Registry &  r = segmented_impl::registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    if (auto it = r.by_ctx.find(ctx); it != r.by_ctx.end()) {
        for (auto k = r.by_k.begin(); k != r.by_k.end();) {
            k = k->second.first == ctx ? r.by_k.erase(k) : std::next(k);
        }
        llama_kv_cache * kv = segmented_impl::standard_cache(ctx, *llama_get_model(ctx));
        for (auto & [seq, st] : it->second) {
            st->kv = kv;
            for (auto & layer : st->layers) {
                layer->k_storage = kv ? kv->get_k_storage(layer->il) : nullptr;
                layer->on_device = layer->k_storage != nullptr && segmented_impl::on_cuda_device(layer->k_storage);
                if (layer->k_storage != nullptr) {
                    r.by_k[layer->k_storage] = { ctx, layer->il };
                }
            }
        }
    }
    segmented_impl::g_epoch.fetch_add(1);
}

uint64_t current_epoch() {
    return segmented_impl::g_epoch.load();
}

}  // namespace cocktail

void cocktail_context_free(const llama_context * ctx) {
    cocktail::segmented_impl::Registry & r = cocktail::segmented_impl::registry();
    std::lock_guard<std::mutex>          lock(r.mutex);
    cocktail::segmented_impl::unregister_locked(r, ctx, -1);
    r.hooked.erase(ctx);
}

extern "C" {

int cocktail_set_plan(struct llama_context * ctx,
                      int32_t                seq_id,
                      int32_t                pos0,
                      int32_t                chunk_size,
                      const uint8_t *        precisions,
                      int32_t                n_chunks,
                      int32_t                n_context_tokens) {
    using namespace cocktail;
    using namespace cocktail::segmented_impl;
    const std::string what = "cocktail_set_plan";
    if (int rc = check_seq(what.c_str(), ctx, seq_id); rc != COCKTAIL_OK) {
        return rc;
    }
    if (chunk_size < 1 || chunk_size > 256) {
        return fail(COCKTAIL_EINVAL, what + ": chunk_size " + std::to_string(chunk_size) + " is not in 1..256");
    }
    if (n_chunks < 0 || (n_chunks > 0 && precisions == nullptr)) {
        return fail(COCKTAIL_EINVAL, what + ": n_chunks " + std::to_string(n_chunks) + " with precisions " +
                                         (precisions ? "set" : "NULL"));
    }
    for (int32_t i = 0; i < n_chunks; ++i) {
        if (!precision_valid(precisions[i])) {
            return fail(COCKTAIL_EINVAL, what + ": precision " + std::to_string(precisions[i]) + " of chunk " +
                                             std::to_string(i) + " is not F16 (0), Q4 (1) or Q2 (2)");
        }
    }
    if (pos0 < 0) {
        return fail(COCKTAIL_EINVAL, what + ": pos0 " + std::to_string(pos0) + " is negative");
    }
    const int64_t n_plan = static_cast<int64_t>(n_chunks) * chunk_size;
    if (n_context_tokens < 0 || n_plan > n_context_tokens) {
        return fail(COCKTAIL_EINVAL, what + ": the plan covers " + std::to_string(n_chunks) + " chunks x " +
                                         std::to_string(chunk_size) + " = " + std::to_string(n_plan) +
                                         " tokens, longer than the context's n_context_tokens " +
                                         std::to_string(n_context_tokens));
    }
    const int64_t n_ctx = llama_n_ctx(ctx);
    if (static_cast<int64_t>(pos0) + n_context_tokens > n_ctx) {
        return fail(COCKTAIL_EINVAL, what + ": the context (positions " + std::to_string(pos0) + ".." +
                                         std::to_string(static_cast<int64_t>(pos0) + n_context_tokens - 1) +
                                         ") is longer than the llama context's n_ctx " + std::to_string(n_ctx));
    }
    const llama_model & model = *llama_get_model(ctx);
    llama_kv_cache *    kv    = standard_cache(ctx, model);
    if (kv == nullptr) {
        return COCKTAIL_EUNSUPPORTED;  // message set
    }
    if (int rc = check_model(ctx, model, kv); rc != COCKTAIL_OK) {
        return rc;
    }

    std::shared_ptr<SegmentedCache> st;
    try {
        st                   = std::make_shared<SegmentedCache>();
        st->ctx              = ctx;
        st->kv               = kv;
        st->seq_id           = seq_id;
        st->pos0             = pos0;
        st->chunk_size       = chunk_size;
        st->n_context_tokens = n_context_tokens;
        st->precisions.assign(precisions, precisions + n_chunks);
        for (uint32_t il : kv->get_layer_ids()) {
            auto layer       = std::make_unique<LayerRegions>();
            layer->owner     = st.get();
            layer->il        = static_cast<int32_t>(il);
            layer->n_head_kv = static_cast<int32_t>(model.hparams.n_head_kv(il));
            layer->head_dim  = static_cast<int32_t>(model.hparams.n_embd_head_k(il));
            layer->k_storage = kv->get_k_storage(static_cast<int32_t>(il));
            layer->on_device = on_cuda_device(layer->k_storage);
            st->layers.push_back(std::move(layer));
        }
    } catch (const std::bad_alloc &) {
        return fail(COCKTAIL_ENOMEM, what + ": out of memory");
    }
    Registry &                  r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    unregister_locked(r, ctx, seq_id);
    r.by_ctx[ctx][seq_id] = st;
    const auto & hooked   = r.hooked[ctx];
    for (const auto & layer : st->layers) {
        r.by_k[layer->k_storage] = { ctx, layer->il };
        if (auto h = hooked.find(layer->il); h != hooked.end()) {
            layer->seen        = true;
            layer->unsupported = h->second;
        }
    }
    g_epoch.fetch_add(1);
    return COCKTAIL_OK;
}

int cocktail_clear(struct llama_context * ctx, int32_t seq_id) {
    using namespace cocktail::segmented_impl;
    if (int rc = check_seq("cocktail_clear", ctx, seq_id); rc != COCKTAIL_OK) {
        return rc;
    }
    Registry &                  r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    unregister_locked(r, ctx, seq_id);
    return COCKTAIL_OK;
}

int cocktail_compact(struct llama_context * ctx, int32_t seq_id) {
    using namespace cocktail;
    using namespace cocktail::segmented_impl;
    if (int rc = check_seq("cocktail_compact", ctx, seq_id); rc != COCKTAIL_OK) {
        return rc;
    }
    auto st = find_seq(ctx, seq_id);
    if (st == nullptr) {
        return fail(COCKTAIL_ESTATE, "cocktail_compact: sequence " + std::to_string(seq_id) +
                                         " has no plan (call cocktail_set_plan before prefill)");
    }
    return compact(*st);
}

int cocktail_region_info(struct llama_context *          ctx,
                         int32_t                         seq_id,
                         int32_t                         layer,
                         struct cocktail_layer_regions * out) {
    using namespace cocktail;
    using namespace cocktail::segmented_impl;
    if (int rc = check_seq("cocktail_region_info", ctx, seq_id); rc != COCKTAIL_OK) {
        return rc;
    }
    if (out == nullptr) {
        return fail(COCKTAIL_EINVAL, "cocktail_region_info: out is NULL");
    }
    const int32_t n_layer = llama_model_n_layer(llama_get_model(ctx));
    if (layer < 0 || layer >= n_layer) {
        return fail(COCKTAIL_EINVAL, "cocktail_region_info: layer " + std::to_string(layer) + " is not in [0, " +
                                         std::to_string(n_layer) + ")");
    }
    *out    = {};
    auto st = find_seq(ctx, seq_id);
    if (st == nullptr) {
        return COCKTAIL_OK;
    }
    for (const auto & l : st->layers) {
        if (l->il != layer) {
            continue;
        }
        out->segmented = 1;
        out->compacted = st->compacted ? 1 : 0;
        for (int p = 0; p < kNumPrecisions; ++p) {
            out->n_tokens[p] = l->regions[p].n_tokens;
            out->k_bytes[p]  = l->k[p].size();
            out->v_bytes[p]  = l->v[p].size();
        }
    }
    return COCKTAIL_OK;
}

int cocktail_check(struct llama_context * ctx) {
    using namespace cocktail;
    using namespace cocktail::segmented_impl;
    if (ctx == nullptr) {
        return fail(COCKTAIL_EINVAL, "cocktail_check: ctx is NULL");
    }
    for (const auto & st : find_all(ctx)) {
        if (st->has_runtime_error.load()) {
            std::lock_guard<std::mutex> lock(st->error_mutex);
            return fail(COCKTAIL_EINTERNAL, "segmented cache: " + st->runtime_error);
        }
    }
    return COCKTAIL_OK;
}

}  // extern "C"

// Named namespace: unity build (see above).
namespace cocktail::state_impl {

constexpr uint32_t kStateMagic = 0x31534b43;  // "CKS1"

struct StateWriter {
    uint8_t * dst;
    size_t    cap;
    size_t    n = 0;

    void bytes(const void * p, size_t len) {
        if (len == 0) {  // an empty region's data() may be NULL: memcpy must not see it
            return;
        }
        if (dst != nullptr && n + len <= cap) {
            std::memcpy(dst + n, p, len);
        }
        n += len;
    }

    template <typename T> void put(T v) { bytes(&v, sizeof(v)); }
};

struct StateReader {
    const uint8_t * src;
    size_t          size;
    size_t          at = 0;
    bool            ok = true;

    const uint8_t * take(size_t len) {
        if (!ok || len > size - at) {
            ok = false;
            return nullptr;
        }
        const uint8_t * p = src + at;
        at += len;
        return p;
    }

    template <typename T> T get() {
        T v{};
        if (const uint8_t * p = take(sizeof(T))) {
            std::memcpy(&v, p, sizeof(T));
        }
        return v;
    }
};

}  // namespace cocktail::state_impl

extern "C" {

int cocktail_state_get(struct llama_context * ctx, int32_t seq_id, uint8_t * dst, size_t * size) {
    using namespace cocktail;
    using namespace cocktail::segmented_impl;
    using namespace cocktail::state_impl;
    if (int rc = check_seq("cocktail_state_get", ctx, seq_id); rc != COCKTAIL_OK) {
        return rc;
    }
    if (size == nullptr) {
        return fail(COCKTAIL_EINVAL, "cocktail_state_get: size is NULL");
    }
    auto                 st = find_seq(ctx, seq_id);
    StateWriter          w{ dst, dst ? *size : 0 };
    std::vector<uint8_t> scratch;  // a region of a CUDA layer, copied to host memory
    // the regions themselves: from the GPU only when they are written
    auto                 region = [&](const RegionBuffer & b) {
        w.put(static_cast<uint64_t>(b.size()));
        w.bytes(dst && w.n + b.size() <= w.cap ? b.host_bytes(scratch) : nullptr, b.size());
    };
    if (st != nullptr) {
        try {
            w.put(kStateMagic);
            w.put(st->pos0);
            w.put(st->chunk_size);
            w.put(st->n_context_tokens);
            w.put(static_cast<int32_t>(st->precisions.size()));
            w.bytes(st->precisions.data(), st->precisions.size());
            w.put(static_cast<uint8_t>(st->compacted));
            w.put(static_cast<int32_t>(st->layers.size()));
            for (const auto & l : st->layers) {
                w.put(l->il);
                w.put(l->n_head_kv);
                w.put(l->head_dim);
                for (int p = 0; p < kNumPrecisions; ++p) {
                    w.put(l->regions[p].n_tokens);
                    region(l->k[p]);
                    region(l->v[p]);
                }
            }
        } catch (const std::exception & e) {  // a region copied from the GPU: CUDA error or no host memory
            return fail(COCKTAIL_EINTERNAL, std::string("cocktail_state_get: ") + e.what());
        }
    }
    if (dst != nullptr && w.n > *size) {
        return fail(COCKTAIL_EINVAL, "cocktail_state_get: the buffer holds " + std::to_string(*size) + " bytes, " +
                                         std::to_string(w.n) + " needed");
    }
    *size = w.n;
    return COCKTAIL_OK;
}

int cocktail_state_set(struct llama_context * ctx, int32_t seq_id, const uint8_t * src, size_t size) {
    using namespace cocktail;
    using namespace cocktail::segmented_impl;
    using namespace cocktail::state_impl;
    const std::string what = "cocktail_state_set";
    if (int rc = check_seq(what.c_str(), ctx, seq_id); rc != COCKTAIL_OK) {
        return rc;
    }
    if (size == 0) {
        return cocktail_clear(ctx, seq_id);
    }
    if (src == nullptr) {
        return fail(COCKTAIL_EINVAL, what + ": src is NULL with size " + std::to_string(size));
    }
    StateReader r{ src, size };
    if (r.get<uint32_t>() != kStateMagic) {
        return fail(COCKTAIL_EINVAL, what + ": not a segmented-cache state (bad magic)");
    }
    const auto      pos0 = r.get<int32_t>(), chunk_size = r.get<int32_t>(), n_context = r.get<int32_t>();
    const auto      n_chunks   = r.get<int32_t>();
    const uint8_t * precisions = n_chunks > 0 ? r.take(static_cast<size_t>(n_chunks)) : nullptr;
    const bool      compacted  = r.get<uint8_t>() != 0;
    const auto      n_layers   = r.get<int32_t>();
    if (!r.ok || n_chunks < 0 || n_layers < 0) {
        return fail(COCKTAIL_EINVAL, what + ": truncated or corrupt state header (" + std::to_string(size) + " bytes)");
    }
    // the plan goes through cocktail_set_plan's checks against this context and model
    if (int rc = cocktail_set_plan(ctx, seq_id, pos0, chunk_size, precisions, n_chunks, n_context); rc != COCKTAIL_OK) {
        return rc;
    }
    auto st = find_seq(ctx, seq_id);
    if (n_layers != static_cast<int32_t>(st->layers.size())) {
        cocktail_clear(ctx, seq_id);
        return fail(COCKTAIL_EINVAL, what + ": the state has " + std::to_string(n_layers) +
                                         " segmented layers, this model " + std::to_string(st->layers.size()));
    }
    int32_t counts[kNumPrecisions] = {};
    for (int32_t c = 0; c < n_chunks; ++c) {
        counts[precisions[c]] += chunk_size;
    }
    std::string problem;
    try {
        for (auto & l : st->layers) {
            const auto il = r.get<int32_t>(), n_head_kv = r.get<int32_t>(), head_dim = r.get<int32_t>();
            if (!r.ok || il != l->il || n_head_kv != l->n_head_kv || head_dim != l->head_dim) {
                problem = "layer " + std::to_string(l->il) + " does not match the state (another model?)";
                break;
            }
            for (int p = 0; p < kNumPrecisions && problem.empty(); ++p) {
                const auto      n      = r.get<int32_t>();
                const auto      want   = compacted ? region_bytes(p, counts[p], n_head_kv, head_dim) : 0;
                const auto      k_size = r.get<uint64_t>();
                const uint8_t * k      = r.take(static_cast<size_t>(std::min<uint64_t>(k_size, size)));
                const auto      v_size = r.get<uint64_t>();
                const uint8_t * v      = r.take(static_cast<size_t>(std::min<uint64_t>(v_size, size)));
                if (!r.ok || n != (compacted ? counts[p] : 0) || k_size != want || v_size != want) {
                    problem = "layer " + std::to_string(il) + ": region " + std::to_string(p) +
                              " is truncated or does not match the plan";
                    break;
                }
                const void * near = l->on_device ? l->k_storage->data : nullptr;
                l->k[p].set(std::vector<uint8_t>(k, k + k_size), near);
                l->v[p].set(std::vector<uint8_t>(v, v + v_size), near);
                l->regions[p] = { p, n, l->k[p].data(), l->v[p].data() };
            }
            if (!problem.empty()) {
                break;
            }
            l->seen = compacted;  // compacted on this model: its attention goes through the hook
        }
    } catch (const std::bad_alloc &) {
        problem = "out of memory for the regions";
    } catch (const std::runtime_error & e) {
        problem = std::string("placing the regions on the GPU: ") + e.what();
    }
    if (problem.empty() && r.at != size) {
        problem = std::to_string(size - r.at) + " trailing bytes";
    }
    if (!problem.empty()) {
        cocktail_clear(ctx, seq_id);
        return fail(COCKTAIL_EINVAL, what + ": " + problem);
    }
    st->compacted = compacted;
    g_epoch.fetch_add(1);
    return COCKTAIL_OK;
}

}  // extern "C"
