// The per-sample exit state of one run, as plain pointers that both the CPU
// kernels and the CUDA kernels read and write.
//
// Design decision: everything here lives in host-visible memory (mapped
// pinned memory on CUDA), so the host reads who exited where, with which
// label and confidence, without a device-to-host copy; kernels write it in
// the same stream as the convolutions.  Rows are "compacted rows" (the dense
// batch of samples still running); samples are the caller's order.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace gati {

// Marks a sample that is still running (no exit and no full-model answer yet).
constexpr int32_t kStillRunning = -2;
// The exit value of a sample answered by the full model.
constexpr int32_t kFullModel = -1;
// Who gave a sample's answer: an exit head or the full model, or the memory
// of recent answers at its exit.
constexpr int32_t kByModel = 0;
constexpr int32_t kByMemory = 1;

struct ExitState {
  int32_t* position[2] = {nullptr, nullptr};  // [max_batch] compacted row -> sample; two, for out-of-place compaction
  int32_t* hit = nullptr;                     // [max_batch] per row: 1 = answered at the current exit
  int32_t* alive = nullptr;                   // [1] rows still running
  int32_t* exit = nullptr;                    // [max_batch] per sample: exit point, kFullModel or kStillRunning
  int32_t* source = nullptr;                  // [max_batch] per sample: kByModel or kByMemory
  int32_t* label = nullptr;                   // [max_batch] per sample
  float* confidence = nullptr;                // [max_batch] per sample: top softmax probability
  float* logits = nullptr;                    // [max_batch, classes] per sample; NaN rows for samples that exited
};

// A packed layout of the exit state for `batch` samples of `classes` in one
// host-visible buffer of exit_state_bytes() bytes (tests and benchmarks; the
// executor's plan lays out its own).
inline size_t exit_state_bytes(int batch, int classes) {
  return (7 * size_t(batch) + 1) * 4 + size_t(batch) * size_t(classes) * 4;
}
inline ExitState exit_state_at(void* buffer, int batch) {
  auto* p = static_cast<int32_t*>(buffer);
  const size_t b = size_t(batch);
  ExitState st;
  st.position[0] = p;
  st.position[1] = p + b;
  st.hit = p + 2 * b;
  st.exit = p + 3 * b;
  st.label = p + 4 * b;
  st.confidence = reinterpret_cast<float*>(p + 5 * b);
  st.source = p + 6 * b;
  st.alive = p + 7 * b;
  st.logits = reinterpret_cast<float*>(p + 7 * b + 1);
  return st;
}

#if defined(__CUDACC__)
#define GATI_HOST_DEVICE __host__ __device__
#else
#define GATI_HOST_DEVICE
#endif

// How a backend stores one sample's activation of h x w pixels and c
// channels: NHWC, element (y, x, ch) at (y*w + x)*c + ch (the CPU backend;
// the CUDA backend with TF32), or NCHW, at (ch*h + y)*w + x (PyTorch's
// order; the CUDA backend in FP32, where cuDNN's fastest FFMA kernels are
// NCHW ones).  The batch is outermost in both, so a sample is contiguous.
enum class Layout : int { kNhwc, kNchw };
GATI_HOST_DEVICE inline long act_offset(Layout layout, int h, int w, int c, int y, int x, int ch) {
  return layout == Layout::kNchw ? (long(ch) * h + y) * w + x : (long(y) * w + x) * c + ch;
}

// What one stored activation value is: an FP32 float (the CPU; the CUDA
// backend by default), or an IEEE half (the CUDA backend with FP16 storage,
// FP32 arithmetic inside every op).  Activation buffers are sized in floats
// either way; half values fill the first half of theirs.  Everything that is
// not an activation (pooled features, logits, exit state, cache models) is
// FP32 in both.
enum class Precision : int { kF32, kF16 };
GATI_HOST_DEVICE inline int precision_bytes(Precision p) { return p == Precision::kF16 ? 2 : 4; }

// How an exit pools a block's output [h, w, c] into the cache model's
// features: adaptive average pooling over a grid x grid of cells (as
// PyTorch's adaptive_avg_pool2d: cell i spans rows floor(i*h/grid) to
// ceil((i+1)*h/grid), so cells may overlap when h is not a multiple), and
// with `with_max` each cell's maximum too (SDN's mixed pooling; the linear
// model learns its own mix per feature).  grid 1 without max is global
// average pooling.  Feature order: averages [cell][c], then maxima [cell][c].
struct PoolSpec {
  int grid = 1;
  bool with_max = false;
  GATI_HOST_DEVICE int cells() const { return grid * grid; }
  GATI_HOST_DEVICE int features(int channels) const { return channels * cells() * (with_max ? 2 : 1); }
};
constexpr int kMaxPoolGrid = 8;

// First row (or column) of cell i of `grid` over `size`, and one past its last.
GATI_HOST_DEVICE inline int pool_cell_begin(int i, int size, int grid) { return int((long long)i * size / grid); }
GATI_HOST_DEVICE inline int pool_cell_end(int i, int size, int grid) {
  return int(((long long)(i + 1) * size + grid - 1) / grid);
}

// Row `row`'s decision at an exit: hit[row], and for a hit the exit, label
// and confidence of its sample, position[pos][row].  Every exit op, on the
// CPU and the GPU, records through this.
GATI_HOST_DEVICE inline void record_decision(const ExitState& st, int pos, int row, int exit_id, bool hit, int label,
                                             float confidence) {
  st.hit[row] = hit ? 1 : 0;
  if (!hit) return;
  const int sample = st.position[pos][row];
  st.exit[sample] = exit_id;
  st.label[sample] = label;
  st.confidence[sample] = confidence;
}

// A learned cache model at one exit (GATI's predictor on pooled features):
// z = W * ((pooled - mean) * inv_std) + b, or with a hidden layer (below)
// z = W * relu(W1 * ((pooled - mean) * inv_std) + b1) + b; hit when its confidence
// reaches `threshold`: the top softmax probability of z, or with a selector
// (GATI's, fed sorted scores) the selector's probability that the predictor
// is right (selector_confidence).  dim = pool.features(channels).  Pointers
// are backend memory.
struct LinearHeadView {
  int dim = 0, classes = 0;
  const float* mean = nullptr;     // [dim]
  const float* inv_std = nullptr;  // [dim]
  const float* weight = nullptr;   // [classes, dim]
  const float* bias = nullptr;     // [classes]
  float threshold = 2.0f;          // > 1 never hits
  PoolSpec pool;
  const float* selector = nullptr;  // [selector_k + 1]: weights of the sorted probabilities, then a bias
  int selector_k = 0;               // 0: no selector
  // Optional: the same weights as IEEE halves [classes, dim], set by a
  // backend when every weight is a half exactly (gati cache build rounds
  // them so), so a kernel reads half the bytes and computes the same
  // floats: at batch 1 a head's cost is reading its weights.
  const uint16_t* weight_f16 = nullptr;
  // Optional, on the CPU: the same weights as int8 [classes, dim] times a
  // power of two per class (weights/common/int8_rows.h), set when every
  // weight is one exactly (gati cache build rounds large heads so): a
  // quarter of the floats' bytes, the same floats computed.  Read before
  // weight_f16; null for heads that learn in place.
  const int8_t* weight_i8 = nullptr;
  const float* weight_i8_scale = nullptr;  // [classes]
  // Optional hidden layer (GATI's MLP predictor): hidden > 0 ReLU units
  // between the features and the scores, u = relu(W1 * xs + b1) and z =
  // W * u + b, so `weight` is then [classes, hidden].  Each unit is a dot
  // product as a class score is (lane_dot), relu(v) = v > 0 ? v : 0.
  int hidden = 0;
  const float* hidden_weight = nullptr;         // [hidden, dim]
  const float* hidden_bias = nullptr;           // [hidden]
  const uint16_t* hidden_weight_f16 = nullptr;  // optional: the same as halves (as weight_f16)
  // The score layer's inputs: the hidden units, or the features.
  GATI_HOST_DEVICE int inputs() const { return hidden > 0 ? hidden : dim; }
};

// Hidden units a learned head may have (the CUDA kernels keep them in shared
// memory beside the features and scores).
constexpr int kMaxHidden = 1024;

// The MLP predictor's activation, one definition for every backend.
GATI_HOST_DEVICE inline float hidden_relu(float v) { return v > 0.f ? v : 0.f; }

// Probabilities a selector reads (kept in registers by the CUDA kernel).
constexpr int kMaxSelectorK = 8;

// The class after `prev` in the order (z descending, class ascending), or
// -1 when prev is the last.
GATI_HOST_DEVICE inline int next_in_order(const float* z, int classes, int prev) {
  int pick = -1;
  for (int c = 0; c < classes; ++c) {
    const bool after = z[c] < z[prev] || (z[c] == z[prev] && c > prev);
    if (after && (pick < 0 || z[c] > z[pick])) pick = c;
  }
  return pick;
}

// The selector's probability that the predictor's answer is the full
// model's: sigmoid(b + sum_j w_j p_(j)) over the k largest softmax
// probabilities of z in descending order (ties: lower class first; missing
// ones, with fewer classes than k, count as 0), from z's argmax `best` and
// sum_k exp(z_k - z_best) (in double, as the top-softmax confidence).  In
// double throughout; one definition for the CPU kernel, the CUDA kernel and
// calibration.
GATI_HOST_DEVICE inline float selector_confidence(const float* z, int classes, int best, double sum, const float* sel,
                                                  int k) {
  double s = sel[k];
  for (int j = 0, c = best; j < k && c >= 0; ++j, c = next_in_order(z, classes, c))
    s += double(sel[j]) * (exp(double(z[c]) - double(z[best])) / sum);
  return float(1.0 / (1.0 + exp(-s)));
}

// Which cache model an exit head runs: GATI's learned linear predictor, or
// one of Freeze's approximate caches (k nearest stored training samples, or
// the nearest k-means centroid).
enum class HeadKind : int32_t { kLinear = 0, kKnn = 1, kKmeans = 2 };
// Neighbours a distance head may vote with (the CUDA kernel keeps them in
// registers).
constexpr int kMaxNeighbours = 16;

// An approximate cache at one exit (Freeze Inference): stored keys with the
// full model's labels, looked up by distance.  A row's key is its pooled
// features standardised, (pooled - mean) * inv_std, then reduced to
// `reduced` dimensions by `projection` (y[r] = projection[r] . x, a PCA
// basis: Freeze's dimension reduction).  The `neighbours` nearest keys (k;
// squared distance, the lowest index on ties) vote: label i with m_i of the
// k and distances d_j scores C_i = (m_i / k) * sum_j share_j / d_j (Freeze's
// confidence; share is 1 for k-NN keys, a centroid's majority share for
// k-means, where k = 1 gives Freeze's share / distance).  The best label
// (the lowest on ties) answers, with confidence C / (1 + C), which maps
// Freeze's unbounded score monotonically into [0, 1) so that one threshold
// rule holds for every kind: hit when confidence >= threshold, > 1 never.
struct DistanceHeadView {
  int dim = 0, reduced = 0, entries = 0, neighbours = 1, classes = 0;
  PoolSpec pool;
  const float* mean = nullptr;        // [dim]
  const float* inv_std = nullptr;     // [dim]
  const float* projection = nullptr;  // [reduced, dim]
  const float* keys = nullptr;        // [entries, reduced]
  const int32_t* labels = nullptr;    // [entries], in [0, classes)
  const float* share = nullptr;       // [entries], in (0, 1]
  float threshold = 2.0f;             // > 1 never hits
};

// The same model with writable parameters and its momentum buffer, for the
// SGD update (offline training and online updates from served traffic).
struct LinearHeadMut {
  int dim = 0, classes = 0;
  const float* mean = nullptr;     // [dim]
  const float* inv_std = nullptr;  // [dim]
  float* weight = nullptr;         // [classes, dim]
  float* bias = nullptr;           // [classes]
  float* velocity = nullptr;       // [classes * dim + classes], weight part first
};

// A memory of recent full-model answers at one exit point (temporal
// locality: a request that nearly repeats a recent one gets that one's
// answer).  Keys are standardised pooled features, (pooled - mean) * inv_std;
// a row hits when its nearest key lies within squared distance `threshold`,
// and answers with that entry's label and confidence (nearest: the lowest
// index on ties).  Entries are only ever the full model's own answers with
// confidence >= min_confidence, written round-robin.  Pointers are backend
// memory; `pending` holds each sample's standardised features between the
// lookup and the insertion that follows the run.
struct MemoryView {
  int dim = 0, capacity = 0;
  PoolSpec pool;
  const float* mean = nullptr;     // [dim]
  const float* inv_std = nullptr;  // [dim]
  float* keys = nullptr;           // [capacity, dim]
  int32_t* labels = nullptr;       // [capacity]
  float* confidence = nullptr;     // [capacity]
  int32_t* fill = nullptr;         // [2]: entries in use, next slot to write
  float* pending = nullptr;        // [max_batch, dim] per sample
  float threshold = -1.f;          // < 0 never hits
  float min_confidence = 1.f;
};

// A step that would take any weight or bias beyond this magnitude is
// refused (as a non-finite one is): a head that far out has diverged.
constexpr float kMaxSgdWeight = 1e6f;

struct SgdHyper {
  float lr = 0.05f, momentum = 0.9f, weight_decay = 5e-4f;
  float max_weight = kMaxSgdWeight;  // refuse a step that takes a parameter beyond it
};

// Where an SGD step queued without a wait reports (host-visible memory,
// read after the backend synchronises): status[0] the OpStatus, status[1]
// the offending label's or weight's index (-1: none); *loss the batch's
// mean cross-entropy before the step (0 when a label was bad).
struct SgdReport {
  int32_t* status = nullptr;  // [2]
  double* loss = nullptr;     // [1]
};

// Rows to gather for a learning head's next SGD batch (engine/learner.h):
// row[i] of a features buffer becomes row offset + i of the batch, with
// label[i].  Passed by value (to a CUDA kernel as its parameter), so the
// host may reuse its list as soon as the call returns.
struct RowGather {
  static constexpr int kMax = 64;
  int count = 0;
  int32_t row[kMax] = {};
  int32_t label[kMax] = {};
};

// Status words written by device code (which cannot throw) and by its CPU twin;
// the host wrapper turns anything but kOk into a gati::Error naming the place.
enum class OpStatus : int32_t { kOk = 0, kNonFinite = 1, kBadLabel = 2 };

}  // namespace gati
