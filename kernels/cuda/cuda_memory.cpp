// RAII for CUDA resources; see cuda_memory.h.
#include "kernels/cuda/cuda_memory.h"

#include <utility>

#include "kernels/cuda/cuda_check.cuh"
#include "weights/common/error.h"

namespace gati::cuda {

namespace {

[[noreturn]] void allocation_failed(cudaError_t err, const char* call, size_t bytes, const std::string& what) {
  cudaGetLastError();  // an allocation failure is not sticky; clear it
  size_t free_b = 0, total_b = 0;
  const bool known = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
  fail(call, " of ", bytes, " bytes for ", what, " failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")",
       known ? str_cat("; the device has ", free_b >> 20, " MiB free of ", total_b >> 20, " MiB") : std::string());
}

}  // namespace

DeviceBuffer::DeviceBuffer(size_t bytes, const std::string& what) { reserve(bytes, what); }

DeviceBuffer::~DeviceBuffer() {
  if (data_) cudaFree(data_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (data_) cudaFree(data_);
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::reserve(size_t bytes, const std::string& what) {
  if (bytes <= bytes_ && data_) return;
  if (data_) {
    // Refused while a graph is being captured: keep the buffer (no leak)
    // and say so; the caller's recording is then abandoned.
    const cudaError_t err = cudaFree(data_);
    if (err != cudaSuccess) {
      cudaGetLastError();
      fail("growing ", what, " to ", bytes, " bytes: cudaFree failed (", cudaGetErrorString(err),
           "); device memory cannot be reallocated during a CUDA graph capture");
    }
    data_ = nullptr;
    bytes_ = 0;
  }
  // cudaMalloc(0) returns nullptr; keep a real allocation so data() is a
  // valid, unique address.
  const size_t ask = bytes ? bytes : 256;
  const cudaError_t err = cudaMalloc(&data_, ask);
  if (err != cudaSuccess) {
    data_ = nullptr;
    allocation_failed(err, "cudaMalloc", ask, what);
  }
  bytes_ = ask;
}

MappedBuffer::MappedBuffer(size_t bytes, const std::string& what) {
  const size_t ask = bytes ? bytes : 256;
  const cudaError_t err = cudaHostAlloc(&data_, ask, cudaHostAllocMapped | cudaHostAllocPortable);
  if (err != cudaSuccess) {
    data_ = nullptr;
    allocation_failed(err, "cudaHostAlloc(mapped)", ask, what);
  }
  bytes_ = ask;
}

MappedBuffer::~MappedBuffer() {
  if (data_) cudaFreeHost(data_);
}

DeviceScope::DeviceScope(int device) {
  CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device)
    CUDA_CHECK(cudaSetDevice(device));
  else
    previous_ = -1;
}

DeviceScope::~DeviceScope() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

Stream::Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
Stream::~Stream() {
  if (stream_) cudaStreamDestroy(stream_);
}

Event::Event() { CUDA_CHECK(cudaEventCreate(&event_)); }
Event::~Event() {
  if (event_) cudaEventDestroy(event_);
}

DeviceBuffer upload(const void* host, size_t bytes, const std::string& what) {
  DeviceBuffer b(bytes, what);
  if (bytes) {
    CUDA_CHECK(cudaMemcpy(b.data(), host, bytes, cudaMemcpyHostToDevice));
    // From pageable memory cudaMemcpy may return once the data is staged;
    // the contexts' non-blocking streams do not wait for the legacy stream,
    // so wait here: weights and exit heads are complete before any use.
    CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  }
  return b;
}

}  // namespace gati::cuda
