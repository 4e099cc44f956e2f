// Mixed-region attention on the CPU: exact softmax over Q2/Q4/F16 regions + an fp16 tail (contract in README.md).
#pragma once

#include "cocktail_api.h"

namespace cocktail {

// COCKTAIL_OK, or fail(COCKTAIL_EINVAL, ...) naming the bad field. Call once before the _part() calls.
int attn_mixed_regions_check(const cocktail_attn_args & args);

// Number of independent work items (tiles of up to 16 (query token, head) rows of one KV head) for nth threads.
int attn_mixed_regions_items(const cocktail_attn_args & args, int nth);

// Computes a disjoint share of the output rows; calling it with ith = 0..nth-1 (any order, concurrently, no
// barriers) covers all of them. A ggml custom op passes its (ith, nth). Preconditions: the check passed.
void attn_mixed_regions_part(const cocktail_attn_args & args, int ith, int nth);

// Check + run on n_threads std::threads (the calling thread is one of them).
int attn_mixed_regions(const cocktail_attn_args & args, int n_threads);

// true when the AVX2/FMA/F16C kernels are in use (see cocktail_cpu_simd()).
bool cpu_simd_enabled();

}  // namespace cocktail
