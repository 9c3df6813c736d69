// The input's transpose and finiteness check; see layout.cuh.  The input is
// small (a few channels), so one thread per output element, reading strided
// and writing coalesced, is enough for the transpose.  The check tests the
// exponent bits (all ones: NaN or infinity), as the host's first_non_finite
// does, and keeps the smallest index with an atomic min.
#include "kernels/cuda/act_type.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/grid.cuh"
#include "kernels/cuda/layout.cuh"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

template <typename T>
__global__ void nchw_to_nhwc_kernel(const float* __restrict__ in, long total, int c, int hw, T* __restrict__ out) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    const int ch = int(i % c);
    const long pix = i / c;  // img * hw + p
    const long img = pix / hw, p = pix % hw;
    store_act(out, i, in[(img * c + ch) * hw + p]);
  }
}

__global__ void first_non_finite_kernel(const float* __restrict__ x, unsigned long long n, unsigned long long* first) {
  for (unsigned long long i = blockIdx.x * 1ull * blockDim.x + threadIdx.x; i < n; i += 1ull * gridDim.x * blockDim.x)
    if ((__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u) atomicMin(first, i);
}

template <typename T>
void launch_nchw_to_nhwc(const float* in, long total, int c, int hw, T* out, cudaStream_t stream) {
  nchw_to_nhwc_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(in, total, c, hw, out);
}

void launch_first_non_finite(const float* x, size_t n, unsigned long long* first, cudaStream_t stream) {
  first_non_finite_kernel<<<grid_for(long(n), 256), 256, 0, stream>>>(x, n, first);
}

}  // namespace

void first_non_finite(const float* x, size_t n, unsigned long long* first, cudaStream_t stream) {
  if (n == 0) return;
  launch_first_non_finite(x, n, first, stream);
  CUDA_CHECK_LAUNCH();
}

void nchw_to_nhwc(const float* in, int n, int c, int h, int w, void* out, Precision precision, cudaStream_t stream) {
  if (n < 1 || c < 1 || h < 1 || w < 1) fail("nchw_to_nhwc: bad shape [", n, ",", c, ",", h, ",", w, "]");
  with_act_type(precision, [&](auto tag) {
    using T = decltype(tag);
    launch_nchw_to_nhwc(in, long(n) * c * h * w, c, h * w, static_cast<T*>(out), stream);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
