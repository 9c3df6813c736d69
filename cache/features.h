// Collecting every exit's pooled features and the full model's answers over
// a set of images: the training data of the cache models.
//
// The pooling runs on the backend (its pool_features op) inside the
// executor's observer, so the same code collects on CPU and CUDA; only the
// [n, channels] features cross to the host.
#pragma once

#include <functional>
#include <vector>

#include "engine/engine.h"

namespace gati {

struct CollectedFeatures {
  std::vector<std::vector<float>> per_exit;  // [exit point] -> [n, dims[exit]]
  std::vector<int> dims;                     // features per exit
  std::vector<int> full_labels;              // the full model's argmax
  std::vector<float> full_conf;              // its top softmax probability
  std::vector<float> full_logits;            // its logits [n, classes] (the teacher when distilling)
};

// Called with (images done, total).
using ProgressFn = std::function<void(size_t done, size_t total)>;

// Runs `n` NCHW samples (normalised) in batches and collects every exit's
// pooled features (pooled as pools[exit] says; empty: global average
// everywhere) and the full model's labels.
CollectedFeatures collect_features(const Engine& engine, const float* images, int n, int batch,
                                   const std::vector<PoolSpec>& pools = {}, const ProgressFn& progress = {});
// The same on a session the caller keeps, so that collecting often (online
// learning, replay) reuses its plans and scratch instead of making them anew.
CollectedFeatures collect_features(Session& session, const float* images, int n, int batch,
                                   const std::vector<PoolSpec>& pools = {}, const ProgressFn& progress = {});

}  // namespace gati
