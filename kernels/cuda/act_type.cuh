// Activations as FP32 floats or IEEE halves (Precision): loads give float,
// stores round to nearest even, and every op computes in FP32 between them.
#pragma once

#include <cuda_fp16.h>

#include "kernels/exit_state.h"

namespace gati::cuda {

__device__ __forceinline__ float load_act(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load_act(const __half* p, long i) { return __half2float(p[i]); }
__device__ __forceinline__ void store_act(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_act(__half* p, long i, float v) { p[i] = __float2half_rn(v); }

// Calls f(T{}) with T the activations' element type.
template <typename F>
void with_act_type(Precision p, F&& f) {
  if (p == Precision::kF16)
    f(__half{});
  else
    f(float{});
}

}  // namespace gati::cuda
