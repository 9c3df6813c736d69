// The network input into an NHWC context: host NCHW (PyTorch's) to NHWC on the device.
#pragma once

#include <cuda_runtime.h>

namespace gati::cuda {

// in [n, c, h, w] -> out [n, h, w, c], both device memory.
void nchw_to_nhwc(const float* in, int n, int c, int h, int w, float* out, cudaStream_t stream);

}  // namespace gati::cuda
