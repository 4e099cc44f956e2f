// cocktail-gguf C API: what our libllama exports beyond upstream llama.h.
// Conventions: functions return 0 on success and a negative code on error; the message of the
// last error on this thread is cocktail_last_error(). Nothing here aborts on bad input.
#pragma once

#include <stddef.h>

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

#ifdef __cplusplus
}
#endif
