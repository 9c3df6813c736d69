// Bias, residual and ReLU after a convolution; see epilogue.cuh.  The order
// of the adds is the CPU epilogue's: (conv + bias) + residual, then max(0, .).
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/epilogue.cuh"
#include "kernels/cuda/grid.cuh"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

// Element i's channel: i % c in NHWC, (i / hw) % c in NCHW.
template <Layout kLayout, bool kResidual, bool kRelu>
__global__ void epilogue_kernel(float* __restrict__ out, long total, int c, long hw, const float* __restrict__ bias,
                                const float* __restrict__ residual) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    const long ch = kLayout == Layout::kNhwc ? i % c : i / hw % c;
    float v = __fadd_rn(out[i], bias[ch]);
    if (kResidual) v = __fadd_rn(v, residual[i]);
    if (kRelu) v = fmaxf(v, 0.f);
    out[i] = v;
  }
}

template <Layout kLayout>
void launch_epilogue(float* out, long total, int c, long hw, const float* bias, const float* residual, bool relu,
                     cudaStream_t stream) {
  const int threads = 256;
  const unsigned blocks = grid_for(total, threads);
  if (residual && relu)
    epilogue_kernel<kLayout, true, true><<<blocks, threads, 0, stream>>>(out, total, c, hw, bias, residual);
  else if (residual)
    epilogue_kernel<kLayout, true, false><<<blocks, threads, 0, stream>>>(out, total, c, hw, bias, residual);
  else if (relu)
    epilogue_kernel<kLayout, false, true><<<blocks, threads, 0, stream>>>(out, total, c, hw, bias, residual);
  else
    epilogue_kernel<kLayout, false, false><<<blocks, threads, 0, stream>>>(out, total, c, hw, bias, residual);
}

}  // namespace

void bias_residual_relu(float* out, int n, long hw, int c, Layout layout, const float* bias, const float* residual,
                        bool relu, cudaStream_t stream) {
  if (n < 1 || hw < 1 || c < 1) fail("conv epilogue: bad shape (n ", n, ", ", hw, " pixels, ", c, " channels)");
  const long total = long(n) * hw * c;
  if (layout == Layout::kNchw)
    launch_epilogue<Layout::kNchw>(out, total, c, hw, bias, residual, relu, stream);
  else
    launch_epilogue<Layout::kNhwc>(out, total, c, hw, bias, residual, relu, stream);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
