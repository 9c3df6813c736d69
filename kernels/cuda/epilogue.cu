// Bias, residual and ReLU after a convolution; see epilogue.cuh.  The order
// of the adds is the CPU epilogue's: (conv + bias) + residual, then max(0, .).
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/epilogue.cuh"
#include "kernels/cuda/grid.cuh"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

template <bool kResidual, bool kRelu>
__global__ void epilogue_kernel(float* __restrict__ out, long total, int c, const float* __restrict__ bias,
                                const float* __restrict__ residual) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    float v = __fadd_rn(out[i], bias[i % c]);
    if (kResidual) v = __fadd_rn(v, residual[i]);
    if (kRelu) v = fmaxf(v, 0.f);
    out[i] = v;
  }
}

void launch_epilogue(float* out, long total, int c, const float* bias, const float* residual, bool relu,
                     cudaStream_t stream) {
  const int threads = 256;
  const unsigned blocks = grid_for(total, threads);
  if (residual && relu)
    epilogue_kernel<true, true><<<blocks, threads, 0, stream>>>(out, total, c, bias, residual);
  else if (residual)
    epilogue_kernel<true, false><<<blocks, threads, 0, stream>>>(out, total, c, bias, residual);
  else if (relu)
    epilogue_kernel<false, true><<<blocks, threads, 0, stream>>>(out, total, c, bias, residual);
  else
    epilogue_kernel<false, false><<<blocks, threads, 0, stream>>>(out, total, c, bias, residual);
}

}  // namespace

void bias_residual_relu(float* out, long rows, int c, const float* bias, const float* residual, bool relu,
                        cudaStream_t stream) {
  if (rows < 1 || c < 1) fail("conv epilogue: bad shape (", rows, " rows, ", c, " channels)");
  launch_epilogue(out, rows * c, c, bias, residual, relu, stream);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
