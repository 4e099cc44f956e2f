// Graph integration of the segmented KV cache: the attention hook upstream calls (ggml_patches/0003) and the
// ggml custom op "attn_mixed_regions" it adds: on the CPU it runs cocktail_attn_cpu's kernel on ggml's threads; for a
// layer whose cache is in CUDA memory, ggml's CUDA backend runs it through cuda_graph_attn (ggml_patches/0005).
#include "cocktail_attn_cpu.h"
#include "cocktail_cuda.h"
#include "cocktail_hooks.h"
#include "cocktail_segmented.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "llama-batch.h"
#include "llama-graph.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace cocktail {
namespace graph_impl {
namespace {

constexpr cocktail_kv_region kNoRegions[kNumPrecisions] = {};

// What the attention op of one layer reads besides its inputs: the regions of every planned sequence (compacted
// ones; others attend to llama.cpp's cache only). Immutable once built, and shared by the graphs that would build
// the same one (find_op), so that the op's node (its userdata pointer) is the same bytes from token to token.
struct LayerOp {
    uint64_t                                      epoch     = 0;
    int32_t                                       il        = -1;
    int64_t                                       n_tokens  = 0;  // query tokens of the graph's ubatch
    float                                         kq_scale  = 0.0f;
    bool                                          on_device = false;
    std::map<int32_t, const cocktail_kv_region *> regions;             // seq -> its regions (compacted sequences)
    std::vector<SegmentedCache *>                 owners;              // where a runtime error is reported
    size_t                                        scratch_offset = 0;  // CUDA op: the scratch follows the output

    bool same_as(const LayerOp & o) const {
        return epoch == o.epoch && il == o.il && n_tokens == o.n_tokens && kq_scale == o.kq_scale &&
               on_device == o.on_device && regions == o.regions && owners == o.owners &&
               scratch_offset == o.scratch_offset;
    }

    void report(const std::string & msg) const {
        for (SegmentedCache * o : owners) {
            o->set_runtime_error("layer " + std::to_string(il) + ": " + msg);
        }
    }
};

// A graph input: keeps the planned sequences (and the op's data) alive as long as the graph, fills the op's
// token -> sequence table for each ubatch, and stops reuse of the graph after any plan / compaction change.
class SegmentsInput : public llm_graph_input_i {
  public:
    SegmentsInput(uint64_t epoch, std::vector<SeqLayer> keep) : epoch_(epoch), keep_(std::move(keep)) {}

    std::shared_ptr<const LayerOp> op;  // null: the layer runs upstream's attention in this graph
    // the ops' input: the sequence of each query token, one tensor for all layers of the graph (one host-to-device
    // copy per ubatch, not one per layer); the first layer's input fills it
    ggml_tensor *                  seq_ids       = nullptr;
    bool                           fills_seq_ids = false;

    void set_input(const llama_ubatch * ubatch) override {
        if (op == nullptr || seq_ids == nullptr || !fills_seq_ids) {
            return;
        }
        std::vector<int32_t> ids(ubatch->n_tokens, -1);
        for (uint32_t i = 0; i < ubatch->n_tokens; ++i) {
            if (ubatch->n_seq_id[i] == 1) {
                ids[i] = ubatch->seq_id[i][0];
                continue;
            }
            for (int32_t j = 0; j < ubatch->n_seq_id[i]; ++j) {  // a token shared by sequences: cache only
                if (op->regions.count(ubatch->seq_id[i][j]) != 0) {
                    op->report("a token belongs to " + std::to_string(ubatch->n_seq_id[i]) +
                               " sequences, one of them compacted (sequence " + std::to_string(ubatch->seq_id[i][j]) +
                               "): each compacted sequence needs its own tokens");
                }
            }
        }
        ggml_backend_tensor_set(seq_ids, ids.data(), 0, ids.size() * sizeof(int32_t));
    }

    bool can_reuse(const llm_graph_params & params) override {
        if (epoch_ != current_epoch()) {
            return false;
        }
        return op == nullptr || seq_ids == nullptr || seq_ids->ne[0] == params.ubatch.n_tokens;
    }

  private:
    uint64_t              epoch_;
    std::vector<SeqLayer> keep_;
};

// The attention call over src = { q, k, v, kq_mask } into out (rows of D floats, strides per token and head); no
// regions yet.
cocktail_attn_args base_args(const LayerOp &             op,
                             const ggml_tensor * const * src,
                             void *                      out,
                             size_t                      out_nb_token,
                             size_t                      out_nb_head) {
    const ggml_tensor * q       = src[0];
    const ggml_tensor * k       = src[1];
    const ggml_tensor * v       = src[2];
    const ggml_tensor * mask    = src[3];
    const bool          v_trans = v->nb[1] > v->nb[2];

    cocktail_attn_args a{};
    a.n_q_tokens        = static_cast<int>(q->ne[2]);
    a.n_head            = static_cast<int>(q->ne[1]);
    a.n_head_kv         = static_cast<int>(k->ne[1]);
    a.head_dim          = static_cast<int>(q->ne[0]);
    a.kq_scale          = op.kq_scale;
    a.q                 = static_cast<const float *>(q->data);
    a.q_nb_token        = q->nb[2];
    a.q_nb_head         = q->nb[1];
    a.out               = static_cast<float *>(out);
    a.out_nb_token      = out_nb_token;
    a.out_nb_head       = out_nb_head;
    a.regions           = kNoRegions;
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
    return a;
}

// ggml custom op: dst [head_dim, n_head, n_tokens] = attention of q over the regions of each token's sequence + the
// cache view (src: q, k, v, kq_mask, seq ids). Runs of consecutive tokens of one sequence are one attention call;
// threads split each run's (KV head, query rows) tiles, rotated per run so single-token runs spread; no barriers.
void attn_mixed_regions_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const auto *             op   = static_cast<const LayerOp *>(userdata);
    const cocktail_attn_args all  = base_args(*op, dst->src, dst->data, dst->nb[2], dst->nb[1]);
    const auto *             seqs = static_cast<const int32_t *>(dst->src[4]->data);
    const int                n    = all.n_q_tokens;
    int                      run  = 0;
    for (int i0 = 0, i1 = 0; i0 < n; i0 = i1, ++run) {
        i1 = i0 + 1;
        while (i1 < n && seqs[i1] == seqs[i0]) {
            ++i1;
        }
        cocktail_attn_args a = all;
        a.n_q_tokens         = i1 - i0;
        a.q    = reinterpret_cast<const float *>(reinterpret_cast<const char *>(all.q) + i0 * all.q_nb_token);
        a.out  = reinterpret_cast<float *>(reinterpret_cast<char *>(all.out) + i0 * all.out_nb_token);
        a.mask = all.mask ? static_cast<const char *>(all.mask) + static_cast<size_t>(i0) * all.mask_nb_row : nullptr;
        if (auto it = op->regions.find(seqs[i0]); it != op->regions.end()) {
            a.regions = it->second;
        }
        if (attn_mixed_regions_check(a) != COCKTAIL_OK) {
            if (ith == 0) {  // cannot fail a ggml op: zeros out, the error reaches Python through cocktail_check()
                for (int i = i0; i < i1; ++i) {
                    std::memset(static_cast<char *>(dst->data) + i * dst->nb[2], 0, dst->nb[2]);
                }
                op->report(cocktail_last_error());
            }
            continue;
        }
        attn_mixed_regions_part(a, (ith + run) % nth, nth);
    }
}

// The CUDA op's call for dst over src = { q, k, v, kq_mask, seq ids } (dst = nullptr: for sizing the scratch while
// the graph is built). The output rows are [n_tokens][n_head][D], contiguous, at the start of dst.
CudaGraphAttn cuda_call(const LayerOp & op, const ggml_tensor * const * src, ggml_tensor * dst) {
    const ggml_tensor * q = src[0];
    CudaGraphAttn       c;
    c.args =
        base_args(op, src, dst ? dst->data : nullptr, q->ne[0] * q->ne[1] * sizeof(float), q->ne[0] * sizeof(float));
    for (const auto & [seq, regions] : op.regions) {
        c.sets.push_back({ seq, regions, kNumPrecisions });
    }
    if (dst != nullptr) {
        c.q_seq         = static_cast<const int32_t *>(dst->src[4]->data);
        c.scratch       = static_cast<char *>(dst->data) + op.scratch_offset;
        c.scratch_bytes = ggml_nbytes(dst) - op.scratch_offset;
    }
    return c;
}

// ggml's CUDA backend runs the op of a CUDA layer here (registered below; ggml_patches/0005). Errors: zeros out,
// the message reaches Python through cocktail_check(), as on the CPU.
bool attn_mixed_regions_cuda_op(void * stream, ggml_tensor * dst, void * userdata) {
    const auto *        op   = static_cast<const LayerOp *>(userdata);
    const CudaGraphAttn call = cuda_call(*op, dst->src, dst);
    if (cuda_graph_attn(call, stream) != COCKTAIL_OK) {
        op->report(cocktail_last_error());
        cuda_zero_async(dst->data, op->scratch_offset, stream);
    }
    return true;
}

// The op of a CUDA layer has no CPU implementation (its regions are in device memory): ggml scheduled it on the CPU.
void attn_mixed_regions_not_on_cuda(ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) nth;
    if (ith == 0) {
        std::memset(dst->data, 0, ggml_nbytes(dst));
        static_cast<const LayerOp *>(userdata)->report(
            "ggml scheduled the attention of a layer whose cache and regions are on the GPU on the CPU backend");
    }
}

// Registers the CUDA op with ggml's CUDA backend once; the reason when that backend cannot take it.
std::string register_cuda_op() {
    static const std::string problem = [] {
        ggml_backend_reg_t reg = ggml_backend_reg_by_name("CUDA");
        using register_fn      = void (*)(ggml_custom_op_t, bool (*)(void *, ggml_tensor *, void *));
        auto * fn = reg ? reinterpret_cast<register_fn>(
                              ggml_backend_reg_get_proc_address(reg, "ggml_backend_cuda_register_custom_op")) :
                          nullptr;
        if (fn == nullptr) {
            return std::string(reg ? "ggml's CUDA backend has no custom-op hook (ggml_patches/0005 not applied)" :
                                     "ggml has no CUDA backend registered");
        }
        fn(attn_mixed_regions_not_on_cuda, attn_mixed_regions_cuda_op);
        return std::string();
    }();
    return problem;
}

// The op of a CUDA layer: a 1-D output holding the attention rows, then (256-byte aligned) the kernels' split-K
// scratch, so ggml's graph allocator provides that memory and the op needs no allocation of its own (CUDA graphs).
ggml_tensor * build_cuda_op(ggml_context * ctx0, const LayerOp * op, ggml_tensor * (&src)[5]) {
    const ggml_tensor * q        = src[0];
    const size_t        scratch  = cuda_graph_attn_scratch(cuda_call(*op, src, nullptr));
    const int64_t       n_floats = static_cast<int64_t>((op->scratch_offset + scratch) / sizeof(float));
    ggml_tensor * cur = ggml_custom_4d(ctx0, GGML_TYPE_F32, n_floats, 1, 1, 1, src, 5, attn_mixed_regions_not_on_cuda,
                                       1, const_cast<LayerOp *>(op));
    // the epoch in the name: ggml-cuda replays a captured CUDA graph when every node's bytes match, and a graph
    // rebuilt after the regions changed could otherwise match the old one (same shapes, a LayerOp at the same
    // address) while its kernels hold the old regions' pointers
    ggml_format_name(cur, "attn_mixed_regions_cuda-%d-%llu", op->il, static_cast<unsigned long long>(current_epoch()));
    return ggml_view_2d(ctx0, cur, q->ne[0] * q->ne[1], q->ne[2], q->ne[0] * q->ne[1] * sizeof(float), 0);
}

// `fresh`, or the op an earlier graph built with the same content (same epoch, layer, token count, regions): graphs
// rebuilt from token to token then hand ggml the same node, and ggml-cuda replays its captured CUDA graph instead
// of launching every kernel again. Ops of older epochs are dropped.
std::shared_ptr<const LayerOp> find_op(const ggml_tensor * k_storage, std::shared_ptr<LayerOp> fresh) {
    static std::mutex                                                                           mutex;
    static std::unordered_map<const ggml_tensor *, std::vector<std::shared_ptr<const LayerOp>>> ops;
    std::lock_guard<std::mutex>                                                                 lock(mutex);
    for (auto it = ops.begin(); it != ops.end();) {
        auto & list = it->second;
        list.erase(std::remove_if(list.begin(), list.end(), [&](const auto & o) { return o->epoch != fresh->epoch; }),
                   list.end());
        it = list.empty() ? ops.erase(it) : std::next(it);
    }
    auto & list = ops[k_storage];
    for (const auto & o : list) {
        if (o->same_as(*fresh)) {
            return o;
        }
    }
    list.push_back(std::move(fresh));
    return list.back();
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
    const ggml_tensor *   storage = k->view_src ? k->view_src : k;
    std::vector<SeqLayer> seqs    = find_layer(storage);
    auto                  input   = std::make_unique<graph_impl::SegmentsInput>(current_epoch(), seqs);
    auto *                in      = input.get();
    res->add_input(std::move(input));
    if (seqs.empty()) {
        return nullptr;
    }
    bool any_compacted = false;
    for (const SeqLayer & s : seqs) {
        s.layer->seen = true;
        any_compacted = any_compacted || s.owner->compacted;
    }
    if (kq_b != nullptr || sinks != nullptr || v_mla != nullptr) {
        for (const SeqLayer & s : seqs) {
            if (s.layer->unsupported.empty()) {
                s.layer->unsupported = std::string("attention with ") +
                                       (kq_b  ? "a KQ bias" :
                                        sinks ? "attention sinks" :
                                                "MLA value projection") +
                                       " is not supported by the segmented cache (v1)";
            }
            if (s.owner->compacted) {
                s.owner->set_runtime_error("layer " + std::to_string(il) + ": " + s.layer->unsupported);
            }
        }
        return nullptr;
    }
    if (!any_compacted) {
        return nullptr;  // prefill before compaction: upstream attention over the F16 staging cache
    }
    const bool  on_device = seqs.front().layer->on_device;
    std::string problem   = graph_impl::op_shape_problem(*seqs.front().layer, q, k, v, kq_mask);
    if (problem.empty() && on_device) {
        problem = graph_impl::register_cuda_op();
    }
    if (!problem.empty()) {
        for (const SeqLayer & s : seqs) {
            s.owner->set_runtime_error("layer " + std::to_string(il) + ": " + problem);
        }
        return nullptr;
    }
    auto op       = std::make_shared<graph_impl::LayerOp>();
    op->epoch     = current_epoch();
    op->il        = il;
    op->n_tokens  = q->ne[2];
    op->kq_scale  = kq_scale;
    op->on_device = on_device;
    for (const SeqLayer & s : seqs) {
        op->owners.push_back(s.owner.get());
        if (s.owner->compacted) {
            op->regions[s.owner->seq_id] = s.layer->regions;
        }
    }
    if (on_device) {
        const size_t out_bytes = q->ne[0] * q->ne[1] * q->ne[2] * sizeof(float);
        op->scratch_offset     = (out_bytes + 255) / 256 * 256;
    }
    in->op      = graph_impl::find_op(storage, std::move(op));
    in->seq_ids = ggml_get_tensor(ctx0, "cocktail_seq_ids");  // ctx0 holds this graph's tensors only
    if (in->seq_ids == nullptr || in->seq_ids->ne[0] != q->ne[2]) {
        in->seq_ids = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, q->ne[2]);
        ggml_set_input(in->seq_ids);
        ggml_set_name(in->seq_ids, "cocktail_seq_ids");
        in->fills_seq_ids = true;
    }
    ggml_tensor * args[5] = { q, k, v, kq_mask, in->seq_ids };
    ggml_tensor * cur     = nullptr;
    if (on_device) {
        cur = graph_impl::build_cuda_op(ctx0, in->op.get(), args);
    } else {
        cur = ggml_custom_4d(ctx0, GGML_TYPE_F32, q->ne[0], q->ne[1], q->ne[2], 1, args, 5,
                             graph_impl::attn_mixed_regions_op, GGML_N_TASKS_MAX,
                             const_cast<graph_impl::LayerOp *>(in->op.get()));
        ggml_format_name(cur, "attn_mixed_regions-%d", il);
        cur = ggml_reshape_2d(ctx0, cur, cur->ne[0] * cur->ne[1], cur->ne[2]);
    }
    ggml_build_forward_expand(gf, cur);
    return cur;
}
