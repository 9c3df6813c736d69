// Engine: model + backend + one executor per input size; see engine.h.
#include "engine/engine.h"

#include <cmath>

namespace gati {
namespace {

std::unique_ptr<Backend> make_backend(const EngineOptions& o) {
  if (o.device == "cpu") return make_cpu_backend(o.threads);
  if (o.device == "cuda") fail("device 'cuda': this build has no CUDA backend yet (valid: cpu)");
  fail("unknown device '", o.device, "' (valid: cpu)");
}

}  // namespace

Engine::Engine(const std::string& model_path, const EngineOptions& options) : Engine(load_model(model_path), options) {}

Engine::Engine(Model model, const EngineOptions& options) : model_(std::move(model)), backend_(make_backend(options)) {
  backend_->load_weights(model_);
}

void Engine::check_input(const float* x, int n, int c, int h, int w) const {
  if (n < 1) fail("input: empty batch (n = ", n, ")");
  if (c != arch().in_channels)
    fail("input: ", c, " channels, but model '", arch().name, "' takes ", arch().in_channels);
  if (h < 1 || w < 1) fail("input: empty image ", h, "x", w);
  if (!x) fail("input: null data");
  const size_t total = size_t(n) * size_t(c) * size_t(h) * size_t(w);
  for (size_t i = 0; i < total; ++i)
    if (!std::isfinite(x[i])) {
      const size_t hw = size_t(h) * size_t(w);
      fail("input: value at [", i / (hw * size_t(c)), ",", (i / hw) % size_t(c), ",", (i % hw) / size_t(w), ",",
           i % size_t(w), "] is ", x[i], "; inputs must be finite");
    }
}

Executor& Engine::executor_for(int n, int h, int w) {
  auto& ex = executors_[{h, w}];
  if (!ex || ex->plan().max_batch < n) {
    // Grow in powers of two so a stream of rising batch sizes re-plans rarely.
    int cap = ex ? ex->plan().max_batch : 1;
    while (cap < n) cap *= 2;
    ex.reset();  // free the old arena first
    ex = std::make_unique<Executor>(model_, *backend_, cap, h, w);
  }
  return *ex;
}

bool Engine::run(const float* input, int n, int c, int h, int w, float* logits, const RunOptions& opts) {
  check_input(input, n, c, h, w);
  std::lock_guard<std::mutex> lock(mutex_);
  return executor_for(n, h, w).run(input, n, logits, opts);
}

std::vector<float> Engine::infer(const float* input, int n, int c, int h, int w) {
  std::vector<float> logits(size_t(std::max(n, 0)) * size_t(arch().num_classes));
  run(input, n, c, h, w, logits.data(), {});
  return logits;
}

std::vector<float> Engine::profile(const float* input, int n, int c, int h, int w, std::vector<LayerTiming>* timings) {
  std::vector<float> logits(size_t(std::max(n, 0)) * size_t(arch().num_classes));
  RunOptions opts;
  opts.timings = timings;
  run(input, n, c, h, w, logits.data(), opts);
  return logits;
}

void Engine::normalize(float* x, int n) const {
  const Arch& a = arch();
  const size_t hw = size_t(a.input_h) * size_t(a.input_w);
  for (int i = 0; i < n; ++i)
    for (int ch = 0; ch < a.in_channels; ++ch) {
      float* p = x + (size_t(i) * size_t(a.in_channels) + size_t(ch)) * hw;
      const float m = a.mean[size_t(ch)], inv = 1.0f / a.std[size_t(ch)];
      for (size_t k = 0; k < hw; ++k) p[k] = (p[k] - m) * inv;
    }
}

}  // namespace gati
