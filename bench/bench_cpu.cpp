// Google Benchmark suite for the CPU backend.
//
//   bench_cpu --models=a.safetensors,b.safetensors [--batches=1,8] [--exits] [benchmark flags]
//
// With --exits, each model also runs through a Session with caches off and
// with a linear exit head attached after every block whose threshold never
// fires ("caches:never"): the cost of consulting caches that never hit, i.e.
// the exit head, compaction and survivor check at every block.
// Whole-model latency per model file and batch (the models come from
// tools/convert.py --random, or the demo model), plus the kernels on their
// own at ResNet shapes.  Counters: images/s and achieved GFLOP/s (2 x MACs),
// so a reader sees how far from the machine's peak each number is.  Reports
// use the median of --benchmark_repetitions when asked
// (bench/compare_pytorch_cpu.py does).
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <sstream>

#include "engine/engine.h"
#include "kernels/cpu/conv2d_cpu.h"
#include "kernels/cpu/gemm_cpu.h"

namespace {

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

void BM_Model(benchmark::State& state, std::shared_ptr<gati::Engine> engine, int batch) {
  const gati::Arch& a = engine->arch();
  const std::vector<float> x =
      random_floats(size_t(batch) * size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w), 7);
  engine->infer(x.data(), batch);  // plan + warm caches
  for (auto _ : state) benchmark::DoNotOptimize(engine->infer(x.data(), batch));
  const gati::Plan p = gati::make_plan(engine->model().net, batch, a.input_h, a.input_w);
  state.counters["images/s"] = benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(p.macs_per_sample) * batch / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// A random linear head after every block; threshold > 1 never fires.
std::vector<gati::ExitHeadSpec> never_firing_heads(const gati::Model& m) {
  std::vector<gati::ExitHeadSpec> heads;
  for (size_t b = 0; b < m.net.blocks.size(); ++b) {
    gati::ExitHeadSpec h;
    h.block = int(b);
    h.dim = m.net.blocks[b].out_channels;
    h.classes = m.arch().num_classes;
    h.mean = random_floats(size_t(h.dim), 1);
    h.inv_std.assign(size_t(h.dim), 1.0f);
    h.weight = random_floats(size_t(h.dim) * size_t(h.classes), 2);
    h.bias = random_floats(size_t(h.classes), 3);
    h.threshold = 2.0f;
    heads.push_back(std::move(h));
  }
  return heads;
}

void BM_ModelExits(benchmark::State& state, std::shared_ptr<gati::Engine> engine, int batch, bool attached) {
  const gati::Arch& a = engine->arch();
  const std::vector<float> x =
      random_floats(size_t(batch) * size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w), 7);
  const auto heads = engine->make_exit_heads(never_firing_heads(engine->model()));
  gati::Session session = engine->session();
  gati::RunOptions opts;
  if (attached) opts.heads = heads.get();
  std::vector<gati::SampleResult> results(static_cast<size_t>(batch));
  session.run(x.data(), batch, a.in_channels, a.input_h, a.input_w, results.data(), nullptr, opts);
  for (auto _ : state) {
    session.run(x.data(), batch, a.in_channels, a.input_h, a.input_w, results.data(), nullptr, opts);
    benchmark::DoNotOptimize(results.data());
  }
  state.counters["images/s"] = benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
}

// One convolution at a ResNet shape: {cin, cout, kernel, stride, hw, batch}.
void BM_Conv(benchmark::State& state) {
  const int cin = int(state.range(0)), cout = int(state.range(1)), k = int(state.range(2)),
            stride = int(state.range(3));
  const int hw = int(state.range(4)), n = int(state.range(5));
  const gati::cpu::ConvParams p{cin, cout, k, stride, k / 2, 1};
  const auto w = random_floats(size_t(cout) * size_t(cin) * size_t(k * k), 1);
  const auto bias = random_floats(size_t(cout), 2);
  const auto in = random_floats(size_t(n) * size_t(hw * hw) * size_t(cin), 3);
  const int oh = p.out_size(hw);
  std::vector<float> out(size_t(n) * size_t(oh * oh) * size_t(cout));
  const gati::cpu::PackedConv pc = gati::cpu::pack_conv(p, w.data(), bias.data());
  gati::cpu::Workspace ws;
  for (auto _ : state) {
    gati::cpu::conv2d_nhwc(pc, in.data(), n, hw, hw, out.data(), nullptr, true, ws);
    benchmark::ClobberMemory();
  }
  const double macs = double(n) * oh * oh * cout * cin * k * k;
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * macs / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Conv)
    ->ArgNames({"cin", "cout", "k", "stride", "hw", "n"})
    ->Args({3, 64, 7, 2, 224, 1})
    ->Args({64, 64, 3, 1, 56, 1})
    ->Args({128, 128, 3, 2, 56, 1})
    ->Args({256, 64, 1, 1, 56, 1})
    ->Args({512, 512, 3, 1, 7, 1})
    ->Args({1024, 2048, 1, 2, 14, 1})
    ->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> models;
  std::vector<int> batches = {1};
  bool exits = false;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--models=", 9) == 0) {
      models = split(argv[i] + 9);
    } else if (std::strncmp(argv[i], "--batches=", 10) == 0) {
      batches.clear();
      for (const auto& b : split(argv[i] + 10)) batches.push_back(std::stoi(b));
    } else if (std::strcmp(argv[i], "--exits") == 0) {
      exits = true;
    } else {
      rest.push_back(argv[i]);
    }
  }
  try {
    for (const std::string& path : models) {
      auto engine = std::make_shared<gati::Engine>(path);
      for (int b : batches)
        benchmark::RegisterBenchmark(("model/" + engine->arch().name + "/batch:" + std::to_string(b)).c_str(), BM_Model,
                                     engine, b)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      if (exits)
        for (int b : batches)
          for (bool attached : {false, true})
            benchmark::RegisterBenchmark(("exits/" + engine->arch().name + "/batch:" + std::to_string(b) +
                                          (attached ? "/caches:never" : "/caches:off"))
                                             .c_str(),
                                         BM_ModelExits, engine, b, attached)
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
    }
  } catch (const gati::Error& e) {
    std::fprintf(stderr, "bench_cpu: %s\n", e.what());
    return 1;
  }
  int rest_argc = int(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rest_argc, rest.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
