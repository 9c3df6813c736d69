// Freeze's approximate caches on the CPU; see distance_head_cpu.h.
#include "kernels/cpu/distance_head_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/exit_head_cpu.h"
#include "kernels/cpu/memory_cpu.h"
#include "kernels/cpu/pool_cpu.h"
#include "kernels/cpu/threads.h"

namespace gati::cpu {

int nearest_keys(const DistanceHeadView& h, const float* y, int32_t* idx, float* d2) {
  const int k = std::min(h.neighbours, h.entries);
  if (k < 1) return 0;
  int have = 0;
  for (int j = 0; j < h.entries; ++j) {
    const float d = squared_distance(y, h.keys + size_t(j) * size_t(h.reduced), h.reduced);
    if (have == k && !(d < d2[k - 1])) continue;  // not nearer than the k-th: a later index loses ties
    int at = have < k ? have++ : k - 1;
    while (at > 0 && d < d2[at - 1]) {
      d2[at] = d2[at - 1];
      idx[at] = idx[at - 1];
      --at;
    }
    d2[at] = d;
    idx[at] = j;
  }
  return have;
}

int vote_neighbours(const DistanceHeadView& h, const int32_t* idx, const float* d2, int k, float* confidence) {
  thread_local std::vector<double> score;
  thread_local std::vector<int> count;
  score.assign(size_t(h.classes), 0.0);
  count.assign(size_t(h.classes), 0);
  for (int j = 0; j < k; ++j) {
    const int label = h.labels[idx[j]];
    ++count[size_t(label)];
    score[size_t(label)] += double(h.share[idx[j]]) / std::sqrt(std::max(double(d2[j]), 1e-12));
  }
  int best = -1;
  double best_c = 0;
  for (int i = 0; i < h.classes; ++i) {
    if (count[size_t(i)] == 0) continue;
    const double c = double(count[size_t(i)]) / double(k) * score[size_t(i)];
    if (best < 0 || c > best_c) {
      best = i;
      best_c = c;
    }
  }
  *confidence = best < 0 ? 0.f : float(best_c / (1.0 + best_c));
  return best;
}

int distance_head_predict(const DistanceHeadView& h, const float* pooled, float* confidence) {
  thread_local std::vector<float> x, y, d2;
  thread_local std::vector<int32_t> idx;
  x.resize(size_t(h.dim));
  y.resize(size_t(h.reduced));
  d2.resize(kMaxNeighbours);
  idx.resize(kMaxNeighbours);
  for (int d = 0; d < h.dim; ++d) x[size_t(d)] = (pooled[d] - h.mean[d]) * h.inv_std[d];
  for (int r = 0; r < h.reduced; ++r)
    y[size_t(r)] = lane_dot(h.projection + size_t(r) * size_t(h.dim), x.data(), h.dim);
  const int k = nearest_keys(h, y.data(), idx.data(), d2.data());
  return vote_neighbours(h, idx.data(), d2.data(), k, confidence);
}

void exit_head_distance(const float* act, int n, int height, int width, int c, const DistanceHeadView& h, int exit_id,
                        const ExitState& st, int pos, float* pooled) {
  pool_features_nhwc(act, n, height, width, c, h.pool, pooled);
  exit_head_distance_pooled(pooled, n, h, exit_id, st, pos);
}

void exit_head_distance_pooled(const float* pooled, int n, const DistanceHeadView& h, int exit_id, const ExitState& st,
                               int pos) {
  const bool wide = size_t(n) * size_t(h.entries) * size_t(h.reduced) > 262144;
  parallel_for(n, wide && n > 1, [&](int row) {
    float conf;
    const int label = distance_head_predict(h, pooled + size_t(row) * size_t(h.dim), &conf);
    record_decision(st, pos, row, exit_id, label >= 0 && conf >= h.threshold, label, conf);
  });
}

}  // namespace gati::cpu
