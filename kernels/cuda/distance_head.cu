// Freeze's approximate caches on the GPU; see distance_head.cuh.
//
// One block per row.  Its threads pool and standardise the row into shared
// memory, project it there in half-warps (dev::linear_scores without bias:
// the CPU's lane_dot), then each thread scans every blockDim-th key with the
// CPU's squared distance and keeps its own nearest k, sorted, in registers.
// k rounds of a block-wide argmin over the threads' next candidates merge
// them into the block's nearest k in the CPU's order (distance, then index),
// and thread 0 votes in double exactly as vote_neighbours does.  At batch 1
// that is one block scanning every key: a split over blocks (a GEMM and a
// top-k kernel, as the CUDA issue plans for large caches) is left for when a
// GPU can measure whether it pays at these sizes.
#include <cmath>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/distance_head.cuh"
#include "weights/common/error.h"

namespace gati::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void distance_head_kernel(const T* __restrict__ act, int height, int width, int channels, Layout layout,
                                     DistanceHeadView h, int exit_id, ExitState st, int pos,
                                     float* __restrict__ pooled) {
  extern __shared__ float smem[];
  const int dim = h.dim, padded = dev::padded_dim(dim);
  float* xs = smem;          // [padded] standardised features
  float* y = smem + padded;  // [reduced] the reduced query
  __shared__ float s_d2[kMaxNeighbours];
  __shared__ int s_idx[kMaxNeighbours];
  const int row = blockIdx.x, tid = threadIdx.x;
  dev::pool_and_standardise(act + long(row) * height * width * channels, height, width, channels, layout, h.pool, dim,
                            h.mean, h.inv_std, pooled + long(row) * dim, xs);
  __syncthreads();
  dev::linear_scores(h.projection, nullptr, xs, dim, h.reduced, y);
  __syncthreads();

  // This thread's nearest k of its keys, nearest first.
  const int k = h.neighbours < h.entries ? h.neighbours : h.entries;
  float bd[kMaxNeighbours];
  int bi[kMaxNeighbours];
  int have = 0;
  for (int j = tid; j < h.entries; j += blockDim.x) {
    const float d = dev::squared_distance(y, h.keys + long(j) * h.reduced, h.reduced);
    if (have == k && !(d < bd[k - 1])) continue;
    int at = have < k ? have++ : k - 1;
    while (at > 0 && d < bd[at - 1]) {
      bd[at] = bd[at - 1];
      bi[at] = bi[at - 1];
      --at;
    }
    bd[at] = d;
    bi[at] = j;
  }
  // Merge: each round the block's best next candidate wins and its thread
  // moves on to its own next one.
  int next = 0;
  for (int r = 0; r < k; ++r) {
    float wd;
    int wi;
    dev::block_argmin(next < have ? bd[next] : 0.f, next < have ? bi[next] : -1, &wd, &wi);
    if (next < have && bi[next] == wi) ++next;  // keys are unique to one thread
    if (tid == 0) {
      s_d2[r] = wd;
      s_idx[r] = wi;
    }
  }
  if (tid != 0) return;
  // vote_neighbours, in the same order and precision.
  double score[kMaxNeighbours];
  int label[kMaxNeighbours], count[kMaxNeighbours];
  int labels = 0;  // distinct labels among the neighbours, in order of first appearance
  for (int j = 0; j < k; ++j) {
    const int lab = h.labels[s_idx[j]];
    int u = 0;
    while (u < labels && label[u] != lab) ++u;
    if (u == labels) {
      label[u] = lab;
      score[u] = 0.0;
      count[u] = 0;
      ++labels;
    }
    ++count[u];
    score[u] += double(h.share[s_idx[j]]) / sqrt(fmax(double(s_d2[j]), 1e-12));
  }
  int best = -1;
  double best_c = 0.0;
  for (int u = 0; u < labels; ++u) {
    const double c = double(count[u]) / double(k) * score[u];
    if (best < 0 || c > best_c || (c == best_c && label[u] < best)) {
      best = label[u];
      best_c = c;
    }
  }
  const float conf = best < 0 ? 0.f : float(best_c / (1.0 + best_c));
  record_decision(st, pos, row, exit_id, best >= 0 && conf >= h.threshold, best, conf);
}

}  // namespace

void exit_head_distance(const void* act, int n, int height, int width, int channels, Layout layout, Precision precision,
                        const DistanceHeadView& h, int exit_id, const ExitState& st, int pos, float* pooled,
                        cudaStream_t stream) {
  if (n < 1 || height < 1 || width < 1 || channels < 1 || h.dim != h.pool.features(channels))
    fail("distance exit head: bad shape (n ", n, ", ", height, "x", width, "x", channels, ", dim ", h.dim, ")");
  if (h.reduced < 1 || h.entries < 1 || h.neighbours < 1 || h.neighbours > kMaxNeighbours || h.classes < 1)
    fail("distance exit head: bad cache (reduced ", h.reduced, ", entries ", h.entries, ", neighbours ", h.neighbours,
         ", classes ", h.classes, ")");
  if (pos != 0 && pos != 1) fail("distance exit head: position array ", pos, " is not 0 or 1");
  dev::check_scores_smem("distance exit head", h.dim, h.reduced);
  with_act_type(precision, [&](auto tag) {
    using T = decltype(tag);
    distance_head_kernel<T><<<unsigned(n), kThreads, dev::scores_smem_bytes(h.dim, h.reduced), stream>>>(
        static_cast<const T*>(act), height, width, channels, layout, h, exit_id, st, pos, pooled);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace gati::cuda
