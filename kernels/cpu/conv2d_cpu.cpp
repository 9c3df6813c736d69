// CPU convolution; see conv2d_cpu.h.
#include "kernels/cpu/conv2d_cpu.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <utility>

#include "weights/common/error.h"

#include "kernels/cpu/threads.h"
#include "kernels/cpu/vec16.h"

namespace gati::cpu {
namespace {

// Scratch per im2col chunk: 8 Mi floats (32 MiB) bounds memory at any batch.
constexpr size_t kIm2colFloats = size_t(8) << 20;

// Rows [row0, row0 + rows) of the im2col matrix for group g: row = (image, oy,
// ox), column = (ky, kx, c) with c inside the group.
void im2col(const ConvParams& p, const float* in, int h, int w, int oh, int ow, int g, int row0, int rows, float* col) {
  const int cin_g = p.cin / p.groups;
  const int kcols = p.kernel * p.kernel * cin_g;
  parallel_for(rows, size_t(rows) * size_t(kcols) > 65536, [&](int r) {
    const int row = row0 + r;
    const int img = row / (oh * ow), rem = row % (oh * ow);
    const int oy = rem / ow, ox = rem % ow;
    float* dst = col + size_t(r) * size_t(kcols);
    for (int ky = 0; ky < p.kernel; ++ky) {
      const int iy = oy * p.stride - p.pad + ky;
      float* d = dst + ky * p.kernel * cin_g;
      if (iy < 0 || iy >= h) {
        std::memset(d, 0, sizeof(float) * size_t(p.kernel * cin_g));
        continue;
      }
      const float* src_row = in + (size_t(img) * size_t(h) + size_t(iy)) * size_t(w) * size_t(p.cin);
      const int ix0 = ox * p.stride - p.pad;
      // Taps inside the image: [lo, hi).  Without groups they are one
      // contiguous run of (hi - lo) * cin floats in NHWC, copied at once.
      const int lo = std::max(0, -ix0), hi = std::min(p.kernel, w - ix0);
      if (lo > 0) std::memset(d, 0, sizeof(float) * size_t(lo * cin_g));
      if (hi < p.kernel)
        std::memset(d + std::max(hi, 0) * cin_g, 0, sizeof(float) * size_t((p.kernel - std::max(hi, 0)) * cin_g));
      if (hi <= lo) continue;
      if (p.groups == 1) {
        std::memcpy(d + lo * cin_g, src_row + size_t(ix0 + lo) * size_t(p.cin),
                    sizeof(float) * size_t((hi - lo) * cin_g));
      } else {
        for (int kx = lo; kx < hi; ++kx)
          std::memcpy(d + kx * cin_g, src_row + size_t(ix0 + kx) * size_t(p.cin) + size_t(g * cin_g),
                      sizeof(float) * size_t(cin_g));
      }
    }
  });
}

typedef int i16 __attribute__((vector_size(64)));

// out[l] = x[idx[l]] (a vpermps with AVX-512).  GCC's __builtin_shuffle
// takes a runtime index vector; clang (the fuzz build) has no equivalent
// builtin, so it gets the lane loop.
inline v16 permute(v16 x, i16 idx) {
#if defined(__clang__)
  v16 r;
  for (int l = 0; l < 16; ++l) r[l] = x[idx[l] & 15];
  return r;
#else
  return __builtin_shuffle(x, idx);
#endif
}

constexpr int kMaxGroupWidth = 1024;

// The direct kernels' epilogue: output pixel opix's 16 channels from o0,
// plus the residual, through the ReLU, stored.
inline void finish16(v16 v, size_t opix, int cout, int o0, const float* residual, bool relu, float* out) {
  const size_t at = opix * size_t(cout) + size_t(o0);
  if (residual) v += load16(residual + at);
  if (relu) {
    const v16 zero{};
    v = v > zero ? v : zero;
  }
  std::memcpy(out + at, &v, sizeof v);
}

constexpr int kMaxDirectKernel = 7;  // kernel rows a work item of the direct kernel keeps

// One chunk of an output row for direct_pixels: its kernel rows' padded
// inputs, the 16 output channels' weights and bias, and where its results
// go.
struct RowChunk {
  const float* rows[kMaxDirectKernel];  // kernel row ky's padded inputs from the chunk's first pixel
  int k;
  unsigned valid;   // bit ky: kernel row ky lies inside the image
  int cg;           // inputs per group
  int sx;           // inputs from one output pixel's to the next's: stride * cg, or the stride when expanded
  int plane;        // expanded: vectors from one input channel's row to the next's
  const float* wt;  // weights [tap][ci][cout] from the block's first output channel
  int cout;
  v16 bias;
  const float* residual;  // at the chunk's first output pixel and channel, or null
  bool relu;
  float* out;  // at the chunk's first output pixel and channel
};

// P pixels of one output row, 16 output channels: bias + the sum over
// kernel rows ky whose bit is set in `valid`, then taps (kx, ci), of input
// (q * sx + kx * cg + ci) of rows[ky] times wt[((ky * k + kx) * cg + ci) *
// cout], plus the residual, through the ReLU, stored.  An input is a float
// broadcast to the 16 lanes (wide groups: the block's outputs share it) or,
// kExpanded, a vector of 16 (narrow groups: each lane's own group's input).
// P independent accumulator chains hide the FMA latency, and each weight
// vector serves the P pixels.  CG and S: cg and the stride when known at
// compile time (one immediate offset per pixel, no index register), else 0.
// Keeps v in a register: otherwise GCC folds each use into its FMA as a
// memory operand, and a value loaded once for three FMAs is loaded three times.
inline void in_register([[maybe_unused]] v16& v) {
#if defined(__AVX512F__)
  __asm__("" : "+v"(v));
#endif
}

constexpr int kMaxRowPixels = 14;  // accumulators, of AVX-512's 32 registers

template <int P, int CG, int S, bool kExpanded>
void direct_pixels(const RowChunk& c) {
  const int cg = CG ? CG : c.cg, sx = CG && S ? (kExpanded ? S : S * CG) : c.sx, k = c.k, cout = c.cout;
  v16 acc[P];
  for (int q = 0; q < P; ++q) acc[q] = c.bias;
  for (int ky = 0; ky < k; ++ky) {
    if (!(c.valid >> ky & 1u)) continue;
    // Taps (kx, ci) of one kernel row are one run of k * cg inputs, both in
    // the padded input row and in the weights.
    const float* xt = c.rows[ky];
    const float* wtt = c.wt + size_t(ky * k * cg) * size_t(cout);
    if constexpr (CG != 0 && S == 1) {
      if (k == 3) {
        // 3 wide at stride 1: input column j serves pixel j - kx through
        // tap kx, so per input channel the P + 2 columns are loaded once
        // for the 3 taps' weights (3P multiply-adds for P + 5 loads, where
        // a tap at a time loads P + 1 for P).
        for (int ci = 0; ci < CG; ++ci) {
          const v16 w0 = load16(wtt + size_t(ci) * size_t(cout)), w1 = load16(wtt + size_t(CG + ci) * size_t(cout)),
                    w2 = load16(wtt + size_t(2 * CG + ci) * size_t(cout));
#pragma GCC unroll 16
          for (int j = 0; j < P + 2; ++j) {
            v16 x;
            if constexpr (kExpanded)
              x = load16(xt + (size_t(ci) * size_t(c.plane) + size_t(j)) * 16);
            else
              x = v16{} + xt[j * CG + ci];
            in_register(x);
            if (j < P) acc[j] += x * w0;
            if (j >= 1 && j <= P) acc[j - 1] += x * w1;
            if (j >= 2) acc[j - 2] += x * w2;
          }
        }
        continue;
      }
    }
    if constexpr (kExpanded) {
      // Vector ci of column x at (ci * plane + x) * 16: a pixel's neighbours
      // along the row are the next cache lines.
      for (int kx = 0; kx < k; ++kx)
        for (int ci = 0; ci < cg; ++ci) {
          const v16 wv = load16(wtt + size_t(kx * cg + ci) * size_t(cout));
          const float* xc = xt + (size_t(ci) * size_t(c.plane) + size_t(kx)) * 16;
#pragma GCC unroll 14
          for (int q = 0; q < P; ++q) acc[q] += load16(xc + size_t(q * sx) * 16) * wv;
        }
    } else {
      for (int j = 0; j < k * cg; ++j) {
        const v16 wv = load16(wtt + size_t(j) * size_t(cout));
#pragma GCC unroll 14
        for (int q = 0; q < P; ++q) acc[q] += xt[q * sx + j] * wv;
      }
    }
  }
  for (int q = 0; q < P; ++q) finish16(acc[q], size_t(q), cout, 0, c.residual, c.relu, c.out);
}

using DirectPixelsFn = void (*)(const RowChunk&);
using DirectTable = std::array<DirectPixelsFn, kMaxRowPixels + 1>;  // by pixel count

template <int CG, int S, bool kExpanded, int... P>
constexpr DirectTable direct_table(std::integer_sequence<int, P...>) {
  return {nullptr, direct_pixels<P + 1, CG, S, kExpanded>...};
}

// Wide groups: [0] any width and stride, then 16, 32 and 64 per group at
// stride 1 and 16 and 32 at stride 2; narrow groups (expanded inputs): [6]
// any, then 4 and 8 per group at strides 1 and 2; [11] 128 (ungrouped) at
// stride 1.
constexpr auto kPixelSeq = std::make_integer_sequence<int, kMaxRowPixels>{};
constexpr DirectTable kDirectPixels[12] = {
    direct_table<0, 0, false>(kPixelSeq),  direct_table<16, 1, false>(kPixelSeq),
    direct_table<32, 1, false>(kPixelSeq), direct_table<64, 1, false>(kPixelSeq),
    direct_table<16, 2, false>(kPixelSeq), direct_table<32, 2, false>(kPixelSeq),
    direct_table<0, 0, true>(kPixelSeq),   direct_table<4, 1, true>(kPixelSeq),
    direct_table<8, 1, true>(kPixelSeq),   direct_table<4, 2, true>(kPixelSeq),
    direct_table<8, 2, true>(kPixelSeq),   direct_table<128, 1, false>(kPixelSeq)};

const DirectTable& direct_kernels(int cg, int stride) {
  if (stride == 1) {
    const int i = cg == 16    ? 1
                  : cg == 32  ? 2
                  : cg == 64  ? 3
                  : cg == 128 ? 11
                  : cg == 4   ? 7
                  : cg == 8   ? 8
                  : cg < 16   ? 6
                              : 0;
    return kDirectPixels[i];
  }
  if (stride == 2) return kDirectPixels[cg == 16 ? 4 : cg == 32 ? 5 : cg == 4 ? 9 : cg == 8 ? 10 : cg < 16 ? 6 : 0];
  return kDirectPixels[cg < 16 ? 6 : 0];
}

// The direct grouped convolution (cin_g == cout_g == cg, which divides 16
// or is a multiple of it), also for ungrouped layers (one group): per
// output pixel and 16 output channels, acc[o] += x[group(o) * cg + ci] *
// w[tap][ci][o], up to kMaxRowPixels pixels of a row at a time
// (direct_pixels).  No FLOP goes to the zeros a GEMM panel per group would
// pad.  Work items are (image, block of 16 output channels, run of output
// rows), enough for every thread; an item keeps a ring of the k padded
// input rows its current output row reads, each input row prepared once
// for the item:
// - wide groups (cg >= 16: the block's outputs share one group), the
//   group's cg channels of each pixel, copied; each input is a broadcast;
// - narrow groups (cg < 16: the block spans 16 / cg whole groups whose
//   inputs are the same 16 channels), each pixel's 16 channels expanded
//   into cg vectors, vector ci holding in lane l the input (l / cg) * cg +
//   ci that output l multiplies by its ci-th weight (a lane permutation,
//   once per input pixel instead of once per tap).
// The padding is zeros in the ring.  With `pool`, each finished output row,
// still in L1, goes into the exit's pooling (the item is the only writer of
// its 16 channels of that row).
bool conv_grouped_direct(const PackedConv& conv, const float* in, int n, int h, int w, float* out,
                         const float* residual, bool relu, RowPool* pool) {
  const ConvParams& p = conv.p;
  const int cg = p.cin / p.groups, cout_g = p.cout / p.groups, oh = p.out_size(h), ow = p.out_size(w);
  const int k = p.kernel;
  const bool narrow = cg < 16;
  i16 perm[16] = {};
  for (int ci = 0; ci < cg && narrow; ++ci)
    for (int l = 0; l < 16; ++l) perm[ci][l] = l / cg * cg + ci;
  const int lanes = narrow ? 16 : 1;         // floats per input in the ring
  const int cols = (ow - 1) * p.stride + k;  // padded input columns one output row reads
  const size_t row_floats = size_t(cols) * size_t(cg) * size_t(lanes);
  const int sx = narrow ? p.stride : p.stride * cg;  // inputs from one output pixel's to the next's
  const int x0 = std::min(cols, p.pad), x1 = std::clamp(w + p.pad, x0, cols);  // the columns that hold input pixels
  const int chunks = (ow + kMaxRowPixels - 1) / kMaxRowPixels;
  const int chunk = (ow + chunks - 1) / chunks;
  const int blocks = p.cout / 16;
  // Runs of output rows: at least 8 items per thread where the rows allow.
  const int threads = thread_count();
  const int runs_per_plane = std::clamp((8 * threads + n * blocks - 1) / (n * blocks), 1, oh);
  const int run = (oh + runs_per_plane - 1) / runs_per_plane, runs = (oh + run - 1) / run;
  const DirectTable& kernels = direct_kernels(cg, p.stride);
  const double macs = double(n) * oh * ow * p.cout * cg * k * k;
  parallel_for(n * blocks * runs, macs > 5e4, [&](int item) {
    const int r = item % runs, blk = item / runs % blocks, img = item / runs / blocks;
    const int o0 = blk * 16, c0 = narrow ? o0 : o0 / cout_g * cg;  // the block's first output, first input
    // The item's own ring, uninitialised (a thread_local one would leak from
    // OpenMP's and the server's worker threads, whose thread_locals are
    // never destroyed), on cache lines: an expanded input vector that
    // straddles two lines costs two loads (the cg8 kernel alone, L1-hot:
    // 70 -> 124 GFLOP/s on one thread).
    const AlignedFloats ring = aligned_floats(size_t(k) * row_floats);
    int held[kMaxDirectKernel];  // the input row each ring slot holds
    std::fill(held, held + k, -1);
    RowChunk c;
    c.k = k;
    c.cg = cg;
    c.sx = sx;
    c.plane = cols;
    c.wt = conv.grouped.data() + size_t(o0);
    c.cout = p.cout;
    c.bias = load16(conv.bias.data() + o0);
    c.relu = relu;
    const float* slot_of[kMaxDirectKernel];
    for (int oy = r * run; oy < std::min(oh, (r + 1) * run); ++oy) {
      c.valid = 0;
      for (int ky = 0; ky < k; ++ky) {
        const int iy = oy * p.stride - p.pad + ky;
        if (iy < 0 || iy >= h) continue;
        c.valid |= 1u << ky;
        const int slot = iy % k;  // k consecutive input rows: k distinct slots
        float* dst = ring.get() + size_t(slot) * row_floats;
        slot_of[ky] = dst;
        if (held[slot] == iy) continue;
        held[slot] = iy;
        const float* src =
            in + ((size_t(img) * size_t(h) + size_t(iy)) * size_t(w) + size_t(x0 - p.pad)) * size_t(p.cin) + c0;
        // The row this item prepares after the next output row's: its
        // pixels' channels are a cache line or few, a full channel row
        // apart, which the hardware prefetcher does not see coming.
        if (iy + p.stride < h) {
          const float* ahead = src + size_t(p.stride) * size_t(w) * size_t(p.cin);
          for (int x = x0; x < x1; ++x)
            for (int ch = 0; ch < (narrow ? 16 : cg); ch += 16)
              __builtin_prefetch(ahead + size_t(x - x0) * size_t(p.cin) + size_t(ch), 0, 3);
        }
        if (narrow) {  // cg planes of cols vectors
          // (Locals: the captured sizes would be reloaded after every store.)
          const int lo = x0, hi = x1, ncols = cols;
          const size_t cin = size_t(p.cin);
          for (int ci = 0; ci < cg; ++ci) {
            float* plane = dst + size_t(ci) * size_t(ncols) * 16;
            const i16 pm = perm[ci];
            std::memset(plane, 0, size_t(lo) * 16 * sizeof(float));
            std::memset(plane + size_t(hi) * 16, 0, size_t(ncols - hi) * 16 * sizeof(float));
            for (int x = lo; x < hi; ++x)
              store16(plane + size_t(x) * 16, permute(load16(src + size_t(x - lo) * cin), pm));
          }
          continue;
        }
        std::memset(dst, 0, size_t(x0) * size_t(cg) * sizeof(float));  // cols of cg floats
        std::memset(dst + size_t(x1) * size_t(cg), 0, size_t(cols - x1) * size_t(cg) * sizeof(float));
        if (cg == p.cin) {
          std::memcpy(dst + size_t(x0) * size_t(cg), src, size_t(x1 - x0) * size_t(cg) * sizeof(float));
        } else {
          for (int x = x0; x < x1; ++x)  // cg is a multiple of 16 here
            for (int ch = 0; ch < cg; ch += 16)
              store16(dst + size_t(x) * size_t(cg) + size_t(ch),
                      load16(src + size_t(x - x0) * size_t(p.cin) + size_t(ch)));
        }
      }
      const size_t row_at = (size_t(img) * size_t(oh) + size_t(oy)) * size_t(ow);
      for (int ox0 = 0; ox0 < ow; ox0 += chunk) {
        const size_t at = (row_at + size_t(ox0)) * size_t(p.cout) + size_t(o0);
        for (int ky = 0; ky < k; ++ky)
          if (c.valid >> ky & 1u) c.rows[ky] = slot_of[ky] + size_t(ox0) * size_t(sx) * size_t(lanes);
        c.residual = residual ? residual + at : nullptr;
        c.out = out + at;
        kernels[size_t(std::min(chunk, ow - ox0))](c);
      }
      if (pool) pool->add(row_at, ow, o0, out + row_at * size_t(p.cout) + size_t(o0), size_t(p.cout), 16);
    }
  });
  return pool != nullptr;
}

// NB blocks of 16 output channels for up to P pixels of a stem's output row
// (the row's kernel rows padded, `x` at the first pixel's first tap): each
// tap's NB weight vectors are loaded once and each pixel's input broadcast
// once, NB x P accumulators.
template <int NB, int P>
void stem_pixels(const PackedConv& conv, const float* x, size_t row_floats, int npix, int o0, size_t opix,
                 const float* residual, bool relu, float* out) {
  const ConvParams& p = conv.p;
  const int k = p.kernel, cin = p.cin, step = p.stride * cin;
  v16 acc[NB][P];
  for (int b = 0; b < NB; ++b) {
    const v16 bias = load16(conv.bias.data() + o0 + 16 * b);
    for (int q = 0; q < P; ++q) acc[b][q] = bias;
  }
  const float* wt = conv.grouped.data() + size_t(o0);
  for (int ky = 0; ky < k; ++ky) {
    const float* xr = x + size_t(ky) * row_floats;
    for (int t = 0; t < k * cin; ++t, wt += p.cout) {  // (kx, ci): consecutive in a padded row
      v16 wv[NB];
      for (int b = 0; b < NB; ++b) wv[b] = load16(wt + 16 * b);
      for (int q = 0; q < P; ++q) {
        const float xv = xr[q * step + t];
        for (int b = 0; b < NB; ++b) acc[b][q] += xv * wv[b];
      }
    }
  }
  for (int q = 0; q < npix; ++q)
    for (int b = 0; b < NB; ++b) finish16(acc[b][q], opix + size_t(q), p.cout, o0 + 16 * b, residual, relu, out);
}

// A stem over 1 to 4 input channels (the CIFAR ResNets' 3x3 over one grey
// channel, the ImageNet ResNets' 7x7 stride 2 over RGB), whose im2col has
// few columns (9 to 196) and, for the big stem, as many floats to write and
// read again as the arithmetic: per output row, the kernel's input rows are
// copied once with their padding as zeros, so every tap of every pixel is a
// plain load; 64 output channels at a time for 6 pixels where the layer has
// them (BM_Conv, 2 threads, the 7x7 stem at batch 1: 1060 -> 715 us), 16 for 8
// pixels otherwise.  The sums run bias, then (ky, kx, ci) in order, as in
// conv_grouped_direct's wide groups (padding rows add 0 * w where that
// kernel skips them: the same values up to the sign of a zero).  A batch-1
// CIFAR stem (0.1 M multiply-adds on 28x28) stays on the calling thread:
// waking the others cost more than the whole layer.
void conv_small_stem(const PackedConv& conv, const float* in, int n, int h, int w, float* out, const float* residual,
                     bool relu, RowPool* pool) {
  const ConvParams& p = conv.p;
  const int k = p.kernel, cin = p.cin, oh = p.out_size(h), ow = p.out_size(w);
  const bool wide = p.cout % 64 == 0;
  const int pix = wide ? 6 : 8;
  // Padded row: columns -pad .. enough for the last group of pixels.
  const int cols = ((ow + pix - 1) / pix * pix - 1) * p.stride + k;
  const size_t row_floats = size_t(cols) * size_t(cin);
  const double macs = double(n) * oh * ow * p.cout * cin * k * k;
  const bool parallel = macs >= double(1 << 20) * thread_count();
  parallel_for(n * oh, parallel, [&](int item) {
    const int oy = item % oh, img = item / oh;
    // The item's own rows (not a thread_local: those of OpenMP's and the
    // server's worker threads are never destroyed, a leak to LeakSanitizer).
    std::vector<float> rows(size_t(k) * row_floats, 0.f);
    const int x0 = std::max(0, p.pad), x1 = std::min(cols, w + p.pad);  // the columns that hold input pixels
    for (int ky = 0; ky < k; ++ky) {
      const int iy = oy * p.stride - p.pad + ky;
      if (iy < 0 || iy >= h) continue;
      std::memcpy(rows.data() + size_t(ky) * row_floats + size_t(x0) * size_t(cin),
                  in + ((size_t(img) * size_t(h) + size_t(iy)) * size_t(w) + size_t(x0 - p.pad)) * size_t(cin),
                  size_t(x1 - x0) * size_t(cin) * sizeof(float));
    }
    const size_t row_pix = (size_t(img) * size_t(oh) + size_t(oy)) * size_t(ow);
    for (int o0 = 0; o0 < p.cout; o0 += wide ? 64 : 16)
      for (int ox0 = 0; ox0 < ow; ox0 += pix) {
        const float* x = rows.data() + size_t(ox0 * p.stride) * size_t(cin);
        const int npix = std::min(pix, ow - ox0);
        if (wide)
          stem_pixels<4, 6>(conv, x, row_floats, npix, o0, row_pix + size_t(ox0), residual, relu, out);
        else
          stem_pixels<1, 8>(conv, x, row_floats, npix, o0, row_pix + size_t(ox0), residual, relu, out);
      }
    if (pool) pool->add(row_pix, ow, 0, out + row_pix * size_t(p.cout), size_t(p.cout), p.cout);  // the row, from L1
  });
}

bool is_small_stem(const ConvParams& p) { return p.groups == 1 && p.cin <= 4 && p.kernel <= 7 && p.cout % 16 == 0; }

// Whether conv2d_nhwc runs `p` with conv_grouped_direct (pack_conv decides).
bool uses_grouped_direct(const ConvParams& p) {
  // Also ungrouped 3x3 convolutions with 16, 32, 64 or 128 channels in and
  // out (the CIFAR ResNets' three stages, the ImageNet ResNets' first two),
  // where im2col costs as much as the arithmetic and small maps at batch 1
  // leave the GEMM one tile (BM_Conv, 2 threads, batch 1: 16 channels on
  // 28x28 24.7 -> 16 us, 32 on 14x14 23 -> 16 us, 64 on 7x7 21 -> 15 us, 64
  // on 56x56 no slower; 128 on 28x28 at batch 8 5.8 -> 5.2-5.3 ms; 256 and
  // 512, whose weights per block outgrow L1, ran up to 2x slower than the
  // GEMM), and small stems (3x3 over 1 to 4 channels: 9 to 36 GEMM columns).
  if (is_small_stem(p)) return true;  // the same packing, conv_small_stem
  const bool narrow_stage =
      p.groups == 1 && p.kernel == 3 && (p.cin == 16 || p.cin == 32 || p.cin == 64 || p.cin == 128);
  if (p.cin != p.cout || p.cin % p.groups || (p.groups == 1 && !narrow_stage)) return false;
  const int cg = p.cin / p.groups;
  return (16 % cg == 0 || cg % 16 == 0) && cg <= kMaxGroupWidth && p.cout % 16 == 0 && p.kernel <= kMaxDirectKernel;
}

}  // namespace

float* Workspace::get(size_t n) {
  if (n > capacity) {
    data = aligned_floats(n);
    capacity = n;
  }
  return data.get();
}

PackedConv pack_conv(const ConvParams& p, const float* weight, const float* bias) {
  if (p.groups <= 0 || p.cin % p.groups || p.cout % p.groups)
    fail("conv: channels ", p.cin, "->", p.cout, " not divisible by groups ", p.groups);
  PackedConv pc;
  pc.p = p;
  const int cin_g = p.cin / p.groups, cout_g = p.cout / p.groups;
  const int k = p.kernel * p.kernel * cin_g;
  std::vector<float> b(size_t(k) * size_t(cout_g));
  for (int g = 0; g < p.groups; ++g) {
    for (int o = 0; o < cout_g; ++o)
      for (int c = 0; c < cin_g; ++c)
        for (int ky = 0; ky < p.kernel; ++ky)
          for (int kx = 0; kx < p.kernel; ++kx) {
            const size_t src = ((size_t(g * cout_g + o) * size_t(cin_g) + size_t(c)) * size_t(p.kernel) + size_t(ky)) *
                                   size_t(p.kernel) +
                               size_t(kx);
            b[size_t((ky * p.kernel + kx) * cin_g + c) * size_t(cout_g) + size_t(o)] = weight[src];
          }
    pc.groups.push_back(pack_b(b.data(), k, cout_g, cout_g));
  }
  pc.bias.assign(bias, bias + p.cout);
  if (uses_grouped_direct(p)) {
    pc.grouped.assign(size_t(p.kernel * p.kernel) * size_t(cin_g) * size_t(p.cout), 0.f);
    for (int o = 0; o < p.cout; ++o)
      for (int c = 0; c < cin_g; ++c)
        for (int t = 0; t < p.kernel * p.kernel; ++t)
          pc.grouped[(size_t(t) * size_t(cin_g) + size_t(c)) * size_t(p.cout) + size_t(o)] =
              weight[(size_t(o) * size_t(cin_g) + size_t(c)) * size_t(p.kernel * p.kernel) + size_t(t)];
  }
  return pc;
}

bool pools_in_epilogue(const PackedConv& conv) { return conv.p.groups == 1 || !conv.grouped.empty(); }

bool conv2d_nhwc(const PackedConv& conv, const float* in, int n, int h, int w, float* out, const float* residual,
                 bool relu, Workspace& ws, RowPool* pool) {
  const ConvParams& p = conv.p;
  const int oh = p.out_size(h), ow = p.out_size(w);
  if (oh <= 0 || ow <= 0) fail("conv: input ", h, "x", w, " too small for kernel ", p.kernel, " stride ", p.stride);
  const int m = n * oh * ow;
  const int cin_g = p.cin / p.groups, cout_g = p.cout / p.groups;
  const int kcols = p.kernel * p.kernel * cin_g;
  if (pool && (pool->n != n || pool->h != oh || pool->w != ow || pool->c != p.cout))
    fail("conv: pooling sized for ", pool->n, "x", pool->h, "x", pool->w, "x", pool->c, ", output ", n, "x", oh, "x",
         ow, "x", p.cout);
  if (pool && !pools_in_epilogue(conv))
    fail("conv: no pooling in the output of a ", p.groups, "-group ", p.cin, "->", p.cout, " convolution");
  if (!conv.grouped.empty()) {
    if (!is_small_stem(p)) return conv_grouped_direct(conv, in, n, h, w, out, residual, relu, pool);
    conv_small_stem(conv, in, n, h, w, out, residual, relu, pool);
    return pool != nullptr;
  }
  const bool direct = p.kernel == 1 && p.stride == 1 && p.pad == 0;
  // With rows for every thread, each thread im2cols one block of rows into
  // its own buffer of about 256 KiB (L2) and multiplies it at once: the
  // im2col matrix never travels to memory and back, which at batch 8 costs
  // more than the arithmetic on ResNet's early layers.
  const int threads = thread_count();
  // (With pooling, whole output rows per block: RowPool takes each image
  // row's pixels in order from one thread.)
  int block_rows = std::clamp(65536 / kcols / 12 * 12, 24, 384);
  if (pool) block_rows = RowPool::whole_rows(block_rows, ow);
  const int blocks = (m + block_rows - 1) / block_rows;
  if (!direct && blocks >= 2 * threads) {
    float* base = ws.get(size_t(threads) * size_t(block_rows) * size_t(kcols));
    for (int g = 0; g < p.groups; ++g) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
      for (int b = 0; b < blocks; ++b) {
        float* col = base + size_t(thread_index()) * size_t(block_rows) * size_t(kcols);
        const int r0 = b * block_rows, rows = std::min(block_rows, m - r0);
        im2col(p, in, h, w, oh, ow, g, r0, rows, col);
        Epilogue ep;
        ep.bias = conv.bias.data() + g * cout_g;
        ep.relu = relu;
        ep.ldr = p.cout;
        ep.residual = residual ? residual + size_t(r0) * size_t(p.cout) + size_t(g * cout_g) : nullptr;
        ep.pool = pool;
        ep.pool_row0 = size_t(r0);
        gemm(rows, col, kcols, conv.groups[size_t(g)], out + size_t(r0) * size_t(p.cout) + size_t(g * cout_g), p.cout,
             ep);
      }
    }
    return pool != nullptr;
  }
  for (int g = 0; g < p.groups; ++g) {
    Epilogue ep;
    ep.bias = conv.bias.data() + g * cout_g;
    ep.relu = relu;
    ep.ldr = p.cout;
    ep.pool = pool;
    if (direct) {
      ep.residual = residual ? residual + g * cout_g : nullptr;
      gemm(m, in + g * cin_g, p.cin, conv.groups[size_t(g)], out + g * cout_g, p.cout, ep);
      continue;
    }
    int chunk = int(std::clamp<size_t>(kIm2colFloats / size_t(kcols), 64, size_t(m)));
    if (pool) chunk = std::max(1, chunk / ow) * ow;
    float* col = ws.get(size_t(chunk) * size_t(kcols));
    for (int r0 = 0; r0 < m; r0 += chunk) {
      const int rows = std::min(chunk, m - r0);
      im2col(p, in, h, w, oh, ow, g, r0, rows, col);
      ep.residual = residual ? residual + size_t(r0) * size_t(p.cout) + size_t(g * cout_g) : nullptr;
      ep.pool_row0 = size_t(r0);
      gemm(rows, col, kcols, conv.groups[size_t(g)], out + size_t(r0) * size_t(p.cout) + size_t(g * cout_g), p.cout,
           ep);
    }
  }
  return pool != nullptr;
}

void conv2d_nhwc_reference(const ConvParams& p, const float* weight, const float* bias, const float* in, int n, int h,
                           int w, float* out, const float* residual, bool relu) {
  const int oh = p.out_size(h), ow = p.out_size(w);
  const int cin_g = p.cin / p.groups, cout_g = p.cout / p.groups;
  for (int img = 0; img < n; ++img)
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox)
        for (int o = 0; o < p.cout; ++o) {
          const int g = o / cout_g;
          double s = bias ? bias[o] : 0.0;
          for (int c = 0; c < cin_g; ++c)
            for (int ky = 0; ky < p.kernel; ++ky)
              for (int kx = 0; kx < p.kernel; ++kx) {
                const int iy = oy * p.stride - p.pad + ky, ix = ox * p.stride - p.pad + kx;
                if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                const double x = in[((size_t(img) * size_t(h) + size_t(iy)) * size_t(w) + size_t(ix)) * size_t(p.cin) +
                                    size_t(g * cin_g + c)];
                s += x * weight[((size_t(o) * size_t(cin_g) + size_t(c)) * size_t(p.kernel) + size_t(ky)) *
                                    size_t(p.kernel) +
                                size_t(kx)];
              }
          const size_t idx =
              ((size_t(img) * size_t(oh) + size_t(oy)) * size_t(ow) + size_t(ox)) * size_t(p.cout) + size_t(o);
          if (residual) s += residual[idx];
          out[idx] = float(relu && s < 0 ? 0.0 : s);
        }
}

}  // namespace gati::cpu
