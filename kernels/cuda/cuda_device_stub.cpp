// Device discovery for builds without CUDA (GATI_CUDA=OFF or no nvcc).
#include "kernels/cuda/cuda_device.h"

namespace gati::cuda {

bool built_with_cuda() { return false; }

std::vector<DeviceInfo> devices(std::string* why) {
  if (why) *why = "this build has no CUDA support (configured with GATI_CUDA=OFF or without nvcc)";
  return {};
}

}  // namespace gati::cuda
