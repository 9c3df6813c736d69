// Building learned caches for a model: collect features on training images,
// train one predictor per exit (linear, or an MLP) on the full model's own labels, and
// calibrate every exit's threshold on held-out images.  `gati cache build`
// is a thin wrapper around build_caches.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cache/approx_cache.h"
#include "cache/features.h"
#include "cache/learned_cache.h"
#include "cache/memory_cache.h"
#include "loaders/fashion_mnist.h"

namespace gati {

// How the cascade calibration prices an exit.
enum class CostModel {
  kMeasured,  // batch-1 time on this machine's backend (median of 31 runs with every head attached, never firing)
  kMacs,      // multiply-accumulates: deterministic, but blind to how fast each layer runs
};
// "measured", "macs"; errors list the valid names.
CostModel cost_model(const std::string& name);
const char* cost_model_name(CostModel model);

// One exit's settings over the build's: closed (no cache built there), or
// another kind or pooling than every other exit's.
struct ExitSetting {
  bool enabled = true;
  std::optional<HeadKind> kind;  // none: BuildOptions::kind
  std::string pool;              // empty: BuildOptions::pool (a name parse_pool knows; not "auto")
  std::optional<int> hidden;     // none: BuildOptions::hidden
};

struct BuildOptions {
  double target_agreement = 0.99;
  ThresholdRule rule = ThresholdRule::kBound;
  // Thresholds for the whole cascade at once (calibrate_cascade: the overall
  // agreement meets the target, the error budget goes where it saves the
  // most, exits that do not pay stay closed), or each exit on its own
  // (calibrate_thresholds; always so for the zero-error rule).
  bool cascade = true;
  CostModel cost = CostModel::kMeasured;
  // Calibrate on the held-out images as they are and, with this on, once
  // more shifted by up to 2 pixels with noise 0.02 (as the locality trace
  // perturbs requests), so the thresholds hold on both kinds of traffic.
  bool perturbed_holdout = true;
  // The cascade's bound holds for a stretch of traffic of this many
  // independent requests as well as on the held-out images
  // (calibrate_cascade's traffic_requests; 0: the held-out images alone).
  // A 10000-request locality trace has about 1000 distinct items.
  double traffic_requests = 1000;
  // What caches that never hit may add to a request, as a share of the
  // model (calibrate_cascade's max_head_cost, in the cost model's units):
  // exits stay closed rather than pass it.  4%, under the project's 5%
  // target for the measured never-hit overhead; 1: no limit.
  double never_hit_budget = 0.04;
  // The cache kind at every exit: GATI's learned linear predictor
  // (kLinear), or Freeze's k-NN or k-means (kKnn, kKmeans; `approx` sets
  // their sizes).  Every kind is calibrated the same way.
  HeadKind kind = HeadKind::kLinear;
  // Learned caches: hidden ReLU units of the predictor (GATI's MLP,
  // mlp_head.h); 0: a linear predictor.  32 by default: on both demos the
  // MLP answers more requests early at the same agreement (README).
  int hidden = 32;
  ApproxOptions approx;
  // Pooling at every exit: a name parse_pool knows, or "auto" (per exit the
  // richest of mix4x4, avg4x4, mix2x2, avg2x2, avg whose scores or
  // projection (features x classes, or x reduced dimensions) cost at most
  // auto_pool_budget of the model's MACs and which has at most
  // kMaxAutoPoolDim features).
  std::string pool = "auto";
  double auto_pool_budget = 0.005;
  // A memory of recent answers at the stem (engine/memory.h), calibrated on
  // a locality trace over the held-out images (memory_cache.h); kept only
  // when a threshold meets the target.  Off by default: behind the demo's
  // cascade, which answers most requests before the full model could store
  // them, no threshold meets 0.99 (see the README).
  bool memory = false;
  std::string memory_pool = "avg2x2";
  int memory_capacity = 1024;
  float memory_min_confidence = 0.99f;
  int memory_requests = 10000;  // length of the calibration trace
  int train = 50000;            // training images (the first ones of the data set)
  int holdout = 10000;          // calibration images after them
  int batch = 256;              // feature-collection batch
  SgdOptions sgd;
  // GATI's selector on every learned cache, over the k largest softmax
  // probabilities (fit_selector, on the held-out images before the
  // thresholds are calibrated on them); 0: none, the top probability is the
  // confidence.
  int selector = 0;
  // Per exit, by name (exit_points' names; build_caches refuses others).
  std::map<std::string, ExitSetting> exits;
  ProgressFn progress;        // feature collection: images done of all
  ProgressFn train_progress;  // training: exits done of those with a cache
};

struct BuildResult {
  CacheSet caches;
  CascadeResult cascade;                  // when calibrated as a cascade
  MemoryStats memory;                     // the memory on its calibration trace, when built
  std::vector<std::vector<double>> loss;  // per exit, per epoch (learned caches)
  double seconds = 0;
};

constexpr int kMaxAutoPoolDim = 4096;

// Each exit's pooling for `pool` ("auto" or a name parse_pool knows), for
// heads that spend macs_per_feature MACs on each feature (a linear head:
// its classes; with a hidden layer, its hidden units; a distance head: its
// reduced dimensions).
std::vector<PoolSpec> choose_pooling(const Engine& engine, const std::string& pool, double auto_budget,
                                     int macs_per_feature);

// Per-sample cost of answering at each exit of `caches` (the network up to
// its block; its head's pooling and scores) and of the whole network.
// `sample` is one normalised NCHW input (used by kMeasured).
CascadeCosts cascade_costs(const Engine& engine, const std::vector<ExitCache>& caches, CostModel model,
                           const float* sample);

// `data` is raw [0, 1] images; they are normalised here.  Throws when the
// data set's images or classes do not fit the model, or it has fewer than
// train + holdout images.
BuildResult build_caches(const Engine& engine, const Dataset& data, const BuildOptions& options);

// Throws unless the data set's images have the model's input shape and its
// labels the model's classes; `what` names the model for the message.
void check_data_fits(const Engine& engine, const Dataset& data, const std::string& what);

}  // namespace gati
