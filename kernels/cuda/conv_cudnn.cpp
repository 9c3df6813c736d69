// cuDNN convolutions; see conv_cudnn.h.
//
// Two APIs, both tuned per shape and weighed against each other: the graph
// API (conv_graph.h: cuDNN's engines, bias/residual/ReLU fused where an
// engine takes them) and the legacy descriptor API (cudnn_cnn, still
// shipped with cuDNN 9: cudnnFindConvolutionForwardAlgorithm, PyTorch's
// cudnn.benchmark path, whose FFT and Winograd algorithms the graph
// heuristics rarely offer).  On an H100 in FP32 neither wins everywhere
// (bench/results/h100-2026-11-22d).  Every cuDNN call is checked, and its
// error names the layer and the shape.
#include "kernels/cuda/conv_cudnn.h"

#include <cudnn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cuda/conv_graph.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/epilogue.cuh"
#include "weights/common/error.h"

namespace gati::cuda {

namespace {

// Largest workspace an algorithm may ask for.
constexpr size_t kMaxWorkspace = size_t(256) << 20;

std::string shape_text(const ConvGeometry& g, int n, int h, int w) {
  return str_cat("[", n, ",", h, ",", w, ",", g.cin, "] -> ", g.cout, " channels, ", g.kernel, "x", g.kernel, "/",
                 g.stride, " pad ", g.pad, g.groups > 1 ? str_cat(" groups ", g.groups) : std::string());
}

// Diagnostic switches for the GPU speed work, read from the environment.
bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::string(v) != "0";
}

// Our epilogue kernel's time per run on `stream` over scratch buffers of the
// layer's output size; -1 where the scratch cannot be had.
float time_epilogue(int n, long hw, int c, Layout layout, Precision precision, bool residual, bool relu,
                    cudaStream_t stream) {
  const size_t ys = size_t(n) * size_t(hw) * size_t(c), floats = 2 * ys + size_t(c);
  void* scratch = nullptr;
  if (cudaMalloc(&scratch, floats * sizeof(float)) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  float* y = static_cast<float*>(scratch);
  float *z = y + ys, *b = z + ys;
  cudaMemsetAsync(scratch, 0x3c, floats * sizeof(float), stream);  // 0x3c3c3c3c = 0.0115f
  cudaEvent_t start = nullptr, stop = nullptr;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  bias_residual_relu(y, n, hw, c, layout, precision, b, residual ? z : nullptr, relu, stream);  // warm-up
  cudaEventRecord(start, stream);
  for (int r = 0; r < 3; ++r)
    bias_residual_relu(y, n, hw, c, layout, precision, b, residual ? z : nullptr, relu, stream);
  cudaEventRecord(stop, stream);
  float ms = -1;
  // A launch that failed would time as nearly free: no time then.
  if (cudaEventSynchronize(stop) == cudaSuccess && cudaGetLastError() == cudaSuccess)
    cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(scratch);
  cudaGetLastError();
  return ms < 0 ? -1 : ms / 3;
}

}  // namespace

#define CUDNN_CHECK_AT(expr, where)                                                                                   \
  do {                                                                                                                \
    const cudnnStatus_t gati_st_ = (expr);                                                                            \
    if (gati_st_ != CUDNN_STATUS_SUCCESS)                                                                             \
      ::gati::fail(#expr, " failed: ", cudnnGetErrorString(gati_st_), " (", where, ") at ", __FILE__, ":", __LINE__); \
  } while (0)

struct CudnnConv::Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t f = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnActivationDescriptor_t act = nullptr;
  cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  int oh = 0, ow = 0;
  size_t legacy_workspace = 0;
  float legacy_ms = -1;  // cudnnFind's time of the chosen algorithm; -1: not timed
  cudnnMathType_t legacy_math = CUDNN_FMA_MATH;
  std::string where;                 // the layer and its shape, for errors
  std::optional<float> epilogue_ms;  // our epilogue kernel at this shape, once timed (-1: could not be)
  ConvChoice choice;
  std::unique_ptr<GraphConv> graph;  // the backend-API plan; null: the legacy calls above
  bool graph_epilogue = false;       // bias, residual and ReLU inside the graph (else our epilogue kernel)

  ~Plan() {
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (bias) cudnnDestroyTensorDescriptor(bias);
    if (f) cudnnDestroyFilterDescriptor(f);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
    if (act) cudnnDestroyActivationDescriptor(act);
  }
};

std::string CudnnConv::settings(bool tf32, Layout layout, Precision precision) {
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v ? v : "");
  };
  return str_cat("cudnn ", cudnnGetVersion(), ", ", layout == Layout::kNchw ? "NCHW" : "NHWC",
                 precision == Precision::kF16 ? ", FP16" : ", FP32", ", tf32 ", tf32 ? 1 : 0, ", api '",
                 env("GATI_CUDNN_API"), "', transforms ", transforms_allowed() ? 1 : 0, ", candidates '",
                 env("GATI_CUDNN_CANDIDATES"), "', unfused '", env("GATI_CUDNN_UNFUSED"), "'");
}

CudnnConv::CudnnConv(cudaStream_t stream, bool tf32, Layout layout, Precision precision, PlanStore* store)
    : stream_(stream), tf32_(tf32), precision_(precision), store_(store), layout_(layout) {
  if (precision == Precision::kF16 && layout == Layout::kNchw) fail("cuDNN convolutions: FP16 runs NHWC only");
  // GATI_CUDNN_API=legacy|graph-unfused|graph|both (default: both, timed
  // against each other) and GATI_CUDNN_TUNE=0 (first ranked engine,
  // untimed): switches for the speed work.
  const char* api = std::getenv("GATI_CUDNN_API");
  const std::string a = api ? api : "both";
  if (a == "legacy")
    api_ = Api::kLegacy;
  else if (a == "graph-unfused")
    api_ = Api::kGraphUnfused;
  else if (a == "graph")
    api_ = Api::kGraph;
  else if (a != "both")
    fail("GATI_CUDNN_API='", a, "' is not legacy, graph-unfused, graph or both");
  const char* tune = std::getenv("GATI_CUDNN_TUNE");
  tune_ = !(tune && std::string(tune) == "0");
  cudnnHandle_t h = nullptr;
  CUDNN_CHECK_AT(cudnnCreate(&h), "creating the cuDNN handle");
  handle_ = h;
  const cudnnStatus_t st = cudnnSetStream(h, stream);
  if (st != CUDNN_STATUS_SUCCESS) {
    cudnnDestroy(h);
    fail("cudnnSetStream failed: ", cudnnGetErrorString(st));
  }
}

void CudnnConv::save_plans() {
  if (store_) store_->save();
}

CudnnConv::~CudnnConv() {
  try {
    save_plans();
  } catch (...) {  // a cache: never worth an exception out of a destructor
  }
  plans_.clear();
  if (handle_) cudnnDestroy(static_cast<cudnnHandle_t>(handle_));
}

CudnnConv::Plan& CudnnConv::plan_for(const ConvGeometry& g, int n, int h, int w, bool relu, bool residual, bool timed,
                                     const std::string& name) {
  const Key key{g.cin, g.cout, g.kernel, g.stride, g.pad, g.groups, n, h, w, relu, residual};
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;

  if (n < 1 || h < 1 || w < 1 || g.cin < 1 || g.cout < 1 || g.groups < 1 || g.cin % g.groups || g.cout % g.groups)
    fail(name, ": bad convolution shape ", shape_text(g, n, h, w));
  const std::string where = str_cat(name, " ", shape_text(g, n, h, w));
  auto p = std::make_unique<Plan>();
  p->oh = (h + 2 * g.pad - g.kernel) / g.stride + 1;
  p->ow = (w + 2 * g.pad - g.kernel) / g.stride + 1;
  if (p->oh < 1 || p->ow < 1) fail(where, ": the input is smaller than the kernel");
  // A choice timed before (this run or an earlier one): rebuilt, untimed.
  // Also for a shape planned untimed (a batch compaction made): another
  // session, or an earlier process, may have timed it as its capacity.
  const std::string stored_as = str_cat(g.cin, ",", g.cout, ",", g.kernel, ",", g.stride, ",", g.pad, ",", g.groups,
                                        " n", n, " ", h, "x", w, relu ? " relu" : "", residual ? " residual" : "");
  if (store_ && tune_)  // GATI_CUDNN_TUNE=0: the first ranked engine, whatever was stored
    if (const std::optional<PlanRecord> r = store_->find(stored_as)) {
      auto restored = std::make_unique<Plan>();
      restored->oh = p->oh;
      restored->ow = p->ow;
      if (restore(*restored, *r, g, n, h, w, relu, residual, where))
        return *plans_.emplace(key, std::move(restored)).first->second;
    }
  if (api_ != Api::kLegacy) build_graph(*p, g, n, h, w, relu, residual, timed, where);
  if (!p->graph) {
    build_legacy(*p, g, n, h, w, timed, where);
    use_legacy(*p, relu);
  } else if (api_ == Api::kBoth && timed && p->graph->timed_ms() >= 0) {
    // The legacy algorithms, timed by cudnnFind, against the graph plan
    // (its time includes our epilogue kernel where it does not fuse).
    // Legacy's epilogue is cuDNN's fused call or ours: counted as ours.
    try {
      build_legacy(*p, g, n, h, w, true, where);
    } catch (const Error&) {
      p->legacy_ms = -1;  // no legacy algorithm for this shape: the graph stays
    }
    const float epilogue_ms = p->legacy_ms >= 0 ? epilogue_time(*p, n, g.cout, residual, relu) : -1;
    const float graph_ms = p->graph->timed_ms() + (p->graph_epilogue ? 0.f : std::max(epilogue_ms, 0.f));
    const bool legacy_wins = epilogue_ms >= 0 && p->legacy_ms + epilogue_ms < graph_ms;
    if (env_flag("GATI_CUDNN_LOG"))
      std::fprintf(stderr, "[cudnn] %s: graph %g ms vs legacy algo %d %g + epilogue %g ms: %s\n", where.c_str(),
                   graph_ms, int(p->algo), p->legacy_ms, epilogue_ms, legacy_wins ? "legacy" : "graph");
    if (legacy_wins) {
      p->graph.reset();
      p->graph_epilogue = false;
      use_legacy(*p, relu);
    }
  }
  // A shape nobody prepared (a batch compaction made) runs cuDNN's first
  // ranked choice: the profile says so.
  if (!timed && tune_) p->choice.engine += " [untimed]";
  if (timed && store_) {  // only choices that were timed are worth keeping
    PlanRecord r;
    r.graph = p->graph != nullptr;
    r.fused = p->graph ? p->graph_epilogue : p->choice.fused;
    if (p->graph) {
      r.rank = p->graph->pick().rank;
      r.engine = p->graph->pick().engine;
      r.ms = p->graph->timed_ms();
    } else {
      r.algo = int(p->algo);
      r.math = int(p->legacy_math);
      r.ms = p->legacy_ms;
    }
    if (r.ms >= 0) store_->put(stored_as, r);  // saved by save_plans, once the executor's shapes are prepared
  }
  return *plans_.emplace(key, std::move(p)).first->second;
}

GraphConvShape CudnnConv::graph_shape(const Plan& p, const ConvGeometry& g, int n, int h, int w, bool relu,
                                      bool residual) const {
  GraphConvShape gs;
  gs.layout = layout_;
  gs.g = g;
  gs.n = n;
  gs.h = h;
  gs.w = w;
  gs.oh = p.oh;
  gs.ow = p.ow;
  gs.residual = residual;
  gs.relu = relu;
  gs.precision = precision_;
  return gs;
}

bool CudnnConv::restore(Plan& p, const PlanRecord& r, const ConvGeometry& g, int n, int h, int w, bool relu,
                        bool residual, const std::string& where) {
  std::string why;
  if (r.graph) {
    GraphConvShape gs = graph_shape(p, g, n, h, w, relu, residual);
    if (!r.fused) gs.bias = gs.residual = gs.relu = false;
    const GraphPick pick{r.rank, r.engine};
    p.graph = GraphConv::build(handle_, stream_, gs, tf32_, false, &why, &pick);
    if (p.graph) {
      p.graph_epilogue = r.fused;
      describe_graph(p, where);
    }
  } else {
    try {
      build_legacy(p, g, n, h, w, false, where, &r);
      use_legacy(p, relu);
      p.choice.fused = p.choice.fused && r.fused;
      p.choice.engine = str_cat("legacy algo ", int(p.algo), p.choice.fused ? " fused" : " + epilogue kernel");
    } catch (const Error& e) {
      why = e.what();
    }
  }
  const bool ok = why.empty() && (p.graph || !r.graph);
  if (ok) p.choice.engine += " [cached]";
  if (env_flag("GATI_CUDNN_LOG"))
    std::fprintf(stderr, "[cudnn] %s: %s\n", where.c_str(),
                 ok ? str_cat("from the plan cache: ", p.choice.engine, " (timed ", r.ms, " ms)").c_str()
                    : str_cat("the plan cache's choice no longer builds (", why, "); timing again").c_str());
  return ok;
}

// The graph: fused epilogue first, then the convolution alone; the legacy
// plan stays for when neither is offered.
void CudnnConv::build_graph(Plan& p, const ConvGeometry& g, int n, int h, int w, bool relu, bool residual, bool timed,
                            const std::string& where) {
  const GraphConvShape gs = graph_shape(p, g, n, h, w, relu, residual);
  std::string why_fused, why_alone, weighed;
  if (api_ != Api::kGraphUnfused) p.graph = GraphConv::build(handle_, stream_, gs, tf32_, timed, &why_fused);
  p.graph_epilogue = p.graph != nullptr;
  GraphConvShape alone = gs;
  alone.bias = alone.residual = alone.relu = false;
  if (!p.graph) {
    p.graph = GraphConv::build(handle_, stream_, alone, tf32_, timed, &why_alone);
  } else if (timed && p.graph->timed_ms() >= 0) {
    // A fused graph can land on a slow engine (on an H100, ResNet-50's
    // 1x1 convolutions with the residual took 1.3-2.2 ms fused, where the
    // convolution alone took 0.03-0.1 ms): weigh it against the convolution
    // alone plus our epilogue kernel, both timed, and keep the faster.
    std::unique_ptr<GraphConv> plain = GraphConv::build(handle_, stream_, alone, tf32_, true, &why_alone);
    const float epilogue_ms = plain && plain->timed_ms() >= 0 ? epilogue_time(p, n, g.cout, residual, relu) : -1;
    if (epilogue_ms >= 0) {
      const float fused_ms = p.graph->timed_ms(), split_ms = plain->timed_ms() + epilogue_ms;
      weighed = str_cat("; fused ", fused_ms, " ms vs alone ", plain->timed_ms(), " + epilogue ", epilogue_ms, " ms");
      if (split_ms < fused_ms) {
        p.graph = std::move(plain);
        p.graph_epilogue = false;
      }
    }
  }
  if (p.graph) describe_graph(p, where);
  if (env_flag("GATI_CUDNN_LOG"))
    std::fprintf(stderr, "[cudnn] %s: %s%s%s%s\n", where.c_str(),
                 p.graph ? str_cat(p.graph->description(), ", ", p.graph->details()).c_str() : "legacy (no graph plan)",
                 weighed.c_str(), why_fused.empty() ? "" : str_cat("; fused graph refused: ", why_fused).c_str(),
                 why_alone.empty() ? "" : str_cat("; plain graph refused: ", why_alone).c_str());
}

void CudnnConv::describe_graph(Plan& p, const std::string& where) {
  workspace_.reserve(p.graph->workspace_bytes(), str_cat("the cuDNN workspace of ", where));
  p.choice.algo = -1;
  p.choice.workspace_bytes = p.graph->workspace_bytes();
  p.choice.fused = p.graph_epilogue;
  p.choice.tensor_ops = p.graph->tensor_ops();
  p.choice.engine = p.graph->description() + (p.graph_epilogue ? "" : " + epilogue kernel");
}

float CudnnConv::epilogue_time(Plan& p, int n, int cout, bool residual, bool relu) {
  if (!p.epilogue_ms)
    p.epilogue_ms = time_epilogue(n, long(p.oh) * p.ow, cout, layout_, precision_, residual, relu, stream_);
  return *p.epilogue_ms;
}

void CudnnConv::build_legacy(Plan& p, const ConvGeometry& g, int n, int h, int w, bool timed, const std::string& where,
                             const PlanRecord* forced) {
  const cudnnHandle_t handle = static_cast<cudnnHandle_t>(handle_);
  CUDNN_CHECK_AT(cudnnCreateTensorDescriptor(&p.x), where);
  CUDNN_CHECK_AT(cudnnCreateTensorDescriptor(&p.y), where);
  CUDNN_CHECK_AT(cudnnCreateTensorDescriptor(&p.bias), where);
  CUDNN_CHECK_AT(cudnnCreateFilterDescriptor(&p.f), where);
  CUDNN_CHECK_AT(cudnnCreateConvolutionDescriptor(&p.conv), where);
  CUDNN_CHECK_AT(cudnnCreateActivationDescriptor(&p.act), where);
  const cudnnTensorFormat_t layout = layout_ == Layout::kNchw ? CUDNN_TENSOR_NCHW : CUDNN_TENSOR_NHWC;
  // FP16 data with FP32 arithmetic (cuDNN's "pseudo-half" configuration).
  const bool fp16 = precision_ == Precision::kF16;
  const cudnnDataType_t io = fp16 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;
  CUDNN_CHECK_AT(cudnnSetTensor4dDescriptor(p.x, layout, io, n, g.cin, h, w), where);
  CUDNN_CHECK_AT(cudnnSetFilter4dDescriptor(p.f, io, layout, g.cout, g.cin / g.groups, g.kernel, g.kernel), where);
  CUDNN_CHECK_AT(cudnnSetConvolution2dDescriptor(p.conv, g.pad, g.pad, g.stride, g.stride, 1, 1,
                                                 CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                 where);
  CUDNN_CHECK_AT(cudnnSetConvolutionGroupCount(p.conv, g.groups), where);
  CUDNN_CHECK_AT(cudnnSetConvolutionMathType(p.conv, fp16    ? CUDNN_TENSOR_OP_MATH
                                                     : tf32_ ? CUDNN_DEFAULT_MATH
                                                             : CUDNN_FMA_MATH),
                 where);
  int on = 0, oc = 0, ohh = 0, oww = 0;
  CUDNN_CHECK_AT(cudnnGetConvolution2dForwardOutputDim(p.conv, p.x, p.f, &on, &oc, &ohh, &oww), where);
  p.oh = ohh;
  p.ow = oww;
  CUDNN_CHECK_AT(cudnnSetTensor4dDescriptor(p.y, layout, io, n, g.cout, ohh, oww), where);
  CUDNN_CHECK_AT(cudnnSetTensor4dDescriptor(p.bias, layout, io, 1, g.cout, 1, 1), where);
  CUDNN_CHECK_AT(cudnnSetActivationDescriptor(p.act, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0), where);

  // cuDNN ranks the algorithms: timed on this shape when `timed`
  // (cudnnFindConvolutionForwardAlgorithm, PyTorch's cudnn.benchmark, or
  // GATI_CUDNN_FIND=1), else by its heuristics.  Candidates, in order: each
  // ranked one that succeeded within the workspace limit and, with TF32 off,
  // uses FMA math (FFT and Winograd only where transforms_allowed()); then
  // the two implicit GEMMs, which run every shape.  The first whose
  // workspace query succeeds is kept.
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int returned = 0;
  if (forced) {
    // the stored choice alone (below)
  } else if (timed || env_flag("GATI_CUDNN_FIND")) {
    CUDNN_CHECK_AT(cudnnFindConvolutionForwardAlgorithm(handle, p.x, p.f, p.conv, p.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                        &returned, perf),
                   where);
  } else {
    CUDNN_CHECK_AT(cudnnGetConvolutionForwardAlgorithm_v7(handle, p.x, p.f, p.conv, p.y,
                                                          CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf),
                   where);
  }
  struct Candidate {
    cudnnConvolutionFwdAlgo_t algo;
    cudnnMathType_t math;
    float ms;
  };
  std::vector<Candidate> candidates;
  for (int i = 0; i < returned; ++i) {
    const cudnnConvolutionFwdAlgoPerf_t& q = perf[i];
    if (q.status != CUDNN_STATUS_SUCCESS || q.memory > kMaxWorkspace) continue;
    if (q.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) continue;  // would round FP32 data to FP16
    const bool transform =
        q.algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT || q.algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
        q.algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD || q.algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
    if (transform && !transforms_allowed()) continue;
    if (!tf32_ && !fp16 && q.mathType != CUDNN_FMA_MATH) continue;
    candidates.push_back({q.algo, q.mathType, timed ? q.time : -1.f});
  }
  if (forced) {
    if (forced->algo < 0 || forced->algo >= CUDNN_CONVOLUTION_FWD_ALGO_COUNT)
      fail(where, ": the stored algorithm ", forced->algo, " is not one of cuDNN's");
    candidates.push_back({cudnnConvolutionFwdAlgo_t(forced->algo), cudnnMathType_t(forced->math), forced->ms});
  } else {
    const cudnnMathType_t math = fp16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
    candidates.push_back({CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, math, -1.f});
    candidates.push_back({CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, math, -1.f});
  }
  size_t ws = 0;
  bool found = false;
  for (const Candidate& c : candidates) {
    CUDNN_CHECK_AT(cudnnSetConvolutionMathType(p.conv, c.math), where);
    if (cudnnGetConvolutionForwardWorkspaceSize(handle, p.x, p.f, p.conv, p.y, c.algo, &ws) != CUDNN_STATUS_SUCCESS ||
        ws > kMaxWorkspace)
      continue;
    p.algo = c.algo;
    p.legacy_math = c.math;
    p.legacy_ms = c.ms;
    p.legacy_workspace = ws;
    found = true;
    break;
  }
  if (!found) fail(where, ": cuDNN has no forward algorithm");
  p.where = where;
  if (env_flag("GATI_CUDNN_LOG")) {
    std::string ranked;
    for (int i = 0; i < returned; ++i)
      ranked += str_cat(" ", int(perf[i].algo), "/", int(perf[i].mathType), perf[i].status ? "!" : "", "(",
                        perf[i].time >= 0 ? perf[i].time : -1.f, ")");
    std::fprintf(stderr, "[cudnn] %s: legacy algo %d math %d workspace %zu; ranked%s\n", where.c_str(), int(p.algo),
                 int(p.legacy_math), ws, ranked.c_str());
  }
}

void CudnnConv::use_legacy(Plan& p, bool relu) {
  workspace_.reserve(p.legacy_workspace, str_cat("the cuDNN workspace of ", p.where));
  p.choice.algo = int(p.algo);
  p.choice.workspace_bytes = p.legacy_workspace;
  p.choice.tensor_ops = p.legacy_math != CUDNN_FMA_MATH;
  p.choice.fused = relu && !env_flag("GATI_CUDNN_UNFUSED");
  p.choice.engine = str_cat("legacy algo ", int(p.algo), p.choice.fused ? " fused" : " + epilogue kernel");
}

const ConvChoice& CudnnConv::prepare(const ConvGeometry& g, int n, int h, int w, bool relu, bool residual,
                                     const std::string& name) {
  return plan_for(g, n, h, w, relu, residual, tune_, name).choice;
}

void CudnnConv::run(const ConvGeometry& g, int n, int h, int w, const float* in, const float* weight, const float* bias,
                    float* out, const float* residual, bool relu, const std::string& name) {
  // A shape nobody prepared (a batch size that compaction made) is planned
  // untimed: timing every candidate here would stall the requests in flight.
  Plan& p = plan_for(g, n, h, w, relu, residual != nullptr, false, name);
  const cudnnHandle_t handle = static_cast<cudnnHandle_t>(handle_);
  const float one = 1.f, zero = 0.f;
  if (p.graph) {
    p.graph->run(handle_, in, weight, bias, residual, out, workspace_.data());
    if (!p.graph_epilogue)
      bias_residual_relu(out, n, long(p.oh) * p.ow, g.cout, layout_, precision_, bias, residual, relu, stream_);
    return;
  }
  if (p.choice.fused) {
    const cudnnStatus_t st = cudnnConvolutionBiasActivationForward(
        handle, &one, p.x, in, p.f, weight, p.conv, p.algo, workspace_.data(), workspace_.bytes(),
        residual ? &one : &zero, p.y, residual ? residual : out, p.bias, bias, p.act, p.y, out);
    if (st == CUDNN_STATUS_SUCCESS) return;
    if (CUDNN_STATUS_CATEGORY(st) != CUDNN_STATUS_NOT_SUPPORTED)  // cuDNN 9 details it: 3001, 3002, ...
      fail("cudnnConvolutionBiasActivationForward failed: ", cudnnGetErrorString(st), " (", name, " ",
           shape_text(g, n, h, w), ")");
    p.choice.fused = false;  // this shape runs unfused from now on
  }
  CUDNN_CHECK_AT(cudnnConvolutionForward(handle, &one, p.x, in, p.f, weight, p.conv, p.algo, workspace_.data(),
                                         workspace_.bytes(), &zero, p.y, out),
                 str_cat(name, " ", shape_text(g, n, h, w)));
  bias_residual_relu(out, n, long(p.oh) * p.ow, g.cout, layout_, precision_, bias, residual, relu, stream_);
}

}  // namespace gati::cuda
