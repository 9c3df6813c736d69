// The `gati` command line: info, infer, run, profile, devices.
//
// Every command validates its options and inputs up front and fails with one
// line on stderr and a non-zero exit; `gati CMD --help` explains each.
// `gati infer` is the stable contract the parity tests use: a float32 tensor
// named "input" [N, C, H, W] in, "logits" [N, classes] out.
#include <unistd.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "cache/exit_runtime.h"
#include "engine/engine.h"
#include "engine/profile.h"
#include "kernels/cuda_device.h"
#include "loaders/fashion_mnist.h"
#include "loaders/trace.h"
#include "tools/cli_util.h"
#include "weights/safetensors.h"

namespace gati {
namespace {

using cli::Args;
using clock_type = std::chrono::steady_clock;

const char* kUsage = R"(gati: a ResNet inference engine that learns when to stop

usage: gati COMMAND [options]      (gati COMMAND --help for details)

commands:
  info MODEL            layers, parameters, MACs per block and in total
  infer                 run a model on a tensor file, write the logits
  run                   accuracy and latency percentiles on a data set
  profile               per-layer timing table, JSON and Chrome trace
  devices               CUDA devices this build can use
  cache build           train and calibrate learned caches for every exit
  serve-sim             replay a request trace with caches, against the full model
)";

const char* kCacheBuildHelp =
    R"(usage: gati cache build --model M --data fashion-mnist --out CACHES.safetensors [options]
  Runs the full model over the training split, trains a linear predictor on
  every exit's pooled features (labels: the full model's own predictions),
  and calibrates each exit's threshold on held-out training images so that
  hits agree with the full model at the target rate.
  --target-agreement A   default 0.99
  --rule R               target (default) or zero-error (Freeze's rule)
  --train N              training images (default 50000)
  --holdout N            calibration images after them (default 10000)
  --epochs E             SGD epochs (default 10)
)";

const char* kServeSimHelp = R"(usage: gati serve-sim --model M --caches C --trace KIND|FILE [options]
  Replays a trace over the Fashion-MNIST test split (images the caches never
  saw), batch 1, once with caches and once without, and reports hit rate per
  exit, agreement with the full model, accuracy, latency and speed-up.
  --trace KIND|FILE      uniform, zipf, locality, drift, or a saved trace file
  --requests N           default 2000       --seed S   default 1
  --save-trace FILE      write the generated trace
  --json FILE            write the report as JSON
)";

const char* kInfoHelp = R"(usage: gati info MODEL [--json]
  Prints the architecture, parameter count and MACs per residual block.
  --json   print the same as JSON
)";

const char* kInferHelp = R"(usage: gati infer --model M --input IN.safetensors --output OUT.safetensors [options]
  Reads the float32 tensor "input" [N, C, H, W] (already normalised unless
  --normalize), writes "logits" [N, classes] (float32) to OUT.
  --normalize    apply the model's mean/std to raw [0, 1] input first
  --threads T    CPU threads (default: all cores)
  --device D     cpu (default)
)";

const char* kRunHelp = R"(usage: gati run --model M --data fashion-mnist [options]
  Runs the model over a data set: accuracy, latency percentiles, throughput.
  --split S      test (default) or train
  --batch B      batch size (default 1)
  --limit N      only the first N images
  --data-dir D   folder with the IDX files (default $GATI_FASHION_MNIST or
                 /usr/share/datasets/fashion-mnist)
  --json FILE    also write the results as JSON
  --threads T    CPU threads (default: all cores)
)";

const char* kProfileHelp = R"(usage: gati profile --model M [options]
  Times every layer (median over repeats) on random input.
  --batch B      batch size (default 1)
  --size H W     input size (default: the model's)
  --repeats R    timed runs (default 20), after --warmup W (default 3)
  --json FILE    per-layer JSON (default: profile-<model>-b<B>.json)
  --trace FILE   Chrome/Perfetto trace of one run (default: profile-<model>-b<B>.trace.json)
  --threads T    CPU threads (default: all cores)
)";

bool wants_help(int argc, char** argv) {
  for (int i = 2; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") return true;
  return false;
}

EngineOptions engine_options(const Args& a) {
  EngineOptions o;
  o.device = a.get("device", "cpu");
  o.threads = a.get_int("threads", 0, 0, 1024);
  return o;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  if (!f) fail(path, ": cannot open for writing");
  f << text;
  if (!f) fail(path, ": write failed");
}

int cmd_info(const Args& a) {
  if (a.positional().size() != 1) fail("info: expected one MODEL path (gati info --help)");
  const Model m = load_model(a.positional()[0]);
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
  if (a.has("json")) {
    nlohmann::json j = nlohmann::json::parse(arch.to_json());
    j["parameters"] = m.parameters;
    j["macs"] = plan.macs_per_sample;
    j["convolutions"] = m.net.convs.size();
    nlohmann::json blocks = nlohmann::json::array();
    for (size_t b = 0; b < m.net.blocks.size(); ++b) {
      const ExitPoint& e = plan.exits[b];
      blocks.push_back({{"name", e.name}, {"macs", block_macs[b]}, {"output", {e.shape.c, e.shape.h, e.shape.w}}});
    }
    j["blocks"] = blocks;
    j["stem_macs"] = stem;
    j["head_macs"] = head;
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("%s: %s\n", m.path.c_str(), arch.name.c_str());
  std::printf(
      "  %s blocks %s, stem %s, input %dx%dx%d, %d classes\n", arch.block == BlockKind::Basic ? "basic" : "bottleneck",
      [&] {
        std::string s;
        for (size_t i = 0; i < arch.layers.size(); ++i) s += (i ? "-" : "") + std::to_string(arch.layers[i]);
        return s;
      }()
          .c_str(),
      arch.stem == StemKind::ImageNet ? "imagenet (7x7/2 + maxpool)" : "cifar (3x3/1)", arch.in_channels, arch.input_h,
      arch.input_w, arch.num_classes);
  std::printf("  %zu convolutions, %zu residual blocks (exit points), %.3fM parameters, %.3f GMACs per image\n\n",
              m.net.convs.size(), m.net.blocks.size(), double(m.parameters) / 1e6, double(plan.macs_per_sample) / 1e9);
  std::printf("  %-12s %-16s %12s %8s\n", "block", "output (CxHxW)", "MMACs", "cum %");
  double cum = double(stem);
  std::printf("  %-12s %-16s %12.2f %7.1f%%\n", "stem", "", double(stem) / 1e6,
              100.0 * cum / double(plan.macs_per_sample));
  for (size_t b = 0; b < m.net.blocks.size(); ++b) {
    const ExitPoint& e = plan.exits[b];
    cum += double(block_macs[b]);
    const std::string shape = str_cat(e.shape.c, "x", e.shape.h, "x", e.shape.w);
    std::printf("  %-12s %-16s %12.2f %7.1f%%\n", e.name.c_str(), shape.c_str(), double(block_macs[b]) / 1e6,
                100.0 * cum / double(plan.macs_per_sample));
  }
  std::printf("  %-12s %-16s %12.2f %7.1f%%\n", "fc", "", double(head) / 1e6, 100.0);
  std::printf("  %-12s %-16s %12.2f\n", "total", "", double(plan.macs_per_sample) / 1e6);
  return 0;
}

int cmd_infer(const Args& a) {
  const std::string model_path = a.require("model"), in_path = a.require("input"), out_path = a.require("output");
  Engine engine(model_path, engine_options(a));
  const SafeTensorsFile in = SafeTensorsFile::open(in_path);
  if (!in.contains("input"))
    fail(in_path, ": no tensor named 'input' (found: ", in.names().empty() ? "none" : in.names()[0], ")");
  const TensorInfo& info = in.info("input");
  if (info.dtype != DType::F32) fail(in_path, ": 'input' is ", dtype_name(info.dtype), "; expected F32");
  if (info.shape.size() != 4) fail(in_path, ": 'input' has shape ", shape_str(info.shape), "; expected [N, C, H, W]");
  std::vector<float> x = in.read_float("input", info.shape);
  const int n = int(info.shape[0]), c = int(info.shape[1]), h = int(info.shape[2]), w = int(info.shape[3]);
  if (a.has("normalize")) {
    if (h != engine.arch().input_h || w != engine.arch().input_w)
      fail("--normalize: input is ", h, "x", w, " but the model's normalisation is for ", engine.arch().input_h, "x",
           engine.arch().input_w);
    engine.check_input(x.data(), n, c, h, w);
    engine.normalize(x.data(), n);
  }
  const std::vector<float> logits = engine.infer(x.data(), n, c, h, w);
  SafeTensorsWriter out;
  out.add_float("logits", {n, engine.arch().num_classes}, logits);
  out.set_metadata("gati.model", model_path);
  out.write(out_path);
  std::fprintf(stderr, "wrote %s: logits [%d, %d]\n", out_path.c_str(), n, engine.arch().num_classes);
  return 0;
}

int cmd_run(const Args& a) {
  const std::string data = a.require("data");
  if (data != "fashion-mnist") fail("--data '", data, "' is not supported (valid: fashion-mnist)");
  const std::string model_path = a.require("model");
  const int batch = a.get_int("batch", 1, 1, 65536);
  const int limit = a.get_int("limit", 0, 0, 1 << 30);
  Engine engine(model_path, engine_options(a));
  const Dataset ds = load_fashion_mnist(a.get("data-dir", default_fashion_mnist_dir()), a.get("split", "test"), limit);
  const Arch& arch = engine.arch();
  if (arch.in_channels != ds.c || arch.input_h != ds.h || arch.input_w != ds.w)
    fail(model_path, ": model takes ", arch.in_channels, "x", arch.input_h, "x", arch.input_w, " input, but ", ds.name,
         " images are ", ds.c, "x", ds.h, "x", ds.w);
  if (arch.num_classes != ds.classes)
    fail(model_path, ": model has ", arch.num_classes, " classes, ", ds.name, " has ", ds.classes);

  std::vector<float> x;
  std::vector<double> latency_ms;
  int correct = 0;
  cli::Progress progress(size_t(ds.n), "run");
  const auto t0 = clock_type::now();
  for (int i = 0; i < ds.n; i += batch) {
    const int nb = std::min(batch, ds.n - i);
    x.assign(ds.image(i), ds.image(i) + size_t(nb) * ds.image_floats());
    engine.normalize(x.data(), nb);
    const auto start = clock_type::now();
    const std::vector<float> logits = engine.infer(x.data(), nb);
    latency_ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - start).count());
    for (int j = 0; j < nb; ++j) {
      const float* row = logits.data() + size_t(j) * size_t(arch.num_classes);
      const int pred = int(std::max_element(row, row + arch.num_classes) - row);
      correct += pred == ds.labels[size_t(i + j)];
    }
    progress.update(size_t(i + nb), str_cat("acc ", double(correct) / double(i + nb)));
  }
  progress.finish();
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  const double acc = double(correct) / double(ds.n);
  const double p50 = cli::percentile(latency_ms, 50), p99 = cli::percentile(latency_ms, 99);
  double mean = 0;
  for (double v : latency_ms) mean += v;
  mean /= double(latency_ms.size());
  std::printf("model     %s (%s)\n", model_path.c_str(), arch.name.c_str());
  std::printf("data      %s, %d images, batch %d, device %s\n", ds.name.c_str(), ds.n, batch,
              engine.backend().name().c_str());
  std::printf("accuracy  %.4f (%d/%d)\n", acc, correct, ds.n);
  std::printf("latency   per batch: mean %.3f ms, p50 %.3f ms, p99 %.3f ms\n", mean, p50, p99);
  std::printf("throughput %.1f images/s\n", double(ds.n) / secs);
  if (a.has("json")) {
    nlohmann::json j = {{"model", model_path},   {"arch", arch.name},     {"data", ds.name},
                        {"images", ds.n},        {"batch", batch},        {"device", engine.backend().name()},
                        {"accuracy", acc},       {"correct", correct},    {"latency_ms_mean", mean},
                        {"latency_ms_p50", p50}, {"latency_ms_p99", p99}, {"images_per_s", double(ds.n) / secs}};
    write_text(a.get("json"), j.dump(2) + "\n");
  }
  return 0;
}

int cmd_profile(const Args& a) {
  const std::string model_path = a.require("model");
  Engine engine(model_path, engine_options(a));
  const Arch& arch = engine.arch();
  const int batch = a.get_int("batch", 1, 1, 4096);
  const int repeats = a.get_int("repeats", 20, 1, 100000);
  const int warmup = a.get_int("warmup", 3, 0, 100000);
  int h = arch.input_h, w = arch.input_w;
  if (a.has("size")) {
    // --size takes "H W" as one value ("224 224") or "HxW".
    std::string s = a.get("size");
    for (char& ch : s)
      if (ch == 'x') ch = ' ';
    if (std::sscanf(s.c_str(), "%d %d", &h, &w) != 2 || h < 1 || w < 1)
      fail("--size must be 'H W' or 'HxW', got '", a.get("size"), "'");
  }
  std::mt19937 rng(1234);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> x(size_t(batch) * size_t(arch.in_channels) * size_t(h) * size_t(w));
  for (float& v : x) v = dist(rng);
  for (int i = 0; i < warmup; ++i) engine.infer(x.data(), batch, arch.in_channels, h, w);
  std::vector<std::vector<LayerTiming>> runs(static_cast<size_t>(repeats));
  cli::Progress progress(size_t(repeats), "profile");
  for (int r = 0; r < repeats; ++r) {
    engine.profile(x.data(), batch, arch.in_channels, h, w, &runs[size_t(r)]);
    progress.update(size_t(r + 1));
  }
  progress.finish();
  const ProfileReport rep = summarize(runs, arch.name, engine.backend().name(), batch, h, w);
  std::fputs(format_table(rep).c_str(), stdout);
  const std::string base = str_cat("profile-", arch.name, "-b", batch);
  const std::string json_path = a.get("json", base + ".json"), trace_path = a.get("trace", base + ".trace.json");
  write_text(json_path, to_json(rep));
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
  write_text(trace_path, to_chrome_trace(runs[pick], arch.name));
  std::printf("wrote %s and %s (open the trace in ui.perfetto.dev or chrome://tracing)\n", json_path.c_str(),
              trace_path.c_str());
  return 0;
}

int cmd_cache_build(const Args& a) {
  const std::string model_path = a.require("model"), out_path = a.require("out");
  if (a.require("data") != "fashion-mnist")
    fail("--data '", a.get("data"), "' is not supported (valid: fashion-mnist)");
  const double target = a.get_double("target-agreement", 0.99, 0.5, 1.0);
  const std::string rule = a.get("rule", "target");
  if (rule != "target" && rule != "zero-error") fail("--rule '", rule, "' (valid: target, zero-error)");
  const int n_train = a.get_int("train", 50000, 100, 60000), n_hold = a.get_int("holdout", 10000, 100, 60000);
  if (n_train + n_hold > 60000) fail("--train + --holdout = ", n_train + n_hold, " exceeds the 60000 training images");
  SgdOptions sgd;
  sgd.epochs = a.get_int("epochs", 10, 1, 1000);
  Engine engine(model_path, engine_options(a));
  Dataset ds = load_fashion_mnist(a.get("data-dir", default_fashion_mnist_dir()), "train", n_train + n_hold);
  const Arch& arch = engine.arch();
  if (arch.in_channels != ds.c || arch.input_h != ds.h || arch.input_w != ds.w)
    fail(model_path, ": model takes ", arch.in_channels, "x", arch.input_h, "x", arch.input_w, " input, ", ds.name,
         " is ", ds.c, "x", ds.h, "x", ds.w);
  engine.normalize(ds.images.data(), ds.n);
  const auto t0 = clock_type::now();
  CollectedFeatures all = collect_features(engine, ds.images.data(), ds.n, 256, isatty(2));
  CacheSet set;
  set.model_arch = arch.name;
  set.target_agreement = target;
  std::vector<std::vector<float>> hold_features;
  const std::vector<int> train_labels(all.full_labels.begin(), all.full_labels.begin() + n_train);
  const std::vector<int> hold_labels(all.full_labels.begin() + n_train, all.full_labels.end());
  for (size_t e = 0; e < all.per_exit.size(); ++e) {
    ExitCache c;
    c.exit_name = engine.model().net.blocks[e].name;
    c.block = int(e);
    c.dim = all.dims[e];
    c.classes = arch.num_classes;
    const auto split = all.per_exit[e].begin() + long(size_t(n_train) * size_t(c.dim));
    const std::vector<float> train(all.per_exit[e].begin(), split);
    hold_features.emplace_back(split, all.per_exit[e].end());
    const std::vector<double> loss = train_exit_cache(c, train, train_labels, sgd);
    std::fprintf(stderr, "exit %-10s loss %.3f -> %.3f, train agreement %.4f\n", c.exit_name.c_str(), loss.front(),
                 loss.back(), c.train_agreement);
    set.exits.push_back(std::move(c));
  }
  calibrate_thresholds(set.exits, hold_features, hold_labels, target, rule == "zero-error");
  set.save(out_path);
  std::printf("%-10s %9s %10s %9s %10s\n", "exit", "threshold", "agreement", "hit rate", "hit agree");
  for (const ExitCache& c : set.exits)
    std::printf("%-10s %9.4f %10.4f %9.4f %10.4f\n", c.exit_name.c_str(), c.enabled() ? c.threshold : NAN,
                c.holdout_agreement, c.holdout_hit_rate, c.holdout_hit_agreement);
  std::printf("wrote %s (%zu exits, target %.3f, rule %s, %.1fs)\n", out_path.c_str(), set.exits.size(), target,
              rule.c_str(), std::chrono::duration<double>(clock_type::now() - t0).count());
  return 0;
}

int cmd_serve_sim(const Args& a) {
  const std::string model_path = a.require("model");
  Engine engine(model_path, engine_options(a));
  const CacheSet caches = CacheSet::load(a.require("caches"), engine.model());
  const Dataset ds = load_fashion_mnist(a.get("data-dir", default_fashion_mnist_dir()), "test");
  const std::string trace_arg = a.require("trace");
  const bool is_kind = std::find(trace_kinds().begin(), trace_kinds().end(), trace_arg) != trace_kinds().end();
  const Trace trace = is_kind ? make_trace(trace_arg, ds, a.get_int("requests", 2000, 1, 10000000),
                                           uint64_t(a.get_int("seed", 1, 0, 1 << 30)))
                              : load_trace(trace_arg, ds);
  if (a.has("save-trace")) save_trace(a.get("save-trace"), trace);
  const Arch& arch = engine.arch();
  std::vector<float> x(ds.image_floats());
  ExitPooler pooler(engine.backend_mut());
  const CacheSet none;
  std::vector<double> lat_cache, lat_full;
  std::vector<int> hits(caches.exits.size(), 0), hit_agree(caches.exits.size(), 0);
  int agree = 0, correct_cache = 0, correct_full = 0;
  cli::Progress progress(trace.requests.size(), "serve-sim");
  for (size_t i = 0; i < trace.requests.size(); ++i) {
    render(ds, trace.requests[i], x.data());
    engine.normalize(x.data(), 1);
    // Same request, same process, back to back: caches on, then the full model.
    const ServeResult rc = serve_one(engine, caches, x.data(), pooler);
    const ServeResult rf = serve_one(engine, none, x.data(), pooler);
    lat_cache.push_back(rc.latency_ms);
    lat_full.push_back(rf.latency_ms);
    agree += rc.label == rf.label;
    const int truth = ds.labels[size_t(trace.requests[i].index)];
    correct_cache += rc.label == truth;
    correct_full += rf.label == truth;
    if (rc.exit >= 0) {
      hits[size_t(rc.exit)]++;
      hit_agree[size_t(rc.exit)] += rc.label == rf.label;
    }
    progress.update(i + 1);
  }
  progress.finish();
  const double n = double(trace.requests.size());
  auto mean = [](const std::vector<double>& v) {
    double s = 0;
    for (double x2 : v) s += x2;
    return s / double(v.size());
  };
  int total_hits = 0, total_hit_agree = 0;
  std::printf("trace %s (seed %llu, %zu requests) on %s, model %s\n", trace.kind.c_str(),
              (unsigned long long)trace.seed, trace.requests.size(), ds.name.c_str(), arch.name.c_str());
  std::printf("%-10s %9s %9s %10s\n", "exit", "threshold", "hit rate", "hit agree");
  nlohmann::json exits = nlohmann::json::array();
  for (size_t e = 0; e < caches.exits.size(); ++e) {
    const ExitCache& c = caches.exits[e];
    total_hits += hits[e];
    total_hit_agree += hit_agree[e];
    std::printf("%-10s %9.4f %9.4f %10s\n", c.exit_name.c_str(), c.enabled() ? c.threshold : NAN, hits[e] / n,
                hits[e] ? str_cat(double(hit_agree[e]) / hits[e]).c_str() : "-");
    exits.push_back({{"name", c.exit_name},
                     {"enabled", c.enabled()},
                     {"threshold", c.threshold},
                     {"hit_rate", hits[e] / n},
                     {"hit_agreement", hits[e] ? double(hit_agree[e]) / hits[e] : 1.0}});
  }
  const double mc = mean(lat_cache), mf = mean(lat_full);
  std::printf("hit rate %.4f, agreement with the full model %.4f (hits alone %.4f)\n", total_hits / n, agree / n,
              total_hits ? double(total_hit_agree) / total_hits : 1.0);
  std::printf("accuracy: full model %.4f, with caches %.4f\n", correct_full / n, correct_cache / n);
  std::printf("latency ms: caches mean %.3f p50 %.3f p99 %.3f | full mean %.3f p50 %.3f p99 %.3f | speed-up %.2fx\n",
              mc, cli::percentile(lat_cache, 50), cli::percentile(lat_cache, 99), mf, cli::percentile(lat_full, 50),
              cli::percentile(lat_full, 99), mf / mc);
  if (a.has("json")) {
    nlohmann::json j = {
        {"trace", trace.kind},
        {"seed", trace.seed},
        {"requests", trace.requests.size()},
        {"model", model_path},
        {"caches", a.get("caches")},
        {"exits", exits},
        {"hit_rate", total_hits / n},
        {"agreement", agree / n},
        {"hit_agreement", total_hits ? double(total_hit_agree) / total_hits : 1.0},
        {"accuracy_full", correct_full / n},
        {"accuracy_caches", correct_cache / n},
        {"latency_ms",
         {{"caches", {{"mean", mc}, {"p50", cli::percentile(lat_cache, 50)}, {"p99", cli::percentile(lat_cache, 99)}}},
          {"full", {{"mean", mf}, {"p50", cli::percentile(lat_full, 50)}, {"p99", cli::percentile(lat_full, 99)}}}}},
        {"speedup_mean", mf / mc}};
    write_text(a.get("json"), j.dump(2) + "\n");
  }
  return 0;
}

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

int dispatch(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  const std::set<std::string> common = {"threads", "device"};
  auto with = [&](std::set<std::string> s) {
    s.insert(common.begin(), common.end());
    return s;
  };
  if (cmd == "info") {
    if (wants_help(argc, argv)) return std::fputs(kInfoHelp, stdout), 0;
    return cmd_info(Args(argc, argv, 2, {}, {"json"}));
  }
  if (cmd == "infer") {
    if (wants_help(argc, argv)) return std::fputs(kInferHelp, stdout), 0;
    return cmd_infer(Args(argc, argv, 2, with({"model", "input", "output"}), {"normalize"}));
  }
  if (cmd == "run") {
    if (wants_help(argc, argv)) return std::fputs(kRunHelp, stdout), 0;
    return cmd_run(Args(argc, argv, 2, with({"model", "data", "split", "batch", "limit", "data-dir", "json"}), {}));
  }
  if (cmd == "profile") {
    if (wants_help(argc, argv)) return std::fputs(kProfileHelp, stdout), 0;
    return cmd_profile(Args(argc, argv, 2, with({"model", "batch", "size", "repeats", "warmup", "json", "trace"}), {}));
  }
  if (cmd == "devices") return cmd_devices();
  if (cmd == "cache") {
    if (argc < 3 || std::string(argv[2]) != "build") fail("usage: gati cache build ... (see gati cache build --help)");
    if (wants_help(argc, argv)) return std::fputs(kCacheBuildHelp, stdout), 0;
    return cmd_cache_build(
        Args(argc, argv, 3,
             with({"model", "data", "data-dir", "out", "target-agreement", "rule", "train", "holdout", "epochs"}), {}));
  }
  if (cmd == "serve-sim") {
    if (wants_help(argc, argv)) return std::fputs(kServeSimHelp, stdout), 0;
    return cmd_serve_sim(Args(
        argc, argv, 2, with({"model", "caches", "trace", "requests", "seed", "save-trace", "json", "data-dir"}), {}));
  }
  fail("unknown command '", cmd, "' (valid: info, infer, run, profile, devices, cache, serve-sim; see gati --help)");
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
