// Device-side building blocks shared by the exit-head and SGD kernels, each
// the mirror of a CPU routine in kernels/cpu/exit_head_cpu.cpp.
//
// Design decision: a sample's exit decision must not depend on the backend,
// so the scores are computed with the CPU's arithmetic: 16 lane partial sums
// over the standardised features, each a chain of separately rounded
// multiplies and adds (__fmul_rn/__fadd_rn are never contracted into FMAs;
// the CPU files are compiled with -ffp-contract=off), summed lane 0..15 in
// order.  A half-warp computes one class, one thread per lane.  The softmax
// sum runs in double, in a fixed tree order; it can differ from the CPU's
// sequential double sum only in the last bits of a double, far below a
// float's resolution.  Only for device compilation units.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cuda/act_type.cuh"
#include "kernels/exit_state.h"
#include "weights/common/error.h"

namespace gati::cuda::dev {

constexpr int kLanes = 16;
// Static shared memory block_argmax_sum uses, with room to spare: kernels
// that also take dynamic shared memory keep the sum under 48 KiB.
constexpr size_t kStaticSmem = 1024;

// v rounded up to whole lanes.
__host__ __device__ inline int padded_dim(int v) { return (v + kLanes - 1) / kLanes * kLanes; }

// Dynamic shared memory of a kernel that scores one sample: its standardised
// features and its class scores, each padded to the lanes.  The scores'
// padding is read, never used: nvcc widens a loop's last scalar loads of
// 16-byte-aligned shared memory into one 16-byte load (the selector's walk
// over the classes, exit_head.cu), which compute-sanitizer reported as a read
// past the end (H100, 2026-11-23).
// With a hidden layer (LinearHeadView::hidden), its units lie between them.
inline size_t scores_smem_bytes(int dim, int classes, int hidden = 0) {
  return size_t(padded_dim(dim) + (hidden > 0 ? padded_dim(hidden) : 0) + padded_dim(classes)) * sizeof(float);
}
// Host side, before a launch: that memory plus the static part must fit the
// 48 KiB a block gets without opting in; `what` names the op in the error.
inline void check_scores_smem(const char* what, int dim, int classes, int hidden = 0) {
  const size_t bytes = scores_smem_bytes(dim, classes, hidden);
  if (bytes + kStaticSmem > 48 * 1024)
    fail(what, ": ", dim, " features, ", hidden, " hidden units and ", classes, " classes need ", bytes,
         " bytes of shared memory, more than 48 KiB");
}

// Where feature f of one sample's pooled features lies (PoolSpec's order:
// averages [cell][c], then maxima [cell][c]) in an h x w x c activation:
// its channel, its cell's rows [y0, y1) and columns [x0, x1), and whether
// it is the cell's maximum.  Pooling it (every kernel that pools, and the
// CPU twin's pool_features_nhwc): each image row of the cell folded left to
// right from start() with step(), the rows' results folded top to bottom the
// same way, then value() (the maximum, or the sum scaled by the correctly
// rounded 1/count).
struct FeatureCell {
  int ch, y0, y1, x0, x1;
  bool is_max;
  __device__ float start() const { return is_max ? -INFINITY : 0.f; }
  __device__ float step(float acc, float v) const { return is_max ? (acc < v ? v : acc) : __fadd_rn(acc, v); }
  __device__ float value(float acc) const {
    return is_max ? acc : __fmul_rn(acc, __frcp_rn(float((y1 - y0) * (x1 - x0))));
  }
};

__device__ inline FeatureCell feature_cell(int f, int h, int w, int c, PoolSpec pool) {
  const int g = pool.grid, cells = pool.cells();
  const int rest = f / c, cell = rest % cells;
  return {f % c,
          pool_cell_begin(cell / g, h, g),
          pool_cell_end(cell / g, h, g),
          pool_cell_begin(cell % g, w, g),
          pool_cell_end(cell % g, w, g),
          rest >= cells};
}

// Feature f of one sample's pooled features from its activation src
// (h x w x c, in `layout`), as FeatureCell says.
template <typename T>
__device__ inline float pool_feature(const T* __restrict__ src, int h, int w, int c, Layout layout, PoolSpec pool,
                                     int f) {
  const FeatureCell fc = feature_cell(f, h, w, c, pool);
  float acc = fc.start();
  for (int y = fc.y0; y < fc.y1; ++y) {
    float row = fc.start();
    for (int x = fc.x0; x < fc.x1; ++x) row = fc.step(row, load_act(src, act_offset(layout, h, w, c, y, x, fc.ch)));
    acc = fc.step(acc, row);
  }
  return fc.value(acc);
}

// A pooled feature standardised as the linear heads read it.
__device__ inline float standardise(float p, const float* __restrict__ mean, const float* __restrict__ inv_std, int f) {
  return __fmul_rn(__fsub_rn(p, mean[f]), inv_std[f]);
}

// One row's features: pooled from src (h x w x c, in `layout`) into pooled_row[dim]
// (device) and standardised, (pooled - mean) * inv_std, into xs[padded_dim]
// (zero past dim).  Every thread of the block must call it; a barrier must
// follow before xs is read.
template <typename T>
__device__ inline void pool_and_standardise(const T* __restrict__ src, int h, int w, int c, Layout layout,
                                            PoolSpec pool, int dim, const float* __restrict__ mean,
                                            const float* __restrict__ inv_std, float* __restrict__ pooled_row,
                                            float* xs) {
  for (int f = threadIdx.x; f < padded_dim(dim); f += blockDim.x) {
    if (f < dim) {
      const float p = pool_feature(src, h, w, c, layout, pool, f);
      pooled_row[f] = p;
      xs[f] = standardise(p, mean, inv_std, f);
    } else {
      xs[f] = 0.f;
    }
  }
}

// Lane `l`'s partial sum of the CPU's lane_dot(w, x, dim); weights as
// floats or as halves (LinearHeadView::weight_f16: the same values).
template <typename W>
__device__ inline float lane_partial(const W* __restrict__ w, const float* __restrict__ x, int dim, int l) {
  const int full = dim / kLanes * kLanes;
  float acc = 0.f;
  for (int d = 0; d < full; d += kLanes) acc = __fadd_rn(acc, __fmul_rn(load_act(w, d + l), x[d + l]));
  if (full + l < dim) acc = __fadd_rn(acc, __fmul_rn(load_act(w, full + l), x[full + l]));
  return acc;
}

// Class k's score lane_dot(W[k], xs) + b[k] (bias null: no bias, as a
// projection; relu: a hidden unit, hidden_relu of that), computed by the
// half-warp whose lane this is (l), returned to all of its lanes; k >=
// classes gives 0.  Every lane of the warp must call it (the sum shuffles
// across the half-warp).
template <typename W>
__device__ inline float half_warp_score(const W* __restrict__ weight, const float* __restrict__ bias, const float* xs,
                                        int dim, int classes, int k, int l, bool relu = false) {
  const float part = k < classes ? lane_partial(weight + long(k) * dim, xs, dim, l) : 0.f;
  float s = 0.f;
  for (int j = 0; j < kLanes; ++j) s = __fadd_rn(s, __shfl_sync(0xffffffffu, part, j, kLanes));
  if (k < classes && bias) s = __fadd_rn(s, bias[k]);
  return relu ? hidden_relu(s) : s;
}

// z[k] for every class, half-warps over classes.  xs and z may be shared
// memory; every thread of the block must call it.
template <typename W>
__device__ inline void linear_scores(const W* __restrict__ weight, const float* __restrict__ bias, const float* xs,
                                     int dim, int classes, float* z, bool relu = false) {
  const int half = threadIdx.x / kLanes, l = threadIdx.x % kLanes, halves = blockDim.x / kLanes;
  for (int k0 = 0; k0 < classes; k0 += halves) {
    const int k = k0 + half;
    const float s = half_warp_score(weight, bias, xs, dim, classes, k, l, relu);
    if (k < classes && l == 0) z[k] = s;
  }
}

// A learned head's scores z[classes] from its standardised features xs
// (shared memory), through its hidden layer into u[padded hidden] (shared
// memory) when it has one: the CPU's linear_head_scores.  Every thread of
// the block must call it; a barrier must follow before z is read.
__device__ inline void head_scores(const LinearHeadView& h, const float* xs, float* u, float* z) {
  const float* in = xs;
  if (h.hidden > 0) {
    if (h.hidden_weight_f16)
      linear_scores(reinterpret_cast<const __half*>(h.hidden_weight_f16), h.hidden_bias, xs, h.dim, h.hidden, u, true);
    else
      linear_scores(h.hidden_weight, h.hidden_bias, xs, h.dim, h.hidden, u, true);
    __syncthreads();
    in = u;
  }
  if (h.weight_f16)  // the same weights in half the bytes
    linear_scores(reinterpret_cast<const __half*>(h.weight_f16), h.bias, in, h.inputs(), h.classes, z);
  else
    linear_scores(h.weight, h.bias, in, h.inputs(), h.classes, z);
}

// Block-wide argmax (first on ties) of z[classes] and sum_k exp(z_k - z_max)
// in double.  Every thread of the block must call it (blockDim.x <= 1024,
// a multiple of 32); all of them get the results.
__device__ inline void block_argmax_sum(const float* z, int classes, int* best_out, double* sum_out) {
  __shared__ float s_val[32];
  __shared__ int s_idx[32];
  __shared__ double s_sum[32];
  __shared__ int s_best;
  __shared__ double s_total;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = blockDim.x / 32;
  // argmax: each thread over its strided classes, then warps, then the block.
  float bv = 0.f;
  int bi = -1;
  for (int k = tid; k < classes; k += blockDim.x)
    if (bi < 0 || z[k] > bv) {
      bv = z[k];
      bi = k;
    }
  for (int off = 16; off > 0; off /= 2) {
    const float ov = __shfl_down_sync(0xffffffffu, bv, off);
    const int oi = __shfl_down_sync(0xffffffffu, bi, off);
    if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) {
      bv = ov;
      bi = oi;
    }
  }
  if (lane == 0) {
    s_val[warp] = bv;
    s_idx[warp] = bi;
  }
  __syncthreads();
  if (tid == 0) {
    float v = s_val[0];
    int i = s_idx[0];
    for (int wi = 1; wi < warps; ++wi)
      if (s_idx[wi] >= 0 && (i < 0 || s_val[wi] > v || (s_val[wi] == v && s_idx[wi] < i))) {
        v = s_val[wi];
        i = s_idx[wi];
      }
    s_best = i;
  }
  __syncthreads();
  const int best = s_best;
  const double zb = double(z[best]);
  double part = 0.0;
  for (int k = tid; k < classes; k += blockDim.x) part += exp(double(z[k]) - zb);
  for (int off = 16; off > 0; off /= 2) part += __shfl_down_sync(0xffffffffu, part, off);
  if (lane == 0) s_sum[warp] = part;
  __syncthreads();
  if (tid == 0) {
    double total = 0.0;
    for (int wi = 0; wi < warps; ++wi) total += s_sum[wi];
    s_total = total;
  }
  __syncthreads();
  *best_out = best;
  *sum_out = s_total;
  __syncthreads();  // the shared slots may be reused by the next call
}

// The CPU's squared_distance(a, b, dim) (kernels/cpu/memory_cpu.h): 16 lanes
// of rounded subtract, multiply and add, summed lane 0..15.
__device__ inline float squared_distance(const float* __restrict__ a, const float* __restrict__ b, int dim) {
  float lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = 0.f;
  const int full = dim / kLanes * kLanes;
  for (int d = 0; d < full; d += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float e = __fsub_rn(a[d + l], b[d + l]);
      lane[l] = __fadd_rn(lane[l], __fmul_rn(e, e));
    }
  for (int d = full; d < dim; ++d) {
    const float e = __fsub_rn(a[d], b[d]);
    lane[d - full] = __fadd_rn(lane[d - full], __fmul_rn(e, e));
  }
  float s = 0.f;
  for (int l = 0; l < kLanes; ++l) s = __fadd_rn(s, lane[l]);
  return s;
}

// (value, index) a before b: the smaller value, the lower index on ties;
// index < 0 is "no candidate" and comes last.
__device__ inline bool before(float av, int ai, float bv, int bi) {
  return ai >= 0 && (bi < 0 || av < bv || (av == bv && ai < bi));
}

// Block-wide argmin of one (value, index) candidate per thread (index < 0:
// none), the lowest index on ties.  Every thread of the block must call it
// (blockDim.x <= 1024, a multiple of 32); all of them get the result (index
// -1 when no thread had a candidate).
__device__ inline void block_argmin(float v, int i, float* v_out, int* i_out) {
  __shared__ float s_val[32];
  __shared__ int s_idx[32];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = blockDim.x / 32;
  for (int off = 16; off > 0; off /= 2) {
    const float ov = __shfl_down_sync(0xffffffffu, v, off);
    const int oi = __shfl_down_sync(0xffffffffu, i, off);
    if (before(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
  if (lane == 0) {
    s_val[warp] = v;
    s_idx[warp] = i;
  }
  __syncthreads();
  if (tid == 0) {
    for (int w = 1; w < warps; ++w)
      if (before(s_val[w], s_idx[w], v, i)) {
        v = s_val[w];
        i = s_idx[w];
      }
    s_val[0] = v;
    s_idx[0] = i;
  }
  __syncthreads();
  *v_out = s_val[0];
  *i_out = s_idx[0];
  __syncthreads();  // the shared slots may be reused by the next call
}

}  // namespace gati::cuda::dev
