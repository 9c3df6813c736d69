// A fully connected layer: out[n, classes] = x[n, dim] * W^T + b, with W in
// PyTorch's [classes, dim] order: the model's classifier.
#pragma once

#include <cuda_runtime.h>

namespace gati::cuda {

void linear(const float* x, int n, int dim, const float* weight, const float* bias, int classes, float* out,
            cudaStream_t stream);

}  // namespace gati::cuda
