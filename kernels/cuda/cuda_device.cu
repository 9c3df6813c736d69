// Device discovery and the CUDA error funnel; see cuda_device.h / cuda_check.cuh.
//
// has_code is probed with cudaFuncGetAttributes on an empty kernel: it fails
// with cudaErrorNoKernelImageForDevice when the binary was built without code
// for the device's architecture, which is the case we must report clearly
// rather than fail later in the first real launch.
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/cuda_device.h"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

__global__ void probe_kernel() {}

}  // namespace

void cuda_fail(cudaError_t err, const char* expr, const char* file, int line) {
  fail(expr, " failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") at ", file, ":", line);
}

bool built_with_cuda() { return true; }

std::vector<DeviceInfo> devices(std::string* why) {
  std::vector<DeviceInfo> out;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why) *why = str_cat("no usable CUDA device: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return out;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    DeviceInfo d;
    d.index = i;
    d.name = prop.name;
    d.major = prop.major;
    d.minor = prop.minor;
    d.memory_bytes = prop.totalGlobalMem;
    d.multiprocessors = prop.multiProcessorCount;
    cudaFuncAttributes attr;
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(i);
    d.has_code = cudaFuncGetAttributes(&attr, probe_kernel) == cudaSuccess;
    cudaGetLastError();
    cudaSetDevice(previous);
    out.push_back(d);
  }
  if (out.empty() && why) *why = "no CUDA device found";
  return out;
}

}  // namespace gati::cuda
