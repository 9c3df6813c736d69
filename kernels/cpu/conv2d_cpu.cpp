// CPU convolution; see conv2d_cpu.h.
#include "kernels/cpu/conv2d_cpu.h"

#include <algorithm>
#include <cstring>

#include "weights/common/error.h"

#include "kernels/cpu/threads.h"

namespace gati::cpu {
namespace {

// Scratch per im2col chunk: 8 Mi floats (32 MiB) bounds memory at any batch.
constexpr size_t kIm2colFloats = size_t(8) << 20;

// Rows [row0, row0 + rows) of the im2col matrix for group g: row = (image, oy,
// ox), column = (ky, kx, c) with c inside the group.
void im2col(const ConvParams& p, const float* in, int h, int w, int oh, int ow, int g, int row0, int rows, float* col) {
  const int cin_g = p.cin / p.groups;
  const int kcols = p.kernel * p.kernel * cin_g;
#pragma omp parallel for schedule(static) num_threads(thread_count()) if (size_t(rows) * size_t(kcols) > 65536)
  for (int r = 0; r < rows; ++r) {
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
  }
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
  return pc;
}

void conv2d_nhwc(const PackedConv& conv, const float* in, int n, int h, int w, float* out, const float* residual,
                 bool relu, Workspace& ws) {
  const ConvParams& p = conv.p;
  const int oh = p.out_size(h), ow = p.out_size(w);
  if (oh <= 0 || ow <= 0) fail("conv: input ", h, "x", w, " too small for kernel ", p.kernel, " stride ", p.stride);
  const int m = n * oh * ow;
  const int cin_g = p.cin / p.groups, cout_g = p.cout / p.groups;
  const int kcols = p.kernel * p.kernel * cin_g;
  const bool direct = p.kernel == 1 && p.stride == 1 && p.pad == 0;
  for (int g = 0; g < p.groups; ++g) {
    Epilogue ep;
    ep.bias = conv.bias.data() + g * cout_g;
    ep.relu = relu;
    ep.ldr = p.cout;
    if (direct) {
      ep.residual = residual ? residual + g * cout_g : nullptr;
      gemm(m, in + g * cin_g, p.cin, conv.groups[size_t(g)], out + g * cout_g, p.cout, ep);
      continue;
    }
    const int chunk = int(std::clamp<size_t>(kIm2colFloats / size_t(kcols), 64, size_t(m)));
    float* col = ws.get(size_t(chunk) * size_t(kcols));
    for (int r0 = 0; r0 < m; r0 += chunk) {
      const int rows = std::min(chunk, m - r0);
      im2col(p, in, h, w, oh, ow, g, r0, rows, col);
      ep.residual = residual ? residual + size_t(r0) * size_t(p.cout) + size_t(g * cout_g) : nullptr;
      gemm(rows, col, kcols, conv.groups[size_t(g)], out + size_t(r0) * size_t(p.cout) + size_t(g * cout_g), p.cout,
           ep);
    }
  }
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
