// What every backend shares: the block index of exit heads; see backend.h.
#include "engine/backend.h"

#include <algorithm>

#include "engine/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_device.h"
#include "weights/common/error.h"

namespace gati {

ExitHeads::ExitHeads(std::vector<ExitHeadSpec> specs, int blocks)
    : specs_(std::move(specs)), by_block_(size_t(std::max(blocks, 0)), -1) {
  for (size_t i = 0; i < specs_.size(); ++i) {
    const ExitHeadSpec& s = specs_[i];
    if (s.block < 0 || s.block >= blocks) fail("exit head '", s.name, "': block ", s.block, " is not in the model");
    if (by_block_[size_t(s.block)] >= 0) fail("exit head '", s.name, "': two heads after block ", s.block);
    by_block_[size_t(s.block)] = int(i);
  }
}

std::shared_ptr<const BackendDevice> make_backend_device(const std::string& device, const Model& model, bool tf32) {
  CudaOptions cuda_options;
  cuda_options.tf32 = tf32;
  if (device == "cpu") return make_cpu_device(model);
  if (device == "cuda") return make_cuda_device(model, cuda_options);
  if (device == "auto") {
    // The first CUDA device when this build can run on it, else the CPU.
    const std::vector<cuda::DeviceInfo> devs = cuda::devices();
    if (!devs.empty() && devs.front().has_code) return make_cuda_device(model, cuda_options);
    return make_cpu_device(model);
  }
  fail("unknown device '", device, "' (valid: cpu, cuda, auto)");
}

}  // namespace gati
