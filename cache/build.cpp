// Cache building; see build.h.
#include "cache/build.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

#include "engine/plan.h"
#include "engine/profile.h"
#include "loaders/trace.h"

namespace gati {

void check_data_fits(const Engine& engine, const Dataset& ds, const std::string& what) {
  const Arch& a = engine.arch();
  if (a.in_channels != ds.c || a.input_h != ds.h || a.input_w != ds.w)
    fail(what, ": model takes ", a.in_channels, "x", a.input_h, "x", a.input_w, " input, but ", ds.name, " images are ",
         ds.c, "x", ds.h, "x", ds.w);
  if (a.num_classes != ds.classes)
    fail(what, ": model has ", a.num_classes, " classes, ", ds.name, " has ", ds.classes);
}

std::vector<PoolSpec> choose_pooling(const Engine& engine, const std::string& pool, double auto_budget,
                                     int macs_per_feature) {
  const Network& net = engine.model().net;
  const std::vector<ExitPointInfo> points = exit_points(net);
  if (pool != "auto") return std::vector<PoolSpec>(points.size(), parse_pool(pool));
  if (!(auto_budget > 0)) fail("cache build: the automatic pooling's budget ", auto_budget, " must be > 0");
  const Plan plan = make_plan(net, 1, engine.arch().input_h, engine.arch().input_w);
  const double budget = auto_budget * double(plan.macs_per_sample);
  std::vector<PoolSpec> out;
  for (const ExitPointInfo& point : points) {
    PoolSpec chosen;  // global average when nothing richer fits
    for (const char* name : {"mix4x4", "avg4x4", "mix2x2", "avg2x2"}) {
      const PoolSpec p = parse_pool(name);
      const int dim = p.features(point.channels);
      if (dim <= kMaxAutoPoolDim && double(dim) * macs_per_feature <= budget) {
        chosen = p;
        break;
      }
    }
    out.push_back(chosen);
  }
  return out;
}

const char* cost_model_name(CostModel model) { return model == CostModel::kMacs ? "macs" : "measured"; }

CostModel cost_model(const std::string& name) {
  for (CostModel m : {CostModel::kMeasured, CostModel::kMacs})
    if (name == cost_model_name(m)) return m;
  fail("cost model '", name, "' (valid: measured, macs)");
}

namespace {

CascadeCosts macs_costs(const Engine& engine, const std::vector<ExitCache>& caches) {
  const Plan plan = make_plan(engine.model().net, 1, engine.arch().input_h, engine.arch().input_w);
  CascadeCosts c;
  c.full = double(plan.macs_per_sample);
  for (const ExitCache& cache : caches) {
    c.through.push_back(double(macs_through(plan, cache.exit)));
    c.head.push_back(double(exit_head_macs(plan.exits.at(size_t(cache.exit)).shape, cache)));
  }
  return c;
}

// Median per-step times of batch-1 runs with every head attached and never
// firing: the network's steps and each head's exit and compaction.
CascadeCosts measured_costs(const Engine& engine, const std::vector<ExitCache>& caches, const float* sample) {
  std::vector<ExitHeadSpec> specs;
  for (const ExitCache& c : caches) {
    specs.push_back(c.head_spec());
    specs.back().threshold = 2.0f;
  }
  const auto heads = engine.make_exit_heads(specs);
  Session session = engine.session();
  RunOptions with, without;
  with.heads = heads.get();
  const Arch& a = engine.arch();
  // Runs with every head attached and none, in turns (this machine's speed
  // drifts): a head's cost is its exit entries plus what its pooling adds
  // to the convolution that writes the block's output (the CPU pools in
  // that convolution's epilogue), the network's the steps without heads.
  constexpr int kWarmup = 5, kRuns = 31;
  std::vector<std::vector<LayerTiming>> runs[2];
  for (int r = 0; r < kWarmup + kRuns; ++r)
    for (int k = 0; k < 2; ++k) {
      RunOptions& opts = k == 0 ? with : without;
      std::vector<LayerTiming> t;
      opts.timings = &t;
      SampleResult res;
      session.run(sample, 1, a.in_channels, a.input_h, a.input_w, &res, nullptr, opts);
      if (r >= kWarmup) runs[k].push_back(std::move(t));
    }
  const std::vector<LayerProfile> layout = summarize(runs[0], a.name, "", 1, a.input_h, a.input_w).layers;
  const std::vector<LayerProfile> bare = summarize(runs[1], a.name, "", 1, a.input_h, a.input_w).layers;
  std::map<std::string, double> bare_ms;
  for (const LayerProfile& t : bare) bare_ms[t.name] = t.median_ms;
  CascadeCosts c;
  c.through.assign(caches.size(), 0);
  c.head.assign(caches.size(), 0);
  // Exit entries are named "<exit>.exit" and "<exit>.compact".
  auto cache_named = [&](const std::string& entry, const std::string& suffix) {
    for (size_t e = 0; e < caches.size(); ++e)
      if (entry == caches[e].name + suffix) return int(e);
    return -1;
  };
  double so_far = 0;
  for (size_t k = 0; k < layout.size(); ++k) {
    const LayerProfile& t = layout[k];
    if (t.kind == "exit" || t.kind == "compact") {
      const int e = cache_named(t.name, "." + t.kind);
      if (e >= 0) c.head[size_t(e)] += t.median_ms;
      continue;
    }
    const auto b = bare_ms.find(t.name);
    const double plain = b != bare_ms.end() ? b->second : t.median_ms;
    so_far += plain;
    // The output is complete after the step before its exit entry, which
    // also pooled it for the head.
    if (k + 1 < layout.size() && layout[k + 1].kind == "exit") {
      const int e = cache_named(layout[k + 1].name, ".exit");
      if (e >= 0) {
        c.through[size_t(e)] = so_far;
        c.head[size_t(e)] += std::max(0.0, t.median_ms - plain);
      }
    }
  }
  c.full = so_far;
  return c;
}

// The memory at the stem, calibrated on a locality trace over the held-out
// images (raw pixels in `data`, items train .. train + holdout), given the
// cache models that answer before the full model would store an answer.
MemoryStats build_memory(const Engine& engine, const Dataset& data, const BuildOptions& o, CacheSet& set) {
  if (o.memory_requests < 1) fail("cache build: --memory-requests must be at least 1");
  Dataset hold;
  hold.name = data.name + " (held out)";
  hold.n = o.holdout;
  hold.c = data.c;
  hold.h = data.h;
  hold.w = data.w;
  hold.classes = data.classes;
  hold.images.assign(data.image(o.train), data.image(o.train) + size_t(o.holdout) * data.image_floats());
  hold.labels.assign(data.labels.begin() + o.train, data.labels.begin() + o.train + o.holdout);
  const Trace trace = make_trace("locality", hold, o.memory_requests, 777);
  const int n = int(trace.requests.size());
  std::vector<float> images(size_t(n) * data.image_floats());
  for (int i = 0; i < n; ++i) render(hold, trace.requests[size_t(i)], images.data() + size_t(i) * data.image_floats());
  engine.normalize(images.data(), n);

  const std::vector<ExitPointInfo> points = exit_points(engine.model().net);
  MemorySpec spec;
  spec.exit = 0;
  spec.name = points[0].name;
  spec.pool = parse_pool(o.memory_pool);
  spec.dim = spec.pool.features(points[0].channels);
  spec.capacity = o.memory_capacity;
  spec.min_confidence = o.memory_min_confidence;
  std::vector<PoolSpec> cascade_pools(points.size());
  for (const ExitCache& c : set.exits) cascade_pools[size_t(c.exit)] = c.pool;
  const CollectedFeatures cascade = collect_features(engine, images.data(), n, o.batch, cascade_pools);
  const CollectedFeatures at_memory =
      collect_features(engine, images.data(), n, o.batch, std::vector<PoolSpec>(points.size(), spec.pool));

  MemoryStream stream;
  stream.features = at_memory.per_exit[size_t(spec.exit)];
  stream.full_label = cascade.full_labels;
  stream.full_conf = cascade.full_conf;
  stream.reaches.assign(size_t(n), 1);  // the memory comes first, at the stem
  stream.answered.assign(size_t(n), 0);
  for (int i = 0; i < n; ++i)
    for (const ExitCache& c : set.exits) {
      if (!c.enabled()) continue;
      float conf;
      c.predict(cascade.per_exit[size_t(c.exit)].data() + size_t(i) * size_t(c.dim), &conf);
      if (conf >= c.threshold) {
        stream.answered[size_t(i)] = 1;
        break;
      }
    }
  const MemoryStats st = calibrate_memory(spec, stream, o.target_agreement);
  if (spec.threshold < 0) return st;  // it would never answer: not worth a lookup per request
  set.memory = spec;
  set.memory_hit_rate = st.hit_rate();
  set.memory_hit_agreement = st.hit_agreement();
  return st;
}

}  // namespace

CascadeCosts cascade_costs(const Engine& engine, const std::vector<ExitCache>& caches, CostModel model,
                           const float* sample) {
  return model == CostModel::kMacs ? macs_costs(engine, caches) : measured_costs(engine, caches, sample);
}

BuildResult build_caches(const Engine& engine, const Dataset& data, const BuildOptions& o) {
  check_data_fits(engine, data, engine.model().path.empty() ? engine.arch().name : engine.model().path);
  if (o.train < 1 || o.holdout < 1) fail("cache build: --train and --holdout must be at least 1");
  if (size_t(o.train) + size_t(o.holdout) > size_t(data.n))
    fail("cache build: --train ", o.train, " + --holdout ", o.holdout, " = ", o.train + o.holdout, " exceeds the ",
         data.n, " images of ", data.name);
  const auto t0 = std::chrono::steady_clock::now();
  const int n = o.train + o.holdout;
  std::vector<float> images(data.images.begin(), data.images.begin() + long(size_t(n) * data.image_floats()));
  engine.normalize(images.data(), n);
  // Each exit's kind and pooling: the build's, or its own (o.exits).
  const std::vector<ExitPointInfo> points = exit_points(engine.model().net);
  for (const auto& [name, setting] : o.exits)
    if (exit_point_id(engine.model().net, name) < 0)
      fail("cache build: exit '", name,
           "' in the configuration is not an exit point of the model (valid: ", exit_point_names(engine.model().net),
           ")");
  std::vector<ExitSetting> settings(points.size());
  bool any = false;
  for (size_t e = 0; e < points.size(); ++e) {
    const auto it = o.exits.find(points[e].name);
    if (it != o.exits.end()) settings[e] = it->second;
    if (!settings[e].kind) settings[e].kind = o.kind;
    if (!settings[e].hidden) settings[e].hidden = o.hidden;
    if (*settings[e].hidden < 0 || *settings[e].hidden > kMaxHidden)
      fail("cache build: exit '", points[e].name, "': ", *settings[e].hidden, " hidden units (valid: 0 to ", kMaxHidden,
           ")");
    any = any || settings[e].enabled;
  }
  if (!any) fail("cache build: the configuration switches every exit off; there is nothing to build");
  // "auto" pooling weighs each head's cost per feature: its classes (a
  // linear head), its hidden units (an MLP) or its reduced dimensions (a
  // distance head).  Chosen once per cost that needs it.
  std::map<int, std::vector<PoolSpec>> chosen;
  std::vector<PoolSpec> pools(points.size());
  for (size_t e = 0; e < points.size(); ++e) {
    if (!settings[e].pool.empty()) {
      pools[e] = parse_pool(settings[e].pool);
      continue;
    }
    const int per_feature = *settings[e].kind != HeadKind::kLinear ? o.approx.reduced
                            : *settings[e].hidden > 0              ? *settings[e].hidden
                                                                   : engine.arch().num_classes;
    std::vector<PoolSpec>& c = chosen[per_feature];
    if (c.empty()) c = choose_pooling(engine, o.pool, o.auto_pool_budget, per_feature);
    pools[e] = c[e];
  }
  CollectedFeatures all = collect_features(engine, images.data(), n, o.batch, pools, o.progress);

  BuildResult out;
  CacheSet& set = out.caches;
  set.model_arch = engine.arch().name;
  set.model_fingerprint = fingerprint(engine.model());
  set.target_agreement = o.target_agreement;
  std::vector<std::vector<float>> hold_features;
  const std::vector<int> train_labels(all.full_labels.begin(), all.full_labels.begin() + o.train);
  const std::vector<int> hold_labels(all.full_labels.begin() + o.train, all.full_labels.end());
  const std::vector<float> train_logits =
      o.sgd.distill_alpha > 0
          ? std::vector<float>(all.full_logits.begin(),
                               all.full_logits.begin() + long(size_t(o.train) * size_t(engine.arch().num_classes)))
          : std::vector<float>{};
  std::vector<size_t> label_count(size_t(engine.arch().num_classes), 0);
  for (int y : train_labels) ++label_count[size_t(y)];
  for (size_t k : label_count) set.label_prior.push_back(float(double(k) / double(train_labels.size())));
  std::vector<size_t> built;  // the exits with a cache, in order
  const size_t to_build =
      size_t(std::count_if(settings.begin(), settings.end(), [](const ExitSetting& s) { return s.enabled; }));
  for (size_t e = 0; e < all.per_exit.size(); ++e) {
    if (!settings[e].enabled) continue;
    if (o.train_progress) o.train_progress(built.size(), to_build);
    built.push_back(e);
    const bool learned = *settings[e].kind == HeadKind::kLinear;
    ExitCache c;
    c.name = points[e].name;
    c.exit = int(e);
    c.pool = pools[e];
    c.dim = all.dims[e];
    c.classes = engine.arch().num_classes;
    if (learned) c.hidden = *settings[e].hidden;
    const auto split = all.per_exit[e].begin() + long(size_t(o.train) * size_t(c.dim));
    const std::vector<float> train(all.per_exit[e].begin(), split);
    hold_features.emplace_back(split, all.per_exit[e].end());
    if (learned) {
      out.loss.push_back(train_exit_cache(c, train, train_labels, o.sgd, train_logits));
    } else {
      ApproxOptions a = o.approx;
      a.kind = *settings[e].kind;
      a.seed = o.approx.seed + uint32_t(e);
      build_approx_cache(c, train, train_labels, a);
      out.loss.emplace_back();
    }
    set.exits.push_back(std::move(c));
  }
  if (o.train_progress) o.train_progress(built.size(), to_build);
  std::vector<int> calib_labels = hold_labels;
  if (o.perturbed_holdout) {
    // The held-out images again, perturbed as the locality trace perturbs
    // requests; their labels are the full model's on the perturbed image.
    std::vector<float> shifted(size_t(o.holdout) * data.image_floats());
    std::mt19937 rng(12345);
    std::uniform_int_distribution<int> shift(-2, 2);
    for (int i = 0; i < o.holdout; ++i) {
      Request r;
      r.index = o.train + i;
      r.dx = shift(rng);
      r.dy = shift(rng);
      r.noise = 0.02f;
      r.noise_seed = uint32_t(rng());
      render(data, r, shifted.data() + size_t(i) * data.image_floats());
    }
    engine.normalize(shifted.data(), o.holdout);
    const CollectedFeatures more = collect_features(engine, shifted.data(), o.holdout, o.batch, pools);
    for (size_t k = 0; k < built.size(); ++k)
      hold_features[k].insert(hold_features[k].end(), more.per_exit[built[k]].begin(), more.per_exit[built[k]].end());
    calib_labels.insert(calib_labels.end(), more.full_labels.begin(), more.full_labels.end());
  }
  if (o.selector > 0)  // on the clean held-out images: the first o.holdout rows
    for (size_t k = 0; k < set.exits.size(); ++k)
      if (set.exits[k].kind == HeadKind::kLinear)
        fit_selector(set.exits[k],
                     std::vector<float>(hold_features[k].begin(),
                                        hold_features[k].begin() + long(size_t(o.holdout) * size_t(set.exits[k].dim))),
                     hold_labels, o.selector);
  if (o.cascade && o.rule != ThresholdRule::kZeroError)
    out.cascade = calibrate_cascade(
        set.exits, hold_features, calib_labels, o.target_agreement, o.rule,
        cascade_costs(engine, set.exits, o.cost, images.data() + size_t(o.train) * data.image_floats()),
        o.perturbed_holdout ? std::vector<size_t>{size_t(o.holdout), 2 * size_t(o.holdout)} : std::vector<size_t>{}, 20,
        o.traffic_requests, o.never_hit_budget);
  else
    calibrate_thresholds(set.exits, hold_features, calib_labels, o.target_agreement, o.rule);
  if (o.memory) out.memory = build_memory(engine, data, o, set);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace gati
