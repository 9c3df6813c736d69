// Size arithmetic that cannot wrap: every product of user-controlled sizes
// (batch x height x width x channels, tensor shapes, arena sizes) goes
// through mul_size, which throws naming what was being sized.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "weights/common/error.h"

namespace gati {

inline size_t mul_size(size_t a, size_t b, const char* what) {
  if (a != 0 && b > std::numeric_limits<size_t>::max() / a) fail(what, ": size ", a, " x ", b, " overflows");
  return a * b;
}
inline size_t add_size(size_t a, size_t b, const char* what) {
  if (b > std::numeric_limits<size_t>::max() - a) fail(what, ": size ", a, " + ", b, " overflows");
  return a + b;
}

// Index of the first NaN or infinity in v[0, n), or n when every value is
// finite.  Inputs are tens of megabytes (ResNet-50 at batch 64: 38 MB), so
// the scan tests the exponent bits a block at a time, which compilers
// vectorise (std::isfinite with an early exit they do not: 4x slower), and
// looks inside a block only when it holds a bad value.
inline size_t first_non_finite(const float* v, size_t n) {
  constexpr size_t kBlock = 1024;              // a fixed trip count: vectorised at -O2 too
  constexpr uint32_t kExponent = 0x7f800000u;  // all ones: infinity or NaN
  auto bad_at = [v](size_t i) {
    uint32_t bits;
    std::memcpy(&bits, v + i, sizeof bits);
    return (bits & kExponent) == kExponent;
  };
  size_t start = 0;
  for (; start + kBlock <= n; start += kBlock) {
    uint32_t bad = 0;
    for (size_t i = 0; i < kBlock; ++i) bad |= uint32_t(bad_at(start + i));
    if (bad) break;
  }
  for (size_t i = start; i < n; ++i)  // the block holding a bad value, or the tail
    if (bad_at(i)) return i;
  return n;
}

// Copies v[0, n) to dst and returns first_non_finite(v, n), reading v from
// memory once: each piece is checked in dst right after it is copied, while
// it is still in the core's cache (a copy and then a scan read a 154 MB
// input, ResNet-50 at batch 256, twice from memory).  After a bad value dst
// is written up to the end of the piece that holds it.
inline size_t copy_checking_finite(float* dst, const float* v, size_t n) {
  constexpr size_t kPiece = size_t(32) << 10;  // 128 KB: well inside a core's L2
  for (size_t at = 0; at < n; at += kPiece) {
    const size_t m = std::min(kPiece, n - at);
    std::memcpy(dst + at, v + at, m * sizeof(float));
    const size_t i = first_non_finite(dst + at, m);
    if (i < m) return at + i;
  }
  return n;
}

}  // namespace gati
