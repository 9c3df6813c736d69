// CPU convolution; see conv2d_cpu.h.
#include "kernels/cpu/conv2d_cpu.h"

#include <algorithm>
#include <array>
#include <cstring>
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

// One chunk of an output row for wide_pixels: its padded input rows, the
// 16 output channels' weights and bias, and where its results go.
struct RowChunk {
  const float* x;  // padded input rows (row_floats apart), from the chunk's first pixel
  size_t row_floats;
  int k;
  unsigned valid;   // bit ky: kernel row ky lies inside the image
  int cg, sx;       // inputs per group; floats from one pixel's inputs to the next's (stride * cg)
  const float* wt;  // weights [tap][ci][cout] from the block's first output channel
  int cout;
  v16 bias;
  const float* residual;  // at the chunk's first output pixel and channel, or null
  bool relu;
  float* out;  // at the chunk's first output pixel and channel
};

// P pixels of one output row, 16 output channels: bias + the sum over
// kernel rows ky whose bit is set in `valid`, then (kx, ci), of
// x[ky][q * sx + kx * cg + ci] * wt[((ky * k + kx) * cg + ci) * cout], plus
// the residual, through the ReLU, stored.  P independent accumulator chains
// hide the FMA latency, and each weight vector serves the P pixels.
// CG: cg when known at compile time with stride 1 (the common 16 and 32:
// one immediate offset per pixel, no index register), else 0.
constexpr int kMaxRowPixels = 14;  // accumulators, of AVX-512's 32 registers

template <int P, int CG>
void wide_pixels(const RowChunk& c) {
  const int cg = CG ? CG : c.cg, sx = CG ? CG : c.sx, k = c.k, cout = c.cout;
  v16 acc[P];
  for (int q = 0; q < P; ++q) acc[q] = c.bias;
  for (int ky = 0; ky < k; ++ky) {
    if (!(c.valid >> ky & 1u)) continue;
    // Taps (kx, ci) of one kernel row are one run of k * cg floats, both
    // in the padded input row and in the weights.
    const float* xt = c.x + size_t(ky) * c.row_floats;
    const float* wtt = c.wt + size_t(ky * k * cg) * size_t(cout);
    for (int j = 0; j < k * cg; ++j) {
      const v16 wv = load16(wtt + size_t(j) * size_t(cout));
#pragma GCC unroll 14
      for (int q = 0; q < P; ++q) acc[q] += xt[q * sx + j] * wv;
    }
  }
  const v16 zero{};
  for (int q = 0; q < P; ++q) {
    v16 v = acc[q];
    if (c.residual) v += load16(c.residual + size_t(q) * size_t(cout));
    if (c.relu) v = v > zero ? v : zero;
    store16(c.out + size_t(q) * size_t(cout), v);
  }
}

using WidePixelsFn = void (*)(const RowChunk&);

template <int CG, int... P>
constexpr std::array<WidePixelsFn, kMaxRowPixels + 1> wide_table(std::integer_sequence<int, P...>) {
  return {nullptr, wide_pixels<P + 1, CG>...};
}

// [0]: any group width and stride; [1]: 16 per group, stride 1; [2]: 32, [3]: 64.
constexpr std::array<WidePixelsFn, kMaxRowPixels + 1> kWidePixels[4] = {
    wide_table<0>(std::make_integer_sequence<int, kMaxRowPixels>{}),
    wide_table<16>(std::make_integer_sequence<int, kMaxRowPixels>{}),
    wide_table<32>(std::make_integer_sequence<int, kMaxRowPixels>{}),
    wide_table<64>(std::make_integer_sequence<int, kMaxRowPixels>{})};

// The direct grouped convolution (cin_g == cout_g == cg, which divides 16
// or is a multiple of it): per output pixel and 16 output channels,
// acc[o] += x[group(o) * cg + ci] * w[tap][ci][o].  With cg < 16 the 16
// lanes span 16 / cg whole groups whose inputs are one load, and a lane
// permutation (lane l takes element (l / cg) * cg + ci) lines them up with
// their outputs; with cg >= 16 all lanes share a group and each input is a
// broadcast.  No FLOP goes to the zeros a GEMM panel per group would pad.
bool conv_grouped_direct(const PackedConv& conv, const float* in, int n, int h, int w, float* out,
                         const float* residual, bool relu, RowPool* pool) {
  const ConvParams& p = conv.p;
  const int cg = p.cin / p.groups, cout_g = p.cout / p.groups, oh = p.out_size(h), ow = p.out_size(w);
  i16 perm[8] = {};
  const bool permuted = cg < 16 && cg == cout_g;  // narrow groups; else each input is a broadcast
  for (int ci = 0; ci < cg && permuted; ++ci)
    for (int l = 0; l < 16; ++l) perm[ci][l] = l / cg * cg + ci;
  if (permuted) {
    // Few weights (taps x cg x cout floats, 18 KiB at ResNeXt's 4 per group):
    // pixels outside, channel blocks inside, whose independent chains the
    // core overlaps.
#pragma omp parallel for collapse(2) schedule(static) num_threads(thread_count())
    for (int img = 0; img < n; ++img)
      for (int oy = 0; oy < oh; ++oy)
        for (int ox = 0; ox < ow; ++ox) {
          const size_t opix = (size_t(img) * size_t(oh) + size_t(oy)) * size_t(ow) + size_t(ox);
          for (int o0 = 0; o0 < p.cout; o0 += 16) {
            v16 acc = load16(conv.bias.data() + o0);
            for (int ky = 0; ky < p.kernel; ++ky) {
              const int iy = oy * p.stride - p.pad + ky;
              if (iy < 0 || iy >= h) continue;
              for (int kx = 0; kx < p.kernel; ++kx) {
                const int ix = ox * p.stride - p.pad + kx;
                if (ix < 0 || ix >= w) continue;
                const v16 x =
                    load16(in + ((size_t(img) * size_t(h) + size_t(iy)) * size_t(w) + size_t(ix)) * size_t(p.cin) +
                           size_t(o0));
                const float* wt = conv.grouped.data() + size_t((ky * p.kernel + kx) * cg) * size_t(p.cout) + size_t(o0);
                for (int ci = 0; ci < cg; ++ci) acc += permute(x, perm[ci]) * load16(wt + size_t(ci) * size_t(p.cout));
              }
            }
            finish16(acc, opix, p.cout, o0, residual, relu, out);
          }
        }
    return false;
  }
  // Wide groups (16 or more per group): per work item (image, channel
  // block, output row), the kernel's input rows of the block's group are
  // copied once, with the padding as zeros, so that every tap of every pixel
  // is a plain load; then up to kMaxRowPixels pixels of the row at a time
  // (wide_pixels), the row split into equal chunks.
  // Work items are (image, channel block, output row), so a batch-1 layer
  // with one channel block still splits over every thread.
  const int blocks = p.cout / 16;
  const int k = p.kernel;
  const int cols = (ow - 1) * p.stride + k;  // padded input columns one output row reads
  const size_t row_floats = size_t(cols) * size_t(cg);
  const int sx = p.stride * cg;  // floats from one output pixel's inputs to the next's
  const int x0 = std::min(cols, p.pad), x1 = std::clamp(w + p.pad, x0, cols);  // the columns that hold input pixels
  const int chunks = (ow + kMaxRowPixels - 1) / kMaxRowPixels;
  const int chunk = (ow + chunks - 1) / chunks;
  const double macs = double(n) * oh * ow * p.cout * cg * k * k;
  thread_local std::vector<float> rows_buf;
  parallel_for(n * blocks * oh, macs > 5e4, [&](int item) {
    const int oy = item % oh, blk = item / oh % blocks, img = item / oh / blocks;
    const int o0 = blk * 16, c0 = o0 / cout_g * cg;  // the block's first output channel, its group's first input
    // (Inside a parallel region the thread_local is each thread's own.)
    if (rows_buf.size() < size_t(k) * row_floats) rows_buf.resize(size_t(k) * row_floats);
    unsigned valid = 0;  // bit ky: input row oy * stride - pad + ky exists
    for (int ky = 0; ky < k; ++ky) {
      const int iy = oy * p.stride - p.pad + ky;
      if (iy < 0 || iy >= h) continue;
      valid |= 1u << ky;
      float* dst = rows_buf.data() + size_t(ky) * row_floats;
      std::memset(dst, 0, size_t(x0) * size_t(cg) * sizeof(float));
      std::memset(dst + size_t(x1) * size_t(cg), 0, size_t(cols - x1) * size_t(cg) * sizeof(float));
      const float* src = in + ((size_t(img) * size_t(h) + size_t(iy)) * size_t(w) + size_t(x0 - p.pad)) * size_t(p.cin);
      if (cg == p.cin) {
        std::memcpy(dst + size_t(x0) * size_t(cg), src, size_t(x1 - x0) * size_t(cg) * sizeof(float));
      } else {
        for (int x = x0; x < x1; ++x)  // cg is a multiple of 16 here
          for (int c = 0; c < cg; c += 16)
            store16(dst + size_t(x) * size_t(cg) + size_t(c),
                    load16(src + size_t(x - x0) * size_t(p.cin) + size_t(c0 + c)));
      }
    }
    RowChunk c;
    c.row_floats = row_floats;
    c.k = k;
    c.valid = valid;
    c.cg = cg;
    c.sx = sx;
    c.wt = conv.grouped.data() + size_t(o0);
    c.cout = p.cout;
    c.bias = load16(conv.bias.data() + o0);
    c.relu = relu;
    const WidePixelsFn* kernels = kWidePixels[p.stride != 1 ? 0
                                              : cg == 16    ? 1
                                              : cg == 32    ? 2
                                              : cg == 64    ? 3
                                                            : 0]
                                      .data();
    for (int ox0 = 0; ox0 < ow; ox0 += chunk) {
      const size_t at =
          ((size_t(img) * size_t(oh) + size_t(oy)) * size_t(ow) + size_t(ox0)) * size_t(p.cout) + size_t(o0);
      c.x = rows_buf.data() + size_t(ox0) * size_t(sx);
      c.residual = residual ? residual + at : nullptr;
      c.out = out + at;
      kernels[std::min(chunk, ow - ox0)](c);
    }
    // The row, still in L1, into the exit's pooling: this item is its only
    // writer of these 16 channels.
    if (pool)
      pool->add((size_t(img) * size_t(oh) + size_t(oy)) * size_t(ow), ow, o0,
                out + (size_t(img) * size_t(oh) + size_t(oy)) * size_t(ow) * size_t(p.cout) + size_t(o0),
                size_t(p.cout), 16);
  });
  return pool != nullptr;
}

// A stem over 1 to 4 input channels (the CIFAR ResNets' 3x3 over one
// grey channel), whose im2col has too few columns for the GEMM: per output
// row, the kernel's input rows are copied once with their padding as
// zeros, so every tap of every pixel is a plain load, and eight pixels share
// each weight vector.  The sums run bias, then (ky, kx, ci) in order, as in
// conv_grouped_direct's wide groups (padding rows add 0 * w where that
// kernel skips them: the same values up to the sign of a zero).  A batch-1 stem (0.1 M
// multiply-adds on 28x28) stays on the calling thread: waking the others
// cost more than the whole layer.
void conv_small_stem(const PackedConv& conv, const float* in, int n, int h, int w, float* out, const float* residual,
                     bool relu) {
  const ConvParams& p = conv.p;
  const int k = p.kernel, cin = p.cin, oh = p.out_size(h), ow = p.out_size(w);
  constexpr int kPix = 8;
  // Padded row: columns -pad .. enough for the last group of eight pixels.
  const int cols = ((ow + kPix - 1) / kPix * kPix - 1) * p.stride + k;
  const size_t row_floats = size_t(cols) * size_t(cin);
  const double macs = double(n) * oh * ow * p.cout * cin * k * k;
  const bool parallel = macs >= double(1 << 20) * thread_count();
  thread_local std::vector<float> rows_buf;
  parallel_for(n * oh, parallel, [&](int item) {
    const int oy = item % oh, img = item / oh;
    // (Inside a parallel region the thread_local is each thread's own.)
    rows_buf.assign(size_t(k) * row_floats, 0.f);
    const int x0 = std::max(0, p.pad), x1 = std::min(cols, w + p.pad);  // the columns that hold input pixels
    for (int ky = 0; ky < k; ++ky) {
      const int iy = oy * p.stride - p.pad + ky;
      if (iy < 0 || iy >= h) continue;
      std::memcpy(rows_buf.data() + size_t(ky) * row_floats + size_t(x0) * size_t(cin),
                  in + ((size_t(img) * size_t(h) + size_t(iy)) * size_t(w) + size_t(x0 - p.pad)) * size_t(cin),
                  size_t(x1 - x0) * size_t(cin) * sizeof(float));
    }
    const float* rows = rows_buf.data();
    for (int o0 = 0; o0 < p.cout; o0 += 16) {
      const v16 bias = load16(conv.bias.data() + o0);
      for (int ox0 = 0; ox0 < ow; ox0 += kPix) {
        v16 acc[kPix];
        for (int q = 0; q < kPix; ++q) acc[q] = bias;
        for (int ky = 0; ky < k; ++ky)
          for (int kx = 0; kx < k; ++kx) {
            const float* wt = conv.grouped.data() + size_t((ky * k + kx) * cin) * size_t(p.cout) + size_t(o0);
            const float* x = rows + size_t(ky) * row_floats + size_t(ox0 * p.stride + kx) * size_t(cin);
            for (int ci = 0; ci < cin; ++ci) {
              const v16 wv = load16(wt + size_t(ci) * size_t(p.cout));
              for (int q = 0; q < kPix; ++q) acc[q] += x[size_t(q * p.stride) * size_t(cin) + size_t(ci)] * wv;
            }
          }
        const int npix = std::min(kPix, ow - ox0);
        for (int q = 0; q < npix; ++q) {
          const size_t opix = (size_t(img) * size_t(oh) + size_t(oy)) * size_t(ow) + size_t(ox0 + q);
          finish16(acc[q], opix, p.cout, o0, residual, relu, out);
        }
      }
    }
  });
}

bool is_small_stem(const ConvParams& p) { return p.groups == 1 && p.cin <= 4 && p.kernel <= 3 && p.cout % 16 == 0; }

// Whether conv2d_nhwc runs `p` with conv_grouped_direct (pack_conv decides).
bool uses_grouped_direct(const ConvParams& p) {
  // Also ungrouped 3x3 convolutions with 16, 32 or 64 channels in and out
  // (the CIFAR ResNets' three stages, the ImageNet ResNets' first), where
  // im2col costs as much as the arithmetic and small maps at batch 1 leave
  // the GEMM one tile (BM_Conv, 2 threads, batch 1: 16 channels on 28x28
  // 24.7 -> 16 us, 32 on 14x14 23 -> 16 us, 64 on 7x7 21 -> 15 us, 64 on 56x56
  // no slower), and small stems (3x3 over 1 to 4 channels: 9 to 36 GEMM
  // columns).
  if (is_small_stem(p)) return true;  // the same packing, conv_small_stem
  const bool cifar_stage = p.groups == 1 && p.kernel == 3 && (p.cin == 16 || p.cin == 32 || p.cin == 64);
  if (p.cin != p.cout || p.cin % p.groups || (p.groups == 1 && !cifar_stage)) return false;
  const int cg = p.cin / p.groups;
  return (16 % cg == 0 || cg % 16 == 0) && cg <= kMaxGroupWidth && p.cout % 16 == 0;
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

bool pools_in_epilogue(const PackedConv& conv) {
  const ConvParams& p = conv.p;
  return conv.grouped.empty() ? p.groups == 1 : !is_small_stem(p) && p.cin / p.groups >= 16;
}

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
    conv_small_stem(conv, in, n, h, w, out, residual, relu);
    return false;
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
