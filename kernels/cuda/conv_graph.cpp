// cuDNN graph convolutions; see conv_graph.h.
//
// The backend API is descriptors with typed attributes: tensors (NHWC by
// strides), a convolution, pointwise adds and a ReLU, an operation graph,
// heuristics that rank engine configurations, and an execution plan per
// configuration.  Each call's pointers travel in a variant pack.
#include "kernels/cuda/conv_graph.h"

#include <cudnn.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_check.cuh"
#include "weights/common/error.h"

namespace gati::cuda {

bool transforms_allowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("GATI_CUDNN_TRANSFORMS");
    return !(v && std::string(v) == "0");
  }();
  return allowed;
}

namespace {

// Why a graph or a configuration was refused: caught inside build(), never
// seen by callers.
struct Refused {
  std::string why;
};

void check(cudnnStatus_t st, const char* what) {
  if (st != CUDNN_STATUS_SUCCESS) throw Refused{str_cat(what, ": ", cudnnGetErrorString(st))};
}

// One backend descriptor, destroyed with its owner.
class Desc {
 public:
  explicit Desc(cudnnBackendDescriptorType_t type) { check(cudnnBackendCreateDescriptor(type, &d_), "create"); }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Desc& operator=(Desc&& o) noexcept {
    std::swap(d_, o.d_);
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;

  cudnnBackendDescriptor_t get() const { return d_; }
  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count, const void* value) {
    check(cudnnBackendSetAttribute(d_, name, type, count, value), "set attribute");
    return *this;
  }
  Desc& set_desc(cudnnBackendAttributeName_t name, const Desc& value) {
    cudnnBackendDescriptor_t v = value.get();
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
  }
  Desc& set_int(cudnnBackendAttributeName_t name, std::vector<int64_t> v) {
    return set(name, CUDNN_TYPE_INT64, int64_t(v.size()), v.data());
  }
  Desc& finalize(const char* what) {
    check(cudnnBackendFinalize(d_), what);
    return *this;
  }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

constexpr int64_t kAlignment = 16;
enum Uid : int64_t { kX = 1, kW, kBias, kZ, kY, kAfterConv, kAfterBias, kAfterResidual };

// A tensor [n, c, h, w] stored NHWC or NCHW (for the filter: KRSC or KCRS):
// a virtual one (inside the fused kernel) in FP32, a real one in `precision`.
Desc tensor(int64_t uid, int64_t n, int64_t c, int64_t h, int64_t w, Layout layout, bool is_virtual,
            Precision precision = Precision::kF32) {
  Desc t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  const cudnnDataType_t type = !is_virtual && precision == Precision::kF16 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;
  const bool virt = is_virtual;
  t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type)
      .set_int(CUDNN_ATTR_TENSOR_DIMENSIONS, {n, c, h, w})
      .set_int(CUDNN_ATTR_TENSOR_STRIDES, layout == Layout::kNchw ? std::vector<int64_t>{c * h * w, h * w, w, 1}
                                                                  : std::vector<int64_t>{h * w * c, 1, w * c, c})
      .set_int(CUDNN_ATTR_TENSOR_UNIQUE_ID, {uid})
      .set_int(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, {kAlignment})
      .set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt)
      .finalize("tensor");
  return t;
}

Desc pointwise_op(cudnnPointwiseMode_t mode, const Desc& x, const Desc* b, const Desc& y) {
  Desc pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  const cudnnDataType_t prec = CUDNN_DATA_FLOAT;
  pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode)
      .set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec)
      .finalize("pointwise");
  Desc op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
  op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw).set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
  if (b) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
  op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y).finalize("pointwise operation");
  return op;
}

// The numerical notes of an engine: what its arithmetic does to FP32 data.
struct Notes {
  cudnnBackendNumericalNote_t note[CUDNN_NUMERICAL_NOTE_TYPE_COUNT + 8];
  int64_t count = 0;
};
Notes numerical_notes(const Desc& engine) {
  Notes n;
  check(cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                 int64_t(std::size(n.note)), &n.count, n.note),
        "numerical notes");
  n.count = std::clamp<int64_t>(n.count, 0, int64_t(std::size(n.note)));
  return n;
}

// One run of a plan on the stream its handle is bound to.
void execute(cudnnHandle_t handle, const Desc& plan, const GraphConvShape& s, const float* x, const float* w,
             const float* bias, const float* residual, float* y, void* workspace) {
  int64_t uids[5] = {kX, kW, kY, 0, 0};
  void* ptrs[5] = {const_cast<float*>(x), const_cast<float*>(w), y, nullptr, nullptr};
  int count = 3;
  if (s.bias) {
    uids[count] = kBias;
    ptrs[count++] = const_cast<float*>(bias);
  }
  if (s.residual) {
    uids[count] = kZ;
    ptrs[count++] = const_cast<float*>(residual);
  }
  for (int i = 0; i < count; ++i)
    if (!ptrs[i] || reinterpret_cast<uintptr_t>(ptrs[i]) % kAlignment)
      throw Refused{str_cat("tensor ", uids[i], " is null or not ", kAlignment, "-byte aligned")};
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, count, uids)
      .set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, count, ptrs)
      .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace)
      .finalize("variant pack");
  check(cudnnBackendExecute(handle, plan.get(), pack.get()), "execute");
}

}  // namespace

struct GraphConv::Impl {
  std::vector<Desc> keep;  // the graph's descriptors, alive as long as the plan
  Desc plan{CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR};
  int64_t workspace = 0;
  bool tensor_ops = false;
  float timed_ms = -1;  // the chosen plan's time per run where it was timed
  GraphPick pick;
  GraphConvShape shape;
  std::string description, details;
};

GraphConv::GraphConv(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GraphConv::~GraphConv() = default;
size_t GraphConv::workspace_bytes() const { return size_t(impl_->workspace); }
bool GraphConv::tensor_ops() const { return impl_->tensor_ops; }
const std::string& GraphConv::description() const { return impl_->description; }
const std::string& GraphConv::details() const { return impl_->details; }
float GraphConv::timed_ms() const { return impl_->timed_ms; }
GraphPick GraphConv::pick() const { return impl_->pick; }

std::unique_ptr<GraphConv> GraphConv::build(void* handle_ptr, cudaStream_t stream, const GraphConvShape& s, bool tf32,
                                            bool tune, std::string* why, const GraphPick* pick) {
  if (pick) tune = false;
  const cudnnHandle_t handle = static_cast<cudnnHandle_t>(handle_ptr);
  const ConvGeometry& g = s.g;
  // Where the build's time goes (the log shows it): heuristics, finalizing
  // plans (run-time compiled engines compile here), timing the candidates.
  using Clock = std::chrono::steady_clock;
  Clock::time_point mark = Clock::now();
  auto lap = [&mark] {
    const Clock::time_point now = Clock::now();
    const double ms = std::chrono::duration<double, std::milli>(now - mark).count();
    mark = now;
    return ms;
  };
  double graph_ms = 0, heuristics_ms = 0, plans_ms = 0;
  try {
    // ---- the operation graph
    std::vector<Desc> keep;
    const int64_t n = s.n, cin = g.cin, cout = g.cout, k = g.kernel;
    Desc x = tensor(kX, n, cin, s.h, s.w, s.layout, false, s.precision);
    Desc w = tensor(kW, cout, cin / g.groups, k, k, s.layout, false, s.precision);
    Desc y = tensor(kY, n, cout, s.oh, s.ow, s.layout, false, s.precision);
    const bool epilogue = s.bias || s.residual || s.relu;
    Desc conv_out = epilogue ? tensor(kAfterConv, n, cout, s.oh, s.ow, s.layout, true) : std::move(y);

    Desc conv(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    conv.set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp)
        .set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode)
        .set_int(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, {2})
        .set_int(CUDNN_ATTR_CONVOLUTION_DILATIONS, {1, 1})
        .set_int(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, {g.stride, g.stride})
        .set_int(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, {g.pad, g.pad})
        .set_int(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, {g.pad, g.pad})
        .finalize("convolution");
    Desc conv_op(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR);
    const float one = 1.f, zero = 0.f;
    conv_op.set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, x)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, w)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, conv_out)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, conv)
        .set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &one)
        .set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &zero)
        .finalize("convolution operation");
    std::vector<cudnnBackendDescriptor_t> ops{conv_op.get()};

    // Epilogue: each step writes a virtual tensor, the last one writes y.
    Desc* last = &conv_out;
    struct Step {
      cudnnPointwiseMode_t mode;
      int64_t operand_uid, out_uid;
    };
    std::vector<Step> steps;
    if (s.bias) steps.push_back({CUDNN_POINTWISE_ADD, kBias, kAfterBias});
    if (s.residual) steps.push_back({CUDNN_POINTWISE_ADD, kZ, kAfterResidual});
    if (s.relu) steps.push_back({CUDNN_POINTWISE_RELU_FWD, 0, 0});
    std::vector<Desc> tensors;
    tensors.reserve(2 * steps.size() + 1);
    for (size_t i = 0; i < steps.size(); ++i) {
      const bool final_step = i + 1 == steps.size();
      const Desc* operand = nullptr;
      if (steps[i].operand_uid == kBias) {
        tensors.push_back(tensor(kBias, 1, cout, 1, 1, s.layout, false, s.precision));
        operand = &tensors.back();
      } else if (steps[i].operand_uid == kZ) {
        tensors.push_back(tensor(kZ, n, cout, s.oh, s.ow, s.layout, false, s.precision));
        operand = &tensors.back();
      }
      tensors.push_back(final_step ? std::move(y) : tensor(steps[i].out_uid, n, cout, s.oh, s.ow, s.layout, true));
      Desc* out = &tensors.back();
      keep.push_back(pointwise_op(steps[i].mode, *last, operand, *out));
      ops.push_back(keep.back().get());
      last = out;
    }

    Desc graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(ops.size()), ops.data())
        .set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle)
        .finalize("operation graph (no engine takes this pattern)");

    graph_ms = lap();

    // ---- ranked engine configurations: the heuristics' list, then the
    // fallback list (which holds the engines without tensor cores)
    std::vector<Desc> cfgs;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (const cudnnBackendHeurMode_t heur_mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      try {
        Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
        heur.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph)
            .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &heur_mode)
            .finalize("heuristics");
        int64_t count = 0;
        check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                       &count, nullptr),
              "heuristics count");
        count = std::min<int64_t>(count, 64);
        const size_t first = cfgs.size();
        for (int64_t i = 0; i < count; ++i) {
          cfgs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
          raw.push_back(cfgs.back().get());
        }
        int64_t got = 0;
        if (count > 0)
          check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                         count, &got, raw.data() + first),
                "heuristics results");
        const size_t keep_to = first + size_t(std::clamp<int64_t>(got, 0, count));
        cfgs.erase(cfgs.begin() + long(keep_to), cfgs.end());
        raw.resize(keep_to);
      } catch (const Refused&) {
        // a mode that ranks nothing for this graph: the other may
      }
    }
    const int64_t got = int64_t(raw.size());
    if (got == 0) throw Refused{"the heuristics rank no engine for this graph"};

    heuristics_ms = lap();

    // ---- plans for the configurations FP32 allows
    struct Candidate {
      Desc plan;
      int64_t workspace, engine;
      bool tensor_ops;
      int rank;
    };
    std::vector<Candidate> candidates;
    std::string refusals;
    const bool allow_transforms = transforms_allowed();
    // GATI_CUDNN_CANDIDATES=N times the first N usable configurations (default 6).
    const char* candidates_env = std::getenv("GATI_CUDNN_CANDIDATES");
    const size_t max_candidates = tune ? size_t(std::clamp(candidates_env ? std::atoi(candidates_env) : 6, 1, 64)) : 1;
    if (pick && (pick->rank < 0 || pick->rank >= got))
      throw Refused{str_cat("the stored choice is configuration ", pick->rank, ", cuDNN ranks ", got)};
    for (int64_t i = pick ? pick->rank : 0; i < got && candidates.size() < max_candidates; ++i) {
      try {
        Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
        cudnnBackendDescriptor_t engine_raw = engine.get();
        int64_t one_count = 0;
        check(cudnnBackendGetAttribute(raw[size_t(i)], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                       &one_count, &engine_raw),
              "engine of a configuration");
        int64_t index = -1;
        check(cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &one_count,
                                       &index),
              "engine index");
        if (pick && index != pick->engine)
          throw Refused{
              str_cat("the stored choice is engine ", pick->engine, ", cuDNN now ranks engine ", index, " there")};
        bool tensor_ops = false, forbidden = false;
        const Notes notes = numerical_notes(engine);
        for (int64_t j = 0; j < notes.count; ++j) {
          const cudnnBackendNumericalNote_t note = notes.note[j];
          if (note == CUDNN_NUMERICAL_NOTE_TENSOR_CORE) tensor_ops = true;
          const bool transform = note == CUDNN_NUMERICAL_NOTE_FFT || note == CUDNN_NUMERICAL_NOTE_WINOGRAD ||
                                 note == CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4 ||
                                 note == CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6 ||
                                 note == CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13;
          // FP32 data: no tensor cores or down-conversion unless TF32 is
          // allowed.  FP16 data: tensor cores, but FP32 accumulation.
          const bool fp16 = s.precision == Precision::kF16;
          const bool reduced = note == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION;
          if ((transform && !allow_transforms) || (fp16 && reduced) ||
              (!tf32 && !fp16 &&
               (note == CUDNN_NUMERICAL_NOTE_TENSOR_CORE || note == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS ||
                reduced)))
            forbidden = true;
        }
        if (forbidden) {
          if (pick) throw Refused{"the stored choice's numerics are not allowed now"};
          refusals += str_cat(" ", index, ":numerics");
          continue;
        }
        Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        plan.set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle)
            .set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw[size_t(i)])
            .finalize("execution plan");
        int64_t ws = 0;
        check(cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                       &one_count, &ws),
              "workspace size");
        if (ws > (int64_t(256) << 20)) {
          if (pick) throw Refused{"the stored choice's workspace is over the limit"};
          refusals += str_cat(" ", index, ":workspace");
          continue;
        }
        candidates.push_back({std::move(plan), ws, index, tensor_ops, int(i)});
      } catch (const Refused& r) {
        if (pick) throw;
        refusals += str_cat(" ", i, ":", r.why);
      }
      if (pick) break;
    }
    if (candidates.empty()) throw Refused{str_cat("none of ", got, " ranked configurations is usable:", refusals)};
    plans_ms = lap();

    size_t best = 0;
    std::string timing;
    float best_ms = -1;
    // Tuning times even a lone candidate: the caller weighs the fused plan
    // against the convolution alone plus our epilogue kernel.
    if (tune) {
      // Time each on scratch buffers filled with small non-zero floats.
      const size_t xs = size_t(n) * size_t(cin) * size_t(s.h) * size_t(s.w),
                   wsz = size_t(cout) * size_t(cin / g.groups) * size_t(k) * size_t(k),
                   ys = size_t(n) * size_t(cout) * size_t(s.oh) * size_t(s.ow);
      int64_t max_ws = 0;
      for (const Candidate& c : candidates) max_ws = std::max(max_ws, c.workspace);
      // Each tensor starts 256-byte aligned, so the total is the sum of the
      // rounded sizes (rounding the sum instead left the output 64 floats
      // short: compute-sanitizer caught the write past the end).
      auto r64 = [](size_t v) { return (v + 63) / 64 * 64; };
      const size_t floats = r64(xs) + r64(wsz) + r64(size_t(cout)) + 2 * r64(ys);
      void* scratch = nullptr;
      if (cudaMalloc(&scratch, floats * sizeof(float) + size_t(max_ws)) != cudaSuccess) {
        cudaGetLastError();
        if (candidates.size() > 1) throw Refused{"no device memory to time the candidates"};
        scratch = nullptr;  // a lone candidate is kept untimed
      }
      if (scratch) {
        float* f = static_cast<float*>(scratch);
        float *fw = f + r64(xs), *fb = fw + r64(wsz), *fz = fb + r64(size_t(cout));
        float* fy = fz + r64(ys);
        void* wsp = f + floats;
        cudaEvent_t start = nullptr, stop = nullptr;
        cudaEventCreate(&start);
        cudaEventCreate(&stop);
        cudaMemsetAsync(scratch, 0x3c, floats * sizeof(float), stream);  // 0x3c3c3c3c = 0.0115f
        for (size_t c = 0; c < candidates.size(); ++c) {
          float ms = -1;
          try {
            auto run = [&] { execute(handle, candidates[c].plan, s, f, fw, fb, fz, fy, wsp); };
            run();  // warm-up, and any run-time compilation
            cudaEventRecord(start, stream);
            for (int r = 0; r < 3; ++r) run();
            cudaEventRecord(stop, stream);
            if (cudaEventSynchronize(stop) == cudaSuccess) cudaEventElapsedTime(&ms, start, stop);
          } catch (const Refused&) {
            ms = -1;
          }
          timing += str_cat(" ", candidates[c].engine, "=", ms < 0 ? std::string("failed") : str_cat(ms / 3, "ms"));
          if (ms >= 0 && (best_ms < 0 || ms < best_ms)) {
            best_ms = ms;
            best = c;
          }
        }
        cudaStreamSynchronize(stream);
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
        cudaFree(scratch);
        cudaGetLastError();
        if (best_ms < 0) throw Refused{str_cat("every candidate failed to run:", timing)};
      }
    }
    auto impl = std::make_unique<Impl>();
    impl->shape = s;
    impl->plan = std::move(candidates[best].plan);
    impl->workspace = candidates[best].workspace;
    impl->tensor_ops = candidates[best].tensor_ops;
    impl->timed_ms = best_ms < 0 ? -1 : best_ms / 3;
    impl->pick = {candidates[best].rank, candidates[best].engine};
    impl->description = str_cat("graph engine ", candidates[best].engine, epilogue ? " fused" : "");
    const double timing_ms = lap();
    impl->details =
        str_cat(pick ? "from the plan cache; " : "", "built in ", int(graph_ms + heuristics_ms + plans_ms + timing_ms),
                " ms (graph ", int(graph_ms), ", heuristics ", int(heuristics_ms), ", plans ", int(plans_ms),
                ", timing ", int(timing_ms), ")", timing.empty() ? std::string() : str_cat("; timed:", timing),
                refusals.empty() ? std::string() : str_cat("; refused:", refusals));
    keep.push_back(std::move(x));
    keep.push_back(std::move(w));
    keep.push_back(std::move(conv_out));
    keep.push_back(std::move(conv));
    keep.push_back(std::move(conv_op));
    for (Desc& t : tensors) keep.push_back(std::move(t));
    keep.push_back(std::move(graph));
    impl->keep = std::move(keep);
    return std::unique_ptr<GraphConv>(new GraphConv(std::move(impl)));
  } catch (const Refused& r) {
    if (why) *why = r.why;
    return nullptr;
  }
}

void GraphConv::run(void* handle, const float* x, const float* w, const float* bias, const float* residual, float* y,
                    void* workspace) const {
  try {
    execute(static_cast<cudnnHandle_t>(handle), impl_->plan, impl_->shape, x, w, bias, residual, y, workspace);
  } catch (const Refused& r) {
    fail("graph convolution (", impl_->description, "): ", r.why);
  }
}

}  // namespace gati::cuda
