// CPU pooling and layout ops; see pool_cpu.h.
#include "kernels/cpu/pool_cpu.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/threads.h"
#include "kernels/cpu/vec16.h"
#include "weights/common/error.h"

namespace gati::cpu {

namespace {

// One cell of one image, channels [ch_begin, ch_end): avg[ch] (and mx[ch]
// with kMax) over rows y0..y1, columns x0..x1 of img [h, w, c].  Each
// image row's pixels are summed left to right from 0, and the rows' sums
// added top to bottom from 0 (the order RowPool keeps while a convolution
// writes the activation, so both give the same bits).  Channels in blocks of
// 16 whose sums stay in registers across the cell (summing into memory would
// make every add wait for the previous store); how the channels are split
// (here, and between threads) never changes a result.
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
    for (int y = y0; y < y1; ++y) {
      float r[kBlock] = {};
      for (int x = x0; x < x1; ++x) {
        const float* __restrict src = img + (size_t(y) * size_t(w) + size_t(x)) * size_t(c) + size_t(ch0);
#pragma omp simd
        for (int l = 0; l < kBlock; ++l) {
          r[l] += src[l];
          if constexpr (kMax) m[l] = m[l] < src[l] ? src[l] : m[l];
        }
      }
      for (int l = 0; l < kBlock; ++l) a[l] += r[l];
    }
    for (int l = 0; l < kBlock; ++l) avg[ch0 + l] = a[l] * inv;
    if constexpr (kMax)
      for (int l = 0; l < kBlock; ++l) mx[ch0 + l] = m[l];
  }
  for (int ch = ch0; ch < ch_end; ++ch) {
    float a = 0.f, m = lowest;
    for (int y = y0; y < y1; ++y) {
      float r = 0.f;
      for (int x = x0; x < x1; ++x) {
        const float v = img[(size_t(y) * size_t(w) + size_t(x)) * size_t(c) + size_t(ch)];
        r += v;
        if constexpr (kMax) m = m < v ? v : m;
      }
      a += r;
    }
    avg[ch] = a * inv;
    if constexpr (kMax) mx[ch] = m;
  }
}

void pool_cell(const float* img, int w, int c, int y0, int y1, int x0, int x1, float* avg, float* mx) {
  if (mx)
    pool_cell<true>(img, w, c, y0, y1, x0, x1, 0, c, avg, mx);
  else
    pool_cell<false>(img, w, c, y0, y1, x0, x1, 0, c, avg, nullptr);
}

}  // namespace

void max_pool_nhwc(const float* in, int n, int h, int w, int c, int kernel, int stride, int pad, float* out) {
  constexpr int kMaxPoolTaps = 49;
  if (kernel < 1 || kernel * kernel > kMaxPoolTaps) fail("max pool: kernel ", kernel, " outside 1..7");
  const int oh = (h + 2 * pad - kernel) / stride + 1, ow = (w + 2 * pad - kernel) / stride + 1;
#pragma omp parallel for collapse(2) schedule(static) num_threads(thread_count())
  for (int img = 0; img < n; ++img)
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        float* dst = out + ((size_t(img) * size_t(oh) + size_t(oy)) * size_t(ow) + size_t(ox)) * size_t(c);
        // The window's pixels inside the image, each as its c channels.
        const float* taps[kMaxPoolTaps];
        int count = 0;
        for (int ky = 0; ky < kernel; ++ky) {
          const int iy = oy * stride - pad + ky;
          for (int kx = 0; kx < kernel && iy >= 0 && iy < h; ++kx) {
            const int ix = ox * stride - pad + kx;
            if (ix >= 0 && ix < w)
              taps[count++] = in + ((size_t(img) * size_t(h) + size_t(iy)) * size_t(w) + size_t(ix)) * size_t(c);
          }
        }
        // 16 channels at a time in a register, the rest one by one.
        int ch = 0;
        for (; ch + 16 <= c; ch += 16) {
          v16 m = v16{} - std::numeric_limits<float>::infinity();
          for (int t = 0; t < count; ++t) {
            const v16 x = load16(taps[t] + ch);
            m = x > m ? x : m;
          }
          store16(dst + ch, m);
        }
        for (; ch < c; ++ch) {
          float m = -std::numeric_limits<float>::infinity();
          for (int t = 0; t < count; ++t) m = std::max(m, taps[t][ch]);
          dst[ch] = m;
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
  const int g = pool.grid, cells = pool.cells();
  const size_t dim = size_t(pool.features(c)), cf = size_t(c);
  const bool parallel = size_t(n) * size_t(h) * size_t(w) * cf > 65536;
  if (cells == 1 && !pool.with_max) {
    // Images and chunks of 64 channels split between threads: at batch 1
    // an exit after ResNet-50's layer1 pools 56x56x256 values.
    constexpr int kChunk = 64;
    const int chunks = (c + kChunk - 1) / kChunk;
    parallel_for(n * chunks, parallel, [&](int k) {
      const int img = k / chunks, ch0 = (k % chunks) * kChunk;
      pool_cell<false>(in + size_t(img) * size_t(h) * size_t(w) * cf, w, c, 0, h, 0, w, ch0, std::min(c, ch0 + kChunk),
                       out + size_t(img) * dim, nullptr);
    });
    return;
  }
  parallel_for(n * cells, parallel, [&](int k) {  // k = image * cells + cell
    const int img = k / cells, cell = k % cells, cy = cell / g, cx = cell % g;
    float* avg = out + size_t(img) * dim + size_t(cell) * cf;
    pool_cell(in + size_t(img) * size_t(h) * size_t(w) * cf, w, c, pool_cell_begin(cy, h, g), pool_cell_end(cy, h, g),
              pool_cell_begin(cx, w, g), pool_cell_end(cx, w, g), avg,
              pool.with_max ? avg + size_t(cells) * cf : nullptr);
  });
}

void RowPool::start(int images, int height, int width, int channels, const PoolSpec& spec) {
  if (size_t(images) * size_t(height) * size_t(width) > 0xffffffffu)  // add() counts pixels in 32 bits
    fail("pooling: ", images, "x", height, "x", width, " pixels are too many");
  n = images, h = height, w = width, c = channels, pool = spec;
  const size_t count = size_t(n) * size_t(h) * size_t(pool.grid) * size_t(c);
  if (sums_.size() < count) sums_.resize(count);
  std::fill(sums_.begin(), sums_.begin() + std::ptrdiff_t(count), 0.f);
  if (pool.with_max) {
    if (maxes_.size() < count) maxes_.resize(count);
    std::fill(maxes_.begin(), maxes_.begin() + std::ptrdiff_t(count), -std::numeric_limits<float>::infinity());
  }
  sums = sums_.data();
  maxes = pool.with_max ? maxes_.data() : nullptr;
  cell_x0.resize(size_t(pool.grid));
  cell_x1.resize(size_t(pool.grid));
  for (int cx = 0; cx < pool.grid; ++cx) {
    cell_x0[size_t(cx)] = pool_cell_begin(cx, w, pool.grid);
    cell_x1[size_t(cx)] = pool_cell_end(cx, w, pool.grid);
  }
  cell_lo.resize(size_t(w));
  cell_hi.resize(size_t(w));
  for (int x = 0; x < w; ++x) {
    int lo = pool.grid, hi = -1;
    for (int cx = 0; cx < pool.grid; ++cx)
      if (cell_x0[size_t(cx)] <= x && x < cell_x1[size_t(cx)]) lo = std::min(lo, cx), hi = cx;
    cell_lo[size_t(x)] = lo;
    cell_hi[size_t(x)] = hi;
  }
}

namespace {

// s[j] += v[p][j] for p = 0 .. count - 1 in order (and m[j] = max), j < cols.
// Each channel's adds wait on each other; up to 128 channels at a time in
// registers keep eight chains going (a GEMM tile's columns).
template <int NV, bool kMax>
void add_pixels_block(float* __restrict s, float* __restrict m, const float* __restrict v, int count, size_t ldv) {
  v16 a[NV], b[NV];
  for (int q = 0; q < NV; ++q) {
    a[q] = load16(s + 16 * q);
    if constexpr (kMax) b[q] = load16(m + 16 * q);
  }
  for (int p = 0; p < count; ++p)
    for (int q = 0; q < NV; ++q) {
      const v16 x = load16(v + size_t(p) * ldv + size_t(16 * q));
      a[q] += x;
      if constexpr (kMax) b[q] = b[q] < x ? x : b[q];
    }
  for (int q = 0; q < NV; ++q) {
    store16(s + 16 * q, a[q]);
    if constexpr (kMax) store16(m + 16 * q, b[q]);
  }
}

void add_pixels(float* __restrict s, float* __restrict m, const float* __restrict v, int count, size_t ldv, int cols) {
  int j = 0;
  for (; j + 128 <= cols; j += 128)
    m ? add_pixels_block<8, true>(s + j, m + j, v + j, count, ldv)
      : add_pixels_block<8, false>(s + j, nullptr, v + j, count, ldv);
  for (; j + 64 <= cols; j += 64)
    m ? add_pixels_block<4, true>(s + j, m + j, v + j, count, ldv)
      : add_pixels_block<4, false>(s + j, nullptr, v + j, count, ldv);
  for (; j + 16 <= cols; j += 16)
    m ? add_pixels_block<1, true>(s + j, m + j, v + j, count, ldv)
      : add_pixels_block<1, false>(s + j, nullptr, v + j, count, ldv);
  for (; j < cols; ++j)
    for (int p = 0; p < count; ++p) {
      const float x = v[size_t(p) * ldv + size_t(j)];
      s[j] += x;
      if (m) m[j] = m[j] < x ? x : m[j];
    }
}

}  // namespace

void RowPool::add(size_t pixel0, int count, int ch0, const float* v, size_t ldv, int cols) {
  // 32-bit divisions, once per call (start() checked the sizes), and the
  // cells' columns from tables: this runs once per GEMM tile.
  const uint32_t hw = uint32_t(h) * uint32_t(w), pixel = uint32_t(pixel0), img0 = pixel / hw, rem = pixel - img0 * hw;
  size_t img = img0;
  int y = int(rem / uint32_t(w)), x = int(rem - uint32_t(y) * uint32_t(w));
  for (int i = 0; i < count;) {
    const int run = std::min(count - i, w - x);  // pixels i.. on image row y: columns x .. x + run - 1
    for (int cx = cell_lo[size_t(x)]; cx <= cell_hi[size_t(x + run - 1)]; ++cx) {
      const int a = std::max(x, cell_x0[size_t(cx)]), b = std::min(x + run, cell_x1[size_t(cx)]);
      const size_t at = ((img * size_t(h) + size_t(y)) * size_t(pool.grid) + size_t(cx)) * size_t(c) + size_t(ch0);
      add_pixels(sums + at, maxes ? maxes + at : nullptr, v + size_t(i + a - x) * ldv, b - a, ldv, cols);
    }
    i += run;
    x += run;
    if (x == w) {
      x = 0;
      if (++y == h) y = 0, ++img;
    }
  }
}

void pool_features_from_rows(const RowPool& rp, float* out) {
  const int g = rp.pool.grid, cells = rp.pool.cells();
  const size_t dim = size_t(rp.pool.features(rp.c)), cf = size_t(rp.c);
  for (int img = 0; img < rp.n; ++img)
    for (int cell = 0; cell < cells; ++cell) {
      const int cy = cell / g, cx = cell % g;
      const int y0 = pool_cell_begin(cy, rp.h, g), y1 = pool_cell_end(cy, rp.h, g);
      const int x0 = pool_cell_begin(cx, rp.w, g), x1 = pool_cell_end(cx, rp.w, g);
      const float inv = 1.0f / float((y1 - y0) * (x1 - x0));
      float* avg = out + size_t(img) * dim + size_t(cell) * cf;
      float* mx = avg + size_t(cells) * cf;
      for (int ch = 0; ch < rp.c; ++ch) avg[ch] = 0.f;
      if (rp.maxes)
        for (int ch = 0; ch < rp.c; ++ch) mx[ch] = -std::numeric_limits<float>::infinity();
      for (int y = y0; y < y1; ++y) {
        const size_t at = ((size_t(img) * size_t(rp.h) + size_t(y)) * size_t(g) + size_t(cx)) * cf;
        for (int ch = 0; ch < rp.c; ++ch) avg[ch] += rp.sums[at + size_t(ch)];
        if (rp.maxes)
          for (int ch = 0; ch < rp.c; ++ch)
            mx[ch] = mx[ch] < rp.maxes[at + size_t(ch)] ? rp.maxes[at + size_t(ch)] : mx[ch];
      }
      for (int ch = 0; ch < rp.c; ++ch) avg[ch] *= inv;
    }
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
