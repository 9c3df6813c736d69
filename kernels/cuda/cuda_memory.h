// RAII for the CUDA resources a backend holds: device buffers, mapped pinned
// host buffers, streams and events.
//
// Design decision: constructors throw gati::Error (an allocation failure says
// how many bytes were asked, for what, and how much the device had free);
// destructors never throw and ignore errors, because they also run while an
// exception unwinds.  Plain C++ over the CUDA runtime API, so host code can
// use them without nvcc.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace gati::cuda {

// Device memory (cudaMalloc).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, const std::string& what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  float* floats() const { return static_cast<float*>(data_); }
  size_t bytes() const { return bytes_; }
  // Grows (never shrinks) to at least `bytes`; the contents are not kept.
  // Synchronises the device when it reallocates (cudaFree does).
  void reserve(size_t bytes, const std::string& what);

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Pinned host memory mapped into the device's address space
// (cudaHostAllocMapped): kernels write it, the host reads it without a copy.
// With unified addressing the host pointer is also the device pointer.
class MappedBuffer {
 public:
  MappedBuffer(size_t bytes, const std::string& what);
  ~MappedBuffer();
  MappedBuffer(const MappedBuffer&) = delete;
  MappedBuffer& operator=(const MappedBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Makes `device` current for the calling thread and restores the previous
// one on exit: backend objects move between threads (session pools, server
// workers), and CUDA's current device is per thread.
class DeviceScope {
 public:
  explicit DeviceScope(int device);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = -1;
};

class Stream {
 public:
  Stream();  // non-blocking with respect to the legacy default stream
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class Event {
 public:
  Event();
  ~Event();
  Event(Event&& o) noexcept : event_(o.event_) { o.event_ = nullptr; }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// Upload `bytes` from host memory into a new device buffer (synchronous).
DeviceBuffer upload(const void* host, size_t bytes, const std::string& what);

}  // namespace gati::cuda
