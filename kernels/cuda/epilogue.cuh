// The convolution epilogue where cuDNN does not fuse it: out = act(out + bias
// + residual), in place on the convolution's output.
#pragma once

#include <cuda_runtime.h>

#include "kernels/exit_state.h"

namespace gati::cuda {

// out (n, hw pixels, c) in `layout`, bias [c], residual like out or null.
void bias_residual_relu(float* out, int n, long hw, int c, Layout layout, const float* bias, const float* residual,
                        bool relu, cudaStream_t stream);

}  // namespace gati::cuda
