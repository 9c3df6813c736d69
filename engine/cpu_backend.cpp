// The CPU backend: kernels/*_cpu behind the Backend interface.
//
// It is both the engine's backend on machines without a GPU and the oracle
// the CUDA backend is tested against, so it favours plain, checked code paths
// (one GEMM with a fused epilogue for every conv) over special cases.
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "engine/backend.h"
#include "engine/error.h"
#include "kernels/conv2d_cpu.h"
#include "kernels/pool_cpu.h"
#include "weights/model.h"

namespace gati {
namespace {

class HostBuffer final : public Buffer {
 public:
  explicit HostBuffer(size_t n) : data_(cpu::aligned_floats(n)), n_(n) {}
  float* data() override { return data_.get(); }
  size_t floats() const override { return n_; }

 private:
  cpu::AlignedFloats data_;
  size_t n_;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) {
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
#else
    (void)threads;
#endif
  }

  std::string name() const override { return "cpu"; }

  void load_weights(const Model& model) override {
    convs_.clear();
    for (size_t i = 0; i < model.net.convs.size(); ++i) {
      const ConvSpec& s = model.net.convs[i];
      cpu::ConvParams p{s.cin, s.cout, s.kernel, s.stride, s.pad, s.groups};
      convs_.push_back(cpu::pack_conv(p, model.convs[i].weight.data(), model.convs[i].bias.data()));
    }
    // fc.weight is [classes, features]; the GEMM wants B = W^T [features, classes].
    const int classes = model.arch().num_classes, features = model.net.features;
    std::vector<float> wt(size_t(features) * size_t(classes));
    for (int o = 0; o < classes; ++o)
      for (int f = 0; f < features; ++f)
        wt[size_t(f) * size_t(classes) + size_t(o)] = model.fc_weight[size_t(o) * size_t(features) + size_t(f)];
    fc_ = cpu::pack_b(wt.data(), features, classes, classes);
    fc_bias_ = model.fc_bias;
  }

  std::unique_ptr<Buffer> allocate(size_t floats) override { return std::make_unique<HostBuffer>(floats); }

  void input_from_host_nchw(const float* host, const Act& s, float* dst) override {
    cpu::nchw_to_nhwc(host, s.n, s.c, s.h, s.w, dst);
  }

  void conv(int conv, const float* in, const Act& s, float* out, const float* residual, bool relu) override {
    cpu::conv2d_nhwc(convs_.at(size_t(conv)), in, s.n, s.h, s.w, out, residual, relu, ws_);
  }

  void max_pool(const float* in, const Act& s, int kernel, int stride, int pad, float* out) override {
    cpu::max_pool_nhwc(in, s.n, s.h, s.w, s.c, kernel, stride, pad, out);
  }

  void global_avg_pool(const float* in, const Act& s, float* out) override {
    cpu::global_avg_pool_nhwc(in, s.n, s.h * s.w, s.c, out);
  }

  void classifier(const float* pooled, int n, float* logits) override {
    cpu::Epilogue ep;
    ep.bias = fc_bias_.data();
    cpu::gemm(n, pooled, fc_.k, fc_, logits, fc_.n, ep);
  }

  void to_host(const float* src, size_t floats, float* host) override {
    if (floats) std::memcpy(host, src, floats * sizeof(float));
  }
  void synchronize() override {}

 private:
  std::vector<cpu::PackedConv> convs_;
  cpu::PackedB fc_;
  std::vector<float> fc_bias_;
  cpu::Workspace ws_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace gati
