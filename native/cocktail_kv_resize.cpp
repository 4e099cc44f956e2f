// Resizing a context's llama.cpp KV memory (ggml_patches/0004 lets us reach it). After compaction the F16
// staging cells of the planned context are free, but llama.cpp allocated its cache for n_ctx tokens; this
// rebuilds the memory module with as many cells as the tail needs, moving every sequence's cells across.
#include "cocktail_errors.h"
#include "cocktail_segmented.h"
#include "llama-context.h"
#include "llama-kv-cache-iswa.h"
#include "llama-kv-cache.h"
#include "llama-model.h"
#include "llama.h"

#include <algorithm>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// Named in ggml_patches/0004 as a friend of llama_context.
struct cocktail_context_access {
    static llama_memory_ptr & memory(llama_context & ctx) { return ctx.memory; }

    static const llama_cparams & cparams(const llama_context & ctx) { return ctx.cparams; }

    // the next decode reserves its graphs again: the old ones point into the old memory
    static void need_reserve(llama_context & ctx) { ctx.sched_need_reserve = true; }
};

namespace cocktail {
namespace kv_resize_impl {
namespace {

constexpr uint32_t kCellPad = 256;  // llama.cpp pads its cache sizes to 256 cells

struct CacheParts {
    llama_kv_cache * base = nullptr;  // the standard cache, or the full-attention half of an iSWA pair
    llama_kv_cache * swa  = nullptr;  // the sliding-window half (iSWA only)
};

CacheParts cache_parts(llama_memory_i * mem) {
    if (auto * kv = dynamic_cast<llama_kv_cache *>(mem)) {
        return { kv, nullptr };
    }
    if (auto * iswa = dynamic_cast<llama_kv_cache_iswa *>(mem)) {
        return { iswa->get_base(), iswa->get_swa() };
    }
    return {};
}

// Cells in use in the fullest stream of kv.
uint32_t used_cells(const llama_kv_cache & kv) {
    uint32_t used = 0;
    for (uint32_t s = 0; s < kv.get_n_seq_max(); ++s) {
        used = std::max(used, kv.get_cells(static_cast<llama_seq_id>(s)).get_used());
    }
    return used;
}

uint32_t pad_cells(uint64_t n) {
    return static_cast<uint32_t>((n + kCellPad - 1) / kCellPad * kCellPad);
}

// Size llama.cpp gives a sliding-window cache that is not full-size, next to a full-attention cache of base_size cells
// (llama_kv_cache_iswa's constructor). A sliding-window cache of another size was made with swa_full = true.
uint32_t swa_window_cells(const llama_context & ctx, uint32_t base_size) {
    const llama_cparams & cp     = cocktail_context_access::cparams(ctx);
    const uint32_t        window = llama_get_model(&ctx)->hparams.n_swa * (cp.kv_unified ? cp.n_seq_max : 1);
    return pad_cells(std::min<uint64_t>(base_size, static_cast<uint64_t>(window) + cp.n_ubatch));
}

// The cells of each sequence, serialized by llama.cpp's own per-sequence state code.
struct SavedSeqs {
    std::vector<std::pair<llama_seq_id, std::vector<uint8_t>>> seqs;
};

int save_seqs(llama_context * ctx, SavedSeqs & out) {
    llama_memory_t mem = llama_get_memory(ctx);
    for (uint32_t s = 0; s < llama_n_seq_max(ctx); ++s) {
        const auto seq = static_cast<llama_seq_id>(s);
        if (llama_memory_seq_pos_max(mem, seq) < 0) {
            continue;
        }
        std::vector<uint8_t> buf(llama_state_seq_get_size(ctx, seq));
        if (llama_state_seq_get_data(ctx, buf.data(), buf.size(), seq) != buf.size()) {
            return fail(COCKTAIL_EINTERNAL,
                        "cocktail_kv_resize: llama.cpp could not save sequence " + std::to_string(seq) + "'s cells");
        }
        out.seqs.emplace_back(seq, std::move(buf));
    }
    return COCKTAIL_OK;
}

int restore_seqs(llama_context * ctx, const SavedSeqs & saved) {
    for (const auto & [seq, buf] : saved.seqs) {
        if (llama_state_seq_set_data(ctx, buf.data(), buf.size(), seq) != buf.size()) {
            return fail(COCKTAIL_EINTERNAL, "cocktail_kv_resize: llama.cpp could not restore sequence " +
                                                std::to_string(seq) + "'s cells into the resized cache");
        }
    }
    return COCKTAIL_OK;
}

int resize(llama_context * ctx, int64_t n_cells) {
    const std::string  what   = "cocktail_kv_resize";
    llama_memory_ptr & memory = cocktail_context_access::memory(*ctx);
    const CacheParts   old    = cache_parts(memory.get());
    if (old.base == nullptr) {
        return fail(COCKTAIL_EUNSUPPORTED, what + ": the context's memory is not a standard KV cache (or iSWA pair)");
    }
    const llama_cparams & cp          = cocktail_context_access::cparams(*ctx);
    const uint32_t        full        = cp.n_ctx_seq;
    // a sliding-window cache keeps its size: it is sized from min(base size, window + ubatch)
    uint32_t              floor_cells = std::max(used_cells(*old.base), old.swa ? old.swa->get_size() : 0u);
    if (old.swa) {
        floor_cells = std::max(floor_cells, used_cells(*old.swa));
    }
    const uint32_t target =
        n_cells <= 0 ? full :
                       std::min(full, pad_cells(std::max<uint64_t>(static_cast<uint64_t>(n_cells), floor_cells)));
    if (target < floor_cells) {  // the cells in use exceed the full size: cannot happen
        return fail(COCKTAIL_EINTERNAL, what + ": " + std::to_string(floor_cells) + " cells in use exceed n_ctx");
    }
    const uint32_t old_size = old.base->get_size();
    if (target == old_size) {
        return COCKTAIL_OK;
    }

    llama_synchronize(ctx);
    SavedSeqs saved;
    if (int rc = save_seqs(ctx, saved); rc != COCKTAIL_OK) {
        return rc;
    }
    llama_memory_params pm{};
    pm.type_k             = old.base->type_k();
    pm.type_v             = old.base->type_v();
    pm.swa_full           = old.swa != nullptr && old.swa->get_size() != swa_window_cells(*ctx, full);
    pm.ctx_type           = cp.ctx_type;
    pm.mem_other          = llama_get_memory(cp.ctx_other);
    llama_cparams resized = cp;
    resized.n_ctx_seq     = target;

    llama_memory_ptr fresh;
    if (saved.seqs.empty()) {
        memory.reset();  // nothing to move: the old cells go first, so growing never holds both
    }
    try {
        fresh.reset(llama_get_model(ctx)->create_memory(pm, resized));
    } catch (const std::exception & e) {
        fresh.reset();
        if (memory == nullptr) {  // put an empty cache of the old size back (its
                                  // memory was just freed)
            resized.n_ctx_seq = old_size;
            try {
                memory.reset(llama_get_model(ctx)->create_memory(pm, resized));
            } catch (const std::exception &) {
            }
            cocktail_context_access::need_reserve(*ctx);
            rebind_cache(ctx);
        }
        return fail(COCKTAIL_ENOMEM,
                    what + ": allocating a KV cache of " + std::to_string(target) + " cells failed: " + e.what());
    }
    llama_memory_ptr previous = std::move(memory);
    memory                    = std::move(fresh);
    if (int rc = restore_seqs(ctx, saved); rc != COCKTAIL_OK) {
        memory = std::move(previous);  // untouched: the context goes on as before
        return rc;
    }
    previous.reset();
    cocktail_context_access::need_reserve(*ctx);
    rebind_cache(ctx);
    return COCKTAIL_OK;
}

}  // namespace
}  // namespace kv_resize_impl
}  // namespace cocktail

extern "C" {

int cocktail_kv_resize(struct llama_context * ctx, int64_t n_cells) {
    if (ctx == nullptr) {
        return cocktail::fail(COCKTAIL_EINVAL, "cocktail_kv_resize: ctx is NULL");
    }
    try {
        return cocktail::kv_resize_impl::resize(ctx, n_cells);
    } catch (const std::bad_alloc &) {
        return cocktail::fail(COCKTAIL_ENOMEM, "cocktail_kv_resize: out of memory");
    }
}

int cocktail_kv_cells(const struct llama_context * ctx, int64_t * size, int64_t * used, int64_t * full) {
    using namespace cocktail::kv_resize_impl;
    if (ctx == nullptr || size == nullptr || used == nullptr || full == nullptr) {
        return cocktail::fail(COCKTAIL_EINVAL, "cocktail_kv_cells: NULL argument");
    }
    const CacheParts parts = cache_parts(llama_get_memory(ctx));
    if (parts.base == nullptr) {
        return cocktail::fail(COCKTAIL_EUNSUPPORTED,
                              "cocktail_kv_cells: the context's memory is not "
                              "llama.cpp's standard KV cache");
    }
    *size = parts.base->get_size();
    *used = used_cells(*parts.base);
    *full = cocktail_context_access::cparams(*ctx).n_ctx_seq;
    return COCKTAIL_OK;
}

}  // extern "C"
