// NCHW -> NHWC; see layout.cuh.  The input is small (a few channels), so one
// thread per output element, reading strided and writing coalesced, is enough.
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/grid.cuh"
#include "kernels/cuda/layout.cuh"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

__global__ void nchw_to_nhwc_kernel(const float* __restrict__ in, long total, int c, int hw, float* __restrict__ out) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    const int ch = int(i % c);
    const long pix = i / c;  // img * hw + p
    const long img = pix / hw, p = pix % hw;
    out[i] = in[(img * c + ch) * hw + p];
  }
}

void launch_nchw_to_nhwc(const float* in, long total, int c, int hw, float* out, cudaStream_t stream) {
  nchw_to_nhwc_kernel<<<grid_for(total, 256), 256, 0, stream>>>(in, total, c, hw, out);
}

}  // namespace

void nchw_to_nhwc(const float* in, int n, int c, int h, int w, float* out, cudaStream_t stream) {
  if (n < 1 || c < 1 || h < 1 || w < 1) fail("nchw_to_nhwc: bad shape [", n, ",", c, ",", h, ",", w, "]");
  launch_nchw_to_nhwc(in, long(n) * c * h * w, c, h * w, out, stream);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
