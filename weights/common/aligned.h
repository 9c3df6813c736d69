// 64-byte aligned host memory (one cache line, one AVX-512 vector), owned by
// a unique_ptr so nothing leaks on an error path.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace gati {

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
using AlignedFloats = std::unique_ptr<float[], AlignedFree>;
using AlignedBytes = std::unique_ptr<unsigned char[], AlignedFree>;

constexpr size_t kHugePage = size_t(2) << 20;

// At least 64 bytes, rounded up to a multiple of 64; throws std::bad_alloc.
// From 2 MiB up, aligned to and rounded up to 2 MiB pages and (on Linux)
// marked for transparent huge pages, which Debian's default (THP "madvise")
// gives only to memory that asks: a batch-1 model streams each layer's
// weights from memory once per run, and with 4 KiB pages every 4 KiB of
// them costs a TLB miss.
inline void* aligned_alloc_64(size_t bytes) {
  const bool huge = bytes >= kHugePage;
  const size_t align = huge ? kHugePage : 64;
  const size_t rounded = bytes < 64 ? 64 : (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (huge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: a refusal leaves 4 KiB pages
#endif
  return p;
}
// For std::vector<T, AlignedAllocator<T>>: storage that vector loads of 64
// bytes read without splitting a cache line.
template <class T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(aligned_alloc_64(n * sizeof(T))); }
  void deallocate(T* p, size_t) { std::free(p); }
  template <class U>
  bool operator==(const AlignedAllocator<U>&) const {
    return true;
  }
};

using AlignedVector = std::vector<float, AlignedAllocator<float>>;

inline AlignedFloats aligned_floats(size_t n) {
  return AlignedFloats(static_cast<float*>(aligned_alloc_64(n * sizeof(float))));
}
inline AlignedBytes aligned_bytes(size_t n) { return AlignedBytes(static_cast<unsigned char*>(aligned_alloc_64(n))); }

}  // namespace gati
