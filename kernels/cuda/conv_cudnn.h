// Convolutions through cuDNN, NHWC or NCHW (one layout per CudnnConv), with
// the folded batch-norm bias, the residual add and ReLU.
//
// Design decision: one CudnnConv per backend context (a cuDNN handle is bound
// to one stream).  Each (convolution, batch, input size) gets its
// descriptors and algorithm once, in prepare() or on first use, and keeps
// them; the workspace grows to the largest one chosen.  prepare() times the
// graph API's plans (conv_graph.h) and the legacy API's algorithms
// (cudnnFind) and keeps the fastest; a shape first seen in run() takes the
// graph's first ranked plan untimed.  Where the epilogue is not fused (a
// graph engine without it; the legacy API without ReLU, where cuDNN's
// fused call supports an identity activation with one algorithm only), our
// epilogue kernel adds bias and residual.  FP32 with cuDNN's FMA math, so
// TF32 tensor cores are used only when asked for.  With a PlanStore, a
// timed choice is recorded there and a shape it already holds is rebuilt
// from it untimed (a restart does not search again).
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "kernels/cuda/conv_graph.h"
#include "kernels/cuda/cuda_memory.h"
#include "kernels/cuda/plan_store.h"

namespace gati::cuda {

// What prepare() chose for one shape, for logs and the profile.
struct ConvChoice {
  int algo = -1;
  size_t workspace_bytes = 0;
  bool fused = false;  // cuDNN's conv+bias+activation call (else conv + our epilogue)
  bool tensor_ops = false;
  std::string engine;  // "graph engine 11 fused", "graph engine 28 + epilogue kernel" or "legacy algo 0 fused"
};

class CudnnConv {
 public:
  // `store` (may be null) outlives this object.  With FP16 precision the
  // activations, filters and biases are halves (tensor cores, FP32
  // accumulation).
  CudnnConv(cudaStream_t stream, bool tf32, Layout layout, Precision precision = Precision::kF32,
            PlanStore* store = nullptr);
  // What the choices depend on besides the GPU: cuDNN's version, the layout,
  // the precision, TF32 and the GATI_CUDNN_* switches (a PlanStore's context).
  static std::string settings(bool tf32, Layout layout, Precision precision);
  ~CudnnConv();
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;

  // Descriptors and algorithm for this shape; `name` appears in errors.
  const ConvChoice& prepare(const ConvGeometry& g, int n, int h, int w, bool relu, bool residual,
                            const std::string& name);

  // out (n, oh, ow, cout) = act(conv(in (n, h, w, cin), weight) + bias + residual),
  // activations in the layout, weight KRSC ([cout, k, k, cin/groups]) for
  // NHWC and KCRS (PyTorch's OIHW) for NCHW, all device memory in the
  // precision (float* names the buffer, not the element type).
  void run(const ConvGeometry& g, int n, int h, int w, const float* in, const float* weight, const float* bias,
           float* out, const float* residual, bool relu, const std::string& name);

  // Writes the choices timed since the last call to the plan store's file
  // (also done when this object goes).
  void save_plans();

  // Where the workspace is now (it moves when a larger plan grows it).
  const void* workspace() const { return workspace_.data(); }

 private:
  struct Plan;
  using Key = std::tuple<int, int, int, int, int, int, int, int, int, bool, bool>;
  enum class Api { kBoth, kGraph, kGraphUnfused, kLegacy };
  // timed: measure the candidates (prepare) or take the first ranked one (a
  // shape first seen in run()).
  Plan& plan_for(const ConvGeometry& g, int n, int h, int w, bool relu, bool residual, bool timed,
                 const std::string& name);
  // `forced`: that algorithm and math type, not cuDNN's ranking.
  void build_legacy(Plan& p, const ConvGeometry& g, int n, int h, int w, bool timed, const std::string& where,
                    const PlanRecord* forced = nullptr);
  // A stored choice rebuilt; false (p untouched but for the legacy
  // descriptors) when it no longer builds.
  bool restore(Plan& p, const PlanRecord& r, const ConvGeometry& g, int n, int h, int w, bool relu, bool residual,
               const std::string& where);
  GraphConvShape graph_shape(const Plan& p, const ConvGeometry& g, int n, int h, int w, bool relu, bool residual) const;
  void describe_graph(Plan& p, const std::string& where);  // p.choice and the workspace for p.graph
  void use_legacy(Plan& p, bool relu);                     // the legacy algorithm runs this shape
  // Our epilogue kernel's time at the plan's shape, timed once per plan
  // (both the fused-or-split and the graph-or-legacy choices need it).
  float epilogue_time(Plan& p, int n, int cout, bool residual, bool relu);
  void build_graph(Plan& p, const ConvGeometry& g, int n, int h, int w, bool relu, bool residual, bool timed,
                   const std::string& where);

  cudaStream_t stream_;
  bool tf32_;
  Precision precision_;
  PlanStore* store_;
  Layout layout_;
  Api api_ = Api::kBoth;
  bool tune_ = true;
  void* handle_ = nullptr;  // cudnnHandle_t, kept out of this header
  std::map<Key, std::unique_ptr<Plan>> plans_;
  DeviceBuffer workspace_;
};

}  // namespace gati::cuda
