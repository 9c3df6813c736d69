// One convolution and its epilogue as a cuDNN graph (the backend API).
//
// Design decision: the legacy API (cudnnConvolutionForward and the fused
// cudnnConvolutionBiasActivationForward) offers NHWC FP32 only its two
// implicit-GEMM algorithms, and on an H100 they run ResNet-50's 1x1
// convolutions at under 1 TFLOP/s (bench/results/h100-2026-11-22).  The
// backend API reaches cuDNN's other engines, and fuses bias, residual and
// ReLU into the convolution's kernel where an engine supports it:
//
//   y = relu(conv(x, w) + bias + z)        (each term only where the layer has it)
//
// A graph is built once per (shape, epilogue); cuDNN's heuristics rank the
// engine configurations, those whose numerics FP32 forbids are dropped
// (tensor cores and down-converted inputs unless TF32 is allowed; FFT and
// Winograd unless transforms_allowed() says no), and with
// `tune` the survivors are timed on the stream and the fastest kept, as
// PyTorch's cudnn.benchmark does.  When no engine takes the fused graph, the
// convolution alone is tried and the caller runs the epilogue.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/exit_state.h"

namespace gati::cuda {

struct ConvGeometry {
  int cin = 0, cout = 0, kernel = 1, stride = 1, pad = 0, groups = 1;
};

struct GraphConvShape {
  ConvGeometry g;
  int n = 0, h = 0, w = 0, oh = 0, ow = 0;
  bool bias = true, residual = false, relu = false;  // the epilogue inside the graph; all false: conv alone
  Layout layout = Layout::kNhwc;                     // of x, y and the residual; the filter is KRSC or KCRS
  Precision precision = Precision::kF32;             // of x, w, bias, residual and y; arithmetic is FP32
};

// FFT and Winograd convolutions in FP32: allowed, as PyTorch's
// cudnn.benchmark allows them (the CUDA parity tests hold them to the CPU
// within 1e-4); GATI_CUDNN_TRANSFORMS=0 refuses them, in both APIs.
bool transforms_allowed();

// A configuration chosen before (PlanStore): its place in the ranked list
// and its engine's global index, checked when it is rebuilt.
struct GraphPick {
  int rank = -1;
  int64_t engine = -1;
};

class GraphConv {
 public:
  ~GraphConv();
  GraphConv(const GraphConv&) = delete;
  GraphConv& operator=(const GraphConv&) = delete;

  // The best plan cuDNN offers for the shape, or null with the reason in
  // `why` (no engine supports the graph, or none with allowed numerics).
  // `handle` is the cudnnHandle_t bound to `stream`.  With `pick`, that
  // configuration only, untimed (refused when its engine is not the one
  // recorded: another cuDNN ranks differently).
  static std::unique_ptr<GraphConv> build(void* handle, cudaStream_t stream, const GraphConvShape& s, bool tf32,
                                          bool tune, std::string* why, const GraphPick* pick = nullptr);

  size_t workspace_bytes() const;
  bool tensor_ops() const;
  // "graph engine 11 fused": for the profile; details() adds the timings
  // of the candidates and the refused configurations, for logs.
  const std::string& description() const;
  const std::string& details() const;
  // The plan's time per run on the stream, measured when it was built with
  // `tune`; -1 where it was not timed.
  float timed_ms() const;
  // The chosen configuration, for the plan store.
  GraphPick pick() const;

  // Every pointer 16-byte aligned (the graph's tensors promise it), its
  // data in the shape's precision (float* names the buffer, not the type);
  // `bias` and `residual` ignored where the graph has no such term.
  void run(void* handle, const float* x, const float* w, const float* bias, const float* residual, float* y,
           void* workspace) const;

 private:
  struct Impl;
  explicit GraphConv(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace gati::cuda
