// 64-byte aligned host memory (one cache line, one AVX-512 vector), owned by
// a unique_ptr so nothing leaks on an error path.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace gati {

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
using AlignedFloats = std::unique_ptr<float[], AlignedFree>;
using AlignedBytes = std::unique_ptr<unsigned char[], AlignedFree>;

// At least 64 bytes, rounded up to a multiple of 64; throws std::bad_alloc.
inline void* aligned_alloc_64(size_t bytes) {
  const size_t rounded = bytes < 64 ? 64 : (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw std::bad_alloc();
  return p;
}
inline AlignedFloats aligned_floats(size_t n) { return AlignedFloats(static_cast<float*>(aligned_alloc_64(n * sizeof(float)))); }
inline AlignedBytes aligned_bytes(size_t n) { return AlignedBytes(static_cast<unsigned char*>(aligned_alloc_64(n))); }

}  // namespace gati
