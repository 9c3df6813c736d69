// The `gati` command line: info, infer, run, profile, devices, cache build,
// serve-sim.
//
// Thin by design: each subcommand declares its options once (CLI11 gives
// parsing, help and valid values from that declaration) and calls library
// functions; anything the CLI can do, the C++ API can.  Every error is one
// line on stderr, "gati: error: ...", and exit status 1; --help exits 0.
// `gati infer` is the stable contract the parity tests use: a float32 tensor
// named "input" [N, C, H, W] in, "logits" [N, classes] out.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "cache/build.h"
#include "cache/config.h"
#include "cache/replay.h"
#include "engine/engine.h"
#include "engine/profile.h"
#include "kernels/cuda/cuda_device.h"
#include "loaders/fashion_mnist.h"
#include "loaders/trace.h"
#include "tools/cli_util.h"
#include "weights/safetensors.h"

namespace gati {
namespace {

using clock_type = std::chrono::steady_clock;

struct Common {
  std::string device = "cpu";
  int threads = 0;
  bool tf32 = false, fp16 = false;
  EngineOptions engine() const {
    EngineOptions o;
    o.device = device;
    o.threads = threads;
    o.tf32 = tf32;
    o.fp16 = fp16;
    return o;
  }
};

// An output given as "" (an unset shell variable) is refused, not taken as
// "not given".
CLI::Validator output_path() {
  return CLI::Validator([](std::string& v) { return v.empty() ? std::string("an empty path") : std::string(); },
                        "PATH");
}

// NaN passes CLI11's Range (every comparison with it is false): refuse it,
// and infinities, before the range check.
CLI::Validator finite_number() {
  return CLI::Validator(
      [](std::string& v) {
        char* end = nullptr;
        const double x = std::strtod(v.c_str(), &end);
        return end != v.c_str() && *end == 0 && std::isfinite(x) ? std::string() : "must be a finite number, got " + v;
      },
      "FINITE");
}

void add_common(CLI::App* app, Common& c) {
  app->add_option("--device", c.device, "backend")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->capture_default_str();
  app->add_option("--threads", c.threads, "CPU threads (0 = all cores)")->check(CLI::Range(0, 1024));
  app->add_flag("--tf32", c.tf32, "CUDA: allow TF32 tensor cores in FP32 convolutions");
  app->add_flag("--fp16", c.fp16,
                "CUDA: FP16 activations and weights (tensor cores, FP32 accumulation, NHWC; within 1e-2 of FP32)");
}

void data_option(CLI::App* app, std::string& data, std::string& dir, bool required = true) {
  app->add_option("--data", data, "data set")->check(CLI::IsMember({"fashion-mnist"}))->required(required);
  app->add_option("--data-dir", dir,
                  "folder with the IDX files (default $GATI_FASHION_MNIST or "
                  "/usr/share/datasets/fashion-mnist)");
}

// ---- info ---------------------------------------------------------------------------

struct InfoOpts {
  std::string model;
  bool json = false;
};

int cmd_info(const InfoOpts& o) {
  const Model m = load_model(o.model);
  const Arch& arch = m.arch();
  const Plan plan = make_plan(m.net, 1, arch.input_h, arch.input_w);
  std::vector<int64_t> block_macs(m.net.blocks.size(), 0);
  int64_t stem = 0, head = 0;
  for (const Step& s : plan.steps) {
    if (s.block >= 0)
      block_macs[size_t(s.block)] += s.macs_per_sample;
    else if (s.kind == StepKind::Classifier)
      head += s.macs_per_sample;
    else
      stem += s.macs_per_sample;
  }
  if (o.json) {
    nlohmann::json j = nlohmann::json::parse(arch.to_json());
    j["parameters"] = m.parameters;
    j["macs"] = plan.macs_per_sample;
    j["convolutions"] = m.net.convs.size();
    nlohmann::json blocks = nlohmann::json::array();
    for (size_t b = 0; b < m.net.blocks.size(); ++b) {
      const ExitPoint& e = plan.exits[b + 1];  // exit 0 is the stem
      blocks.push_back({{"name", e.name}, {"macs", block_macs[b]}, {"output", {e.shape.c, e.shape.h, e.shape.w}}});
    }
    j["blocks"] = blocks;
    j["stem_macs"] = stem;
    j["head_macs"] = head;
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::string layers;
  for (size_t i = 0; i < arch.layers.size(); ++i) layers += (i ? "-" : "") + std::to_string(arch.layers[i]);
  std::printf("%s: %s\n", m.path.c_str(), arch.name.c_str());
  std::printf("  %s blocks %s, stem %s, input %dx%dx%d, %d classes\n",
              arch.block == BlockKind::Basic ? "basic" : "bottleneck", layers.c_str(),
              arch.stem == StemKind::ImageNet ? "imagenet (7x7/2 + maxpool)" : "cifar (3x3/1)", arch.in_channels,
              arch.input_h, arch.input_w, arch.num_classes);
  std::printf(
      "  %zu convolutions, %zu residual blocks, %zu exit points (the stem and each block), %.3fM parameters, "
      "%.3f GMACs per image\n\n",
      m.net.convs.size(), m.net.blocks.size(), plan.exits.size(), double(m.parameters) / 1e6,
      double(plan.macs_per_sample) / 1e9);
  std::printf("  %-12s %-16s %12s %8s\n", "block", "output (CxHxW)", "MMACs", "cum %");
  double cum = double(stem);
  const double total = double(plan.macs_per_sample);
  auto shape_of = [](const Act& a) { return str_cat(a.c, "x", a.h, "x", a.w); };
  std::printf("  %-12s %-16s %12.2f %7.1f%%\n", "stem", shape_of(plan.exits[0].shape).c_str(), double(stem) / 1e6,
              100.0 * cum / total);
  for (size_t b = 0; b < m.net.blocks.size(); ++b) {
    const ExitPoint& e = plan.exits[b + 1];
    cum += double(block_macs[b]);
    std::printf("  %-12s %-16s %12.2f %7.1f%%\n", e.name.c_str(), shape_of(e.shape).c_str(),
                double(block_macs[b]) / 1e6, 100.0 * cum / total);
  }
  std::printf("  %-12s %-16s %12.2f %7.1f%%\n", "fc", "", double(head) / 1e6, 100.0);
  std::printf("  %-12s %-16s %12.2f\n", "total", "", total / 1e6);
  return 0;
}

// ---- infer --------------------------------------------------------------------------

struct InferOpts {
  Common common;
  std::string model, input, output;
  bool normalize = false;
};

int cmd_infer(const InferOpts& o) {
  cli::check_outputs({{"--output", o.output}}, {o.input, o.model});
  Engine engine(o.model, o.common.engine());
  const SafeTensorsFile in = SafeTensorsFile::open(o.input);
  if (!in.contains("input"))
    fail(o.input, ": no tensor named 'input' (found: ", in.names().empty() ? "none" : in.names()[0], ")");
  const TensorInfo& info = in.info("input");
  if (info.dtype != DType::F32) fail(o.input, ": 'input' is ", dtype_name(info.dtype), "; expected F32");
  if (info.shape.size() != 4) fail(o.input, ": 'input' has shape ", shape_str(info.shape), "; expected [N, C, H, W]");
  std::vector<float> x = in.read_float("input", info.shape);
  const int n = int(info.shape[0]), c = int(info.shape[1]), h = int(info.shape[2]), w = int(info.shape[3]);
  if (o.normalize) {
    if (h != engine.arch().input_h || w != engine.arch().input_w)
      fail("--normalize: input is ", h, "x", w, " but the model's normalisation is for ", engine.arch().input_h, "x",
           engine.arch().input_w);
  }
  std::vector<float> logits;
  try {
    if (o.normalize) {
      engine.check_input(x.data(), n, c, h, w);
      engine.normalize(x.data(), n);
    }
    logits = engine.infer(x.data(), n, c, h, w);
  } catch (const Error& e) {  // the input's own faults name its file; others (memory, device) stand as they are
    const std::string what = e.what();
    if (what.rfind("input:", 0) == 0 || what.rfind("normalize:", 0) == 0) fail(o.input, ": ", what);
    throw;
  }
  SafeTensorsWriter out;
  out.add_float("logits", {n, engine.arch().num_classes}, logits);
  out.set_metadata("gati.model", o.model);
  out.write(o.output);
  std::fprintf(stderr, "wrote %s: logits [%d, %d]\n", o.output.c_str(), n, engine.arch().num_classes);
  return 0;
}

// ---- run ----------------------------------------------------------------------------

struct RunOpts {
  Common common;
  std::string model, data, data_dir, split = "test", json, caches;
  int batch = 1, limit = 0, warmup = 2;
};

int cmd_run(const RunOpts& o) {
  const std::string data_dir = o.data_dir.empty() ? default_fashion_mnist_dir() : o.data_dir;
  std::vector<std::string> inputs = fashion_mnist_files(data_dir);
  inputs.push_back(o.model);
  inputs.push_back(o.caches);
  cli::check_outputs({{"--json", o.json}}, inputs);
  Engine engine(o.model, o.common.engine());
  const Dataset ds = load_fashion_mnist(data_dir, o.split, o.limit);
  check_data_fits(engine, ds, o.model);
  const Arch& arch = engine.arch();
  std::shared_ptr<const ExitHeads> heads;
  CacheSet caches;
  if (!o.caches.empty()) {
    caches = CacheSet::load(o.caches, engine.model());
    heads = engine.make_exit_heads(caches.head_specs());
  }
  RunOptions run_opts;
  run_opts.heads = heads.get();
  Session session = engine.session();
  std::unique_ptr<AnswerMemory> memory;
  if (caches.memory) memory = session.make_memory(*caches.memory);
  run_opts.memory = memory.get();
  std::vector<float> x;
  std::vector<SampleResult> results(size_t(o.batch));
  std::vector<double> latency_ms;
  std::vector<int64_t> exit_hits(exit_points(engine.model().net).size(), 0);
  int correct = 0;
  // Untimed runs of the first batch (without the memory: nothing it keeps
  // sees them): plans and graphs are built here, not in the latencies.
  // The nb images from i, normalised into x.
  auto load_batch = [&](int i, int nb) {
    x.assign(ds.image(i), ds.image(i) + size_t(nb) * ds.image_floats());
    engine.normalize(x.data(), nb);
  };
  double warmup_s = 0;
  if (o.warmup > 0 && ds.n > 0) {
    const int nb = std::min(o.batch, ds.n);
    load_batch(0, nb);
    RunOptions plain = run_opts;
    plain.memory = nullptr;
    const auto w0 = clock_type::now();
    for (int k = 0; k < o.warmup; ++k)
      session.run(x.data(), nb, arch.in_channels, arch.input_h, arch.input_w, results.data(), nullptr, plain);
    warmup_s = std::chrono::duration<double>(clock_type::now() - w0).count();
  }
  cli::Progress progress(size_t(ds.n), "run");
  const auto t0 = clock_type::now();
  for (int i = 0; i < ds.n; i += o.batch) {
    const int nb = std::min(o.batch, ds.n - i);
    load_batch(i, nb);
    const auto start = clock_type::now();
    session.run(x.data(), nb, arch.in_channels, arch.input_h, arch.input_w, results.data(), nullptr, run_opts);
    latency_ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - start).count());
    for (int j = 0; j < nb; ++j) {
      correct += results[size_t(j)].label == ds.labels[size_t(i + j)];
      if (results[size_t(j)].exit >= 0) exit_hits[size_t(results[size_t(j)].exit)]++;
    }
    progress.update(size_t(i + nb), str_cat("acc ", double(correct) / double(i + nb)));
  }
  progress.finish();
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  const double acc = double(correct) / double(ds.n);
  const double p50 = percentile(latency_ms, 50), p99 = percentile(latency_ms, 99);
  double mean = 0;
  for (double v : latency_ms) mean += v;
  mean /= double(latency_ms.size());
  int64_t hits = 0;
  for (int64_t h : exit_hits) hits += h;
  std::printf("model     %s (%s)\n", o.model.c_str(), arch.name.c_str());
  std::printf("data      %s, %d images, batch %d, device %s\n", ds.name.c_str(), ds.n, o.batch,
              engine.device_name().c_str());
  std::printf("accuracy  %.4f (%d/%d)\n", acc, correct, ds.n);
  if (heads)
    std::printf("exits     %.4f of the images left early (caches %s)\n", double(hits) / ds.n, o.caches.c_str());
  std::printf("latency   per batch: mean %.3f ms, p50 %.3f ms, p99 %.3f ms", mean, p50, p99);
  if (o.warmup > 0) std::printf(" (after %d untimed warm-up runs, %.3f s)", o.warmup, warmup_s);
  std::printf("\n");
  std::printf("throughput %.1f images/s\n", double(ds.n) / secs);
  if (!o.json.empty()) {
    nlohmann::json j = {{"model", o.model},
                        {"arch", arch.name},
                        {"data", ds.name},
                        {"images", ds.n},
                        {"batch", o.batch},
                        {"device", engine.device_name()},
                        {"accuracy", acc},
                        {"correct", correct},
                        {"latency_ms_mean", mean},
                        {"latency_ms_p50", p50},
                        {"latency_ms_p99", p99},
                        {"images_per_s", double(ds.n) / secs},
                        {"caches", o.caches},
                        {"exit_rate", double(hits) / ds.n},
                        {"warmup", {{"runs", o.warmup}, {"seconds", warmup_s}}}};
    cli::write_text(o.json, j.dump(2) + "\n");
  }
  return 0;
}

// ---- profile --------------------------------------------------------------------------

struct ProfileOpts {
  Common common;
  std::string model, size, json, trace;
  int batch = 1, repeats = 20, warmup = 3;
};

int cmd_profile(const ProfileOpts& o) {
  Engine engine(o.model, o.common.engine());
  const Arch& arch = engine.arch();
  int h = arch.input_h, w = arch.input_w;
  if (!o.size.empty()) {
    // --size takes "HxW" (or "H W"): two decimal numbers, each from 1 to
    // 16384 (read in full before the range check, so no value wraps).
    auto number = [](const std::string& t, int* v) {
      if (t.empty() || t.size() > 5 || t.find_first_not_of("0123456789") != std::string::npos) return false;
      *v = std::stoi(t);
      return *v >= 1 && *v <= 16384;
    };
    const size_t x = o.size.find_first_of("x ");
    if (x == std::string::npos || !number(o.size.substr(0, x), &h) || !number(o.size.substr(x + 1), &w))
      fail("--size must be 'HxW' with 1 <= H, W <= 16384, got '", o.size, "'");
  }
  const std::string base = str_cat("profile-", arch.name, "-b", o.batch);
  const std::string json_path = o.json.empty() ? base + ".json" : o.json;
  const std::string trace_path = o.trace.empty() ? base + ".trace.json" : o.trace;
  cli::check_outputs({{"--json", json_path}, {"--trace", trace_path}}, {o.model});
  engine.check_size(o.batch, h, w);  // before the input is allocated
  std::mt19937 rng(1234);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> x(size_t(o.batch) * size_t(arch.in_channels) * size_t(h) * size_t(w));
  for (float& v : x) v = dist(rng);
  for (int i = 0; i < o.warmup; ++i) engine.infer(x.data(), o.batch, arch.in_channels, h, w);
  std::vector<std::vector<LayerTiming>> runs(static_cast<size_t>(o.repeats));
  cli::Progress progress(size_t(o.repeats), "profile");
  for (int r = 0; r < o.repeats; ++r) {
    engine.profile(x.data(), o.batch, arch.in_channels, h, w, &runs[size_t(r)]);
    progress.update(size_t(r + 1));
  }
  progress.finish();
  ProfileReport rep = summarize(runs, arch.name, engine.device_name(), o.batch, h, w);
  rep.peak_gflops = engine.session().context().peak_gflops();
  // The same call as a caller makes it, timed whole, interleaved with
  // nothing: the gap to the layers' sum is host work and launches.
  std::vector<double> calls;
  for (int r = 0; r < o.repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    engine.infer(x.data(), o.batch, arch.in_channels, h, w);
    calls.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  rep.call_ms = median(calls);
  std::fputs(format_table(rep).c_str(), stdout);
  cli::write_text(json_path, to_json(rep));
  // The trace shows the run closest to the median, not an outlier.
  size_t pick = 0;
  double best = 1e300;
  for (size_t r = 0; r < runs.size(); ++r) {
    double t = 0;
    for (const auto& l : runs[r]) t += l.ms;
    if (std::abs(t - rep.total_ms) < best) {
      best = std::abs(t - rep.total_ms);
      pick = r;
    }
  }
  cli::write_text(trace_path, to_chrome_trace(runs[pick], arch.name));
  std::printf("wrote %s and %s (open the trace in ui.perfetto.dev or chrome://tracing)\n", json_path.c_str(),
              trace_path.c_str());
  return 0;
}

// ---- cache build ---------------------------------------------------------------------

struct CacheBuildOpts {
  Common common;
  std::string model, data, data_dir, out, config, rule = "bound", holdout_kind = "clean+shifted", pool = "auto",
                                                  calibrate = "cascade", cost = "measured", memory = "off",
                                                  memory_pool = "avg2x2", kind = "linear";
  double target = 0.99, traffic_requests = 1000, never_hit_budget = 0.04;
  float distill = 0;
  int train = 50000, holdout = 10000, epochs = 10, memory_capacity = 1024, selector = 0, hidden = 32;
  ApproxOptions approx;
  float memory_min_confidence = 0.99f;
  bool print_config = false;
};

// The build's settings: the configuration file's (or the defaults), then
// each flag given on the command line over them.
BuildOptions build_options(const CacheBuildOpts& o, const CLI::App& app) {
  BuildOptions b = o.config.empty() ? BuildOptions{} : load_build_config(o.config);
  auto given = [&](const char* flag) { return app.count(flag) > 0; };
  if (given("--target-agreement")) b.target_agreement = o.target;
  if (given("--rule")) b.rule = threshold_rule(o.rule);
  if (given("--calibrate-on")) b.perturbed_holdout = o.holdout_kind == "clean+shifted";
  if (given("--traffic-requests")) b.traffic_requests = o.traffic_requests;
  if (given("--never-hit-budget")) b.never_hit_budget = o.never_hit_budget;
  if (given("--pool")) b.pool = o.pool;
  if (given("--calibrate")) b.cascade = o.calibrate == "cascade";
  if (given("--cost")) b.cost = cost_model(o.cost);
  if (given("--train")) b.train = o.train;
  if (given("--holdout")) b.holdout = o.holdout;
  if (given("--memory")) b.memory = o.memory == "on";
  if (given("--memory-pool")) b.memory_pool = o.memory_pool;
  if (given("--memory-capacity")) b.memory_capacity = o.memory_capacity;
  if (given("--memory-min-confidence")) b.memory_min_confidence = o.memory_min_confidence;
  if (given("--epochs")) b.sgd.epochs = o.epochs;
  if (given("--distill")) b.sgd.distill_alpha = o.distill;
  if (given("--selector")) b.selector = o.selector;
  if (given("--hidden")) b.hidden = o.hidden;
  if (given("--kind")) b.kind = head_kind(o.kind);
  if (given("--reduced")) b.approx.reduced = o.approx.reduced;
  if (given("--neighbours")) b.approx.neighbours = o.approx.neighbours;
  if (given("--knn-entries")) b.approx.knn_entries = o.approx.knn_entries;
  if (given("--centroids")) b.approx.centroids = o.approx.centroids;
  return b;
}

int cmd_cache_build(const CacheBuildOpts& o, const CLI::App& app) {
  BuildOptions b = build_options(o, app);
  if (o.print_config) {
    std::printf("%s\n", build_options_to_json(b).dump(2).c_str());
    return 0;
  }
  if (o.model.empty() || o.data.empty() || o.out.empty())
    fail("cache build: --model, --data and --out are required (or --print-config)");
  const std::string data_dir = o.data_dir.empty() ? default_fashion_mnist_dir() : o.data_dir;
  std::vector<std::string> inputs = fashion_mnist_files(data_dir);
  inputs.push_back(o.model);
  inputs.push_back(o.config);
  cli::check_outputs({{"--out", o.out}}, inputs);
  Engine engine(o.model, o.common.engine());
  const Dataset ds = load_fashion_mnist(data_dir, "train");
  cli::Progress progress(size_t(b.train + b.holdout), "collect");
  std::unique_ptr<cli::Progress> training;
  b.progress = [&](size_t done, size_t) { progress.update(done); };
  b.train_progress = [&](size_t done, size_t total) {
    if (!training) {
      progress.finish();
      training = std::make_unique<cli::Progress>(total, "train");
    }
    training->update(done, "exits");
  };
  const BuildResult r = build_caches(engine, ds, b);
  progress.finish();
  if (training) training->finish();
  r.caches.save(o.out);
  std::printf("%-10s %-7s %-7s %6s %13s %9s %10s %9s %10s\n", "exit", "kind", "pool", "dim", "loss or keys",
              "threshold", "agreement", "hit rate", "hit agree");
  for (size_t e = 0; e < r.caches.exits.size(); ++e) {
    const ExitCache& c = r.caches.exits[e];
    const std::string loss = c.kind == HeadKind::kLinear ? str_cat(std::round(r.loss[e].front() * 1000) / 1000, " -> ",
                                                                   std::round(r.loss[e].back() * 1000) / 1000)
                                                         : str_cat(c.entries(), " x ", c.reduced);
    std::printf("%-10s %-7s %-7s %6d %13s %9.4f %10.4f %9.4f %10.4f\n", c.name.c_str(), head_description(c).c_str(),
                pool_name(c.pool).c_str(), c.dim, loss.c_str(), c.enabled() ? c.threshold : NAN, c.holdout_agreement,
                c.holdout_hit_rate, c.holdout_hit_agreement);
  }
  if (b.cascade && b.rule != ThresholdRule::kZeroError)
    std::printf(
        "cascade on held-out images (worst of clean and shifted): agreement %.4f (95%% lower bound %.4f%s), "
        "hit rate %.4f, expected cost "
        "%.3f of the model's (%.2fx lower, %s), open heads %.3f of the model's (limit %.3f), %d steps\n",
        r.cascade.agreement, r.cascade.bound,
        b.traffic_requests > 0 ? str_cat(" for ", b.traffic_requests, " requests of traffic").c_str() : "",
        r.cascade.hit_rate, r.cascade.cost, 1.0 / r.cascade.cost, b.cost == CostModel::kMacs ? "MACs" : "measured time",
        r.cascade.head_cost, b.never_hit_budget, r.cascade.steps);
  if (r.caches.memory) {
    const MemorySpec& m = *r.caches.memory;
    std::printf(
        "memory at %s (%s, %d entries, stores answers with confidence >= %.3f): squared distance <= %.4g; "
        "on a %d-request locality trace over held-out images, hit rate %.4f, hits agree %.4f\n",
        m.name.c_str(), pool_name(m.pool).c_str(), m.capacity, m.min_confidence, m.threshold, int(r.memory.lookups),
        r.memory.hit_rate(), r.memory.hit_agreement());
  } else if (b.memory) {
    std::printf(
        "memory: no threshold met the target on the calibration trace (%lld lookups, %lld answers stored); "
        "left out\n",
        (long long)r.memory.lookups, (long long)r.memory.stored);
    if (r.memory.stored * 10 < r.memory.lookups)  // why, when it had little to remember
      std::printf(
          "memory: it stores the full model's answers with confidence >= %.3g to requests no cache answered; behind "
          "these caches few are that confident (--memory-min-confidence lowers the bar)\n",
          b.memory_min_confidence);
  }
  std::printf("wrote %s (%s caches at %zu exits, target %.3f, rule %s, calibrated %s, %.1fs)\n", o.out.c_str(),
              !b.exits.empty()                              ? "configured"
              : b.kind == HeadKind::kLinear && b.hidden > 0 ? str_cat("mlp", b.hidden).c_str()
                                                            : head_kind_name(b.kind),
              r.caches.exits.size(), b.target_agreement, threshold_rule_name(b.rule),
              b.cascade && b.rule != ThresholdRule::kZeroError ? "as a cascade" : "per exit", r.seconds);
  return 0;
}

// CLI11 validator: empty when `name` is a pooling parse_pool knows, else why not.
std::string pool_error(const std::string& name) {
  try {
    parse_pool(name);
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

// ---- serve-sim -----------------------------------------------------------------------

struct ServeSimOpts {
  Common common;
  std::string model, trace, data_dir, save_trace, json, per_request, memory = "on", guard = "off", online = "off";
  float online_lr = 0.005f;
  std::vector<std::string> caches;
  int requests = 2000, seed = 1, batch = 1, guard_window = 500, prior_window = 200, warmup = 2;
  double feedback = 0, prior_max_ratio = 1.5;
};

// One cache set's replay, as serve-sim prints it.
void print_replay(const ReplayReport& r) {
  const double n = double(r.requests.size());
  std::printf("%-10s %9s %9s %10s\n", "exit", "threshold", "hit rate", "hit agree");
  auto row = [&](const ExitStats& e, bool distance) {
    char threshold[32];  // a probability, or the memory's squared distance
    std::snprintf(threshold, sizeof threshold, distance ? "%.4g" : "%.4f", e.enabled ? e.threshold : NAN);
    std::printf("%-10s %9s %9.4f %10s\n", e.name.c_str(), threshold, e.hit_rate(r.requests.size()),
                e.hits ? str_cat(e.hit_agreement()).c_str() : "-");
  };
  for (const ExitStats& e : r.exits) row(e, false);
  if (r.has_memory) row(r.memory, true);
  std::printf("hit rate %.4f, agreement with the full model %.4f (hits alone %.4f)\n", r.hit_rate(), r.agreement(),
              r.hit_agreement());
  std::printf("accuracy: full model %.4f, with caches %.4f\n", r.accuracy_full(), r.accuracy_caches());
  std::printf("latency ms: caches mean %.3f p50 %.3f p99 %.3f | full mean %.3f p50 %.3f p99 %.3f | speed-up %.2fx\n",
              r.latency_mean_us(true) / 1e3, r.latency_percentile_us(true, 50) / 1e3,
              r.latency_percentile_us(true, 99) / 1e3, r.latency_mean_us(false) / 1e3,
              r.latency_percentile_us(false, 50) / 1e3, r.latency_percentile_us(false, 99) / 1e3, r.speedup_mean());
  std::printf("throughput: caches %.1f req/s, full %.1f req/s\n", n / r.seconds_caches, n / r.seconds_full);
  if (r.warmup_runs > 0)
    std::printf("warm-up: %d untimed runs of the first batch with and without caches first (%.3f s)\n", r.warmup_runs,
                r.seconds_warmup);
  std::printf("compute: %.3g MACs per request with caches (theirs included), %.3g without: %.2fx; caches hold %s\n",
              r.macs_mean(), r.macs_full, r.speedup_compute(), cli::human_bytes(r.cache_bytes).c_str());
  if (r.feedback > 0) {
    std::string checked;
    for (const ExitStats& e : r.exits)
      if (e.feedback) checked += str_cat(checked.empty() ? "" : ", ", e.name, " ", e.feedback_agree, "/", e.feedback);
    std::printf("feedback (%.3g of hits run to the end): agreed %s\n", r.feedback,
                checked.empty() ? "(none checked)" : checked.c_str());
  }
  if (r.online_steps > 0 || r.prior_updates > 0) {
    if (r.online_in_backend)
      std::printf("online updates: %lld SGD steps in the serving backend, inside the latencies\n",
                  (long long)r.online_steps);
    else
      std::printf("online updates: %lld SGD steps, %lld prior corrections, %.1fs outside the latencies\n",
                  (long long)r.online_steps, (long long)r.prior_updates, r.seconds_updates);
    if (!r.prior_estimate.empty()) {
      std::printf("served class mix at the end:");
      for (double q : r.prior_estimate) std::printf(" %.3f", q);
      std::printf("\n");
    }
  }
  for (const GuardEvent& ev : r.guard_events)
    std::printf("guard: exit %d switched %s after %lld observations (window agreement %.4f over %d)\n", ev.exit,
                ev.on ? "on" : "off", (long long)ev.at, ev.agreement, ev.observations);
}

int cmd_serve_sim(const ServeSimOpts& o) {
  const std::string data_dir = o.data_dir.empty() ? default_fashion_mnist_dir() : o.data_dir;
  std::vector<std::string> inputs = fashion_mnist_files(data_dir);
  inputs.insert(inputs.end(), o.caches.begin(), o.caches.end());
  inputs.push_back(o.model);
  const bool is_kind = std::find(trace_kinds().begin(), trace_kinds().end(), o.trace) != trace_kinds().end();
  if (!is_kind) inputs.push_back(o.trace);
  cli::check_outputs({{"--save-trace", o.save_trace}, {"--json", o.json}, {"--per-request", o.per_request}}, inputs);
  if (o.caches.size() > 1 && !o.per_request.empty())
    fail("serve-sim: --per-request takes one --caches file (given ", o.caches.size(), ")");
  Engine engine(o.model, o.common.engine());
  std::vector<CacheSet> sets;
  for (const std::string& path : o.caches) sets.push_back(CacheSet::load(path, engine.model()));
  const Dataset ds = load_fashion_mnist(data_dir, "test");
  const Trace trace = is_kind ? make_trace(o.trace, ds, o.requests, uint64_t(o.seed)) : load_trace(o.trace, ds);
  if (!o.save_trace.empty()) save_trace(o.save_trace, trace);
  ReplayOptions ro;
  ro.batch = o.batch;
  ro.warmup = o.warmup;
  ro.memory = o.memory == "on";
  ro.online.feedback = o.feedback;
  ro.online.guard = o.guard == "on";
  ro.online.guard_options.window = o.guard_window;
  ro.online.sgd = o.online == "on" || o.online == "sgd" || o.online == "sgd-backend";
  ro.online.in_backend = o.online == "sgd-backend";
  ro.online.sgd_options.lr = o.online_lr;
  ro.online.prior = o.online == "on" || o.online == "prior";
  ro.online.prior_options.window = o.prior_window;
  ro.online.prior_options.max_ratio = o.prior_max_ratio;
  ro.online.guard_options.min_observations = std::min(50, o.guard_window);
  std::printf("trace %s (seed %llu, %zu requests, batch %d) on %s, model %s\n", trace.kind.c_str(),
              (unsigned long long)trace.seed, trace.requests.size(), o.batch, ds.name.c_str(),
              engine.arch().name.c_str());
  std::vector<ReplayReport> reports;
  for (size_t k = 0; k < sets.size(); ++k) {
    cli::Progress progress(trace.requests.size(), sets.size() > 1 ? "serve-sim " + o.caches[k] : "serve-sim");
    ro.progress = [&](size_t done, size_t) { progress.update(done); };
    reports.push_back(replay_trace(engine, sets[k], ds, trace, ro));
    progress.finish();
    if (sets.size() > 1) std::printf("\n== %s (%s)\n", o.caches[k].c_str(), reports.back().kinds.c_str());
    print_replay(reports.back());
  }
  if (sets.size() > 1) {
    // Side by side, on the same trace in this one run.
    std::printf("\n%-28s %-12s %9s %9s %9s %9s %9s %9s %10s\n", "caches", "kind", "agreement", "hit rate", "accuracy",
                "latency", "speed-up", "compute", "size");
    for (size_t k = 0; k < reports.size(); ++k) {
      const ReplayReport& r = reports[k];
      std::printf("%-28s %-12s %9.4f %9.4f %9.4f %7.3fms %8.2fx %8.2fx %10s\n", o.caches[k].c_str(), r.kinds.c_str(),
                  r.agreement(), r.hit_rate(), r.accuracy_caches(), r.latency_mean_us(true) / 1e3, r.speedup_mean(),
                  r.speedup_compute(), cli::human_bytes(r.cache_bytes).c_str());
    }
  }
  if (!o.json.empty()) {
    if (reports.size() == 1) {
      cli::write_text(o.json, replay_json(reports[0]));
    } else {
      nlohmann::json runs = nlohmann::json::array();
      for (size_t k = 0; k < reports.size(); ++k) {
        nlohmann::json j = nlohmann::json::parse(replay_json(reports[k]));
        j["caches"] = o.caches[k];
        runs.push_back(std::move(j));
      }
      cli::write_text(o.json, nlohmann::json{{"runs", runs}}.dump(2) + "\n");
    }
  }
  if (!o.per_request.empty()) cli::write_text(o.per_request, replay_per_request_jsonl(reports[0]));
  return 0;
}

// ---- devices ---------------------------------------------------------------------------

int cmd_devices() {
  std::string why;
  const std::vector<cuda::DeviceInfo> devs = cuda::devices(&why);
  std::printf("cpu: available\n");
  if (devs.empty()) {
    std::printf("cuda: %s\n", why.c_str());
    return 0;
  }
  for (const auto& d : devs)
    std::printf(
        "cuda:%d %s, sm_%d%d, %d SMs, %.1f GiB%s\n", d.index, d.name.c_str(), d.major, d.minor, d.multiprocessors,
        double(d.memory_bytes) / double(1ull << 30),
        d.has_code ? "" : "  (this build has no code for this architecture: rebuild with CMAKE_CUDA_ARCHITECTURES)");
  return 0;
}

// CLI11's messages, in our one-line form.
std::string parse_error_text(const CLI::ParseError& e) {
  std::string msg = e.what();
  if (dynamic_cast<const CLI::ExtrasError*>(&e)) {
    const std::string prefix = "The following argument was not expected: ";
    const std::string prefix2 = "The following arguments were not expected: ";
    if (msg.rfind(prefix, 0) == 0) return "unknown option or argument " + msg.substr(prefix.size());
    if (msg.rfind(prefix2, 0) == 0) return "unknown options or arguments " + msg.substr(prefix2.size());
  }
  return msg;
}

int dispatch(int argc, char** argv) {
  CLI::App app{"gati: a ResNet inference engine that learns when to stop", "gati"};
  app.require_subcommand(0, 1);
  app.footer("Run 'gati COMMAND --help' for a command's options.");
  app.get_formatter()->label("REQUIRED", "(required)");

  InfoOpts info;
  CLI::App* c_info = app.add_subcommand("info", "layers, parameters, MACs per block and in total");
  c_info->add_option("MODEL", info.model, "model file (.safetensors)")->required();
  c_info->add_flag("--json", info.json, "print JSON");

  InferOpts infer;
  CLI::App* c_infer = app.add_subcommand("infer", "run a model on a tensor file, write the logits");
  c_infer->add_option("--model", infer.model, "model file")->required();
  c_infer->add_option("--input", infer.input, "safetensors file with float32 'input' [N, C, H, W]")->required();
  c_infer->add_option("--output", infer.output, "safetensors file to write 'logits' [N, classes] to")
      ->check(output_path())
      ->required();
  c_infer->add_flag("--normalize", infer.normalize, "apply the model's mean/std to raw [0, 1] input first");
  add_common(c_infer, infer.common);

  RunOpts run;
  CLI::App* c_run = app.add_subcommand("run", "accuracy, exits and latency percentiles on a data set");
  c_run->add_option("--model", run.model, "model file")->required();
  data_option(c_run, run.data, run.data_dir);
  c_run->add_option("--split", run.split, "data split")->check(CLI::IsMember({"test", "train"}))->capture_default_str();
  c_run->add_option("--batch", run.batch, "batch size (samples exit one by one)")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  c_run->add_option("--limit", run.limit, "only the first N images (0 = all)")->check(CLI::Range(0, 1 << 30));
  c_run
      ->add_option("--warmup", run.warmup,
                   "untimed runs of the first batch before timing (plans and graphs are built there)")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  c_run->add_option("--caches", run.caches, "cache file from 'gati cache build': samples may leave early");
  c_run->add_option("--json", run.json, "also write the results as JSON")->check(output_path());
  add_common(c_run, run.common);

  ProfileOpts prof;
  CLI::App* c_prof = app.add_subcommand("profile", "per-layer timing table, JSON and Chrome trace");
  c_prof->add_option("--model", prof.model, "model file")->required();
  c_prof->add_option("--batch", prof.batch, "batch size")->check(CLI::Range(1, 4096))->capture_default_str();
  c_prof->add_option("--size", prof.size, "input size HxW (default: the model's)");
  c_prof->add_option("--repeats", prof.repeats, "timed runs")->check(CLI::Range(1, 100000))->capture_default_str();
  c_prof->add_option("--warmup", prof.warmup, "untimed runs first")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  c_prof->add_option("--json", prof.json, "per-layer JSON (default profile-<model>-b<B>.json)")->check(output_path());
  c_prof->add_option("--trace", prof.trace, "Chrome/Perfetto trace (default profile-<model>-b<B>.trace.json)")
      ->check(output_path());
  add_common(c_prof, prof.common);

  app.add_subcommand("devices", "CUDA devices this build can use");

  CacheBuildOpts cb;
  CLI::App* c_cache = app.add_subcommand("cache", "cache models: 'gati cache build'");
  c_cache->require_subcommand(1);
  CLI::App* c_build = c_cache->add_subcommand(
      "build",
      "build a cache at every exit from its pooled features (labels: the full model's own predictions): a learned "
      "linear predictor (GATI) or stored keys (Freeze's k-NN, k-means); then calibrate the thresholds on held-out "
      "training images");
  c_build->add_option("--model", cb.model, "model file (required unless --print-config)");
  data_option(c_build, cb.data, cb.data_dir, false);
  c_build->add_option("--out", cb.out, "cache file to write (required unless --print-config)")->check(output_path());
  c_build
      ->add_option("--config", cb.config,
                   "the build's settings as JSON (see cache/config.h); flags given on the command line override them")
      ->check(CLI::ExistingFile);
  c_build->add_flag("--print-config", cb.print_config,
                    "print the settings this command would build with, as a JSON configuration, and stop");
  c_build->add_option("--target-agreement", cb.target, "agreement of hits with the full model")
      ->check(finite_number())
      ->check(CLI::Range(0.5, 1.0))
      ->capture_default_str();
  c_build
      ->add_option("--rule", cb.rule,
                   "threshold rule: bound (95% lower bound of each exit's agreement >= target), target (the "
                   "point estimate), zero-error (Freeze's)")
      ->check(CLI::IsMember({"bound", "target", "zero-error"}))
      ->capture_default_str();
  c_build
      ->add_option("--calibrate-on", cb.holdout_kind,
                   "held-out images for calibration: clean, or clean+shifted (also shifted by up to 2 px with "
                   "noise, like locality traffic)")
      ->check(CLI::IsMember({"clean", "clean+shifted"}))
      ->capture_default_str();
  c_build
      ->add_option("--traffic-requests", cb.traffic_requests,
                   "the cascade's bound also covers a stretch of traffic of this many independent requests "
                   "(a 10000-request locality trace has about 1000 distinct items); 0: the held-out images alone")
      ->check(finite_number())
      ->check(CLI::Range(0.0, 1e12))
      ->capture_default_str();
  c_build
      ->add_option("--never-hit-budget", cb.never_hit_budget,
                   "cascade: the open exits' heads together may cost at most this share of the model (what caches "
                   "that never hit add to a request, in the --cost model's units); 1: no limit")
      ->check(finite_number())
      ->check(CLI::Range(1e-6, 1.0))
      ->capture_default_str();
  c_build
      ->add_option("--calibrate", cb.calibrate,
                   "cascade: every threshold at once, so the whole cascade meets the target at the lowest "
                   "expected cost (exits that do not pay stay closed); per-exit: each exit's hits meet it alone")
      ->check(CLI::IsMember({"cascade", "per-exit"}))
      ->capture_default_str();
  c_build
      ->add_option("--cost", cb.cost,
                   "how the cascade calibration prices each exit: measured (batch-1 time on this machine) or "
                   "macs (deterministic)")
      ->check(CLI::IsMember({"measured", "macs"}))
      ->capture_default_str();
  c_build
      ->add_option("--pool", cb.pool,
                   "pooling at every exit: auto (per exit the richest of mix4x4, avg4x4, mix2x2, avg2x2, avg whose "
                   "head costs at most 0.5% of the model), or one of avg, mix, avgGxG, mixGxG (G = 1..8; mix adds "
                   "each cell's max)")
      ->check([](const std::string& v) { return v == "auto" ? std::string() : pool_error(v); })
      ->capture_default_str();
  c_build->add_option("--train", cb.train, "training images")->check(CLI::Range(1, 60000))->capture_default_str();
  c_build->add_option("--holdout", cb.holdout, "calibration images after them")
      ->check(CLI::Range(1, 60000))
      ->capture_default_str();
  c_build->add_option("--epochs", cb.epochs, "SGD epochs")->check(CLI::Range(1, 1000))->capture_default_str();
  c_build
      ->add_option("--selector", cb.selector,
                   "learned caches: GATI's selector over the k largest softmax probabilities (fitted on the "
                   "held-out images) decides hits instead of the top probability; 0: none")
      ->check(CLI::Range(0, int(kMaxSelectorK)))
      ->capture_default_str();
  c_build
      ->add_option("--hidden", cb.hidden,
                   "learned caches: hidden ReLU units of the predictor (GATI's MLP: features -> hidden -> "
                   "classes); 0: a linear predictor")
      ->check(CLI::Range(0, int(kMaxHidden)))
      ->capture_default_str();
  c_build
      ->add_option("--distill", cb.distill,
                   "learned caches: weight of distillation from the full model's logits at temperature 6 (GATI: "
                   "0.5); 0 trains on its labels alone")
      ->check(finite_number())
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  c_build
      ->add_option("--memory", cb.memory,
                   "a memory of recent full-model answers at the stem, calibrated on a locality trace over the "
                   "held-out images (its hits held to the target on their own)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  c_build->add_option("--memory-pool", cb.memory_pool, "the memory's pooling of the stem output (as --pool)")
      ->check(pool_error)
      ->capture_default_str();
  c_build->add_option("--memory-capacity", cb.memory_capacity, "entries (the most recent answers)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  c_build
      ->add_option("--memory-min-confidence", cb.memory_min_confidence,
                   "the full model's confidence an answer needs to be stored")
      ->check(finite_number())
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  c_build
      ->add_option("--kind", cb.kind,
                   "cache kind at every exit: linear (GATI's learned predictor), knn (Freeze: the nearest stored "
                   "training images vote) or kmeans (Freeze: the nearest centroid answers)")
      ->check(CLI::IsMember({"linear", "knn", "kmeans"}))
      ->capture_default_str();
  c_build->add_option("--reduced", cb.approx.reduced, "knn/kmeans: PCA dimensions of the keys")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  c_build->add_option("--neighbours", cb.approx.neighbours, "knn: neighbours that vote")
      ->check(CLI::Range(1, int(kMaxNeighbours)))
      ->capture_default_str();
  c_build
      ->add_option("--knn-entries", cb.approx.knn_entries,
                   "knn: training images kept as keys, a random subset (0 = every one, as Freeze)")
      ->check(CLI::Range(0, 60000))
      ->capture_default_str();
  c_build->add_option("--centroids", cb.approx.centroids, "kmeans: clusters")
      ->check(CLI::Range(1, 60000))
      ->capture_default_str();
  add_common(c_build, cb.common);

  ServeSimOpts ss;
  CLI::App* c_sim = app.add_subcommand(
      "serve-sim",
      "replay a request trace over the Fashion-MNIST test split with caches and without, in batches, and report "
      "exits, agreement, accuracy, latency and speed-up");
  c_sim->add_option("--model", ss.model, "model file")->required();
  c_sim
      ->add_option("--caches", ss.caches,
                   "cache file from 'gati cache build'; several (space-separated or repeated) are replayed one "
                   "after another on the same trace and compared side by side")
      ->required();
  c_sim->add_option("--trace", ss.trace, "uniform, zipf, locality, drift, or a saved trace file")->required();
  c_sim->add_option("--requests", ss.requests, "requests to generate")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  c_sim->add_option("--seed", ss.seed, "trace seed")->check(CLI::Range(0, 1 << 30))->capture_default_str();
  c_sim->add_option("--batch", ss.batch, "requests per batch (per-sample exits)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  c_sim
      ->add_option("--warmup", ss.warmup,
                   "untimed runs of the first batch, with and without caches, before the replay (plans and graphs "
                   "are built there, not in the latencies; nothing learns from them)")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  c_sim->add_option("--data-dir", ss.data_dir, "folder with the IDX files");
  c_sim->add_option("--save-trace", ss.save_trace, "write the generated trace")->check(output_path());
  c_sim->add_option("--memory", ss.memory, "use the cache file's memory of recent answers, when it has one")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  c_sim
      ->add_option("--feedback", ss.feedback,
                   "share of the requests an exit answers that keep running to the end, answered by the full "
                   "model, so agreement is measured while serving")
      ->check(finite_number())
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  c_sim
      ->add_option("--guard", ss.guard,
                   "drift guard: switch an exit off when its feedback agreement is confidently below the cache "
                   "file's target, on again when it recovers (needs --feedback)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  c_sim->add_option("--guard-window", ss.guard_window, "feedback observations per exit the guard judges")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  c_sim
      ->add_option("--online", ss.online,
                   "online updates: 'sgd': learned caches take SGD steps toward the full model's answers on the "
                   "requests it answered (misses and feedback); 'prior': their bias follows the class mix of the "
                   "answers served (label shift); 'on': both; 'sgd-backend': the SGD steps taken in the serving "
                   "backend (on the GPU with --device cuda) from the features the exits pooled, inside the timed "
                   "runs (no feedback, guard or prior)")
      ->check(CLI::IsMember({"on", "sgd", "prior", "sgd-backend", "off"}))
      ->capture_default_str();
  c_sim
      ->add_option("--prior-window", ss.prior_window, "requests the served class mix is averaged over (--online prior)")
      ->check(CLI::Range(1, 100000000))
      ->capture_default_str();
  c_sim
      ->add_option("--prior-max-ratio", ss.prior_max_ratio,
                   "largest factor by which the prior correction may raise or lower a class (--online prior)")
      ->check(finite_number())
      ->check(CLI::Range(1.0, 1e6))
      ->capture_default_str();
  c_sim->add_option("--online-lr", ss.online_lr, "learning rate of the online updates")
      ->check(finite_number())
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  c_sim->add_option("--json", ss.json, "write the report as JSON")->check(output_path());
  c_sim
      ->add_option("--per-request", ss.per_request,
                   "write one JSON line per request (id, exit, label, confidence, latency_us)")
      ->check(output_path());
  add_common(c_sim, ss.common);

  if (argc < 2) {
    std::fputs(app.help().c_str(), stderr);
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // Name the subcommand so the user knows which --help to read.
    std::string where;
    for (CLI::App* sub : app.get_subcommands()) {
      where = sub->get_name();
      for (CLI::App* s2 : sub->get_subcommands()) where += " " + s2->get_name();
    }
    fail(parse_error_text(e), where.empty() ? "" : " (see gati " + where + " --help)");
  }
  if (c_info->parsed()) return cmd_info(info);
  if (c_infer->parsed()) return cmd_infer(infer);
  if (c_run->parsed()) return cmd_run(run);
  if (c_prof->parsed()) return cmd_profile(prof);
  if (app.got_subcommand("devices")) return cmd_devices();
  if (c_build->parsed()) return cmd_cache_build(cb, *c_build);
  if (c_sim->parsed()) return cmd_serve_sim(ss);
  std::fputs(app.help().c_str(), stderr);
  return 2;
}

}  // namespace
}  // namespace gati

int main(int argc, char** argv) {
  try {
    return gati::dispatch(argc, argv);
  } catch (const gati::Error& e) {
    std::fprintf(stderr, "gati: error: %s\n", e.what());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "gati: error: out of memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gati: error: %s\n", e.what());
  }
  return 1;
}
