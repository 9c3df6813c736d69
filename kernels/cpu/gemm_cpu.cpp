// Blocked SGEMM for the CPU backend; see gemm_cpu.h.
//
// Design: the micro-kernel keeps an MR x 32 block of C in registers
// (MR x 2 vectors of 16 floats: 24 accumulators at MR = 12, which fits the 32
// AVX-512 registers with room for the B loads and the broadcast), streams a
// KC-deep slice of one packed B panel (KC x 32 floats = 64 KiB, from L2;
// half of that, L1-resident, was 3-5% slower on whole ResNets: every KC
// slice but the last stores C and loads it back)
// and broadcasts A from up to 12 rows.  Work is split over (row block, panel
// group) tiles across OpenMP threads, so batch-1 layers with few rows still use
// every core through the column panels.  GCC vector extensions keep this
// portable: with -march=native on an AVX-512 machine they become zmm FMAs.
#include "kernels/cpu/gemm_cpu.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>
#include <vector>

#include "kernels/cpu/pool_cpu.h"
#include "kernels/cpu/threads.h"
#include "kernels/cpu/vec16.h"

namespace gati::cpu {
namespace {

constexpr int kMR = 12;
constexpr int kKC = 512;
constexpr int kMC = 96;  // a multiple of kMR
constexpr int kPanelsPerTile = 4;

// Cache lines (16 floats each) of the B slice a tile multiplies next, for a
// strip to prefetch while it computes.  At batch 1 a layer's weights come
// from memory (a whole ResNet's outgrow the caches) and are used by only a
// few strips of rows: each strip of a slice takes an even share of the next
// slice's lines, so that its trip from memory overlaps the arithmetic
// instead of stalling the slice's first strip.
struct Prefetch {
  const float* lines = nullptr;
  int count = 0;
};

// acc[r] += A[r, k0:k0+kc] * Bpanel[k0:k0+kc, 0:16*NV].  NV = 1 serves
// panels with at most 16 live columns (layers with 16 output channels, the
// last panel of others) without multiplying the padding.  Meanwhile it
// prefetches pf.count cache lines from pf.lines, evenly over its kc steps
// (see Prefetch).
template <int MR, int NV>
inline void micro_kernel(int kc, const float* a, int lda, const float* bp, v16 (&acc)[kMR][2], Prefetch pf) {
  int due = 0;
  for (int k = 0; k < kc; ++k) {
    for (due += pf.count; due >= kc; due -= kc) {
      __builtin_prefetch(pf.lines, 0, 2);
      pf.lines += 16;
    }
    const v16 b0 = *reinterpret_cast<const v16*>(bp + k * kPanel);
    const v16 b1 = NV == 2 ? *reinterpret_cast<const v16*>(bp + k * kPanel + 16) : v16{};
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const float av = a[r * lda + k];
      acc[r][0] += av * b0;
      if (NV == 2) acc[r][1] += av * b1;
    }
  }
}

template <int MR>
void strip(int kc, bool first, bool last, const float* a, int lda, const float* bp, float* c, int ldc, int cols,
           int col0, const Epilogue& ep, int row0, Prefetch pf) {
  v16 acc[kMR][2];
  float tmp[kPanel];
  for (int r = 0; r < MR; ++r) {
    if (first) {
      acc[r][0] = v16{};
      acc[r][1] = v16{};
    } else if (cols == kPanel) {
      acc[r][0] = load16(c + r * ldc);
      acc[r][1] = load16(c + r * ldc + 16);
    } else {
      std::memset(tmp, 0, sizeof tmp);
      std::memcpy(tmp, c + r * ldc, sizeof(float) * size_t(cols));
      acc[r][0] = load16(tmp);
      acc[r][1] = load16(tmp + 16);
    }
  }
  if (cols <= 16)
    micro_kernel<MR, 1>(kc, a, lda, bp, acc, pf);
  else
    micro_kernel<MR, 2>(kc, a, lda, bp, acc, pf);
  v16 bias0{}, bias1{};
  if (last && ep.bias) {
    for (int j = 0; j < kPanel; ++j) tmp[j] = j < cols ? ep.bias[col0 + j] : 0.f;
    bias0 = load16(tmp);
    bias1 = load16(tmp + 16);
  }
  for (int r = 0; r < MR; ++r) {
    if (last) {
      acc[r][0] += bias0;
      acc[r][1] += bias1;
      if (ep.residual) {
        const float* res = ep.residual + size_t(row0 + r) * size_t(ep.ldr) + col0;
        if (cols == kPanel) {
          acc[r][0] += load16(res);
          acc[r][1] += load16(res + 16);
        } else {
          std::memset(tmp, 0, sizeof tmp);
          std::memcpy(tmp, res, sizeof(float) * size_t(cols));
          acc[r][0] += load16(tmp);
          acc[r][1] += load16(tmp + 16);
        }
      }
      if (ep.relu) {
        const v16 zero{};
        acc[r][0] = acc[r][0] > zero ? acc[r][0] : zero;
        acc[r][1] = acc[r][1] > zero ? acc[r][1] : zero;
      }
    }
    if (cols == kPanel) {
      store16(c + r * ldc, acc[r][0]);
      store16(c + r * ldc + 16, acc[r][1]);
    } else {
      store16(tmp, acc[r][0]);
      store16(tmp + 16, acc[r][1]);
      std::memcpy(c + r * ldc, tmp, sizeof(float) * size_t(cols));
    }
  }
}

using StripFn = void (*)(int, bool, bool, const float*, int, const float*, float*, int, int, int, const Epilogue&, int,
                         Prefetch);
constexpr StripFn kStrips[kMR + 1] = {nullptr,  strip<1>, strip<2>, strip<3>,  strip<4>,  strip<5>, strip<6>,
                                      strip<7>, strip<8>, strip<9>, strip<10>, strip<11>, strip<12>};

}  // namespace

PackedB pack_b(const float* b, int k, int n, int ldb) {
  PackedB p;
  p.k = k;
  p.n = n;
  p.panels = (n + kPanel - 1) / kPanel;
  const size_t total = size_t(p.panels) * size_t(k) * kPanel;
  p.data = aligned_floats(total);
  std::memset(p.data.get(), 0, total * sizeof(float));
  for (int pj = 0; pj < p.panels; ++pj)
    for (int kk = 0; kk < k; ++kk)
      for (int j = 0; j < kPanel && pj * kPanel + j < n; ++j)
        p.data[(size_t(pj) * size_t(k) + size_t(kk)) * kPanel + size_t(j)] =
            b[size_t(kk) * size_t(ldb) + size_t(pj * kPanel + j)];
  return p;
}

void gemm(int m, const float* a, int lda, const PackedB& b, float* c, int ldc, const Epilogue& ep) {
  if (m <= 0 || b.n <= 0) return;
  const int k = b.k;
  // Row blocks of kMC rows; with a pooling epilogue, whole image rows so
  // that no image row is split between tiles, and whole kMR strips too
  // where both meet within 2 kMC rows (ResNet's 56, 28, 14 and 7 wide rows
  // give 168 and 84).
  int mc = kMC;
  if (ep.pool) {
    const int w = ep.pool->w, both = std::lcm(w, kMR);
    mc = both <= 2 * kMC ? both : RowPool::whole_rows(kMC, w);
  }
  const int row_blocks = (m + mc - 1) / mc;
  const int panel_groups = (b.panels + kPanelsPerTile - 1) / kPanelsPerTile;
  const int tiles = row_blocks * panel_groups;
  if (k == 0) {  // degenerate: only the epilogue
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < b.n; ++j) {
        float v =
            (ep.bias ? ep.bias[j] : 0.f) + (ep.residual ? ep.residual[size_t(i) * size_t(ep.ldr) + size_t(j)] : 0.f);
        if (ep.relu && v < 0) v = 0.f;
        c[size_t(i) * size_t(ldc) + size_t(j)] = v;
        if (ep.pool) ep.pool->add(ep.pool_row0 + size_t(i), 1, j, &v, 1, 1);
      }
    return;
  }
  auto tile = [&](int t) {
    const int rb = t / panel_groups, pg = t % panel_groups;
    const int r0 = rb * mc, r1 = std::min(m, r0 + mc);
    const int p0 = pg * kPanelsPerTile, p1 = std::min(b.panels, p0 + kPanelsPerTile);
    for (int k0 = 0; k0 < k; k0 += kKC) {
      const int kc = std::min(kKC, k - k0);
      const bool first = k0 == 0, last = k0 + kc == k;
      for (int pj = p0; pj < p1; ++pj) {
        const int col0 = pj * kPanel;
        const int cols = std::min(kPanel, b.n - col0);
        const float* bp = b.data.get() + (size_t(pj) * size_t(k) + size_t(k0)) * kPanel;
        // The next slice: the next panel's, or the first panel's next KC rows.
        const bool next_panel = pj + 1 < p1;
        const int nk0 = next_panel ? k0 : k0 + kKC, npj = next_panel ? pj + 1 : p0;
        const int lines = nk0 < k ? std::min(kKC, k - nk0) * (kPanel / 16) : 0;
        const float* next = b.data.get() + (size_t(npj) * size_t(k) + size_t(std::min(nk0, k))) * kPanel;
        // Strips of even height (49 rows: 10, 10, 10, 10, 9 rather than
        // four of 12 and one of 1, whose two accumulators wait on each other).
        const int strips = (r1 - r0 + kMR - 1) / kMR;
        const auto strip_row = [&](int s) { return r0 + (r1 - r0) * s / strips; };  // strip s's first row
        for (int s = 0; s < strips; ++s) {
          const int r = strip_row(s), rows = strip_row(s + 1) - r;
          const int from = lines * s / strips, to = lines * (s + 1) / strips;
          if (s + 1 < strips) {
            // The next strip's rows that come from beyond L2 (these are
            // lines a full row of C or A apart, a stride the hardware
            // prefetcher is slow to follow): its A rows on the first panel
            // where K is short (1x1 convolutions reading an activation; an
            // im2col block, deeper, is fresh in L2), its residual and C rows
            // on the last slice (ResNet-50 b1, layer1's 1x1 64 -> 256 with
            // the residual: 0.73 -> 0.54 ms).
            for (int i = strip_row(s + 1); i < strip_row(s + 2); ++i) {
              if (pj == p0 && kc <= 256)
                for (int kk = 0; kk < kc; kk += 16)
                  __builtin_prefetch(a + size_t(i) * size_t(lda) + size_t(k0 + kk), 0, 3);
              if (last) {
                for (int j = 0; j < cols; j += 16) {
                  if (ep.residual)
                    __builtin_prefetch(ep.residual + size_t(i) * size_t(ep.ldr) + size_t(col0 + j), 0, 3);
                  __builtin_prefetch(c + size_t(i) * size_t(ldc) + size_t(col0 + j), 1, 3);
                }
              }
            }
          }
          kStrips[rows](kc, first, last, a + size_t(r) * size_t(lda) + size_t(k0), lda, bp,
                        c + size_t(r) * size_t(ldc) + size_t(col0), ldc, cols, col0, ep, r,
                        Prefetch{next + size_t(from) * 16, to - from});
        }
      }
    }
    // The tile's finished rows (whole image rows), back from L2, into the
    // exit's pooling: all its columns at once, so that the channels' add
    // chains overlap.
    if (ep.pool) {
      const int col0 = p0 * kPanel, cols = std::min(b.n, p1 * kPanel) - col0;
      ep.pool->add(ep.pool_row0 + size_t(r0), r1 - r0, col0, c + size_t(r0) * size_t(ldc) + size_t(col0), size_t(ldc),
                   cols);
    }
  };
  // Small products stay out of a parallel region (threads.h: parallel_for):
  // below about a million multiply-adds per thread, waking the team costs
  // more than it saves.  Measured on this repository's 2-core machine: the
  // demo's 14x14x32 3x3 convolution at batch 1 (1.8 M MACs) took 42 us over
  // two threads and 22 us on one; the whole model 0.55 -> 0.42 ms.
  // Except where B outgrows L2 (a classifier at batch 1: 2 to 8 MB of
  // weights, each used once): then the product is a stream from memory,
  // and each core streams its own panels.
  constexpr size_t kMinMacsPerThread = size_t(1) << 20, kStreamBytes = size_t(1) << 20;
  const bool streams = size_t(b.panels) * size_t(k) * kPanel * sizeof(float) >= kStreamBytes;
  if (tiles == 1 || (!streams && size_t(m) * size_t(b.n) * size_t(k) < kMinMacsPerThread * size_t(thread_count()))) {
    for (int t = 0; t < tiles; ++t) tile(t);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(thread_count())
  for (int t = 0; t < tiles; ++t) tile(t);
}

double measure_gemm_peak_gflops() {
  constexpr int n = 768;
  std::vector<float> a(size_t(n) * n), b(size_t(n) * n), c(size_t(n) * n);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = float(int(i % 97) - 48) * 0.01f;
    b[i] = float(int(i % 89) - 44) * 0.01f;
  }
  const PackedB pb = pack_b(b.data(), n, n, n);
  double best = 0;
  for (int r = 0; r < 8; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    gemm(n, a.data(), n, pb, c.data(), n, Epilogue{});
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) best = std::max(best, 2.0 * double(n) * n * n / s / 1e9);  // the first run warms up
  }
  return best;
}

void gemm_reference(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
                    const Epilogue& ep) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int kk = 0; kk < k; ++kk)
        s += double(a[size_t(i) * size_t(lda) + size_t(kk)]) * double(b[size_t(kk) * size_t(ldb) + size_t(j)]);
      if (ep.bias) s += ep.bias[j];
      if (ep.residual) s += ep.residual[size_t(i) * size_t(ep.ldr) + size_t(j)];
      if (ep.relu && s < 0) s = 0;
      c[size_t(i) * size_t(ldc) + size_t(j)] = float(s);
    }
}

}  // namespace gati::cpu
