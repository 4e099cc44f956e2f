// Device memory of the segmented cache's CUDA side (declarations and contracts: cocktail_cuda.h).
#include "cocktail_cuda.h"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace cocktail {

void cuda_throw(int err, const std::string & what) {
    cudaGetLastError();
    throw std::runtime_error(what + ": " + cudaGetErrorString(static_cast<cudaError_t>(err)));
}

CudaDeviceScope::CudaDeviceScope(const void * near) {
    if (cudaError_t err = cudaGetDevice(&previous_); err != cudaSuccess) {
        cuda_throw(err, "no CUDA device");
    }
    if (near == nullptr) {
        return;
    }
    cudaPointerAttributes attr{};
    if (cudaError_t err = cudaPointerGetAttributes(&attr, near);
        err != cudaSuccess || attr.device < 0 || attr.type != cudaMemoryTypeDevice) {
        cudaGetLastError();
        throw std::runtime_error("the layer's cache is not in CUDA device memory");
    }
    if (cudaError_t err = cudaSetDevice(attr.device); err != cudaSuccess) {
        cuda_throw(err, "cudaSetDevice(" + std::to_string(attr.device) + ")");
    }
}

CudaDeviceScope::~CudaDeviceScope() {
    cudaSetDevice(previous_);
}

std::shared_ptr<uint8_t> cuda_alloc(size_t bytes, const void * near) {
    CudaDeviceScope scope(near);
    void *          ptr = nullptr;
    if (cudaError_t err = cudaMalloc(&ptr, bytes); err != cudaSuccess) {
        cuda_throw(err, "cudaMalloc of " + std::to_string(bytes) + " bytes");
    }
    return std::shared_ptr<uint8_t>(static_cast<uint8_t *>(ptr), [](uint8_t * q) { cudaFree(q); });
}

std::shared_ptr<uint8_t> cuda_upload(const uint8_t * src, size_t bytes, const void * near) {
    std::shared_ptr<uint8_t> out = cuda_alloc(bytes, near);
    if (cudaError_t err = cudaMemcpy(out.get(), src, bytes, cudaMemcpyHostToDevice); err != cudaSuccess) {
        cuda_throw(err, "copying a region to the GPU");
    }
    return out;
}

void cuda_download(uint8_t * dst, const uint8_t * src, size_t bytes) {
    if (cudaError_t err = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost); err != cudaSuccess) {
        cuda_throw(err, "copying a region from the GPU");
    }
}

void cuda_zero_async(void * dst, size_t bytes, void * stream) {
    cudaMemsetAsync(dst, 0, bytes, static_cast<cudaStream_t>(stream));
}

}  // namespace cocktail
