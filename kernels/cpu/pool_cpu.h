// Pooling and layout ops on the CPU (NHWC): the stem's max-pool, the global
// average pool in front of the classifier (and, later, at every exit point),
// and the NCHW -> NHWC conversion of user input.
#pragma once

namespace gati::cpu {

// Padding counts as -inf, as in PyTorch.
void max_pool_nhwc(const float* in, int n, int h, int w, int c, int kernel, int stride, int pad, float* out);

// out[n, c] = mean over h*w of in[n, h, w, c]
void global_avg_pool_nhwc(const float* in, int n, int hw, int c, float* out);

void nchw_to_nhwc(const float* in, int n, int c, int h, int w, float* out);

}  // namespace gati::cpu
