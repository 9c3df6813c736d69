// Exit-point ops on the CPU; see exit_head_cpu.h.
//
// Each row is computed on its own in a fixed order, so a sample's exit,
// label and confidence do not depend on which other samples share its batch.
#include "kernels/cpu/exit_head_cpu.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/pool_cpu.h"

namespace gati::cpu {

int top_softmax(const float* z, int classes, float* confidence) {
  int best = 0;
  for (int k = 1; k < classes; ++k)
    if (z[k] > z[best]) best = k;
  double sum = 0;
  for (int k = 0; k < classes; ++k) sum += std::exp(double(z[k]) - double(z[best]));
  *confidence = float(1.0 / sum);
  return best;
}

int softmax(const float* z, int classes, float* probs) {
  int best = 0;
  for (int k = 1; k < classes; ++k)
    if (z[k] > z[best]) best = k;
  double sum = 0;
  for (int k = 0; k < classes; ++k) sum += std::exp(double(z[k]) - double(z[best]));
  for (int k = 0; k < classes; ++k) probs[k] = float(std::exp(double(z[k]) - double(z[best])) / sum);
  return best;
}

void begin_exits(const ExitState& st, int n, int classes) {
  for (int i = 0; i < n; ++i) {
    st.position[0][i] = i;
    st.hit[i] = 0;
    st.exit[i] = kStillRunning;
    st.label[i] = -1;
    st.confidence[i] = 0.f;
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (size_t i = 0; i < size_t(n) * size_t(classes); ++i) st.logits[i] = nan;
  *st.alive = n;
}

void linear_head_scores(const LinearHeadView& h, const float* pooled, float* z) {
  thread_local std::vector<float> xs;
  xs.resize(size_t(h.dim));
  for (int d = 0; d < h.dim; ++d) xs[size_t(d)] = (pooled[d] - h.mean[d]) * h.inv_std[d];
  for (int k = 0; k < h.classes; ++k) {
    const float* w = h.weight + size_t(k) * size_t(h.dim);
    float s = h.bias[k];
    for (int d = 0; d < h.dim; ++d) s += w[d] * xs[size_t(d)];
    z[k] = s;
  }
}

void exit_head_linear(const float* act, int n, int hw, const LinearHeadView& h, int exit_id, const ExitState& st,
                      int pos, float* pooled) {
  global_avg_pool_nhwc(act, n, hw, h.dim, pooled);
  std::vector<float> z(size_t(h.classes));
  for (int row = 0; row < n; ++row) {
    linear_head_scores(h, pooled + size_t(row) * size_t(h.dim), z.data());
    float conf;
    const int label = top_softmax(z.data(), h.classes, &conf);
    const bool hit = conf >= h.threshold;
    st.hit[row] = hit ? 1 : 0;
    if (hit) {
      const int sample = st.position[pos][row];
      st.exit[sample] = exit_id;
      st.label[sample] = label;
      st.confidence[sample] = conf;
    }
  }
}

void compact_rows(const float* in, int n, size_t row_floats, const ExitState& st, int pos_in, int pos_out,
                  float* out) {
  int alive = 0;
  for (int row = 0; row < n; ++row) {
    if (st.hit[row]) continue;
    std::memcpy(out + size_t(alive) * row_floats, in + size_t(row) * row_floats, row_floats * sizeof(float));
    st.position[pos_out][alive] = st.position[pos_in][row];
    ++alive;
  }
  *st.alive = alive;
}

void finish_full_model(const float* logits, int n, int classes, const ExitState& st, int pos) {
  for (int row = 0; row < n; ++row) {
    const int sample = st.position[pos][row];
    const float* z = logits + size_t(row) * size_t(classes);
    std::memcpy(st.logits + size_t(sample) * size_t(classes), z, size_t(classes) * sizeof(float));
    float conf;
    st.label[sample] = top_softmax(z, classes, &conf);
    st.confidence[sample] = conf;
    st.exit[sample] = kFullModel;
  }
}

}  // namespace gati::cpu
