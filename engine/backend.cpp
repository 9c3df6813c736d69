// What every backend shares: the block index of exit heads; see backend.h.
#include "engine/backend.h"

#include <algorithm>

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

std::shared_ptr<const BackendDevice> make_backend_device(const std::string& device, const Model& model) {
  if (device == "cpu" || device == "auto") return make_cpu_device(model);
  if (device == "cuda") fail("device 'cuda': this build has no CUDA backend yet (valid: cpu, auto)");
  fail("unknown device '", device, "' (valid: cpu, cuda, auto)");
}

}  // namespace gati
