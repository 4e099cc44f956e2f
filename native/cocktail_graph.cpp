// Graph integration of the segmented KV cache: the attention hook upstream calls (ggml_patches/0003) and the
// ggml custom op "attn_mixed_regions" it adds (CPU; runs cocktail_attn_cpu's kernel on ggml's threads).
#include "cocktail_attn_cpu.h"
#include "cocktail_hooks.h"
#include "cocktail_segmented.h"
#include "ggml.h"
#include "llama-graph.h"

#include <cstring>
#include <string>

namespace cocktail {
namespace graph_impl {
namespace {

// A graph input without tensors: the graph may be reused only while no plan / compaction changed.
class EpochInput : public llm_graph_input_i {
  public:
    EpochInput(uint64_t epoch, std::shared_ptr<SegmentedCache> keep) : epoch_(epoch), keep_(std::move(keep)) {}

    void set_input(const llama_ubatch * ubatch) override { GGML_UNUSED(ubatch); }

    bool can_reuse(const llm_graph_params & params) override {
        GGML_UNUSED(params);
        return epoch_ == current_epoch();
    }

  private:
    uint64_t                        epoch_;
    std::shared_ptr<SegmentedCache> keep_;  // the op's userdata lives as long as the graph
};

// ggml custom op: dst [head_dim, n_head, n_tokens] = attention of q over the layer's regions + the cache view
// (src: q, k, v, kq_mask). Threads split the (KV head, query rows) tiles; no barriers needed.
void attn_mixed_regions_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const auto *        layer   = static_cast<const LayerRegions *>(userdata);
    const ggml_tensor * q       = dst->src[0];
    const ggml_tensor * k       = dst->src[1];
    const ggml_tensor * v       = dst->src[2];
    const ggml_tensor * mask    = dst->src[3];
    const bool          v_trans = v->nb[1] > v->nb[2];

    cocktail_attn_args a{};
    a.n_q_tokens        = static_cast<int>(q->ne[2]);
    a.n_head            = static_cast<int>(q->ne[1]);
    a.n_head_kv         = static_cast<int>(k->ne[1]);
    a.head_dim          = static_cast<int>(q->ne[0]);
    a.kq_scale          = layer->kq_scale;
    a.q                 = static_cast<const float *>(q->data);
    a.q_nb_token        = q->nb[2];
    a.q_nb_head         = q->nb[1];
    a.out               = static_cast<float *>(dst->data);
    a.out_nb_token      = dst->nb[2];
    a.out_nb_head       = dst->nb[1];
    a.regions           = layer->regions;
    a.n_regions         = kNumPrecisions;
    a.n_tail            = static_cast<int>(k->ne[2]);
    a.tail_k            = k->data;
    a.tail_k_nb_token   = k->nb[2];
    a.tail_k_nb_head    = k->nb[1];
    a.tail_v            = v->data;
    a.tail_v_nb_token   = v_trans ? v->nb[0] : v->nb[2];
    a.tail_v_nb_channel = v_trans ? v->nb[2] : v->nb[0];
    a.tail_v_nb_head    = v->nb[1];
    a.mask              = mask ? mask->data : nullptr;
    a.mask_nb_row       = mask ? mask->nb[1] : 0;
    a.mask_f16          = mask && mask->type == GGML_TYPE_F16 ? 1 : 0;

    if (attn_mixed_regions_check(a) != COCKTAIL_OK) {
        if (ith == 0) {  // cannot fail a ggml op: zeros out, the error reaches Python through cocktail_check()
            std::memset(dst->data, 0, ggml_nbytes(dst));
            layer->owner->set_runtime_error("layer " + std::to_string(layer->il) + ": " + cocktail_last_error());
        }
        return;
    }
    attn_mixed_regions_part(a, ith, nth);
}

// Why the op cannot take these tensors (empty: it can).
std::string op_shape_problem(const LayerRegions & layer,
                             const ggml_tensor *  q,
                             const ggml_tensor *  k,
                             const ggml_tensor *  v,
                             const ggml_tensor *  kq_mask) {
    const bool    v_trans = v->nb[1] > v->nb[2];
    const int64_t v_dim   = v_trans ? v->ne[2] : v->ne[0];
    const int64_t v_cells = v_trans ? v->ne[0] : v->ne[2];
    if (q->type != GGML_TYPE_F32 || q->nb[0] != sizeof(float)) {
        return std::string("q is ") + ggml_type_name(q->type) + " with element stride " + std::to_string(q->nb[0]);
    }
    if (k->type != GGML_TYPE_F16 || v->type != GGML_TYPE_F16) {
        return std::string("cache K/V are ") + ggml_type_name(k->type) + "/" + ggml_type_name(v->type) + ", not F16";
    }
    if (k->ne[3] != 1 || q->ne[3] != 1) {
        return "multi-stream caches are not supported";
    }
    if (q->ne[0] != layer.head_dim || k->ne[0] != layer.head_dim || v_dim != layer.head_dim ||
        k->ne[1] != layer.n_head_kv || q->ne[1] % layer.n_head_kv != 0 || v_cells != k->ne[2]) {
        return "unexpected q/k/v shapes q[" + std::to_string(q->ne[0]) + "," + std::to_string(q->ne[1]) + "] k[" +
               std::to_string(k->ne[0]) + "," + std::to_string(k->ne[1]) + "] for head_dim " +
               std::to_string(layer.head_dim) + ", n_head_kv " + std::to_string(layer.n_head_kv);
    }
    if (kq_mask == nullptr || (kq_mask->type != GGML_TYPE_F32 && kq_mask->type != GGML_TYPE_F16) ||
        kq_mask->ne[0] < k->ne[2] || kq_mask->ne[1] < q->ne[2] || kq_mask->ne[2] * kq_mask->ne[3] != 1) {
        return "unexpected KQ mask";
    }
    return "";
}

}  // namespace
}  // namespace graph_impl
}  // namespace cocktail

ggml_tensor * cocktail_build_attn(ggml_context *     ctx0,
                                  ggml_cgraph *      gf,
                                  llm_graph_result * res,
                                  ggml_tensor *      q,
                                  ggml_tensor *      k,
                                  ggml_tensor *      v,
                                  ggml_tensor *      kq_b,
                                  ggml_tensor *      kq_mask,
                                  ggml_tensor *      sinks,
                                  ggml_tensor *      v_mla,
                                  float              kq_scale,
                                  int                il) {
    using namespace cocktail;
    const ggml_tensor * storage = k->view_src ? k->view_src : k;
    auto [state, layer]         = find_layer(storage);
    res->add_input(std::make_unique<graph_impl::EpochInput>(current_epoch(), state));
    if (layer == nullptr) {
        return nullptr;
    }
    layer->seen = true;
    if (kq_b != nullptr || sinks != nullptr || v_mla != nullptr) {
        if (layer->unsupported.empty()) {
            layer->unsupported = std::string("attention with ") +
                                 (kq_b  ? "a KQ bias" :
                                  sinks ? "attention sinks" :
                                          "MLA value projection") +
                                 " is not supported by the segmented cache (v1)";
        }
        if (state->compacted) {
            state->set_runtime_error("layer " + std::to_string(il) + ": " + layer->unsupported);
        }
        return nullptr;
    }
    if (!state->compacted) {
        return nullptr;  // prefill before compaction: upstream attention over the F16 staging cache
    }
    const std::string problem = graph_impl::op_shape_problem(*layer, q, k, v, kq_mask);
    if (!problem.empty()) {
        state->set_runtime_error("layer " + std::to_string(il) + ": " + problem);
        return nullptr;
    }
    layer->kq_scale       = kq_scale;
    ggml_tensor * args[4] = { q, k, v, kq_mask };
    ggml_tensor * cur     = ggml_custom_4d(ctx0, GGML_TYPE_F32, q->ne[0], q->ne[1], q->ne[2], 1, args, 4,
                                           graph_impl::attn_mixed_regions_op, GGML_N_TASKS_MAX, layer);
    ggml_format_name(cur, "attn_mixed_regions-%d", il);
    cur = ggml_reshape_2d(ctx0, cur, cur->ne[0] * cur->ne[1], cur->ne[2]);
    ggml_build_forward_expand(gf, cur);
    return cur;
}
