// The two calls upstream llama.cpp makes into the segmented KV cache (ggml_patches/0003); C++, inside libllama.
#pragma once

struct ggml_context;
struct ggml_cgraph;
struct ggml_tensor;
struct llama_context;
class llm_graph_result;

// Attention of layer il when its context K/V were compacted into Q2/Q4/F16 regions: exact softmax over the
// regions plus the cache cells k/v under kq_mask (the F16 tail: BOS, remainder, query, generated tokens).
// q [head_dim, n_head, n_tokens]; k, v: views of the layer's cache as build_attn_mha takes them.
// Returns [head_dim*n_head, n_tokens] (what build_attn_mha returns), or nullptr when this layer is not
// segmented now: upstream's attention then runs unchanged. Adds a graph input that stops llama.cpp from
// reusing the graph after any plan / compaction change.
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
                                  int                il);

// llama_free(ctx) calls this first: the context's plan and regions go with it.
void cocktail_context_free(const llama_context * ctx);
