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
    // Every backend's kernels read dim and classes worth of each vector.
    const size_t d = size_t(std::max(s.dim, 0)), k = size_t(std::max(s.classes, 0));
    if (s.dim < 1 || s.classes < 1 || s.mean.size() != d || s.inv_std.size() != d || s.weight.size() != d * k ||
        s.bias.size() != k)
      fail("exit head '", s.name, "': parameter sizes do not match dim ", s.dim, " and ", s.classes, " classes");
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
