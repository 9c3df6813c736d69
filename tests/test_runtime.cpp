// The runtime with exits as backend ops: exit heads that always / never
// fire, per-sample exits with compaction in a batch against an independent
// oracle of the cascade and against each sample run alone, the observer,
// sessions (re-entrancy, bounded plans, arena limit) and sessions running in
// parallel threads.
#include <sys/stat.h>
#include <cstdint>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "cache/features.h"
#include "cache/learned_cache.h"
#include "cache/online.h"
#include "engine/engine.h"
#include "kernels/cpu/distance_head_cpu.h"
#include "kernels/cpu/exit_head_cpu.h"
#include "kernels/cpu/memory_cpu.h"
#include "kernels/cpu/pool_cpu.h"
#include "random_model.h"
#include "test_util.h"
#include "weights/common/half.h"
#include "weights/common/int8_rows.h"

namespace gati {
namespace {

using test::random_floats;

// Random images whose samples differ in scale and offset, so that pooled
// features (and the heads' confidences) differ clearly between samples.
std::vector<float> diverse_inputs(size_t n, size_t per, uint32_t seed) {
  std::vector<float> x = random_floats(n * per, seed);
  const std::vector<float> knobs = random_floats(2 * n, seed + 1000);
  for (size_t i = 0; i < n; ++i)
    for (size_t k = 0; k < per; ++k)
      x[i * per + k] = x[i * per + k] * (0.3f + std::abs(knobs[2 * i])) + 1.5f * knobs[2 * i + 1];
  return x;
}

struct Fixture {
  Engine engine;
  int c, h, w, classes;
  size_t per;
  explicit Fixture(const char* arch, uint32_t seed = 7)
      : engine(test::random_model(arch, seed)),
        c(engine.arch().in_channels),
        h(engine.arch().input_h),
        w(engine.arch().input_w),
        classes(engine.arch().num_classes),
        per(size_t(c) * size_t(h) * size_t(w)) {}
};

// Pooled features [n, dim] at every exit point (pooled as pools[exit % size]
// says; empty: global average), from a plain full-model run.
std::vector<std::vector<float>> pooled_per_exit(const Engine& e, const std::vector<float>& x, int n,
                                                const std::vector<PoolSpec>& pools = {}) {
  std::vector<std::vector<float>> out(exit_points(e.model().net).size());
  Session s = e.session();
  std::vector<SampleResult> r(static_cast<size_t>(n));
  RunOptions o;
  o.observer = [&](const ExitPoint& ep, BackendContext& ctx, const float* act, int rows, const int32_t*) {
    std::vector<float> all(ep.shape.elems() / size_t(ep.shape.n) * size_t(rows));
    ctx.to_host(act, all.size() * sizeof(float), all.data());
    const PoolSpec pool = pools.empty() ? PoolSpec{} : pools[size_t(ep.id) % pools.size()];
    std::vector<float>& p = out[size_t(ep.id)];
    p.assign(size_t(rows) * size_t(pool.features(ep.shape.c)), 0.f);
    cpu::pool_features_nhwc(all.data(), rows, ep.shape.h, ep.shape.w, ep.shape.c, pool, p.data());
  };
  s.run(x.data(), n, e.arch().in_channels, e.arch().input_h, e.arch().input_w, r.data(), nullptr, o);
  return out;
}

LinearHeadView view_of(const ExitHeadSpec& s) {
  return {s.dim, s.classes, s.mean.data(), s.inv_std.data(), s.weight.data(), s.bias.data(), s.threshold, s.pool};
}

// The CPU oracle of any head on one row of pooled features.
int predict(const ExitHeadSpec& s, const float* pooled, float* conf) {
  if (s.kind != HeadKind::kLinear) {
    const DistanceHeadView v{s.dim,           s.reduced,      s.entries(),      s.neighbours,        s.classes,
                             s.pool,          s.mean.data(),  s.inv_std.data(), s.projection.data(), s.keys.data(),
                             s.labels.data(), s.share.data(), s.threshold};
    return cpu::distance_head_predict(v, pooled, conf);
  }
  std::vector<float> z(size_t(s.classes));
  cpu::linear_head_scores(view_of(s), pooled, z.data());
  return cpu::top_softmax(z.data(), s.classes, conf);
}

// Makes a linear head a distance head of `kind`: keys are the standardised,
// projected features of `rows` other samples (pooled_keys[exit]) with random
// labels; a random projection to 8 dimensions.
void make_distance_head(ExitHeadSpec& s, HeadKind kind, const std::vector<float>& pooled_keys, int rows,
                        uint32_t seed) {
  s.kind = kind;
  s.weight.clear();
  s.bias.clear();
  s.reduced = std::min(8, s.dim);
  s.neighbours = kind == HeadKind::kKnn ? 5 : 1;
  s.projection = random_floats(size_t(s.reduced) * size_t(s.dim), seed, float(1.0 / std::sqrt(double(s.dim))));
  s.keys.assign(size_t(rows) * size_t(s.reduced), 0.f);
  std::vector<float> x(size_t(s.dim));
  for (int i = 0; i < rows; ++i) {
    for (int d = 0; d < s.dim; ++d)
      x[size_t(d)] = (pooled_keys[size_t(i) * size_t(s.dim) + size_t(d)] - s.mean[size_t(d)]) * s.inv_std[size_t(d)];
    for (int r = 0; r < s.reduced; ++r)
      s.keys[size_t(i) * size_t(s.reduced) + size_t(r)] =
          cpu::lane_dot(s.projection.data() + size_t(r) * size_t(s.dim), x.data(), s.dim);
  }
  const std::vector<float> u = random_floats(size_t(2 * rows), seed + 1);
  s.labels.resize(size_t(rows));
  s.share.resize(size_t(rows));
  for (int i = 0; i < rows; ++i) {
    s.labels[size_t(i)] = int32_t(std::abs(u[size_t(2 * i)]) * 1000) % s.classes;
    s.share[size_t(i)] = kind == HeadKind::kKnn ? 1.f : 0.3f + 0.7f * std::fmod(std::abs(u[size_t(2 * i + 1)]), 1.f);
  }
}

TEST(Runtime, ExitsThatNeverFireGiveTheFullModelBitForBit) {
  Fixture f(test::kSmallArch);
  const int n = 5;
  const std::vector<float> x = random_floats(size_t(n) * f.per, 11);
  const auto heads = f.engine.make_exit_heads(test::random_heads(f.engine.model(), 3, 2.0f));
  Session s = f.engine.session();
  std::vector<SampleResult> with(n), without(n);
  std::vector<float> lw(size_t(n * f.classes)), lo(size_t(n * f.classes));
  RunOptions o;
  o.heads = heads.get();
  s.run(x.data(), n, f.c, f.h, f.w, with.data(), lw.data(), o);
  s.run(x.data(), n, f.c, f.h, f.w, without.data(), lo.data());
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(with[size_t(i)].exit, kFullModel);
    EXPECT_EQ(with[size_t(i)].label, without[size_t(i)].label);
    EXPECT_EQ(with[size_t(i)].confidence, without[size_t(i)].confidence);
    float conf;
    EXPECT_EQ(without[size_t(i)].label, cpu::top_softmax(lo.data() + i * f.classes, f.classes, &conf));
    EXPECT_EQ(without[size_t(i)].confidence, conf);
  }
  EXPECT_EQ(lw, lo);
}

TEST(Runtime, ExitsThatAlwaysFireAnswerAtTheFirstAttachedExit) {
  Fixture f(test::kSmallArch);
  const int n = 4;
  const std::vector<float> x = random_floats(size_t(n) * f.per, 12);
  std::vector<ExitHeadSpec> specs = test::random_heads(f.engine.model(), 5, 0.0f);
  specs.erase(specs.begin());  // no head after block 0: the first is after block 1
  const auto pooled = pooled_per_exit(f.engine, x, n);
  const auto heads = f.engine.make_exit_heads(specs);
  Session s = f.engine.session();
  std::vector<SampleResult> r(n);
  std::vector<float> logits(size_t(n * f.classes));
  RunOptions o;
  o.heads = heads.get();
  s.run(x.data(), n, f.c, f.h, f.w, r.data(), logits.data(), o);
  std::vector<float> z(size_t(f.classes));
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(r[size_t(i)].exit, 1);
    cpu::linear_head_scores(view_of(specs[0]), pooled[1].data() + size_t(i) * size_t(specs[0].dim), z.data());
    float conf;
    const int label = cpu::top_softmax(z.data(), f.classes, &conf);
    EXPECT_EQ(r[size_t(i)].label, label);
    EXPECT_NEAR(r[size_t(i)].confidence, conf, 1e-5);
    for (int k = 0; k < f.classes; ++k) EXPECT_TRUE(std::isnan(logits[size_t(i * f.classes + k)]));
  }
}

// Thresholds at a quantile of each head's confidences on these inputs, so
// that samples leave at different exits and some run to the end.
// Distance heads (kind knn or kmeans) take their keys from pooled_keys
// [exit][rows, dim].
std::vector<ExitHeadSpec> mixed_heads(const Engine& e, const std::vector<std::vector<float>>& pooled, int n,
                                      const std::vector<PoolSpec>& pools = {}, HeadKind kind = HeadKind::kLinear,
                                      const std::vector<std::vector<float>>& pooled_keys = {}, int key_rows = 0) {
  std::vector<ExitHeadSpec> specs = test::random_heads(e.model(), 21, 0.f, pools);
  for (ExitHeadSpec& s : specs) {
    // Standardise the features on these inputs, as a trained cache does, so
    // that confidences spread out instead of saturating at 1 (ties).
    const std::vector<float>& x = pooled[size_t(s.exit)];
    for (int d = 0; d < s.dim; ++d) {
      double sum = 0, sq = 0;
      for (int i = 0; i < n; ++i) sum += x[size_t(i) * size_t(s.dim) + size_t(d)];
      const double m = sum / n;
      for (int i = 0; i < n; ++i) sq += std::pow(x[size_t(i) * size_t(s.dim) + size_t(d)] - m, 2);
      s.mean[size_t(d)] = float(m);
      s.inv_std[size_t(d)] = float(1.0 / std::sqrt(sq / n + 1e-6));
    }
    if (kind != HeadKind::kLinear)
      make_distance_head(s, kind, pooled_keys[size_t(s.exit)], key_rows, uint32_t(300 + s.exit));
    std::vector<float> confs;
    for (int i = 0; i < n; ++i) {
      float conf;
      predict(s, pooled[size_t(s.exit)].data() + size_t(i) * size_t(s.dim), &conf);
      confs.push_back(conf);
    }
    std::sort(confs.begin(), confs.end());
    // About 15% of the samples confident enough here (the threshold lies
    // between confs[k] and confs[k + 1], both inside: with 6 samples k = 4).
    const size_t k = std::min(size_t(n) * 85 / 100, size_t(n) - 2);
    s.threshold = 0.5f * (confs[k] + confs[k + 1]);
  }
  return specs;
}

// Global average pooling, and grid / mixed pooling cycled over the exits;
// learned linear heads, and Freeze's k-NN and k-means heads.
struct ExitsCase {
  std::string name;
  std::vector<std::string> pools;
  HeadKind kind;
};
class PerSampleExits : public ::testing::TestWithParam<ExitsCase> {};

TEST_P(PerSampleExits, InABatchMatchTheCascadeAndEachSampleAlone) {
  Fixture f(test::kSmallArch);
  const int n = 24, key_rows = 40;
  std::vector<PoolSpec> pools;
  for (const std::string& name : GetParam().pools) pools.push_back(parse_pool(name));
  const std::vector<float> x = diverse_inputs(size_t(n), f.per, 13);
  const auto pooled = pooled_per_exit(f.engine, x, n, pools);
  const auto key_pooled = pooled_per_exit(f.engine, diverse_inputs(size_t(key_rows), f.per, 77), key_rows, pools);
  const std::vector<ExitHeadSpec> specs =
      mixed_heads(f.engine, pooled, n, pools, GetParam().kind, key_pooled, key_rows);
  const auto heads = f.engine.make_exit_heads(specs);

  // The oracle: walk the cascade on the full model's pooled features.
  std::vector<int> want_exit(n, kFullModel), want_label(n, -1);
  for (int i = 0; i < n; ++i)
    for (const ExitHeadSpec& s : specs) {
      float conf;
      const int label = predict(s, pooled[size_t(s.exit)].data() + size_t(i) * size_t(s.dim), &conf);
      if (conf >= s.threshold) {
        want_exit[size_t(i)] = s.exit;
        want_label[size_t(i)] = label;
        break;
      }
    }
  std::vector<int> distinct = want_exit;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  ASSERT_GE(distinct.size(), 3u) << "the test needs samples leaving at several exits and running to the end";
  ASSERT_EQ(distinct.front(), kFullModel) << ::testing::PrintToString(want_exit);

  Session s = f.engine.session();
  RunOptions o;
  o.heads = heads.get();
  std::vector<SampleResult> batch(n);
  std::vector<float> logits(size_t(n * f.classes));
  s.run(x.data(), n, f.c, f.h, f.w, batch.data(), logits.data(), o);
  const std::vector<float> full = f.engine.infer(x.data(), n);
  for (int i = 0; i < n; ++i) {
    SCOPED_TRACE("sample " + std::to_string(i));
    EXPECT_EQ(batch[size_t(i)].exit, want_exit[size_t(i)]);
    if (want_exit[size_t(i)] >= 0) {
      EXPECT_EQ(batch[size_t(i)].label, want_label[size_t(i)]);
    } else {
      EXPECT_TRUE(
          test::all_close(logits.data() + i * f.classes, full.data() + i * f.classes, size_t(f.classes), 1e-5, 1e-5));
    }
    SampleResult alone;
    std::vector<float> l1(size_t(f.classes));
    s.run(x.data() + size_t(i) * f.per, 1, f.c, f.h, f.w, &alone, l1.data(), o);
    EXPECT_EQ(alone.exit, batch[size_t(i)].exit);
    EXPECT_EQ(alone.label, batch[size_t(i)].label);
    EXPECT_NEAR(alone.confidence, batch[size_t(i)].confidence, 1e-6);
    if (alone.exit == kFullModel) {
      EXPECT_TRUE(test::all_close(l1.data(), logits.data() + i * f.classes, size_t(f.classes), 1e-5, 1e-5));
    }
  }
}

// What the CPU backend does to make exits cheap changes no answer, bit for
// bit: pooling inside the convolution's epilogue (GATI_CPU_POOL_IN_CONV=0
// turns it off) on basic blocks and on bottlenecks (whose 1x1 output
// convolution is a direct GEMM), for every pooling, with per-sample exits
// and compaction; and heads whose weights are halves exactly, which the
// backend keeps and reads as halves.
TEST(Runtime, PoolingInTheConvolutionAndHalfWeightsChangeNoAnswer) {
  const char* bottleneck =
      R"({"name":"bottleneck_tiny","block":"bottleneck","layers":[1,2,1],"widths":[8,16,32],"stem":"imagenet",
          "stem_width":16,"groups":1,"width_per_group":64,"in_channels":3,"input_size":[40,40],"num_classes":7,
          "mean":[0.5,0.5,0.5],"std":[0.25,0.25,0.25]})";
  for (const char* arch : {test::kSmallArch, bottleneck}) {
    Fixture f(arch);
    const int n = 16;
    const std::vector<PoolSpec> pools = {parse_pool("avg"), parse_pool("mix2x2"), parse_pool("avg4x4"),
                                         parse_pool("mix")};
    const std::vector<float> x = diverse_inputs(size_t(n), f.per, 17);
    std::vector<ExitHeadSpec> specs = mixed_heads(f.engine, pooled_per_exit(f.engine, x, n, pools), n, pools);
    for (ExitHeadSpec& h : specs) round_weights_to_half(h);
    const auto heads = f.engine.make_exit_heads(specs);
    for (size_t i = 0; i < specs.size(); ++i)
      ASSERT_EQ(heads->view(int(i)).weight_f16 != nullptr, cpu::fast_half_weights()) << "head " << i;
    std::vector<ExitHeadSpec> inexact = specs;  // one weight off a half: the backend reads the floats
    inexact[0].weight[0] = std::nextafter(inexact[0].weight[0], 1.f);
    EXPECT_EQ(f.engine.make_exit_heads(inexact)->view(0).weight_f16, nullptr);

    auto run = [&](bool pool_in_conv) {
      if (pool_in_conv)
        unsetenv("GATI_CPU_POOL_IN_CONV");
      else
        setenv("GATI_CPU_POOL_IN_CONV", "0", 1);
      Session s = f.engine.session();
      unsetenv("GATI_CPU_POOL_IN_CONV");
      RunOptions o;
      o.heads = heads.get();
      std::vector<SampleResult> r(n);
      std::vector<float> logits(size_t(n * f.classes));
      s.run(x.data(), n, f.c, f.h, f.w, r.data(), logits.data(), o);
      return std::make_pair(r, logits);
    };
    const auto [plain, plain_logits] = run(false);
    const auto [fused, fused_logits] = run(true);
    std::vector<int> exits;
    for (int i = 0; i < n; ++i) {
      SCOPED_TRACE(std::string(f.engine.arch().name) + " sample " + std::to_string(i));
      exits.push_back(plain[size_t(i)].exit);
      EXPECT_EQ(fused[size_t(i)].exit, plain[size_t(i)].exit);
      EXPECT_EQ(fused[size_t(i)].label, plain[size_t(i)].label);
      EXPECT_EQ(std::memcmp(&fused[size_t(i)].confidence, &plain[size_t(i)].confidence, sizeof(float)), 0);
      if (plain[size_t(i)].exit == kFullModel) {
        EXPECT_EQ(std::memcmp(fused_logits.data() + i * f.classes, plain_logits.data() + i * f.classes,
                              size_t(f.classes) * sizeof(float)),
                  0);
      }
    }
    std::sort(exits.begin(), exits.end());
    EXPECT_GE(std::unique(exits.begin(), exits.end()) - exits.begin(), 3) << "samples should leave at several exits";
  }
}

// The linear head's kernel reads int8 rows, halves or floats of the same
// weights and gives the same scores, decisions and confidences, bit for bit,
// at any batch (4 rows at a time and the rest one by one), with a dimension
// that is not a multiple of the 16 lanes and a class count not of the 4 rows.
// Weights rounded to halves (small heads) are read as halves; rounded to
// int8 rows (large heads) they are halves too, and read as int8.
TEST(Runtime, HalfAndInt8WeightsScoreExactlyAsTheirFloats) {
  const int n = 7, dim = 203, classes = 10;
  for (bool int8 : {false, true}) {
    SCOPED_TRACE(int8 ? "rounded to int8 rows" : "rounded to halves");
    ExitHeadSpec h;
    h.dim = dim;
    h.classes = classes;
    h.mean = random_floats(size_t(dim), 1, 0.2f);
    h.inv_std.assign(size_t(dim), 1.3f);
    h.weight = random_floats(size_t(dim) * size_t(classes), 2, 0.3f);
    h.bias = random_floats(size_t(classes), 3, 0.3f);
    if (int8)
      round_rows_to_int8(h.weight.data(), classes, dim);
    else
      round_weights_to_half(h);
    const std::vector<uint16_t> halves = halves_if_exact(h.weight);
    ASSERT_EQ(halves.size(), h.weight.size()) << "every rounded weight is a half";
    const Int8Rows rows = int8_rows_if_exact(h.weight, classes, dim);
    ASSERT_EQ(rows.q.empty(), !int8) << "int8 rows exactly when rounded so";
    const std::vector<float> pooled = random_floats(size_t(n) * size_t(dim), 4);
    LinearHeadView v = host_linear_view(h);
    std::vector<float> confs;  // the threshold between the rows' middle confidences: some hit, some not
    for (int i = 0; i < n; ++i) {
      std::vector<float> z(static_cast<size_t>(classes));
      cpu::linear_head_scores(v, pooled.data() + size_t(i) * size_t(dim), z.data());
      cpu::top_softmax(z.data(), classes, &confs.emplace_back());
    }
    std::sort(confs.begin(), confs.end());
    v.threshold = 0.5f * (confs[size_t(n / 2)] + confs[size_t(n / 2 + 1)]);
    auto decide = [&](const uint16_t* w16, const Int8Rows* w8) {
      v.weight_f16 = w16;
      v.weight_i8 = w8 ? w8->q.data() : nullptr;
      v.weight_i8_scale = w8 ? w8->scale.data() : nullptr;
      std::vector<unsigned char> buf(exit_state_bytes(n, classes));
      const ExitState st = exit_state_at(buf.data(), n);
      cpu::begin_exits(st, n, classes);
      cpu::exit_head_linear_pooled(pooled.data(), n, v, 3, st, 0);
      return buf;
    };
    const std::vector<unsigned char> with_floats = decide(nullptr, nullptr);
    EXPECT_EQ(with_floats, decide(halves.data(), nullptr));
    if (int8) {
      EXPECT_EQ(with_floats, decide(halves.data(), &rows));
    }
    const ExitState st = exit_state_at(const_cast<unsigned char*>(with_floats.data()), n);
    int hits = 0;
    for (int i = 0; i < n; ++i) {
      hits += st.hit[i];
      float conf;  // one row alone, through the single-row scorer
      std::vector<float> z(static_cast<size_t>(classes));
      cpu::linear_head_scores(host_linear_view(h), pooled.data() + size_t(i) * size_t(dim), z.data());
      const int label = cpu::top_softmax(z.data(), classes, &conf);
      EXPECT_EQ(st.hit[i], conf >= v.threshold ? 1 : 0) << "row " << i;
      if (st.hit[i]) {
        EXPECT_EQ(st.label[i], label);
        EXPECT_EQ(std::memcmp(&st.confidence[i], &conf, sizeof conf), 0);
      }
    }
    EXPECT_GT(hits, 0);
    EXPECT_LT(hits, n);
  }
}

// Int8 rows: the smallest power-of-two scale that fits each class's largest
// |weight| in 127 steps; rounding moves a weight by at most half a step;
// rows that are not exactly q * scale (one weight off, -0, a NaN) are not
// taken; a large head from gati cache build's rounding reaches the CPU
// kernel as int8, a small one as halves.
TEST(Runtime, Int8RowsAreExactOrNotTaken) {
  const float a[] = {0.5f, -1.f, 0.25f};  // largest 1: 1/127 -> 2^-6 (1/64 * 127 >= 1)
  EXPECT_EQ(int8_row_scale(a, 3), 1.f / 64);
  const float b[] = {127.f, 3.f};  // exactly 127 steps of 1
  EXPECT_EQ(int8_row_scale(b, 2), 1.f);
  const float c[] = {0.f, 0.f};
  EXPECT_EQ(int8_row_scale(c, 2), 1.f);
  const float d[] = {1.f, NAN};
  EXPECT_EQ(int8_row_scale(d, 2), 0.f);

  std::vector<float> w = random_floats(4 * 50, 9, 0.7f);
  w[60] = 0;
  const std::vector<float> before = w;
  round_rows_to_int8(w.data(), 4, 50);
  for (int r = 0; r < 4; ++r) {
    const float s = int8_row_scale(before.data() + r * 50, 50);
    for (int j = 0; j < 50; ++j) EXPECT_LE(std::abs(w[size_t(r * 50 + j)] - before[size_t(r * 50 + j)]), s / 2);
  }
  Int8Rows rows = int8_rows_if_exact(w, 4, 50);
  ASSERT_EQ(rows.q.size(), w.size());
  for (size_t i = 0; i < w.size(); ++i) EXPECT_EQ(float(rows.q[i]) * rows.scale[i / 50], w[i]) << i;
  std::vector<float> again = w;
  round_rows_to_int8(again.data(), 4, 50);
  EXPECT_EQ(again, w) << "rounding is idempotent";
  for (float bad : {std::nextafter(w[7], 2.f), -0.f, NAN}) {
    std::vector<float> off = w;
    off[7] = bad;
    EXPECT_TRUE(int8_rows_if_exact(off, 4, 50).q.empty()) << bad;
  }
  const float tiny[] = {3e-7f, -1e-7f};  // below 127 * 2^-24: the scale stays 2^-24, so the rows stay halves
  EXPECT_EQ(int8_row_scale(tiny, 2), std::ldexp(1.0f, -24));
  std::vector<float> small = {3e-7f, -1e-7f, 2.2e-7f, 0.f};
  round_rows_to_int8(small.data(), 2, 2);
  EXPECT_EQ(halves_if_exact(small).size(), small.size());
  EXPECT_FALSE(int8_rows_if_exact(small, 2, 2).q.empty());
  EXPECT_TRUE(int8_rows_if_exact(w, 3, 50).q.empty()) << "a shape that does not cover the weights";

  // 4200 classes: the last exit's head (32 features) holds 134400 weights, over kInt8HeadWeights; the
  // stem's (8 features) 33600, under it.
  std::string wide = test::kTinyArch;
  wide.replace(wide.find("\"num_classes\":5"), 15, "\"num_classes\":4200");
  Fixture f(wide.c_str());
  std::vector<ExitHeadSpec> specs = test::random_heads(f.engine.model(), 5, 2.f);
  const size_t last = specs.size() - 1;
  ASSERT_GE(specs[last].weight.size(), kInt8HeadWeights);
  ASSERT_LT(specs[0].weight.size(), kInt8HeadWeights);
  for (ExitHeadSpec& h : specs) round_weights_for_serving(h);
  ASSERT_FALSE(int8_rows_if_exact(specs[last].weight, specs[last].classes, specs[last].dim).q.empty());
  ASSERT_TRUE(int8_rows_if_exact(specs[0].weight, specs[0].classes, specs[0].dim).q.empty());
  ASSERT_EQ(halves_if_exact(specs[0].weight).size(), specs[0].weight.size());
  const auto heads = f.engine.make_exit_heads(specs);
  EXPECT_NE(heads->view(int(last)).weight_i8, nullptr);
  EXPECT_NE(heads->view(int(last)).weight_i8_scale, nullptr);
  EXPECT_EQ(heads->view(0).weight_i8, nullptr) << "a small head stays in halves";
  EXPECT_EQ(heads->view(0).weight_f16 != nullptr, cpu::fast_half_weights());
}

// Rounding to halves: the nearest half within FP16's range, a weight
// beyond it left as it is (a half would be infinite), whose head the
// backend then reads as floats.
TEST(Runtime, WeightsRoundToHalvesWithinTheirRange) {
  ExitHeadSpec h;
  h.weight = {1.0001f, -0.f, 1e-9f, 3.1415927f, 70000.f, -65504.f};
  round_weights_to_half(h);
  EXPECT_EQ(h.weight[0], 1.f);
  EXPECT_TRUE(std::signbit(h.weight[1]) && h.weight[1] == 0.f);
  EXPECT_EQ(h.weight[2], 0.f);
  EXPECT_EQ(h.weight[3], 3.140625f);
  EXPECT_EQ(h.weight[4], 70000.f);
  EXPECT_EQ(h.weight[5], -65504.f);
  for (size_t i = 0; i < h.weight.size(); ++i) EXPECT_EQ(is_half_exact(h.weight[i]), i != 4) << i;

  Fixture f(test::kTinyArch);
  std::vector<ExitHeadSpec> specs = test::random_heads(f.engine.model(), 5, 2.f);
  round_weights_to_half(specs[0]);
  specs[0].weight[3] = 70000.f;
  round_weights_to_half(specs[1]);
  const auto heads = f.engine.make_exit_heads(specs);
  EXPECT_EQ(heads->view(0).weight_f16, nullptr);
  EXPECT_EQ(heads->view(1).weight_f16 != nullptr, cpu::fast_half_weights());
}

TEST(Runtime, ObserverSeesTheCompactedRowsAndTheirSamples) {
  Fixture f(test::kSmallArch);
  const int n = 16;
  const std::vector<float> x = diverse_inputs(size_t(n), f.per, 14);
  const auto pooled = pooled_per_exit(f.engine, x, n);
  const auto heads = f.engine.make_exit_heads(mixed_heads(f.engine, pooled, n));
  Session s = f.engine.session();
  std::vector<SampleResult> r(n);
  std::vector<std::vector<int>> seen(exit_points(f.engine.model().net).size());
  RunOptions o;
  o.heads = heads.get();
  o.observer = [&](const ExitPoint& e, BackendContext&, const float*, int rows, const int32_t* pos) {
    seen[size_t(e.id)].assign(pos, pos + rows);
  };
  s.run(x.data(), n, f.c, f.h, f.w, r.data(), nullptr, o);
  for (size_t e = 0; e < seen.size(); ++e) {
    // Rows at exit e are the samples that had not exited before e, in caller order.
    std::vector<int> want;
    for (int i = 0; i < n; ++i)
      if (r[size_t(i)].exit == kFullModel || r[size_t(i)].exit >= int(e)) want.push_back(i);
    EXPECT_EQ(seen[e], want) << "exit " << e;
  }
}

TEST(Runtime, BatchWhereEverySampleExitsEndsEarly) {
  Fixture f(test::kSmallArch);
  const int n = 3;
  const std::vector<float> x = random_floats(size_t(n) * f.per, 15);
  const auto heads = f.engine.make_exit_heads(test::random_heads(f.engine.model(), 9, 0.0f));
  Session s = f.engine.session();
  std::vector<SampleResult> r(n);
  std::vector<LayerTiming> timings;
  RunOptions o;
  o.heads = heads.get();
  o.timings = &timings;
  s.run(x.data(), n, f.c, f.h, f.w, r.data(), nullptr, o);
  for (const SampleResult& q : r) EXPECT_EQ(q.exit, 0);
  // Only the stem ran, then its exit and compaction; nothing after.
  for (const LayerTiming& t : timings) EXPECT_EQ(t.block, -1) << t.name;
  EXPECT_TRUE(std::any_of(timings.begin(), timings.end(), [](const LayerTiming& t) { return t.kind == "exit"; }));
}

INSTANTIATE_TEST_SUITE_P(Heads, PerSampleExits,
                         ::testing::Values(ExitsCase{"global", {"avg"}, HeadKind::kLinear},
                                           ExitsCase{"grid", {"mix2x2", "avg4x4", "mix", "mix4x4"}, HeadKind::kLinear},
                                           ExitsCase{"knn", {"avg", "mix2x2"}, HeadKind::kKnn},
                                           ExitsCase{"kmeans", {"avg2x2", "mix"}, HeadKind::kKmeans}),
                         [](const auto& param) { return param.param.name; });

// The memory of recent answers, against a host mirror of it (brute-force
// nearest among the last `capacity` stored answers): a sample is answered by
// the memory exactly when the mirror says so, with the stored answer, and
// only answers the full model gave with enough confidence are stored; in a
// batch, lookups see the memory as it was before the batch.
TEST(Runtime, MemoryOnlyEverAnswersWhatTheFullModelSaid) {
  Fixture f(test::kSmallArch);
  const std::vector<ExitPointInfo> points = exit_points(f.engine.model().net);
  MemorySpec spec;
  spec.exit = 0;
  spec.pool = parse_pool("avg2x2");
  spec.dim = spec.pool.features(points[0].channels);
  spec.capacity = 2;  // smaller than the confident images: entries are evicted
  spec.mean.assign(size_t(spec.dim), 0.f);
  spec.inv_std.assign(size_t(spec.dim), 1.f);
  spec.threshold = 0.05f;
  // 6 distinct images, requested 48 times in a random order with a little noise.
  const int bases = 6, requests = 48;
  const std::vector<float> base = diverse_inputs(size_t(bases), f.per, 31);
  {  // stored: the answers of about half the images
    const std::vector<float> z = f.engine.infer(base.data(), bases);
    std::vector<float> conf(static_cast<size_t>(bases));
    for (int i = 0; i < bases; ++i) cpu::top_softmax(z.data() + size_t(i * f.classes), f.classes, &conf[size_t(i)]);
    std::sort(conf.begin(), conf.end());
    spec.min_confidence = 0.5f * (conf[2] + conf[3]);
  }
  const std::vector<float> noise = random_floats(size_t(requests) * f.per, 32, 1e-4f);
  std::vector<float> x(size_t(requests) * f.per);
  std::mt19937 rng(5);
  for (int r = 0; r < requests; ++r) {
    const size_t b = rng() % bases;
    for (size_t k = 0; k < f.per; ++k) x[size_t(r) * f.per + k] = base[b * f.per + k] + noise[size_t(r) * f.per + k];
  }

  for (int batch : {1, 4}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    Session s = f.engine.session();
    std::unique_ptr<AnswerMemory> memory = s.make_memory(spec);
    struct Entry {
      std::vector<float> key;
      int label;
      float conf;
    };
    std::vector<Entry> mirror;  // oldest first
    std::vector<float> feats;   // this batch's stem features, by sample
    RunOptions o;
    o.memory = memory.get();
    o.observer = [&](const ExitPoint& e, BackendContext& ctx, const float* act, int rows, const int32_t*) {
      if (e.id != 0) return;
      std::vector<float> a(e.shape.per_sample() * size_t(rows));
      ctx.to_host(act, a.size() * sizeof(float), a.data());
      ctx.synchronize();
      feats.assign(size_t(rows) * size_t(spec.dim), 0.f);
      cpu::pool_features_nhwc(a.data(), rows, e.shape.h, e.shape.w, e.shape.c, spec.pool, feats.data());
    };
    int hits = 0, stored = 0, unsure = 0;
    for (int r0 = 0; r0 < requests; r0 += batch) {
      std::vector<SampleResult> res(static_cast<size_t>(batch));
      s.run(x.data() + size_t(r0) * f.per, batch, f.c, f.h, f.w, res.data(), nullptr, o);
      std::vector<Entry> added;
      for (int i = 0; i < batch; ++i) {
        const float* q = feats.data() + size_t(i) * size_t(spec.dim);
        int best = -1;
        float best_d = 0;
        for (size_t k = 0; k < mirror.size(); ++k) {
          const float d = cpu::squared_distance(q, mirror[k].key.data(), spec.dim);
          if (best < 0 || d < best_d) best = int(k), best_d = d;
        }
        const bool want_hit = best >= 0 && best_d <= spec.threshold;
        const SampleResult& got = res[size_t(i)];
        ASSERT_EQ(got.from_memory, want_hit) << "request " << r0 + i << ", nearest " << best_d;
        if (want_hit) {
          ++hits;
          EXPECT_EQ(got.exit, 0);
          EXPECT_EQ(got.label, mirror[size_t(best)].label);
          EXPECT_EQ(got.confidence, mirror[size_t(best)].conf);
        } else {
          EXPECT_EQ(got.exit, kFullModel);
          if (got.confidence >= spec.min_confidence)
            added.push_back({{q, q + spec.dim}, got.label, got.confidence});
          else
            ++unsure;
        }
      }
      for (Entry& e : added) {  // after the batch, in sample order, oldest evicted
        if (int(mirror.size()) == spec.capacity) mirror.erase(mirror.begin());
        mirror.push_back(std::move(e));
        ++stored;
      }
    }
    EXPECT_GT(hits, 0);
    EXPECT_GT(unsure, 0);              // answers the memory must not store
    EXPECT_GT(stored, spec.capacity);  // evictions happened
    EXPECT_EQ(memory->entries(), spec.capacity);
  }
}

TEST(Runtime, MemoriesAreCheckedAgainstTheModelAndTheirSession) {
  Fixture f(test::kSmallArch);
  MemorySpec spec;
  spec.exit = 0;
  spec.pool = parse_pool("avg");
  spec.dim = 8;  // the stem's channels
  spec.mean.assign(8, 0.f);
  spec.inv_std.assign(8, 1.f);
  Session a = f.engine.session(), b = f.engine.session();
  EXPECT_NO_THROW(a.make_memory(spec));
  MemorySpec bad = spec;
  bad.dim = 9;
  EXPECT_GATI_ERROR(a.make_memory(bad), "memory at 'stem': dim 9, but 8 channels pooled avg give 8 features");
  bad = spec;
  bad.exit = 40;
  EXPECT_GATI_ERROR(a.make_memory(bad), "exit 40 is not one of the model's 7 exit points");
  bad = spec;
  bad.capacity = 0;
  EXPECT_GATI_ERROR(a.make_memory(bad), "capacity 0");
  bad = spec;
  bad.inv_std[3] = std::nanf("");
  EXPECT_GATI_ERROR(a.make_memory(bad), "non-finite");
  bad = spec;
  bad.min_confidence = 1.5f;
  EXPECT_GATI_ERROR(a.make_memory(bad), "min_confidence 1.5");
  std::unique_ptr<AnswerMemory> m = a.make_memory(spec);
  RunOptions o;
  o.memory = m.get();
  const std::vector<float> x = random_floats(f.per, 3);
  SampleResult r;
  EXPECT_GATI_ERROR(b.run(x.data(), 1, f.c, f.h, f.w, &r, nullptr, o), "the memory belongs to another session");
  EXPECT_NO_THROW(a.run(x.data(), 1, f.c, f.h, f.w, &r, nullptr, o));
}

TEST(Runtime, ExitHeadsAreCheckedAgainstTheModel) {
  Fixture f(test::kSmallArch);
  std::vector<ExitHeadSpec> specs = test::random_heads(f.engine.model(), 1, 0.5f);
  auto bad = specs;
  bad[2].dim = 7;
  EXPECT_GATI_ERROR(f.engine.make_exit_heads(bad), "dim 7");
  bad = specs;
  bad[2].pool = parse_pool("mix2x2");  // the same dim no longer fits the block's channels pooled this way
  EXPECT_GATI_ERROR(f.engine.make_exit_heads(bad), "pooled mix2x2 give");
  bad[2].pool.grid = 12;
  EXPECT_GATI_ERROR(f.engine.make_exit_heads(bad), "pool grid 12 is not in [1, 8]");
  bad = specs;
  bad[0].exit = 99;
  EXPECT_GATI_ERROR(f.engine.make_exit_heads(bad), "exit 99 is not one of the model's");
  bad = specs;
  bad[1].weight[3] = std::nanf("");
  EXPECT_GATI_ERROR(f.engine.make_exit_heads(bad), "weight[3] is not finite");
  bad = specs;
  bad[1].classes = 3;
  EXPECT_GATI_ERROR(f.engine.make_exit_heads(bad), "3 classes");
  bad = {specs[1], specs[1]};
  EXPECT_GATI_ERROR(f.engine.make_exit_heads(bad), "two heads");
}

// Finite but huge inputs overflow float inside the network: a clear error
// naming the sample, not NaN logits; the engine stays usable.
TEST(Runtime, ActivationsThatOverflowAreAnErrorNotNaN) {
  Fixture f(test::kTinyArch);
  std::vector<float> x = test::random_floats(2 * f.per, 9);
  for (size_t i = f.per; i < 2 * f.per; ++i) x[i] = x[i] > 0 ? 3e38f : -3e38f;  // sample 1: finite, absurd
  EXPECT_GATI_ERROR(f.engine.infer(x.data(), 2), "sample 1: the model's output is not finite");
  const std::vector<float> ok = f.engine.infer(x.data(), 1);
  for (float v : ok) EXPECT_TRUE(std::isfinite(v));
}

// Inputs that are not regular files are refused before they are opened
// (a named pipe would block the reader forever).
TEST(Runtime, InputFilesMustBeRegularFiles) {
  const auto dir = test::scratch_dir("not_regular");
  const std::string fifo = (dir / "model.safetensors").string(), folder = dir.string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_GATI_ERROR(Engine{fifo}, "is not a regular file");
  EXPECT_GATI_ERROR(Engine{folder}, "is a folder");
  std::filesystem::remove_all(dir);
}

// On-device learning (engine/learner.h) against the host's online updates
// (cache/online.h, OnlineState), which learn from features collected by a
// separate pass: the same answers in the same order must give the same
// steps, bit for bit on the CPU backend.  Samples leave at every exit and
// from a memory at the stem (the same exit point as a head), in batches that
// do not divide the SGD batch, so the rows each head gathers after a
// compaction, and steps that fall inside a run, are all exercised.
TEST(Learner, StepsAsTheHostUpdatesDoWhateverTheBatch) {
  Fixture f(test::kSmallArch);
  const int n = 24, requests = 200;
  const std::vector<PoolSpec> pools = {parse_pool("avg"), parse_pool("mix2x2")};
  const std::vector<float> probe = diverse_inputs(size_t(n), f.per, 61);
  std::vector<ExitHeadSpec> specs = mixed_heads(f.engine, pooled_per_exit(f.engine, probe, n, pools), n, pools);
  const std::vector<ExitPointInfo> points = exit_points(f.engine.model().net);
  MemorySpec mem;  // exact repeats of a confident answer hit at the stem
  mem.exit = 0;
  mem.pool = parse_pool("avg");
  mem.dim = mem.pool.features(points[0].channels);
  mem.mean.assign(size_t(mem.dim), 0.f);
  mem.inv_std.assign(size_t(mem.dim), 1.f);
  mem.threshold = 1e-6f;
  mem.min_confidence = 0.f;
  // 200 requests over 30 distinct images: some repeat.
  const std::vector<float> base = diverse_inputs(30, f.per, 62);
  std::vector<float> x(size_t(requests) * f.per);
  std::mt19937 rng(63);
  for (int r = 0; r < requests; ++r) {
    const size_t b = rng() % 30;
    std::copy_n(base.begin() + long(b * f.per), f.per, x.begin() + long(size_t(r) * f.per));
  }
  // (SGD batch, run batch): steps inside runs; and, with heads that do not
  // hit (threshold 1), gatherings of more rows than one call takes
  // (RowGather::kMax).
  const std::vector<std::pair<int, int>> cases = {{5, 1}, {5, 3}, {5, 7}, {120, 100}};
  std::vector<ExitHeadSpec> quiet = specs;
  for (ExitHeadSpec& h : quiet) h.threshold = 1.0f;
  for (const auto& [sgd_batch, batch] : cases) {
    const bool hits = sgd_batch < 10;
    LearnerOptions lo;
    lo.batch = sgd_batch;
    lo.hyper = {0.05f, 0.9f, 5e-4f};
    OnlineOptions oo;
    oo.sgd = true;
    oo.sgd_options = {1, sgd_batch, 0.05f, 0.9f, 5e-4f, 0};
    for (bool with_memory : {false, true}) {
      if (with_memory && !hits) continue;
      SCOPED_TRACE("SGD batch " + std::to_string(sgd_batch) + ", batch " + std::to_string(batch) +
                   (with_memory ? ", memory at the stem" : ""));
      Session s = f.engine.session(), ref = f.engine.session();
      const std::vector<ExitHeadSpec>& heads = hits ? specs : quiet;
      std::unique_ptr<HeadLearner> learner = s.make_learner(heads, lo);
      std::unique_ptr<AnswerMemory> memory = with_memory ? s.make_memory(mem) : nullptr,
                                    ref_memory = with_memory ? ref.make_memory(mem) : nullptr;
      std::vector<ExitCache> caches;
      for (const ExitHeadSpec& h : heads) caches.push_back(ExitCache::from_head_spec(h));
      OnlineState state(caches, {}, 0.99, oo);
      std::map<int, int> by_exit;  // answers per exit (kFullModel: -1; the memory: -2)
      int64_t full = 0;
      for (int at = 0; at < requests; at += batch) {
        const int nb = std::min(batch, requests - at);
        const float* xb = x.data() + size_t(at) * f.per;
        // The host path: heads as it serves them now, then its learning from
        // a separate collection of the features.
        const auto served = f.engine.make_exit_heads(state.head_specs());
        std::vector<SampleResult> want(static_cast<size_t>(nb)), got(static_cast<size_t>(nb));
        RunOptions ro;
        ro.heads = served.get();
        ro.memory = ref_memory.get();
        ref.run(xb, nb, f.c, f.h, f.w, want.data(), nullptr, ro);
        RunOptions lo_run;
        lo_run.learner = learner.get();
        lo_run.memory = memory.get();
        s.run(xb, nb, f.c, f.h, f.w, got.data(), nullptr, lo_run);
        const CollectedFeatures feats = collect_features(ref, xb, nb, nb, state.pools(int(points.size())));
        for (int k = 0; k < nb; ++k) {
          const SampleResult &g = got[size_t(k)], &w = want[size_t(k)];
          ASSERT_EQ(g.exit, w.exit) << "request " << at + k;
          ASSERT_EQ(g.label, w.label) << "request " << at + k;
          ASSERT_EQ(g.confidence, w.confidence) << "request " << at + k;
          ASSERT_EQ(g.from_memory, w.from_memory) << "request " << at + k;
          ++by_exit[w.from_memory ? -2 : w.exit];
          if (w.exit == kFullModel) {
            ++full;
            state.learn(feats, k, w.label);
          }
        }
      }
      const LearnerStats st = learner->stats();
      EXPECT_EQ(st.learned, full);
      EXPECT_EQ(st.steps, state.steps());
      EXPECT_EQ(st.rejected, 0) << st.last_rejection;
      EXPECT_GE(st.steps, sgd_batch < 10 ? 10 : 1);
      EXPECT_GT(st.last_loss, 0);
      const std::vector<ExitHeadSpec> learned = learner->specs();
      ASSERT_EQ(learned.size(), state.live().size());
      for (size_t e = 0; e < learned.size(); ++e) {
        EXPECT_EQ(learned[e].weight, state.live()[e].weight) << learned[e].name;
        EXPECT_EQ(learned[e].bias, state.live()[e].bias) << learned[e].name;
        EXPECT_NE(learned[e].weight, heads[e].weight) << learned[e].name << " never learned";
      }
      // The run mixed every way out: early exits, the end, and the memory.
      EXPECT_GE(by_exit.size(), hits ? 3u : 1u);
      EXPECT_GT(by_exit[kFullModel], sgd_batch);
      if (with_memory) {
        EXPECT_GT(by_exit[-2], 0);
      }
    }
  }
}

// A step that would take a weight out of range is refused on the device and
// reported: its batch is dropped, the served heads stay as they were, and
// serving goes on.
TEST(Learner, RefusedStepsAreCountedAndChangeNothing) {
  Fixture f(test::kTinyArch);
  const std::vector<ExitHeadSpec> specs = test::random_heads(f.engine.model(), 71, 1.0f);  // never hits
  Session s = f.engine.session();
  LearnerOptions lo;
  lo.batch = 2;
  lo.hyper = {1e30f, 0.9f, 0.f};
  std::unique_ptr<HeadLearner> learner = s.make_learner(specs, lo);
  const std::vector<float> x = diverse_inputs(6, f.per, 72);
  const std::vector<float> want = f.engine.infer(x.data(), 6);
  RunOptions o;
  o.learner = learner.get();
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(s.infer(x.data(), 6, f.c, f.h, f.w, o), want);
    const LearnerStats st = learner->stats();
    EXPECT_EQ(st.learned, 6 * (round + 1));
    EXPECT_EQ(st.steps, 0);
    EXPECT_EQ(st.rejected, int64_t(specs.size()) * 3 * (round + 1));
    EXPECT_NE(st.last_rejection.find("the batch was dropped"), std::string::npos) << st.last_rejection;
    EXPECT_NE(st.last_rejection.find("head '"), std::string::npos) << st.last_rejection;
  }
  const std::vector<ExitHeadSpec> after = learner->specs();
  for (size_t e = 0; e < specs.size(); ++e) EXPECT_EQ(after[e].weight, specs[e].weight) << specs[e].name;
}

TEST(Learner, MisuseIsRefusedWithAClearError) {
  Fixture f(test::kTinyArch);
  std::vector<ExitHeadSpec> specs = test::random_heads(f.engine.model(), 81, 0.9f);
  Session s = f.engine.session(), other = f.engine.session();
  std::unique_ptr<HeadLearner> learner = s.make_learner(specs);
  const std::vector<float> x = diverse_inputs(2, f.per, 82);
  std::vector<SampleResult> r(2);
  RunOptions o;
  o.learner = learner.get();
  EXPECT_GATI_ERROR(other.run(x.data(), 2, f.c, f.h, f.w, r.data(), nullptr, o), "belongs to another session");
  const auto heads = f.engine.make_exit_heads(specs);
  o.heads = heads.get();
  EXPECT_GATI_ERROR(s.run(x.data(), 2, f.c, f.h, f.w, r.data(), nullptr, o), "not both");
  LearnerOptions bad;
  bad.batch = 0;
  EXPECT_GATI_ERROR(s.make_learner(specs, bad), "SGD batch must be 1 to 65536");
  bad = {};
  bad.hyper.lr = NAN;
  EXPECT_GATI_ERROR(s.make_learner(specs, bad), "lr nan must be finite");
  std::vector<ExitHeadSpec> wide = specs;
  wide[1].weight[3] = 1e5f;
  EXPECT_GATI_ERROR(s.make_learner(wide), "beyond the largest half");
  std::vector<ExitHeadSpec> wrong = specs;
  wrong[0].classes = 3;
  EXPECT_GATI_ERROR(s.make_learner(wrong), "classes, the model has");
}

TEST(Session, IsNotReentrantButTheEngineIs) {
  Fixture f(test::kTinyArch);
  const std::vector<float> x = random_floats(f.per, 16);
  Session s = f.engine.session();
  SampleResult r;
  bool inner_threw = false, engine_ok = false;
  RunOptions o;
  o.observer = [&](const ExitPoint& e, BackendContext&, const float*, int, const int32_t*) {
    if (e.id != 1) return;
    try {
      SampleResult q;
      s.run(x.data(), 1, f.c, f.h, f.w, &q, nullptr);
    } catch (const Error& err) {
      inner_threw = std::string(err.what()).find("while this session is running") != std::string::npos;
    }
    engine_ok = f.engine.infer(x.data(), 1).size() == size_t(f.classes);  // another session: no deadlock
  };
  s.run(x.data(), 1, f.c, f.h, f.w, &r, nullptr, o);
  EXPECT_TRUE(inner_threw);
  EXPECT_TRUE(engine_ok);
  s.run(x.data(), 1, f.c, f.h, f.w, &r, nullptr);  // still usable
}

TEST(Session, KeepsABoundedNumberOfPlansAndRefusesHugeArenas) {
  Fixture f(test::kTinyArch);
  SessionOptions so;
  so.max_plans = 2;
  so.max_arena_bytes = size_t(4) << 20;
  Session s = f.engine.session(so);
  for (int size : {12, 16, 20, 24}) {
    const std::vector<float> x = random_floats(size_t(size * size), uint32_t(size));
    EXPECT_EQ(s.infer(x.data(), 1, 1, size, size).size(), size_t(f.classes));
  }
  EXPECT_EQ(s.prepared_plans(), 2u);
  const std::vector<float> big = random_floats(size_t(64) * 300 * 300, 3);
  EXPECT_GATI_ERROR(s.infer(big.data(), 64, 1, 300, 300), "over the session's limit");
  EXPECT_EQ(s.infer(big.data(), 1, 1, 12, 12).size(), size_t(f.classes));  // still usable
  EXPECT_GATI_ERROR(s.infer(big.data(), 1, 1, 1 << 30, 1 << 30), "overflows");
}

TEST(Session, SessionsInParallelThreadsAgreeWithOne) {
  Fixture f(test::kSmallArch);
  const int n = 6;
  const std::vector<float> x = diverse_inputs(size_t(n), f.per, 17);
  const auto pooled = pooled_per_exit(f.engine, x, n);
  const auto heads = f.engine.make_exit_heads(mixed_heads(f.engine, pooled, n));
  RunOptions o;
  o.heads = heads.get();
  std::vector<SampleResult> want(n);
  f.engine.session().run(x.data(), n, f.c, f.h, f.w, want.data(), nullptr, o);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      SessionOptions so;
      so.threads = 1;
      Session s = f.engine.session(so);
      std::vector<SampleResult> got(n);
      for (int rep = 0; rep < 5; ++rep) {
        s.run(x.data(), n, f.c, f.h, f.w, got.data(), nullptr, o);
        for (int i = 0; i < n; ++i)
          mismatches[size_t(t)] +=
              got[size_t(i)].exit != want[size_t(i)].exit || got[size_t(i)].label != want[size_t(i)].label;
      }
    });
  for (auto& th : threads) th.join();
  for (int m : mismatches) EXPECT_EQ(m, 0);
}

}  // namespace
}  // namespace gati
