// cocktail-gguf C API: what our libllama exports beyond upstream llama.h.
// Conventions: functions return 0 on success and a negative code on error; the message of the
// last error on this thread is cocktail_last_error(). Nothing here aborts on bad input.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#    define COCKTAIL_API __declspec(dllexport)
#else
#    define COCKTAIL_API __attribute__((visibility("default")))
#endif

enum cocktail_status {
    COCKTAIL_OK            = 0,
    COCKTAIL_EINVAL        = -1,  // bad argument (user input)
    COCKTAIL_ESTATE        = -2,  // call not valid in the current state
    COCKTAIL_ENOMEM        = -3,  // allocation failed
    COCKTAIL_EUNSUPPORTED  = -4,  // model/backend cannot do this
    COCKTAIL_EINTERNAL     = -5,
};

// Precision of one context chunk's K/V (a plan is one of these per chunk).
enum cocktail_precision {
    COCKTAIL_PREC_F16 = 0,
    COCKTAIL_PREC_Q4  = 1,
    COCKTAIL_PREC_Q2  = 2,
};

COCKTAIL_API const char * cocktail_version(void);
// JSON object: version, upstream, ggml_version, llama_build, cuda, patches.
COCKTAIL_API const char * cocktail_build_info(void);
// One line in llama_print_system_info() style; appended there by ggml_patches/0001.
COCKTAIL_API const char * cocktail_system_info(void);
COCKTAIL_API const char * cocktail_last_error(void);

// ggml backend devices visible to this library (CPU, CUDA GPUs, ...).
COCKTAIL_API int cocktail_device_count(void);
// Writes a JSON object {name, description, type, memory_free, memory_total} into buf.
COCKTAIL_API int cocktail_device_info(int index, char * buf, size_t buf_size);

struct llama_context;
// Bytes llama.cpp allocated for a context, summed over devices: model weights, its own KV cache
// ("context": llama.cpp's cache only, not our regions) and compute buffers.
COCKTAIL_API int cocktail_memory_bytes(const struct llama_context * ctx, size_t * model, size_t * context,
                                       size_t * compute);

// ---- formats and ops (tests) ----
// Owned by the formats/ops work (native/cocktail_kv_format.*, native/cocktail_attn_cpu.*); byte layouts and
// the attention contract are in native/README.md. All strides are in bytes. fp16 data is IEEE binary16.

// Which half of a layer's cache a region buffer holds.
enum cocktail_kv_part {
    COCKTAIL_KV_K = 0,
    COCKTAIL_KV_V = 1,
};

// Bytes of one region's K or V buffer: n_tokens tokens of one precision, n_head_kv heads, head_dim channels
// (a multiple of 32). Q4: 5.0 bits/element, Q2: 3.0, F16: 16 (a partial last 32-token block is padded).
COCKTAIL_API int cocktail_region_bytes(int precision, int part, int n_tokens, int n_head_kv, int head_dim,
                                       size_t * out_bytes);

// Gathers cells[0..n_tokens) of an fp16 source into region positions 0..n_tokens and quantizes them into dst.
// Source element (cell, channel, head) is at src + cell*src_nb_token + channel*src_nb_channel + head*src_nb_head;
// every cell must be in [0, src_n_cells). The llama.cpp K cache [head_dim, n_cells, n_head_kv] has
// nb_channel = 2; its transposed V (flash-attn off) has nb_token = 2.
COCKTAIL_API int cocktail_pack_region(int precision, int part, void * dst, size_t dst_size, int n_tokens,
                                      int n_head_kv, int head_dim, const void * src, size_t src_nb_token,
                                      size_t src_nb_channel, size_t src_nb_head, int src_n_cells, const int * cells,
                                      int n_threads);

// Dequantizes a region buffer into float dst[n_head_kv][n_tokens][head_dim] (contiguous).
COCKTAIL_API int cocktail_dequant_region(int precision, int part, const void * src, size_t src_size, int n_tokens,
                                         int n_head_kv, int head_dim, float * dst);

// One region of the past context: n_tokens tokens (0 = empty) of one precision, K and V buffers as packed above.
struct cocktail_kv_region {
    int          precision;
    int          n_tokens;
    const void * k;
    const void * v;
};

// Mixed-region attention for n_q_tokens query tokens. Query head h reads KV head h / (n_head / n_head_kv).
// q and out: float32, element (token, head, channel) at base + token*nb_token + head*nb_head + channel*4.
// Regions are visible to every query token. The tail (n_tail fp16 tokens, e.g. query + generated tokens in
// llama.cpp's cache) has K element (token, head, channel) at tail_k + token*nb_token + head*nb_head +
// channel*2, V at tail_v + token*nb_token + channel*nb_channel + head*nb_head, and an additive mask
// (0 or -INFINITY) element (query token, tail token) at mask + i*mask_nb_row + j*(4 or 2 if mask_f16);
// mask NULL = all visible. Rows that see no token get zeros.
struct cocktail_attn_args {
    int                               n_q_tokens;
    int                               n_head;
    int                               n_head_kv;
    int                               head_dim;
    float                             kq_scale;
    const float *                     q;
    size_t                            q_nb_token;
    size_t                            q_nb_head;
    float *                           out;
    size_t                            out_nb_token;
    size_t                            out_nb_head;
    const struct cocktail_kv_region * regions;
    int                               n_regions;
    int                               n_tail;
    const void *                      tail_k;
    size_t                            tail_k_nb_token;
    size_t                            tail_k_nb_head;
    const void *                      tail_v;
    size_t                            tail_v_nb_token;
    size_t                            tail_v_nb_channel;
    size_t                            tail_v_nb_head;
    const void *                      mask;
    size_t                            mask_nb_row;
    int                               mask_f16;
};

// Validates args, then runs the attention on n_threads threads (1 = the calling thread only).
COCKTAIL_API int cocktail_attn_mixed_regions(const struct cocktail_attn_args * args, int n_threads);

// The same attention on the CUDA device (native/cocktail_attn_cuda.cu), for tests against the CPU op: every pointer
// in args is host memory; inputs are copied to the current device, the split-K kernels run, out is copied back.
// COCKTAIL_EUNSUPPORTED in a build without CUDA, or for head_dim not in {32, 64, 128, 256} or > 16 regions.
COCKTAIL_API int cocktail_attn_mixed_regions_cuda(const struct cocktail_attn_args * args);
// cocktail_pack_region on the CUDA device (the same bytes; compaction runs it in place on a layer whose cache is
// on the GPU): src, cells and dst are host memory, copied to and from the current device. No n_threads.
COCKTAIL_API int cocktail_pack_region_cuda(int precision, int part, void * dst, size_t dst_size, int n_tokens,
                                           int n_head_kv, int head_dim, const void * src, size_t src_nb_token,
                                           size_t src_nb_channel, size_t src_nb_head, int src_n_cells,
                                           const int * cells);
// Benchmark of the same call: inputs uploaded once, then *ms = mean time of one call (both kernels, CUDA events,
// n_iters calls after 3 warm-ups), *bytes_read = bytes one call reads (regions + fp16 tail + q),
// *copy_gbps = this device's device-to-device cudaMemcpy bandwidth (bytes read + written per second, 1 GiB).
// graph == 0: the calls are launched one after the other on the default stream; graph != 0: the n_iters calls are
// captured into one CUDA graph (on a stream of their own) and timed as one replay after a warm-up replay, as
// llama.cpp's CUDA backend replays a decode step's graph.
COCKTAIL_API int cocktail_attn_mixed_regions_cuda_bench(const struct cocktail_attn_args * args, int n_iters,
                                                        int graph, double * ms, double * bytes_read,
                                                        double * copy_gbps);

// CPU kernel variant: mode -1 queries, 0 forces the portable scalar code, 1 selects AVX2/FMA/F16C when the CPU has
// them. Returns the variant now in use (1 = AVX2, 0 = scalar). Process-wide; for tests and benchmarks.
COCKTAIL_API int cocktail_cpu_simd(int mode);
// ---- end formats and ops ----

// ---- segmented cache (plan, compaction) ----
// The Q2/Q4/F16 segmented KV cache of a llama_context (created by this libllama). Flow: cocktail_set_plan, prefill
// context + query (llama_decode), cocktail_compact, decode. Each sequence (0 .. n_seq_max-1) has its own plan and
// regions; a ubatch may mix sequences (each token attends to its sequence's regions + llama.cpp's cache under the
// mask). Limits (each an error, never a silent fallback): one KV stream for all sequences (kv_unified = true), F16
// K/V cache in host memory (CPU), the standard KV cache (iSWA: its full-attention layers), no softcap / ALiBi /
// attention sinks / KQ bias, no token shared by several sequences once one of them is compacted.
struct llama_context;

// One model layer's regions, indexed by enum cocktail_precision (F16, Q4, Q2). All zero for a layer outside the
// segmented cache (a sliding-window layer) or a context without a plan.
struct cocktail_layer_regions {
    int32_t segmented;    // 1: the layer's planned context K/V go into regions
    int32_t compacted;    // 1: they are there now (0: plan set, not compacted yet)
    int32_t n_tokens[3];  // tokens per region
    size_t  k_bytes[3];   // bytes of each region's K (cocktail_region_bytes)
    size_t  v_bytes[3];
};

// Plans seq_id before its prefill: the context occupies positions pos0 .. pos0+n_context_tokens-1 (pos0 = 1 after a
// BOS); chunk i (chunk_size tokens from pos0 + i*chunk_size) gets precisions[i] (enum cocktail_precision). Tokens
// after the n_chunks*chunk_size planned ones (the context's remainder, query, generated tokens) stay F16 in
// llama.cpp's cache. Replaces the context's previous plan and regions.
COCKTAIL_API int cocktail_set_plan(struct llama_context * ctx, int32_t seq_id, int32_t pos0, int32_t chunk_size,
                                   const uint8_t * precisions, int32_t n_chunks, int32_t n_context_tokens);
// Drops the plan and regions (the llama.cpp cache is left as it is).
COCKTAIL_API int cocktail_clear(struct llama_context * ctx, int32_t seq_id);
// After prefill: packs every layer's planned K/V rows into its regions (F16 chunks, then Q4, then Q2) and removes
// those positions from llama.cpp's cache; later ubatches attend to regions + cache through the graph hook.
COCKTAIL_API int cocktail_compact(struct llama_context * ctx, int32_t seq_id);
// Region sizes of sequence seq_id's model layer `layer` (0 .. n_layer-1).
COCKTAIL_API int cocktail_region_info(struct llama_context * ctx, int32_t seq_id, int32_t layer,
                                      struct cocktail_layer_regions * out);
// COCKTAIL_EINTERNAL with the message if a graph build or attention op of this context hit an error since the plan
// of any of its sequences.
COCKTAIL_API int cocktail_check(struct llama_context * ctx);
// Serializes seq_id's plan and regions (llama.cpp's own state does not hold them; save both). *size: dst's capacity
// in, bytes written out; dst NULL: *size gets the bytes needed. No plan: 0 bytes.
COCKTAIL_API int cocktail_state_get(struct llama_context * ctx, int32_t seq_id, uint8_t * dst, size_t * size);
// Restores what cocktail_state_get wrote for a context of the same model: replaces seq_id's plan and regions
// (restore llama.cpp's state of the same moment too). size 0 drops them (as cocktail_clear).
COCKTAIL_API int cocktail_state_set(struct llama_context * ctx, int32_t seq_id, const uint8_t * src, size_t size);
// llama.cpp allocates its KV cache for n_ctx tokens; after cocktail_compact the planned context's cells are free.
// Rebuilds the context's KV memory module with max(n_cells, cells in use) cells, rounded up to 256 and at most the
// context's n_ctx (per sequence), moving every sequence's cells across; n_cells <= 0 restores the full n_ctx size.
// iSWA models: the full-attention cache keeps at least the sliding-window cache's size (llama.cpp sizes that one
// from it). Later decodes rebuild their graphs. A token that does not fit makes llama_decode fail (no KV slot):
// grow the cache first. On error the context is left as it was.
COCKTAIL_API int cocktail_kv_resize(struct llama_context * ctx, int64_t n_cells);
// Cells of the context's standard KV cache (the full-attention cache of an iSWA pair): its size now, the cells in
// use (fullest stream) and its full size (n_ctx per sequence).
COCKTAIL_API int cocktail_kv_cells(const struct llama_context * ctx, int64_t * size, int64_t * used, int64_t * full);
// ---- end segmented cache ----

#ifdef __cplusplus
}
#endif
