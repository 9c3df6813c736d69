// What the fuzz targets share: the fuzzer's bytes as a file on disk (the
// readers take paths), and the rule they enforce: a reader either accepts
// its input or throws gati::Error.  Any other exception (std::bad_alloc from
// an absurd size, a JSON library error that escaped unnamed) aborts, and
// AddressSanitizer/UBSan report memory errors and undefined behaviour.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>

#include "loaders/fashion_mnist.h"
#include "weights/common/error.h"

namespace gati::fuzz {

// A per-process scratch path; the file is rewritten for every input.
inline std::string scratch_file(const std::string& name) {
  static const std::string dir = [] {
    std::string d = "/tmp/gati_fuzz_" + std::to_string(::getpid());
    std::string cmd = "mkdir -p " + d;
    if (std::system(cmd.c_str()) != 0) std::abort();
    return d;
  }();
  return dir + "/" + name;
}

inline void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  if (!f) std::abort();
}

// The data set traces refer to in the trace fuzzer and its seed: 50 4x4
// grey images of 5 classes, named "tiny".
inline Dataset tiny_dataset() {
  Dataset s;
  s.name = "tiny";
  s.n = 50;
  s.c = 1;
  s.h = s.w = 4;
  s.classes = 5;
  s.images.assign(50 * 16, 0.5f);
  for (int i = 0; i < 50; ++i) s.labels.push_back(i % 5);
  return s;
}

template <class F>
int only_clear_errors(F&& reader) {
  try {
    reader();
  } catch (const Error&) {
    // a clear, named error: the expected outcome for damaged input
  } catch (const std::exception& e) {
    std::fprintf(stderr, "reader threw something other than gati::Error: %s\n", e.what());
    std::abort();
  }
  return 0;
}

}  // namespace gati::fuzz
