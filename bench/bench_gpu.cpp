// Google Benchmark suite for the CUDA backend.
//
//   bench_gpu --models=a.safetensors,b.safetensors [--batches=1,8,64,256] [--exits [--caches=C]] [--fp16] [benchmark
//   flags]
//
// Whole-model latency through the Engine on the GPU (host input in, results
// out, one synchronisation per run: what a caller sees; and with the input
// already in device memory, model_device_input/), the cost of
// consulting caches that never hit (--exits), and the exit-point ops alone,
// timed with CUDA events (manual time): the fused exit head, compaction and
// the SGD step at ResNet shapes, with bytes/s counters to hold against the
// GPU's bandwidth.  Without a usable GPU it says why and exits with status 2.
#include "bench/bench_common.h"
#include "kernels/cuda/cuda_device.h"

namespace {

using gati::bench::random_floats;

struct OpRig {
  std::shared_ptr<const gati::BackendDevice> device;
  std::unique_ptr<gati::BackendContext> ctx;
  std::unique_ptr<gati::Buffer> exit_buf;
  gati::ExitState st;
  OpRig(int dim, int batch, int classes) {
    device = gati::make_backend_device("cuda", gati::bench::op_model(dim));
    ctx = device->make_context(0);
    exit_buf = ctx->allocate_host_visible(gati::exit_state_bytes(batch, classes));
    st = gati::exit_state_at(exit_buf->data(), batch);
  }
  // Runs `op` between two events; the elapsed time is the iteration's.
  template <class F>
  void time(benchmark::State& state, F&& op) {
    for (auto _ : state) {
      ctx->timing_begin();
      op();
      ctx->timing_mark();
      state.SetIterationTime(ctx->timing_read().back() / 1e3);
    }
  }
};

// {h (= w), channels, classes, batch, pool}: the fused exit head reads the whole block output once.
void BM_ExitHead(benchmark::State& state) {
  const int h = int(state.range(0)), c = int(state.range(1)), classes = int(state.range(2)), n = int(state.range(3));
  const gati::PoolSpec pool = gati::parse_pool(gati::bench::kBenchPools[state.range(4)]);
  OpRig rig(c, n, classes);
  gati::ExitHeadSpec spec = gati::bench::random_head(c, classes, pool);
  spec.name = "bench";
  const auto heads = rig.device->upload_exit_heads({spec});
  const std::vector<float> x = random_floats(size_t(n) * size_t(h * h) * size_t(c), 4);
  auto act = rig.ctx->allocate(x.size() * sizeof(float));
  auto pooled = rig.ctx->allocate(size_t(n) * size_t(spec.dim) * sizeof(float));
  rig.ctx->from_host(x.data(), x.size() * sizeof(float), act->data());
  rig.ctx->begin_exits(rig.st, n, classes);
  const gati::Act shape{n, h, h, c};
  rig.time(state, [&] { rig.ctx->exit_head(*heads, 0, act->floats(), shape, 0, rig.st, 0, pooled->floats()); });
  const double bytes = double(x.size() + size_t(spec.dim) * size_t(classes)) * sizeof(float);
  state.counters["bytes/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_ExitHead)
    ->ArgNames({"h", "c", "classes", "n", "pool"})
    ->Args({56, 256, 1000, 1, 0})
    ->Args({28, 512, 1000, 1, 0})
    ->Args({7, 2048, 1000, 1, 0})
    ->Args({56, 256, 1000, 8, 0})
    ->Args({8, 64, 10, 1, 0})
    ->Args({28, 16, 10, 1, 2})
    ->Args({7, 64, 10, 1, 2})
    ->Args({28, 512, 1000, 1, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// {hw, channels, batch}: half the rows exit, the other half move to the front.
void BM_Compact(benchmark::State& state) {
  const int hw = int(state.range(0)), c = int(state.range(1)), n = int(state.range(2));
  OpRig rig(c, n, 1);
  const std::vector<float> x = random_floats(size_t(n) * size_t(hw) * size_t(c), 5);
  auto act = rig.ctx->allocate(x.size() * sizeof(float));
  rig.ctx->from_host(x.data(), x.size() * sizeof(float), act->data());
  rig.ctx->begin_exits(rig.st, n, 1);
  rig.ctx->synchronize();
  for (int i = 0; i < n; ++i) rig.st.hit[i] = i % 2 == 0;
  const gati::Act shape{n, hw, 1, c};
  rig.time(state, [&] { rig.ctx->compact(act->floats(), shape, rig.st, 0, 1); });
  state.counters["bytes/s"] =
      benchmark::Counter(double(x.size()) * sizeof(float), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Compact)
    ->ArgNames({"hw", "c", "n"})
    ->Args({56 * 56, 256, 8})
    ->Args({28 * 28, 512, 64})
    ->Args({7 * 7, 2048, 256})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// {dim, classes, batch}: one SGD step of a learned cache (waits for its status word).
void BM_SgdStep(benchmark::State& state) {
  const int dim = int(state.range(0)), classes = int(state.range(1)), n = int(state.range(2));
  OpRig rig(dim, n, classes);
  const size_t total = size_t(dim) * size_t(classes) + size_t(classes);
  auto params = rig.ctx->allocate((2 * size_t(dim) + 2 * total) * sizeof(float));
  auto feats = rig.ctx->allocate(size_t(n) * size_t(dim) * sizeof(float));
  auto labels = rig.ctx->allocate(size_t(n) * sizeof(int32_t));
  std::vector<float> init = random_floats(2 * size_t(dim) + 2 * total, 6);
  for (size_t i = 0; i < total; ++i) init[2 * size_t(dim) + total + i] = 0.f;  // velocity
  for (size_t i = size_t(dim); i < 2 * size_t(dim); ++i) init[i] = 1.f;        // inv_std
  std::vector<int32_t> y(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) y[size_t(i)] = i % classes;
  const std::vector<float> f = random_floats(size_t(n) * size_t(dim), 7);
  rig.ctx->from_host(init.data(), init.size() * sizeof(float), params->data());
  rig.ctx->from_host(f.data(), f.size() * sizeof(float), feats->data());
  rig.ctx->from_host(y.data(), y.size() * sizeof(int32_t), labels->data());
  float* p = params->floats();
  const gati::LinearHeadMut h{
      dim, classes, p, p + dim, p + 2 * dim, p + 2 * dim + size_t(dim) * size_t(classes), p + 2 * dim + total};
  const gati::SgdHyper hp{1e-4f, 0.9f, 5e-4f};
  rig.time(state, [&] {
    double loss = 0;
    if (rig.ctx->linear_sgd_step(h, feats->floats(), static_cast<int32_t*>(labels->data()), n, hp, &loss) !=
        gati::OpStatus::kOk)
      state.SkipWithError("the SGD step was rejected");
  });
}
BENCHMARK(BM_SgdStep)
    ->ArgNames({"dim", "classes", "n"})
    ->Args({256, 1000, 1})
    ->Args({2048, 1000, 32})
    ->Args({64, 10, 32})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// model_device_input/<arch>/batch:<b>: the input already in device memory
// (RunOptions::input_on_device; checked there), logits back to the host: the
// like-for-like of PyTorch with its input on the GPU.
void BM_ModelDeviceInput(benchmark::State& state, std::shared_ptr<gati::Engine> engine, int batch) {
  const gati::Arch& a = engine->arch();
  const std::vector<float> x =
      random_floats(size_t(batch) * size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w), 7);
  gati::Session session = engine->session();
  std::unique_ptr<gati::Buffer> input = session.context().allocate(x.size() * sizeof(float));
  session.context().from_host(x.data(), x.size() * sizeof(float), input->data());
  session.context().synchronize();
  gati::RunOptions opts;
  opts.input_on_device = true;
  session.infer(input->floats(), batch, a.in_channels, a.input_h, a.input_w, opts);  // plan + warm caches
  for (auto _ : state)
    benchmark::DoNotOptimize(session.infer(input->floats(), batch, a.in_channels, a.input_h, a.input_w, opts));
  state.counters["images/s"] = benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
}

void register_device_input(const gati::bench::Args& args) {
  for (const std::string& path : args.models) {
    gati::EngineOptions eo;
    eo.device = "cuda";
    eo.fp16 = args.fp16;
    auto engine = std::make_shared<gati::Engine>(path, eo);
    for (int b : args.batches)
      benchmark::RegisterBenchmark(
          ("model_device_input/" + engine->arch().name + "/batch:" + std::to_string(b)).c_str(), BM_ModelDeviceInput,
          engine, b)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string why;
  const std::vector<gati::cuda::DeviceInfo> devs = gati::cuda::devices(&why);
  if (devs.empty() || !devs.front().has_code) {
    std::fprintf(stderr, "bench_gpu: %s\n",
                 devs.empty() ? why.c_str() : ("no code for " + devs.front().name + " in this build").c_str());
    return 2;
  }
  gati::bench::Args args = gati::bench::parse_args(argc, argv);
  try {
    gati::bench::register_models(args, "cuda");
    register_device_input(args);
  } catch (const gati::Error& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    return 1;
  }
  return gati::bench::run_benchmarks(args);
}
