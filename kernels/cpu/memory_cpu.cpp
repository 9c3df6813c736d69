// The memory of recent answers on the CPU; see memory_cpu.h.
#include "kernels/cpu/memory_cpu.h"

#include <cstring>

#include "kernels/cpu/pool_cpu.h"

namespace gati::cpu {

float squared_distance(const float* a, const float* b, int dim) {
  constexpr int kLanes = 16;
  const int full = dim / kLanes * kLanes;
  float lane[kLanes] = {};
  for (int d = 0; d < full; d += kLanes)
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const float e = a[d + l] - b[d + l];
      lane[l] += e * e;
    }
  for (int d = full; d < dim; ++d) {
    const float e = a[d] - b[d];
    lane[d - full] += e * e;
  }
  float s = 0;
  for (int l = 0; l < kLanes; ++l) s += lane[l];
  return s;
}

int nearest_entry(const float* q, const float* keys, int entries, int dim, float* dist) {
  int best = -1;
  for (int k = 0; k < entries; ++k) {
    const float d = squared_distance(q, keys + size_t(k) * size_t(dim), dim);
    if (best < 0 || d < *dist) {
      best = k;
      *dist = d;
    }
  }
  return best;
}

void memory_lookup(const float* act, int n, int height, int width, int c, const MemoryView& m, int exit_id,
                   const ExitState& st, int pos, float* pooled) {
  pool_features_nhwc(act, n, height, width, c, m.pool, pooled);
  memory_lookup_pooled(pooled, n, m, exit_id, st, pos);
}

void memory_lookup_pooled(const float* pooled, int n, const MemoryView& m, int exit_id, const ExitState& st, int pos) {
  const int entries = m.fill[0];
  for (int row = 0; row < n; ++row) {
    const int sample = st.position[pos][row];
    const float* p = pooled + size_t(row) * size_t(m.dim);
    float* x = m.pending + size_t(sample) * size_t(m.dim);
    for (int d = 0; d < m.dim; ++d) x[d] = (p[d] - m.mean[d]) * m.inv_std[d];
    float best_d = 0;
    const int best = nearest_entry(x, m.keys, entries, m.dim, &best_d);
    const bool hit = best >= 0 && best_d <= m.threshold;
    st.hit[row] = hit ? 1 : 0;
    if (hit) {
      st.exit[sample] = exit_id;
      st.source[sample] = kByMemory;
      st.label[sample] = m.labels[best];
      st.confidence[sample] = m.confidence[best];
    }
  }
}

void memory_insert(const MemoryView& m, const ExitState& st, int n) {
  for (int sample = 0; sample < n; ++sample) {
    if (st.exit[sample] != kFullModel || !(st.confidence[sample] >= m.min_confidence)) continue;
    const int slot = m.fill[1];
    std::memcpy(m.keys + size_t(slot) * size_t(m.dim), m.pending + size_t(sample) * size_t(m.dim),
                size_t(m.dim) * sizeof(float));
    m.labels[slot] = st.label[sample];
    m.confidence[slot] = st.confidence[sample];
    m.fill[1] = (slot + 1) % m.capacity;
    if (m.fill[0] < m.capacity) ++m.fill[0];
  }
}

}  // namespace gati::cpu
