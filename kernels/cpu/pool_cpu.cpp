// CPU pooling and layout ops; see pool_cpu.h.
#include "kernels/cpu/pool_cpu.h"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <vector>

#include "kernels/cpu/threads.h"

namespace gati::cpu {

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
  const float inv = 1.0f / float(hw);
#pragma omp parallel for schedule(static) num_threads(thread_count()) if (size_t(n) * size_t(hw) * size_t(c) > 65536)
  for (int img = 0; img < n; ++img) {
    std::vector<float> acc(size_t(c), 0.f);
    const float* src = in + size_t(img) * size_t(hw) * size_t(c);
    for (int p = 0; p < hw; ++p)
      for (int ch = 0; ch < c; ++ch) acc[size_t(ch)] += src[size_t(p) * size_t(c) + size_t(ch)];
    for (int ch = 0; ch < c; ++ch) out[size_t(img) * size_t(c) + size_t(ch)] = acc[size_t(ch)] * inv;
  }
}

void pool_features_nhwc(const float* in, int n, int h, int w, int c, const PoolSpec& pool, float* out) {
  if (pool.grid == 1 && !pool.with_max) return global_avg_pool_nhwc(in, n, h * w, c, out);
  const int g = pool.grid, cells = pool.cells();
  const size_t dim = size_t(pool.features(c)), cf = size_t(c);
#pragma omp parallel for collapse(2) schedule(static) num_threads(thread_count()) if (size_t(n) * size_t(h) * size_t(w) * cf > 65536)
  for (int img = 0; img < n; ++img)
    for (int cell = 0; cell < cells; ++cell) {
      const int cy = cell / g, cx = cell % g;
      const int y0 = pool_cell_begin(cy, h, g), y1 = pool_cell_end(cy, h, g);
      const int x0 = pool_cell_begin(cx, w, g), x1 = pool_cell_end(cx, w, g);
      float* avg = out + size_t(img) * dim + size_t(cell) * cf;
      float* mx = pool.with_max ? avg + size_t(cells) * cf : nullptr;
      std::fill(avg, avg + c, 0.f);
      if (mx) std::fill(mx, mx + c, -std::numeric_limits<float>::infinity());
      for (int y = y0; y < y1; ++y)
        for (int x = x0; x < x1; ++x) {
          const float* src = in + ((size_t(img) * size_t(h) + size_t(y)) * size_t(w) + size_t(x)) * cf;
          for (int ch = 0; ch < c; ++ch) avg[ch] += src[ch];
          if (mx)
            for (int ch = 0; ch < c; ++ch) mx[ch] = mx[ch] < src[ch] ? src[ch] : mx[ch];
        }
      const float inv = 1.0f / float((y1 - y0) * (x1 - x0));
      for (int ch = 0; ch < c; ++ch) avg[ch] *= inv;
    }
}

void nchw_to_nhwc(const float* in, int n, int c, int h, int w, float* out) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(thread_count()) if (size_t(n) * size_t(c) * size_t(h) * size_t(w) > 65536)
  for (int img = 0; img < n; ++img)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int ch = 0; ch < c; ++ch)
          out[((size_t(img) * size_t(h) + size_t(y)) * size_t(w) + size_t(x)) * size_t(c) + size_t(ch)] =
              in[((size_t(img) * size_t(c) + size_t(ch)) * size_t(h) + size_t(y)) * size_t(w) + size_t(x)];
}

}  // namespace gati::cpu
