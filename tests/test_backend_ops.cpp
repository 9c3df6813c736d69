// Every backend op against a plain reference, for every backend this build
// has (the CPU one always; CUDA when built with it and a GPU is present,
// otherwise skipped with the reason printed): convolutions on the real
// ResNet shapes (7x7/2 stem, 3x3/1 and /2, 1x1 and 1x1/2 projections, grouped
// 3x3, the CIFAR stem) with and without residual and ReLU, max-pool, global
// average pool, classifier, exit head, compaction, full-model finish and the
// SGD step, at batch 1, 3 and 8, random data, tolerance abs + rel*|ref|.
// Every output buffer has sentinel zones before and after it that no op may
// touch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>

#include "engine/backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/memory.h"
#include "kernels/cpu/conv2d_cpu.h"
#include "kernels/cpu/pool_cpu.h"
#include "random_model.h"
#include "test_util.h"
#include "weights/common/error.h"
#include "weights/common/half.h"
#include "weights/model.h"
#include "weights/safetensors.h"

namespace gati {
namespace {

using test::random_floats;

constexpr size_t kGuard = 64;  // floats of sentinel on each side
constexpr float kSentinel = -7.25e11f;

struct ConvCase {
  const char* name;
  int cin, cout, kernel, stride, pad, groups, h;
};
// Channel counts, kernels and strides as in torchvision's ResNets; the
// spatial sizes are the ones those layers see at 224x224 (28x28 for the CIFAR stem).
const ConvCase kConvs[] = {
    {"stem_7x7_2", 3, 64, 7, 2, 3, 1, 224},         {"layer1_3x3_1", 64, 64, 3, 1, 1, 1, 56},
    {"layer2_3x3_2", 128, 128, 3, 2, 1, 1, 56},     {"bottleneck_1x1", 256, 64, 1, 1, 0, 1, 56},
    {"proj_1x1_2", 256, 512, 1, 2, 0, 1, 56},       {"layer4_3x3_1", 512, 512, 3, 1, 1, 1, 7},
    {"resnext_3x3_g32", 128, 128, 3, 1, 1, 32, 56}, {"cifar_stem", 1, 16, 3, 1, 1, 1, 28},
};

// A "model" that is only a list of convolutions (and a small classifier), so
// a backend device packs exactly the shapes under test.
Model conv_model() {
  Model m;
  m.net.arch.num_classes = 10;
  m.net.features = 96;
  uint32_t seed = 1;
  for (const ConvCase& c : kConvs) {
    m.net.convs.push_back({c.name, c.name, c.cin, c.cout, c.kernel, c.stride, c.pad, c.groups});
    const size_t fan = size_t(c.cin / c.groups) * size_t(c.kernel * c.kernel);
    m.convs.push_back({random_floats(size_t(c.cout) * fan, seed++, float(std::sqrt(2.0 / double(fan)))),
                       random_floats(size_t(c.cout), seed++, 0.1f)});
  }
  BlockSpec exit_block;  // exit point 1 (0 is the stem), for exit heads: after a 128-channel block
  exit_block.name = "layer2.0";
  exit_block.out_channels = 128;
  m.net.blocks.push_back(exit_block);
  m.fc_weight = random_floats(size_t(10 * 96), seed++, 0.2f);
  m.fc_bias = random_floats(10, seed++, 0.1f);
  return m;
}

// An activation stored in layout `from`, restored in layout `to`.
std::vector<float> relayout(const std::vector<float>& v, const Act& s, Layout from, Layout to) {
  EXPECT_EQ(v.size(), s.elems());
  if (from == to) return v;
  std::vector<float> out(v.size());
  for (int i = 0; i < s.n; ++i)
    for (int y = 0; y < s.h; ++y)
      for (int x = 0; x < s.w; ++x)
        for (int ch = 0; ch < s.c; ++ch)
          out[size_t(i) * s.per_sample() + size_t(act_offset(to, s.h, s.w, s.c, y, x, ch))] =
              v[size_t(i) * s.per_sample() + size_t(act_offset(from, s.h, s.w, s.c, y, x, ch))];
  return out;
}

// A backend buffer with sentinels around `floats` payload floats.
struct Guarded {
  std::unique_ptr<Buffer> buf;
  size_t floats;
  BackendContext* ctx;
  Guarded(BackendContext& c, size_t n) : floats(n), ctx(&c) {
    buf = c.allocate((n + 2 * kGuard) * sizeof(float));
    std::vector<float> init(n + 2 * kGuard, kSentinel);
    c.from_host(init.data(), init.size() * sizeof(float), buf->data());
  }
  float* data() { return buf->floats() + kGuard; }
  void upload(const std::vector<float>& v) { ctx->from_host(v.data(), v.size() * sizeof(float), data()); }
  // An activation given NHWC, stored in the context's layout and precision
  // (FP16 contexts take values that are halves already: act_floats).
  void upload_act(const std::vector<float>& nhwc, const Act& s) {
    const std::vector<float> v = relayout(nhwc, s, Layout::kNhwc, ctx->layout());
    if (ctx->precision() == Precision::kF32) return upload(v);
    // Halves, then sentinels over the rest of the FP32-sized payload, so
    // that download_act sees a write past the halves' end.
    std::vector<float> payload(floats, kSentinel);
    ASSERT_LE(v.size(), 2 * floats);
    for (size_t i = 0; i < v.size(); ++i) {
      const uint16_t h = float_to_half(v[i]);
      if (!(half_to_float(h) == v[i]) && !std::isnan(v[i])) ADD_FAILURE() << "test value " << v[i] << " is not a half";
      std::memcpy(reinterpret_cast<unsigned char*>(payload.data()) + i * sizeof(uint16_t), &h, sizeof h);
    }
    upload(payload);
  }
  std::vector<float> download_act(const Act& s) {
    std::vector<float> v = download();
    if (ctx->precision() == Precision::kF16) {
      std::vector<uint16_t> h(s.elems());
      std::memcpy(h.data(), v.data(), h.size() * sizeof(uint16_t));
      for (size_t i = (h.size() * sizeof(uint16_t) + 3) / 4; i < v.size(); ++i)
        EXPECT_EQ(v[i], kSentinel) << "FP16 write past the end of the activation at word " << i;
      v.resize(h.size());
      for (size_t i = 0; i < h.size(); ++i) v[i] = half_to_float(h[i]);
    }
    return relayout(v, s, ctx->layout(), Layout::kNhwc);
  }
  std::vector<float> download() {
    std::vector<float> all(floats + 2 * kGuard);
    ctx->to_host(buf->data(), all.size() * sizeof(float), all.data());
    ctx->synchronize();
    for (size_t i = 0; i < kGuard; ++i) {
      EXPECT_EQ(all[i], kSentinel) << "write before the buffer at -" << kGuard - i;
      EXPECT_EQ(all[kGuard + floats + i], kSentinel) << "write past the end at +" << i;
    }
    return {all.begin() + long(kGuard), all.begin() + long(kGuard + floats)};
  }
};

class BackendOps : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    static const Model model = conv_model();
    model_ = &model;
    try {
      if (GetParam() == "cuda_nhwc") {  // the CUDA backend in its other layout
        CudaOptions o;
        o.layout = Layout::kNhwc;
        device_ = make_cuda_device(model, o);
      } else if (GetParam() == "cuda_fp16") {  // FP16 storage (NHWC)
        CudaOptions o;
        o.fp16 = true;
        device_ = make_cuda_device(model, o);
      } else {
        device_ = make_backend_device(GetParam(), model);
      }
    } catch (const Error& e) {
      GTEST_SKIP() << "backend '" << GetParam() << "' not available: " << e.what();
    }
    ctx_ = device_->make_context(0);
  }
  // Random activations; in an FP16 context rounded to halves, so that the
  // ops that only read activations (pools, exit heads, lookups) give what
  // the FP32 reference computes from the same values.
  std::vector<float> act_floats(size_t n, uint32_t seed, float scale = 1.0f) const {
    std::vector<float> v = random_floats(n, seed, scale);
    if (ctx_->precision() == Precision::kF16)
      for (float& x : v) x = half_to_float(float_to_half(x));
    return v;
  }
  // The tolerance of ops that write activations: FP16 rounds every output
  // (and the convolution's weights), accumulating in FP32.
  double write_tol() const { return ctx_->precision() == Precision::kF16 ? 1e-2 : 1e-4; }
  const Model* model_ = nullptr;
  std::shared_ptr<const BackendDevice> device_;
  std::unique_ptr<BackendContext> ctx_;
};

TEST_P(BackendOps, ConvolutionsOnResNetShapes) {
  for (size_t ci = 0; ci < std::size(kConvs); ++ci) {
    const ConvCase& c = kConvs[ci];
    const int oh = (c.h + 2 * c.pad - c.kernel) / c.stride + 1;
    for (int n : {1, 3, 8}) {
      if (n == 8 && c.h >= 224) continue;  // the stem at batch 8 adds a minute of reference time, no coverage
      for (int variant = 0; variant < 2; ++variant) {
        const bool residual = variant == 1, relu = variant == 1 || ci % 2 == 0;
        SCOPED_TRACE(std::string(c.name) + " batch " + std::to_string(n) + (residual ? " +residual" : "") +
                     (relu ? " +relu" : ""));
        const size_t in_n = size_t(n) * size_t(c.h) * size_t(c.h) * size_t(c.cin);
        const size_t out_n = size_t(n) * size_t(oh) * size_t(oh) * size_t(c.cout);
        const std::vector<float> x = act_floats(in_n, uint32_t(ci * 10 + size_t(n)));
        const std::vector<float> r = act_floats(out_n, uint32_t(ci * 10 + size_t(n) + 500));
        Guarded in(*ctx_, in_n), out(*ctx_, out_n), res(*ctx_, out_n);
        const Act in_shape{n, c.h, c.h, c.cin}, out_shape{n, oh, oh, c.cout};
        in.upload_act(x, in_shape);
        res.upload_act(r, out_shape);
        ctx_->conv(int(ci), in.data(), in_shape, out.data(), residual ? res.data() : nullptr, relu);
        const std::vector<float> got = out.download_act(out_shape);
        std::vector<float> want(out_n);
        const cpu::ConvParams p{c.cin, c.cout, c.kernel, c.stride, c.pad, c.groups};
        cpu::conv2d_nhwc_reference(p, model_->convs[ci].weight.data(), model_->convs[ci].bias.data(), x.data(), n, c.h,
                                   c.h, want.data(), residual ? r.data() : nullptr, relu);
        EXPECT_TRUE(test::all_close(got.data(), want.data(), out_n, write_tol(), write_tol()));
      }
    }
  }
}

TEST_P(BackendOps, PoolsAndClassifier) {
  for (int n : {1, 3, 8}) {
    SCOPED_TRACE("batch " + std::to_string(n));
    // 3x3/2 max-pool after the ImageNet stem (112x112x64 -> 56x56x64).
    const int h = 112, c = 64, oh = 56;
    const std::vector<float> x = act_floats(size_t(n * h * h * c), uint32_t(n));
    Guarded in(*ctx_, x.size()), mp(*ctx_, size_t(n * oh * oh * c)), gap(*ctx_, size_t(n * c));
    in.upload_act(x, {n, h, h, c});
    ctx_->max_pool(in.data(), {n, h, h, c}, 3, 2, 1, mp.data());
    ctx_->global_avg_pool(in.data(), {n, h, h, c}, gap.data());
    const std::vector<float> got_mp = mp.download_act({n, oh, oh, c}), got_gap = gap.download();
    for (int i = 0; i < n; ++i)
      for (int ch = 0; ch < c; ++ch) {
        double sum = 0;
        for (int q = 0; q < h * h; ++q) sum += x[(size_t(i) * h * h + size_t(q)) * c + size_t(ch)];
        ASSERT_NEAR(got_gap[size_t(i * c + ch)], sum / (h * h), 1e-5 + 1e-5 * std::abs(sum / (h * h)));
        for (int oy = 0; oy < oh; ++oy)
          for (int ox = 0; ox < oh; ++ox) {
            float m = -INFINITY;
            for (int ky = 0; ky < 3; ++ky)
              for (int kx = 0; kx < 3; ++kx) {
                const int iy = oy * 2 - 1 + ky, ix = ox * 2 - 1 + kx;
                if (iy >= 0 && iy < h && ix >= 0 && ix < h)
                  m = std::max(m, x[((size_t(i) * h + size_t(iy)) * h + size_t(ix)) * c + size_t(ch)]);
              }
            ASSERT_EQ(got_mp[((size_t(i) * oh + size_t(oy)) * oh + size_t(ox)) * c + size_t(ch)], m);
          }
      }
    // Classifier: [n, 96] -> [n, 10] with the model's fc.
    const std::vector<float> f = random_floats(size_t(n * 96), uint32_t(n + 40));
    Guarded feat(*ctx_, f.size()), logits(*ctx_, size_t(n * 10));
    feat.upload(f);
    ctx_->classifier(feat.data(), n, logits.data());
    const std::vector<float> got = logits.download();
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < 10; ++k) {
        double s = model_->fc_bias[size_t(k)];
        for (int d = 0; d < 96; ++d) s += double(model_->fc_weight[size_t(k * 96 + d)]) * f[size_t(i * 96 + d)];
        EXPECT_NEAR(got[size_t(i * 10 + k)], s, 1e-4 + 1e-4 * std::abs(s));
      }
  }
}

// Exit state in host-visible memory for `batch` samples and `classes`.
struct HostState {
  std::unique_ptr<Buffer> buf;
  ExitState st;
  HostState(BackendContext& ctx, int batch, int classes) {
    buf = ctx.allocate_host_visible(exit_state_bytes(batch, classes));
    st = exit_state_at(buf->data(), batch);
  }
};

// A linear head at exit 1 (exit 0 is the stem) over global-average-pooled
// features: random mean, scales 0.5 + |noise|, weights of the given scale,
// bias; seeds seed .. seed + 3.
ExitHeadSpec random_linear_head(int dim, int classes, uint32_t seed, float weight_scale) {
  ExitHeadSpec spec;
  spec.exit = 1;
  spec.dim = dim;
  spec.classes = classes;
  spec.mean = random_floats(size_t(dim), seed, 0.3f);
  spec.inv_std = random_floats(size_t(dim), seed + 1, 0.3f);
  for (float& v : spec.inv_std) v = 0.5f + std::abs(v);
  spec.weight = random_floats(size_t(dim) * size_t(classes), seed + 2, weight_scale);
  spec.bias = random_floats(size_t(classes), seed + 3, 0.2f);
  return spec;
}

// A head with `hidden` ReLU units (GATI's MLP) at exit 1: random_linear_head's
// standardisation, each layer's weights scaled to keep about half the units
// active and the scores spread; seeds seed .. seed + 5.
ExitHeadSpec random_mlp_head(int dim, int hidden, int classes, uint32_t seed) {
  ExitHeadSpec spec = random_linear_head(dim, classes, seed, 1.f);
  spec.hidden = hidden;
  spec.hidden_weight = random_floats(size_t(hidden) * size_t(dim), seed + 4, 2.f / std::sqrt(float(dim)));
  spec.hidden_bias = random_floats(size_t(hidden), seed + 5, 0.2f);
  spec.weight = random_floats(size_t(classes) * size_t(hidden), seed + 2, 4.f / std::sqrt(float(hidden)));
  return spec;
}

// A head's scores in double from one row's pooled features (standardised,
// through the hidden layer when it has one).
std::vector<double> reference_scores_from_pooled(const ExitHeadSpec& spec, const double* pooled) {
  std::vector<double> xs(size_t(spec.dim));
  for (int d = 0; d < spec.dim; ++d)
    xs[size_t(d)] = (pooled[d] - spec.mean[size_t(d)]) * double(spec.inv_std[size_t(d)]);
  std::vector<double> in = xs;
  if (spec.hidden > 0) {
    in.assign(size_t(spec.hidden), 0.0);
    for (int j = 0; j < spec.hidden; ++j) {
      double s = spec.hidden_bias[size_t(j)];
      for (int d = 0; d < spec.dim; ++d)
        s += double(spec.hidden_weight[size_t(j) * size_t(spec.dim) + size_t(d)]) * xs[size_t(d)];
      in[size_t(j)] = s > 0 ? s : 0;
    }
  }
  const int ins = spec.inputs();
  std::vector<double> z(size_t(spec.classes));
  for (int k = 0; k < spec.classes; ++k) {
    double s = spec.bias[size_t(k)];
    for (int d = 0; d < ins; ++d) s += double(spec.weight[size_t(k) * size_t(ins) + size_t(d)]) * in[size_t(d)];
    z[size_t(k)] = s;
  }
  return z;
}

// A linear head's scores in double for n rows of act [n, h, h, spec.dim]
// (global average pooling); the pooled features too, where asked.
std::vector<std::vector<double>> reference_head_scores(const ExitHeadSpec& spec, const std::vector<float>& x, int n,
                                                       int h, std::vector<double>* pooled_out = nullptr) {
  const int c = spec.dim;
  std::vector<double> pooled(size_t(n * c));
  std::vector<std::vector<double>> out;
  for (int i = 0; i < n; ++i) {
    std::vector<double> z(size_t(spec.classes));
    for (int ch = 0; ch < c; ++ch) {
      double s = 0;
      for (int q = 0; q < h * h; ++q) s += x[(size_t(i) * h * h + size_t(q)) * c + size_t(ch)];
      pooled[size_t(i * c + ch)] = s / (h * h);
    }
    for (int k = 0; k < spec.classes; ++k) {
      double s = spec.bias[size_t(k)];
      for (int ch = 0; ch < c; ++ch)
        s += double(spec.weight[size_t(k * c + ch)]) * (pooled[size_t(i * c + ch)] - spec.mean[size_t(ch)]) *
             spec.inv_std[size_t(ch)];
      z[size_t(k)] = s;
    }
    out.push_back(std::move(z));
  }
  if (pooled_out) *pooled_out = std::move(pooled);
  return out;
}

TEST_P(BackendOps, ExitHeadCompactionAndFinish) {
  const int classes = 10;
  for (int n : {1, 3, 8}) {
    SCOPED_TRACE("batch " + std::to_string(n));
    // The exit after a ResNet-18 layer2 block: 28x28x128.
    const int h = 28, c = 128, total = n + 2;  // two samples already left before this exit
    ExitHeadSpec spec = random_linear_head(c, classes, 5, 0.8f);
    const std::vector<float> x = act_floats(size_t(n * h * h * c), uint32_t(n + 60), 2.0f);
    // The reference: pooled -> standardised -> linear -> softmax in double.
    std::vector<double> conf(static_cast<size_t>(n));
    std::vector<int> label(static_cast<size_t>(n));
    std::vector<double> pooled;
    const std::vector<std::vector<double>> scores = reference_head_scores(spec, x, n, h, &pooled);
    for (int i = 0; i < n; ++i) {
      const std::vector<double>& z = scores[size_t(i)];
      const int best = int(std::max_element(z.begin(), z.end()) - z.begin());
      double sum = 0;
      for (double v : z) sum += std::exp(v - z[size_t(best)]);
      conf[size_t(i)] = 1 / sum;
      label[size_t(i)] = best;
    }
    std::vector<double> sorted = conf;
    std::sort(sorted.begin(), sorted.end());
    spec.threshold =
        n == 1 ? float(sorted[0]) - 1e-3f : float(0.5 * (sorted[size_t(n / 2) - 1] + sorted[size_t(n / 2)]));
    const auto heads = device_->upload_exit_heads({spec});

    HostState hs(*ctx_, total, classes);
    ctx_->begin_exits(hs.st, total, classes);
    ctx_->synchronize();
    // Rows map to samples in a scrambled order; samples 0 and total-1 already left.
    std::vector<int> samples(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) samples[size_t(i)] = 1 + (i * 5) % n;
    for (int i = 0; i < n; ++i) hs.st.position[1][i] = samples[size_t(i)];
    Guarded act(*ctx_, x.size()), pooled_buf(*ctx_, size_t(n * c));
    act.upload_act(x, {n, h, h, c});
    ctx_->exit_head(*heads, 0, act.data(), {n, h, h, c}, 4, hs.st, 1, pooled_buf.data());
    ctx_->compact(act.data(), {n, h, h, c}, hs.st, 1, 0);
    const int alive = ctx_->alive(hs.st);
    const std::vector<float> got_pooled = pooled_buf.download();
    const std::vector<float> got_out = act.download_act({n, h, h, c});
    int want_alive = 0;
    for (int i = 0; i < n; ++i) {
      EXPECT_NEAR(got_pooled[size_t(i * c)], pooled[size_t(i * c)], 1e-5);
      const bool hit = conf[size_t(i)] >= spec.threshold;
      EXPECT_EQ(hs.st.hit[i], hit ? 1 : 0) << "row " << i;
      const int s = samples[size_t(i)];
      if (hit) {
        EXPECT_EQ(hs.st.exit[s], 4);
        EXPECT_EQ(hs.st.label[s], label[size_t(i)]);
        EXPECT_NEAR(hs.st.confidence[s], conf[size_t(i)], 1e-5);
      } else {
        EXPECT_EQ(hs.st.exit[s], kStillRunning);
        EXPECT_EQ(hs.st.position[0][want_alive], s);
        EXPECT_EQ(0, std::memcmp(got_out.data() + size_t(want_alive) * h * h * c, x.data() + size_t(i) * h * h * c,
                                 size_t(h * h * c) * sizeof(float)));
        ++want_alive;
      }
    }
    EXPECT_EQ(alive, want_alive);
    if (n > 1) {
      EXPECT_GT(want_alive, 0);
    }
    // The survivors reach the classifier.
    const std::vector<float> z = random_floats(size_t(alive * classes), 99);
    Guarded lz(*ctx_, z.size() + 1);
    lz.upload(z);
    ctx_->finish_full_model(lz.data(), alive, classes, hs.st, 0);
    ctx_->synchronize();
    for (int r = 0; r < alive; ++r) {
      const int s = hs.st.position[0][r];
      EXPECT_EQ(hs.st.exit[s], kFullModel);
      EXPECT_EQ(
          0, std::memcmp(hs.st.logits + size_t(s) * classes, z.data() + size_t(r) * classes, classes * sizeof(float)));
      EXPECT_EQ(
          hs.st.label[s],
          int(std::max_element(z.begin() + r * classes, z.begin() + (r + 1) * classes) - z.begin()) - r * classes);
    }
    for (int s : {0, total - 1}) {  // never reached this exit: untouched
      EXPECT_EQ(hs.st.exit[s], kStillRunning);
      EXPECT_TRUE(std::isnan(hs.st.logits[size_t(s) * classes]));
    }
  }
}

// The CUDA exit head's shapes (kernels/cuda/exit_head.cu: one block per row;
// the wide kernels, the default; the wide ones with staged NCHW pooling)
// give the same pooled features and decisions bit for bit on ResNet exit
// shapes: grids of cells with maxima,
// feature counts off the 32-feature blocks, cells taller than one pass of
// rows (112x112), 1000 classes, weights as halves, a selector; each run's
// threshold splits its rows.  The CPU has one kernel.
TEST_P(BackendOps, ExitHeadKernelsAgreeBitForBit) {
  if (GetParam() == "cpu") GTEST_SKIP() << "one exit kernel on the CPU";
  std::unique_ptr<BackendContext> block, wide, staged;  // a context reads the switch when it is made
  {
    test::ScopedEnv kernel("GATI_CUDA_EXIT_KERNEL", "block");
    block = device_->make_context(0);
    kernel.set("wide");
    wide = device_->make_context(0);
    kernel.set("staged");
    staged = device_->make_context(0);
  }
  struct Case {
    int n, h, c, classes;
    PoolSpec pool;
    bool halves, selector;
    int hidden = 0;
  };
  const Case cases[] = {
      {1, 56, 256, 1000, {1, false}, true, false},       // ResNet-50 layer1, ImageNet classes
      {3, 28, 128, 10, {2, true}, false, false},         // grid 2 with maxima: 1024 features
      {2, 112, 64, 10, {1, false}, false, true},         // cells taller than a pass of rows, a selector
      {5, 7, 2048, 1000, {1, false}, true, false},       // ResNet-50 layer4
      {4, 9, 40, 7, {3, true}, false, false},            // uneven cells, 720 features, odd classes
      {2, 14, 21, 5, {1, false}, false, false},          // 21 features: blocks and warps past the last one
      {3, 28, 16, 10, {4, true}, true, false, 32},       // the demo's stem with an MLP (halves)
      {2, 7, 64, 10, {4, true}, false, true, 37},        // its layer3: odd hidden units, a selector
      {1, 14, 256, 1000, {1, false}, true, false, 300},  // hidden units over several blocks, 1000 classes
  };
  uint32_t seed = 700;
  for (const Case& k : cases) {
    SCOPED_TRACE(std::to_string(k.n) + "x" + std::to_string(k.h) + "x" + std::to_string(k.c) + " grid " +
                 std::to_string(k.pool.grid) + (k.pool.with_max ? " max" : "") + " classes " +
                 std::to_string(k.classes) + " hidden " + std::to_string(k.hidden));
    const int dim = k.pool.features(k.c);
    ExitHeadSpec spec = k.hidden ? random_mlp_head(dim, k.hidden, k.classes, seed)
                                 : random_linear_head(dim, k.classes, seed, 2.f / std::sqrt(float(dim)));
    seed += 6;
    spec.pool = k.pool;
    if (k.selector) spec.selector = {6.f, -3.f, -2.f, -1.f};
    if (k.halves) {
      for (float& w : spec.weight) w = half_to_float(float_to_half(w));
      for (float& w : spec.hidden_weight) w = half_to_float(float_to_half(w));
    }
    const std::vector<float> x = act_floats(size_t(k.n) * size_t(k.h * k.h * k.c), seed++, 2.0f);
    const Act shape{k.n, k.h, k.h, k.c};
    struct Got {
      std::vector<float> pooled;
      std::vector<int32_t> hit, exit, label;
      std::vector<float> confidence;
    };
    auto run = [&](BackendContext& ctx, const ExitHeadSpec& head) {
      const auto heads = device_->upload_exit_heads({head});
      HostState hs(ctx, k.n, k.classes);
      ctx.begin_exits(hs.st, k.n, k.classes);
      Guarded act(ctx, x.size()), pooled(ctx, size_t(k.n) * size_t(dim));
      act.upload_act(x, shape);
      ctx.exit_head(*heads, 0, act.data(), shape, 2, hs.st, 0, pooled.data());
      ctx.synchronize();
      Got g;
      g.pooled = pooled.download();
      for (int i = 0; i < k.n; ++i) {
        g.hit.push_back(hs.st.hit[i]);
        g.exit.push_back(hs.st.exit[i]);
        g.label.push_back(hs.st.label[i]);
        g.confidence.push_back(hs.st.confidence[i]);
      }
      return g;
    };
    // Threshold 0 first (every row answers, with its confidence), then one
    // that splits the rows.
    spec.threshold = 0.f;
    const Got all = run(*block, spec);
    std::vector<float> c = all.confidence;
    std::sort(c.begin(), c.end());
    spec.threshold = k.n == 1 ? c[0] : 0.5f * (c[size_t(k.n / 2) - 1] + c[size_t(k.n / 2)]);
    const Got want = run(*block, spec);
    for (BackendContext* ctx : {wide.get(), staged.get()}) {
      SCOPED_TRACE(ctx == wide.get() ? "wide" : "staged");
      const Got got = run(*ctx, spec);
      ASSERT_EQ(got.pooled.size(), want.pooled.size());
      EXPECT_EQ(0, std::memcmp(got.pooled.data(), want.pooled.data(), want.pooled.size() * sizeof(float)))
          << "pooled features differ";
      EXPECT_EQ(got.hit, want.hit);
      EXPECT_EQ(got.exit, want.exit);
      EXPECT_EQ(got.label, want.label);
      EXPECT_EQ(0, std::memcmp(got.confidence.data(), want.confidence.data(), want.confidence.size() * sizeof(float)));
    }
    EXPECT_GT(std::count(want.hit.begin(), want.hit.end(), 1), 0);
    if (k.n > 1) {
      EXPECT_GT(std::count(want.hit.begin(), want.hit.end(), 0), 0);
    }
  }
}

// With GATI's selector the confidence is sigmoid(b + sum_j w_j p_(j)) over
// the three largest softmax probabilities in descending order; the label
// stays the argmax.  Reference in double, half the rows over the threshold.
TEST_P(BackendOps, ExitHeadWithASelector) {
  const int classes = 10, n = 8, h = 14, c = 256;  // after a ResNet-18 layer3 block
  ExitHeadSpec spec = random_linear_head(c, classes, 15, 0.5f);
  spec.selector = {7.f, -3.f, -2.f, -1.5f};
  const std::vector<float> x = act_floats(size_t(n * h * h * c), 61, 2.0f);
  const std::vector<std::vector<double>> scores = reference_head_scores(spec, x, n, h);
  std::vector<double> conf;
  std::vector<int> label;
  for (const std::vector<double>& z : scores) {
    std::vector<int> order(classes);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return z[size_t(a)] > z[size_t(b)]; });
    double sum = 0;
    for (double v : z) sum += std::exp(v - z[size_t(order[0])]);
    double s = spec.selector[3];
    for (int j = 0; j < 3; ++j)
      s += spec.selector[size_t(j)] * std::exp(z[size_t(order[size_t(j)])] - z[size_t(order[0])]) / sum;
    conf.push_back(1 / (1 + std::exp(-s)));
    label.push_back(order[0]);
  }
  std::vector<double> sorted = conf;
  std::sort(sorted.begin(), sorted.end());
  spec.threshold = float(0.5 * (sorted[3] + sorted[4]));
  const auto heads = device_->upload_exit_heads({spec});
  HostState hs(*ctx_, n, classes);
  ctx_->begin_exits(hs.st, n, classes);
  Guarded act(*ctx_, x.size()), pooled(*ctx_, size_t(n * c));
  act.upload_act(x, {n, h, h, c});
  ctx_->exit_head(*heads, 0, act.data(), {n, h, h, c}, 1, hs.st, 0, pooled.data());
  ctx_->synchronize();
  int hits = 0;
  for (int i = 0; i < n; ++i) {
    const bool hit = conf[size_t(i)] >= spec.threshold;
    hits += hit;
    EXPECT_EQ(hs.st.hit[i], hit ? 1 : 0) << "row " << i;
    if (hit) {
      EXPECT_EQ(hs.st.label[i], label[size_t(i)]);
      EXPECT_NEAR(hs.st.confidence[i], conf[size_t(i)], 1e-5);
    }
  }
  EXPECT_EQ(hits, 4);
}

// A learned head with a hidden layer (GATI's MLP predictor) on the demo
// ResNet's exit shapes with its pooling (mix4x4): pooled features, hidden
// ReLU units, scores and top softmax against a double reference, batch 1
// and 6, weights as floats and as halves, each run's threshold splitting
// its rows.
TEST_P(BackendOps, ExitHeadWithAHiddenLayerMatchesTheReference) {
  struct Case {
    int n, h, c, hidden;
    bool halves;
  };
  const Case cases[] = {{1, 28, 16, 32, false}, {6, 28, 16, 32, true}, {6, 14, 32, 48, false}, {6, 7, 64, 32, true}};
  uint32_t seed = 1300;
  for (const Case& k : cases) {
    SCOPED_TRACE(std::to_string(k.n) + "x" + std::to_string(k.h) + "x" + std::to_string(k.c) + " hidden " +
                 std::to_string(k.hidden) + (k.halves ? " halves" : ""));
    const int classes = 10;
    const PoolSpec pool = parse_pool("mix4x4");
    const int dim = pool.features(k.c);
    ExitHeadSpec spec = random_mlp_head(dim, k.hidden, classes, seed);
    seed += 6;
    spec.pool = pool;
    if (k.halves) {
      for (float& w : spec.weight) w = half_to_float(float_to_half(w));
      for (float& w : spec.hidden_weight) w = half_to_float(float_to_half(w));
    }
    const Act shape{k.n, k.h, k.h, k.c};
    const std::vector<float> x = act_floats(shape.elems(), seed++, 2.0f);
    // The reference: the CPU's pooling (tested against its own reference
    // elsewhere) in double, then every layer in double.
    std::vector<float> pooled_f(size_t(k.n) * size_t(dim));
    cpu::pool_features_nhwc(x.data(), k.n, k.h, k.h, k.c, pool, pooled_f.data());
    std::vector<double> conf;
    std::vector<int> label;
    int active = 0;
    for (int i = 0; i < k.n; ++i) {
      const std::vector<double> p(pooled_f.begin() + long(i) * dim, pooled_f.begin() + long(i + 1) * dim);
      const std::vector<double> z = reference_scores_from_pooled(spec, p.data());
      const int best = int(std::max_element(z.begin(), z.end()) - z.begin());
      double sum = 0;
      for (double v : z) sum += std::exp(v - z[size_t(best)]);
      conf.push_back(1 / sum);
      label.push_back(best);
      // How many hidden units are active: the test means nothing if none or all are.
      for (int j = 0; j < k.hidden; ++j) {
        double s = spec.hidden_bias[size_t(j)];
        for (int d = 0; d < dim; ++d)
          s += double(spec.hidden_weight[size_t(j) * size_t(dim) + size_t(d)]) * (p[size_t(d)] - spec.mean[size_t(d)]) *
               spec.inv_std[size_t(d)];
        active += s > 0;
      }
    }
    EXPECT_GT(active, k.n * k.hidden / 5);
    EXPECT_LT(active, k.n * k.hidden * 4 / 5);
    std::vector<double> sorted = conf;
    std::sort(sorted.begin(), sorted.end());
    spec.threshold =
        k.n == 1 ? float(sorted[0]) - 1e-3f : float(0.5 * (sorted[size_t(k.n / 2) - 1] + sorted[size_t(k.n / 2)]));
    const auto heads = device_->upload_exit_heads({spec});
    HostState hs(*ctx_, k.n, classes);
    ctx_->begin_exits(hs.st, k.n, classes);
    Guarded act(*ctx_, x.size()), pooled(*ctx_, size_t(k.n) * size_t(dim));
    act.upload_act(x, shape);
    ctx_->exit_head(*heads, 0, act.data(), shape, 3, hs.st, 0, pooled.data());
    ctx_->synchronize();
    const std::vector<float> got_pooled = pooled.download();
    for (size_t j = 0; j < got_pooled.size(); ++j) ASSERT_NEAR(got_pooled[j], pooled_f[j], 1e-5) << "feature " << j;
    int hits = 0;
    for (int i = 0; i < k.n; ++i) {
      const bool hit = conf[size_t(i)] >= spec.threshold;
      hits += hit;
      EXPECT_EQ(hs.st.hit[i], hit ? 1 : 0) << "row " << i;
      if (hit) {
        EXPECT_EQ(hs.st.exit[i], 3);
        EXPECT_EQ(hs.st.label[i], label[size_t(i)]);
        EXPECT_NEAR(hs.st.confidence[i], conf[size_t(i)], 1e-5);
      } else {
        EXPECT_EQ(hs.st.exit[i], kStillRunning);
      }
    }
    EXPECT_EQ(hits, k.n == 1 ? 1 : k.n / 2);
  }
}

// Every backend's upload refuses parameters whose sizes do not match the
// head's dim and classes (its kernels would read past them).
TEST_P(BackendOps, ExitHeadsWithWrongSizesAreRefused) {
  ExitHeadSpec spec;
  spec.name = "layer2.0";
  spec.dim = 8;
  spec.classes = 3;
  spec.mean.assign(8, 0.f);
  spec.inv_std.assign(8, 1.f);
  spec.weight = random_floats(24, 81);
  spec.bias = random_floats(2, 82);  // one short
  EXPECT_GATI_ERROR(device_->upload_exit_heads({spec}), "parameter sizes do not match dim 8 and 3 classes");
  spec.bias = random_floats(3, 82);
  spec.weight.pop_back();
  EXPECT_GATI_ERROR(device_->upload_exit_heads({spec}), "parameter sizes do not match");
  spec.weight.push_back(0.5f);
  EXPECT_NO_THROW(device_->upload_exit_heads({spec}));
  spec.pool.grid = kMaxPoolGrid + 1;
  EXPECT_GATI_ERROR(device_->upload_exit_heads({spec}), "pool grid 9 does not fit dim 8");
  spec.pool = parse_pool("mix2x2");  // 8 features per channel: dim 8 fits
  EXPECT_NO_THROW(device_->upload_exit_heads({spec}));
  spec.pool = parse_pool("avg4x4");  // 16 per channel: dim 8 cannot be
  EXPECT_GATI_ERROR(device_->upload_exit_heads({spec}), "pool grid 4 does not fit dim 8");
  // A hidden layer: its weights [hidden, dim], the scores' [classes, hidden].
  spec.pool = {};
  spec.hidden = 5;
  spec.hidden_weight = random_floats(40, 83);
  spec.hidden_bias = random_floats(5, 84);
  EXPECT_GATI_ERROR(device_->upload_exit_heads({spec}), "parameter sizes do not match 5 hidden units and 3 classes");
  spec.weight = random_floats(15, 85);
  EXPECT_NO_THROW(device_->upload_exit_heads({spec}));
  spec.hidden_bias.pop_back();
  EXPECT_GATI_ERROR(device_->upload_exit_heads({spec}), "hidden layer sizes do not match dim 8 and 5 hidden units");
  spec.hidden_bias.push_back(0.f);
  spec.hidden_weight[7] = NAN;
  EXPECT_GATI_ERROR(device_->upload_exit_heads({spec}), "hidden_weight[7] is not finite");
  spec.hidden = kMaxHidden + 1;
  EXPECT_GATI_ERROR(device_->upload_exit_heads({spec}),
                    "1025 hidden units (valid: 0 for a linear predictor, up to 1024)");
}

TEST(Pooling, NamesRoundTripAndBadNamesListTheValidOnes) {
  for (const char* name : {"avg", "mix", "avg2x2", "mix4x4", "avg8x8"}) EXPECT_EQ(pool_name(parse_pool(name)), name);
  EXPECT_EQ(parse_pool("avg1x1").grid, 1);
  EXPECT_EQ(parse_pool("mix4x4").features(64), 64 * 16 * 2);
  for (const char* bad : {"", "max", "avg9x9", "avg0x0", "avg2x3", "avg2", "mix4x4 ", "AVG"})
    EXPECT_GATI_ERROR(parse_pool(bad), "valid: avg, mix, avgGxG or mixGxG");
}

// Pooled features by PyTorch's adaptive pooling formula (cell i spans
// floor(i*H/g) .. ceil((i+1)*H/g)), in double: averages [cell][c], then
// maxima [cell][c].
std::vector<double> reference_pool(const std::vector<float>& x, int n, int h, int w, int c, const PoolSpec& p) {
  const int g = p.grid, cells = g * g, dim = p.features(c);
  std::vector<double> out(size_t(n) * size_t(dim));
  for (int i = 0; i < n; ++i)
    for (int cell = 0; cell < cells; ++cell) {
      const int y0 = int(std::floor(double(cell / g) * h / g)), y1 = int(std::ceil(double(cell / g + 1) * h / g));
      const int x0 = int(std::floor(double(cell % g) * w / g)), x1 = int(std::ceil(double(cell % g + 1) * w / g));
      for (int ch = 0; ch < c; ++ch) {
        double sum = 0, mx = -INFINITY;
        for (int y = y0; y < y1; ++y)
          for (int xx = x0; xx < x1; ++xx) {
            const double v = x[((size_t(i) * h + size_t(y)) * w + size_t(xx)) * c + size_t(ch)];
            sum += v;
            mx = std::max(mx, v);
          }
        double* row = out.data() + size_t(i) * dim;
        row[cell * c + ch] = sum / ((y1 - y0) * (x1 - x0));
        if (p.with_max) row[cells * c + cell * c + ch] = mx;
      }
    }
  return out;
}

// Spatial and mixed pooling (the exit heads' pool_features op and the exit
// head itself) against the adaptive-pooling reference, on exit shapes whose
// sides do and do not divide by the grid (7x7 in 4x4 cells overlap).
// The memory of recent answers at the stem of ResNet-50 (56x56x64) and of
// the demo (28x28x16): lookups find the nearest stored answer (brute force
// in double as the reference), only the full model's confident answers are
// stored, round-robin.
TEST_P(BackendOps, MemoryLookupAndInsertMatchTheReference) {
  struct Case {
    int h, c;
    const char* pool;
  };
  const int n = 3, classes = 10;
  for (const Case& k : {Case{56, 64, "avg2x2"}, Case{28, 16, "mix2x2"}}) {
    SCOPED_TRACE(std::to_string(k.h) + "x" + std::to_string(k.h) + "x" + std::to_string(k.c) + " " + k.pool);
    MemorySpec spec;
    spec.pool = parse_pool(k.pool);
    spec.dim = spec.pool.features(k.c);
    spec.capacity = 4;
    spec.mean = random_floats(size_t(spec.dim), 31, 0.3f);
    spec.inv_std = random_floats(size_t(spec.dim), 32, 0.3f);
    for (float& v : spec.inv_std) v = 0.5f + std::abs(v);
    spec.min_confidence = 0.9f;
    const size_t per = size_t(k.h) * size_t(k.h) * size_t(k.c);
    const std::vector<float> x = act_floats(size_t(n) * per, uint32_t(k.h), 2.0f);
    const std::vector<double> ref = reference_pool(x, n, k.h, k.h, k.c, spec.pool);
    std::vector<double> key(ref.size());  // standardised
    for (size_t i = 0; i < ref.size(); ++i) {
      const size_t d = i % size_t(spec.dim);
      key[i] = (ref[i] - spec.mean[d]) * spec.inv_std[d];
    }
    AnswerMemory memory(*ctx_, spec);
    Guarded act(*ctx_, x.size()), pooled(*ctx_, size_t(n * spec.dim));
    act.upload_act(x, {n, k.h, k.h, k.c});
    HostState hs(*ctx_, n, classes);

    // 1. Empty: nobody hits; each sample's standardised features wait in pending.
    MemoryView v = memory.view(n);
    ctx_->begin_exits(hs.st, n, classes);
    ctx_->memory_lookup(v, act.data(), {n, k.h, k.h, k.c}, 0, hs.st, 0, pooled.data());
    std::vector<float> pending(size_t(n * spec.dim));
    ctx_->to_host(v.pending, pending.size() * sizeof(float), pending.data());
    ctx_->synchronize();
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(hs.st.hit[i], 0);
      EXPECT_EQ(hs.st.exit[i], kStillRunning);
    }
    for (size_t i = 0; i < key.size(); ++i) ASSERT_NEAR(pending[i], key[i], 1e-4 + 1e-4 * std::abs(key[i])) << i;

    // 2. The full model answered: samples 0 and 2 confidently, sample 1 not.
    const int label[3] = {3, 5, 7};
    const float conf[3] = {0.95f, 0.5f, 0.999f};
    for (int i = 0; i < n; ++i) {
      hs.st.exit[i] = kFullModel;
      hs.st.label[i] = label[i];
      hs.st.confidence[i] = conf[i];
    }
    ctx_->memory_insert(v, hs.st, n);
    EXPECT_EQ(memory.entries(), 2);

    // 3. The same images again, rows reversed: samples 0 and 2 find
    // themselves (distance ~0); sample 1 is answered only when the
    // threshold reaches its nearest stored neighbour.
    auto sq = [&](int a, int b) {
      double s = 0;
      for (int d = 0; d < spec.dim; ++d)
        s += std::pow(key[size_t(a * spec.dim + d)] - key[size_t(b * spec.dim + d)], 2);
      return s;
    };
    const int nearest_of_1 = sq(1, 0) <= sq(1, 2) ? 0 : 2;
    const double d1 = std::min(sq(1, 0), sq(1, 2));
    std::vector<float> reversed(x.size());
    for (int i = 0; i < n; ++i)
      std::memcpy(&reversed[size_t(i) * per], &x[size_t(n - 1 - i) * per], per * sizeof(float));
    act.upload_act(reversed, {n, k.h, k.h, k.c});
    for (const double threshold : {0.5 * d1, 2.0 * d1}) {
      SCOPED_TRACE("threshold " + std::to_string(threshold));
      AnswerMemory m2(*ctx_, [&] {
        MemorySpec s2 = spec;
        s2.threshold = float(threshold);
        return s2;
      }());
      MemoryView v2 = m2.view(n);
      ctx_->begin_exits(hs.st, n, classes);
      ctx_->memory_lookup(v2, act.data(), {n, k.h, k.h, k.c}, 0, hs.st, 0, pooled.data());  // fills pending only
      ctx_->synchronize();  // the host writes the state the queued kernels read and write
      for (int i = 0; i < n; ++i) {
        hs.st.exit[i] = kFullModel;
        hs.st.label[i] = label[n - 1 - i];  // sample i is image n-1-i
        hs.st.confidence[i] = conf[n - 1 - i];
      }
      ctx_->memory_insert(v2, hs.st, n);
      act.upload_act(x, {n, k.h, k.h, k.c});
      ctx_->begin_exits(hs.st, n, classes);
      ctx_->memory_lookup(v2, act.data(), {n, k.h, k.h, k.c}, 6, hs.st, 0, pooled.data());
      ctx_->synchronize();
      for (int i : {0, 2}) {
        EXPECT_EQ(hs.st.hit[i], 1) << "row " << i;
        EXPECT_EQ(hs.st.exit[i], 6);
        EXPECT_EQ(hs.st.source[i], kByMemory);
        EXPECT_EQ(hs.st.label[i], label[i]);
        EXPECT_EQ(hs.st.confidence[i], conf[i]);
      }
      const bool hit1 = threshold > d1;
      EXPECT_EQ(hs.st.hit[1], hit1 ? 1 : 0);
      EXPECT_EQ(hs.st.exit[1], hit1 ? 6 : kStillRunning);
      if (hit1) {
        EXPECT_EQ(hs.st.label[1], label[nearest_of_1]);
      }
      act.upload_act(reversed, {n, k.h, k.h, k.c});
    }

    // 4. Round-robin: more confident answers than capacity keep `capacity`.
    for (int round = 0; round < 2; ++round) {
      ctx_->synchronize();
      for (int i = 0; i < n; ++i) {
        hs.st.exit[i] = kFullModel;
        hs.st.confidence[i] = 0.99f;
      }
      ctx_->memory_insert(v, hs.st, n);
    }
    EXPECT_EQ(memory.entries(), spec.capacity);
    memory.clear();
    EXPECT_EQ(memory.entries(), 0);
  }
}

TEST_P(BackendOps, GridPoolingAndItsExitHeadsMatchTheReference) {
  struct Case {
    const char* pool;
    int h, c;
  };
  const int n = 3, classes = 10;
  for (const Case& k : {Case{"avg2x2", 28, 16}, Case{"mix4x4", 7, 64}, Case{"mix", 14, 32}, Case{"avg4x4", 3, 8},
                        Case{"mix4x4", 56, 16}}) {
    SCOPED_TRACE(std::string(k.pool) + " on " + std::to_string(k.h) + "x" + std::to_string(k.h) + "x" +
                 std::to_string(k.c));
    const PoolSpec pool = parse_pool(k.pool);
    const int dim = pool.features(k.c);
    const std::vector<float> x = act_floats(size_t(n * k.h * k.h * k.c), uint32_t(k.h + k.c), 2.0f);
    const std::vector<double> ref = reference_pool(x, n, k.h, k.h, k.c, pool);
    Guarded act(*ctx_, x.size()), feats(*ctx_, size_t(n * dim)), head_pooled(*ctx_, size_t(n * dim));
    act.upload_act(x, {n, k.h, k.h, k.c});
    ctx_->pool_features(act.data(), {n, k.h, k.h, k.c}, pool, feats.data());
    const std::vector<float> got = feats.download();
    for (size_t i = 0; i < ref.size(); ++i)
      ASSERT_NEAR(got[i], ref[i], 1e-5 + 1e-5 * std::abs(ref[i])) << "feature " << i;

    ExitHeadSpec spec;
    spec.name = "layer2.0";
    spec.pool = pool;
    spec.dim = dim;
    spec.classes = classes;
    spec.mean = random_floats(size_t(dim), 91, 0.3f);
    spec.inv_std.assign(size_t(dim), 0.7f);
    spec.weight = random_floats(size_t(dim) * classes, 92, 0.3f);
    spec.bias = random_floats(classes, 93, 0.2f);
    spec.threshold = 0.0f;  // every row answers, so every label and confidence is written
    const auto heads = device_->upload_exit_heads({spec});
    HostState hs(*ctx_, n, classes);
    ctx_->begin_exits(hs.st, n, classes);
    ctx_->exit_head(*heads, 0, act.data(), {n, k.h, k.h, k.c}, 0, hs.st, 0, head_pooled.data());
    ctx_->synchronize();
    // The head pools exactly as the op does: the same features, bit for bit.
    EXPECT_EQ(head_pooled.download(), got);
    for (int i = 0; i < n; ++i) {
      std::vector<double> z(classes);
      for (int c = 0; c < classes; ++c) {
        double s = spec.bias[size_t(c)];
        for (int d = 0; d < dim; ++d)
          s += double(spec.weight[size_t(c) * dim + size_t(d)]) *
               (ref[size_t(i) * dim + size_t(d)] - spec.mean[size_t(d)]) * 0.7;
        z[size_t(c)] = s;
      }
      const int best = int(std::max_element(z.begin(), z.end()) - z.begin());
      double sum = 0;
      for (double v : z) sum += std::exp(v - z[size_t(best)]);
      EXPECT_EQ(hs.st.label[i], best) << "row " << i;
      EXPECT_NEAR(hs.st.confidence[i], 1 / sum, 1e-4) << "row " << i;
    }
    // A head whose dim does not match these activations is refused by the op.
    EXPECT_GATI_ERROR(ctx_->exit_head(*heads, 0, act.data(), {n, k.h, k.h, k.c * 2}, 0, hs.st, 0, head_pooled.data()),
                      "pooled " + std::string(k.pool));
  }
}

// ResNet-50's last exit with an ImageNet-sized head (2048 features, 1000
// classes): large enough for the CPU kernel's parallel path.
TEST_P(BackendOps, WideExitHeadMatchesTheReference) {
  const int n = 3, hw = 7 * 7, c = 2048, classes = 1000;
  ExitHeadSpec spec;
  spec.exit = 1;
  spec.name = "layer4.2";
  spec.dim = c;
  spec.classes = classes;
  spec.mean = random_floats(size_t(c), 71, 0.3f);
  spec.inv_std.assign(size_t(c), 1.0f);
  spec.weight = random_floats(size_t(c) * size_t(classes), 72, 0.05f);
  spec.bias = random_floats(size_t(classes), 73, 0.2f);
  spec.threshold = 0.0f;  // every row hits, so every label and confidence is written
  const std::vector<float> x = act_floats(size_t(n * hw * c), 74, 2.0f);
  const auto heads = device_->upload_exit_heads({spec});
  HostState hs(*ctx_, n, classes);
  ctx_->begin_exits(hs.st, n, classes);
  Guarded act(*ctx_, x.size()), pooled_buf(*ctx_, size_t(n * c));
  act.upload_act(x, {n, 7, 7, c});
  ctx_->exit_head(*heads, 0, act.data(), {n, 7, 7, c}, 3, hs.st, 0, pooled_buf.data());
  ctx_->synchronize();
  const std::vector<float> pooled = pooled_buf.download();
  for (int i = 0; i < n; ++i) {
    std::vector<double> avg(static_cast<size_t>(c), 0.0), z(static_cast<size_t>(classes));
    for (int q = 0; q < hw; ++q)
      for (int ch = 0; ch < c; ++ch) avg[size_t(ch)] += x[(size_t(i) * hw + size_t(q)) * c + size_t(ch)];
    for (int k = 0; k < classes; ++k) {
      double s = spec.bias[size_t(k)];
      for (int ch = 0; ch < c; ++ch)
        s += double(spec.weight[size_t(k) * c + size_t(ch)]) * (avg[size_t(ch)] / hw - spec.mean[size_t(ch)]);
      z[size_t(k)] = s;
    }
    const int best = int(std::max_element(z.begin(), z.end()) - z.begin());
    double sum = 0;
    for (double v : z) sum += std::exp(v - z[size_t(best)]);
    EXPECT_EQ(hs.st.hit[i], 1) << "row " << i;
    EXPECT_EQ(hs.st.exit[i], 3) << "row " << i;
    EXPECT_EQ(hs.st.label[i], best) << "row " << i;
    EXPECT_NEAR(hs.st.confidence[i], 1 / sum, 1e-4) << "row " << i;
  }
}

// Freeze's distance heads (k-NN with k = 5, and with more neighbours than
// keys; k-means with shares and k = 1) against a double-precision
// reference: pool, standardise, project, every distance, sort by (distance,
// index), vote.  Thresholds between the reference confidences, so some rows
// hit and some do not.
TEST_P(BackendOps, DistanceHeadMatchesTheReference) {
  struct Case {
    HeadKind kind;
    int entries, neighbours;
    const char* pool;
  };
  const int n = 4, h = 28, c = 128, classes = 10, reduced = 24;
  for (const Case& k : {Case{HeadKind::kKnn, 300, 5, "avg2x2"}, Case{HeadKind::kKnn, 3, 5, "mix"},
                        Case{HeadKind::kKmeans, 200, 1, "mix2x2"}}) {
    SCOPED_TRACE(std::string(head_kind_name(k.kind)) + " " + std::to_string(k.entries) + " entries, " + k.pool);
    ExitHeadSpec spec;
    spec.exit = 1;
    spec.name = "layer2.0";
    spec.kind = k.kind;
    spec.pool = parse_pool(k.pool);
    spec.dim = spec.pool.features(c);
    spec.classes = classes;
    spec.reduced = reduced;
    spec.neighbours = k.neighbours;
    spec.mean = random_floats(size_t(spec.dim), 81, 0.3f);
    spec.inv_std = random_floats(size_t(spec.dim), 82, 0.3f);
    for (float& v : spec.inv_std) v = 0.5f + std::abs(v);
    spec.projection = random_floats(size_t(reduced) * size_t(spec.dim), 83, 0.1f);
    spec.keys = random_floats(size_t(k.entries) * size_t(reduced), 84, 1.0f);
    const std::vector<float> u = random_floats(size_t(2 * k.entries), 85);
    for (int j = 0; j < k.entries; ++j) {
      spec.labels.push_back(int32_t(std::abs(u[size_t(2 * j)]) * 997) % classes);
      spec.share.push_back(k.kind == HeadKind::kKnn ? 1.f
                                                    : 0.2f + 0.8f * std::fmod(std::abs(u[size_t(2 * j + 1)]), 1.f));
    }
    const size_t per = size_t(h) * size_t(h) * size_t(c);
    const std::vector<float> x = act_floats(size_t(n) * per, 86, 2.0f);
    const std::vector<double> ref = reference_pool(x, n, h, h, c, spec.pool);

    std::vector<int> want_label(n);
    std::vector<double> want_conf(n);
    for (int i = 0; i < n; ++i) {
      std::vector<double> xs(size_t(spec.dim)), y(size_t(reduced), 0.0);
      for (int d = 0; d < spec.dim; ++d)
        xs[size_t(d)] = (ref[size_t(i * spec.dim + d)] - spec.mean[size_t(d)]) * spec.inv_std[size_t(d)];
      for (int r = 0; r < reduced; ++r)
        for (int d = 0; d < spec.dim; ++d) y[size_t(r)] += spec.projection[size_t(r * spec.dim + d)] * xs[size_t(d)];
      std::vector<std::pair<double, int>> dist;
      for (int j = 0; j < k.entries; ++j) {
        double s2 = 0;
        for (int r = 0; r < reduced; ++r) s2 += std::pow(y[size_t(r)] - spec.keys[size_t(j * reduced + r)], 2);
        dist.push_back({s2, j});
      }
      std::sort(dist.begin(), dist.end());
      const int kk = std::min(k.neighbours, k.entries);
      std::vector<double> score(classes, 0.0);
      std::vector<int> count(classes, 0);
      for (int j = 0; j < kk; ++j) {
        const int e = dist[size_t(j)].second;
        count[size_t(spec.labels[size_t(e)])]++;
        score[size_t(spec.labels[size_t(e)])] += spec.share[size_t(e)] / std::sqrt(dist[size_t(j)].first);
      }
      double best = -1;
      for (int l = 0; l < classes; ++l) {
        const double cl = double(count[size_t(l)]) / kk * score[size_t(l)];
        if (count[size_t(l)] > 0 && cl > best) {
          best = cl;
          want_label[size_t(i)] = l;
        }
      }
      want_conf[size_t(i)] = best / (1 + best);
    }
    std::vector<double> sorted = want_conf;
    std::sort(sorted.begin(), sorted.end());
    spec.threshold = float(0.5 * (sorted[1] + sorted[2]));  // the two most confident rows hit

    const auto heads = device_->upload_exit_heads({spec});
    HostState hs(*ctx_, n, classes);
    ctx_->begin_exits(hs.st, n, classes);
    Guarded act(*ctx_, x.size()), pooled_buf(*ctx_, size_t(n * spec.dim));
    act.upload_act(x, {n, h, h, c});
    ctx_->exit_head(*heads, 0, act.data(), {n, h, h, c}, 1, hs.st, 0, pooled_buf.data());
    ctx_->synchronize();
    const std::vector<float> pooled = pooled_buf.download();
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(pooled[i], ref[i], 1e-4 + 1e-4 * std::abs(ref[i])) << i;
    int hits = 0;
    for (int i = 0; i < n; ++i) {
      SCOPED_TRACE("row " + std::to_string(i));
      const bool want_hit = want_conf[size_t(i)] >= spec.threshold;
      hits += want_hit;
      EXPECT_EQ(hs.st.hit[i], want_hit ? 1 : 0);
      if (!want_hit) {
        EXPECT_EQ(hs.st.exit[i], kStillRunning);
        continue;
      }
      EXPECT_EQ(hs.st.exit[i], 1);
      EXPECT_EQ(hs.st.label[i], want_label[size_t(i)]);
      EXPECT_NEAR(hs.st.confidence[i], want_conf[size_t(i)], 1e-5 + 1e-4 * want_conf[size_t(i)]);
    }
    EXPECT_EQ(hits, 2);
  }
}

TEST_P(BackendOps, DistanceHeadsWithBadEntriesAreRefused) {
  ExitHeadSpec spec;
  spec.exit = 1;
  spec.name = "layer2.0";
  spec.kind = HeadKind::kKnn;
  spec.dim = 128;
  spec.classes = 10;
  spec.reduced = 4;
  spec.neighbours = 3;
  spec.mean.assign(128, 0.f);
  spec.inv_std.assign(128, 1.f);
  spec.projection.assign(4 * 128, 0.1f);
  spec.keys.assign(2 * 4, 0.5f);
  spec.labels = {1, 2};
  spec.share = {1.f, 1.f};
  EXPECT_NO_THROW(device_->upload_exit_heads({spec}));
  auto bad = spec;
  bad.labels[1] = 10;
  EXPECT_GATI_ERROR(device_->upload_exit_heads({bad}), "entry 1 has label 10, not one of the 10 classes");
  bad = spec;
  bad.share[0] = 1.5f;
  EXPECT_GATI_ERROR(device_->upload_exit_heads({bad}), "entry 0 has share 1.5");
  bad = spec;
  bad.keys.pop_back();
  EXPECT_GATI_ERROR(device_->upload_exit_heads({bad}), "knn sizes do not match");
  bad = spec;
  bad.neighbours = kMaxNeighbours + 1;
  EXPECT_GATI_ERROR(device_->upload_exit_heads({bad}), "17 neighbours (valid: 1 to 16)");
  bad = spec;
  bad.keys[3] = NAN;
  EXPECT_GATI_ERROR(device_->upload_exit_heads({bad}), "keys[3] is not finite");
  // A linear view of a distance head is a programming error, and says so.
  const auto heads = device_->upload_exit_heads({spec});
  EXPECT_GATI_ERROR(heads->view(0), "is a knn head, not linear");
}

TEST_P(BackendOps, SgdStepMatchesTheReferenceAndRefusesBadSteps) {
  const int dim = 64, classes = 10;
  for (int n : {1, 3, 8}) {
    SCOPED_TRACE("batch " + std::to_string(n));
    const std::vector<float> mean = random_floats(dim, 1, 0.2f), w0 = random_floats(size_t(dim * classes), 2, 0.3f),
                             b0 = random_floats(classes, 3, 0.1f),
                             v0 = random_floats(size_t(dim * classes + classes), 4, 0.05f),
                             x = random_floats(size_t(n * dim), uint32_t(5 + n));
    std::vector<float> inv(dim, 1.3f);
    std::vector<int32_t> y(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) y[size_t(i)] = (i * 7 + 3) % classes;
    Guarded gm(*ctx_, dim), gi(*ctx_, dim), gw(*ctx_, w0.size()), gb(*ctx_, b0.size()), gv(*ctx_, v0.size()),
        gx(*ctx_, x.size()), gy(*ctx_, size_t(n));
    gm.upload(mean);
    gi.upload(inv);
    gw.upload(w0);
    gb.upload(b0);
    gv.upload(v0);
    gx.upload(x);
    ctx_->from_host(y.data(), y.size() * 4, gy.data());
    const LinearHeadMut h{dim, classes, gm.data(), gi.data(), gw.data(), gb.data(), gv.data()};
    const SgdHyper hp{0.05f, 0.9f, 5e-4f};
    double loss = 0;
    ASSERT_EQ(ctx_->linear_sgd_step(h, gx.data(), reinterpret_cast<const int32_t*>(gy.data()), n, hp, &loss),
              OpStatus::kOk);
    // Reference in double.
    std::vector<double> grad(w0.size() + b0.size(), 0.0);
    double want_loss = 0;
    for (int i = 0; i < n; ++i) {
      std::vector<double> xs(dim), z(classes);
      for (int d = 0; d < dim; ++d) xs[size_t(d)] = (x[size_t(i * dim + d)] - mean[size_t(d)]) * inv[size_t(d)];
      for (int k = 0; k < classes; ++k) {
        z[size_t(k)] = b0[size_t(k)];
        for (int d = 0; d < dim; ++d) z[size_t(k)] += w0[size_t(k * dim + d)] * xs[size_t(d)];
      }
      const double m = *std::max_element(z.begin(), z.end());
      double sum = 0;
      for (double v : z) sum += std::exp(v - m);
      for (int k = 0; k < classes; ++k) {
        const double p = std::exp(z[size_t(k)] - m) / sum, g = p - (k == y[size_t(i)] ? 1 : 0);
        if (k == y[size_t(i)]) want_loss -= std::log(p);
        for (int d = 0; d < dim; ++d) grad[size_t(k * dim + d)] += g * xs[size_t(d)];
        grad[w0.size() + size_t(k)] += g;
      }
    }
    EXPECT_NEAR(loss, want_loss / n, 1e-5);
    const std::vector<float> w1 = gw.download(), b1 = gb.download(), v1 = gv.download();
    for (size_t j = 0; j < grad.size(); ++j) {
      const double w = j < w0.size() ? w0[j] : b0[j - w0.size()];
      const double v = 0.9 * v0[j] + grad[j] / n + (j < w0.size() ? 5e-4 * w : 0.0);
      EXPECT_NEAR(v1[j], v, 1e-5 + 1e-5 * std::abs(v)) << j;
      EXPECT_NEAR(j < w0.size() ? w1[j] : b1[j - w0.size()], w - 0.05 * v, 1e-5 + 1e-5 * std::abs(w)) << j;
    }
    // A step that would blow up is refused and changes nothing; so is a bad label.
    const SgdHyper huge{1e30f, 0.9f, 0.f};
    EXPECT_EQ(ctx_->linear_sgd_step(h, gx.data(), reinterpret_cast<const int32_t*>(gy.data()), n, huge, &loss),
              OpStatus::kNonFinite);
    EXPECT_EQ(gw.download(), w1);
    std::vector<int32_t> bad = y;
    bad[0] = classes;
    ctx_->from_host(bad.data(), bad.size() * 4, gy.data());
    EXPECT_EQ(ctx_->linear_sgd_step(h, gx.data(), reinterpret_cast<const int32_t*>(gy.data()), n, hp, &loss),
              OpStatus::kBadLabel);
    EXPECT_EQ(gw.download(), w1);
  }
}

// The learner's ops (engine/learner.h): rows gathered into an SGD batch at
// an offset, nothing else written; weights published as the host rounds
// them to halves (ties, subnormals and the largest half included), bit for
// bit; a queued step reports what the waiting one returns.
TEST_P(BackendOps, LearnerOpsMatchTheReference) {
  const int dim = 37, rows = 12, batch = 8;
  const std::vector<float> feats = random_floats(size_t(rows * dim), 110);
  Guarded gf(*ctx_, feats.size()), gx(*ctx_, size_t(batch * dim)), gy(*ctx_, size_t(batch));
  gf.upload(feats);
  RowGather g;
  const int32_t pick[] = {11, 0, 5, 5, 7};
  for (int32_t r : pick) {
    g.row[g.count] = r;
    g.label[g.count] = 100 + r;
    ++g.count;
  }
  ctx_->gather_rows(gf.data(), dim, g, gx.data(), reinterpret_cast<int32_t*>(gy.data()), 2);
  RowGather none;
  ctx_->gather_rows(gf.data(), dim, none, gx.data(), reinterpret_cast<int32_t*>(gy.data()), 0);
  const std::vector<float> x = gx.download(), y = gy.download();
  for (int i = 0; i < batch; ++i) {
    const bool written = i >= 2 && i < 2 + g.count;
    for (int d = 0; d < dim; ++d)
      EXPECT_EQ(x[size_t(i * dim + d)], written ? feats[size_t(pick[i - 2] * dim + d)] : kSentinel) << i << " " << d;
    int32_t label;
    std::memcpy(&label, &y[size_t(i)], 4);
    if (written)
      EXPECT_EQ(label, 100 + pick[i - 2]) << i;
    else
      EXPECT_EQ(y[size_t(i)], kSentinel) << i;
  }

  const int classes = 5, wn = dim * classes;
  std::vector<float> w = random_floats(size_t(wn), 111, 0.7f);
  const float tie = 1.0f + 0x1p-11f;  // exactly between two halves
  const float specials[] = {tie, -tie, 3e-6f, -1e-7f, 6.1e-5f, 65504.f, -65504.f, 0.f, -0.f, 1e-9f, 0.1f, 1000.3f};
  std::copy(std::begin(specials), std::end(specials), w.begin());
  const std::vector<float> b = random_floats(size_t(classes), 112);
  Guarded gw(*ctx_, w.size()), gb(*ctx_, b.size()), sw(*ctx_, w.size()), sb(*ctx_, b.size()),
      sh(*ctx_, (w.size() + 1) / 2);
  gw.upload(w);
  gb.upload(b);
  ctx_->publish_linear(gw.data(), gb.data(), dim, classes, sw.data(), reinterpret_cast<uint16_t*>(sh.data()),
                       sb.data());
  const std::vector<float> got_w = sw.download(), got_h_words = sh.download();
  EXPECT_EQ(sb.download(), b);
  std::vector<uint16_t> got_h(w.size());
  std::memcpy(got_h.data(), got_h_words.data(), got_h.size() * sizeof(uint16_t));
  for (size_t j = 0; j < w.size(); ++j) {
    const float want = round_to_half(w[j]);
    EXPECT_EQ(std::memcmp(&got_w[j], &want, 4), 0) << j << ": " << w[j] << " -> " << got_w[j] << ", want " << want;
    EXPECT_EQ(got_h[j], float_to_half(w[j])) << j << ": " << w[j];
  }
  EXPECT_EQ(got_w[0], 1.0f + 0x1p-10f) << "a tie rounds away from zero, as the host rounds";

  // Queued and waiting steps from the same start.
  const int n = 6;
  const std::vector<float> mean = random_floats(size_t(dim), 113, 0.2f), inv(size_t(dim), 1.1f),
                           sx = random_floats(size_t(n * dim), 114);
  std::vector<int32_t> sy(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) sy[size_t(i)] = (3 * i + 1) % classes;
  const std::vector<float> w0 = random_floats(size_t(wn), 115, 0.3f), v0(size_t(wn + classes), 0.f);
  Guarded gm(*ctx_, mean.size()), gi(*ctx_, inv.size()), gsx(*ctx_, sx.size()), gsy(*ctx_, sy.size());
  gm.upload(mean);
  gi.upload(inv);
  gsx.upload(sx);
  ctx_->from_host(sy.data(), sy.size() * 4, gsy.data());
  const auto* labels = reinterpret_cast<const int32_t*>(gsy.data());
  Guarded w1(*ctx_, w0.size()), b1(*ctx_, b.size()), v1(*ctx_, v0.size()), w2(*ctx_, w0.size()), b2(*ctx_, b.size()),
      v2(*ctx_, v0.size());
  for (Guarded* p : {&w1, &w2}) p->upload(w0);
  for (Guarded* p : {&b1, &b2}) p->upload(b);
  for (Guarded* p : {&v1, &v2}) p->upload(v0);
  const SgdHyper hp{0.05f, 0.9f, 5e-4f};
  double loss = 0;
  ASSERT_EQ(ctx_->linear_sgd_step({dim, classes, gm.data(), gi.data(), w1.data(), b1.data(), v1.data()}, gsx.data(),
                                  labels, n, hp, &loss),
            OpStatus::kOk);
  const std::unique_ptr<Buffer> report = ctx_->allocate_host_visible(16);
  auto* status = static_cast<int32_t*>(report->data());
  auto* mean_loss = reinterpret_cast<double*>(static_cast<unsigned char*>(report->data()) + 8);
  status[0] = status[1] = -7;
  const LinearHeadMut h2{dim, classes, gm.data(), gi.data(), w2.data(), b2.data(), v2.data()};
  ctx_->linear_sgd_enqueue(h2, gsx.data(), labels, n, hp, {status, mean_loss});
  ctx_->synchronize();
  EXPECT_EQ(status[0], int32_t(OpStatus::kOk));
  EXPECT_EQ(status[1], -1);
  EXPECT_EQ(*mean_loss, loss);
  EXPECT_GT(loss, 0);
  EXPECT_EQ(w2.download(), w1.download());
  EXPECT_EQ(b2.download(), b1.download());
  EXPECT_EQ(v2.download(), v1.download());
  // A step beyond max_weight is refused and reported, and changes nothing.
  SgdHyper capped = hp;
  capped.max_weight = 1e-3f;
  ctx_->linear_sgd_enqueue(h2, gsx.data(), labels, n, capped, {status, mean_loss});
  ctx_->synchronize();
  EXPECT_EQ(status[0], int32_t(OpStatus::kNonFinite));
  EXPECT_GE(status[1], 0);
  EXPECT_EQ(w2.download(), w1.download());
}

// An input already in backend memory is checked where it is: the index of
// its first NaN or infinity, wherever it sits; a host-only backend refuses.
TEST_P(BackendOps, DeviceInputIsCheckedWhereItIs) {
  const Act shape{3, 40, 40, 3};
  std::vector<float> x = act_floats(shape.elems(), 90);
  Guarded in(*ctx_, x.size());
  if (GetParam() == "cpu") {
    EXPECT_GATI_ERROR(ctx_->stage_device_input(in.data(), shape), "reads its input from host memory");
    return;
  }
  in.upload(x);
  EXPECT_EQ(ctx_->stage_device_input(in.data(), shape), shape.elems());
  for (const size_t at : {size_t(0), size_t(4321), shape.elems() - 1}) {
    SCOPED_TRACE("first bad value at " + std::to_string(at));
    x[at] = NAN;
    x[shape.elems() - 1] = INFINITY;  // later ones do not matter
    in.upload(x);
    EXPECT_EQ(ctx_->stage_device_input(in.data(), shape), at);
    x = act_floats(shape.elems(), 90);
  }
  // The staged input is what input_from_stage places, in the context's layout.
  in.upload(x);
  ASSERT_EQ(ctx_->stage_device_input(in.data(), shape), shape.elems());
  Guarded placed(*ctx_, x.size());
  ctx_->input_from_stage(shape, placed.data());
  EXPECT_EQ(placed.download_act(shape), relayout(x, shape, Layout::kNchw, Layout::kNhwc));  // x is NCHW
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendOps, ::testing::Values("cpu", "cuda", "cuda_nhwc", "cuda_fp16"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace gati
