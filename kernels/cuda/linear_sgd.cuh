// One SGD step (momentum, weight decay) on a learned linear cache model in
// device memory: the GPU twin of kernels/cpu/linear_sgd_cpu.h, with the same
// contract (labels checked first, the step computed aside and committed only
// when every new weight is finite and within hp.max_weight).  Device code
// cannot throw: the outcome is a status word in mapped memory (SgdReport,
// kernels/exit_state.h) that the host reads after synchronising.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/exit_state.h"

namespace gati::cuda {

// Device scratch for one step of n samples.
struct SgdScratch {
  float* xs = nullptr;       // [n, dim] standardised features
  float* g = nullptr;        // [n, classes] dL/dz per sample
  float* next = nullptr;     // [2 * (classes * dim + classes)]: new velocity, then new parameters
  int32_t* flags = nullptr;  // [2] first bad label, first bad weight (INT32_MAX: none)
  double* loss = nullptr;    // [n] cross-entropy of each sample before the step
};

// features [n, dim] (pooled, not standardised) and labels [n], device memory;
// the report's loss is the mean of the samples' losses, summed in order.
void linear_sgd_step(const LinearHeadMut& h, const float* features, const int32_t* labels, int n, const SgdHyper& hp,
                     const SgdScratch& scratch, const SgdReport& report, cudaStream_t stream);

}  // namespace gati::cuda
