#include "weights/common/int8_rows.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace gati {

float int8_row_scale(const float* row, int cols) {
  float largest = 0;
  for (int j = 0; j < cols; ++j) {
    if (!std::isfinite(row[j])) return 0;
    largest = std::max(largest, std::abs(row[j]));
  }
  if (largest == 0) return 1;
  int e;
  std::frexp(double(largest) / kInt8Max, &e);  // largest / 127 = f * 2^e, f in [0.5, 1)
  float s = std::ldexp(1.0f, e);               // > largest / 127
  if (std::ldexp(1.0f, e - 1) * kInt8Max >= largest) s = std::ldexp(1.0f, e - 1);  // largest / 127 a power of two
  // Not below 2^-24, a half's smallest step: rows of tiny weights (a class
  // never trained) stay halves exactly, as the CUDA backend reads them.
  s = std::max(s, std::ldexp(1.0f, -24));
  return std::isfinite(s) ? s : 0;
}

void round_rows_to_int8(float* w, int rows, int cols) {
  for (int r = 0; r < rows; ++r) {
    float* row = w + size_t(r) * size_t(cols);
    const float s = int8_row_scale(row, cols);
    if (s == 0) continue;
    for (int j = 0; j < cols; ++j) {
      const float v = std::nearbyint(row[j] / s) * s;
      row[j] = v == 0 ? 0.f : v;  // +0: an integer 0 reads back as +0
    }
  }
}

Int8Rows int8_rows_if_exact(const std::vector<float>& w, int rows, int cols) {
  if (rows <= 0 || cols <= 0 || w.size() != size_t(rows) * size_t(cols)) return {};
  Int8Rows out;
  out.q.resize(w.size());
  out.scale.resize(size_t(rows));
  for (int r = 0; r < rows; ++r) {
    const float* row = w.data() + size_t(r) * size_t(cols);
    const float s = int8_row_scale(row, cols);
    if (s == 0) return {};
    for (int j = 0; j < cols; ++j) {
      const float q = row[j] / s;
      if (q != std::nearbyint(q) || std::abs(q) > kInt8Max) return {};
      const float back = float(int8_t(q)) * s;                       // what a kernel computes from the integer
      if (std::memcmp(&back, &row[j], sizeof back) != 0) return {};  // -0.f and subnormals included
      out.q[size_t(r) * size_t(cols) + size_t(j)] = int8_t(q);
    }
    out.scale[size_t(r)] = s;
  }
  return out;
}

}  // namespace gati
