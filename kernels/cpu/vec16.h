// Sixteen floats as one GCC vector (one AVX-512 register with -march=native
// on such a machine, two or four narrower ones elsewhere), and unaligned
// loads and stores of them: what the CPU kernels' inner loops are written in.
#pragma once

#include <cstring>

namespace gati::cpu {

typedef float v16 __attribute__((vector_size(64)));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

}  // namespace gati::cpu
