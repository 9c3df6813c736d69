// What CUDA can offer this process: built with CUDA or not, devices, and
// whether this binary carries code for them.  Plain C++ (no CUDA headers), so
// the CLI and services can ask without a CUDA toolchain.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace gati::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;
  size_t memory_bytes = 0;
  int multiprocessors = 0;
  bool has_code = false;  // this binary has a kernel image for the device
};

bool built_with_cuda();
// Devices visible to this process; empty (never an exception) when there are
// none.  *why, when given, receives the reason in one line.
std::vector<DeviceInfo> devices(std::string* why = nullptr);

}  // namespace gati::cuda
