// Exit-point kernels; see exit_head.cuh and, for the arithmetic they mirror,
// device_math.cuh.
//
// The exit head comes in two shapes with the same arithmetic, bit for bit.
// One block per row (one launch): its threads pool the row's channels
// (consecutive threads, consecutive channels: coalesced), standardise into
// shared memory, score the classes in half-warps and take the block-wide top
// softmax; thread 0 writes the decision.  A head with a hidden layer
// (GATI's MLP) scores its hidden units first, as classes, into shared
// memory, then the classes from them; in the wide shape the scoring blocks
// compute the hidden units and the deciding block the classes.  At batch 1 that is one block on a
// GPU of a hundred SMs: 0.46 ms for a ResNet-50 layer1 exit with 1000
// classes on an H100.  Wide (three launches, each across the GPU): pooling
// (each row of a cell summed by one thread, the rows' sums added in order
// by another, as pool_feature does), scoring blocks of 16 classes (a
// half-warp per class, as linear_scores), and one deciding block per row.
// Pooling: blocks of 32 features (a warp's lanes on consecutive channels:
// coalesced in NHWC) x 8 row lanes.  Staged (NCHW only, where a feature's
// rows are contiguous and consecutive channels lie a plane apart, so the
// warp's loads above touch 32 lines each): a warp per feature stages up to
// 32 of its rows in shared memory with consecutive lanes on consecutive
// pixels (coalesced), then lane r sums row r.  Not yet run on a GPU.  Compaction is
// three small launches with no host involvement: a one-block flag scan, a
// gather of the rows that move into scratch, and a copy back (moving rows in
// place in parallel would let one block overwrite a row another has not read
// yet); one launch at batch 1, where nothing moves.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/exit_head.cuh"
#include "kernels/cuda/grid.cuh"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

constexpr int kHeadThreads = 256;
constexpr int kScanThreads = 1024;
// Wide exit head: pooling blocks of kPoolFeatures features (a warp's lanes,
// consecutive channels) x kPoolLanes row lanes, summing kPoolChunk rows of a
// cell per pass; scoring blocks of kHeadThreads / kLanes classes.
constexpr int kPoolFeatures = 32;
constexpr int kPoolLanes = 8;
constexpr int kPoolChunk = 64;
// NCHW pooling: kPoolWarps features a block, each warp staging up to
// kPoolStage floats of its feature's cell per pass (rows at an odd stride:
// lane r reads row r without bank conflicts).
constexpr int kPoolWarps = 4;
constexpr int kPoolStage = 2048;

__global__ void begin_exits_kernel(ExitState st, int n, long logits) {
  const long total = logits > n ? logits : n;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    if (i < n) {
      st.position[0][i] = int32_t(i);
      st.hit[i] = 0;
      st.exit[i] = kStillRunning;
      st.source[i] = kByModel;
      st.label[i] = -1;
      st.confidence[i] = 0.f;
    }
    if (i < logits) st.logits[i] = __int_as_float(0x7fc00000);  // quiet NaN
    if (i == 0) *st.alive = n;
  }
}

// Row `row`'s decision from its scores z[classes] (shared memory): the top
// softmax, or the selector's confidence, against the threshold.  Every
// thread of the block must call it.
__device__ inline void decide(const float* z, const LinearHeadView& h, int exit_id, const ExitState& st, int pos,
                              int row) {
  int best;
  double sum;
  dev::block_argmax_sum(z, h.classes, &best, &sum);
  if (threadIdx.x == 0) {  // the selector's k rounds over the classes are few and short: one thread
    const float conf =
        h.selector_k > 0 ? selector_confidence(z, h.classes, best, sum, h.selector, h.selector_k) : float(1.0 / sum);
    record_decision(st, pos, row, exit_id, conf >= h.threshold, best, conf);
  }
}

template <typename T>
__global__ void exit_head_kernel(const T* __restrict__ act, int height, int width, int channels, Layout layout,
                                 LinearHeadView h, int exit_id, ExitState st, int pos, float* __restrict__ pooled) {
  extern __shared__ float smem[];
  const int dim = h.dim, padded = dev::padded_dim(dim), padded_u = h.hidden > 0 ? dev::padded_dim(h.hidden) : 0;
  float* xs = smem;                     // [padded] standardised features
  float* u = smem + padded;             // [padded_u] hidden units
  float* z = smem + padded + padded_u;  // [classes] scores
  const int row = blockIdx.x;
  dev::pool_and_standardise(act + long(row) * height * width * channels, height, width, channels, layout, h.pool, dim,
                            h.mean, h.inv_std, pooled + long(row) * dim, xs);
  __syncthreads();
  dev::head_scores(h, xs, u, z);
  __syncthreads();
  decide(z, h, exit_id, st, pos, row);
}

// Wide, 1 of 3: grid (features / kPoolFeatures, n).  pool_feature's
// arithmetic: each image row of the cell summed left to right by one thread
// (lane ri takes rows ri, ri + kPoolLanes, ...), the rows' sums added top to
// bottom by lane 0, the total scaled by the rounded 1/count.
template <typename T>
__global__ void exit_pool_kernel(const T* __restrict__ act, int height, int width, int channels, Layout layout,
                                 PoolSpec pool, int dim, float* __restrict__ pooled) {
  __shared__ float part[kPoolChunk][kPoolFeatures];
  const int fi = threadIdx.x % kPoolFeatures, ri = threadIdx.x / kPoolFeatures;
  const int f = blockIdx.x * kPoolFeatures + fi, row = blockIdx.y;
  const bool valid = f < dim;
  const dev::FeatureCell fc = dev::feature_cell(f, height, width, channels, pool);
  const int y_end = valid ? fc.y1 : fc.y0;  // past the last feature: no rows, but every barrier
  const T* src = act + long(row) * height * width * channels;
  float acc = fc.start();
  for (int base = 0; base < height; base += kPoolChunk) {  // the same trip count in every thread
    for (int r = ri; r < kPoolChunk; r += kPoolLanes) {
      const int y = fc.y0 + base + r;
      if (y >= y_end) break;
      float sum = fc.start();
      for (int x = fc.x0; x < fc.x1; ++x)
        sum = fc.step(sum, load_act(src, act_offset(layout, height, width, channels, y, x, fc.ch)));
      part[r][fi] = sum;
    }
    __syncthreads();
    if (ri == 0)
      for (int r = 0; r < kPoolChunk && fc.y0 + base + r < y_end; ++r) acc = fc.step(acc, part[r][fi]);
    __syncthreads();
  }
  if (ri == 0 && valid) pooled[long(row) * dim + f] = fc.value(acc);
}

// Wide, 1 of 3 in NCHW: grid (features / kPoolWarps, n), a warp per
// feature.  Per pass the warp stages rows of the cell (consecutive lanes,
// consecutive pixels), lane r sums staged row r left to right, and the rows'
// sums are added top to bottom through shuffles: pool_feature's arithmetic.
// Cells wider than the stage (absurd widths) are pooled unstaged.
template <typename T>
__global__ void exit_pool_nchw_kernel(const T* __restrict__ act, int height, int width, int channels, PoolSpec pool,
                                      int dim, float* __restrict__ pooled) {
  __shared__ float stage[kPoolWarps][kPoolStage];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int f = blockIdx.x * kPoolWarps + warp, row = blockIdx.y;
  if (f >= dim) return;  // a whole warp: no barrier below spans warps
  const dev::FeatureCell fc = dev::feature_cell(f, height, width, channels, pool);
  const int cw = fc.x1 - fc.x0, stride = cw | 1;
  const int per_pass = min(32, kPoolStage / stride);
  const T* plane = act + (long(row) * channels + fc.ch) * height * width;
  float* s = stage[warp];
  float acc = fc.start();
  for (int y = fc.y0; y < fc.y1; y += per_pass) {
    const int rows = min(per_pass, fc.y1 - y);
    for (int i = lane; i < rows * cw; i += 32) {
      const int r = i / cw, x = i % cw;
      s[r * stride + x] = load_act(plane, long(y + r) * width + fc.x0 + x);
    }
    __syncwarp();
    float sum = fc.start();
    if (lane < rows)
      for (int x = 0; x < cw; ++x) sum = fc.step(sum, s[lane * stride + x]);
    for (int r = 0; r < rows; ++r) acc = fc.step(acc, __shfl_sync(0xffffffffu, sum, r));  // the same acc in every lane
    __syncwarp();  // the stage is rewritten next pass
  }
  if (lane == 0) pooled[long(row) * dim + f] = fc.value(acc);
}

// Wide, 2 of 3: grid (outputs / (kHeadThreads / kLanes), n).  Each block
// standardises its row's pooled features into shared memory (as
// pool_and_standardise) and computes its outputs (as linear_scores): the
// classes' scores, or with a hidden layer the hidden units, which the
// deciding kernel turns into scores.
template <typename W>
__global__ void exit_scores_kernel(const float* __restrict__ pooled, LinearHeadView h, const W* __restrict__ weight,
                                   float* __restrict__ scores) {
  extern __shared__ float xs[];  // [padded dim]
  const int dim = h.dim, padded = dev::padded_dim(dim), row = blockIdx.y;
  const bool hidden = h.hidden > 0;
  const int outs = hidden ? h.hidden : h.classes;
  for (int f = threadIdx.x; f < padded; f += blockDim.x)
    xs[f] = f < dim ? dev::standardise(pooled[long(row) * dim + f], h.mean, h.inv_std, f) : 0.f;
  __syncthreads();
  const int half = threadIdx.x / dev::kLanes, l = threadIdx.x % dev::kLanes;
  const int k = blockIdx.x * (blockDim.x / dev::kLanes) + half;
  const float s = dev::half_warp_score(weight, hidden ? h.hidden_bias : h.bias, xs, dim, outs, k, l, hidden);
  if (k < outs && l == 0) scores[long(row) * outs + k] = s;
}

// Wide, 3 of 3: one block per row, the one-block kernel's decision (with a
// hidden layer, from the hidden units through the score layer).
__global__ void exit_decide_kernel(const float* __restrict__ scores, LinearHeadView h, int exit_id, ExitState st,
                                   int pos) {
  extern __shared__ float smem[];  // [hidden units and] classes, each padded to the lanes
  const int row = blockIdx.x, padded = dev::padded_dim(h.classes);
  float* z = smem;
  if (h.hidden > 0) {
    const int padded_u = dev::padded_dim(h.hidden);
    float* u = smem;
    z = smem + padded_u;
    for (int j = threadIdx.x; j < padded_u; j += blockDim.x)
      u[j] = j < h.hidden ? scores[long(row) * h.hidden + j] : 0.f;
    __syncthreads();
    if (h.weight_f16)
      dev::linear_scores(reinterpret_cast<const __half*>(h.weight_f16), h.bias, u, h.hidden, h.classes, z);
    else
      dev::linear_scores(h.weight, h.bias, u, h.hidden, h.classes, z);
    __syncthreads();
    for (int k = h.classes + threadIdx.x; k < padded; k += blockDim.x) z[k] = 0.f;
  } else {
    for (int k = threadIdx.x; k < padded; k += blockDim.x)
      z[k] = k < h.classes ? scores[long(row) * h.classes + k] : 0.f;
  }
  __syncthreads();
  decide(z, h, exit_id, st, pos, row);
}

// One block: the exclusive scan of the survivor flags, chunk by chunk.
__global__ void compact_scan_kernel(ExitState st, int n, int pos_in, int pos_out, int32_t* __restrict__ src_of) {
  __shared__ int scan[kScanThreads];
  __shared__ int base;
  const int tid = threadIdx.x;
  if (tid == 0) base = 0;
  __syncthreads();
  for (int start = 0; start < n; start += blockDim.x) {
    const int row = start + tid;
    const int keep = row < n && st.hit[row] == 0 ? 1 : 0;
    scan[tid] = keep;
    __syncthreads();
    for (int off = 1; off < blockDim.x; off *= 2) {  // Hillis-Steele inclusive scan
      const int add = tid >= off ? scan[tid - off] : 0;
      __syncthreads();
      scan[tid] += add;
      __syncthreads();
    }
    if (keep) {
      const int d = base + scan[tid] - 1;
      st.position[pos_out][d] = st.position[pos_in][row];
      src_of[d] = row;
    }
    __syncthreads();
    if (tid == blockDim.x - 1) base += scan[tid];
    __syncthreads();
  }
  if (tid == 0) {
    *st.alive = base;
    src_of[n] = base;
  }
}

// One row: nothing moves; the position and the count are all there is to
// write (the scan's result at n = 1, in one launch instead of three).
__global__ void compact_one_kernel(ExitState st, int pos_in, int pos_out, int32_t* __restrict__ src_of) {
  const int keep = st.hit[0] == 0 ? 1 : 0;
  if (keep) {
    st.position[pos_out][0] = st.position[pos_in][0];
    src_of[0] = 0;
  }
  *st.alive = keep;
  src_of[1] = keep;
}

// Grid y = destination row d.  Rows already in place (src == d) stay.
template <bool kToScratch>
__global__ void compact_move_kernel(float* __restrict__ act, long row_floats, const int32_t* __restrict__ src_of, int n,
                                    float* __restrict__ scratch) {
  const int d = blockIdx.y;
  if (d >= src_of[n]) return;
  const int src = src_of[d];
  if (src == d) return;
  const float* from = kToScratch ? act + long(src) * row_floats : scratch + long(d) * row_floats;
  float* to = kToScratch ? scratch + long(d) * row_floats : act + long(d) * row_floats;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < row_floats; i += long(gridDim.x) * blockDim.x)
    to[i] = from[i];
}

__global__ void finish_kernel(const float* __restrict__ logits, int classes, ExitState st, int pos) {
  const int row = blockIdx.x;
  const float* z = logits + long(row) * classes;
  const int sample = st.position[pos][row];
  for (int k = threadIdx.x; k < classes; k += blockDim.x) st.logits[long(sample) * classes + k] = z[k];
  int best;
  double sum;
  dev::block_argmax_sum(z, classes, &best, &sum);
  if (threadIdx.x == 0) {
    st.label[sample] = best;
    st.confidence[sample] = float(1.0 / sum);
    st.exit[sample] = kFullModel;
  }
}

void launch_begin_exits(const ExitState& st, int n, long logits, cudaStream_t stream) {
  begin_exits_kernel<<<grid_for(logits > n ? logits : n, 256), 256, 0, stream>>>(st, n, logits);
}

template <typename T>
void launch_exit_head(const T* act, int n, int height, int width, int channels, Layout layout, const LinearHeadView& h,
                      int exit_id, const ExitState& st, int pos, float* pooled, cudaStream_t stream) {
  exit_head_kernel<T><<<unsigned(n), kHeadThreads, dev::scores_smem_bytes(h.dim, h.classes, h.hidden), stream>>>(
      act, height, width, channels, layout, h, exit_id, st, pos, pooled);
}

template <typename T>
void launch_exit_head_wide(const T* act, int n, int height, int width, int channels, Layout layout,
                           const LinearHeadView& h, int exit_id, const ExitState& st, int pos, float* pooled,
                           float* scores, bool staged, cudaStream_t stream) {
  if (staged) {
    const dim3 pool_grid(unsigned((h.dim + kPoolWarps - 1) / kPoolWarps), unsigned(n));
    exit_pool_nchw_kernel<T>
        <<<pool_grid, 32 * kPoolWarps, 0, stream>>>(act, height, width, channels, h.pool, h.dim, pooled);
  } else {
    const dim3 pool_grid(unsigned((h.dim + kPoolFeatures - 1) / kPoolFeatures), unsigned(n));
    exit_pool_kernel<T><<<pool_grid, kPoolFeatures * kPoolLanes, 0, stream>>>(act, height, width, channels, layout,
                                                                              h.pool, h.dim, pooled);
  }
  // The first layer across the GPU: the scores, or the hidden units.
  const bool hidden = h.hidden > 0;
  const int per_block = kHeadThreads / dev::kLanes, outs = hidden ? h.hidden : h.classes;
  const dim3 score_grid(unsigned((outs + per_block - 1) / per_block), unsigned(n));
  const size_t xs_bytes = size_t(dev::padded_dim(h.dim)) * sizeof(float);
  const uint16_t* f16 = hidden ? h.hidden_weight_f16 : h.weight_f16;
  if (f16)
    exit_scores_kernel<__half>
        <<<score_grid, kHeadThreads, xs_bytes, stream>>>(pooled, h, reinterpret_cast<const __half*>(f16), scores);
  else
    exit_scores_kernel<float>
        <<<score_grid, kHeadThreads, xs_bytes, stream>>>(pooled, h, hidden ? h.hidden_weight : h.weight, scores);
  const size_t z_bytes = size_t(dev::padded_dim(h.classes) + (hidden ? dev::padded_dim(h.hidden) : 0)) * sizeof(float);
  exit_decide_kernel<<<unsigned(n), kHeadThreads, z_bytes, stream>>>(scores, h, exit_id, st, pos);
}

void launch_compact(float* act, int n, long row_floats, const ExitState& st, int pos_in, int pos_out,
                    const CompactScratch& s, cudaStream_t stream) {
  if (n == 1) {  // batch 1 (and the last survivor): no row moves
    compact_one_kernel<<<1, 1, 0, stream>>>(st, pos_in, pos_out, s.src_of);
    return;
  }
  compact_scan_kernel<<<1, kScanThreads, 0, stream>>>(st, n, pos_in, pos_out, s.src_of);
  const int threads = 256;
  const long per_row = (row_floats + threads - 1) / threads;
  const dim3 grid(unsigned(per_row < 1024 ? per_row : 1024), unsigned(n));
  compact_move_kernel<true><<<grid, threads, 0, stream>>>(act, row_floats, s.src_of, n, s.rows);
  compact_move_kernel<false><<<grid, threads, 0, stream>>>(act, row_floats, s.src_of, n, s.rows);
}

void launch_finish(const float* logits, int n, int classes, const ExitState& st, int pos, cudaStream_t stream) {
  finish_kernel<<<unsigned(n), 128, 0, stream>>>(logits, classes, st, pos);
}

}  // namespace

void begin_exits(const ExitState& st, int n, int classes, cudaStream_t stream) {
  if (n < 1 || classes < 1) fail("begin_exits: bad shape (n ", n, ", classes ", classes, ")");
  launch_begin_exits(st, n, long(n) * classes, stream);
  CUDA_CHECK_LAUNCH();
}

void exit_head_linear(const void* act, int n, int height, int width, int channels, Layout layout, Precision precision,
                      const LinearHeadView& h, int exit_id, const ExitState& st, int pos, float* pooled, float* scores,
                      bool staged, cudaStream_t stream) {
  if (n < 1 || height < 1 || width < 1 || channels < 1 || h.classes < 1 || h.pool.grid < 1 ||
      h.pool.grid > kMaxPoolGrid || h.dim != h.pool.features(channels))
    fail("exit head: bad shape (n ", n, ", ", height, "x", width, "x", channels, ", pool grid ", h.pool.grid, ", dim ",
         h.dim, ", classes ", h.classes, ")");
  if (pos != 0 && pos != 1) fail("exit head: position array ", pos, " is not 0 or 1");
  if (h.hidden < 0 || h.hidden > kMaxHidden)
    fail("exit head: ", h.hidden, " hidden units (valid: 0 to ", kMaxHidden, ")");
  dev::check_scores_smem("exit head", h.dim, h.classes, h.hidden);
  if (scores && !pooled) fail("exit head: the wide kernels need the pooled features' memory");
  if (scores && n > 65535) fail("exit head: batch ", n, " exceeds 65535");
  int widest = 0;  // staged pooling holds a cell's rows: wider ones are pooled unstaged
  for (int i = 0; i < h.pool.grid; ++i)
    widest = std::max(widest, pool_cell_end(i, width, h.pool.grid) - pool_cell_begin(i, width, h.pool.grid));
  staged = staged && layout == Layout::kNchw && (widest | 1) <= kPoolStage;
  with_act_type(precision, [&](auto tag) {
    using T = decltype(tag);
    if (scores)
      launch_exit_head_wide(static_cast<const T*>(act), n, height, width, channels, layout, h, exit_id, st, pos, pooled,
                            scores, staged, stream);
    else
      launch_exit_head(static_cast<const T*>(act), n, height, width, channels, layout, h, exit_id, st, pos, pooled,
                       stream);
  });
  CUDA_CHECK_LAUNCH();
}

void compact_rows(float* act, int n, size_t row_floats, const ExitState& st, int pos_in, int pos_out,
                  const CompactScratch& scratch, cudaStream_t stream) {
  if (n < 1 || row_floats < 1) fail("compact: bad shape (n ", n, ", row of ", row_floats, " floats)");
  if (n > 65535) fail("compact: batch ", n, " exceeds 65535");
  if (pos_in == pos_out || pos_in < 0 || pos_in > 1 || pos_out < 0 || pos_out > 1)
    fail("compact: position arrays ", pos_in, " -> ", pos_out, " must be 0 -> 1 or 1 -> 0");
  launch_compact(act, n, long(row_floats), st, pos_in, pos_out, scratch, stream);
  CUDA_CHECK_LAUNCH();
}

void finish_full_model(const float* logits, int n, int classes, const ExitState& st, int pos, cudaStream_t stream) {
  if (n < 0 || classes < 1) fail("finish: bad shape (n ", n, ", classes ", classes, ")");
  if (n == 0) return;
  launch_finish(logits, n, classes, st, pos, stream);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
