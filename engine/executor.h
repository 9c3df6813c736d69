// The layer-by-layer executor: runs a plan on a backend context, with an
// exit head, a compaction and a check for survivors at every exit point
// (the stem, every residual block) that has a cache model attached, and per-layer timing on request.
//
// It knows nothing about the backend's memory or kernels; the same loop runs
// on CPU and CUDA.  On the fast path the host never reads activations: the
// exit ops write per-sample results into host-visible exit state, and the
// only host read between exits is the survivor count after a compaction.
// One executor owns one arena and one exit state and is not thread-safe:
// each worker (Session) has its own.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/plan.h"

namespace gati {

struct LayerTiming {
  std::string name;
  std::string kind;  // step_kind_name, or "exit" / "compact"
  int block = -1;
  double start_ms = 0, ms = 0;  // relative to the start of the run
  int64_t macs = 0;             // for the samples that ran the step
  std::string method;           // how the backend ran it (the cuDNN engine), where it says
};

// One sample's answer.
struct SampleResult {
  int exit = kFullModel;     // the exit point's id (Plan::exits: 0 = stem, b + 1 = after block b), or kFullModel (-1)
  int label = -1;            // the predicted class
  float confidence = 0;      // top softmax probability of the cache model or of the full model's logits
  bool from_memory = false;  // answered by the memory of recent answers at `exit` (confidence: the stored answer's)
};

// Called at each exit point (after the stem and after each residual block)
// with the output there in backend memory (in ctx.layout(), the `n` rows still running; row r is caller sample
// positions[r]).  For feature collection and debugging: it synchronises the
// backend before it is called, so it costs time on the fast path.
using ExitObserver = std::function<void(const ExitPoint& exit, BackendContext& ctx, const float* activations, int n,
                                        const int32_t* positions)>;

class AnswerMemory;
class HeadLearner;

struct RunOptions {
  const ExitHeads* heads = nullptr;  // cache models to consult; null runs the full model for every sample
  // A memory of recent answers (engine/memory.h), consulted at its exit point
  // before that exit's head, and given this run's confident full-model
  // answers; it must belong to the session that runs.
  AnswerMemory* memory = nullptr;
  // Cache models that learn from this run's full-model answers
  // (engine/learner.h): its heads answer in place of `heads` (leave that
  // null), and after the run it queues its steps without waiting.  It must
  // belong to the session that runs.
  HeadLearner* learner = nullptr;
  ExitObserver observer;
  std::vector<LayerTiming>* timings = nullptr;  // non-null: record a timing mark after every step
  // The input is device memory of the session's backend (CUDA), not host
  // memory: no copy from the host, and the finiteness check runs on the
  // device (one wait for its answer before the forward pass).
  bool input_on_device = false;
};

// Refuses an input whose value at flat NCHW index i (of an input shaped
// `shape`: n, h, w, c) is NaN or infinite, naming the position.
[[noreturn]] void non_finite_input(size_t i, float value, const Act& shape);

class Executor {
 public:
  // Allocates the plan's arena and exit state from `ctx`.
  Executor(BackendContext& ctx, Plan plan);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  const Plan& plan() const { return plan_; }
  size_t arena_bytes() const { return arena_->bytes() + state_->bytes() + (exit_pooled_ ? exit_pooled_->bytes() : 0); }

  // input: NCHW [n, C, H, W], normalised, in host memory (or, with
  // opts.input_on_device, staged by the caller's stage_device_input: Session
  // does that).  results[n] in caller order;
  // logits (may be null): host [n, classes], NaN rows for samples that exited.
  // Without timings, observer or memory, the ops between two host waits run
  // as recorded segments where the backend has them (CUDA graphs:
  // BackendContext::segment_begin).
  void run(const float* input_nchw, int n, SampleResult* results, float* logits, const RunOptions& opts = {});

 private:
  // One pass; false when a segment's recording failed (its ops did not run).
  bool run_once(const float* input_nchw, int n, SampleResult* results, float* logits, const RunOptions& opts,
                bool recorded);

  float* slot(int s) { return arena_->floats() + size_t(s) * plan_.slot_floats; }
  float* region(size_t offset) { return arena_->floats() + offset; }

  BackendContext& ctx_;
  Plan plan_;
  uint64_t id_;                     // names this executor's arena and exit state in recorded segments
  bool aborted_recording_ = false;  // set when an exception ended a recording (run() retries op by op)
  // The exit heads' (and the memory's) pooled features, [max_batch, widest];
  // grown on the first run with heads wider than any before (a one-time
  // allocation).
  float* exit_pooled(int dim);
  // The pooling of the exit right after step `step` when that step writes
  // the activation the exit reads and something pools it there (the
  // memory, first, or a head); null otherwise.
  const PoolSpec* exit_pool_after(size_t step, const RunOptions& opts) const;

  std::unique_ptr<Buffer> arena_, state_, exit_pooled_;
  ExitState st_;
};

}  // namespace gati
