// Learned caches: training, calibration, files; see learned_cache.h.
#include "cache/learned_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "cache/mlp_head.h"
#include "engine/plan.h"
#include "kernels/cpu/distance_head_cpu.h"
#include "kernels/cpu/exit_head_cpu.h"
#include "kernels/cpu/linear_sgd_cpu.h"
#include "kernels/cpu/threads.h"
#include "weights/common/error.h"
#include "weights/common/half.h"
#include "weights/common/int8_rows.h"
#include "weights/common/json_read.h"
#include "weights/model.h"
#include "weights/safetensors.h"

namespace gati {
namespace {

constexpr const char* kFormat = "gati-caches/1";

// A head's kind as cache files name it (learned heads: "learned-linear", as
// files had before distance heads, or "learned-mlp" with a hidden layer).
const char* file_kind(const ExitHeadSpec& h) {
  if (h.kind == HeadKind::kLinear) return h.hidden > 0 ? "learned-mlp" : "learned-linear";
  return head_kind_name(h.kind);
}

}  // namespace

int top_class(const float* logits, int classes, float* confidence) {
  return cpu::top_softmax(logits, classes, confidence);
}

LinearHeadView ExitCache::view() const { return host_linear_view(*this); }

std::string head_description(const ExitHeadSpec& h) {
  if (h.kind == HeadKind::kLinear && h.hidden > 0) return str_cat("mlp", h.hidden);
  return head_kind_name(h.kind);
}

void round_weights_to_half(ExitHeadSpec& head) {
  for (float& w : head.weight)
    if (std::abs(w) <= kHalfMax) w = round_to_half(w);  // beyond it a half is infinite: the head stays in floats
}

void round_weights_for_serving(ExitHeadSpec& head) {
  if (head.kind != HeadKind::kLinear) return;
  if (head.hidden > 0) {  // both layers as halves
    round_weights_to_half(head);
    for (float& w : head.hidden_weight)
      if (std::abs(w) <= kHalfMax) w = round_to_half(w);
    return;
  }
  if (head.weight.size() >= kInt8HeadWeights)
    round_rows_to_int8(head.weight.data(), head.classes, head.dim);
  else
    round_weights_to_half(head);
}

DistanceHeadView ExitCache::distance_view() const { return host_distance_view(*this); }

int ExitCache::predict(const float* features, float* confidence) const {
  if (kind != HeadKind::kLinear) return cpu::distance_head_predict(distance_view(), features, confidence);
  thread_local std::vector<float> z;
  z.resize(size_t(classes));
  const LinearHeadView v = view();
  cpu::linear_head_scores(v, features, z.data());
  return cpu::head_decision(v, z.data(), confidence);
}

ExitCache ExitCache::from_head_spec(const ExitHeadSpec& h) {
  ExitCache c;
  static_cast<ExitHeadSpec&>(c) = h;
  return c;
}

std::vector<ExitHeadSpec> CacheSet::head_specs() const {
  std::vector<ExitHeadSpec> out;
  for (const ExitCache& c : exits)
    if (c.enabled()) out.push_back(c.head_spec());
  return out;
}

double sgd_step(ExitCache& c, const float* x, const int* labels, int n, const SgdOptions& opt,
                std::vector<float>& velocity, const float* teacher) {
  if (opt.distill_alpha > 0 && !teacher)
    fail("cache ", c.name, ": distillation asked for without the full model's logits");
  const SgdHyper hp{opt.lr, opt.momentum, opt.weight_decay};
  const cpu::Distill distill{teacher, opt.distill_alpha, opt.distill_temperature};
  cpu::SgdResult r;
  if (c.hidden > 0) {
    r = mlp_sgd_step(c, x, labels, n, hp, velocity, distill);
  } else {
    const size_t total = c.weight.size() + c.bias.size();
    if (velocity.size() != total) velocity.assign(total, 0.f);
    const LinearHeadMut h{c.dim,           c.classes,     c.mean.data(),  c.inv_std.data(),
                          c.weight.data(), c.bias.data(), velocity.data()};
    r = cpu::linear_sgd_step(h, x, labels, n, hp, distill);
  }
  switch (r.status) {
    case OpStatus::kOk:
      return r.loss;
    case OpStatus::kBadLabel:
      fail("cache ", c.name, ": label ", labels[r.bad_index], " of sample ", r.bad_index, " is out of range [0, ",
           c.classes, ")");
    case OpStatus::kNonFinite:
      break;
  }
  fail("cache ", c.name, ": SGD step rejected (weight ", r.bad_index,
       " would become non-finite or exceed 1e6); weights unchanged");
}

size_t fit_standardisation(const float* x, size_t n, int dim, const uint8_t* keep, std::vector<float>* mean,
                           std::vector<float>* inv_std) {
  const size_t D = size_t(dim);
  std::vector<double> m(D, 0), v(D, 0);
  size_t count = 0;
  for (size_t i = 0; i < n; ++i) {
    if (keep && !keep[i]) continue;
    ++count;
    for (size_t d = 0; d < D; ++d) m[d] += x[i * D + d];
  }
  mean->assign(D, 0.f);
  inv_std->assign(D, 1.f);
  if (count == 0) return 0;
  for (double& s : m) s /= double(count);
  for (size_t i = 0; i < n; ++i) {
    if (keep && !keep[i]) continue;
    for (size_t d = 0; d < D; ++d) {
      const double t = x[i * D + d] - m[d];
      v[d] += t * t;
    }
  }
  for (size_t d = 0; d < D; ++d) {
    (*mean)[d] = float(m[d]);
    (*inv_std)[d] = float(1.0 / std::sqrt(v[d] / double(count) + 1e-6));
  }
  return count;
}

std::vector<double> train_exit_cache(ExitCache& c, const std::vector<float>& features, const std::vector<int>& labels,
                                     const SgdOptions& opt, const std::vector<float>& full_logits) {
  const int n = int(labels.size());
  if (n == 0) fail("cache ", c.name, ": no training samples");
  if (features.size() != size_t(n) * size_t(c.dim))
    fail("cache ", c.name, ": ", features.size(), " feature values for ", n, " samples of dim ", c.dim);
  // The teacher: the full model's softmax at the distillation temperature.
  const bool distill = opt.distill_alpha > 0;
  const size_t K = size_t(c.classes);
  if (distill) {
    if (!(opt.distill_alpha <= 1 && opt.distill_temperature > 0 && std::isfinite(opt.distill_temperature)))
      fail("cache ", c.name, ": distillation alpha ", opt.distill_alpha, " must be in [0, 1] and temperature ",
           opt.distill_temperature, " > 0");
    if (full_logits.size() != size_t(n) * K)
      fail("cache ", c.name, ": distillation needs the full model's logits for ", n, " samples of ", K,
           " classes, got ", full_logits.size(), " values");
  }
  std::vector<float> teacher, tb;
  if (distill) {
    teacher.resize(size_t(n) * K);
    std::vector<float> scaled(K);
    for (size_t i = 0; i < size_t(n); ++i) {
      for (size_t k = 0; k < K; ++k) scaled[k] = full_logits[i * K + k] / opt.distill_temperature;
      cpu::softmax(scaled.data(), int(K), teacher.data() + i * K);
    }
  }
  fit_standardisation(features.data(), size_t(n), c.dim, nullptr, &c.mean, &c.inv_std);
  if (c.hidden > 0) {  // random starts (zeros would keep every hidden unit alike)
    init_mlp(c, c.hidden, opt.seed ^ 0x9e3779b9u);
  } else {
    c.weight.assign(size_t(c.classes) * size_t(c.dim), 0.f);
    c.bias.assign(size_t(c.classes), 0.f);
  }
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(opt.seed);
  std::vector<float> velocity, xb;
  std::vector<int> yb;
  std::vector<double> history;
  for (int e = 0; e < opt.epochs; ++e) {
    std::shuffle(order.begin(), order.end(), rng);
    SgdOptions o = opt;
    o.lr = opt.lr * 0.5f * (1.0f + std::cos(float(M_PI) * float(e) / float(opt.epochs)));  // cosine decay
    double sum = 0;
    int batches = 0;
    for (int s = 0; s < n; s += opt.batch) {
      const int nb = std::min(opt.batch, n - s);
      xb.resize(size_t(nb) * size_t(c.dim));
      yb.resize(size_t(nb));
      if (distill) tb.resize(size_t(nb) * K);
      for (int i = 0; i < nb; ++i) {
        const int src = order[size_t(s + i)];
        std::copy_n(features.data() + size_t(src) * size_t(c.dim), c.dim, xb.data() + size_t(i) * size_t(c.dim));
        yb[size_t(i)] = labels[size_t(src)];
        if (distill) std::copy_n(teacher.data() + size_t(src) * K, K, tb.data() + size_t(i) * K);
      }
      sum += sgd_step(c, xb.data(), yb.data(), nb, o, velocity, distill ? tb.data() : nullptr);
      ++batches;
    }
    history.push_back(sum / batches);
  }
  round_weights_for_serving(c);
  int agree = 0;
  for (int i = 0; i < n; ++i) {
    float conf;
    agree += c.predict(features.data() + size_t(i) * size_t(c.dim), &conf) == labels[size_t(i)];
  }
  c.train_agreement = double(agree) / n;
  return history;
}

void fit_selector(ExitCache& c, const std::vector<float>& features, const std::vector<int>& labels, int k) {
  if (c.kind != HeadKind::kLinear) fail("cache ", c.name, ": a selector needs a learned linear predictor");
  if (k < 1 || k > kMaxSelectorK)
    fail("cache ", c.name, ": selector over ", k, " scores (valid: 1 to ", kMaxSelectorK, ")");
  const size_t n = labels.size(), P = size_t(k) + 1;
  if (n == 0 || features.size() != n * size_t(c.dim))
    fail("cache ", c.name, ": ", features.size(), " feature values for ", n, " samples of dim ", c.dim);
  // Inputs: the sorted probabilities and a 1 for the bias; targets: right or not.
  c.selector.clear();  // the predictor's own scores, without a selector
  std::vector<double> x(n * P, 0.0), t(n);
  std::vector<float> z(size_t(c.classes)), p(size_t(c.classes));
  const LinearHeadView v = c.view();
  for (size_t i = 0; i < n; ++i) {
    cpu::linear_head_scores(v, features.data() + i * size_t(c.dim), z.data());
    const int best = cpu::softmax(z.data(), c.classes, p.data());
    t[i] = best == labels[i] ? 1.0 : 0.0;
    int j = 0;
    for (int cls = best; j < k && cls >= 0; ++j, cls = next_in_order(z.data(), c.classes, cls))
      x[i * P + size_t(j)] = p[size_t(cls)];
    x[i * P + size_t(k)] = 1.0;
  }
  std::vector<double> w(P, 0.0);
  const double lambda = 1e-2;
  for (int it = 0; it < 50; ++it) {
    std::vector<double> g(P, 0.0), H(P * P, 0.0);
    for (size_t i = 0; i < n; ++i) {
      double a = 0;
      for (size_t q = 0; q < P; ++q) a += w[q] * x[i * P + q];
      const double s = 1.0 / (1.0 + std::exp(-a)), r = s * (1 - s);
      for (size_t q = 0; q < P; ++q) {
        g[q] += (s - t[i]) * x[i * P + q];
        for (size_t u = 0; u < P; ++u) H[q * P + u] += r * x[i * P + q] * x[i * P + u];
      }
    }
    for (size_t q = 0; q < P; ++q) {
      g[q] = g[q] / double(n) + lambda * w[q];
      for (size_t u = 0; u < P; ++u) H[q * P + u] /= double(n);
      H[q * P + q] += lambda;
    }
    // Solve H d = g (Gaussian elimination, partial pivoting; H is positive definite).
    std::vector<double> d = g;
    for (size_t col = 0; col < P; ++col) {
      size_t piv = col;
      for (size_t r = col + 1; r < P; ++r)
        if (std::fabs(H[r * P + col]) > std::fabs(H[piv * P + col])) piv = r;
      for (size_t u = 0; u < P; ++u) std::swap(H[col * P + u], H[piv * P + u]);
      std::swap(d[col], d[piv]);
      for (size_t r = col + 1; r < P; ++r) {
        const double f = H[r * P + col] / H[col * P + col];
        for (size_t u = col; u < P; ++u) H[r * P + u] -= f * H[col * P + u];
        d[r] -= f * d[col];
      }
    }
    for (size_t col = P; col-- > 0;) {
      for (size_t u = col + 1; u < P; ++u) d[col] -= H[col * P + u] * d[u];
      d[col] /= H[col * P + col];
    }
    double step = 0;
    for (size_t q = 0; q < P; ++q) {
      w[q] -= d[q];
      step = std::max(step, std::fabs(d[q]));
    }
    if (step < 1e-9) break;
  }
  c.selector.assign(w.begin(), w.end());  // float: what the kernels read
  for (float f : c.selector)
    if (!std::isfinite(f) || std::fabs(f) > 1e6f) fail("cache ", c.name, ": the selector's fit diverged");
}

ThresholdRule threshold_rule(const std::string& name) {
  for (ThresholdRule r : {ThresholdRule::kBound, ThresholdRule::kTarget, ThresholdRule::kZeroError})
    if (name == threshold_rule_name(r)) return r;
  fail("threshold rule '", name, "' (valid: bound, target, zero-error)");
}

const char* threshold_rule_name(ThresholdRule rule) {
  switch (rule) {
    case ThresholdRule::kBound:
      return "bound";
    case ThresholdRule::kTarget:
      return "target";
    case ThresholdRule::kZeroError:
      return "zero-error";
  }
  return "?";
}

double wilson_lower(double agree, double n) {
  if (!(n > 0)) return 0;
  const double z = 1.6448536269514722, p = agree / n, z2n = z * z / n;
  return (p + z2n / 2 - z * std::sqrt(p * (1 - p) / n + z2n / (4.0 * n))) / (1 + z2n);
}

void calibrate_thresholds(std::vector<ExitCache>& caches, const std::vector<std::vector<float>>& features,
                          const std::vector<int>& labels, double target, ThresholdRule rule, int min_hits) {
  if (!(target > 0 && target <= 1)) fail("calibration: target agreement ", target, " must be in (0, 1]");
  if (features.size() != caches.size())
    fail("calibration: features for ", features.size(), " exits, ", caches.size(), " caches");
  const int n = int(labels.size());
  std::vector<bool> taken(size_t(n), false);
  for (size_t e = 0; e < caches.size(); ++e) {
    ExitCache& c = caches[e];
    struct Item {
      int sample;
      float conf;
      bool agree;
    };
    std::vector<Item> items;
    int agree_all = 0;
    for (int i = 0; i < n; ++i) {
      float conf;
      const int pred = c.predict(features[e].data() + size_t(i) * size_t(c.dim), &conf);
      agree_all += pred == labels[size_t(i)];
      if (!taken[size_t(i)]) items.push_back({i, conf, pred == labels[size_t(i)]});
    }
    c.holdout_agreement = n ? double(agree_all) / n : 0;
    std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.conf > b.conf; });
    float threshold = 2.0f;  // disabled unless a threshold qualifies
    if (rule == ThresholdRule::kZeroError) {
      float worst = -1.f;
      for (const Item& it : items)
        if (!it.agree) worst = std::max(worst, it.conf);
      const float t = std::nextafter(std::max(worst, 0.f), 2.f);
      int hits = 0;
      for (const Item& it : items) hits += it.conf >= t;
      if (hits >= min_hits && t <= 1.f) threshold = t;
    } else {
      // Walk down the confidences; the lowest cut whose taken set still
      // agrees at >= target wins.  Cuts only between distinct confidences.
      int hits = 0, agree = 0;
      for (size_t k = 0; k < items.size(); ++k) {
        ++hits;
        agree += items[k].agree;
        const bool boundary = k + 1 == items.size() || items[k + 1].conf < items[k].conf;
        const double agreement = rule == ThresholdRule::kBound ? wilson_lower(agree, hits) : double(agree) / hits;
        if (boundary && hits >= min_hits && agreement >= target) threshold = items[k].conf;
      }
    }
    c.threshold = threshold;
    // The samples this exit takes, from the predictions already made.
    int hits = 0, hit_agree = 0;
    for (const Item& it : items) {
      if (it.conf < c.threshold) break;  // items are sorted by confidence
      taken[size_t(it.sample)] = true;
      ++hits;
      hit_agree += it.agree;
    }
    c.holdout_hit_rate = n ? double(hits) / n : 0;
    c.holdout_hit_agreement = hits ? double(hit_agree) / hits : 1.0;
  }
}

namespace {

// Per-exit statistics on the held-out samples for the chosen thresholds, in
// cascade order: the agreement of each predictor on every sample, and the
// hit rate and hit agreement of the samples each exit takes.
void record_holdout_stats(std::vector<ExitCache>& caches, const std::vector<std::vector<float>>& conf,
                          const std::vector<std::vector<uint8_t>>& agree) {
  const size_t n = conf.empty() ? 0 : conf[0].size();
  std::vector<bool> taken(n, false);
  for (size_t e = 0; e < caches.size(); ++e) {
    int hits = 0, hit_agree = 0, all_agree = 0;
    for (size_t i = 0; i < n; ++i) {
      all_agree += agree[e][i];
      if (taken[i] || conf[e][i] < caches[e].threshold) continue;
      taken[i] = true;
      ++hits;
      hit_agree += agree[e][i];
    }
    caches[e].holdout_agreement = n ? double(all_agree) / double(n) : 0;
    caches[e].holdout_hit_rate = n ? double(hits) / double(n) : 0;
    caches[e].holdout_hit_agreement = hits ? double(hit_agree) / hits : 1.0;
  }
}

}  // namespace

CascadeResult calibrate_cascade(std::vector<ExitCache>& caches, const std::vector<std::vector<float>>& features,
                                const std::vector<int>& labels, double target, ThresholdRule rule,
                                const CascadeCosts& costs, const std::vector<size_t>& part_ends_in, int min_hits,
                                double traffic_requests, double max_head_cost) {
  if (!(target > 0 && target <= 1)) fail("calibration: target agreement ", target, " must be in (0, 1]");
  if (!(traffic_requests >= 0 && std::isfinite(traffic_requests)))
    fail("calibration: traffic_requests ", traffic_requests, " must be >= 0 (0: the held-out samples alone)");
  if (rule == ThresholdRule::kZeroError) fail("calibration: the zero-error rule is per exit, not for a cascade");
  if (!(max_head_cost > 0)) fail("calibration: the open heads' cost limit ", max_head_cost, " must be > 0");
  const size_t exits = caches.size(), n = labels.size();
  if (features.size() != exits) fail("calibration: features for ", features.size(), " exits, ", exits, " caches");
  if (costs.through.size() != exits || costs.head.size() != exits || !(costs.full > 0))
    fail("calibration: costs for ", costs.through.size(), " exits, ", exits, " caches");
  if (n == 0) fail("calibration: no held-out samples");
  const std::vector<size_t> part_ends = part_ends_in.empty() ? std::vector<size_t>{n} : part_ends_in;
  for (size_t p = 0; p < part_ends.size(); ++p)
    if (part_ends[p] <= (p ? part_ends[p - 1] : 0) || (p + 1 == part_ends.size() && part_ends[p] != n))
      fail("calibration: parts must be non-empty, in order, and end at the ", n, " samples");
  // Every predictor's confidence and agreement on every sample, once.
  std::vector<std::vector<float>> conf(exits, std::vector<float>(n));
  std::vector<std::vector<uint8_t>> agree(exits, std::vector<uint8_t>(n));
  for (size_t e = 0; e < exits; ++e) {
    ExitCache& c = caches[e];
    if (features[e].size() != n * size_t(c.dim))
      fail("calibration: exit ", c.name, " has ", features[e].size(), " feature values for ", n, " samples");
    // Samples are independent: rows in parallel (a distance head scans
    // every key per sample).
    cpu::parallel_for(int(n), true, [&](int i) {
      const int pred = c.predict(features[e].data() + size_t(i) * size_t(c.dim), &conf[e][size_t(i)]);
      agree[e][size_t(i)] = pred == labels[size_t(i)];
    });
  }
  // Expected cost and disagreements of a set of thresholds.
  struct Outcome {
    double cost = 0;
    int errors = 0, hits = 0;
    std::vector<int> part_errors, exit_hits;
  };
  auto simulate = [&](const std::vector<float>& t) {
    Outcome o;
    o.part_errors.assign(part_ends.size(), 0);
    o.exit_hits.assign(exits, 0);
    size_t part = 0;
    for (size_t i = 0; i < n; ++i) {
      if (i == part_ends[part]) ++part;
      double heads = 0;
      size_t e = 0;
      for (; e < exits; ++e) {
        if (t[e] > 1.f) continue;
        heads += costs.head[e];
        if (conf[e][i] >= t[e]) break;
      }
      if (e < exits) {
        o.cost += costs.through[e] + heads;
        o.errors += 1 - agree[e][i];
        o.part_errors[part] += 1 - agree[e][i];
        ++o.hits;
        ++o.exit_hits[e];
      } else {
        o.cost += costs.full + heads;
      }
    }
    o.cost /= double(n) * costs.full;
    return o;
  };
  // The rule's estimate on the worst part, and that part's point estimate.
  auto worst = [&](const Outcome& o, double* point) {
    double low = 2;
    for (size_t p = 0; p < part_ends.size(); ++p) {
      const int size = int(part_ends[p] - (p ? part_ends[p - 1] : 0)), ok = size - o.part_errors[p];
      // The held-out estimate's error, and a traffic stretch's own.
      const double eff = traffic_requests > 0 ? 1 / (1.0 / size + 1 / traffic_requests) : double(size);
      const double est = rule == ThresholdRule::kBound ? wilson_lower(double(ok) / size * eff, eff) : double(ok) / size;
      if (est < low) {
        low = est;
        if (point) *point = double(ok) / size;
      }
    }
    return low;
  };
  auto meets = [&](const Outcome& o) { return worst(o, nullptr) >= target; };
  // What the open heads cost a request that no exit answers (caches that
  // never hit), as a share of the model.
  auto head_cost = [&](const std::vector<float>& th) {
    double sum = 0;
    for (size_t e = 0; e < exits; ++e)
      if (th[e] <= 1.f) sum += costs.head[e];
    return sum / costs.full;
  };
  auto affordable = [&](const std::vector<float>& th) { return head_cost(th) <= max_head_cost; };
  std::vector<float> t(exits, 2.0f);  // every exit closed
  Outcome cur = simulate(t);
  const size_t step = std::max<size_t>(1, n / 400);
  CascadeResult r;
  for (int iter = 0; iter < 100000; ++iter) {
    int best = -1;
    float best_t = 0;
    double best_score = 0;
    Outcome best_o;
    for (size_t e = 0; e < exits; ++e) {
      // The samples reaching exit e and not taken there yet, most confident first.
      std::vector<float> cand;
      for (size_t i = 0; i < n; ++i) {
        bool taken_before = false;
        for (size_t k = 0; k < e && !taken_before; ++k) taken_before = t[k] <= 1.f && conf[k][i] >= t[k];
        if (!taken_before && !(t[e] <= 1.f && conf[e][i] >= t[e])) cand.push_back(conf[e][i]);
      }
      // Moves of several sizes: opening an exit costs its head for every
      // sample that reaches it, which only a large enough first move repays.
      std::sort(cand.begin(), cand.end(), std::greater<float>());
      for (size_t size = step; size <= 64 * step; size *= 4) {
        const size_t want = t[e] > 1.f ? std::max(size, size_t(min_hits)) : size;
        if (cand.size() < want) break;
        std::vector<float> next = t;
        next[e] = cand[want - 1];
        const Outcome o = simulate(next);
        const double saved = cur.cost - o.cost;
        if (saved <= 0 || !meets(o) || !affordable(next)) continue;
        const double score = saved / (std::max(o.errors - cur.errors, 0) + 0.5);
        if (best < 0 || score > best_score) {
          best = int(e);
          best_t = next[e];
          best_score = score;
          best_o = o;
        }
      }
    }
    if (best < 0) break;
    t[size_t(best)] = best_t;
    cur = best_o;
    ++r.steps;
  }
  // Then two refinements.  Coordinate descent: each exit's threshold in turn
  // set to the cheapest feasible of (up to 256 quantiles of) its
  // confidences, or closed, the others held, until a pass changes nothing.
  // And, since a cheaper cascade may need two thresholds to move at once
  // (one exit looser, another stricter), a Lagrangian search: coordinate
  // descent on cost + lambda * disagreements without the constraint, lambda
  // bisected to the smallest that meets it, then polished.  The cheapest
  // feasible result of both wins.
  auto opened_enough = [&](const std::vector<float>& th, const Outcome& o) {
    for (size_t e = 0; e < exits; ++e)
      if (th[e] <= 1.f && o.exit_hits[e] < min_hits) return false;
    return affordable(th);
  };
  auto quantile_levels = [&](size_t most) {
    std::vector<std::vector<float>> lv(exits);
    for (size_t e = 0; e < exits; ++e) {
      std::vector<float> v = conf[e];
      std::sort(v.begin(), v.end());
      v.erase(std::unique(v.begin(), v.end()), v.end());
      const size_t count = std::min(v.size(), most);
      for (size_t k = 0; k < count; ++k) lv[e].push_back(v[k * v.size() / count]);
      lv[e].push_back(2.0f);
    }
    return lv;
  };
  const std::vector<std::vector<float>> fine = quantile_levels(256), coarse = quantile_levels(64);
  // Coordinate descent on `better` from th; o is simulate(th).
  auto descend = [&](std::vector<float>& th, Outcome& o, const std::vector<std::vector<float>>& lv, auto better) {
    for (int pass = 0; pass < 8; ++pass) {
      bool changed = false;
      for (size_t e = 0; e < exits; ++e)
        for (float level : lv[e]) {
          if (level == th[e]) continue;
          std::vector<float> next = th;
          next[e] = level;
          const Outcome c = simulate(next);
          if (better(c, o) && opened_enough(next, c)) {
            th = next;
            o = c;
            changed = true;
          }
        }
      if (!changed) break;
    }
  };
  auto cheaper_feasible = [&](const Outcome& c, const Outcome& o) { return c.cost < o.cost - 1e-12 && meets(c); };
  descend(t, cur, fine, cheaper_feasible);
  double lo = std::log(1e-3), hi = std::log(1e4);  // lambda, per unit of the mean cost, per disagreement share
  for (int it = 0; it < 14; ++it) {
    const double lambda = std::exp(0.5 * (lo + hi));
    std::vector<float> th(exits, 2.0f);
    Outcome o = simulate(th);
    auto penalised = [&](const Outcome& c, const Outcome& d) {
      return c.cost + lambda * c.errors / double(n) < d.cost + lambda * d.errors / double(n) - 1e-12;
    };
    descend(th, o, coarse, penalised);
    if (!meets(o)) {
      lo = std::log(lambda);
      continue;
    }
    hi = std::log(lambda);
    descend(th, o, fine, cheaper_feasible);
    if (o.cost < cur.cost - 1e-12) {
      t = th;
      cur = o;
    }
  }
  for (size_t e = 0; e < exits; ++e) caches[e].threshold = t[e];
  record_holdout_stats(caches, conf, agree);
  r.bound = worst(cur, &r.agreement);
  r.hit_rate = double(cur.hits) / double(n);
  r.cost = cur.cost;
  r.head_cost = head_cost(t);
  return r;
}

void CacheSet::save(const std::string& path) const {
  SafeTensorsWriter w;
  if (model_fingerprint.empty()) fail(path, ": caches have no model fingerprint (set CacheSet::model_fingerprint)");
  nlohmann::json meta = {{"format", kFormat},
                         {"model_arch", model_arch},
                         {"model_fingerprint", model_fingerprint},
                         {"target_agreement", target_agreement}};
  if (!label_prior.empty()) w.add_float("label_prior", {int64_t(label_prior.size())}, label_prior);
  nlohmann::json exit_meta = nlohmann::json::array();
  for (const ExitCache& c : exits) {
    const std::string p = "exit." + c.name + ".";
    w.add_float(p + "mean", {c.dim}, c.mean);
    w.add_float(p + "inv_std", {c.dim}, c.inv_std);
    nlohmann::json j = {{"name", c.name},
                        {"exit", c.exit},
                        {"kind", file_kind(c)},
                        {"pool", pool_name(c.pool)},
                        {"dim", c.dim},
                        {"classes", c.classes},
                        {"threshold", c.threshold},
                        {"train_agreement", c.train_agreement},
                        {"holdout_agreement", c.holdout_agreement},
                        {"holdout_hit_rate", c.holdout_hit_rate},
                        {"holdout_hit_agreement", c.holdout_hit_agreement}};
    if (c.kind == HeadKind::kLinear) {
      w.add_float(p + "weight", {c.classes, c.inputs()}, c.weight);
      w.add_float(p + "bias", {c.classes}, c.bias);
      if (c.hidden > 0) {
        j["hidden"] = c.hidden;
        w.add_float(p + "hidden_weight", {c.hidden, c.dim}, c.hidden_weight);
        w.add_float(p + "hidden_bias", {c.hidden}, c.hidden_bias);
      }
      if (!c.selector.empty()) {
        j["selector_k"] = c.selector.size() - 1;
        w.add_float(p + "selector", {int64_t(c.selector.size())}, c.selector);
      }
    } else {
      const int64_t entries = c.entries();
      w.add_float(p + "projection", {c.reduced, c.dim}, c.projection);
      w.add_float(p + "keys", {entries, c.reduced}, c.keys);
      w.add(p + "labels", DType::I32, {entries}, c.labels.data());
      w.add_float(p + "share", {entries}, c.share);
      j["reduced"] = c.reduced;
      j["entries"] = entries;
      j["neighbours"] = c.neighbours;
    }
    exit_meta.push_back(std::move(j));
  }
  meta["exits"] = exit_meta;
  if (memory) {
    const MemorySpec& m = *memory;
    w.add_float("memory.mean", {m.dim}, m.mean);
    w.add_float("memory.inv_std", {m.dim}, m.inv_std);
    meta["memory"] = {{"name", m.name},
                      {"exit", m.exit},
                      {"pool", pool_name(m.pool)},
                      {"dim", m.dim},
                      {"capacity", m.capacity},
                      {"threshold", m.threshold},
                      {"min_confidence", m.min_confidence},
                      {"calibration_hit_rate", memory_hit_rate},
                      {"calibration_hit_agreement", memory_hit_agreement}};
  }
  w.set_metadata("gati.caches", meta.dump());
  w.write(path);
}

// Features per exit a cache file may claim (a 2048-channel exit pooled on a
// 8x8 grid with max is 262144): a bound against absurd sizes, not a policy.
constexpr int64_t kMaxFeatures = int64_t(1) << 24;

CacheSet CacheSet::load(const std::string& path, const Model& model) {
  const SafeTensorsFile f = SafeTensorsFile::open(path);
  const nlohmann::json meta = json_parse(f.metadata_at("gati.caches"), path + ": metadata 'gati.caches'");
  if (!meta.is_object() || meta.value("format", "") != kFormat)
    fail(path, ": not a gati cache file of format ", kFormat);
  CacheSet s;
  const JsonFields top(meta, path + ": metadata 'gati.caches'");
  s.model_arch = top.string("model_arch");
  s.target_agreement = top.number("target_agreement", 0, 1);
  if (s.model_arch != model.arch().name)
    fail(path, ": caches were built for '", s.model_arch, "', the model is '", model.arch().name, "'");
  if (!top.has("model_fingerprint"))
    fail(path, ": has no model fingerprint (made by an older gati); rebuild it with 'gati cache build'");
  s.model_fingerprint = top.string("model_fingerprint");
  const std::string mine = fingerprint(model);
  if (s.model_fingerprint != mine)
    fail(path, ": caches were built for other weights of ", s.model_arch, " (model fingerprint ", s.model_fingerprint,
         "; ", model.path.empty() ? std::string("this model") : model.path, " has ", mine, ")");
  if (f.contains("label_prior")) {
    const int classes = model.arch().num_classes;
    s.label_prior = f.read_float("label_prior", {classes});
    double sum = 0;
    for (size_t k = 0; k < s.label_prior.size(); ++k) {
      const float p = s.label_prior[k];
      if (!(std::isfinite(p) && p >= 0 && p <= 1))
        fail(path, ": label_prior of class ", k, " is ", p, " (a share in [0, 1])");
      sum += p;
    }
    if (std::fabs(sum - 1) > 1e-3) fail(path, ": label_prior sums to ", sum, ", not 1");
  }
  const std::vector<ExitPointInfo> points = exit_points(model.net);
  const int exits = int(points.size());
  const nlohmann::json& listed = top.array("exits", true);
  for (size_t i = 0; i < listed.size(); ++i) {
    ExitCache c;
    c.name = JsonFields(listed[i], str_cat(path, ": exit ", i)).string("name");
    const JsonFields e(listed[i], str_cat(path, ": exit '", c.name, "'"));
    // The name says where; "exit" (its id) must agree where present
    // (files from before the stem exit have "block" instead).
    c.exit = exit_point_id(model.net, c.name);
    if (c.exit < 0) fail(e.where(), " is not an exit point of the model (valid: ", exit_point_names(model.net), ")");
    if (e.has("exit")) {
      const int64_t said = e.integer("exit", 0, exits - 1);
      if (said != c.exit) fail(e.where(), " says it is exit ", said, ", the model has it at ", c.exit);
    }
    if (!s.exits.empty() && s.exits.back().exit >= c.exit)
      fail(e.where(), " comes after '", s.exits.back().name, "'; exits must be listed once each, in the model's order");
    c.dim = int(e.integer("dim", 1, kMaxFeatures));
    // Files from before per-exit pooling have no "pool": global average.
    if (e.has("pool")) {
      try {
        c.pool = parse_pool(e.string("pool"));
      } catch (const Error& err) {
        fail(e.where(), ": ", err.what());
      }
    }
    const std::string kind = e.has("kind") ? e.string("kind") : std::string("learned-linear");
    if (kind == "learned-linear" || kind == "learned-mlp")
      c.kind = HeadKind::kLinear;
    else if (kind == "knn" || kind == "kmeans")
      c.kind = head_kind(kind);
    else
      fail(e.where(), " has kind '", kind, "' (valid: learned-linear, learned-mlp, knn, kmeans)");
    if (kind == "learned-mlp") c.hidden = int(e.integer("hidden", 1, kMaxHidden));
    c.classes = int(e.integer("classes", 1, 1 << 20));
    c.threshold = float(e.number("threshold", 0, 3.4e38));  // above 1: never hits
    auto optional = [&](const char* key) { return e.has(key) ? e.number(key, 0, 1) : 0.0; };
    c.train_agreement = optional("train_agreement");
    c.holdout_agreement = optional("holdout_agreement");
    c.holdout_hit_rate = optional("holdout_hit_rate");
    c.holdout_hit_agreement = optional("holdout_hit_agreement");
    check_pool_fits(e.where(), c.dim, c.pool, points[size_t(c.exit)].channels);
    if (c.classes != model.arch().num_classes)
      fail(e.where(), " has ", c.classes, " classes, the model ", model.arch().num_classes);
    const std::string p = "exit." + c.name + ".";
    c.mean = f.read_float(p + "mean", {c.dim});
    c.inv_std = f.read_float(p + "inv_std", {c.dim});
    if (c.kind == HeadKind::kLinear) {
      c.weight = f.read_float(p + "weight", {c.classes, c.inputs()});
      c.bias = f.read_float(p + "bias", {c.classes});
      if (c.hidden > 0) {
        c.hidden_weight = f.read_float(p + "hidden_weight", {c.hidden, c.dim});
        c.hidden_bias = f.read_float(p + "hidden_bias", {c.hidden});
      }
      if (e.has("selector_k"))
        c.selector = f.read_float(p + "selector", {e.integer("selector_k", 1, kMaxSelectorK) + 1});
    } else {
      c.reduced = int(e.integer("reduced", 1, c.dim));
      c.neighbours = int(e.integer("neighbours", 1, 1 << 10));
      const int64_t entries = e.integer("entries", 1, int64_t(1) << 26);
      c.projection = f.read_float(p + "projection", {c.reduced, c.dim});
      c.keys = f.read_float(p + "keys", {entries, c.reduced});
      c.labels = f.read_int32(p + "labels", {entries});
      c.share = f.read_float(p + "share", {entries});
    }
    check_head_spec(e.where(), c);
    s.exits.push_back(std::move(c));
  }
  if (top.has("memory")) {
    const JsonFields j = top.object("memory");
    MemorySpec m;
    m.name = j.string("name");
    m.exit = exit_point_id(model.net, m.name);
    if (m.exit < 0) fail(path, ": memory at '", m.name, "', which is not an exit point of the model");
    const int64_t said = j.integer("exit", 0, exits - 1);
    if (said != m.exit)
      fail(path, ": memory at '", m.name, "' says it is exit ", said, ", the model has it at ", m.exit);
    try {
      m.pool = parse_pool(j.string("pool"));
    } catch (const Error& err) {
      fail(path, ": memory: ", err.what());
    }
    m.dim = int(j.integer("dim", 1, kMaxFeatures));
    m.capacity = int(j.integer("capacity", 1, INT32_MAX));
    m.threshold = float(j.number("threshold", -3.4e38, 3.4e38));  // check_memory_spec judges it
    m.min_confidence = float(j.number("min_confidence", 0, 1));
    s.memory_hit_rate = j.has("calibration_hit_rate") ? j.number("calibration_hit_rate", 0, 1) : 0.0;
    s.memory_hit_agreement = j.has("calibration_hit_agreement") ? j.number("calibration_hit_agreement", 0, 1) : 0.0;
    try {
      check_pool_fits("memory", m.dim, m.pool, points[size_t(m.exit)].channels);
      m.mean = f.read_float("memory.mean", {m.dim});
      m.inv_std = f.read_float("memory.inv_std", {m.dim});
      check_memory_spec(m, model.net);
    } catch (const Error& err) {
      fail(path, ": ", err.what());
    }
    s.memory = std::move(m);
  }
  return s;
}

}  // namespace gati
