// CPU pooling and layout ops; see pool_cpu.h.
#include "kernels/cpu/pool_cpu.h"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <vector>

#include "kernels/cpu/threads.h"

namespace gati::cpu {

namespace {

// One cell of one image, channels [ch_begin, ch_end): avg[ch] (and mx[ch]
// with kMax) over rows y0..y1, columns x0..x1 of img [h, w, c].  Channels
// in blocks of 16 whose sums stay in a register across the cell (summing
// into memory would make every add wait for the previous store); each
// channel's adds run over the pixels in order, so how the channels are
// split (here, and between threads) never changes a result.
template <bool kMax>
void pool_cell(const float* __restrict img, int w, int c, int y0, int y1, int x0, int x1, int ch_begin, int ch_end,
               float* __restrict avg, float* __restrict mx) {
  constexpr int kBlock = 16;
  const float inv = 1.0f / float((y1 - y0) * (x1 - x0));
  const float lowest = -std::numeric_limits<float>::infinity();
  int ch0 = ch_begin;
  for (; ch0 + kBlock <= ch_end; ch0 += kBlock) {
    float a[kBlock], m[kBlock];
    for (int l = 0; l < kBlock; ++l) a[l] = 0.f, m[l] = lowest;
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) {
        const float* __restrict src = img + (size_t(y) * size_t(w) + size_t(x)) * size_t(c) + size_t(ch0);
#pragma omp simd
        for (int l = 0; l < kBlock; ++l) {
          a[l] += src[l];
          if constexpr (kMax) m[l] = m[l] < src[l] ? src[l] : m[l];
        }
      }
    for (int l = 0; l < kBlock; ++l) avg[ch0 + l] = a[l] * inv;
    if constexpr (kMax)
      for (int l = 0; l < kBlock; ++l) mx[ch0 + l] = m[l];
  }
  if (ch0 == ch_end) return;
  for (int ch = ch0; ch < ch_end; ++ch) avg[ch] = 0.f;
  if constexpr (kMax)
    for (int ch = ch0; ch < ch_end; ++ch) mx[ch] = lowest;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) {
      const float* __restrict src = img + (size_t(y) * size_t(w) + size_t(x)) * size_t(c);
      for (int ch = ch0; ch < ch_end; ++ch) avg[ch] += src[ch];
      if constexpr (kMax)
        for (int ch = ch0; ch < ch_end; ++ch) mx[ch] = mx[ch] < src[ch] ? src[ch] : mx[ch];
    }
  for (int ch = ch0; ch < ch_end; ++ch) avg[ch] *= inv;
}

void pool_cell(const float* img, int w, int c, int y0, int y1, int x0, int x1, float* avg, float* mx) {
  if (mx)
    pool_cell<true>(img, w, c, y0, y1, x0, x1, 0, c, avg, mx);
  else
    pool_cell<false>(img, w, c, y0, y1, x0, x1, 0, c, avg, nullptr);
}

}  // namespace

void max_pool_nhwc(const float* in, int n, int h, int w, int c, int kernel, int stride, int pad, float* out) {
  const int oh = (h + 2 * pad - kernel) / stride + 1, ow = (w + 2 * pad - kernel) / stride + 1;
#pragma omp parallel for collapse(2) schedule(static) num_threads(thread_count())
  for (int img = 0; img < n; ++img)
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        float* dst = out + ((size_t(img) * size_t(oh) + size_t(oy)) * size_t(ow) + size_t(ox)) * size_t(c);
        std::fill(dst, dst + c, -std::numeric_limits<float>::infinity());
        for (int ky = 0; ky < kernel; ++ky) {
          const int iy = oy * stride - pad + ky;
          if (iy < 0 || iy >= h) continue;
          for (int kx = 0; kx < kernel; ++kx) {
            const int ix = ox * stride - pad + kx;
            if (ix < 0 || ix >= w) continue;
            const float* src = in + ((size_t(img) * size_t(h) + size_t(iy)) * size_t(w) + size_t(ix)) * size_t(c);
            for (int ch = 0; ch < c; ++ch) dst[ch] = std::max(dst[ch], src[ch]);
          }
        }
      }
}

void global_avg_pool_nhwc(const float* in, int n, int hw, int c, float* out) {
  // Images and chunks of 64 channels split between threads: at batch 1 an
  // exit after ResNet-50's layer1 pools 56x56x256 values.
  constexpr int kChunk = 64;
  const int chunks = (c + kChunk - 1) / kChunk;
  parallel_for(n * chunks, size_t(n) * size_t(hw) * size_t(c) > 65536, [&](int k) {
    const int img = k / chunks, ch0 = (k % chunks) * kChunk;
    pool_cell<false>(in + size_t(img) * size_t(hw) * size_t(c), hw, c, 0, 1, 0, hw, ch0, std::min(c, ch0 + kChunk),
                     out + size_t(img) * size_t(c), nullptr);
  });
}

void pool_features_nhwc(const float* in, int n, int h, int w, int c, const PoolSpec& pool, float* out) {
  if (pool.grid == 1 && !pool.with_max) return global_avg_pool_nhwc(in, n, h * w, c, out);
  const int g = pool.grid, cells = pool.cells();
  const size_t dim = size_t(pool.features(c)), cf = size_t(c);
  parallel_for(n * cells, size_t(n) * size_t(h) * size_t(w) * cf > 65536, [&](int k) {  // k = image * cells + cell
    const int img = k / cells, cell = k % cells, cy = cell / g, cx = cell % g;
    float* avg = out + size_t(img) * dim + size_t(cell) * cf;
    pool_cell(in + size_t(img) * size_t(h) * size_t(w) * cf, w, c, pool_cell_begin(cy, h, g), pool_cell_end(cy, h, g),
              pool_cell_begin(cx, w, g), pool_cell_end(cx, w, g), avg,
              pool.with_max ? avg + size_t(cells) * cf : nullptr);
  });
}

void nchw_to_nhwc(const float* in, int n, int c, int h, int w, float* out) {
  parallel_for(n * h, size_t(n) * size_t(c) * size_t(h) * size_t(w) > 65536, [&](int row) {  // row = image * h + y
    const int img = row / h, y = row % h;
    for (int x = 0; x < w; ++x)
      for (int ch = 0; ch < c; ++ch)
        out[((size_t(img) * size_t(h) + size_t(y)) * size_t(w) + size_t(x)) * size_t(c) + size_t(ch)] =
            in[((size_t(img) * size_t(c) + size_t(ch)) * size_t(h) + size_t(y)) * size_t(w) + size_t(x)];
  });
}

}  // namespace gati::cpu
