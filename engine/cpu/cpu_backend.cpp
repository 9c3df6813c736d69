// The CPU backend: kernels/cpu behind the backend interface.
//
// It is both the engine's backend on machines without a GPU and the oracle
// the CUDA backend is tested against, so it favours plain, checked code paths
// (one GEMM with a fused epilogue for every conv) over special cases.  The
// device holds the packed weights, shared read-only by every context; a
// context owns its im2col workspace and its thread count, applied through a
// ThreadScope around each op so no process-wide OpenMP setting is touched.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/plan.h"
#include "kernels/cpu/conv2d_cpu.h"
#include "kernels/cpu/distance_head_cpu.h"
#include "kernels/cpu/exit_head_cpu.h"
#include "kernels/cpu/gemm_cpu.h"
#include "kernels/cpu/learn_cpu.h"
#include "kernels/cpu/linear_sgd_cpu.h"
#include "kernels/cpu/memory_cpu.h"
#include "kernels/cpu/pool_cpu.h"
#include "kernels/cpu/threads.h"
#include "weights/common/aligned.h"
#include "weights/common/checked.h"
#include "weights/common/error.h"
#include "weights/common/half.h"
#include "weights/common/int8_rows.h"
#include "weights/model.h"

namespace gati {

namespace {

class HostBuffer final : public Buffer {
 public:
  explicit HostBuffer(size_t bytes) : data_(aligned_bytes(bytes)), bytes_(bytes) {}
  void* data() override { return data_.get(); }
  size_t bytes() const override { return bytes_; }

 private:
  AlignedBytes data_;
  size_t bytes_;
};

// GATI_CPU_INT8_HEADS=0: heads that are int8 rows exactly are read as
// halves, for measuring what int8 saves.
bool int8_heads_wanted() {
  const char* v = std::getenv("GATI_CPU_INT8_HEADS");
  return !(v && std::string(v) == "0");
}

// The specs as they are, and for a linear head whose weights are all
// halves exactly a copy as halves, and when they are all int8 times a power
// of two per class exactly (gati cache build rounds large heads so) a copy
// as int8: the kernel reads the smallest, the same values in a quarter or
// half of the floats' bytes.  (A learner reads the halves of its base.)
class CpuExitHeads final : public ExitHeads {
 public:
  CpuExitHeads(std::vector<ExitHeadSpec> specs, int exits) : ExitHeads(std::move(specs), exits) {
    halves_.resize(specs_.size());
    hidden_halves_.resize(specs_.size());
    int8_.resize(specs_.size());
    for (size_t i = 0; i < specs_.size(); ++i) {
      const ExitHeadSpec& s = specs_[i];
      if (s.kind != HeadKind::kLinear) continue;
      if (int8_heads_wanted()) int8_[i] = int8_rows_if_exact(s.weight, s.classes, s.inputs());
      if (cpu::fast_half_weights()) {
        halves_[i] = halves_if_exact(s.weight);
        if (s.hidden > 0) hidden_halves_[i] = halves_if_exact(s.hidden_weight);
      }
    }
  }
  LinearHeadView view(int head) const override {
    LinearHeadView v = host_linear_view(linear_spec(head));
    if (!halves_[size_t(head)].empty()) v.weight_f16 = halves_[size_t(head)].data();
    if (!hidden_halves_[size_t(head)].empty()) v.hidden_weight_f16 = hidden_halves_[size_t(head)].data();
    if (!int8_[size_t(head)].q.empty()) {
      v.weight_i8 = int8_[size_t(head)].q.data();
      v.weight_i8_scale = int8_[size_t(head)].scale.data();
    }
    return v;
  }
  DistanceHeadView distance_view(int head) const override { return host_distance_view(distance_spec(head)); }

 private:
  std::vector<std::vector<uint16_t>> halves_;         // per head; empty: read the floats
  std::vector<std::vector<uint16_t>> hidden_halves_;  // per head, of the hidden layer
  std::vector<Int8Rows> int8_;                        // per head; empty: not int8 exactly
};

class CpuDevice final : public BackendDevice {
 public:
  explicit CpuDevice(const Model& model) : exits_(int(exit_points(model.net).size())) {
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

  std::string name() const override { return "cpu"; }
  std::unique_ptr<BackendContext> make_context(int threads) const override;

  std::shared_ptr<const ExitHeads> upload_exit_heads(std::vector<ExitHeadSpec> specs) const override {
    return std::make_shared<CpuExitHeads>(std::move(specs), exits_);
  }

  const cpu::PackedConv& conv(int i) const { return convs_.at(size_t(i)); }
  const cpu::PackedB& fc() const { return fc_; }
  const float* fc_bias() const { return fc_bias_.data(); }

 private:
  int exits_;  // exit points
  std::vector<cpu::PackedConv> convs_;
  cpu::PackedB fc_;
  std::vector<float> fc_bias_;
};

bool pool_in_conv_wanted() {
  const char* v = std::getenv("GATI_CPU_POOL_IN_CONV");
  return !(v && std::string(v) == "0");
}

class CpuContext final : public BackendContext {
 public:
  CpuContext(std::shared_ptr<const CpuDevice> device, int threads) : device_(std::move(device)), threads_(threads) {}

  std::unique_ptr<Buffer> allocate(size_t bytes) override { return std::make_unique<HostBuffer>(bytes); }
  std::unique_ptr<Buffer> allocate_host_visible(size_t bytes) override { return std::make_unique<HostBuffer>(bytes); }

  size_t stage_input(const float* host, const Act& s) override {
    staged_ = host;
    return first_non_finite(host, s.elems());
  }
  void input_from_stage(const Act& s, float* dst) override {
    cpu::ThreadScope t(threads_);
    pooled_act_ = nullptr;
    cpu::nchw_to_nhwc(staged_, s.n, s.c, s.h, s.w, dst);
  }

  void conv_feeds_exit(const PoolSpec& pool) override {
    if (!pool_in_conv_) return;
    next_pool_ = pool;
    pool_next_ = true;
  }

  void conv(int conv, const float* in, const Act& s, float* out, const float* residual, bool relu) override {
    cpu::ThreadScope t(threads_);
    pooled_act_ = nullptr;
    const cpu::PackedConv& pc = device_->conv(conv);
    cpu::RowPool* pool = nullptr;
    if (pool_next_ && cpu::pools_in_epilogue(pc)) {
      rows_.start(s.n, pc.p.out_size(s.h), pc.p.out_size(s.w), pc.p.cout, next_pool_);
      pool = &rows_;
    }
    pool_next_ = false;
    if (cpu::conv2d_nhwc(pc, in, s.n, s.h, s.w, out, residual, relu, ws_, pool)) pooled_act_ = out;
  }

  void max_pool(const float* in, const Act& s, int kernel, int stride, int pad, float* out) override {
    cpu::ThreadScope t(threads_);
    pooled_act_ = nullptr;
    cpu::max_pool_nhwc(in, s.n, s.h, s.w, s.c, kernel, stride, pad, out);
  }

  void global_avg_pool(const float* in, const Act& s, float* out) override {
    cpu::ThreadScope t(threads_);
    cpu::global_avg_pool_nhwc(in, s.n, s.h * s.w, s.c, out);
  }

  void pool_features(const float* in, const Act& s, const PoolSpec& pool, float* out) override {
    cpu::ThreadScope t(threads_);
    if (!pooled_in_conv(in, s, pool, out)) cpu::pool_features_nhwc(in, s.n, s.h, s.w, s.c, pool, out);
  }

  void classifier(const float* pooled, int n, float* logits) override {
    cpu::ThreadScope t(threads_);
    cpu::Epilogue ep;
    ep.bias = device_->fc_bias();
    cpu::gemm(n, pooled, device_->fc().k, device_->fc(), logits, device_->fc().n, ep);
  }

  void begin_exits(const ExitState& st, int n, int classes) override { cpu::begin_exits(st, n, classes); }

  void exit_head(const ExitHeads& heads, int head, const float* act, const Act& s, int exit_id, const ExitState& st,
                 int pos, float* pooled) override {
    cpu::ThreadScope t(threads_);
    check_exit_head_fits(heads, head, s);
    const ExitHeadSpec& spec = heads.specs()[size_t(head)];
    pool_features(act, s, spec.pool, pooled);
    if (spec.kind == HeadKind::kLinear)
      cpu::exit_head_linear_pooled(pooled, s.n, heads.view(head), exit_id, st, pos);
    else
      cpu::exit_head_distance_pooled(pooled, s.n, heads.distance_view(head), exit_id, st, pos);
  }

  void compact(float* act, const Act& s, const ExitState& st, int pos_in, int pos_out) override {
    pooled_act_ = nullptr;
    cpu::compact_rows(act, s.n, s.per_sample(), st, pos_in, pos_out);
  }

  int alive(const ExitState& st) override { return *st.alive; }

  OpStatus linear_sgd_step(const LinearHeadMut& h, const float* features, const int32_t* labels, int n,
                           const SgdHyper& hp, double* loss) override {
    const cpu::SgdResult r = cpu::linear_sgd_step(h, features, labels, n, hp);
    if (loss) *loss = r.loss;
    return r.status;
  }
  void linear_sgd_enqueue(const LinearHeadMut& h, const float* features, const int32_t* labels, int n,
                          const SgdHyper& hp, const SgdReport& report) override {
    const cpu::SgdResult r = cpu::linear_sgd_step(h, features, labels, n, hp);
    report.status[0] = int32_t(r.status);
    report.status[1] = int32_t(r.bad_index);
    *report.loss = r.loss;
  }
  void gather_rows(const float* features, int dim, const RowGather& rows, float* x, int32_t* y, int offset) override {
    cpu::gather_rows(features, dim, rows, x, y, offset);
  }
  void publish_linear(const float* weight, const float* bias, int dim, int classes, float* served_w,
                      uint16_t* served_f16, float* served_b) override {
    cpu::publish_linear(weight, bias, dim, classes, served_w, served_f16, served_b);
  }

  void finish_full_model(const float* logits, int n, int classes, const ExitState& st, int pos) override {
    cpu::finish_full_model(logits, n, classes, st, pos);
  }

  void memory_lookup(const MemoryView& m, const float* act, const Act& s, int exit_id, const ExitState& st, int pos,
                     float* pooled) override {
    check_pool_fits("memory at exit " + std::to_string(exit_id), m.dim, m.pool, s.c);
    pool_features(act, s, m.pool, pooled);
    cpu::ThreadScope t(threads_);
    cpu::memory_lookup_pooled(pooled, s.n, m, exit_id, st, pos);
  }
  void memory_insert(const MemoryView& m, const ExitState& st, int n) override { cpu::memory_insert(m, st, n); }

  double peak_gflops() override {
    cpu::ThreadScope t(threads_);
    return cpu::measure_gemm_peak_gflops();
  }

  void timing_begin() override {
    marks_.clear();
    start_ = std::chrono::steady_clock::now();
  }
  void timing_mark() override { marks_.push_back(std::chrono::steady_clock::now()); }
  std::vector<double> timing_read() override {
    std::vector<double> ms;
    for (const auto& m : marks_) ms.push_back(std::chrono::duration<double, std::milli>(m - start_).count());
    return ms;
  }

  void from_host(const void* host, size_t bytes, void* dst) override {
    if (bytes) std::memcpy(dst, host, bytes);
  }
  void to_host(const void* src, size_t bytes, void* host) override {
    if (bytes) std::memcpy(host, src, bytes);
  }
  void synchronize() override {}

 private:
  // Whether the last conv() pooled its output `act` of shape s as `pool`
  // wants (conv_feeds_exit); then the finished features go to out.
  bool pooled_in_conv(const float* act, const Act& s, const PoolSpec& pool, float* out) const {
    if (!act || act != pooled_act_ || s.n != rows_.n || s.h != rows_.h || s.w != rows_.w || s.c != rows_.c ||
        pool.grid != rows_.pool.grid || pool.with_max != rows_.pool.with_max)
      return false;
    cpu::pool_features_from_rows(rows_, out);
    return true;
  }

  std::shared_ptr<const CpuDevice> device_;
  int threads_;
  // Pooling in the convolution's epilogue (GATI_CPU_POOL_IN_CONV=0 turns it
  // off, for measuring what it saves): the pooling asked for, and the
  // activation whose row sums rows_ holds (null once anything may have
  // moved or rewritten it).
  bool pool_in_conv_ = pool_in_conv_wanted();
  bool pool_next_ = false;
  PoolSpec next_pool_;
  cpu::RowPool rows_;
  const float* pooled_act_ = nullptr;
  const float* staged_ = nullptr;  // the caller's input, read in place
  cpu::Workspace ws_;
  std::chrono::steady_clock::time_point start_;
  std::vector<std::chrono::steady_clock::time_point> marks_;
};

std::unique_ptr<BackendContext> CpuDevice::make_context(int threads) const {
  return std::make_unique<CpuContext>(std::static_pointer_cast<const CpuDevice>(shared_from_this()), threads);
}

}  // namespace

std::shared_ptr<const BackendDevice> make_cpu_device(const Model& model) { return std::make_shared<CpuDevice>(model); }

}  // namespace gati
