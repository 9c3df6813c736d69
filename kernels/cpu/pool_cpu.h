// Pooling and layout ops on the CPU (NHWC): the stem's max-pool, the global
// average pool in front of the classifier (and, later, at every exit point),
// and the NCHW -> NHWC conversion of user input.
#pragma once

#include "kernels/exit_state.h"

namespace gati::cpu {

// Padding counts as -inf, as in PyTorch.
void max_pool_nhwc(const float* in, int n, int h, int w, int c, int kernel, int stride, int pad, float* out);

// out[n, c] = mean over h*w of in[n, h, w, c]
void global_avg_pool_nhwc(const float* in, int n, int hw, int c, float* out);

// An exit's features: out[n, pool.features(c)] from in[n, h, w, c] as
// PoolSpec describes.  Each cell is summed row by row, left to right, and
// scaled by 1/count in float (the CUDA twin does the same), so grid 1 without
// max equals global_avg_pool_nhwc bit for bit.
void pool_features_nhwc(const float* in, int n, int h, int w, int c, const PoolSpec& pool, float* out);

void nchw_to_nhwc(const float* in, int n, int c, int h, int w, float* out);

}  // namespace gati::cpu
