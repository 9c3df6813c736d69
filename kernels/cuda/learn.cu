// Gathering and publishing for on-device learning; see learn.cuh.
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/grid.cuh"
#include "kernels/cuda/learn.cuh"
#include "weights/common/error.h"
#include "weights/common/half.h"

namespace gati::cuda {
namespace {

constexpr int kThreads = 256;

// One block per gathered row.
__global__ void gather_rows_kernel(const float* __restrict__ features, int dim, RowGather g, float* __restrict__ x,
                                   int32_t* __restrict__ y, int offset) {
  const int i = blockIdx.x;
  const float* src = features + long(g.row[i]) * dim;
  float* dst = x + long(offset + i) * dim;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) dst[d] = src[d];
  if (threadIdx.x == 0) y[offset + i] = g.label[i];
}

__global__ void publish_linear_kernel(const float* __restrict__ weight, const float* __restrict__ bias, long total,
                                      int classes, float* __restrict__ served_w, uint16_t* __restrict__ served_f16,
                                      float* __restrict__ served_b) {
  for (long j = blockIdx.x * long(blockDim.x) + threadIdx.x; j < total; j += long(gridDim.x) * blockDim.x) {
    const uint16_t h = half_bits_of(__float_as_uint(weight[j]));
    served_f16[j] = h;
    served_w[j] = __half2float(__ushort_as_half(h));
    if (j < classes) served_b[j] = bias[j];
  }
}

void launch_gather_rows(const float* features, int dim, const RowGather& g, float* x, int32_t* y, int offset,
                        cudaStream_t stream) {
  gather_rows_kernel<<<unsigned(g.count), kThreads, 0, stream>>>(features, dim, g, x, y, offset);
}

void launch_publish_linear(const float* weight, const float* bias, long total, int classes, float* served_w,
                           uint16_t* served_f16, float* served_b, cudaStream_t stream) {
  publish_linear_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(weight, bias, total, classes, served_w,
                                                                            served_f16, served_b);
}

}  // namespace

void gather_rows(const float* features, int dim, const RowGather& g, float* x, int32_t* y, int offset,
                 cudaStream_t stream) {
  if (dim < 1 || offset < 0 || g.count < 0 || g.count > RowGather::kMax)
    fail("gather rows: bad list (dim ", dim, ", offset ", offset, ", ", g.count, " rows)");
  if (g.count == 0) return;
  launch_gather_rows(features, dim, g, x, y, offset, stream);
  CUDA_CHECK_LAUNCH();
}

void publish_linear(const float* weight, const float* bias, int dim, int classes, float* served_w, uint16_t* served_f16,
                    float* served_b, cudaStream_t stream) {
  if (dim < 1 || classes < 1) fail("publish head: bad shape (dim ", dim, ", classes ", classes, ")");
  // total >= classes, so the grid-stride loop covers the bias too.
  launch_publish_linear(weight, bias, long(dim) * classes, classes, served_w, served_f16, served_b, stream);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
