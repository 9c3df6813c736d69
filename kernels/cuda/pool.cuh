// Pooling on NHWC or NCHW activations: the stem's max-pool and the global average
// pool before the classifier (the exit heads pool inside their own kernel).
#pragma once

#include <cuda_runtime.h>

#include "kernels/exit_state.h"

namespace gati::cuda {

// in (n, h, w, c) -> out (n, oh, ow, c), both in `layout`; padding never wins the max.
void max_pool(const float* in, int n, int h, int w, int c, Layout layout, int kernel, int stride, int pad, float* out,
              cudaStream_t stream);
// in (n, hw pixels, c) in `layout` -> out [n, c]: the mean over hw, summed
// in order p = 0..hw-1 and scaled by 1/hw in float, as kernels/cpu/pool_cpu does.
void global_avg_pool(const float* in, int n, int hw, int c, Layout layout, float* out, cudaStream_t stream);
// An exit's features: in (n, h, w, c) in `layout` -> out [n, pool.features(c)],
// the arithmetic of kernels/cpu/pool_cpu's pool_features_nhwc (feature
// collection for cache building; the exit head pools the same way).
void pool_features(const float* in, int n, int h, int w, int c, Layout layout, const PoolSpec& pool, float* out,
                   cudaStream_t stream);

}  // namespace gati::cuda
