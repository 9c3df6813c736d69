// Gathering and publishing for on-device learning; see learn_cpu.h.
#include "kernels/cpu/learn_cpu.h"

#include <cstring>

#include "weights/common/half.h"

namespace gati::cpu {

void gather_rows(const float* features, int dim, const RowGather& g, float* x, int32_t* y, int offset) {
  const size_t D = size_t(dim);
  for (int i = 0; i < g.count; ++i) {
    std::memcpy(x + size_t(offset + i) * D, features + size_t(g.row[i]) * D, D * sizeof(float));
    y[offset + i] = g.label[i];
  }
}

void publish_linear(const float* weight, const float* bias, int dim, int classes, float* served_w, uint16_t* served_f16,
                    float* served_b) {
  const size_t total = size_t(dim) * size_t(classes);
  for (size_t j = 0; j < total; ++j) {
    const uint16_t h = float_to_half(weight[j]);
    served_f16[j] = h;
    served_w[j] = half_to_float(h);
  }
  std::memcpy(served_b, bias, size_t(classes) * sizeof(float));
}

}  // namespace gati::cpu
