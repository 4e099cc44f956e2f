#include "cocktail_api.h"

#include "cocktail_errors.h"
#include "ggml-backend.h"
#include "llama-ext.h"

#include <cinttypes>
#include <cstdio>
#include <string>

#ifndef COCKTAIL_VERSION
#    error "COCKTAIL_VERSION must be defined by the build"
#endif

namespace cocktail {

static thread_local std::string g_last_error;

int fail(int code, const std::string & msg) {
    g_last_error = msg;
    return code;
}

}  // namespace cocktail

static std::string json_escape(const char * s) {
    std::string out;
    for (; s && *s; ++s) {
        const char c = *s;
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            snprintf(buf, sizeof(buf), "\\u%04x", c);
            out += buf;
        } else {
            out += c;
        }
    }
    return out;
}

extern "C" {

const char * cocktail_version(void) {
    return COCKTAIL_VERSION;
}

const char * cocktail_build_info(void) {
    static const std::string info = std::string("{\"version\": \"") + COCKTAIL_VERSION +
                                    "\", \"upstream\": \"" + COCKTAIL_UPSTREAM + "\", \"ggml_version\": \"" +
                                    COCKTAIL_GGML_VERSION + "\", \"cuda\": " + (COCKTAIL_CUDA ? "true" : "false") +
                                    ", \"patches\": \"" + COCKTAIL_PATCHES + "\"}";
    return info.c_str();
}

const char * cocktail_system_info(void) {
    static const std::string line = std::string("COCKTAIL : VERSION = ") + COCKTAIL_VERSION +
                                    " | CUDA = " + (COCKTAIL_CUDA ? "1" : "0") + " | ";
    return line.c_str();
}

const char * cocktail_last_error(void) {
    return cocktail::g_last_error.c_str();
}

int cocktail_device_count(void) {
    return static_cast<int>(ggml_backend_dev_count());
}

int cocktail_device_info(int index, char * buf, size_t buf_size) {
    const int n = cocktail_device_count();
    if (index < 0 || index >= n) {
        return cocktail::fail(COCKTAIL_EINVAL,
                              "device index " + std::to_string(index) + " out of range [0, " + std::to_string(n) + ")");
    }
    if (buf == nullptr || buf_size == 0) {
        return cocktail::fail(COCKTAIL_EINVAL, "cocktail_device_info: empty output buffer");
    }
    ggml_backend_dev_t dev = ggml_backend_dev_get(static_cast<size_t>(index));
    size_t             mem_free = 0, mem_total = 0;
    ggml_backend_dev_memory(dev, &mem_free, &mem_total);
    const char * type = "other";
    switch (ggml_backend_dev_type(dev)) {
        case GGML_BACKEND_DEVICE_TYPE_CPU:
            type = "cpu";
            break;
        case GGML_BACKEND_DEVICE_TYPE_GPU:
            type = "gpu";
            break;
        case GGML_BACKEND_DEVICE_TYPE_IGPU:
            type = "igpu";
            break;
        default:
            break;
    }
    const int written = snprintf(buf, buf_size,
                                 "{\"name\": \"%s\", \"description\": \"%s\", \"type\": \"%s\", "
                                 "\"memory_free\": %zu, \"memory_total\": %zu}",
                                 json_escape(ggml_backend_dev_name(dev)).c_str(),
                                 json_escape(ggml_backend_dev_description(dev)).c_str(), type, mem_free, mem_total);
    if (written < 0 || static_cast<size_t>(written) >= buf_size) {
        return cocktail::fail(COCKTAIL_EINVAL, "cocktail_device_info: buffer of " + std::to_string(buf_size) +
                                                   " bytes is too small");
    }
    return COCKTAIL_OK;
}

int cocktail_memory_bytes(const struct llama_context * ctx, size_t * model, size_t * context, size_t * compute) {
    if (ctx == nullptr || model == nullptr || context == nullptr || compute == nullptr) {
        return cocktail::fail(COCKTAIL_EINVAL, "cocktail_memory_bytes: null context or output pointer");
    }
    *model = *context = *compute = 0;
    for (const auto & [buft, data] : llama_get_memory_breakdown(ctx)) {
        (void) buft;
        *model += data.model;
        *context += data.context;
        *compute += data.compute;
    }
    return COCKTAIL_OK;
}

}  // extern "C"
