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
