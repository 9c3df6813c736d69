// What the CPU and GPU benchmark suites share: random inputs, whole-model
// latency through an Engine, the never-firing exit heads that measure what
// consulting caches costs, and the --models/--batches/--exits command line.
#pragma once

#include <benchmark/benchmark.h>
#include <chrono>
#include <cstdint>

#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>

#include "cache/learned_cache.h"
#include "engine/engine.h"

namespace gati::bench {

inline std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

inline std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

inline void BM_Model(benchmark::State& state, std::shared_ptr<Engine> engine, int batch) {
  const Arch& a = engine->arch();
  const std::vector<float> x =
      random_floats(size_t(batch) * size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w), 7);
  engine->infer(x.data(), batch);  // plan + warm caches
  for (auto _ : state) benchmark::DoNotOptimize(engine->infer(x.data(), batch));
  const Plan p = make_plan(engine->model().net, batch, a.input_h, a.input_w);
  state.counters["images/s"] = benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(p.macs_per_sample) * batch / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// A random linear head over `channels` pooled as `pool` says (with `hidden`
// > 0 an MLP with that many hidden units); threshold > 1 never fires.
inline ExitHeadSpec random_head(int channels, int classes, const PoolSpec& pool = {}, int hidden = 0) {
  ExitHeadSpec h;
  h.pool = pool;
  h.dim = pool.features(channels);
  h.classes = classes;
  h.mean = random_floats(size_t(h.dim), 1);
  h.inv_std.assign(size_t(h.dim), 1.0f);
  h.hidden = hidden;
  h.hidden_weight = random_floats(size_t(hidden) * size_t(h.dim), 4);
  h.hidden_bias = random_floats(size_t(hidden), 5);
  h.weight = random_floats(size_t(h.inputs()) * size_t(h.classes), 2);
  h.bias = random_floats(size_t(h.classes), 3);
  h.threshold = 2.0f;
  round_weights_for_serving(h);  // as gati cache build leaves them
  return h;
}

// A random linear head at every exit point (the stem and every block), never firing.
inline std::vector<ExitHeadSpec> never_firing_heads(const Model& m) {
  std::vector<ExitHeadSpec> heads;
  for (const ExitPointInfo& p : exit_points(m.net)) {
    heads.push_back(random_head(p.channels, m.arch().num_classes));
    heads.back().exit = int(heads.size()) - 1;
  }
  return heads;
}

// A device model holding no real network, for the ops alone: one exit point
// (exit 0, after a 1x1 "stem" convolution) with `channels` channels.
inline Model op_model(int channels) {
  Model m;
  m.net.arch.num_classes = 1;
  m.net.features = 1;
  ConvSpec stem;
  stem.name = "stem";
  stem.cin = 1;
  stem.cout = channels;
  m.net.convs.push_back(stem);
  m.convs.push_back({std::vector<float>(size_t(channels), 1.f), std::vector<float>(size_t(channels), 0.f)});
  m.fc_weight = {1.f};
  m.fc_bias = {0.f};
  return m;
}

// {h, c, classes, n, pool}: one exit head on a backend, pool 0 = avg,
// 1 = mix2x2, 2 = mix4x4 (the demo caches' default).
inline const char* kBenchPools[] = {"avg", "mix2x2", "mix4x4"};

inline void BM_ModelExits(benchmark::State& state, std::shared_ptr<Engine> engine, int batch, bool attached,
                          std::vector<ExitHeadSpec> specs) {
  const Arch& a = engine->arch();
  const std::vector<float> x =
      random_floats(size_t(batch) * size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w), 7);
  const auto heads = engine->make_exit_heads(std::move(specs));
  Session session = engine->session();
  RunOptions opts;
  if (attached) opts.heads = heads.get();
  std::vector<SampleResult> results(static_cast<size_t>(batch));
  session.run(x.data(), batch, a.in_channels, a.input_h, a.input_w, results.data(), nullptr, opts);
  for (auto _ : state) {
    session.run(x.data(), batch, a.in_channels, a.input_h, a.input_w, results.data(), nullptr, opts);
    benchmark::DoNotOptimize(results.data());
  }
  state.counters["images/s"] = benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
}

// Caches off and never hitting in turns within one benchmark, each
// iteration one run of each (their order alternating), on one session: on
// a shared machine whose speed drifts by 10-30% between runs, the ratio of
// two neighbouring runs is steadier than two medians taken apart.
// Counters: off_ms and never_ms (means), overhead_% (never / off - 1).
inline void BM_ModelExitsPaired(benchmark::State& state, std::shared_ptr<Engine> engine, int batch,
                                std::vector<ExitHeadSpec> specs) {
  const Arch& a = engine->arch();
  const std::vector<float> x =
      random_floats(size_t(batch) * size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w), 7);
  const auto heads = engine->make_exit_heads(std::move(specs));
  Session session = engine->session();
  RunOptions off, never;
  never.heads = heads.get();
  std::vector<SampleResult> results(static_cast<size_t>(batch));
  for (const RunOptions* o : {&off, &never})  // plans and scratch for both
    session.run(x.data(), batch, a.in_channels, a.input_h, a.input_w, results.data(), nullptr, *o);
  double ms[2] = {0, 0};
  int64_t turn = 0;
  for (auto _ : state)
    for (int k = 0; k < 2; ++k) {
      const int which = int((turn + k) % 2);  // 0 = off, 1 = never
      const auto t0 = std::chrono::steady_clock::now();
      session.run(x.data(), batch, a.in_channels, a.input_h, a.input_w, results.data(), nullptr, which ? never : off);
      ms[which] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      benchmark::DoNotOptimize(results.data());
      if (k == 1) ++turn;
    }
  const double runs = double(state.iterations());
  state.counters["off_ms"] = ms[0] / runs;
  state.counters["never_ms"] = ms[1] / runs;
  state.counters["overhead_%"] = 100.0 * (ms[1] / ms[0] - 1.0);
}

struct Args {
  std::vector<std::string> models;
  std::vector<int> batches = {1};
  bool exits = false;
  bool fp16 = false;        // CUDA: FP16 storage (EngineOptions::fp16)
  std::string caches;       // a cache file: its open exits' heads, never firing, instead of random ones
  std::vector<char*> rest;  // for Google Benchmark
};

inline Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--models=", 9) == 0) {
      a.models = split(argv[i] + 9);
    } else if (std::strncmp(argv[i], "--batches=", 10) == 0) {
      a.batches.clear();
      for (const auto& b : split(argv[i] + 10)) a.batches.push_back(std::stoi(b));
    } else if (std::strcmp(argv[i], "--exits") == 0) {
      a.exits = true;
    } else if (std::strncmp(argv[i], "--caches=", 9) == 0) {
      a.caches = argv[i] + 9;
    } else if (std::strcmp(argv[i], "--fp16") == 0) {
      a.fp16 = true;
    } else {
      a.rest.push_back(argv[i]);
    }
  }
  return a;
}

// model/<arch>/batch:<b> and, with --exits, exits/<arch>/batch:<b>/caches:{off,never}
// and exits/<arch>/batch:<b>/paired.
inline void register_models(const Args& a, const std::string& device) {
  for (const std::string& path : a.models) {
    EngineOptions eo;
    eo.device = device;
    eo.fp16 = a.fp16;
    auto engine = std::make_shared<Engine>(path, eo);
    // The heads that never fire: the cache file's open ones (as it would
    // serve them, thresholds raised), or a random one at every exit point.
    std::vector<ExitHeadSpec> specs;
    if (a.exits && !a.caches.empty()) {
      specs = CacheSet::load(a.caches, engine->model()).head_specs();
      for (ExitHeadSpec& h : specs) h.threshold = 2.0f;
    } else if (a.exits) {
      specs = never_firing_heads(engine->model());
    }
    for (int b : a.batches)
      benchmark::RegisterBenchmark(("model/" + engine->arch().name + "/batch:" + std::to_string(b)).c_str(), BM_Model,
                                   engine, b)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    if (a.exits)
      for (int b : a.batches) {
        for (bool attached : {false, true})
          benchmark::RegisterBenchmark(("exits/" + engine->arch().name + "/batch:" + std::to_string(b) +
                                        (attached ? "/caches:never" : "/caches:off"))
                                           .c_str(),
                                       BM_ModelExits, engine, b, attached, specs)
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        benchmark::RegisterBenchmark(
            ("exits/" + engine->arch().name + "/batch:" + std::to_string(b) + "/paired").c_str(), BM_ModelExitsPaired,
            engine, b, specs)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
  }
}

inline int run_benchmarks(Args& a) {
  int rest_argc = int(a.rest.size());
  benchmark::Initialize(&rest_argc, a.rest.data());
  if (benchmark::ReportUnrecognizedArguments(rest_argc, a.rest.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace gati::bench
