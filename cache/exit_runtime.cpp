// Exit runtime; see exit_runtime.h.
#include "cache/exit_runtime.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

namespace gati {

const std::vector<float>& ExitPooler::pool(const float* act, const Act& shape) {
  const size_t need = size_t(shape.n) * size_t(shape.c);
  if (!device_ || device_->floats() < need) device_ = backend_.allocate(need);
  backend_.global_avg_pool(act, shape, device_->data());
  host_.resize(need);
  backend_.to_host(device_->data(), need, host_.data());
  backend_.synchronize();
  return host_;
}

CollectedFeatures collect_features(Engine& engine, const float* images, int n, int batch, bool progress) {
  const Arch& a = engine.arch();
  const Network& net = engine.model().net;
  CollectedFeatures out;
  out.per_exit.resize(net.blocks.size());
  for (const BlockSpec& b : net.blocks) out.dims.push_back(b.out_channels);
  ExitPooler pooler(engine.backend_mut());
  const size_t per = size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w);
  std::vector<float> logits;
  for (int s = 0; s < n; s += batch) {
    const int nb = std::min(batch, n - s);
    logits.resize(size_t(nb) * size_t(a.num_classes));
    RunOptions opts;
    opts.on_exit = [&](const ExitPoint& e, const float* act, int cnt) {
      const std::vector<float>& f = pooler.pool(act, e.shape.with_batch(cnt));
      out.per_exit[size_t(e.block)].insert(out.per_exit[size_t(e.block)].end(), f.begin(), f.end());
      return true;
    };
    engine.run(images + size_t(s) * per, nb, a.in_channels, a.input_h, a.input_w, logits.data(), opts);
    for (int i = 0; i < nb; ++i) {
      float confidence;
      out.full_labels.push_back(
          top_class(logits.data() + size_t(i) * size_t(a.num_classes), a.num_classes, &confidence));
    }
    if (progress) std::fprintf(stderr, "\rcollect %d/%d", s + nb, n);
  }
  if (progress) std::fprintf(stderr, "\n");
  return out;
}

ServeResult serve_one(Engine& engine, const CacheSet& caches, const float* image, ExitPooler& pooler) {
  const Arch& a = engine.arch();
  const auto t0 = std::chrono::steady_clock::now();
  ServeResult r;
  std::vector<float> probs(size_t(a.num_classes)), logits(size_t(a.num_classes));
  RunOptions opts;
  opts.on_exit = [&](const ExitPoint& e, const float* act, int n) {
    for (size_t i = 0; i < caches.exits.size(); ++i) {
      const ExitCache& c = caches.exits[i];
      if (c.block != e.block || !c.enabled()) continue;
      const std::vector<float>& f = pooler.pool(act, e.shape.with_batch(n));
      const int pred = c.predict(f.data(), probs.data());
      if (probs[size_t(pred)] >= c.threshold) {
        r.label = pred;
        r.exit = int(i);
        r.confidence = probs[size_t(pred)];
        return false;  // answered: skip the rest of the network
      }
    }
    return true;
  };
  if (engine.run(image, 1, a.in_channels, a.input_h, a.input_w, logits.data(), opts)) {
    r.label = top_class(logits.data(), a.num_classes, &r.confidence);
    r.exit = -1;
  }
  r.latency_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace gati
