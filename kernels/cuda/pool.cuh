// Pooling on NHWC or NCHW activations: the stem's max-pool and the global average
// pool before the classifier (the exit heads pool inside their own kernel).
#pragma once

#include <cuda_runtime.h>

#include "kernels/exit_state.h"

namespace gati::cuda {

// Activations (in, and the max-pool's out) are in `layout` and `precision`;
// the pooled outputs [n, features] are FP32.
//
// in (n, h, w, c) -> out (n, oh, ow, c); padding never wins the max.
void max_pool(const void* in, int n, int h, int w, int c, Layout layout, Precision precision, int kernel, int stride,
              int pad, void* out, cudaStream_t stream);
// in (n, hw pixels, c) -> out [n, c]: the mean over hw, summed in order
// p = 0..hw-1 and scaled by 1/hw in float, as kernels/cpu/pool_cpu does.
void global_avg_pool(const void* in, int n, int hw, int c, Layout layout, Precision precision, float* out,
                     cudaStream_t stream);
// An exit's features: in (n, h, w, c) -> out [n, pool.features(c)], the
// arithmetic of kernels/cpu/pool_cpu's pool_features_nhwc (feature
// collection for cache building; the exit head pools the same way).
void pool_features(const void* in, int n, int h, int w, int c, Layout layout, Precision precision, const PoolSpec& pool,
                   float* out, cudaStream_t stream);

}  // namespace gati::cuda
