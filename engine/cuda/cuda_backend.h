// The CUDA backend's entry point: plain C++, so the runtime and the CLI
// include it without CUDA headers.  Builds without CUDA compile a stub that
// says so (cuda_backend_stub.cpp).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "engine/backend.h"

namespace gati {

struct CudaOptions {
  int device = 0;     // CUDA device index
  bool tf32 = false;  // allow TF32 tensor cores in FP32 convolutions (off: FP32 within 1e-4 of the CPU)
  // Activation layout; unset: GATI_CUDA_LAYOUT=nchw|nhwc if set, else NCHW
  // in FP32 and NHWC with TF32 (cuda_backend.cpp says why).
  std::optional<Layout> layout;
  // FP16 activations and convolution weights (tensor cores, FP32
  // accumulation in every op; NHWC); off: FP32.  Within 1e-2 of the CPU.
  bool fp16 = false;
  // The file where timed convolution choices are kept across restarts
  // (kernels/cuda/plan_store.h); unset: GATI_CUDNN_PLANS, else
  // ~/.cache/gati/cudnn-plans.json; "": in memory only.
  std::optional<std::string> plan_cache;
};

// Uploads the model's folded weights to the device; throws gati::Error when
// there is no usable device or this binary has no code for it.
std::shared_ptr<const BackendDevice> make_cuda_device(const Model& model, const CudaOptions& options = {});

}  // namespace gati
