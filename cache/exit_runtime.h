// Running a model with learned caches attached: collecting pooled features at
// every exit (to build caches) and serving requests that leave at the first
// exit whose cache is confident enough.
//
// The pooled features are computed by the backend (global average pool) right
// after the block, inside the executor's flow, so the CUDA backend will run
// the same logic with its own kernels; only the [n, channels] features cross
// to the host.  Batch 1 for now: per-sample exits with batch compaction are
// the next step.
#pragma once

#include <memory>
#include <vector>

#include "cache/learned_cache.h"
#include "engine/engine.h"

namespace gati {

// Pools block outputs into host memory through a backend buffer.
class ExitPooler {
 public:
  explicit ExitPooler(Backend& backend) : backend_(backend) {}
  // act: backend NHWC [shape.n, h, w, c] -> host [shape.n, c]
  const std::vector<float>& pool(const float* act, const Act& shape);

 private:
  Backend& backend_;
  std::unique_ptr<Buffer> device_;
  std::vector<float> host_;
};

struct CollectedFeatures {
  std::vector<std::vector<float>> per_exit;  // [exit] -> [n, channels]
  std::vector<int> dims;                     // channels per exit
  std::vector<int> full_labels;              // the full model's argmax
};

// Runs `n` NCHW samples (normalised) in batches and collects every exit's
// pooled features and the full model's labels.
CollectedFeatures collect_features(Engine& engine, const float* images, int n, int batch, bool progress = false);

struct ServeResult {
  int label = -1;
  int exit = -1;  // index into the cache set's exits, -1 = the full model
  float confidence = 0;
  double latency_ms = 0;
};

// Serves one sample (batch 1): returns at the first confident exit.
ServeResult serve_one(Engine& engine, const CacheSet& caches, const float* image, ExitPooler& pooler);

}  // namespace gati
