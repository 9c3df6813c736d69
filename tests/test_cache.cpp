// Learned caches and request traces: training lowers the loss, calibration
// meets its target, the SGD guard refuses non-finite steps, cache files and
// traces round-trip and reject damage, traces are reproducible by seed.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "cache/approx_cache.h"
#include "cache/build.h"
#include "cache/config.h"
#include "cache/guard.h"
#include "cache/label_shift.h"
#include "cache/learned_cache.h"
#include "cache/memory_cache.h"
#include "cache/mlp_head.h"
#include "cache/replay.h"
#include "kernels/cpu/exit_head_cpu.h"
#include "kernels/cpu/linear_sgd_cpu.h"
#include "loaders/trace.h"
#include "random_model.h"
#include "test_util.h"
#include "weights/common/error.h"
#include "weights/common/half.h"
#include "weights/safetensors.h"

namespace gati {
namespace {

// Gaussian blobs: class k centred at a random point, with overlap so that
// confidence matters.
void blobs(int n, int dim, int classes, uint32_t seed, std::vector<float>& x, std::vector<int>& y) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::mt19937 crng(99);  // same centres for every call
  std::vector<float> centres(size_t(classes * dim));
  for (float& c : centres) c = 1.2f * d(crng);
  x.resize(size_t(n * dim));
  y.resize(size_t(n));
  for (int i = 0; i < n; ++i) {
    y[size_t(i)] = int(rng() % uint32_t(classes));
    for (int j = 0; j < dim; ++j) x[size_t(i * dim + j)] = centres[size_t(y[size_t(i)] * dim + j)] + d(rng) + 3.f;
  }
}

ExitCache fresh(int dim, int classes) {
  ExitCache c;
  c.name = "layer1.0";
  c.dim = dim;
  c.classes = classes;
  return c;
}

// Writes the damaged set `bad` to `path` and expects loading it for `m` to
// be refused with a message containing `want`.
void expect_load_refused(const CacheSet& bad, const std::string& path, const Model& m, const std::string& want) {
  SCOPED_TRACE(want);
  bad.save(path);
  EXPECT_GATI_ERROR(CacheSet::load(path, m), want);
}

// Caches for m (its architecture and fingerprint) with a random linear head
// at every exit, each with `threshold` (> 1: never hits).
CacheSet random_cache_set(const Model& m, float threshold, const std::vector<PoolSpec>& pools = {}) {
  CacheSet set;
  set.model_arch = m.arch().name;
  set.model_fingerprint = fingerprint(m);
  for (const ExitHeadSpec& h : test::random_heads(m, 5, threshold, pools))
    set.exits.push_back(ExitCache::from_head_spec(h));
  return set;
}

// A teacher for n samples: the softmax at temperature T of random logits
// (spread by 4), as distillation takes it.
std::vector<float> random_teacher(int n, int classes, uint32_t seed, float T) {
  std::vector<float> teacher(size_t(n * classes));
  const std::vector<float> zf = test::random_floats(size_t(n * classes), seed);
  for (int i = 0; i < n; ++i) {
    std::vector<float> scaled(static_cast<size_t>(classes));
    for (int k = 0; k < classes; ++k) scaled[size_t(k)] = 4 * zf[size_t(i * classes + k)] / T;
    cpu::softmax(scaled.data(), classes, teacher.data() + size_t(i * classes));
  }
  return teacher;
}

TEST(LearnedCache, TrainingLowersLossAndReportsAgreement) {
  std::vector<float> x;
  std::vector<int> y;
  blobs(2000, 16, 5, 1, x, y);
  ExitCache c = fresh(16, 5);
  const std::vector<double> loss = train_exit_cache(c, x, y, SgdOptions{});
  ASSERT_EQ(loss.size(), 10u);
  EXPECT_LT(loss.back(), 0.5 * loss.front());
  // The reported agreement is what predict() gives on the training data.
  int agree = 0;
  float conf;
  for (int i = 0; i < 2000; ++i) agree += c.predict(x.data() + i * 16, &conf) == y[size_t(i)];
  EXPECT_DOUBLE_EQ(c.train_agreement, agree / 2000.0);
  EXPECT_GT(c.train_agreement, 0.8);
}

// The distillation step moves the weights down the gradient of the loss it
// reports, (1 - alpha) CE + alpha T^2 KL(teacher || softmax(z / T)):
// compared with central differences of that loss.
TEST(LearnedCache, DistillationStepFollowsTheGradientOfItsLoss) {
  const int dim = 6, classes = 4, n = 5;
  const std::vector<float> x = test::random_floats(size_t(n * dim), 31), mean(dim, 0.1f), inv_std(dim, 1.3f);
  std::vector<float> weight = test::random_floats(size_t(classes * dim), 32), bias = test::random_floats(classes, 33);
  const float T = 3.f;
  const std::vector<float> teacher = random_teacher(n, classes, 34, T);
  const int labels[n] = {0, 3, 1, 1, 2};
  const cpu::Distill distill{teacher.data(), 0.7f, T};
  auto loss_at = [&](const std::vector<float>& w, const std::vector<float>& b) {
    std::vector<float> ww = w, bb = b, vel(size_t(classes * dim + classes), 0.f);
    const LinearHeadMut h{dim, classes, mean.data(), inv_std.data(), ww.data(), bb.data(), vel.data()};
    return cpu::linear_sgd_step(h, x.data(), labels, n, {0.f, 0.f, 0.f}, distill).loss;  // lr 0: the loss only
  };
  std::vector<float> w1 = weight, b1 = bias, vel(size_t(classes * dim + classes), 0.f);
  const LinearHeadMut h{dim, classes, mean.data(), inv_std.data(), w1.data(), b1.data(), vel.data()};
  ASSERT_EQ(cpu::linear_sgd_step(h, x.data(), labels, n, {1.f, 0.f, 0.f}, distill).status, OpStatus::kOk);
  const double eps = 1e-2;
  for (size_t j = 0; j < weight.size(); j += 5) {
    std::vector<float> up = weight, down = weight;
    up[j] += float(eps);
    down[j] -= float(eps);
    const double numeric = (loss_at(up, bias) - loss_at(down, bias)) / (2 * eps);
    EXPECT_NEAR(weight[j] - w1[j], numeric, 2e-3) << "weight " << j;  // lr 1: the step is the gradient
  }
  for (int k = 0; k < classes; ++k) {
    std::vector<float> up = bias, down = bias;
    up[size_t(k)] += float(eps);
    down[size_t(k)] -= float(eps);
    const double numeric = (loss_at(weight, up) - loss_at(weight, down)) / (2 * eps);
    EXPECT_NEAR(bias[size_t(k)] - b1[size_t(k)], numeric, 2e-3) << "bias " << k;
  }
}

// With alpha = 1 only the teacher teaches: labels that are all wrong do not
// matter, and the cache learns the teacher's answers.  Without logits,
// distillation is refused.
TEST(LearnedCache, DistillationLearnsTheTeachersAnswers) {
  std::vector<float> x;
  std::vector<int> y;
  blobs(1500, 16, 5, 7, x, y);
  std::vector<float> logits(size_t(1500 * 5), 0.f);
  std::vector<int> wrong(y.size());
  for (size_t i = 0; i < y.size(); ++i) {
    logits[i * 5 + size_t(y[i])] = 5.f;  // the teacher knows the blob
    wrong[i] = (y[i] + 1) % 5;
  }
  SgdOptions o;
  o.distill_alpha = 1.f;
  ExitCache c = fresh(16, 5);
  train_exit_cache(c, x, wrong, o, logits);
  int right = 0;
  for (int i = 0; i < 1500; ++i) {
    float conf;
    right += c.predict(x.data() + size_t(i) * 16, &conf) == y[size_t(i)];
  }
  EXPECT_GT(right, 1300);
  EXPECT_LT(c.train_agreement, 0.1);  // against the (wrong) labels it was given
  ExitCache d = fresh(16, 5);
  EXPECT_GATI_ERROR(train_exit_cache(d, x, y, o), "distillation needs the full model's logits for 1500 samples");
  o.distill_temperature = 0;
  EXPECT_GATI_ERROR(train_exit_cache(d, x, y, o, logits), "temperature 0 > 0");
}

TEST(LearnedCache, CalibrationMeetsTargetOnHeldOutData) {
  std::vector<float> x, xh, xt;
  std::vector<int> y, yh, yt;
  blobs(3000, 16, 5, 2, x, y);
  blobs(3000, 16, 5, 3, xh, yh);
  blobs(3000, 16, 5, 4, xt, yt);
  std::vector<ExitCache> caches = {fresh(16, 5)};
  train_exit_cache(caches[0], x, y, SgdOptions{});
  calibrate_thresholds(caches, {xh}, yh, 0.98, ThresholdRule::kTarget);
  ASSERT_TRUE(caches[0].enabled());
  EXPECT_GE(caches[0].holdout_hit_agreement, 0.98);
  EXPECT_GT(caches[0].holdout_hit_rate, 0.2);
  // On a third sample the hits still agree at about the target.
  int hits = 0, agree = 0;
  for (int i = 0; i < 3000; ++i) {
    float conf;
    const int pred = caches[0].predict(xt.data() + i * 16, &conf);
    if (conf >= caches[0].threshold) {
      hits++;
      agree += pred == yt[size_t(i)];
    }
  }
  EXPECT_GE(double(agree) / hits, 0.97);
  // Freeze's zero-error rule is stricter: no wrong hit on the calibration set.
  std::vector<ExitCache> strict = caches;
  calibrate_thresholds(strict, {xh}, yh, 0.98, ThresholdRule::kZeroError);
  if (strict[0].enabled()) {
    EXPECT_EQ(strict[0].holdout_hit_agreement, 1.0);
  }
  EXPECT_LE(strict[0].holdout_hit_rate, caches[0].holdout_hit_rate);
  // The confidence bound keeps a margin: its hits agree at least as well as
  // the point estimate's, and their agreement's lower bound meets the target.
  std::vector<ExitCache> bounded = caches;
  calibrate_thresholds(bounded, {xh}, yh, 0.98, ThresholdRule::kBound);
  ASSERT_TRUE(bounded[0].enabled());
  EXPECT_GE(bounded[0].threshold, caches[0].threshold);
  EXPECT_GE(bounded[0].holdout_hit_agreement, caches[0].holdout_hit_agreement);
  const double hits_b = bounded[0].holdout_hit_rate * 3000, agree_b = bounded[0].holdout_hit_agreement * hits_b;
  const double ph = agree_b / hits_b, z = 1.6448536269514722, z2n = z * z / hits_b;
  EXPECT_GE((ph + z2n / 2 - z * std::sqrt(ph * (1 - ph) / hits_b + z2n / (4 * hits_b))) / (1 + z2n), 0.98 - 1e-9);
  EXPECT_GATI_ERROR(threshold_rule("median"), "(valid: bound, target, zero-error)");
  EXPECT_GATI_ERROR(calibrate_thresholds(caches, {xh}, yh, 1.5), "must be in (0, 1]");
}

// A cascade's data: every sample has one label and, at exit e, features of
// dims[e] dimensions (more dimensions: blobs further apart, a better exit).
struct CascadeData {
  std::vector<int> labels;
  std::vector<std::vector<float>> features;  // [exit][n * dim]
};
CascadeData cascade_data(int n, const std::vector<int>& dims, int classes, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  CascadeData out;
  out.features.resize(dims.size());
  for (int i = 0; i < n; ++i) out.labels.push_back(int(rng() % uint32_t(classes)));
  for (size_t e = 0; e < dims.size(); ++e) {
    std::mt19937 crng(99 + uint32_t(e));  // the same centres for every call
    std::vector<float> centres(size_t(classes * dims[e]));
    for (float& c : centres) c = 1.2f * d(crng);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < dims[e]; ++j)
        out.features[e].push_back(centres[size_t(out.labels[size_t(i)] * dims[e] + j)] + d(rng));
  }
  return out;
}

// Answers and cost of a cascade on data: the share of samples whose answer
// agrees with the label (those that reach the end agree), and the mean cost.
std::pair<double, double> run_cascade(const std::vector<ExitCache>& caches, const CascadeData& data,
                                      const CascadeCosts& costs) {
  const size_t n = data.labels.size();
  int agree = 0;
  double cost = 0;
  for (size_t i = 0; i < n; ++i) {
    double heads = 0;
    size_t e = 0;
    int pred = -1;
    for (; e < caches.size(); ++e) {
      if (!caches[e].enabled()) continue;
      heads += costs.head[e];
      float conf;
      pred = caches[e].predict(data.features[e].data() + i * size_t(caches[e].dim), &conf);
      if (conf >= caches[e].threshold) break;
    }
    const bool exited = e < caches.size();
    agree += !exited || pred == data.labels[i];
    cost += (exited ? costs.through[e] : costs.full) + heads;
  }
  return {double(agree) / double(n), cost / double(n)};
}

std::vector<ExitCache> trained_cascade(const std::vector<int>& dims, int classes, uint32_t seed) {
  const CascadeData train = cascade_data(3000, dims, classes, seed);
  std::vector<ExitCache> caches;
  for (size_t e = 0; e < dims.size(); ++e) {
    caches.push_back(fresh(dims[e], classes));
    caches.back().name = "exit" + std::to_string(e);
    caches.back().exit = int(e);
    train_exit_cache(caches.back(), train.features[e], train.labels, SgdOptions{});
  }
  return caches;
}

// The whole cascade meets its overall target on samples it never saw, with
// the bound rule's margin, and spends less than the full model.
TEST(LearnedCache, CascadeCalibrationMeetsTheOverallTargetOnUnseenData) {
  const std::vector<int> dims = {2, 4, 12};
  std::vector<ExitCache> caches = trained_cascade(dims, 5, 11);
  const CascadeData hold = cascade_data(4000, dims, 5, 12), unseen = cascade_data(20000, dims, 5, 13);
  const CascadeCosts costs{{1, 2, 3}, {0.05, 0.05, 0.05}, 4};
  const CascadeResult r = calibrate_cascade(caches, hold.features, hold.labels, 0.97, ThresholdRule::kBound, costs);
  EXPECT_GE(r.bound, 0.97);
  EXPECT_LT(r.cost, 0.9);
  EXPECT_GT(r.hit_rate, 0.3);
  const auto [agreement_hold, cost_hold] = run_cascade(caches, hold, costs);
  EXPECT_NEAR(agreement_hold, r.agreement, 1e-9);
  EXPECT_NEAR(cost_hold / costs.full, r.cost, 1e-9);
  const auto [agreement, cost] = run_cascade(caches, unseen, costs);
  EXPECT_GE(agreement, 0.97) << "unseen samples, cost " << cost;
  // Parts: the rule must hold on each.  With the second half's labels made
  // noise (no exit can predict them), calibrating on the halves as parts
  // holds the noisy half to the target, which pooling them would not.
  CascadeData mixed = hold, noisy;
  std::mt19937 rng(5);
  for (size_t i = 2000; i < 4000; ++i) mixed.labels[i] = int(rng() % 5);
  noisy.labels.assign(mixed.labels.begin() + 2000, mixed.labels.end());
  for (size_t e = 0; e < dims.size(); ++e)
    noisy.features.emplace_back(mixed.features[e].begin() + long(2000 * size_t(dims[e])), mixed.features[e].end());
  std::vector<ExitCache> pooled = caches, strict = caches;
  calibrate_cascade(pooled, mixed.features, mixed.labels, 0.97, ThresholdRule::kBound, costs);
  const CascadeResult rs =
      calibrate_cascade(strict, mixed.features, mixed.labels, 0.97, ThresholdRule::kBound, costs, {2000, 4000});
  EXPECT_GE(rs.bound, 0.97);
  EXPECT_GE(run_cascade(strict, noisy, costs).first, 0.97);
  EXPECT_LT(run_cascade(pooled, noisy, costs).first, 0.97);
  EXPECT_GATI_ERROR(calibrate_cascade(strict, mixed.features, mixed.labels, 0.97, ThresholdRule::kBound, costs, {2000}),
                    "parts must be non-empty, in order, and end at the 4000 samples");
  EXPECT_GATI_ERROR(calibrate_cascade(strict, hold.features, hold.labels, 0.97, ThresholdRule::kZeroError, costs),
                    "zero-error rule is per exit");
}

// With traffic_requests, the bound also covers a short stretch of traffic:
// of 100 unseen stretches of 200 samples, nearly all agree at the target,
// where the held-out bound alone lets many fall under it; the price is a
// higher cost.
TEST(LearnedCache, CascadeCalibrationForShortTrafficHoldsOnEveryStretch) {
  const std::vector<int> dims = {2, 4, 12};
  const CascadeData hold = cascade_data(4000, dims, 5, 12), unseen = cascade_data(20000, dims, 5, 14);
  const CascadeCosts costs{{1, 2, 3}, {0.05, 0.05, 0.05}, 4};
  std::vector<ExitCache> plain = trained_cascade(dims, 5, 11), covered = plain;
  const CascadeResult rp = calibrate_cascade(plain, hold.features, hold.labels, 0.97, ThresholdRule::kBound, costs);
  const CascadeResult rc =
      calibrate_cascade(covered, hold.features, hold.labels, 0.97, ThresholdRule::kBound, costs, {}, 20, 200);
  EXPECT_GE(rc.bound, 0.97);
  EXPECT_GT(rc.agreement, rp.agreement);
  EXPECT_GT(rc.cost, rp.cost);
  auto stretches_under = [&](const std::vector<ExitCache>& caches) {
    int under = 0;
    for (int k = 0; k < 100; ++k) {
      CascadeData part;
      part.labels.assign(unseen.labels.begin() + k * 200, unseen.labels.begin() + (k + 1) * 200);
      for (size_t e = 0; e < dims.size(); ++e)
        part.features.emplace_back(unseen.features[e].begin() + long(size_t(k) * 200 * size_t(dims[e])),
                                   unseen.features[e].begin() + long(size_t(k + 1) * 200 * size_t(dims[e])));
      under += run_cascade(caches, part, costs).first < 0.97;
    }
    return under;
  };
  const int under_plain = stretches_under(plain), under_covered = stretches_under(covered);
  EXPECT_LE(under_covered, 10) << "about 5 expected";
  EXPECT_GT(under_plain, under_covered + 5);
  EXPECT_GATI_ERROR(
      calibrate_cascade(covered, hold.features, hold.labels, 0.97, ThresholdRule::kBound, costs, {}, 20, -1),
      "traffic_requests -1 must be >= 0");
}

// On small cases the search lands at the cheapest feasible thresholds found
// by trying every combination (the greedy moves alone were 1-6% dearer).
// With and without a limit on the open heads' cost (0.04 of the model:
// one exit's head, not both).
TEST(LearnedCache, CascadeCalibrationEqualsTheBruteForceOptimum) {
  const std::vector<int> dims = {2, 6};
  const std::vector<ExitCache> trained = trained_cascade(dims, 4, 21);
  const CascadeCosts costs{{1, 2}, {0.1, 0.1}, 3};
  for (double budget : {1.0, 0.04})
    for (uint32_t seed : {31u, 32u, 33u}) {
      SCOPED_TRACE("seed " + std::to_string(seed) + ", heads' budget " + std::to_string(budget));
      const CascadeData hold = cascade_data(80, dims, 4, seed);
      std::vector<ExitCache> searched = trained;
      const CascadeResult r = calibrate_cascade(searched, hold.features, hold.labels, 0.95, ThresholdRule::kTarget,
                                                costs, {}, 1, 0, budget);
      // Every threshold pair: closed, or each confidence the exit sees.
      std::vector<std::vector<float>> options(dims.size(), std::vector<float>{2.0f});
      for (size_t e = 0; e < dims.size(); ++e)
        for (size_t i = 0; i < hold.labels.size(); ++i) {
          float conf;
          trained[e].predict(hold.features[e].data() + i * size_t(dims[e]), &conf);
          options[e].push_back(conf);
        }
      double best = costs.full;
      bool both = false;  // whether the unlimited optimum opens both exits (the limit then binds)
      std::vector<ExitCache> trial = trained;
      for (float t0 : options[0])
        for (float t1 : options[1]) {
          const double heads = ((t0 <= 1.f) + (t1 <= 1.f)) * 0.1 / costs.full;
          if (heads > budget) continue;
          trial[0].threshold = t0;
          trial[1].threshold = t1;
          const auto [agreement, cost] = run_cascade(trial, hold, costs);
          if (agreement >= 0.95 && cost < best) {
            best = cost;
            both = t0 <= 1.f && t1 <= 1.f;
          }
        }
      EXPECT_NEAR(r.cost * costs.full, best, 1e-9) << "search " << r.cost * costs.full << ", brute force " << best;
      EXPECT_LE(r.head_cost, budget);
      int open = 0;
      for (const ExitCache& c : searched) open += c.enabled();
      EXPECT_NEAR(r.head_cost, open * 0.1 / costs.full, 1e-12);
      if (budget == 1.0 && seed == 31u) {
        EXPECT_TRUE(both) << "the limit would not bind in this test";
      }
    }
}

// The MLP predictor's step moves every parameter (both layers' weights and
// biases) down the gradient of the loss it reports, distillation included:
// compared with central differences of that loss.  Hidden units are checked
// to be both active and inactive, so the ReLU's gradient is exercised.
TEST(LearnedCache, MlpStepFollowsTheGradientOfItsLoss) {
  const int dim = 7, hidden = 6, classes = 4, n = 5;
  ExitHeadSpec head;
  head.name = "stem";
  head.dim = dim;
  head.classes = classes;
  head.mean.assign(dim, 0.1f);
  head.inv_std.assign(dim, 1.3f);
  init_mlp(head, hidden, 3);
  const std::vector<float> x = test::random_floats(size_t(n * dim), 41, 2.f);
  const float T = 3.f;
  const std::vector<float> teacher = random_teacher(n, classes, 42, T);
  const int labels[n] = {0, 3, 1, 1, 2};
  const cpu::Distill distill{teacher.data(), 0.4f, T};
  int active = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < hidden; ++j) {
      double s = head.hidden_bias[size_t(j)];
      for (int d = 0; d < dim; ++d) s += head.hidden_weight[size_t(j * dim + d)] * (x[size_t(i * dim + d)] - 0.1) * 1.3;
      active += s > 0;
    }
  ASSERT_GT(active, n * hidden / 5);
  ASSERT_LT(active, n * hidden * 4 / 5);
  auto loss_at = [&](const ExitHeadSpec& h) {
    ExitHeadSpec copy = h;
    std::vector<float> vel;
    return mlp_sgd_step(copy, x.data(), labels, n, {0.f, 0.f, 0.f}, vel, distill).loss;  // lr 0: the loss only
  };
  ExitHeadSpec stepped = head;
  std::vector<float> vel;
  ASSERT_EQ(mlp_sgd_step(stepped, x.data(), labels, n, {1.f, 0.f, 0.f}, vel, distill).status, OpStatus::kOk);
  const double eps = 1e-2;
  using Param = std::vector<float> ExitHeadSpec::*;
  const std::pair<Param, const char*> params[] = {{&ExitHeadSpec::weight, "weight"},
                                                  {&ExitHeadSpec::bias, "bias"},
                                                  {&ExitHeadSpec::hidden_weight, "hidden_weight"},
                                                  {&ExitHeadSpec::hidden_bias, "hidden_bias"}};
  int checked = 0;
  for (const auto& [member, name] : params)
    for (size_t j = 0; j < (head.*member).size(); j += 3) {
      ExitHeadSpec up = head, down = head;
      (up.*member)[j] += float(eps);
      (down.*member)[j] -= float(eps);
      const double numeric = (loss_at(up) - loss_at(down)) / (2 * eps);
      EXPECT_NEAR((head.*member)[j] - (stepped.*member)[j], numeric, 3e-3) << name << " " << j;  // lr 1: the gradient
      ++checked;
    }
  EXPECT_GT(checked, 20);
}

// Classes by the signs of two features (XOR): no linear head separates them,
// one with a hidden layer does; its guard refuses a non-finite step and
// leaves the head as it was.
TEST(LearnedCache, AnMlpLearnsWhatALinearHeadCannot) {
  const int n = 2000, dim = 8;
  std::mt19937 rng(17);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(n * dim));
  std::vector<int> y(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < dim; ++j) x[size_t(i * dim + j)] = d(rng);
    y[size_t(i)] = (x[size_t(i * dim)] > 0) != (x[size_t(i * dim + 1)] > 0) ? 1 : 0;
  }
  SgdOptions o;
  o.epochs = 30;
  ExitCache linear = fresh(dim, 2), mlp = fresh(dim, 2);
  mlp.hidden = 16;
  train_exit_cache(linear, x, y, o);
  const std::vector<double> loss = train_exit_cache(mlp, x, y, o);
  EXPECT_LT(linear.train_agreement, 0.7);
  EXPECT_GT(mlp.train_agreement, 0.93);
  EXPECT_LT(loss.back(), 0.5 * loss.front());
  // Trained weights are rounded for serving: both layers are halves.
  for (float w : mlp.hidden_weight) ASSERT_EQ(w, half_to_float(float_to_half(w)));
  for (float w : mlp.weight) ASSERT_EQ(w, half_to_float(float_to_half(w)));
  const ExitCache before = mlp;
  std::vector<float> bad(x.begin(), x.begin() + dim), velocity;
  bad[2] = NAN;
  const int label = 1;
  EXPECT_GATI_ERROR(sgd_step(mlp, bad.data(), &label, 1, o, velocity), "SGD step rejected");
  EXPECT_EQ(mlp.hidden_weight, before.hidden_weight);
  EXPECT_EQ(mlp.weight, before.weight);
  const int wrong = 2;
  EXPECT_GATI_ERROR(sgd_step(mlp, x.data(), &wrong, 1, o, velocity), "label 2 of sample 0 is out of range");
}

TEST(LearnedCache, SgdGuardRefusesNonFiniteSteps) {
  std::vector<float> x;
  std::vector<int> y;
  blobs(200, 8, 3, 5, x, y);
  ExitCache c = fresh(8, 3);
  train_exit_cache(c, x, y, SgdOptions{});
  const std::vector<float> before = c.weight;
  std::vector<float> bad(x.begin(), x.begin() + 8);
  bad[3] = NAN;
  std::vector<float> velocity;
  const int label = 1;
  EXPECT_GATI_ERROR(sgd_step(c, bad.data(), &label, 1, SgdOptions{}, velocity), "SGD step rejected");
  EXPECT_EQ(c.weight, before);
  const int wrong = 7;
  EXPECT_GATI_ERROR(sgd_step(c, x.data(), &wrong, 1, SgdOptions{}, velocity), "label 7 of sample 0 is out of range");
}

using test::tiny_dataset;

TEST(Trace, ReproducibleBySeedAndRoundTrips) {
  const Dataset d = tiny_dataset();
  const auto dir = test::scratch_dir("trace");
  for (const std::string& kind : trace_kinds()) {
    const Trace a = make_trace(kind, d, 300, 11), b = make_trace(kind, d, 300, 11), c = make_trace(kind, d, 300, 12);
    ASSERT_EQ(a.requests.size(), 300u);
    bool same = true, differs = false;
    for (size_t i = 0; i < 300; ++i) {
      same &= a.requests[i].index == b.requests[i].index && a.requests[i].dx == b.requests[i].dx;
      differs |= a.requests[i].index != c.requests[i].index;
    }
    EXPECT_TRUE(same) << kind;
    EXPECT_TRUE(differs) << kind;
    save_trace((dir / "t.json").string(), a);
    const Trace l = load_trace((dir / "t.json").string(), d);
    ASSERT_EQ(l.requests.size(), a.requests.size());
    EXPECT_EQ(l.requests[17].index, a.requests[17].index);
    EXPECT_EQ(l.requests[17].noise_seed, a.requests[17].noise_seed);
  }
  // Locality repeats classes far more often than uniform draws do.
  auto repeats = [&](const Trace& t) {
    int r = 0;
    for (size_t i = 1; i < t.requests.size(); ++i)
      r += d.labels[size_t(t.requests[i].index)] == d.labels[size_t(t.requests[i - 1].index)];
    return r;
  };
  EXPECT_GT(repeats(make_trace("locality", d, 1000, 1)), 2 * repeats(make_trace("uniform", d, 1000, 1)));
  std::filesystem::remove_all(dir);
}

TEST(Trace, MalformedFilesGiveClearErrors) {
  const Dataset d = tiny_dataset();
  const auto dir = test::scratch_dir("badtrace");
  auto write = [&](const std::string& text) {
    std::ofstream((dir / "t.json").string()) << text;
    return (dir / "t.json").string();
  };
  EXPECT_GATI_ERROR(load_trace(write("{oops"), d), "not valid JSON");
  EXPECT_GATI_ERROR(load_trace(write(R"({"format":"gati-trace/1","kind":"uniform","seed":1,"source":"tiny",
      "source_size":50,"requests":[[99,0,0,0,0]]})"),
                               d),
                    "names item 99, but tiny has 50");
  EXPECT_GATI_ERROR(load_trace(write(R"({"format":"gati-trace/1","kind":"uniform","seed":1,"source":"tiny",
      "source_size":50,"requests":[[1,0,0]]})"),
                               d),
                    "must be [index, dx, dy, noise, noise_seed]");
  EXPECT_GATI_ERROR(load_trace(write(R"({"format":"gati-trace/1","kind":"uniform","seed":1,"source":"tiny",
      "source_size":50})"),
                               d),
                    "t.json: missing key 'requests'");
  EXPECT_GATI_ERROR(load_trace(write(R"({"format":"gati-trace/1","kind":5,"seed":1,"source":"tiny",
      "source_size":50,"requests":[[1,0,0,0,0]]})"),
                               d),
                    "t.json: 'kind' must be a string, got 5");
  // Integers must be integers, in range: nothing truncated, wrapped or coerced.
  auto with_request = [&](const std::string& req) {
    return write(R"({"format":"gati-trace/1","kind":"uniform","seed":1,"source":"tiny","source_size":50,"requests":[)" +
                 req + "]}");
  };
  EXPECT_GATI_ERROR(load_trace(with_request("[3.7,0,0,0,0]"), d),
                    "request 0 index must be an integer in [0, 2147483647], got 3.7");
  EXPECT_GATI_ERROR(load_trace(with_request("[4294967301,0,0,0,0]"), d),
                    "index must be an integer in [0, 2147483647], got 4294967301");
  EXPECT_GATI_ERROR(load_trace(with_request("[true,0,0,0,0]"), d),
                    "index must be an integer in [0, 2147483647], got true");
  EXPECT_GATI_ERROR(load_trace(with_request("[1,-2147483648,0,0,0]"), d),
                    "dx must be an integer in [-8, 8], got -2147483648");
  EXPECT_GATI_ERROR(load_trace(with_request("[1,0,9,0,0]"), d), "dy must be an integer in [-8, 8], got 9");
  EXPECT_GATI_ERROR(load_trace(with_request("[1,0,0,\"x\",0]"), d), "noise must be a number in [0, 1], got \"x\"");
  EXPECT_GATI_ERROR(load_trace(with_request("[1,0,0,0,-1]"), d),
                    "noise_seed must be an integer in [0, 4294967295], got -1");
  EXPECT_GATI_ERROR(load_trace(with_request("[1,0,0,0,4294967296]"), d),
                    "noise_seed must be an integer in [0, 4294967295], got 4294967296");
  EXPECT_NO_THROW(load_trace(with_request("[1,-8,8,0.5,4294967295]"), d));
  EXPECT_GATI_ERROR(load_trace((dir / "none.json").string(), d), "cannot open trace");
  EXPECT_GATI_ERROR(make_trace("bursty", d, 10, 1), "(valid: uniform, zipf, locality, drift)");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace gati

namespace gati {
namespace {

// Caches carry the fingerprint of the exact weights they were built for:
// the same architecture with other weights is refused, the same weights load.
TEST(CacheFiles, RefuseOtherWeightsOfTheSameArchitecture) {
  const Model a = test::random_model(test::kTinyArch, 1), b = test::random_model(test::kTinyArch, 2);
  EXPECT_EQ(fingerprint(a), fingerprint(test::random_model(test::kTinyArch, 1)));
  EXPECT_NE(fingerprint(a), fingerprint(b));
  CacheSet set = random_cache_set(a, 0.9f);
  const auto dir = test::scratch_dir("cache_fp");
  const std::string path = (dir / "c.safetensors").string();
  set.save(path);
  EXPECT_EQ(CacheSet::load(path, a).exits.size(), a.net.blocks.size() + 1);  // the stem and every block
  EXPECT_GATI_ERROR(CacheSet::load(path, b), "built for other weights of resnet8");
  std::filesystem::remove_all(dir);
}

// Each exit's pooling is kept in the file; a pooling that is not one, or
// that does not give the exit's dim, is refused naming the exit.
TEST(CacheFiles, KeepEachExitsPoolingAndRefuseOnesThatDoNotFit) {
  const Model m = test::random_model(test::kTinyArch, 1);
  const std::vector<PoolSpec> pools = {parse_pool("mix4x4"), parse_pool("avg"), parse_pool("avg2x2")};
  CacheSet set = random_cache_set(m, 0.9f, pools);
  const auto dir = test::scratch_dir("cache_pool");
  const std::string path = (dir / "c.safetensors").string();
  set.save(path);
  const CacheSet back = CacheSet::load(path, m);
  ASSERT_EQ(back.exits.size(), set.exits.size());
  for (size_t e = 0; e < back.exits.size(); ++e) {
    EXPECT_EQ(pool_name(back.exits[e].pool), pool_name(pools[e % pools.size()]));
    EXPECT_EQ(back.exits[e].dim, set.exits[e].dim);
    EXPECT_EQ(back.exits[e].weight, set.exits[e].weight);
  }
  CacheSet bad = set;
  bad.exits[1].pool.grid = 12;  // written as "avg12x12"
  expect_load_refused(bad, path, m, "exit '" + set.exits[1].name + "': pooling 'avg12x12'");
  bad = set;
  bad.exits[0].pool = parse_pool("avg");  // the file's tensors are mix4x4-sized
  expect_load_refused(bad, path, m, "pooled avg give");
  std::filesystem::remove_all(dir);
}

// A locality-like stream at the memory: prototypes of 4 classes requested
// with repeats and feature noise; 1% of the requests get a full-model answer
// unlike their prototype's (where a memory hit would disagree).
MemoryStream memory_stream(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.f, 0.05f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  const int dim = 8, protos = 40;
  const std::vector<float> centre = test::random_floats(size_t(protos * dim), 77, 1.0f);  // the same in every stream
  MemoryStream s;
  int p = 0;
  for (int i = 0; i < n; ++i) {
    if (u(rng) > 0.8f) p = int(rng() % protos);
    for (int d = 0; d < dim; ++d) s.features.push_back(centre[size_t(p * dim + d)] + noise(rng));
    s.full_label.push_back(u(rng) < 0.01f ? int(rng() % 4) : p % 4);
    s.full_conf.push_back(0.5f + 0.5f * u(rng));
    s.reaches.push_back(1);
    s.answered.push_back(u(rng) < 0.2f ? 1 : 0);
  }
  return s;
}

// The memory's threshold holds its hits to the target on a stream it never
// saw; a target no bound can certify leaves it closed.
TEST(MemoryCalibration, HoldsTheTargetOnUnseenTraffic) {
  MemorySpec spec;
  spec.pool = parse_pool("avg");
  spec.dim = 8;
  spec.capacity = 16;  // fewer than the prototypes: entries turn over (a wrong one does not stay forever)
  spec.min_confidence = 0.6f;
  const MemoryStream calib = memory_stream(6000, 1), unseen = memory_stream(6000, 2);
  const MemoryStats on_calib = calibrate_memory(spec, calib, 0.95);
  ASSERT_GE(spec.threshold, 0.f);
  EXPECT_GE(wilson_lower(int(on_calib.hit_agree), int(on_calib.hits)), 0.95);
  EXPECT_GT(on_calib.hit_rate(), 0.3);
  EXPECT_GT(on_calib.stored, 0);
  const MemoryStats st = simulate_memory(spec, unseen);
  EXPECT_GT(st.hit_rate(), 0.3);
  EXPECT_GE(st.hit_agreement(), 0.94);
  // Only confident answers that no cache model gave are ever stored.
  int64_t storable = 0;
  for (size_t i = 0; i < unseen.size(); ++i) storable += !unseen.answered[i] && unseen.full_conf[i] >= 0.6f;
  EXPECT_LE(st.stored, storable);
  MemorySpec never = spec;
  calibrate_memory(never, calib, 1.0);
  EXPECT_LT(never.threshold, 0.f);
  EXPECT_EQ(simulate_memory(never, unseen).hits, 0);
}

// A memory travels with the caches; a damaged one is refused naming it.
TEST(CacheFiles, KeepTheMemoryAndRefuseADamagedOne) {
  const Model m = test::random_model(test::kTinyArch, 1);
  CacheSet set = random_cache_set(m, 0.9f);
  MemorySpec spec;
  spec.exit = 0;
  spec.name = "stem";
  spec.pool = parse_pool("avg2x2");
  spec.dim = spec.pool.features(8);  // the tiny model's stem width
  spec.capacity = 100;
  spec.mean = test::random_floats(size_t(spec.dim), 3);
  spec.inv_std.assign(size_t(spec.dim), 2.f);
  spec.threshold = 0.25f;
  spec.min_confidence = 0.97f;
  set.memory = spec;
  const auto dir = test::scratch_dir("cache_memory");
  const std::string path = (dir / "c.safetensors").string();
  set.save(path);
  const CacheSet back = CacheSet::load(path, m);
  ASSERT_TRUE(back.memory.has_value());
  EXPECT_EQ(back.memory->exit, 0);
  EXPECT_EQ(pool_name(back.memory->pool), "avg2x2");
  EXPECT_EQ(back.memory->capacity, 100);
  EXPECT_EQ(back.memory->threshold, 0.25f);
  EXPECT_EQ(back.memory->min_confidence, 0.97f);
  EXPECT_EQ(back.memory->mean, spec.mean);
  CacheSet bad = set;
  bad.memory->name = "layer7.0";
  expect_load_refused(bad, path, m, "memory at 'layer7.0', which is not an exit point");
  bad = set;
  bad.memory->pool = parse_pool("avg");  // the tensors are avg2x2-sized
  expect_load_refused(bad, path, m, "pooled avg give");
  bad = set;
  bad.memory->capacity = 0;
  expect_load_refused(bad, path, m, "memory': 'capacity' must be an integer in [1, 2147483647], got 0");
  bad = set;
  bad.memory->min_confidence = 2.f;
  expect_load_refused(bad, path, m, "memory': 'min_confidence' must be a number in [0, 1], got 2");
  std::filesystem::remove_all(dir);
}

// The label prior round-trips; one that is not a distribution over the
// model's classes is refused; files without one load with it empty.
TEST(CacheFiles, KeepTheLabelPriorAndRefuseADamagedOne) {
  const Model m = test::random_model(test::kTinyArch, 1);
  CacheSet set = random_cache_set(m, 0.9f);
  const auto dir = test::scratch_dir("cache_prior");
  const std::string path = (dir / "c.safetensors").string();
  set.save(path);
  EXPECT_TRUE(CacheSet::load(path, m).label_prior.empty());
  set.label_prior = {0.1f, 0.2f, 0.3f, 0.25f, 0.15f};
  set.save(path);
  EXPECT_EQ(CacheSet::load(path, m).label_prior, set.label_prior);
  CacheSet bad = set;
  bad.label_prior = {0.5f, 0.5f, 0.5f, 0.f, 0.f};
  expect_load_refused(bad, path, m, "label_prior sums to 1.5, not 1");
  bad.label_prior = {1.2f, -0.2f, 0.f, 0.f, 0.f};
  expect_load_refused(bad, path, m, "label_prior of class 0 is 1.2");
  bad.label_prior = {0.5f, 0.5f};
  expect_load_refused(bad, path, m, "label_prior");
  bad.label_prior = {0.5f, std::nanf(""), 0.5f, 0.f, 0.f};
  expect_load_refused(bad, path, m, "label_prior of class 1 is nan");
  std::filesystem::remove_all(dir);
}

// A selector is kept in the file and changes the confidence predict()
// gives (the kernels' definition); a damaged one is refused naming the exit.
TEST(CacheFiles, KeepTheSelectorAndRefuseADamagedOne) {
  const Model m = test::random_model(test::kTinyArch, 1);
  CacheSet set = random_cache_set(m, 0.9f);
  set.exits[1].selector = {5.f, -2.f, -1.f};  // k = 2
  const auto dir = test::scratch_dir("cache_selector");
  const std::string path = (dir / "c.safetensors").string();
  set.save(path);
  const CacheSet back = CacheSet::load(path, m);
  EXPECT_EQ(back.exits[1].selector, set.exits[1].selector);
  EXPECT_TRUE(back.exits[0].selector.empty());
  const std::vector<float> x = test::random_floats(size_t(set.exits[1].dim), 3);
  float with, without;
  EXPECT_EQ(back.exits[1].predict(x.data(), &with), set.exits[1].predict(x.data(), &without));
  ExitCache plain = set.exits[1];
  plain.selector.clear();
  float top;
  const int label = plain.predict(x.data(), &top);
  std::vector<float> z(size_t(plain.classes)), p(size_t(plain.classes));
  cpu::linear_head_scores(plain.view(), x.data(), z.data());
  cpu::softmax(z.data(), plain.classes, p.data());
  const int second = next_in_order(z.data(), plain.classes, label);
  const double want = 1 / (1 + std::exp(-(-1.0 + 5.0 * p[size_t(label)] - 2.0 * p[size_t(second)])));
  EXPECT_NEAR(with, want, 1e-6);
  EXPECT_NE(with, top);
  CacheSet bad = set;
  bad.exits[1].selector = {5.f, std::nanf(""), 1.f};
  expect_load_refused(bad, path, m, "selector[1] is not finite");
  bad.exits[1].selector.assign(11, 0.5f);  // k = 10 > kMaxSelectorK
  expect_load_refused(bad, path, m, "'selector_k' must be an integer in [1, 8], got 10");
  std::filesystem::remove_all(dir);
}

// A head with a hidden layer survives the file as it was (kind learned-mlp,
// both layers), answers as before, and a damaged one is refused naming it.
TEST(CacheFiles, KeepTheHiddenLayerAndRefuseADamagedOne) {
  const Model m = test::random_model(test::kTinyArch, 1);
  CacheSet set = random_cache_set(m, 0.9f);
  ExitCache& c = set.exits[1];
  init_mlp(c, 12, 5);
  const auto dir = test::scratch_dir("cache_mlp");
  const std::string path = (dir / "c.safetensors").string();
  set.save(path);
  const CacheSet back = CacheSet::load(path, m);
  EXPECT_EQ(back.exits[1].hidden, 12);
  EXPECT_EQ(back.exits[1].hidden_weight, c.hidden_weight);
  EXPECT_EQ(back.exits[1].hidden_bias, c.hidden_bias);
  EXPECT_EQ(back.exits[1].weight, c.weight);
  EXPECT_EQ(back.exits[0].hidden, 0);
  EXPECT_EQ(head_description(back.exits[1]), "mlp12");
  EXPECT_EQ(head_description(back.exits[0]), "linear");
  for (uint32_t seed = 0; seed < 5; ++seed) {
    const std::vector<float> x = test::random_floats(size_t(c.dim), seed, 3.f);
    float a, b;
    EXPECT_EQ(back.exits[1].predict(x.data(), &a), c.predict(x.data(), &b));
    EXPECT_EQ(a, b);
  }
  CacheSet bad = set;
  bad.exits[1].hidden_bias[4] = INFINITY;
  expect_load_refused(bad, path, m, "hidden_bias[4] is not finite");
  bad = set;
  init_mlp(bad.exits[1], kMaxHidden, 5);
  bad.exits[1].hidden = kMaxHidden + 1;  // the metadata says more units than a head may have
  bad.exits[1].hidden_weight.resize(size_t(kMaxHidden + 1) * size_t(c.dim));
  bad.exits[1].hidden_bias.resize(size_t(kMaxHidden + 1));
  bad.exits[1].weight.resize(size_t(kMaxHidden + 1) * size_t(c.classes));
  expect_load_refused(bad, path, m, "'hidden' must be an integer in [1, 1024], got 1025");
  std::filesystem::remove_all(dir);
}

// The selector fitted on held-out data separates the predictor's right
// answers from its wrong ones, at least as well as the top probability
// alone does (AUC), and weighs the top probability up.
TEST(LearnedCache, TheSelectorSeparatesRightFromWrong) {
  std::vector<float> x, xh;
  std::vector<int> y, yh;
  blobs(3000, 16, 5, 41, x, y);
  blobs(3000, 16, 5, 42, xh, yh);
  for (size_t i = 0; i < y.size(); i += 7) y[i] = (y[i] + 1) % 5;  // label noise: mistakes to find
  for (size_t i = 0; i < yh.size(); i += 7) yh[i] = (yh[i] + 1) % 5;
  ExitCache c = fresh(16, 5);
  train_exit_cache(c, x, y, SgdOptions{});
  ExitCache plain = c;
  fit_selector(c, xh, yh, 3);
  ASSERT_EQ(c.selector.size(), 4u);
  EXPECT_GT(c.selector[0], 0.f);
  // AUC of a confidence for "right" on a third sample.
  std::vector<float> xt;
  std::vector<int> yt;
  blobs(3000, 16, 5, 43, xt, yt);
  for (size_t i = 0; i < yt.size(); i += 7) yt[i] = (yt[i] + 1) % 5;
  auto auc = [&](const ExitCache& cache) {
    std::vector<std::pair<float, int>> r;
    for (size_t i = 0; i < yt.size(); ++i) {
      float conf;
      const int label = cache.predict(xt.data() + i * 16, &conf);
      r.emplace_back(conf, label == yt[i]);
    }
    double pairs = 0, good = 0;
    for (const auto& a : r)
      if (a.second)
        for (const auto& b : r)
          if (!b.second) {
            pairs += 1;
            good += a.first > b.first ? 1 : a.first == b.first ? 0.5 : 0;
          }
    return good / pairs;
  };
  const double with = auc(c), without = auc(plain);
  EXPECT_GT(with, 0.6);
  EXPECT_GE(with, without - 0.01) << "selector " << with << ", top probability " << without;
  EXPECT_GATI_ERROR(fit_selector(c, xh, yh, 0), "selector over 0 scores (valid: 1 to 8)");
}

// Exits are named in the file; the name says which exit point, and an "exit"
// id that disagrees, a name the model lacks or exits out of order are
// refused.  Files from before the stem exit ("block" instead of "exit")
// still load.
TEST(CacheFiles, NameTheirExitPoints) {
  const Model m = test::random_model(test::kTinyArch, 1);
  CacheSet set = random_cache_set(m, 0.9f);
  ASSERT_EQ(set.exits[0].name, "stem");
  const auto dir = test::scratch_dir("cache_names");
  const std::string path = (dir / "c.safetensors").string();

  // An older file: the same tensors, "block" (exit - 1) instead of "exit", no stem.
  set.save(path);
  nlohmann::json meta = nlohmann::json::parse(SafeTensorsFile::open(path).metadata_at("gati.caches"));
  meta["exits"].erase(0);
  for (auto& e : meta["exits"]) {
    e["block"] = e["exit"].get<int>() - 1;
    e.erase("exit");
  }
  SafeTensorsWriter w;
  for (size_t e = 1; e < set.exits.size(); ++e) {
    const ExitCache& c = set.exits[e];
    const std::string p = "exit." + c.name + ".";
    w.add_float(p + "mean", {c.dim}, c.mean);
    w.add_float(p + "inv_std", {c.dim}, c.inv_std);
    w.add_float(p + "weight", {c.classes, c.dim}, c.weight);
    w.add_float(p + "bias", {c.classes}, c.bias);
  }
  w.set_metadata("gati.caches", meta.dump());
  w.write(path);
  const CacheSet old = CacheSet::load(path, m);
  ASSERT_EQ(old.exits.size(), set.exits.size() - 1);
  for (size_t e = 0; e < old.exits.size(); ++e) EXPECT_EQ(old.exits[e].exit, set.exits[e + 1].exit);

  CacheSet bad = set;
  bad.exits[1].exit = 3;
  expect_load_refused(bad, path, m, "exit '" + set.exits[1].name + "' says it is exit 3");
  bad = set;
  bad.exits[2].name = "layer9.0";
  expect_load_refused(bad, path, m, "exit 'layer9.0' is not an exit point of the model (valid: stem, layer1.0");
  bad = set;
  std::swap(bad.exits[0], bad.exits[1]);
  expect_load_refused(bad, path, m, "in the model's order");
  std::filesystem::remove_all(dir);
}

// ---- Freeze's approximate caches ----------------------------------------------------

ExitCache fresh_approx(HeadKind kind, int dim, int classes, std::vector<float>& x, std::vector<int>& y,
                       ApproxOptions o = {}) {
  ExitCache c = fresh(dim, classes);
  o.kind = kind;
  build_approx_cache(c, x, y, o);
  return c;
}

// The projection's rows are orthonormal and span the directions of largest
// variance: data with three strong directions keeps them in three dimensions.
TEST(ApproxCache, ProjectionIsOrthonormalAndKeepsTheLargestVariance) {
  const int n = 3000, dim = 40, r = 3;
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  std::vector<float> dirs(size_t(r * dim)), x(size_t(n * dim));
  for (float& v : dirs) v = g(rng);
  for (int i = 0; i < n; ++i) {
    const float a[3] = {10 * g(rng), 7 * g(rng), 5 * g(rng)};
    for (int d = 0; d < dim; ++d)
      x[size_t(i * dim + d)] =
          a[0] * dirs[size_t(d)] + a[1] * dirs[size_t(dim + d)] + a[2] * dirs[size_t(2 * dim + d)] + 0.1f * g(rng);
  }
  const std::vector<float> p = fit_projection(x.data(), size_t(n), dim, r, 1);
  ASSERT_EQ(p.size(), size_t(r * dim));
  for (int a = 0; a < r; ++a)
    for (int b = 0; b < r; ++b) {
      double dot = 0;
      for (int d = 0; d < dim; ++d) dot += double(p[size_t(a * dim + d)]) * p[size_t(b * dim + d)];
      EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-4) << a << "," << b;
    }
  double total = 0, kept = 0;
  for (int i = 0; i < n; ++i) {
    for (int d = 0; d < dim; ++d) total += double(x[size_t(i * dim + d)]) * x[size_t(i * dim + d)];
    for (int a = 0; a < r; ++a) {
      double t = 0;
      for (int d = 0; d < dim; ++d) t += double(p[size_t(a * dim + d)]) * x[size_t(i * dim + d)];
      kept += t * t;
    }
  }
  EXPECT_GT(kept / total, 0.999);
  EXPECT_GATI_ERROR(fit_projection(x.data(), size_t(n), dim, dim + 1, 1), "into 41 dimensions");
}

// k-NN answers as a brute force in double over the same keys: every
// distance, sorted by (distance, index), Freeze's vote.
TEST(ApproxCache, KnnEqualsBruteForce) {
  std::vector<float> x, xt;
  std::vector<int> y, yt;
  blobs(3000, 16, 5, 11, x, y);
  blobs(300, 16, 5, 12, xt, yt);
  ApproxOptions o;
  o.reduced = 8;
  o.knn_entries = 700;
  o.neighbours = 7;
  const ExitCache c = fresh_approx(HeadKind::kKnn, 16, 5, x, y, o);
  ASSERT_EQ(c.entries(), 700);
  ASSERT_EQ(c.reduced, 8);
  for (float s : c.share) ASSERT_EQ(s, 1.f);
  int agree_truth = 0;
  for (int i = 0; i < 300; ++i) {
    const float* q = xt.data() + i * 16;
    std::vector<double> yq(8, 0.0);
    for (int r = 0; r < 8; ++r)
      for (int d = 0; d < 16; ++d)
        yq[size_t(r)] += double(c.projection[size_t(r * 16 + d)]) * ((q[d] - c.mean[size_t(d)]) * c.inv_std[size_t(d)]);
    std::vector<std::pair<double, int>> dist;
    for (int j = 0; j < c.entries(); ++j) {
      double s2 = 0;
      for (int r = 0; r < 8; ++r) s2 += std::pow(yq[size_t(r)] - c.keys[size_t(j * 8 + r)], 2);
      dist.push_back({s2, j});
    }
    std::sort(dist.begin(), dist.end());
    std::vector<double> score(5, 0.0);
    std::vector<int> count(5, 0);
    for (int j = 0; j < 7; ++j) {
      const int label = c.labels[size_t(dist[size_t(j)].second)];
      ++count[size_t(label)];
      score[size_t(label)] += 1.0 / std::sqrt(dist[size_t(j)].first);
    }
    int want = -1;
    double best = -1;
    for (int l = 0; l < 5; ++l)
      if (count[size_t(l)] && double(count[size_t(l)]) / 7 * score[size_t(l)] > best) {
        best = double(count[size_t(l)]) / 7 * score[size_t(l)];
        want = l;
      }
    float conf;
    const int got = c.predict(q, &conf);
    ASSERT_EQ(got, want) << "sample " << i;
    ASSERT_NEAR(conf, best / (1 + best), 1e-5) << "sample " << i;
    agree_truth += got == yt[size_t(i)];
  }
  EXPECT_GT(agree_truth, 200);  // the blobs overlap; a k-NN still beats chance (60) by far
}

// Lloyd's k-means: every centroid is the mean of the points assigned to it.
TEST(ApproxCache, KmeansCentroidsAreTheMeansOfTheirPoints) {
  std::vector<float> x;
  std::vector<int> y;
  blobs(2000, 6, 4, 21, x, y);
  std::vector<int> assign;
  const std::vector<float> cent = kmeans(x.data(), 2000, 6, 12, 10, 3, &assign);
  ASSERT_EQ(cent.size(), size_t(12 * 6));
  std::vector<double> sum(12 * 6, 0.0);
  std::vector<int> count(12, 0);
  for (int i = 0; i < 2000; ++i) {
    ASSERT_GE(assign[size_t(i)], 0);
    ASSERT_LT(assign[size_t(i)], 12);
    ++count[size_t(assign[size_t(i)])];
    for (int d = 0; d < 6; ++d) sum[size_t(assign[size_t(i)] * 6 + d)] += x[size_t(i * 6 + d)];
  }
  for (int k = 0; k < 12; ++k) {
    ASSERT_GT(count[size_t(k)], 0) << "cluster " << k;
    for (int d = 0; d < 6; ++d)
      EXPECT_NEAR(cent[size_t(k * 6 + d)], sum[size_t(k * 6 + d)] / count[size_t(k)], 1e-4) << k << "," << d;
  }
  // Fewer points than clusters: one centroid per point.
  EXPECT_EQ(kmeans(x.data(), 5, 6, 12, 3, 1, &assign).size(), size_t(5 * 6));
}

// k-means entries carry their members' majority label and its share: on
// blobs far apart every cluster is pure (share 1) and answers its blob's
// label; on overlapping blobs shares fall below 1 and stay in (0, 1].
TEST(ApproxCache, KmeansEntriesCarryTheMajorityLabelAndItsShare) {
  std::vector<float> x, xt;
  std::vector<int> y, yt;
  blobs(3000, 8, 4, 31, x, y);
  blobs(400, 8, 4, 32, xt, yt);
  ApproxOptions o;
  o.reduced = 8;
  o.centroids = 40;
  const ExitCache mixed = fresh_approx(HeadKind::kKmeans, 8, 4, x, y, o);
  EXPECT_LE(mixed.entries(), 40);
  EXPECT_EQ(mixed.neighbours, 1);
  double least = 1;
  for (size_t j = 0; j < mixed.share.size(); ++j) {
    EXPECT_GT(mixed.share[j], 0.f);
    EXPECT_LE(mixed.share[j], 1.f);
    least = std::min(least, double(mixed.share[j]));
  }
  EXPECT_LT(least, 1.0);
  // Far apart: scale the blobs' spread down.
  std::vector<float> tight(x.size()), tight_t(xt.size());
  std::mt19937 rng(4);
  std::normal_distribution<float> g;
  std::vector<float> centre(4 * 8);
  for (float& v : centre) v = 20 * g(rng);
  for (size_t i = 0; i < y.size(); ++i)
    for (int d = 0; d < 8; ++d) tight[i * 8 + size_t(d)] = centre[size_t(y[i] * 8 + d)] + 0.1f * g(rng);
  for (size_t i = 0; i < yt.size(); ++i)
    for (int d = 0; d < 8; ++d) tight_t[i * 8 + size_t(d)] = centre[size_t(yt[i] * 8 + d)] + 0.1f * g(rng);
  const ExitCache pure = fresh_approx(HeadKind::kKmeans, 8, 4, tight, y, o);
  for (float s : pure.share) EXPECT_EQ(s, 1.f);
  for (size_t i = 0; i < yt.size(); ++i) {
    float conf;
    EXPECT_EQ(pure.predict(tight_t.data() + i * 8, &conf), yt[i]) << "sample " << i;
  }
}

// Distance heads round-trip through cache files; damaged entries, sizes and
// kinds are refused with the exit and what is wrong.
TEST(CacheFiles, KeepDistanceHeadsAndRefuseDamagedOnes) {
  const Model m = test::random_model(test::kTinyArch, 1);
  CacheSet set = random_cache_set(m, 0.9f);
  ASSERT_GE(set.exits.size(), 3u);
  const HeadKind kinds[2] = {HeadKind::kKnn, HeadKind::kKmeans};
  for (int e = 0; e < 2; ++e) {
    ExitCache& c = set.exits[size_t(e)];
    std::vector<float> x = test::random_floats(size_t(200 * c.dim), uint32_t(40 + e));
    std::vector<int> y(200);
    for (int i = 0; i < 200; ++i) y[size_t(i)] = i % c.classes;
    ApproxOptions o;
    o.kind = kinds[e];
    o.reduced = 4;
    o.centroids = 16;
    build_approx_cache(c, x, y, o);
    c.threshold = 0.5f;
  }
  const auto dir = test::scratch_dir("cache_distance");
  const std::string path = (dir / "c.safetensors").string();
  set.save(path);
  const CacheSet back = CacheSet::load(path, m);
  ASSERT_EQ(back.exits.size(), set.exits.size());
  for (size_t e = 0; e < set.exits.size(); ++e) {
    const ExitCache &a = set.exits[e], &b = back.exits[e];
    EXPECT_EQ(a.kind, b.kind);
    EXPECT_EQ(a.reduced, b.reduced);
    EXPECT_EQ(a.neighbours, b.neighbours);
    EXPECT_EQ(a.projection, b.projection);
    EXPECT_EQ(a.keys, b.keys);
    EXPECT_EQ(a.labels, b.labels);
    EXPECT_EQ(a.share, b.share);
    EXPECT_EQ(a.weight, b.weight);
  }
  EXPECT_EQ(back.exits[0].kind, HeadKind::kKnn);
  EXPECT_EQ(back.exits[1].kind, HeadKind::kKmeans);
  EXPECT_EQ(back.exits[2].kind, HeadKind::kLinear);

  CacheSet bad = set;
  bad.exits[0].labels[3] = 99;
  expect_load_refused(bad, path, m, "exit 'stem': entry 3 has label 99");
  bad = set;
  bad.exits[1].share[0] = 0.f;
  expect_load_refused(bad, path, m, "entry 0 has share 0");
  bad = set;
  bad.exits[0].keys[5] = NAN;
  expect_load_refused(bad, path, m, "keys[5] is not finite");

  // The metadata disagrees with the tensors, or names a kind nobody knows.
  set.save(path);
  auto rewrite = [&](const std::function<void(nlohmann::json&)>& edit) {
    const SafeTensorsFile f = SafeTensorsFile::open(path);
    nlohmann::json meta = nlohmann::json::parse(f.metadata_at("gati.caches"));
    edit(meta);
    SafeTensorsWriter w;
    for (const std::string& name : f.names()) {
      const TensorInfo& t = f.info(name);
      w.add(name, t.dtype, t.shape, f.raw(name));
    }
    w.set_metadata("gati.caches", meta.dump());
    const std::string out = (dir / "edited.safetensors").string();
    w.write(out);
    return out;
  };
  EXPECT_GATI_ERROR(CacheSet::load(rewrite([](nlohmann::json& j) { j["exits"][0]["kind"] = "faiss"; }), m),
                    "kind 'faiss' (valid: learned-linear, learned-mlp, knn, kmeans)");
  EXPECT_GATI_ERROR(CacheSet::load(rewrite([](nlohmann::json& j) { j["exits"][0]["entries"] = 7; }), m),
                    "exit.stem.keys: expected shape [7,4]");
  EXPECT_GATI_ERROR(CacheSet::load(rewrite([](nlohmann::json& j) { j["exits"][1]["reduced"] = 0; }), m),
                    "exit 'layer1.0': 'reduced' must be an integer in [1, ");
  EXPECT_GATI_ERROR(CacheSet::load(rewrite([](nlohmann::json& j) { j["exits"][0]["neighbours"] = 40; }), m),
                    "40 neighbours (valid: 1 to 16)");
  std::filesystem::remove_all(dir);
}

// ---- the drift guard ---------------------------------------------------------------

// Off only on evidence (the window's Wilson upper bound below the target),
// on again after a full window at the target.
TEST(Guard, SwitchesOffOnEvidenceAndOnAfterRecovery) {
  GuardOptions o;
  o.target = 0.99;
  o.window = 200;
  o.min_observations = 50;
  DriftGuard g(3, o);
  // 0.995 agreement: one disagreement in 200, never enough evidence.
  for (int i = 0; i < 2000; ++i) EXPECT_FALSE(g.observe(1, i % 200 != 7));
  EXPECT_TRUE(g.enabled(1));
  // A forced drop to 0.9 at exit 2: switched off within a window or so.
  int at = -1;
  for (int i = 0; i < 400 && at < 0; ++i)
    if (g.observe(2, i % 10 != 0)) at = i;
  ASSERT_GE(at, 49);
  EXPECT_LT(at, 200);
  EXPECT_FALSE(g.enabled(2));
  EXPECT_TRUE(g.enabled(0));
  ASSERT_EQ(g.events().size(), 1u);
  EXPECT_FALSE(g.events()[0].on);
  EXPECT_EQ(g.events()[0].exit, 2);
  EXPECT_LT(g.events()[0].agreement, 0.95);
  // Recovered (in shadow): on again after exactly one full window.
  for (int i = 0; i < 199; ++i) EXPECT_FALSE(g.observe(2, true));
  EXPECT_TRUE(g.observe(2, true));
  EXPECT_TRUE(g.enabled(2));
  // A window at 0.98 does not switch it back on once off.
  for (int i = 0; i < 400; ++i) g.observe(0, i % 5 != 0);
  EXPECT_FALSE(g.enabled(0));
  for (int i = 0; i < 1000; ++i) g.observe(0, i % 50 != 0);
  EXPECT_FALSE(g.enabled(0));
  EXPECT_GATI_ERROR(g.observe(3, true), "exit 3 is not one of 3");
  EXPECT_GATI_ERROR(DriftGuard(2, GuardOptions{0.99, 10, 20}), "min_observations 20");
}

// n random images in [0, 1] of kTinyArch's input (1x12x12, 5 classes).
Dataset tiny_arch_images(int n, uint32_t seed) {
  Dataset d;
  d.name = "random";
  d.n = n;
  d.c = 1;
  d.h = d.w = 12;
  d.classes = 5;
  d.images = test::random_floats(size_t(n) * 144, seed, 0.5f);
  for (float& v : d.images) v += 0.5f;
  for (int i = 0; i < n; ++i) d.labels.push_back(i % 5);
  return d;
}

// A replay with feedback: an exit forced to answer one label with high
// confidence disagrees with the full model on most requests; the guard
// switches it off and later requests no longer leave there.  Without the
// guard it keeps answering.  Requests kept running as feedback are answered
// by the full model.
TEST(Replay, GuardSwitchesOffAnExitForcedToDisagree) {
  const Model m = test::random_model(test::kTinyArch, 3);
  Engine engine{Model(m)};
  const Dataset d = tiny_arch_images(80, 17);
  // The class the full model gives least often.
  std::vector<float> x = d.images;
  engine.normalize(x.data(), 80);
  const std::vector<float> logits = engine.infer(x.data(), 80);
  std::vector<int> count(5, 0);
  for (int i = 0; i < 80; ++i) {
    float conf;
    ++count[size_t(top_class(logits.data() + i * 5, 5, &conf))];
  }
  const int rare = int(std::min_element(count.begin(), count.end()) - count.begin());
  ASSERT_LT(count[size_t(rare)], 20);

  CacheSet set = random_cache_set(m, 2.0f);
  ExitCache& bad = set.exits[1];
  std::fill(bad.weight.begin(), bad.weight.end(), 0.f);
  std::fill(bad.bias.begin(), bad.bias.end(), 0.f);
  bad.bias[size_t(rare)] = 5.f;  // softmax 0.974 for `rare`, whatever the input
  bad.threshold = 0.5f;
  const Trace trace = make_trace("uniform", d, 400, 9);

  ReplayOptions o;
  o.online.feedback = 0.5;
  o.online.guard_options.window = 40;
  o.online.guard_options.min_observations = 10;
  const ReplayReport unguarded = replay_trace(engine, set, d, trace, o);
  o.online.guard = true;
  const ReplayReport guarded = replay_trace(engine, set, d, trace, o);
  auto hits_after = [](const ReplayReport& r, size_t from) {
    int h = 0;
    for (size_t i = from; i < r.requests.size(); ++i) h += r.requests[i].exit == 1;
    return h;
  };
  EXPECT_GT(hits_after(unguarded, 300), 20);
  EXPECT_TRUE(unguarded.guard_events.empty());
  ASSERT_FALSE(guarded.guard_events.empty());
  EXPECT_EQ(guarded.guard_events[0].exit, 1);
  EXPECT_FALSE(guarded.guard_events[0].on);
  for (const GuardEvent& ev : guarded.guard_events) EXPECT_FALSE(ev.on) << "it never recovers";
  EXPECT_EQ(hits_after(guarded, 150), 0);
  EXPECT_GT(guarded.agreement(), unguarded.agreement());
  int fed = 0;
  for (const RequestRecord& r : unguarded.requests)
    if (r.feedback_exit >= 0) {
      ++fed;
      EXPECT_EQ(r.exit, kFullModel);
      EXPECT_EQ(r.label, r.full_label);
      EXPECT_EQ(r.latency_us, r.full_latency_us);
    }
  EXPECT_EQ(fed, unguarded.exits[1].feedback);
  EXPECT_GT(fed, 100);
  EXPECT_LT(double(unguarded.exits[1].feedback_agree) / double(fed), 0.5);
  o.online.feedback = 0;
  EXPECT_GATI_ERROR(replay_trace(engine, set, d, trace, o), "the drift guard needs feedback");
}

// Online updates: a learned cache that starts knowing nothing (zero weights:
// confidence 1/5, under its threshold) learns from the requests the full
// model answers and starts answering, in agreement with the full model.
TEST(Replay, OnlineUpdatesTeachACacheThatKnewNothing) {
  const Model m = test::random_model(test::kTinyArch, 3);
  Engine engine{Model(m)};
  const Dataset d = tiny_arch_images(40, 19);
  CacheSet set = random_cache_set(m, 2.0f);
  ExitCache& last = set.exits.back();
  std::fill(last.weight.begin(), last.weight.end(), 0.f);
  std::fill(last.bias.begin(), last.bias.end(), 0.f);
  last.threshold = 0.8f;
  const Trace trace = make_trace("uniform", d, 600, 4);
  auto hits = [](const ReplayReport& r, size_t from, size_t to, int* agree) {
    int h = 0;
    *agree = 0;
    for (size_t i = from; i < to; ++i)
      if (r.requests[i].exit >= 0) {
        ++h;
        *agree += r.requests[i].label == r.requests[i].full_label;
      }
    return h;
  };
  ReplayOptions o;
  int agree = 0;
  const ReplayReport still = replay_trace(engine, set, d, trace, o);
  EXPECT_EQ(hits(still, 0, 600, &agree), 0);
  EXPECT_EQ(still.online_steps, 0);
  // Hits stop the learning from misses; feedback keeps it going.
  o.online.sgd = true;
  o.online.sgd_options.lr = 0.01f;
  o.online.sgd_options.batch = 8;
  o.online.feedback = 0.25;
  const ReplayReport learned = replay_trace(engine, set, d, trace, o);
  EXPECT_EQ(hits(learned, 0, 8, &agree), 0);  // no step before the first 8 answers
  EXPECT_GT(hits(learned, 400, 600, &agree), 50);
  EXPECT_GT(learned.online_steps, 10);
  // What it learned: agreement with the full model on the whole data set,
  // from chance (one label for everything) to most of it.
  ASSERT_EQ(learned.caches_after.size(), set.exits.size());
  std::vector<float> x = d.images;
  engine.normalize(x.data(), d.n);
  const CollectedFeatures f = collect_features(engine, x.data(), d.n, d.n, std::vector<PoolSpec>(4));
  auto agreement = [&](const ExitCache& c) {
    int a = 0;
    for (int i = 0; i < d.n; ++i) {
      float conf;
      a += c.predict(f.per_exit[size_t(c.exit)].data() + size_t(i) * size_t(c.dim), &conf) == f.full_labels[size_t(i)];
    }
    return double(a) / d.n;
  };
  const double before = agreement(last), after = agreement(learned.caches_after.back());
  EXPECT_GT(after, before + 0.2) << before << " -> " << after;
  EXPECT_EQ(learned.caches_after.front().weight, set.exits.front().weight)
      << "a closed exit pools nothing while serving, so it learns nothing";
}

// Online SGD taken in the serving backend (engine/learner.h) instead of a
// separate host pass: the same answers and the same learned weights, bit
// for bit on the CPU, at batch 1 and in batches; it refuses the host-only
// settings.
TEST(Replay, LearningInTheBackendTakesTheHostsSteps) {
  const Model m = test::random_model(test::kTinyArch, 3);
  Engine engine{Model(m)};
  const Dataset d = tiny_arch_images(40, 19);
  // Two open caches that know nothing yet (they learn, then answer) and two
  // closed ones (neither served nor learned).
  CacheSet set = random_cache_set(m, 2.0f);
  for (size_t e : {size_t(2), size_t(3)}) {
    std::fill(set.exits[e].weight.begin(), set.exits[e].weight.end(), 0.f);
    std::fill(set.exits[e].bias.begin(), set.exits[e].bias.end(), 0.f);
    set.exits[e].threshold = 0.8f;
  }
  const Trace trace = make_trace("uniform", d, 200, 4);
  for (int batch : {1, 5}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    ReplayOptions o;
    o.batch = batch;
    o.online.sgd = true;
    o.online.sgd_options.lr = 0.001f;
    o.online.sgd_options.batch = 4;
    const ReplayReport host = replay_trace(engine, set, d, trace, o);
    o.online.in_backend = true;
    const ReplayReport backend = replay_trace(engine, set, d, trace, o);
    ASSERT_EQ(backend.requests.size(), host.requests.size());
    int full = 0;
    for (size_t i = 0; i < host.requests.size(); ++i) {
      ASSERT_EQ(backend.requests[i].exit, host.requests[i].exit) << "request " << i;
      ASSERT_EQ(backend.requests[i].label, host.requests[i].label) << "request " << i;
      full += host.requests[i].exit == kFullModel;
    }
    EXPECT_GT(full, 20);
    EXPECT_LT(full, 180) << "some requests should leave early";
    EXPECT_GT(host.online_steps, 5);
    EXPECT_EQ(backend.online_steps, host.online_steps);
    ASSERT_EQ(backend.caches_after.size(), host.caches_after.size());
    for (size_t e = 0; e < host.caches_after.size(); ++e) {
      EXPECT_EQ(backend.caches_after[e].weight, host.caches_after[e].weight) << host.caches_after[e].name;
      EXPECT_EQ(backend.caches_after[e].bias, host.caches_after[e].bias) << host.caches_after[e].name;
    }
    EXPECT_EQ(backend.caches_after[1].weight, set.exits[1].weight) << "a closed exit learns nothing";
    EXPECT_NE(backend.caches_after[3].weight, set.exits[3].weight);
    // The warm-up runs (ReplayOptions::warmup, 2 by default) teach nothing
    // and change no answer.
    EXPECT_EQ(backend.warmup_runs, 2);
    o.warmup = 0;
    const ReplayReport cold = replay_trace(engine, set, d, trace, o);
    EXPECT_EQ(cold.warmup_runs, 0);
    for (size_t i = 0; i < host.requests.size(); ++i) {
      ASSERT_EQ(cold.requests[i].exit, backend.requests[i].exit) << "request " << i;
      ASSERT_EQ(cold.requests[i].label, backend.requests[i].label) << "request " << i;
    }
    EXPECT_EQ(cold.online_steps, backend.online_steps);
    for (size_t e = 0; e < host.caches_after.size(); ++e)
      EXPECT_EQ(cold.caches_after[e].weight, backend.caches_after[e].weight) << host.caches_after[e].name;
    o.warmup = 2;
    o.online.feedback = 0.1;
    EXPECT_GATI_ERROR(replay_trace(engine, set, d, trace, o), "takes no feedback, guard or prior");
  }
}

// The estimate follows the served mix; the correction is log(q / p) within
// its clamp; a class the training labels never had is never corrected; only
// a learned linear head's bias changes.
TEST(LabelShift, FollowsTheServedMixWithinItsClamp) {
  LabelShiftOptions o;
  o.window = 100;
  o.max_ratio = 4.0;
  LabelShift shift({0.25f, 0.25f, 0.5f, 0.f}, o);
  for (float c : shift.correction()) EXPECT_EQ(c, 0.f) << "it starts at the training mix";
  // 3000 answers cycling 0,0,0,0,0,0,1,1,2,2 : q -> (0.6, 0.2, 0.2, 0).
  for (int i = 0; i < 3000; ++i) shift.observe(i % 10 < 6 ? 0 : i % 10 < 8 ? 1 : 2);
  const std::vector<double>& q = shift.estimate();
  EXPECT_NEAR(q[0], 0.6, 0.04);
  EXPECT_NEAR(q[1], 0.2, 0.03);
  EXPECT_NEAR(q[2], 0.2, 0.03);
  EXPECT_LT(q[3], 1e-9);
  const std::vector<float> c = shift.correction();
  EXPECT_NEAR(c[0], std::log(0.6 / 0.25), 0.1);
  EXPECT_NEAR(c[1], std::log(0.2 / 0.25), 0.15);
  EXPECT_NEAR(c[2], std::log(0.2 / 0.5), 0.15);
  EXPECT_EQ(c[3], 0.f) << "no training prior, no correction";

  ExitCache linear = fresh(3, 4);
  linear.weight.assign(12, 0.5f);
  linear.bias = {1.f, 2.f, 3.f, 4.f};
  const ExitCache served = shift.adapt(linear);
  for (size_t k = 0; k < 4; ++k) EXPECT_FLOAT_EQ(served.bias[k], linear.bias[k] + c[k]);
  EXPECT_EQ(served.weight, linear.weight);
  ExitCache knn = linear;
  knn.kind = HeadKind::kKnn;
  EXPECT_EQ(shift.adapt(knn).bias, linear.bias) << "distance heads are served unchanged";
  EXPECT_GATI_ERROR(shift.adapt(fresh(3, 5)), "exit 'layer1.0' has 5 classes, the label prior 4");
  EXPECT_GATI_ERROR(shift.observe(4), "label 4 is outside the 4 classes");
}

TEST(LabelShift, ClampsAndRefusesBadSettings) {
  LabelShiftOptions o;
  o.window = 10;
  o.max_ratio = 1.5;
  LabelShift shift({0.5f, 0.5f}, o);
  for (int i = 0; i < 200; ++i) shift.observe(0);
  const std::vector<float> c = shift.correction();
  EXPECT_FLOAT_EQ(c[0], float(std::log(1.5)));
  EXPECT_FLOAT_EQ(c[1], float(-std::log(1.5)));
  EXPECT_GATI_ERROR(LabelShift({}, o), "carry no label prior");
  EXPECT_GATI_ERROR(LabelShift({0.5f, 0.6f}, o), "sums to 1.1");
  EXPECT_GATI_ERROR(LabelShift({1.5f, -0.5f}, o), "class 1 is -0.5");
  EXPECT_GATI_ERROR(LabelShift({std::nanf(""), 1.f}, o), "class 0 is nan");
  o.window = 0;
  EXPECT_GATI_ERROR(LabelShift({0.5f, 0.5f}, o), "window must be at least 1");
  o.window = 10;
  o.max_ratio = 0.5;
  EXPECT_GATI_ERROR(LabelShift({0.5f, 0.5f}, o), "max_ratio must be finite and at least 1");
}

// Prior adaptation on the drift trace: a learned cache trained on a uniform
// mix of the full model's answers, served to traffic where three of five
// classes take 80%, answers more requests with the correction than without,
// at no loss of agreement; on uniform traffic it changes little.
TEST(Replay, PriorAdaptationRaisesHitsOnDrift) {
  Model m = test::random_model(test::kTinyArch, 3);
  const int n = 600;
  Dataset d = tiny_arch_images(n, 23);
  std::vector<float> x = d.images;
  Engine{Model(m)}.normalize(x.data(), n);
  {
    // A random model gives one class to most images; shifting its
    // classifier's bias evens its answers out, so that the trace's phases
    // really move the mix away from the training one.
    const std::vector<float> logits = Engine{Model(m)}.infer(x.data(), n);
    for (int round = 0; round < 200; ++round) {
      std::vector<int> count(5, 0);
      for (int i = 0; i < n; ++i) {
        int best = 0;
        for (int k = 1; k < 5; ++k)
          if (logits[size_t(i * 5 + k)] + m.fc_bias[size_t(k)] > logits[size_t(i * 5 + best)] + m.fc_bias[size_t(best)])
            best = k;
        ++count[size_t(best)];
      }
      for (int k = 0; k < 5; ++k) m.fc_bias[size_t(k)] -= 0.05f * std::log((count[size_t(k)] + 1) / (n / 5.f));
    }
  }
  Engine engine{Model(m)};
  const CollectedFeatures f = collect_features(engine, x.data(), n, n, std::vector<PoolSpec>(4));
  d.labels = f.full_labels;  // the trace's class mix is then the full model's
  CacheSet set;
  set.model_arch = m.arch().name;
  set.model_fingerprint = fingerprint(m);
  set.label_prior.assign(5, 0.f);
  for (int y : f.full_labels) set.label_prior[size_t(y)] += 1.f / float(n);
  // At the last exit, whose pooled features are the classifier's input, a
  // linear cache can agree with the full model; its answers feed the
  // estimate, so it must.
  const int e = int(f.dims.size()) - 1;
  ExitCache c = fresh(f.dims[size_t(e)], 5);
  c.name = exit_points(m.net)[size_t(e)].name;
  c.exit = e;
  SgdOptions sgd;
  sgd.epochs = 30;
  train_exit_cache(c, f.per_exit[size_t(e)], f.full_labels, sgd);
  // The threshold: the median confidence, so that about half the requests hit.
  std::vector<float> conf(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) c.predict(f.per_exit[size_t(e)].data() + size_t(i) * size_t(c.dim), &conf[size_t(i)]);
  std::nth_element(conf.begin(), conf.begin() + n / 2, conf.end());
  c.threshold = conf[size_t(n / 2)];
  set.exits.push_back(c);

  TraceParams tp;
  tp.drift_period = 300;
  const Trace drift = make_trace("drift", d, 1500, 31, tp);
  ReplayOptions o;
  const ReplayReport plain = replay_trace(engine, set, d, drift, o);
  o.online.prior = true;
  o.online.prior_options.window = 50;
  o.online.prior_options.max_ratio = 2.0;
  const ReplayReport adapted = replay_trace(engine, set, d, drift, o);
  EXPECT_EQ(adapted.prior_updates, 1500 / 32) << "every 32 requests";
  EXPECT_GT(adapted.hit_rate(), plain.hit_rate() + 0.03) << plain.hit_rate() << " -> " << adapted.hit_rate();
  EXPECT_GE(adapted.exits[0].hit_agreement(), plain.exits[0].hit_agreement() - 0.01);
  ASSERT_EQ(adapted.prior_estimate.size(), 5u);
  EXPECT_GT(*std::max_element(adapted.prior_estimate.begin(), adapted.prior_estimate.end()), 0.25);

  const Trace uniform = make_trace("uniform", d, 1500, 31);
  o.online.prior = false;
  const ReplayReport u_plain = replay_trace(engine, set, d, uniform, o);
  o.online.prior = true;
  const ReplayReport u_adapted = replay_trace(engine, set, d, uniform, o);
  EXPECT_NEAR(u_adapted.hit_rate(), u_plain.hit_rate(), 0.05);

  set.label_prior.clear();
  EXPECT_GATI_ERROR(replay_trace(engine, set, d, drift, o), "carry no label prior");
}

// ---- the cache configuration file ------------------------------------------------

// Every setting survives a trip through the file, non-default values and
// per-exit settings included.
TEST(CacheConfig, RoundTripsEverySetting) {
  BuildOptions o;
  o.kind = HeadKind::kKmeans;
  o.pool = "mix2x2";
  o.target_agreement = 0.995;
  o.rule = ThresholdRule::kTarget;
  o.cascade = false;
  o.perturbed_holdout = false;
  o.traffic_requests = 250;
  o.never_hit_budget = 0.07;
  o.cost = CostModel::kMacs;
  o.auto_pool_budget = 0.01;
  o.train = 1234;
  o.holdout = 567;
  o.batch = 32;
  o.selector = 3;
  o.hidden = 24;
  o.sgd = {3, 16, 0.01f, 0.5f, 1e-4f, 7, 0.25f, 4.f};
  o.approx.reduced = 16;
  o.approx.knn_entries = 0;
  o.approx.neighbours = 5;
  o.approx.centroids = 64;
  o.approx.kmeans_samples = 1000;
  o.approx.iterations = 4;
  o.approx.seed = 9;
  o.memory = true;
  o.memory_pool = "avg4x4";
  o.memory_capacity = 512;
  o.memory_min_confidence = 0.97f;
  o.memory_requests = 3000;
  o.exits["layer1.0"].enabled = false;
  o.exits["layer2.0"].kind = HeadKind::kKnn;
  o.exits["layer2.0"].pool = "avg2x2";
  o.exits["stem"].hidden = 0;
  const std::string text = build_options_to_json(o).dump(2);
  const BuildOptions r = build_options_from_json(nlohmann::json::parse(text), "config.json");
  EXPECT_EQ(r.kind, o.kind);
  EXPECT_EQ(r.pool, o.pool);
  EXPECT_DOUBLE_EQ(r.target_agreement, o.target_agreement);
  EXPECT_EQ(r.rule, o.rule);
  EXPECT_EQ(r.cascade, o.cascade);
  EXPECT_EQ(r.perturbed_holdout, o.perturbed_holdout);
  EXPECT_DOUBLE_EQ(r.traffic_requests, o.traffic_requests);
  EXPECT_DOUBLE_EQ(r.never_hit_budget, 0.07);
  EXPECT_EQ(r.cost, o.cost);
  EXPECT_DOUBLE_EQ(r.auto_pool_budget, o.auto_pool_budget);
  EXPECT_EQ(r.train, o.train);
  EXPECT_EQ(r.holdout, o.holdout);
  EXPECT_EQ(r.batch, o.batch);
  EXPECT_EQ(r.sgd.epochs, 3);
  EXPECT_EQ(r.sgd.batch, 16);
  EXPECT_EQ(r.sgd.lr, 0.01f);
  EXPECT_EQ(r.sgd.momentum, 0.5f);
  EXPECT_EQ(r.sgd.weight_decay, 1e-4f);
  EXPECT_EQ(r.sgd.seed, 7u);
  EXPECT_EQ(r.sgd.distill_alpha, 0.25f);
  EXPECT_EQ(r.sgd.distill_temperature, 4.f);
  EXPECT_EQ(r.selector, 3);
  EXPECT_EQ(r.hidden, 24);
  EXPECT_EQ(r.approx.reduced, 16);
  EXPECT_EQ(r.approx.knn_entries, 0);
  EXPECT_EQ(r.approx.neighbours, 5);
  EXPECT_EQ(r.approx.centroids, 64);
  EXPECT_EQ(r.approx.kmeans_samples, 1000);
  EXPECT_EQ(r.approx.iterations, 4);
  EXPECT_EQ(r.approx.seed, 9u);
  EXPECT_TRUE(r.memory);
  EXPECT_EQ(r.memory_pool, "avg4x4");
  EXPECT_EQ(r.memory_capacity, 512);
  EXPECT_EQ(r.memory_min_confidence, 0.97f);
  EXPECT_EQ(r.memory_requests, 3000);
  ASSERT_EQ(r.exits.size(), 3u);
  EXPECT_EQ(r.exits.at("stem").hidden, 0);
  EXPECT_FALSE(r.exits.at("layer2.0").hidden.has_value());
  EXPECT_FALSE(r.exits.at("layer1.0").enabled);
  EXPECT_FALSE(r.exits.at("layer1.0").kind.has_value());
  EXPECT_TRUE(r.exits.at("layer2.0").enabled);
  EXPECT_EQ(r.exits.at("layer2.0").kind, HeadKind::kKnn);
  EXPECT_EQ(r.exits.at("layer2.0").pool, "avg2x2");
  // Floats are written as the short decimals a person typed.
  EXPECT_NE(text.find("\"min_confidence\": 0.97"), std::string::npos) << text;
  // An empty object is the defaults.
  const BuildOptions d = build_options_from_json(nlohmann::json::object(), "empty.json");
  EXPECT_EQ(d.kind, BuildOptions{}.kind);
  EXPECT_EQ(d.train, BuildOptions{}.train);
  EXPECT_TRUE(d.exits.empty());
}

// Each mistake is named with the file and the key, and lists what is valid.
TEST(CacheConfig, RefusesBadSettingsNamingTheKeyAndTheValidValues) {
  auto refuse = [](const char* text, const std::string& want) {
    SCOPED_TRACE(text);
    EXPECT_GATI_ERROR(build_options_from_json(nlohmann::json::parse(text), "c.json"), want);
  };
  refuse(R"({"kinds": "linear"})", "c.json: unknown key 'kinds' (valid: format, kind, pool,");
  refuse(R"({"kind": "mlp"})", "c.json: 'kind' is 'mlp' (valid: linear, knn, kmeans)");
  refuse(R"({"rule": "strict"})", "'rule' is 'strict' (valid: bound, target, zero-error)");
  refuse(R"({"calibrate": "both"})", "(valid: cascade, per-exit)");
  refuse(R"({"calibrate_on": "noisy"})", "(valid: clean, clean+shifted)");
  refuse(R"({"cost": "flops"})", "(valid: measured, macs)");
  refuse(R"({"pool": "avg9x9"})", "c.json: 'pool': ");
  refuse(R"({"pool": "avg9x9"})", "(or auto)");
  refuse(R"({"target_agreement": 1.5})", "'target_agreement' must be a number in [0.5, 1]");
  refuse(R"({"train": "many"})", "'train' must be an integer in [1, 60000]");
  refuse(R"({"train": 2.5})", "'train' must be an integer");
  refuse(R"({"format": "gati-cache-config/9"})", "(valid: gati-cache-config/1)");
  refuse(R"({"sgd": {"epochs": 0}})", "c.json: 'sgd': 'epochs' must be an integer in [1, 1000]");
  refuse(R"({"sgd": {"learning_rate": 0.1}})", "unknown key 'learning_rate' (valid: epochs, batch, lr,");
  refuse(R"({"sgd": 3})", "'sgd'");
  refuse(R"({"approx": {"neighbours": 99}})", "'neighbours' must be an integer in [1, 16]");
  refuse(R"({"memory": {"enabled": "yes"}})", "'enabled' must be true or false");
  refuse(R"({"memory": {"pool": "auto"}})", "'memory': 'pool'");
  refuse(R"({"exits": {"layer1.0": {"on": false}}})",
         "c.json: 'exits' 'layer1.0': unknown key 'on' (valid: enabled, kind, pool, hidden)");
  refuse(R"({"hidden": -1})", "'hidden' must be an integer in [0, 1024]");
  refuse(R"({"never_hit_budget": 0})", "'never_hit_budget' must be a number in [1e-06, 1]");
  refuse(R"({"exits": {"stem": {"hidden": 4096}}})", "'exits' 'stem': 'hidden' must be an integer in [0, 1024]");
  refuse(R"({"exits": {"layer1.0": {"kind": "svm"}}})", "'kind' is 'svm' (valid: linear, knn, kmeans)");
  refuse(R"({"exits": []})", "'exits'");
  refuse(R"([1, 2])", "c.json");

  const auto dir = test::scratch_dir("cache_config");
  const std::string path = (dir / "c.json").string();
  std::ofstream(path) << "{\"kind\": \"linear\",";  // cut short
  EXPECT_GATI_ERROR(load_build_config(path), "c.json: the cache configuration is not valid JSON");
  std::ofstream(path) << "{\"train\": 500}";
  EXPECT_EQ(load_build_config(path).train, 500);
  EXPECT_GATI_ERROR(load_build_config((dir / "missing.json").string()), "missing.json");
  EXPECT_GATI_ERROR(load_build_config(dir.string()), "cache configuration");
  std::filesystem::remove_all(dir);
}

// Per-exit settings reach the built set: a closed exit has no cache, another
// kind and pooling where asked; names the model lacks are refused with the
// valid ones listed.
TEST(CacheConfig, PerExitSettingsShapeTheBuild) {
  const Model m = test::random_model(test::kTinyArch, 5);
  Engine engine{Model(m)};
  const Dataset d = tiny_arch_images(300, 29);
  const std::vector<ExitPointInfo> points = exit_points(m.net);
  ASSERT_EQ(points.size(), 4u);
  BuildOptions o;
  o.train = 200;
  o.holdout = 100;
  o.cost = CostModel::kMacs;
  o.pool = "avg";
  o.sgd.epochs = 2;
  o.exits[points[1].name].enabled = false;
  o.exits[points[2].name].kind = HeadKind::kKnn;
  o.exits[points[2].name].pool = "avg2x2";
  o.exits[points[3].name].hidden = 8;
  const BuildResult r = build_caches(engine, d, o);
  ASSERT_EQ(r.caches.exits.size(), 3u);
  EXPECT_EQ(r.caches.exits[0].name, points[0].name);
  EXPECT_EQ(r.caches.exits[1].name, points[2].name);
  EXPECT_EQ(r.caches.exits[2].name, points[3].name);
  EXPECT_EQ(r.caches.exits[0].kind, HeadKind::kLinear);
  EXPECT_EQ(r.caches.exits[1].kind, HeadKind::kKnn);
  EXPECT_EQ(pool_name(r.caches.exits[1].pool), "avg2x2");
  EXPECT_EQ(pool_name(r.caches.exits[2].pool), "avg");
  EXPECT_EQ(r.caches.exits[2].kind, HeadKind::kLinear);
  EXPECT_EQ(r.caches.exits[0].hidden, 32);  // the default
  EXPECT_EQ(r.caches.exits[2].hidden, 8);
  EXPECT_EQ(r.caches.exits[2].hidden_weight.size(), size_t(8 * r.caches.exits[2].dim));

  BuildOptions bad = o;
  bad.exits["layer9.9"].enabled = false;
  EXPECT_GATI_ERROR(
      build_caches(engine, d, bad),
      str_cat("exit 'layer9.9' in the configuration is not an exit point of the model (valid: ", points[0].name, ", "));
  BuildOptions none = o;
  for (const ExitPointInfo& p : points) none.exits[p.name].enabled = false;
  EXPECT_GATI_ERROR(build_caches(engine, d, none), "switches every exit off");
}

}  // namespace
}  // namespace gati
