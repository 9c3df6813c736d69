// The classifier; see linear.cuh.
//
// One warp per output: lanes stride over dim (coalesced reads of one weight
// row and one feature row), then a shuffle reduction.  At batch 1 the layer
// is a matrix-vector product bound by reading W once, which this does at full
// width; cuBLAS is the candidate for large batches (issue: GPU speed).
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/linear.cuh"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

__global__ void linear_kernel(const float* __restrict__ x, int n, int dim, const float* __restrict__ w,
                              const float* __restrict__ b, int classes, float* __restrict__ out) {
  const long warp = (blockIdx.x * long(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= long(n) * classes) return;
  const int row = int(warp / classes), k = int(warp % classes);
  const float* xr = x + long(row) * dim;
  const float* wr = w + long(k) * dim;
  float s = 0.f;
  for (int d = lane; d < dim; d += 32) s = fmaf(xr[d], wr[d], s);
  for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) out[warp] = s + b[k];
}

void launch_linear(const float* x, int n, int dim, const float* w, const float* b, int classes, float* out,
                   cudaStream_t stream) {
  const int threads = 256;
  const long warps = long(n) * classes;
  const long blocks = (warps * 32 + threads - 1) / threads;
  linear_kernel<<<unsigned(blocks), threads, 0, stream>>>(x, n, dim, w, b, classes, out);
}

}  // namespace

void linear(const float* x, int n, int dim, const float* weight, const float* bias, int classes, float* out,
            cudaStream_t stream) {
  if (n < 1 || dim < 1 || classes < 1) fail("linear: bad shape (n ", n, ", dim ", dim, ", classes ", classes, ")");
  if (long(n) * classes * 32 / 256 + 1 > 2147483647L) fail("linear: ", n, " x ", classes, " outputs is too many");
  launch_linear(x, n, dim, weight, bias, classes, out, stream);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
