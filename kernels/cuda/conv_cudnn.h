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
// TF32 tensor cores are used only when asked for.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "kernels/cuda/conv_graph.h"
#include "kernels/cuda/cuda_memory.h"

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
  CudnnConv(cudaStream_t stream, bool tf32, Layout layout);
  ~CudnnConv();
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;

  // Descriptors and algorithm for this shape; `name` appears in errors.
  const ConvChoice& prepare(const ConvGeometry& g, int n, int h, int w, bool relu, bool residual,
                            const std::string& name);

  // out (n, oh, ow, cout) = act(conv(in (n, h, w, cin), weight) + bias + residual),
  // activations in the layout, weight KRSC ([cout, k, k, cin/groups]) for
  // NHWC and KCRS (PyTorch's OIHW) for NCHW, all device memory.
  void run(const ConvGeometry& g, int n, int h, int w, const float* in, const float* weight, const float* bias,
           float* out, const float* residual, bool relu, const std::string& name);

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
  void build_legacy(Plan& p, const ConvGeometry& g, int n, int h, int w, bool timed, const std::string& where);
  void use_legacy(Plan& p, bool relu);  // the legacy algorithm runs this shape
  // Our epilogue kernel's time at the plan's shape, timed once per plan
  // (both the fused-or-split and the graph-or-legacy choices need it).
  float epilogue_time(Plan& p, int n, int cout, bool residual, bool relu);
  void build_graph(Plan& p, const ConvGeometry& g, int n, int h, int w, bool relu, bool residual, bool timed,
                   const std::string& where);

  cudaStream_t stream_;
  bool tf32_;
  Layout layout_;
  Api api_ = Api::kBoth;
  bool tune_ = true;
  void* handle_ = nullptr;  // cudnnHandle_t, kept out of this header
  std::map<Key, std::unique_ptr<Plan>> plans_;
  DeviceBuffer workspace_;
};

}  // namespace gati::cuda
