// The CUDA backend: kernels/cuda behind the backend interface.
//
// The device uploads the folded weights once and is shared, read-only, by
// every context.  Activations are NCHW in FP32, where cuDNN's fastest FFMA
// kernels (and its FFT and Winograd ones) are NCHW ones: on an H100,
// ResNet-50's convolutions at batch 64 took 22-23 ms NCHW against 26-30 ms
// NHWC (bench/results/h100-2026-11-22d).  With TF32 they are NHWC, the
// tensor cores' layout; with FP16 (CudaOptions::fp16) NHWC halves, the
// convolution weights and biases halves too, every op computing in FP32
// between an FP16 load and an FP16 store (kernels/cuda/act_type.cuh).  GATI_CUDA_LAYOUT=nhwc|nchw overrides the choice.
// The filters follow: PyTorch's OIHW is cuDNN's KCRS as it is, and is
// repacked to KRSC for NHWC.  A context is one worker's stream, cuDNN
// handle, workspace, scratch and timing events; every op only enqueues on
// its stream.  The host waits in exactly three places: alive() (batch > 1,
// after a compaction), synchronize(), and the copies out (to_host, the SGD
// status).  Exit state and results are mapped pinned memory, written by the
// kernels and read by the host without a copy.
//
// The ops between two host waits are recorded once as a CUDA graph and
// replayed (segment_begin; GATI_CUDA_GRAPHS=0 turns that off): one launch
// in place of a hundred cuDNN and kernel calls.  A graph holds the device
// addresses it was recorded with, so the context drops every graph when
// one of its scratch buffers moves (they only grow) and the executor when
// its own memory does.  At batch 1 one graph holds the whole run: each exit
// is a conditional node whose body is the rest of the network
// (kernels/cuda/skip.cuh), so an exit that fires skips it on the device and
// the host waits once (GATI_CUDA_SKIP=0: one graph per exit, the host
// waiting after each).
#include "engine/cuda/cuda_backend.h"

#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>
#include <cstdint>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/plan.h"
#include "engine/staging.h"
#include "kernels/cuda/conv_cudnn.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/cuda_device.h"
#include "kernels/cuda/cuda_memory.h"
#include "kernels/cuda/distance_head.cuh"
#include "kernels/cuda/exit_head.cuh"
#include "kernels/cuda/layout.cuh"
#include "kernels/cuda/learn.cuh"
#include "kernels/cuda/linear.cuh"
#include "kernels/cuda/linear_sgd.cuh"
#include "kernels/cuda/memory.cuh"
#include "kernels/cuda/pool.cuh"
#include "kernels/cuda/skip.cuh"
#include "weights/common/checked.h"
#include "weights/common/error.h"
#include "weights/common/half.h"
#include "weights/model.h"
#include "weights/safetensors.h"

namespace gati {

namespace {

using cuda::DeviceBuffer;

// A context's Buffer over device memory (DeviceBuffer) or mapped host
// memory (MappedBuffer); bytes() is what was asked, not the rounded size.
template <class Memory>
class OwnedBuffer final : public Buffer {
 public:
  OwnedBuffer(size_t bytes, const std::string& what) : b_(bytes, what), bytes_(bytes) {}
  void* data() override { return b_.data(); }
  size_t bytes() const override { return bytes_; }

 private:
  Memory b_;
  size_t bytes_;
};

struct DeviceHead {
  DeviceBuffer mean, inv_std, weight, bias, selector;          // kLinear
  DeviceBuffer weight_f16;                                     // kLinear with weights that are halves exactly
  DeviceBuffer hidden_weight, hidden_bias, hidden_weight_f16;  // kLinear with a hidden layer
  DeviceBuffer projection, keys, labels, share;                // kKnn, kKmeans
};

class CudaExitHeads final : public ExitHeads {
 public:
  CudaExitHeads(std::vector<ExitHeadSpec> specs, int exits) : ExitHeads(std::move(specs), exits) {
    for (const ExitHeadSpec& s : specs_) {  // sizes checked by ExitHeads
      const std::string what = "exit head '" + s.name + "'";
      auto up = [&](const auto& v) { return cuda::upload(v.data(), v.size() * sizeof(v[0]), what); };
      DeviceHead d;
      d.mean = up(s.mean);
      d.inv_std = up(s.inv_std);
      if (s.kind == HeadKind::kLinear) {
        d.weight = up(s.weight);
        d.bias = up(s.bias);
        // Weights that are halves exactly go up as halves too, which the
        // exit kernel reads: the same values in half the bytes.
        if (const std::vector<uint16_t> h = halves_if_exact(s.weight); !h.empty()) d.weight_f16 = up(h);
        if (!s.selector.empty()) d.selector = up(s.selector);
        if (s.hidden > 0) {
          d.hidden_weight = up(s.hidden_weight);
          d.hidden_bias = up(s.hidden_bias);
          if (const std::vector<uint16_t> h = halves_if_exact(s.hidden_weight); !h.empty()) d.hidden_weight_f16 = up(h);
        }
      } else {
        d.projection = up(s.projection);
        d.keys = up(s.keys);
        d.labels = up(s.labels);
        d.share = up(s.share);
      }
      heads_.push_back(std::move(d));
    }
  }
  LinearHeadView view(int head) const override {
    const ExitHeadSpec& s = linear_spec(head);
    const DeviceHead& d = heads_.at(size_t(head));
    return {s.dim,
            s.classes,
            d.mean.floats(),
            d.inv_std.floats(),
            d.weight.floats(),
            d.bias.floats(),
            s.threshold,
            s.pool,
            s.selector.empty() ? nullptr : d.selector.floats(),
            s.selector_k(),
            d.weight_f16.bytes() ? static_cast<const uint16_t*>(d.weight_f16.data()) : nullptr,
            nullptr,
            nullptr,
            s.hidden,
            s.hidden > 0 ? d.hidden_weight.floats() : nullptr,
            s.hidden > 0 ? d.hidden_bias.floats() : nullptr,
            d.hidden_weight_f16.bytes() ? static_cast<const uint16_t*>(d.hidden_weight_f16.data()) : nullptr};
  }
  DistanceHeadView distance_view(int head) const override {
    const ExitHeadSpec& s = distance_spec(head);
    const DeviceHead& d = heads_.at(size_t(head));
    return {s.dim,
            s.reduced,
            s.entries(),
            s.neighbours,
            s.classes,
            s.pool,
            d.mean.floats(),
            d.inv_std.floats(),
            d.projection.floats(),
            d.keys.floats(),
            static_cast<const int32_t*>(d.labels.data()),
            d.share.floats(),
            s.threshold};
  }

 private:
  std::vector<DeviceHead> heads_;
};

struct DeviceConv {
  std::string name;
  cuda::ConvGeometry g;
  DeviceBuffer weight, bias;  // KRSC (NHWC) or KCRS (NCHW), [cout]; in the activations' precision
};

// Values as the device stores them: FP32 as they are, FP16 rounded to the
// nearest half (float_to_half: ties away from zero).
DeviceBuffer upload_values(const std::vector<float>& v, Precision p, const std::string& what) {
  if (p == Precision::kF32) return cuda::upload(v.data(), v.size() * sizeof(float), what);
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    h[i] = float_to_half(v[i]);
    if ((h[i] & 0x7c00u) == 0x7c00u)  // a finite weight past FP16's 65504
      fail(what, ": value ", v[i], " at ", i, " does not fit FP16 (largest 65504); run this model in FP32");
  }
  return cuda::upload(h.data(), h.size() * sizeof(uint16_t), what);
}

// OIHW [cout, cin/groups, k, k] -> KRSC [cout, k, k, cin/groups].
std::vector<float> oihw_to_krsc(const std::vector<float>& w, int cout, int cin_g, int k) {
  std::vector<float> out(w.size());
  for (int o = 0; o < cout; ++o)
    for (int c = 0; c < cin_g; ++c)
      for (int y = 0; y < k; ++y)
        for (int x = 0; x < k; ++x)
          out[((size_t(o) * size_t(k) + size_t(y)) * size_t(k) + size_t(x)) * size_t(cin_g) + size_t(c)] =
              w[((size_t(o) * size_t(cin_g) + size_t(c)) * size_t(k) + size_t(y)) * size_t(k) + size_t(x)];
  return out;
}

Layout choose_layout(const CudaOptions& opt) {
  if (opt.fp16) {  // tensor cores read NHWC
    if (opt.layout && *opt.layout != Layout::kNhwc) fail("device 'cuda': FP16 activations are NHWC, not NCHW");
    return Layout::kNhwc;
  }
  if (opt.layout) return *opt.layout;
  const bool tf32 = opt.tf32;
  const char* v = std::getenv("GATI_CUDA_LAYOUT");
  const std::string want = v ? v : "";
  if (want.empty()) return tf32 ? Layout::kNhwc : Layout::kNchw;
  if (want == "nchw") return Layout::kNchw;
  if (want == "nhwc") return Layout::kNhwc;
  fail("GATI_CUDA_LAYOUT='", want, "' is not nchw or nhwc");
}

class CudaDevice final : public BackendDevice {
 public:
  CudaDevice(const Model& model, const CudaOptions& opt)
      : opt_(opt), layout_(choose_layout(opt)), exits_(int(exit_points(model.net).size())) {
    std::string why;
    const std::vector<cuda::DeviceInfo> devs = cuda::devices(&why);
    if (devs.empty()) fail("device 'cuda': ", why, "; use --device cpu");
    if (opt.device < 0 || size_t(opt.device) >= devs.size())
      fail("device 'cuda': device index ", opt.device, " is out of range (", devs.size(), " device(s))");
    const cuda::DeviceInfo& d = devs[size_t(opt.device)];
    if (!d.has_code)
      fail("device 'cuda': ", d.name, " (sm_", d.major, d.minor, ") has no code in this build; rebuild with ",
           "-DCMAKE_CUDA_ARCHITECTURES=", d.major, d.minor, ", or use --device cpu");
    name_ = str_cat("cuda:", d.index, " (", d.name, ", ", layout_ == Layout::kNchw ? "NCHW" : "NHWC",
                    opt.fp16 ? ", FP16" : "", ")");
    plans_ = std::make_shared<cuda::PlanStore>(
        opt.plan_cache ? *opt.plan_cache : cuda::default_plan_store_path(),
        str_cat(d.name, " sm_", d.major, d.minor, ", ", cuda::CudnnConv::settings(opt.tf32, layout_, precision())));
    cuda::DeviceScope scope(opt.device);
    for (size_t i = 0; i < model.net.convs.size(); ++i) {
      const ConvSpec& s = model.net.convs[i];
      const ConvWeights& w = model.convs[i];
      const int cin_g = s.cin / s.groups;
      const size_t want = size_t(s.cout) * size_t(cin_g) * size_t(s.kernel) * size_t(s.kernel);
      if (w.weight.size() != want || w.bias.size() != size_t(s.cout))
        fail(s.name, ": weight has ", w.weight.size(), " values and bias ", w.bias.size(), ", expected ", want, " and ",
             s.cout);
      const std::vector<float> filter =
          layout_ == Layout::kNhwc ? oihw_to_krsc(w.weight, s.cout, cin_g, s.kernel) : w.weight;
      convs_.push_back({s.name,
                        {s.cin, s.cout, s.kernel, s.stride, s.pad, s.groups},
                        upload_values(filter, precision(), s.name + ".weight"),
                        upload_values(w.bias, precision(), s.name + ".bias")});
    }
    classes_ = model.arch().num_classes;
    features_ = model.net.features;
    if (model.fc_weight.size() != size_t(classes_) * size_t(features_) || model.fc_bias.size() != size_t(classes_))
      fail("fc: weight has ", model.fc_weight.size(), " values, expected ", classes_, " x ", features_);
    fc_weight_ = cuda::upload(model.fc_weight.data(), model.fc_weight.size() * sizeof(float), "fc.weight");
    fc_bias_ = cuda::upload(model.fc_bias.data(), model.fc_bias.size() * sizeof(float), "fc.bias");
  }

  std::string name() const override { return name_; }
  std::unique_ptr<BackendContext> make_context(int threads) const override;
  std::shared_ptr<const ExitHeads> upload_exit_heads(std::vector<ExitHeadSpec> specs) const override {
    cuda::DeviceScope scope(opt_.device);
    return std::make_shared<CudaExitHeads>(std::move(specs), exits_);
  }

  const CudaOptions& options() const { return opt_; }
  cuda::PlanStore* plans() const { return plans_.get(); }
  Layout layout() const { return layout_; }
  Precision precision() const { return opt_.fp16 ? Precision::kF16 : Precision::kF32; }
  const DeviceConv& conv(int i) const {
    if (i < 0 || size_t(i) >= convs_.size())
      fail("conv: index ", i, " is not in the model (", convs_.size(), " convs)");
    return convs_[size_t(i)];
  }
  int classes() const { return classes_; }
  int features() const { return features_; }
  const float* fc_weight() const { return fc_weight_.floats(); }
  const float* fc_bias() const { return fc_bias_.floats(); }

 private:
  CudaOptions opt_;
  Layout layout_;
  int exits_;  // exit points
  std::string name_;
  std::vector<DeviceConv> convs_;
  int classes_ = 0, features_ = 0;
  DeviceBuffer fc_weight_, fc_bias_;
  std::shared_ptr<cuda::PlanStore> plans_;  // shared by the contexts' convolutions
};

class CudaContext final : public BackendContext {
 public:
  explicit CudaContext(std::shared_ptr<const CudaDevice> device)
      : index_(select(device->options().device)),
        device_(std::move(device)),
        layout_(device_->layout()),
        precision_(device_->precision()),
        conv_(stream_.get(), device_->options().tf32, layout_, precision_, device_->plans()) {}

  ~CudaContext() override {
    if (recording_) end_recording();       // an exception left a recording open: end it before the stream goes
    cudaStreamSynchronize(stream_.get());  // nothing in flight touches freed scratch
  }

  Layout layout() const override { return layout_; }
  Precision precision() const override { return precision_; }

  std::unique_ptr<Buffer> allocate(size_t bytes) override {
    cuda::DeviceScope scope(index_);
    return std::make_unique<OwnedBuffer<DeviceBuffer>>(bytes, "activations");
  }
  std::unique_ptr<Buffer> allocate_host_visible(size_t bytes) override {
    cuda::DeviceScope scope(index_);
    return std::make_unique<OwnedBuffer<cuda::MappedBuffer>>(bytes, "exit state");
  }

  void from_host(const void* host, size_t bytes, void* dst) override {
    cuda::DeviceScope scope(index_);
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyDefault, stream_.get()));
  }

  // The host's half: into pinned memory (the DMA engine reads it at full
  // speed), checked on the way, then to the device's staging buffer, in
  // chunks issued here, before any segment, so the DMA of one chunk overlaps
  // the host's copy of the next (ResNet-50 at batch 64: 38 MB).  The segment
  // then only moves the staged input into place, whichever way it arrived:
  // from the host here or from device memory (stage_device_input), so a
  // recorded segment serves both.  The previous run has finished (the
  // executor ends each run with synchronize(), and a bad value here waits
  // for the chunks already issued), so the buffers are free to overwrite.
  static constexpr size_t kInputChunk = size_t(4) << 20;
  // From this size on, a few threads copy (engine/staging.h): ResNet-50 at
  // batch 256 is 154 MB.  Below it, starting threads costs more than they save.
  static constexpr size_t kThreadedInput = size_t(32) << 20;
  static constexpr size_t kMaxStagingThreads = 4;
  size_t stage_input(const float* host, const Act& s) override {
    cuda::DeviceScope scope(index_);
    const size_t elems = s.elems();
    const size_t bytes = mul_size(elems, sizeof(float), "input");
    if (!input_pinned_ || input_pinned_->bytes() < bytes) {
      input_pinned_.reset();
      input_pinned_ = std::make_unique<cuda::MappedBuffer>(bytes, "the pinned input staging buffer");
    }
    staging_.reserve(bytes, "the input staging buffer");
    staged_bytes_ = 0;
    auto* pinned = static_cast<float*>(input_pinned_->data());
    float* device = staging_.floats();
    cudaStream_t stream = stream_.get();
    const int index = index_;
    const StagingChunks how{kInputChunk / sizeof(float),
                            staging_parts(bytes, kInputChunk, kThreadedInput, kMaxStagingThreads)};
    std::mutex failed;  // the first CUDA error of any thread
    cudaError_t err = cudaSuccess;
    auto keep = [&](cudaError_t e) {
      if (e == cudaSuccess) return true;
      std::lock_guard<std::mutex> lock(failed);
      if (err == cudaSuccess) err = e;
      return false;
    };
    size_t first = elems;
    try {
      first = copy_in_chunks(
          pinned, host, elems, how,
          [&](size_t at, size_t n) {
            return keep(cudaMemcpyAsync(device + at, pinned + at, n * sizeof(float), cudaMemcpyHostToDevice, stream));
          },
          [&] { return keep(cudaSetDevice(index)); });
    } catch (...) {  // a thread that could not start: what was issued stops reading the pinned buffer first
      cudaStreamSynchronize(stream);
      throw;
    }
    if (err != cudaSuccess) {
      cudaStreamSynchronize(stream);  // what was issued stops reading the buffers; the error stands
      cuda::cuda_fail(err, "staging the input (cudaSetDevice or cudaMemcpyAsync)", __FILE__, __LINE__);
    }
    if (first < elems) {  // nothing issued may still read the pinned buffer when the next run writes it
      CUDA_CHECK(cudaStreamSynchronize(stream));
      return first;
    }
    staged_bytes_ = bytes;
    return elems;
  }
  size_t stage_device_input(const float* input, const Act& s) override {
    cuda::DeviceScope scope(index_);
    const size_t bytes = mul_size(s.elems(), sizeof(float), "input");
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, input) != cudaSuccess) cudaGetLastError();
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
      fail("input on the device: ", static_cast<const void*>(input), " is not device memory (",
           attr.type == cudaMemoryTypeHost ? "pinned host memory" : "unregistered host memory",
           "); pass it without input_on_device");
    if (attr.device != index_)
      fail("input on the device: the input is on cuda:", attr.device, ", this session runs on cuda:", index_);
    staging_.reserve(bytes, "the input staging buffer");
    CUDA_CHECK(cudaMemcpyAsync(staging_.data(), input, bytes, cudaMemcpyDeviceToDevice, stream_.get()));
    if (!input_check_) input_check_ = std::make_unique<cuda::MappedBuffer>(sizeof(uint64_t), "the input check");
    auto* first = static_cast<unsigned long long*>(input_check_->data());
    *first = s.elems();
    cuda::first_non_finite(staging_.floats(), s.elems(), first, stream_.get());
    CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    staged_bytes_ = bytes;
    return size_t(*first);
  }
  void input_from_stage(const Act& s, float* dst) override {
    cuda::DeviceScope scope(index_);
    const size_t bytes = mul_size(s.elems(), sizeof(float), "input");
    if (staged_bytes_ < bytes) fail("input_from_stage: no input of ", s.n, " staged");
    if (layout_ == Layout::kNchw)  // the caller's layout: a copy (FP16 is NHWC)
      CUDA_CHECK(cudaMemcpyAsync(dst, staging_.data(), bytes, cudaMemcpyDeviceToDevice, stream_.get()));
    else
      cuda::nchw_to_nhwc(staging_.floats(), s.n, s.c, s.h, s.w, dst, precision_, stream_.get());
  }

  void conv(int conv, const float* in, const Act& s, float* out, const float* residual, bool relu) override {
    cuda::DeviceScope scope(index_);
    const DeviceConv& c = device_->conv(conv);
    if (s.c != c.g.cin) fail(c.name, ": input has ", s.c, " channels, expected ", c.g.cin);
    conv_.run(c.g, s.n, s.h, s.w, in, c.weight.floats(), c.bias.floats(), out, residual, relu, c.name);
  }

  void prepare_conv(int conv, const Act& s, bool relu, bool residual) override {
    cuda::DeviceScope scope(index_);
    const DeviceConv& c = device_->conv(conv);
    conv_.prepare(c.g, s.n, s.h, s.w, relu, residual, c.name);
  }

  std::string conv_method(int conv, const Act& s, bool relu, bool residual) override {
    cuda::DeviceScope scope(index_);
    const DeviceConv& c = device_->conv(conv);
    return conv_.prepare(c.g, s.n, s.h, s.w, relu, residual, c.name).engine;
  }

  void max_pool(const float* in, const Act& s, int kernel, int stride, int pad, float* out) override {
    cuda::DeviceScope scope(index_);
    cuda::max_pool(in, s.n, s.h, s.w, s.c, layout_, precision_, kernel, stride, pad, out, stream_.get());
  }

  void global_avg_pool(const float* in, const Act& s, float* out) override {
    cuda::DeviceScope scope(index_);
    cuda::global_avg_pool(in, s.n, s.h * s.w, s.c, layout_, precision_, out, stream_.get());
  }

  void pool_features(const float* in, const Act& s, const PoolSpec& pool, float* out) override {
    cuda::DeviceScope scope(index_);
    cuda::pool_features(in, s.n, s.h, s.w, s.c, layout_, precision_, pool, out, stream_.get());
  }

  void classifier(const float* pooled, int n, float* logits) override {
    cuda::DeviceScope scope(index_);
    cuda::linear(pooled, n, device_->features(), device_->fc_weight(), device_->fc_bias(), device_->classes(), logits,
                 stream_.get());
  }

  void begin_exits(const ExitState& st, int n, int classes) override {
    cuda::DeviceScope scope(index_);
    cuda::begin_exits(st, n, classes, stream_.get());
  }

  void exit_head(const ExitHeads& heads, int head, const float* act, const Act& s, int exit_id, const ExitState& st,
                 int pos, float* pooled) override {
    cuda::DeviceScope scope(index_);
    if (!dynamic_cast<const CudaExitHeads*>(&heads.storage()))
      fail("exit head '", heads.specs()[size_t(head)].name, "': uploaded to another backend, not to ", device_->name());
    check_exit_head_fits(heads, head, s);
    if (heads.specs()[size_t(head)].kind == HeadKind::kLinear) {
      const LinearHeadView h = heads.view(head);
      // Grows nothing once the executor has prepared its heads.
      float* scores = reserve_exit_scores(s.n, std::max(h.classes, h.hidden));
      cuda::exit_head_linear(act, s.n, s.h, s.w, s.c, layout_, precision_, h, exit_id, st, pos, pooled, scores,
                             exit_kernel_ == ExitKernel::kStaged, stream_.get());
    } else
      cuda::exit_head_distance(act, s.n, s.h, s.w, s.c, layout_, precision_, heads.distance_view(head), exit_id, st,
                               pos, pooled, stream_.get());
  }

  void compact(float* act, const Act& s, const ExitState& st, int pos_in, int pos_out) override {
    cuda::DeviceScope scope(index_);
    // Rows move as 4-byte words: an FP16 row (an even count at every exit
    // of a ResNet, whose widths are even) is half as many.
    const size_t row_bytes = mul_size(s.per_sample(), size_t(precision_bytes(precision_)), "compaction");
    if (row_bytes % sizeof(float))
      fail("compact: a row of ", s.per_sample(), " FP16 values is not a whole number of words");
    const size_t row_floats = row_bytes / sizeof(float);
    prepare_compaction(s);  // grows nothing once the executor has prepared the largest exit
    cuda::compact_rows(act, s.n, row_floats, st, pos_in, pos_out,
                       {static_cast<int32_t*>(compact_index_.data()), compact_rows_.floats()}, stream_.get());
  }

  void prepared() override { conv_.save_plans(); }

  void prepare_exit_heads(const ExitHeads& heads, int max_batch) override {
    cuda::DeviceScope scope(index_);
    int classes = 0;
    for (const ExitHeadSpec& s : heads.specs())
      if (s.kind == HeadKind::kLinear) classes = std::max({classes, s.classes, s.hidden});
    if (classes > 0) reserve_exit_scores(max_batch, classes);
  }

  // The wide exit kernels' scores (or hidden units) for n rows of `classes`
  // (null for the one-block kernel, which needs none).
  float* reserve_exit_scores(int n, int classes) {
    if (exit_kernel_ == ExitKernel::kBlock) return nullptr;
    exit_scores_.reserve(mul_size(size_t(n) * size_t(classes), sizeof(float), "exit scores"), "the exit heads' scores");
    return exit_scores_.floats();
  }

  void prepare_compaction(const Act& s) override {
    cuda::DeviceScope scope(index_);
    compact_rows_.reserve(mul_size(s.elems(), sizeof(float), "compaction scratch"), "the compaction scratch");
    compact_index_.reserve((size_t(s.n) + 1) * sizeof(int32_t), "the compaction index");
  }

  int alive(const ExitState& st) override {
    cuda::DeviceScope scope(index_);
    CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    return *st.alive;
  }

  void finish_full_model(const float* logits, int n, int classes, const ExitState& st, int pos) override {
    cuda::DeviceScope scope(index_);
    cuda::finish_full_model(logits, n, classes, st, pos, stream_.get());
  }

  void memory_lookup(const MemoryView& m, const float* act, const Act& s, int exit_id, const ExitState& st, int pos,
                     float* pooled) override {
    cuda::DeviceScope scope(index_);
    check_pool_fits("memory at exit " + std::to_string(exit_id), m.dim, m.pool, s.c);
    cuda::memory_lookup(act, s.n, s.h, s.w, s.c, layout_, precision_, m, exit_id, st, pos, pooled, stream_.get());
  }
  void memory_insert(const MemoryView& m, const ExitState& st, int n) override {
    cuda::DeviceScope scope(index_);
    cuda::memory_insert(m, st, n, stream_.get());
  }

  OpStatus linear_sgd_step(const LinearHeadMut& h, const float* features, const int32_t* labels, int n,
                           const SgdHyper& hp, double* loss) override {
    cuda::DeviceScope scope(index_);
    if (n < 1) {
      if (loss) *loss = 0;
      return OpStatus::kOk;
    }
    if (!sgd_report_) sgd_report_ = std::make_unique<cuda::MappedBuffer>(16, "the SGD report");
    auto* status = static_cast<int32_t*>(sgd_report_->data());
    auto* mean = reinterpret_cast<double*>(static_cast<unsigned char*>(sgd_report_->data()) + 8);
    status[0] = -1;
    linear_sgd_enqueue(h, features, labels, n, hp, {status, mean});
    CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    if (loss) *loss = *mean;
    return static_cast<OpStatus>(status[0]);
  }
  void linear_sgd_enqueue(const LinearHeadMut& h, const float* features, const int32_t* labels, int n,
                          const SgdHyper& hp, const SgdReport& report) override {
    cuda::DeviceScope scope(index_);
    if (n < 1) {
      report.status[0] = int32_t(OpStatus::kOk);
      report.status[1] = -1;
      *report.loss = 0;
      return;
    }
    const size_t total =
        add_size(mul_size(size_t(h.classes), size_t(h.dim), "SGD step"), size_t(h.classes), "SGD step");
    // Grown only: a reallocation waits for the steps queued before (cudaFree synchronises).
    sgd_xs_.reserve(mul_size(size_t(n) * size_t(h.dim), sizeof(float), "SGD step"), "SGD scratch");
    sgd_g_.reserve(mul_size(size_t(n) * size_t(h.classes), sizeof(float), "SGD step"), "SGD scratch");
    sgd_next_.reserve(mul_size(2 * total, sizeof(float), "SGD step"), "SGD scratch");
    sgd_flags_.reserve(2 * sizeof(int32_t), "SGD flags");
    sgd_loss_.reserve(size_t(n) * sizeof(double), "SGD losses");
    cuda::linear_sgd_step(h, features, labels, n, hp,
                          {sgd_xs_.floats(), sgd_g_.floats(), sgd_next_.floats(),
                           static_cast<int32_t*>(sgd_flags_.data()), static_cast<double*>(sgd_loss_.data())},
                          report, stream_.get());
  }
  void gather_rows(const float* features, int dim, const RowGather& rows, float* x, int32_t* y, int offset) override {
    cuda::DeviceScope scope(index_);
    cuda::gather_rows(features, dim, rows, x, y, offset, stream_.get());
  }
  void publish_linear(const float* weight, const float* bias, int dim, int classes, float* served_w,
                      uint16_t* served_f16, float* served_b) override {
    cuda::DeviceScope scope(index_);
    cuda::publish_linear(weight, bias, dim, classes, served_w, served_f16, served_b, stream_.get());
  }

  void timing_begin() override {
    cuda::DeviceScope scope(index_);
    used_ = 0;
    record();
  }
  void timing_mark() override {
    cuda::DeviceScope scope(index_);
    record();
  }
  void range_push(const char* name) override { nvtxRangePushA(name); }
  void range_pop() override { nvtxRangePop(); }
  std::vector<double> timing_read() override {
    cuda::DeviceScope scope(index_);
    std::vector<double> ms;
    if (used_ == 0) return ms;
    CUDA_CHECK(cudaEventSynchronize(events_[used_ - 1].get()));
    for (size_t i = 1; i < used_; ++i) {
      float t = 0;
      CUDA_CHECK(cudaEventElapsedTime(&t, events_[0].get(), events_[i].get()));
      ms.push_back(double(t));
    }
    return ms;
  }

  void to_host(const void* src, size_t bytes, void* host) override {
    cuda::DeviceScope scope(index_);
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDefault, stream_.get()));
    CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  }
  void synchronize() override {
    cuda::DeviceScope scope(index_);
    CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  }

  Segment segment_begin(const SegmentKey& key) override {
    if (!graphs_on_) return Segment::kDirect;
    cuda::DeviceScope scope(index_);
    if (scratch_moved()) graphs_.clear();
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      if (graphs_.size() >= kMaxGraphs) graphs_.clear();  // a bound, not a policy: keys repeat in practice
      it = graphs_.emplace(key, Recorded{}).first;
    }
    Recorded& r = it->second;
    if (r.exec) {
      CUDA_CHECK(cudaGraphLaunch(r.exec.get(), stream_.get()));
      ++launches_;
      return Segment::kReplayed;
    }
    if (++r.seen < 2) return Segment::kDirect;
    // Thread-local: another thread's context keeps working while this one records.
    CUDA_CHECK(cudaStreamBeginCapture(stream_.get(), kCaptureMode));
    recording_ = true;
    root_ = nullptr;
    recording_key_ = key;
    return Segment::kRecording;
  }

  bool segment_end() override {
    if (!recording_) return true;
    cuda::DeviceScope scope(index_);
    const bool had_skips = root_ != nullptr;
    cudaGraph_t graph = nullptr;
    cudaError_t e = end_recording(&graph);
    cudaGraphExec_t exec = nullptr;
    if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e != cudaSuccess && had_skips) {  // the conditional nodes are what failed: one graph per exit from now on
      cudaGetLastError();
      skip_off(e);
      graphs_.erase(recording_key_);
      return false;
    }
    if (e != cudaSuccess) {
      graphs_off(str_cat("recording failed: ", cudaGetErrorString(e)));
      return false;
    }
    GraphExec owned(exec);
    if (scratch_moved()) {  // an op grew its scratch while recording: the graph's addresses are gone
      graphs_.clear();
      return false;  // the key is recorded again on its next run
    }
    CUDA_CHECK(cudaGraphLaunch(exec, stream_.get()));
    ++launches_;
    graphs_[recording_key_].exec = std::move(owned);
    return true;
  }

  void segment_abort() noexcept override {
    if (!recording_) return;
    cuda::DeviceScope scope(index_);
    end_recording();
    if (skip_failed_) {  // graphs stay on, one per exit from now on
      skip_failed_ = false;
      cudaGetLastError();
      graphs_.erase(recording_key_);
      return;
    }
    graphs_off("an error interrupted a recording");
  }

  bool device_skip() const override { return graphs_on_ && skip_on_; }
  void skip_unless_alive(const ExitState& st) override {
    if (!recording_ || !skip_on_) fail("skip_unless_alive: no recording with device-side skip is open");
    cuda::DeviceScope scope(index_);
    cudaGraph_t captured = nullptr;
    const cudaError_t e = cuda::capture_rest_if_alive(stream_.get(), st.alive, kCaptureMode, &captured);
    if (!root_) root_ = captured;  // the first skip ends the root's capture; later ones end bodies it owns
    if (e != cudaSuccess) {        // the executor abandons the recording (segment_abort) and runs the ops directly
      skip_failed_ = true;
      skip_off(e);
      fail("recording a conditional graph node: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
    }
  }

  void forget_segments(uint64_t owner) override {
    for (auto it = graphs_.begin(); it != graphs_.end();)
      it = it->first.owner == owner ? graphs_.erase(it) : std::next(it);
  }

  int64_t graph_launches() const override { return launches_; }

 private:
  struct GraphExecFree {
    void operator()(cudaGraphExec_t e) const { cudaGraphExecDestroy(e); }
  };
  using GraphExec = std::unique_ptr<std::remove_pointer_t<cudaGraphExec_t>, GraphExecFree>;
  struct Recorded {
    int seen = 0;  // direct runs so far
    GraphExec exec;
  };
  static constexpr size_t kMaxGraphs = 512;

  // Whether any scratch a graph may hold has moved since the last look.
  bool scratch_moved() {
    const std::array<const void*, 6> now = {staging_.data(),       compact_rows_.data(),
                                            compact_index_.data(), conv_.workspace(),
                                            exit_scores_.data(),   input_pinned_ ? input_pinned_->data() : nullptr};
    const bool moved = now != scratch_;
    scratch_ = now;
    return moved;
  }
  // Ends the open capture.  *graph receives the root graph, owned by the
  // caller (a body the capture ended in belongs to it); without `graph` the
  // recording is dropped.
  cudaError_t end_recording(cudaGraph_t* graph = nullptr) {
    recording_ = false;
    cudaGraph_t last = nullptr;
    const cudaError_t e = cudaStreamEndCapture(stream_.get(), &last);
    cudaGraph_t root = root_ ? root_ : (e == cudaSuccess ? last : nullptr);
    root_ = nullptr;
    if (graph && e == cudaSuccess) {
      *graph = root;
      return e;
    }
    if (root) cudaGraphDestroy(root);
    return e;
  }
  void skip_off(cudaError_t e) {
    skip_on_ = false;
    std::fprintf(stderr,
                 "gati: device-side skip off for this context (conditional graph nodes: %s); one graph per exit\n",
                 cudaGetErrorString(e));
  }
  void graphs_off(const std::string& why) {
    cudaGetLastError();  // a failed capture leaves its error behind
    graphs_.clear();
    graphs_on_ = false;
    std::fprintf(stderr, "gati: CUDA graphs off for this context (%s); its ops run one by one\n", why.c_str());
  }
  static bool graphs_wanted() {
    const char* v = std::getenv("GATI_CUDA_GRAPHS");
    return !(v && std::string(v) == "0");
  }
  static bool skip_wanted() {
    const char* v = std::getenv("GATI_CUDA_SKIP");
    return !(v && std::string(v) == "0") && cuda::conditional_nodes_available();
  }
  // GATI_CUDA_EXIT_KERNEL=block: the exit head as one block per row (one
  // launch); wide: three launches across the GPU; staged (default): wide,
  // with NCHW rows staged a warp per feature (kernels/cuda/exit_head.cu),
  // bit for bit the same answers; on the H100 one 56x56x256 head 35 us
  // against wide's 69 (bench/results/h100-2026-11-23b/2_exits_graphs).
  enum class ExitKernel { kBlock, kWide, kStaged };
  static ExitKernel exit_kernel_wanted() {
    const char* v = std::getenv("GATI_CUDA_EXIT_KERNEL");
    const std::string k = v ? v : "staged";
    if (k == "wide") return ExitKernel::kWide;
    if (k == "block") return ExitKernel::kBlock;
    if (k == "staged") return ExitKernel::kStaged;
    fail("GATI_CUDA_EXIT_KERNEL='", k, "' is not wide, block or staged");
  }
  static constexpr cudaStreamCaptureMode kCaptureMode = cudaStreamCaptureModeThreadLocal;

  void record() {
    if (used_ == events_.size()) events_.emplace_back();
    CUDA_CHECK(cudaEventRecord(events_[used_].get(), stream_.get()));
    ++used_;
  }

  // The constructing thread keeps the device current (like cudaSetDevice);
  // every method below makes it current for its own duration.
  static int select(int index) {
    CUDA_CHECK(cudaSetDevice(index));
    return index;
  }

  int index_;            // first: selects the device the members below are created on
  cuda::Stream stream_;  // every member below enqueues on it
  std::shared_ptr<const CudaDevice> device_;
  Layout layout_;
  Precision precision_;
  cuda::CudnnConv conv_;
  DeviceBuffer staging_, compact_rows_, compact_index_;
  ExitKernel exit_kernel_ = exit_kernel_wanted();
  DeviceBuffer exit_scores_;  // [n, classes] between the wide exit kernels
  DeviceBuffer sgd_xs_, sgd_g_, sgd_next_, sgd_flags_, sgd_loss_;
  std::unique_ptr<cuda::MappedBuffer> sgd_report_, input_pinned_, input_check_;
  size_t staged_bytes_ = 0;  // of the input in staging_
  std::vector<cuda::Event> events_;
  size_t used_ = 0;
  // Recorded segments (members after the buffers they point into: destroyed first).
  bool graphs_on_ = graphs_wanted(), recording_ = false;
  bool skip_on_ = skip_wanted(), skip_failed_ = false;
  cudaGraph_t root_ = nullptr;  // while recording with skips: the graph the first skip ended
  SegmentKey recording_key_;
  std::map<SegmentKey, Recorded> graphs_;
  std::array<const void*, 6> scratch_{};
  int64_t launches_ = 0;
};

std::unique_ptr<BackendContext> CudaDevice::make_context(int) const {
  return std::make_unique<CudaContext>(std::static_pointer_cast<const CudaDevice>(shared_from_this()));
}

}  // namespace

std::shared_ptr<const BackendDevice> make_cuda_device(const Model& model, const CudaOptions& options) {
  return std::make_shared<CudaDevice>(model, options);
}

}  // namespace gati
