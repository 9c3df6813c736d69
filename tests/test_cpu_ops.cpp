// Every CPU op against a plain-loop reference on the shapes ResNets use
// (7x7/2 stem, 3x3/1 and /2, 1x1 projections /1 and /2, grouped 3x3), at
// several batch sizes including odd ones, with random data, and with sentinel
// values around each output to catch out-of-bounds writes.
#include <cctype>
#include <cstring>

#include "kernels/cpu/conv2d_cpu.h"
#include "kernels/cpu/exit_head_cpu.h"
#include "kernels/cpu/gemm_cpu.h"
#include "kernels/cpu/pool_cpu.h"
#include "test_util.h"
#include "weights/common/error.h"

namespace gati {
namespace {

constexpr int kGuard = 64;
constexpr float kSentinel = -12345.678f;

// An output buffer with guard zones either side.
struct Guarded {
  explicit Guarded(size_t n) : buf(n + 2 * kGuard, kSentinel), size(n) {}
  float* data() { return buf.data() + kGuard; }
  bool guards_intact() const {
    for (int i = 0; i < kGuard; ++i)
      if (buf[size_t(i)] != kSentinel || buf[size_t(kGuard) + size + size_t(i)] != kSentinel) return false;
    return true;
  }
  std::vector<float> buf;
  size_t size;
};

struct GemmCase {
  int m, n, k;
  bool bias, residual, relu;
};

class Gemm : public ::testing::TestWithParam<GemmCase> {};

TEST_P(Gemm, MatchesReference) {
  const GemmCase c = GetParam();
  const int lda = c.k + 3, ldc = c.n + 5;  // non-tight leading dimensions
  const auto a = test::random_floats(size_t(c.m) * size_t(lda), 1);
  const auto b = test::random_floats(size_t(c.k) * size_t(c.n), 2, 1.0f / std::sqrt(float(std::max(c.k, 1))));
  const auto bias = test::random_floats(size_t(c.n), 3);
  const auto res = test::random_floats(size_t(c.m) * size_t(ldc), 4);
  cpu::Epilogue ep;
  ep.bias = c.bias ? bias.data() : nullptr;
  ep.residual = c.residual ? res.data() : nullptr;
  ep.ldr = ldc;
  ep.relu = c.relu;
  std::vector<float> ref(size_t(c.m) * size_t(ldc), kSentinel);
  cpu::gemm_reference(c.m, c.n, c.k, a.data(), lda, b.data(), c.n, ref.data(), ldc, ep);
  Guarded got(size_t(c.m) * size_t(ldc));
  const cpu::PackedB pb = cpu::pack_b(b.data(), c.k, c.n, c.n);
  cpu::gemm(c.m, a.data(), lda, pb, got.data(), ldc, ep);
  for (int i = 0; i < c.m; ++i)
    ASSERT_TRUE(test::all_close(got.data() + size_t(i) * size_t(ldc), ref.data() + size_t(i) * size_t(ldc), size_t(c.n),
                                1e-5, 1e-4))
        << "row " << i;
  // Padding columns between n and ldc must be untouched.
  for (int i = 0; i < c.m; ++i)
    for (int j = c.n; j < ldc; ++j) ASSERT_EQ(got.data()[size_t(i) * size_t(ldc) + size_t(j)], kSentinel);
  EXPECT_TRUE(got.guards_intact());
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Gemm,
    ::testing::Values(GemmCase{1, 1, 1, false, false, false}, GemmCase{1, 1000, 512, true, false, false},
                      GemmCase{7, 33, 19, true, true, true}, GemmCase{64, 64, 576, true, false, true},
                      GemmCase{49, 512, 4608, true, true, true}, GemmCase{130, 70, 300, false, true, false},
                      GemmCase{9, 31, 0, true, true, true}),
    [](const auto& param_info) {
      const GemmCase& c = param_info.param;
      return "m" + std::to_string(c.m) + "n" + std::to_string(c.n) + "k" + std::to_string(c.k) +
             (c.bias ? "_bias" : "") + (c.residual ? "_res" : "") + (c.relu ? "_relu" : "");
    });

struct ConvCase {
  const char* what;
  int cin, cout, kernel, stride, pad, groups, h, w;
};

class Conv : public ::testing::TestWithParam<std::tuple<ConvCase, int>> {};

// One convolution's random input, weights, bias and residual (seeds from `seed`).
struct ConvData {
  cpu::ConvParams p;
  int oh, ow;
  size_t out_elems;
  std::vector<float> in, w, bias, res;
  ConvData(const ConvCase& c, int n, uint32_t seed)
      : p{c.cin, c.cout, c.kernel, c.stride, c.pad, c.groups},
        oh(p.out_size(c.h)),
        ow(p.out_size(c.w)),
        out_elems(size_t(n) * size_t(oh) * size_t(ow) * size_t(c.cout)),
        in(test::random_floats(size_t(n) * size_t(c.h) * size_t(c.w) * size_t(c.cin), seed)),
        w(test::random_floats(size_t(c.cout) * size_t(c.cin / c.groups) * size_t(c.kernel * c.kernel), seed + 1,
                              1.0f / std::sqrt(float(c.cin / c.groups * c.kernel * c.kernel)))),
        bias(test::random_floats(size_t(c.cout), seed + 2)),
        res(test::random_floats(out_elems, seed + 3)) {}
};

TEST_P(Conv, MatchesReference) {
  const auto [c, n] = GetParam();
  const ConvData d(c, n, 11);
  const auto& [p, oh, ow, out_elems, in, w, bias, res] = d;
  for (bool with_residual : {false, true}) {
    std::vector<float> ref(out_elems);
    cpu::conv2d_nhwc_reference(p, w.data(), bias.data(), in.data(), n, c.h, c.w, ref.data(),
                               with_residual ? res.data() : nullptr, true);
    Guarded got(out_elems);
    cpu::Workspace ws;
    cpu::conv2d_nhwc(cpu::pack_conv(p, w.data(), bias.data()), in.data(), n, c.h, c.w, got.data(),
                     with_residual ? res.data() : nullptr, true, ws);
    ASSERT_TRUE(test::all_close(got.data(), ref.data(), out_elems, 1e-5, 1e-4))
        << c.what << " residual " << with_residual;
    EXPECT_TRUE(got.guards_intact()) << c.what;
  }
}

// Pooling in the epilogue (RowPool): the features an exit would pool from
// the output, bit for bit, for every pooling the exits use (cells that
// overlap on odd sizes included), and the output itself unchanged; the
// ungrouped convolutions and the direct grouped kernels pool, grouped GEMMs
// refuse.
TEST_P(Conv, PoolsItsOutputAsTheExitWould) {
  const auto [c, n] = GetParam();
  const ConvData d(c, n, 15);
  const auto& [p, oh, ow, out_elems, in, w, bias, res] = d;
  const cpu::PackedConv pc = cpu::pack_conv(p, w.data(), bias.data());
  cpu::Workspace ws;
  std::vector<float> plain(out_elems);
  cpu::conv2d_nhwc(pc, in.data(), n, c.h, c.w, plain.data(), res.data(), true, ws);
  EXPECT_EQ(cpu::pools_in_epilogue(pc), c.groups == 1 || 16 % (c.cin / c.groups) == 0 || c.cin / c.groups % 16 == 0)
      << c.what;  // all but grouped GEMMs (group widths that neither divide 16 nor are multiples of it)
  for (const PoolSpec pool : {PoolSpec{1, false}, PoolSpec{1, true}, PoolSpec{2, false}, PoolSpec{4, true}}) {
    const size_t dim = size_t(pool.features(c.cout));
    cpu::RowPool rows;
    rows.start(n, oh, ow, c.cout, pool);
    std::vector<float> out(out_elems);
    if (!cpu::pools_in_epilogue(pc)) {
      EXPECT_THROW(cpu::conv2d_nhwc(pc, in.data(), n, c.h, c.w, out.data(), res.data(), true, ws, &rows), Error);
      continue;
    }
    const bool pooled = cpu::conv2d_nhwc(pc, in.data(), n, c.h, c.w, out.data(), res.data(), true, ws, &rows);
    EXPECT_TRUE(pooled) << c.what;
    ASSERT_EQ(std::memcmp(out.data(), plain.data(), out_elems * sizeof(float)), 0) << c.what;
    if (!pooled) continue;
    std::vector<float> want(size_t(n) * dim), got(size_t(n) * dim, kSentinel);
    cpu::pool_features_nhwc(out.data(), n, oh, ow, c.cout, pool, want.data());
    cpu::pool_features_from_rows(rows, got.data());
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
          << c.what << " grid " << pool.grid << " max " << pool.with_max << " feature " << i << ": " << got[i] << " vs "
          << want[i];
  }
}

INSTANTIATE_TEST_SUITE_P(
    ResNetShapes, Conv,
    ::testing::Combine(::testing::Values(ConvCase{"stem 7x7/2", 3, 64, 7, 2, 3, 1, 64, 64},
                                         ConvCase{"stem 7x7/2 odd size, 128 channels", 3, 128, 7, 2, 3, 1, 37, 45},
                                         ConvCase{"stem 5x5/1 4 channels", 4, 32, 5, 1, 2, 1, 19, 23},
                                         ConvCase{"cifar stem 3x3/1", 1, 16, 3, 1, 1, 1, 28, 28},
                                         ConvCase{"small stem 3x3/2 odd width", 3, 32, 3, 2, 1, 1, 13, 11},
                                         ConvCase{"small stem 3x3/1 unpadded", 2, 16, 3, 1, 0, 1, 10, 9},
                                         ConvCase{"small stem 1x1", 4, 48, 1, 1, 0, 1, 5, 7},
                                         ConvCase{"small stem 3x3/1 many rows (threads)", 1, 64, 3, 1, 1, 1, 120, 100},
                                         ConvCase{"3x3/1", 64, 64, 3, 1, 1, 1, 28, 28},
                                         ConvCase{"3x3/1 16 channels (direct)", 16, 16, 3, 1, 1, 1, 28, 27},
                                         ConvCase{"3x3/1 32 channels (direct)", 32, 32, 3, 1, 1, 1, 14, 13},
                                         ConvCase{"3x3/1 64 channels 7x7 (direct)", 64, 64, 3, 1, 1, 1, 7, 7},
                                         ConvCase{"3x3/1 128 channels (direct)", 128, 128, 3, 1, 1, 1, 13, 30},
                                         ConvCase{"3x3/2", 128, 128, 3, 2, 1, 1, 28, 28},
                                         ConvCase{"1x1/1 expand", 64, 256, 1, 1, 0, 1, 14, 14},
                                         ConvCase{"1x1/2 projection", 256, 512, 1, 2, 0, 1, 14, 14},
                                         ConvCase{"grouped 3x3/2 (resnext)", 128, 128, 3, 2, 1, 32, 14, 14},
                                         ConvCase{"grouped 3x3/1 8 per group", 256, 256, 3, 1, 1, 32, 14, 14},
                                         ConvCase{"grouped 3x3/1 2 per group", 32, 32, 3, 1, 1, 16, 9, 9},
                                         ConvCase{"grouped 3x3/1 16 per group", 512, 512, 3, 1, 1, 32, 7, 7},
                                         ConvCase{"grouped 3x3/2 32 per group", 256, 256, 3, 2, 1, 8, 14, 15},
                                         ConvCase{"grouped 3x3/2 16 per group", 256, 256, 3, 2, 1, 16, 14, 14},
                                         ConvCase{"grouped 3x3/2 8 per group odd size", 256, 256, 3, 2, 1, 32, 15, 29},
                                         ConvCase{"grouped 3x3/1 12 per group (GEMM)", 48, 48, 3, 1, 1, 4, 9, 10},
                                         ConvCase{"grouped 3x3/1 4 per group 56 wide", 128, 128, 3, 1, 1, 32, 9, 56},
                                         ConvCase{"3x3/1 layer4", 512, 512, 3, 1, 1, 1, 7, 7}),
                       ::testing::Values(1, 3)),
    [](const auto& param_info) {
      std::string name = std::get<0>(param_info.param).what;
      for (char& ch : name)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return name + "_batch" + std::to_string(std::get<1>(param_info.param));
    });

TEST(Pool, MaxPoolMatchesReference) {
  // 24 channels: the plain loop; 64 and 80 (64 + 16): vectors in registers.
  for (const auto& [n, c] : {std::pair{1, 24}, std::pair{2, 24}, std::pair{1, 64}, std::pair{2, 80}}) {
    const int h = 17, w = 12;  // odd sizes exercise the padded border
    const auto in = test::random_floats(size_t(n * h * w * c), 21);
    const int oh = (h + 2 - 3) / 2 + 1, ow = (w + 2 - 3) / 2 + 1;
    Guarded got(size_t(n * oh * ow * c));
    cpu::max_pool_nhwc(in.data(), n, h, w, c, 3, 2, 1, got.data());
    for (int i = 0; i < n; ++i)
      for (int y = 0; y < oh; ++y)
        for (int x = 0; x < ow; ++x)
          for (int ch = 0; ch < c; ++ch) {
            float best = -INFINITY;
            for (int dy = 0; dy < 3; ++dy)
              for (int dx = 0; dx < 3; ++dx) {
                const int iy = y * 2 - 1 + dy, ix = x * 2 - 1 + dx;
                if (iy >= 0 && iy < h && ix >= 0 && ix < w)
                  best = std::max(best, in[size_t(((i * h + iy) * w + ix) * c + ch)]);
              }
            ASSERT_EQ(got.data()[size_t(((i * oh + y) * ow + x) * c + ch)], best);
          }
    EXPECT_TRUE(got.guards_intact());
  }
}

TEST(Pool, GlobalAveragePoolMatchesReference) {
  const int n = 3, hw = 49, c = 2048;
  const auto in = test::random_floats(size_t(n * hw * c), 31);
  Guarded got(size_t(n * c));
  cpu::global_avg_pool_nhwc(in.data(), n, hw, c, got.data());
  std::vector<float> ref(size_t(n * c));
  for (int i = 0; i < n; ++i)
    for (int ch = 0; ch < c; ++ch) {
      double s = 0;
      for (int p = 0; p < hw; ++p) s += in[size_t((i * hw + p) * c + ch)];
      ref[size_t(i * c + ch)] = float(s / hw);
    }
  EXPECT_TRUE(test::all_close(got.data(), ref.data(), ref.size(), 1e-6, 1e-5));
  EXPECT_TRUE(got.guards_intact());
}

// The exits' pooling against a plain double-precision mean (and max) per
// cell, with PyTorch's adaptive cells, overlapping ones included.
TEST(Pool, ExitFeaturesMatchTheCellsMeanAndMax) {
  const int n = 2, h = 7, w = 9, c = 40;
  const auto in = test::random_floats(size_t(n * h * w * c), 33);
  for (const PoolSpec pool : {PoolSpec{1, false}, PoolSpec{3, true}, PoolSpec{4, false}}) {
    const int g = pool.grid, cells = pool.cells();
    const size_t dim = size_t(pool.features(c));
    Guarded got(size_t(n) * dim);
    cpu::pool_features_nhwc(in.data(), n, h, w, c, pool, got.data());
    std::vector<float> ref(size_t(n) * dim);
    for (int i = 0; i < n; ++i)
      for (int cell = 0; cell < cells; ++cell) {
        const int y0 = pool_cell_begin(cell / g, h, g), y1 = pool_cell_end(cell / g, h, g);
        const int x0 = pool_cell_begin(cell % g, w, g), x1 = pool_cell_end(cell % g, w, g);
        for (int ch = 0; ch < c; ++ch) {
          double s = 0;
          float m = -INFINITY;
          for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) {
              const float v = in[size_t(((i * h + y) * w + x) * c + ch)];
              s += v;
              m = std::max(m, v);
            }
          ref[size_t(i) * dim + size_t(cell * c + ch)] = float(s / ((y1 - y0) * (x1 - x0)));
          if (pool.with_max) ref[size_t(i) * dim + size_t((cells + cell) * c + ch)] = m;
        }
      }
    EXPECT_TRUE(test::all_close(got.data(), ref.data(), ref.size(), 1e-6, 1e-5)) << "grid " << g;
    EXPECT_TRUE(got.guards_intact());
  }
}

// The decision that may stop summing early: for every threshold, a hit
// exactly when top_softmax's confidence reaches it, with that confidence bit
// for bit and the same label; a miss otherwise (confidence -1 when it
// stopped).  Thresholds just above and below the confidence, 1000 classes
// (early stops) and 10 (none: one check at the end), confident and flat rows.
TEST(Softmax, DecisionThatStopsEarlyAgreesWithTopSoftmax) {
  int stopped = 0;
  for (int classes : {10, 1000, 1001}) {
    for (float spread : {0.5f, 4.f, 40.f}) {
      const std::vector<float> z =
          test::random_floats(size_t(classes), uint32_t(classes) + uint32_t(spread * 10), spread);
      float conf;
      const int label = cpu::top_softmax(z.data(), classes, &conf);
      for (float t : {0.f, 0.001f, 0.3f, std::nextafter(conf, 0.f), conf, std::nextafter(conf, 2.f), 0.99f, 2.f}) {
        float got;
        const int got_label = cpu::top_softmax_or_miss(z.data(), classes, t, &got);
        EXPECT_EQ(got_label, label);
        EXPECT_EQ(got >= t, conf >= t) << classes << " classes, spread " << spread << ", threshold " << t;
        if (conf >= t) {
          EXPECT_EQ(std::memcmp(&got, &conf, sizeof conf), 0);
        } else if (got == -1.f) {
          ++stopped;
        } else {
          EXPECT_EQ(std::memcmp(&got, &conf, sizeof conf), 0);
        }
      }
    }
  }
  EXPECT_GT(stopped, 0) << "1000 classes and a threshold above the confidence stop early";
}

TEST(Layout, NchwToNhwc) {
  const int n = 2, c = 3, h = 5, w = 7;
  const auto in = test::random_floats(size_t(n * c * h * w), 41);
  std::vector<float> out(in.size());
  cpu::nchw_to_nhwc(in.data(), n, c, h, w, out.data());
  for (int i = 0; i < n; ++i)
    for (int ch = 0; ch < c; ++ch)
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
          ASSERT_EQ(out[size_t(((i * h + y) * w + x) * c + ch)], in[size_t(((i * c + ch) * h + y) * w + x)]);
}

}  // namespace
}  // namespace gati
