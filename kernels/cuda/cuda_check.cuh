// Checking every CUDA call and launch.
//
// CUDA_CHECK(expr) and CUDA_CHECK_LAUNCH() funnel into one [[noreturn]]
// function that throws gati::Error with the failing expression, the error's
// name and text, and file:line, so a failure deep in a layer reads as
// "cudaMalloc(&p, 4096) failed: cudaErrorMemoryAllocation (out of memory) at ...".
#pragma once

#include <cuda_runtime.h>

namespace gati::cuda {

[[noreturn]] void cuda_fail(cudaError_t err, const char* expr, const char* file, int line);

}  // namespace gati::cuda

#define CUDA_CHECK(expr)                                                                         \
  do {                                                                                           \
    const cudaError_t gati_err_ = (expr);                                                        \
    if (gati_err_ != cudaSuccess) ::gati::cuda::cuda_fail(gati_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
