// gati's public C++ API: load a converted ResNet, run it, time it.
//
//   gati::Engine engine("resnet50.safetensors");
//   std::vector<float> logits = engine.infer(images, n, 3, 224, 224);
//
// Inputs are NCHW float32, already normalised with the model's mean/std
// (Engine::normalize does that for raw [0, 1] pixels).  Every bad input
// (empty batch, wrong channel count, a NaN) throws gati::Error naming what and
// where; nothing is left half-done.  Calls are serialised by an internal
// mutex, so an Engine may be shared between threads.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/executor.h"
#include "engine/resnet.h"
#include "weights/model.h"

namespace gati {

struct EngineOptions {
  std::string device = "cpu";  // "cpu" (the CUDA backend arrives with its own issue)
  int threads = 0;             // CPU threads; 0 = all cores
};

class Engine {
 public:
  explicit Engine(const std::string& model_path, const EngineOptions& options = {});
  Engine(Model model, const EngineOptions& options = {});

  const Model& model() const { return model_; }
  const Arch& arch() const { return model_.arch(); }
  const Backend& backend() const { return *backend_; }
  // For code that runs ops between layers (exit hooks); same serialisation rules.
  Backend& backend_mut() { return *backend_; }

  // logits [n, num_classes]
  std::vector<float> infer(const float* input_nchw, int n, int c, int h, int w);
  std::vector<float> infer(const float* input_nchw, int n) {
    return infer(input_nchw, n, arch().in_channels, arch().input_h, arch().input_w);
  }
  // The same run with every layer timed (synchronised).
  std::vector<float> profile(const float* input_nchw, int n, int c, int h, int w, std::vector<LayerTiming>* timings);
  // Runs with an exit hook; returns true when the classifier ran.
  bool run(const float* input_nchw, int n, int c, int h, int w, float* logits, const RunOptions& opts);

  // x = (x - mean[c]) / std[c] in place, for NCHW data.
  void normalize(float* nchw, int n) const;

  // Throws unless the input is [n>=1, in_channels, h>=1, w>=1] and finite.
  void check_input(const float* input_nchw, int n, int c, int h, int w) const;

 private:
  Executor& executor_for(int n, int h, int w);

  Model model_;
  std::unique_ptr<Backend> backend_;
  std::map<std::pair<int, int>, std::unique_ptr<Executor>> executors_;  // by input size
  std::mutex mutex_;
};

}  // namespace gati
