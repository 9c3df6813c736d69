// gati's public C++ API: load a converted ResNet once, then run it from as
// many threads as you like.
//
//   gati::Engine engine("resnet50.safetensors");            // shared, immutable
//   std::vector<float> logits = engine.infer(images, n);    // thread-safe convenience
//
//   gati::Session s = engine.session();                     // one per worker thread
//   std::vector<gati::SampleResult> r(n);
//   gati::RunOptions opts;
//   opts.heads = heads.get();                               // cache models: samples may exit early
//   s.run(images, n, c, h, w, r.data(), logits.data(), opts);
//
// Design decision: an Engine is the shared, immutable half (the model and
// the backend device with its weights); a Session is one worker's private
// half (backend context, arenas and plans by input size).  Nothing a run does
// writes to the Engine, so sessions in different threads never lock each
// other.  Inputs are NCHW float32, already normalised with the model's
// mean/std (Engine::normalize does that for raw [0, 1] pixels).  Every bad
// input (empty batch, wrong channel count, a NaN, an absurd size) throws
// gati::Error naming what and where, and leaves everything usable.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/executor.h"
#include "engine/learner.h"
#include "engine/memory.h"
#include "weights/common/error.h"
#include "weights/model.h"
#include "weights/resnet.h"

namespace gati {

struct EngineOptions {
  std::string device = "cpu";  // "cpu", "cuda" or "auto" (CUDA when a usable GPU is present)
  int threads = 0;             // CPU threads per session unless the session says otherwise; 0 = all cores
  bool tf32 = false;           // CUDA: TF32 tensor cores in FP32 convolutions (faster, ~1e-3 relative)
  bool fp16 = false;           // CUDA: FP16 activations and weights, FP32 accumulation (~1e-2 relative)
};

struct SessionOptions {
  int threads = -1;                          // CPU threads; -1 = the engine's setting, 0 = all cores
  int max_plans = 8;                         // input sizes kept prepared; the least recently used is dropped
  size_t max_arena_bytes = size_t(8) << 30;  // largest arena a run may allocate
};

class Session;

class Engine {
 public:
  explicit Engine(const std::string& model_path, const EngineOptions& options = {});
  explicit Engine(Model model, const EngineOptions& options = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const Model& model() const { return *model_; }
  const Arch& arch() const { return model_->arch(); }
  const BackendDevice& device() const { return *device_; }
  std::string device_name() const { return device_->name(); }
  const EngineOptions& options() const { return options_; }

  // Uploads cache models to the device after checking each against the
  // model (exit point, channels, classes, finite values).
  std::shared_ptr<const ExitHeads> make_exit_heads(std::vector<ExitHeadSpec> specs) const;

  // A worker's session.  It keeps the model and device alive, so it may
  // outlive the Engine.
  Session session(const SessionOptions& options = {}) const;

  // Thread-safe conveniences: each call borrows a pooled session.
  std::vector<float> infer(const float* input_nchw, int n, int c, int h, int w) const;
  std::vector<float> infer(const float* input_nchw, int n) const {
    return infer(input_nchw, n, arch().in_channels, arch().input_h, arch().input_w);
  }
  // The same run with every layer timed.
  std::vector<float> profile(const float* input_nchw, int n, int c, int h, int w,
                             std::vector<LayerTiming>* timings) const;

  // x = (x - mean[c]) / std[c] in place, for NCHW data at the model's input size;
  // throws, naming the value, where x is not finite before or after.
  void normalize(float* nchw, int n) const;
  // Throws unless a batch of n at h x w fits a session with these options
  // (sizes, and the activations' memory), without allocating anything.
  void check_size(int n, int h, int w, const SessionOptions& options = {}) const;
  // Throws unless the input is [n>=1, in_channels, h>=1, w>=1] and finite.
  void check_input(const float* input_nchw, int n, int c, int h, int w) const;

 private:
  friend class Session;
  class SessionPool;
  std::shared_ptr<const Model> model_;
  std::shared_ptr<const BackendDevice> device_;
  EngineOptions options_;
  std::unique_ptr<SessionPool> pool_;
};

class Session {
 public:
  Session(Session&&) noexcept;
  Session& operator=(Session&&) = delete;  // its plans point into its own context
  ~Session();

  const Model& model() const { return *model_; }
  BackendContext& context() { return *ctx_; }

  // input_nchw in host memory, or in the backend's device memory with
  // opts.input_on_device (CUDA; no copy from the host, checked on the
  // device).  results[n] in caller order; logits (may be null, host memory)
  // [n, classes], NaN rows for samples that exited early.  Not re-entrant:
  // calling it from inside its own observer throws (use another session).
  void run(const float* input_nchw, int n, int c, int h, int w, SampleResult* results, float* logits,
           const RunOptions& opts = {});
  // Logits of every sample (NaN rows for samples that exited, when
  // opts.heads is set).
  std::vector<float> infer(const float* input_nchw, int n, int c, int h, int w, const RunOptions& opts = {});

  // A memory of recent answers for this session's runs (RunOptions::memory),
  // checked against the model; it must not outlive the session.
  std::unique_ptr<AnswerMemory> make_memory(MemorySpec spec);
  // Cache models that learn in this session's backend from the full
  // model's answers (RunOptions::learner), checked against the model as
  // Engine::make_exit_heads checks heads; it must not outlive the session.
  std::unique_ptr<HeadLearner> make_learner(std::vector<ExitHeadSpec> specs, const LearnerOptions& options = {});

  // Bytes held by prepared plans (arenas and exit state).
  size_t arena_bytes() const;
  size_t prepared_plans() const { return plans_.size(); }

 private:
  friend class Engine;
  Session(const Engine& engine, const SessionOptions& options);
  Executor& executor_for(int n, int h, int w);

  struct Prepared {
    int h = 0, w = 0;
    std::unique_ptr<Executor> executor;
  };
  std::shared_ptr<const Model> model_;
  std::shared_ptr<const BackendDevice> device_;
  SessionOptions options_;
  std::unique_ptr<BackendContext> ctx_;
  std::list<Prepared> plans_;  // most recently used first
  bool busy_ = false;
};

}  // namespace gati
