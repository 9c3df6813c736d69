// The network input on the device: the transpose into an NHWC context (host
// NCHW is PyTorch's order), and the finiteness check of an input that
// arrived in device memory (a host input is checked on the host).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/exit_state.h"

namespace gati::cuda {

// in [n, c, h, w] FP32 -> out [n, h, w, c] in `precision`, both device memory.
void nchw_to_nhwc(const float* in, int n, int c, int h, int w, void* out, Precision precision, cudaStream_t stream);

// *first = min(*first, the index of x's first NaN or infinity); x is device
// memory of `n` floats, `first` memory the device writes (mapped), set by
// the caller beforehand (to n: none found).  Asynchronous.
void first_non_finite(const float* x, size_t n, unsigned long long* first, cudaStream_t stream);

}  // namespace gati::cuda
