// Google Benchmark suite for the CPU backend.
//
//   bench_cpu --models=a.safetensors,b.safetensors [--batches=1,8] [--exits [--caches=C.safetensors]]
//             [benchmark flags]
//
// --caches takes the never-firing heads from a cache file (its open exits,
// as gati cache build made them, thresholds raised) instead of random
// linear heads over global average pooling at every exit point.
// With --exits, each model also runs through a Session with caches off and
// with a linear exit head attached after every block whose threshold never
// fires ("caches:never"): the cost of consulting caches that never hit, i.e.
// the exit head, compaction and survivor check at every block; and both in
// turns within one benchmark ("paired", counter overhead_%), which this
// shared machine's drift disturbs far less than two medians taken apart.
// Whole-model latency per model file and batch (the models come from
// tools/convert.py --random, or the demo model), plus the kernels on their
// own at ResNet shapes.  Counters: images/s and achieved GFLOP/s (2 x MACs),
// so a reader sees how far from the machine's peak each number is.  Reports
// use the median of --benchmark_repetitions when asked
// (bench/compare_pytorch_cpu.py does).
#include "bench/bench_common.h"
#include "kernels/cpu/conv2d_cpu.h"
#include "kernels/cpu/gemm_cpu.h"

namespace {

using gati::bench::random_floats;

// One convolution at a ResNet shape: {cin, cout, kernel, stride, hw, batch,
// groups, cold}: ImageNet ResNets' and ResNeXt's, and the CIFAR ResNets'
// three stages (16, 32, 64 channels on 28x28 Fashion-MNIST).  cold = 1
// cycles through copies of the layer (at least 64 MiB of weights in all) so
// that each run reads its weights from memory, as in a whole model at batch 1
// whose weights outgrow the caches; cold = 0 keeps one copy cache-resident.
void BM_Conv(benchmark::State& state) {
  const int cin = int(state.range(0)), cout = int(state.range(1)), k = int(state.range(2)),
            stride = int(state.range(3));
  const int hw = int(state.range(4)), n = int(state.range(5));
  const int groups = int(state.range(6));
  const bool cold = state.range(7) != 0;
  const gati::cpu::ConvParams p{cin, cout, k, stride, k / 2, groups};
  const size_t weights = size_t(cout) * size_t(cin / groups) * size_t(k * k);
  const auto w = random_floats(weights, 1);
  const auto bias = random_floats(size_t(cout), 2);
  const auto in = random_floats(size_t(n) * size_t(hw * hw) * size_t(cin), 3);
  const int oh = p.out_size(hw);
  std::vector<float> out(size_t(n) * size_t(oh * oh) * size_t(cout));
  std::vector<gati::cpu::PackedConv> copies(cold ? std::max<size_t>(2, (size_t(64) << 20) / (weights * 4) + 1) : 1);
  for (auto& pc : copies) pc = gati::cpu::pack_conv(p, w.data(), bias.data());
  gati::cpu::Workspace ws;
  size_t i = 0;
  for (auto _ : state) {
    gati::cpu::conv2d_nhwc(copies[i], in.data(), n, hw, hw, out.data(), nullptr, true, ws);
    i = (i + 1) % copies.size();
    benchmark::ClobberMemory();
  }
  const double macs = double(n) * oh * oh * cout * (cin / groups) * k * k;
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * macs / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Conv)
    ->ArgNames({"cin", "cout", "k", "stride", "hw", "n", "groups", "cold"})
    ->Args({3, 64, 7, 2, 224, 1, 1, 0})
    ->Args({64, 64, 3, 1, 56, 1, 1, 0})
    ->Args({128, 128, 3, 2, 56, 1, 1, 0})
    ->Args({256, 64, 1, 1, 56, 1, 1, 0})
    ->Args({512, 512, 3, 1, 7, 1, 1, 0})
    ->Args({512, 512, 3, 1, 7, 1, 1, 1})
    ->Args({256, 256, 3, 1, 14, 1, 1, 1})
    ->Args({1024, 2048, 1, 2, 14, 1, 1, 0})
    ->Args({128, 128, 3, 1, 28, 8, 1, 0})
    ->Args({128, 128, 3, 1, 28, 1, 1, 0})
    ->Args({16, 16, 3, 1, 28, 1, 1, 0})
    ->Args({16, 16, 3, 1, 28, 8, 1, 0})
    ->Args({32, 32, 3, 1, 14, 1, 1, 0})
    ->Args({64, 64, 3, 1, 7, 1, 1, 0})
    ->Args({256, 256, 3, 1, 28, 1, 32, 0})
    ->Args({512, 512, 3, 1, 14, 1, 32, 0})
    ->Args({1024, 1024, 3, 1, 7, 1, 32, 0})
    ->Unit(benchmark::kMicrosecond);

// {h (= w), channels, classes, batch, pool, hidden}: one exit head through
// the CPU backend (pooling, scores, decision), as the executor calls it
// after a block; the demo's mix4x4 heads (linear, and the MLP gati cache
// build makes by default) and ResNet-50's 1000-class ones.
void BM_ExitHead(benchmark::State& state) {
  const int h = int(state.range(0)), c = int(state.range(1)), classes = int(state.range(2)), n = int(state.range(3));
  gati::ExitHeadSpec spec = gati::bench::random_head(
      c, classes, gati::parse_pool(gati::bench::kBenchPools[state.range(4)]), int(state.range(5)));
  spec.name = "bench";
  const auto device = gati::make_backend_device("cpu", gati::bench::op_model(c));
  const auto ctx = device->make_context(0);
  const auto heads = device->upload_exit_heads({spec});
  auto state_buf = ctx->allocate_host_visible(gati::exit_state_bytes(n, classes));
  const gati::ExitState st = gati::exit_state_at(state_buf->data(), n);
  const std::vector<float> x = random_floats(size_t(n) * size_t(h * h) * size_t(c), 4);
  std::vector<float> pooled(size_t(n) * size_t(spec.dim));
  ctx->begin_exits(st, n, classes);
  for (auto _ : state) {
    ctx->exit_head(*heads, 0, x.data(), {n, h, h, c}, 0, st, 0, pooled.data());
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_ExitHead)
    ->ArgNames({"h", "c", "classes", "n", "pool", "hidden"})
    ->Args({28, 16, 10, 1, 0, 0})
    ->Args({28, 16, 10, 1, 2, 0})
    ->Args({14, 32, 10, 1, 2, 0})
    ->Args({7, 64, 10, 1, 2, 0})
    ->Args({28, 16, 10, 1, 2, 32})
    ->Args({14, 32, 10, 1, 2, 32})
    ->Args({7, 64, 10, 1, 2, 32})
    ->Args({56, 256, 1000, 1, 0, 0})
    ->Args({7, 2048, 1000, 1, 0, 0})
    ->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  gati::bench::Args args = gati::bench::parse_args(argc, argv);
  try {
    gati::bench::register_models(args, "cpu");
  } catch (const gati::Error& e) {
    std::fprintf(stderr, "bench_cpu: %s\n", e.what());
    return 1;
  }
  return gati::bench::run_benchmarks(args);
}
