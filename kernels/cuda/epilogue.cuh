// The convolution epilogue where cuDNN does not fuse it: out = act(out + bias
// + residual), NHWC, in place on the convolution's output.
#pragma once

#include <cuda_runtime.h>

namespace gati::cuda {

// out [rows, c] (rows = n*h*w), bias [c], residual [rows, c] or null.
void bias_residual_relu(float* out, long rows, int c, const float* bias, const float* residual, bool relu,
                        cudaStream_t stream);

}  // namespace gati::cuda
