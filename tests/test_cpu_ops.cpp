// Every CPU op against a plain-loop reference on the shapes ResNets use
// (7x7/2 stem, 3x3/1 and /2, 1x1 projections /1 and /2, grouped 3x3), at
// several batch sizes including odd ones, with random data, and with sentinel
// values around each output to catch out-of-bounds writes.
#include <cctype>
#include <cstring>

#include "kernels/cpu/conv2d_cpu.h"
#include "kernels/cpu/gemm_cpu.h"
#include "kernels/cpu/pool_cpu.h"
#include "test_util.h"

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

TEST_P(Conv, MatchesReference) {
  const auto [c, n] = GetParam();
  const cpu::ConvParams p{c.cin, c.cout, c.kernel, c.stride, c.pad, c.groups};
  const int oh = p.out_size(c.h), ow = p.out_size(c.w);
  const size_t out_elems = size_t(n) * size_t(oh) * size_t(ow) * size_t(c.cout);
  const auto in = test::random_floats(size_t(n) * size_t(c.h) * size_t(c.w) * size_t(c.cin), 11);
  const auto w = test::random_floats(size_t(c.cout) * size_t(c.cin / c.groups) * size_t(c.kernel * c.kernel), 12,
                                     1.0f / std::sqrt(float(c.cin / c.groups * c.kernel * c.kernel)));
  const auto bias = test::random_floats(size_t(c.cout), 13);
  const auto res = test::random_floats(out_elems, 14);
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

INSTANTIATE_TEST_SUITE_P(
    ResNetShapes, Conv,
    ::testing::Combine(::testing::Values(ConvCase{"stem 7x7/2", 3, 64, 7, 2, 3, 1, 64, 64},
                                         ConvCase{"cifar stem 3x3/1", 1, 16, 3, 1, 1, 1, 28, 28},
                                         ConvCase{"3x3/1", 64, 64, 3, 1, 1, 1, 28, 28},
                                         ConvCase{"3x3/1 16 channels (direct)", 16, 16, 3, 1, 1, 1, 28, 27},
                                         ConvCase{"3x3/2", 128, 128, 3, 2, 1, 1, 28, 28},
                                         ConvCase{"1x1/1 expand", 64, 256, 1, 1, 0, 1, 14, 14},
                                         ConvCase{"1x1/2 projection", 256, 512, 1, 2, 0, 1, 14, 14},
                                         ConvCase{"grouped 3x3/2 (resnext)", 128, 128, 3, 2, 1, 32, 14, 14},
                                         ConvCase{"grouped 3x3/1 8 per group", 256, 256, 3, 1, 1, 32, 14, 14},
                                         ConvCase{"grouped 3x3/1 2 per group", 32, 32, 3, 1, 1, 16, 9, 9},
                                         ConvCase{"grouped 3x3/1 16 per group (GEMM)", 512, 512, 3, 1, 1, 32, 7, 7},
                                         ConvCase{"3x3/1 layer4", 512, 512, 3, 1, 1, 1, 7, 7}),
                       ::testing::Values(1, 3)),
    [](const auto& param_info) {
      std::string name = std::get<0>(param_info.param).what;
      for (char& ch : name)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return name + "_batch" + std::to_string(std::get<1>(param_info.param));
    });

TEST(Pool, MaxPoolMatchesReference) {
  for (int n : {1, 2}) {
    const int h = 17, w = 12, c = 24;  // odd sizes exercise the padded border
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
