// make_cuda_device for builds without CUDA (GATI_CUDA=OFF, or no nvcc/cuDNN).
#include "engine/cuda/cuda_backend.h"
#include "weights/common/error.h"

namespace gati {

std::shared_ptr<const BackendDevice> make_cuda_device(const Model&, const CudaOptions&) {
  fail(
      "device 'cuda': this build has no CUDA backend (configured with GATI_CUDA=OFF or without nvcc and cuDNN); "
      "use --device cpu");
}

}  // namespace gati
