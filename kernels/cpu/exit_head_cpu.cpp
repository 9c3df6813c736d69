// Exit-point ops on the CPU; see exit_head_cpu.h.
//
// Each row is computed on its own in a fixed order, so a sample's exit,
// label and confidence do not depend on which other samples share its batch.
#include "kernels/cpu/exit_head_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "kernels/cpu/pool_cpu.h"
#include "kernels/cpu/threads.h"
#include "kernels/cpu/vec16.h"
#include "weights/common/half.h"

namespace gati::cpu {

namespace {

// argmax (first on ties) and sum_k exp(z_k - z_max), in double, in class
// order.  With `miss_below`, the sum may stop early (checked every 64
// classes): every term is positive, so a partial sum bounds the confidence
// 1 / sum from above (rounding keeps the order), and once float(1 / partial)
// is below miss_below so is the confidence; *stopped says whether it did.
int argmax_and_sum(const float* z, int classes, double* sum, float miss_below = -INFINITY, bool* stopped = nullptr) {
  int best = 0;
  for (int k = 1; k < classes; ++k)
    if (z[k] > z[best]) best = k;
  constexpr int kCheckEvery = 64;
  *sum = 0;
  if (stopped) *stopped = false;
  for (int k0 = 0; k0 < classes; k0 += kCheckEvery) {
    const int k1 = std::min(classes, k0 + kCheckEvery);
    for (int k = k0; k < k1; ++k) *sum += std::exp(double(z[k]) - double(z[best]));
    if (stopped && k1 < classes && float(1.0 / *sum) < miss_below) {
      *stopped = true;
      break;
    }
  }
  return best;
}

constexpr int kLanes = 16;

}  // namespace

bool fast_half_weights() {
#if defined(__AVX512F__) || defined(__F16C__)
  return true;
#else
  return false;
#endif
}

float lane_dot(const float* w, const float* x, int dim) {
  const int full = dim / kLanes * kLanes;
  float lane[kLanes] = {};
  for (int d = 0; d < full; d += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += w[d + l] * x[d + l];
  for (int d = full; d < dim; ++d) lane[d - full] += w[d] * x[d];
  float s = 0;
  for (int l = 0; l < kLanes; ++l) s += lane[l];
  return s;
}

namespace {

// lane_dot of kRows weight rows with S inputs x[s] (rows xstride apart):
// out[s * kRows + r] = lane_dot(w_r, x_s), each sum lane_dot's, lane for
// lane and in the same order (its CUDA twin reproduces it).  The rows'
// and inputs' independent chains overlap instead of each waiting on the
// last, and each weight vector loaded serves S inputs: at batch 8 a head
// is bound by arithmetic, not by loads.
constexpr int kRows = 4;
static_assert(sizeof(v16) == kLanes * sizeof(float));
// 16 weights as floats, from floats (vec16.h) or from halves (exact either way).
using cpu::load16;
inline v16 load16(const uint16_t* p) {
#if defined(__AVX512F__)
  // (The zero-masked form: GCC 12 warns about the plain one's undefined source.)
  const __m512 v = _mm512_maskz_cvtph_ps(__mmask16(0xffff), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  v16 r;
  std::memcpy(&r, &v, sizeof r);
  return r;
#elif defined(__F16C__)
  const __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
  v16 r;
  std::memcpy(&r, &lo, sizeof lo);
  std::memcpy(reinterpret_cast<char*>(&r) + sizeof lo, &hi, sizeof hi);
  return r;
#else
  v16 r;
  for (int l = 0; l < kLanes; ++l) r[l] = half_to_float(p[l]);
  return r;
#endif
}
// 16 int8 as floats (exact).
inline v16 load16(const int8_t* p) {
#if defined(__AVX512F__)
  // (The zero-masked forms, as for halves: GCC 12 warns about the plain ones.)
  const __m512i i = _mm512_maskz_cvtepi8_epi32(__mmask16(0xffff), _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512 v = _mm512_maskz_cvtepi32_ps(__mmask16(0xffff), i);
  v16 r;
  std::memcpy(&r, &v, sizeof r);
  return r;
#else
  v16 r;
  for (int l = 0; l < kLanes; ++l) r[l] = float(p[l]);
  return r;
#endif
}

// Weight rows as a kernel reads them, stride floats (or halves, or int8)
// apart: load(r, d) is 16 weights of row r from column d, at(r, d) one; the
// same floats however they are stored.
struct FloatRows {
  const float* w;
  size_t stride;
  v16 load(int r, size_t d) const { return load16(w + size_t(r) * stride + d); }
  float at(int r, size_t d) const { return w[size_t(r) * stride + d]; }
};
struct HalfRows {
  const uint16_t* w;
  size_t stride;
  v16 load(int r, size_t d) const { return load16(w + size_t(r) * stride + d); }
  float at(int r, size_t d) const { return half_to_float(w[size_t(r) * stride + d]); }
};
struct ScaledInt8Rows {  // q * scale[r], scale a power of two: exact
  const int8_t* q;
  const float* scale;
  size_t stride;
  v16 load(int r, size_t d) const { return load16(q + size_t(r) * stride + d) * scale[r]; }
  float at(int r, size_t d) const { return float(q[size_t(r) * stride + d]) * scale[r]; }
};

template <int S, class Rows>
void lane_dot_block(const Rows& w, const float* x, size_t xstride, int dim, float* out) {
  const int full = dim / kLanes * kLanes;
  v16 acc[S][kRows] = {};
  for (int d = 0; d < full; d += kLanes) {
    v16 wv[kRows];
    for (int r = 0; r < kRows; ++r) {
      wv[r] = w.load(r, size_t(d));
#if defined(__AVX512F__)
      asm("" : "+v"(wv[r]));  // kept in a register: GCC would load it again for every input
#endif
    }
    for (int s = 0; s < S; ++s) {
      const v16 xv = load16(x + size_t(s) * xstride + size_t(d));
      for (int r = 0; r < kRows; ++r) acc[s][r] += wv[r] * xv;
    }
  }
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < kRows; ++r) {
      float lane[kLanes];
      std::memcpy(lane, &acc[s][r], sizeof lane);
      for (int d = full; d < dim; ++d) lane[d - full] += w.at(r, size_t(d)) * x[size_t(s) * xstride + size_t(d)];
      float sum = 0;
      for (int l = 0; l < kLanes; ++l) sum += lane[l];
      out[s * kRows + r] = sum;
    }
}

// One dense layer of a head as its kernels read it: out[k] = lane_dot(W[k],
// x) + bias[k] for k < outs over `ins` inputs, W kept as floats and perhaps
// also as halves or int8 rows (the same values), relu on the hidden layer.
struct Dense {
  int outs = 0, ins = 0;
  const float* weight = nullptr;  // [outs, ins]
  const float* bias = nullptr;    // [outs]
  const uint16_t* weight_f16 = nullptr;
  const int8_t* weight_i8 = nullptr;
  const float* weight_i8_scale = nullptr;
  bool relu = false;
};
// The score layer (over the hidden units when there are some) and the hidden one.
Dense score_layer(const LinearHeadView& h) {
  return {h.classes, h.inputs(), h.weight, h.bias, h.weight_f16, h.weight_i8, h.weight_i8_scale, false};
}
Dense hidden_layer(const LinearHeadView& h) {
  return {h.hidden, h.dim, h.hidden_weight, h.hidden_bias, h.hidden_weight_f16, nullptr, nullptr, true};
}

float finish_unit(const Dense& l, int k, float dot) {
  const float v = dot + l.bias[k];
  return l.relu ? hidden_relu(v) : v;
}

// lane_dot_block over the kRows rows from output k0, in whichever form the
// layer keeps its weights (int8, halves or floats: the same values).
template <int S>
void dense_dot_block(const Dense& l, int k0, const float* x, size_t xstride, float* out) {
  const size_t stride = size_t(l.ins), at = size_t(k0) * stride;
  if (l.weight_i8)
    lane_dot_block<S>(ScaledInt8Rows{l.weight_i8 + at, l.weight_i8_scale + k0, stride}, x, xstride, l.ins, out);
  else if (l.weight_f16)
    lane_dot_block<S>(HalfRows{l.weight_f16 + at, stride}, x, xstride, l.ins, out);
  else
    lane_dot_block<S>(FloatRows{l.weight + at, stride}, x, xstride, l.ins, out);
}

// The layer for n rows of x (xstride floats apart) into out (ostride apart),
// output-major: each output's weights (one row of W) are read once per
// batch, not once per sample, and outputs split across threads.  Per row the
// arithmetic is lane_dot's, lane for lane, so the result does not depend on
// the batch.
void dense_rows(const Dense& l, const float* xs, int n, size_t xstride, float* out, size_t ostride) {
  const int groups = (l.outs + kRows - 1) / kRows;
  parallel_for(groups, size_t(n) * size_t(l.outs) * size_t(l.ins) > 262144, [&](int g) {
    const int k0 = g * kRows;
    if (k0 + kRows > l.outs) {  // the last outputs, one by one
      for (int row = 0; row < n; ++row)
        for (int k = k0; k < l.outs; ++k)
          out[size_t(row) * ostride + size_t(k)] =
              finish_unit(l, k, lane_dot(l.weight + size_t(k) * size_t(l.ins), xs + size_t(row) * xstride, l.ins));
      return;
    }
    constexpr int kInputs = 4;
    float dots[kInputs * kRows];
    for (int row = 0; row < n;) {
      const int take = n - row >= kInputs ? kInputs : 1;
      const float* x = xs + size_t(row) * xstride;
      if (take == kInputs)
        dense_dot_block<kInputs>(l, k0, x, xstride, dots);
      else
        dense_dot_block<1>(l, k0, x, xstride, dots);
      for (int s = 0; s < take; ++s)
        for (int r = 0; r < kRows; ++r)
          out[size_t(row + s) * ostride + size_t(k0 + r)] = finish_unit(l, k0 + r, dots[s * kRows + r]);
      row += take;
    }
  });
}

// (pooled - mean) * inv_std into a zero-padded row of `padded` floats.
void standardise(const LinearHeadView& h, const float* pooled, int padded, float* out) {
  for (int d = 0; d < h.dim; ++d) out[d] = (pooled[d] - h.mean[d]) * h.inv_std[d];
  for (int d = h.dim; d < padded; ++d) out[d] = 0.f;
}

int padded_dim(int dim) { return (dim + kLanes - 1) / kLanes * kLanes; }

}  // namespace

int top_softmax(const float* z, int classes, float* confidence) {
  double sum;
  const int best = argmax_and_sum(z, classes, &sum);
  *confidence = float(1.0 / sum);
  return best;
}

int top_softmax_or_miss(const float* z, int classes, float threshold, float* confidence) {
  double sum;
  bool stopped;
  const int best = argmax_and_sum(z, classes, &sum, threshold, &stopped);
  *confidence = stopped ? -1.0f : float(1.0 / sum);
  return best;
}

int softmax(const float* z, int classes, float* probs) {
  double sum;
  const int best = argmax_and_sum(z, classes, &sum);
  for (int k = 0; k < classes; ++k) probs[k] = float(std::exp(double(z[k]) - double(z[best])) / sum);
  return best;
}

int head_decision(const LinearHeadView& h, const float* z, float* confidence) {
  double sum;
  const int best = argmax_and_sum(z, h.classes, &sum);
  *confidence =
      h.selector_k > 0 ? selector_confidence(z, h.classes, best, sum, h.selector, h.selector_k) : float(1.0 / sum);
  return best;
}

void begin_exits(const ExitState& st, int n, int classes) {
  for (int i = 0; i < n; ++i) {
    st.position[0][i] = i;
    st.hit[i] = 0;
    st.exit[i] = kStillRunning;
    st.source[i] = kByModel;
    st.label[i] = -1;
    st.confidence[i] = 0.f;
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (size_t i = 0; i < size_t(n) * size_t(classes); ++i) st.logits[i] = nan;
  *st.alive = n;
}

void linear_head_scores(const LinearHeadView& h, const float* pooled, float* z) {
  thread_local std::vector<float> xs, u;
  const int padded = padded_dim(h.dim);
  xs.resize(size_t(padded));
  standardise(h, pooled, padded, xs.data());
  const float* in = xs.data();
  if (h.hidden > 0) {
    const Dense l = hidden_layer(h);
    u.assign(size_t(padded_dim(h.hidden)), 0.f);
    for (int j = 0; j < h.hidden; ++j)
      u[size_t(j)] = finish_unit(l, j, lane_dot(h.hidden_weight + size_t(j) * size_t(h.dim), xs.data(), h.dim));
    in = u.data();
  }
  const int ins = h.inputs();
  for (int k = 0; k < h.classes; ++k) z[k] = lane_dot(h.weight + size_t(k) * size_t(ins), in, ins) + h.bias[k];
}

void exit_head_linear(const float* act, int n, int height, int width, int c, const LinearHeadView& h, int exit_id,
                      const ExitState& st, int pos, float* pooled) {
  pool_features_nhwc(act, n, height, width, c, h.pool, pooled);
  exit_head_linear_pooled(pooled, n, h, exit_id, st, pos);
}

void exit_head_linear_pooled(const float* pooled, int n, const LinearHeadView& h, int exit_id, const ExitState& st,
                             int pos) {
  // Scratch kept per calling thread: an exit head runs after every block of
  // every request, and allocating here showed up in the never-hit overhead.
  thread_local std::vector<float> xs_buf, u_buf, z_buf;
  const int padded = padded_dim(h.dim);
  xs_buf.resize(size_t(n) * size_t(padded));
  z_buf.resize(size_t(n) * size_t(h.classes));
  float* const xs = xs_buf.data();
  float* const z = z_buf.data();
  for (int row = 0; row < n; ++row)
    standardise(h, pooled + size_t(row) * size_t(h.dim), padded, xs + size_t(row) * size_t(padded));
  if (h.hidden > 0) {
    const int padded_u = padded_dim(h.hidden);
    u_buf.assign(size_t(n) * size_t(padded_u), 0.f);
    dense_rows(hidden_layer(h), xs, n, size_t(padded), u_buf.data(), size_t(padded_u));
    dense_rows(score_layer(h), u_buf.data(), n, size_t(padded_u), z, size_t(h.classes));
  } else {
    dense_rows(score_layer(h), xs, n, size_t(padded), z, size_t(h.classes));
  }
  for (int row = 0; row < n; ++row) {
    float conf;
    const float* zr = z + size_t(row) * size_t(h.classes);
    const int label =
        h.selector_k > 0 ? head_decision(h, zr, &conf) : top_softmax_or_miss(zr, h.classes, h.threshold, &conf);
    record_decision(st, pos, row, exit_id, conf >= h.threshold, label, conf);
  }
}

void compact_rows(float* act, int n, size_t row_floats, const ExitState& st, int pos_in, int pos_out) {
  int alive = 0;
  for (int row = 0; row < n; ++row) {
    if (st.hit[row]) continue;
    if (alive != row)  // alive < row: the destination is free, the ranges may not overlap
      std::memcpy(act + size_t(alive) * row_floats, act + size_t(row) * row_floats, row_floats * sizeof(float));
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
