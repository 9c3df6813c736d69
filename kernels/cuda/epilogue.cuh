// The convolution epilogue where cuDNN does not fuse it: out = act(out + bias
// + residual), in place on the convolution's output.
#pragma once

#include <cuda_runtime.h>

#include "kernels/exit_state.h"

namespace gati::cuda {

// out (n, hw pixels, c) in `layout` and `precision`, bias [c] and residual
// (like out, or null) in the same precision; computed in FP32.
void bias_residual_relu(void* out, int n, long hw, int c, Layout layout, Precision precision, const void* bias,
                        const void* residual, bool relu, cudaStream_t stream);

}  // namespace gati::cuda
