// Pooling on NHWC activations: the stem's max-pool and the global average
// pool before the classifier (the exit heads pool inside their own kernel).
#pragma once

#include <cuda_runtime.h>

#include "kernels/exit_state.h"

namespace gati::cuda {

// in [n, h, w, c] -> out [n, oh, ow, c]; padding never wins the max.
void max_pool_nhwc(const float* in, int n, int h, int w, int c, int kernel, int stride, int pad, float* out,
                   cudaStream_t stream);
// in [n, hw, c] -> out [n, c]: the mean over hw, summed in order p = 0..hw-1
// and scaled by 1/hw in float, as kernels/cpu/pool_cpu does.
void global_avg_pool_nhwc(const float* in, int n, int hw, int c, float* out, cudaStream_t stream);
// An exit's features: in [n, h, w, c] -> out [n, pool.features(c)], the
// arithmetic of kernels/cpu/pool_cpu's pool_features_nhwc (feature
// collection for cache building; the exit head pools the same way).
void pool_features_nhwc(const float* in, int n, int h, int w, int c, const PoolSpec& pool, float* out,
                        cudaStream_t stream);

}  // namespace gati::cuda
