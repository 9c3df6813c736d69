// Size arithmetic that cannot wrap: every product of user-controlled sizes
// (batch x height x width x channels, tensor shapes, arena sizes) goes
// through mul_size, which throws naming what was being sized.
#pragma once

#include <cstddef>
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

}  // namespace gati
