// The layer-by-layer executor: runs a plan on a backend, stops at every exit
// point to call the caller's hook, and records per-layer time on request.
//
// It knows nothing about the backend's memory or kernels; the same loop runs
// on CPU and CUDA.  One executor owns one arena and is not thread-safe: the
// Engine serialises access, services that want parallelism create several.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "engine/backend.h"
#include "engine/plan.h"
#include "weights/model.h"

namespace gati {

struct LayerTiming {
  std::string name;
  StepKind kind = StepKind::Conv;
  int block = -1;
  double start_ms = 0, ms = 0;  // relative to the start of the run
  int64_t macs = 0;             // for the whole batch
};

// Called after each residual block with the block's output in backend memory
// (NHWC, `n` samples).  Returning false stops the run there (every sample has
// been answered); the logits are then not written.
using ExitHook = std::function<bool(const ExitPoint& exit, const float* activations, int n)>;

struct RunOptions {
  ExitHook on_exit;
  std::vector<LayerTiming>* timings = nullptr;  // non-null: synchronise and time every step
};

class Executor {
 public:
  Executor(const Model& model, Backend& backend, int max_batch, int h, int w);

  const Plan& plan() const { return plan_; }
  Backend& backend() { return backend_; }

  // input: host NCHW [n, C, H, W]; logits: host [n, classes].  Returns true
  // when the run reached the classifier.
  bool run(const float* input_nchw, int n, float* logits, const RunOptions& opts = {});

  // Backend pointers into the arena (valid for the executor's lifetime).
  float* slot(int s) { return arena_->data() + size_t(s) * plan_.slot_floats; }
  float* pooled() { return arena_->data() + plan_.pooled_offset; }

 private:
  const Model& model_;
  Backend& backend_;
  Plan plan_;
  std::unique_ptr<Buffer> arena_;
};

}  // namespace gati
