// Bias, residual and ReLU after a convolution; see epilogue.cuh.  The order
// of the adds is the CPU epilogue's: (conv + bias) + residual, then max(0, .).
#include "kernels/cuda/act_type.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/epilogue.cuh"
#include "kernels/cuda/grid.cuh"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

// Element i's channel: i % c in NHWC, (i / hw) % c in NCHW.
template <typename T, Layout kLayout, bool kResidual, bool kRelu>
__global__ void epilogue_kernel(T* __restrict__ out, long total, int c, long hw, const T* __restrict__ bias,
                                const T* __restrict__ residual) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    const long ch = kLayout == Layout::kNhwc ? i % c : i / hw % c;
    float v = __fadd_rn(load_act(out, i), load_act(bias, ch));
    if (kResidual) v = __fadd_rn(v, load_act(residual, i));
    if (kRelu) v = fmaxf(v, 0.f);
    store_act(out, i, v);
  }
}

template <typename T, Layout kLayout>
void launch_epilogue(T* out, long total, int c, long hw, const T* bias, const T* residual, bool relu,
                     cudaStream_t stream) {
  const int threads = 256;
  const unsigned blocks = grid_for(total, threads);
  if (residual && relu)
    epilogue_kernel<T, kLayout, true, true><<<blocks, threads, 0, stream>>>(out, total, c, hw, bias, residual);
  else if (residual)
    epilogue_kernel<T, kLayout, true, false><<<blocks, threads, 0, stream>>>(out, total, c, hw, bias, residual);
  else if (relu)
    epilogue_kernel<T, kLayout, false, true><<<blocks, threads, 0, stream>>>(out, total, c, hw, bias, residual);
  else
    epilogue_kernel<T, kLayout, false, false><<<blocks, threads, 0, stream>>>(out, total, c, hw, bias, residual);
}

}  // namespace

void bias_residual_relu(void* out, int n, long hw, int c, Layout layout, Precision precision, const void* bias,
                        const void* residual, bool relu, cudaStream_t stream) {
  if (n < 1 || hw < 1 || c < 1) fail("conv epilogue: bad shape (n ", n, ", ", hw, " pixels, ", c, " channels)");
  const long total = long(n) * hw * c;
  with_act_type(precision, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    const T* b = static_cast<const T*>(bias);
    const T* r = static_cast<const T*>(residual);
    if (layout == Layout::kNchw)
      launch_epilogue<T, Layout::kNchw>(o, total, c, hw, b, r, relu, stream);
    else
      launch_epilogue<T, Layout::kNhwc>(o, total, c, hw, b, r, relu, stream);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
