// Pooling and layout ops on the CPU (NHWC): the stem's max-pool, the global
// average pool in front of the classifier (and, later, at every exit point),
// and the NCHW -> NHWC conversion of user input.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "kernels/exit_state.h"

namespace gati::cpu {

// Padding counts as -inf, as in PyTorch.
void max_pool_nhwc(const float* in, int n, int h, int w, int c, int kernel, int stride, int pad, float* out);

// out[n, c] = mean over h*w of in[n, h, w, c]
void global_avg_pool_nhwc(const float* in, int n, int hw, int c, float* out);

// An exit's features: out[n, pool.features(c)] from in[n, h, w, c] as
// PoolSpec describes.  In each cell, every image row's pixels are summed
// left to right from 0, those row sums added top to bottom from 0, and the
// total scaled by 1/count in float (the CUDA twin does the same, and so does
// RowPool while a convolution writes the activation).
void pool_features_nhwc(const float* in, int n, int h, int w, int c, const PoolSpec& pool, float* out);

// An exit's pooling done while a convolution writes the activation it pools
// (Epilogue::pool in gemm_cpu.h), so that the exit never reads the
// activation back from memory: per image row and cell column, each
// channel's running sum (and maximum) over that row's pixels of the cell, in
// the order pool_features_nhwc adds them.  The writer must hand each image
// row's pixels over in order, from one thread (the GEMM's tiles keep whole
// image rows); pool_features_from_rows then adds the rows, bit for bit as
// pool_features_nhwc would.
struct RowPool {
  int n = 0, h = 0, w = 0, c = 0;
  PoolSpec pool;
  float* sums = nullptr;              // [n, h, grid, c]
  float* maxes = nullptr;             // [n, h, grid, c] with pool.with_max, else null
  std::vector<int> cell_lo, cell_hi;  // [w]: the first and last cell columns holding column x
  std::vector<int> cell_x0, cell_x1;  // [grid]: cell column cx spans columns cell_x0 .. cell_x1 - 1

  // Sized and cleared for an activation [n, h, w, c] (storage kept between uses).
  void start(int n, int h, int w, int c, const PoolSpec& pool);
  // About `rows` pixels as whole image rows of w pixels (the nearest
  // count, at least one row): the row blocks a writer may hand over.
  static int whole_rows(int rows, int w) { return std::max(1, (rows + w / 2) / w) * w; }
  // Output pixels pixel0 .. pixel0 + count - 1 (pixel = image * h * w +
  // y * w + x), channels [ch0, ch0 + cols): rows of v, ldv floats apart.
  void add(size_t pixel0, int count, int ch0, const float* v, size_t ldv, int cols);

 private:
  std::vector<float> sums_, maxes_;
};

// The finished features out[n, pool.features(c)] of what RowPool gathered.
void pool_features_from_rows(const RowPool& rows, float* out);

void nchw_to_nhwc(const float* in, int n, int c, int h, int w, float* out);

}  // namespace gati::cpu
