// Learned caches (GATI): at each exit point a small model predicts the full
// model's final label from the block's pooled features, and a calibrated
// confidence threshold decides hit or miss.
//
// Design decision: the predictor is a linear softmax layer over standardised
// pooled features (global average, or a grid of average and max cells: see
// PoolSpec), optionally with a hidden layer of ReLU units before it (GATI's
// MLP predictor, mlp_head.h).  It costs features x classes (or x hidden)
// MACs per sample, far below one block's cost, so a miss costs almost nothing; its
// labels are the full model's own predictions (never ground truth), so a hit
// means "agrees with the full model".  The same SGD routine serves offline
// building and online updates, and refuses any step that would put a
// non-finite value into the weights.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/memory.h"

namespace gati {

struct Model;

// A cache model at one exit point: the head the runtime runs (a learned
// linear predictor, or a Freeze distance head built by cache/approx_cache.h)
// with its training record.
struct ExitCache : ExitHeadSpec {
  // Training record (kept in the cache file's metadata).
  double train_agreement = 0, holdout_agreement = 0, holdout_hit_rate = 0, holdout_hit_agreement = 0;

  bool enabled() const { return threshold <= 1.0f; }
  // The label for one sample's pooled features [dim] and its confidence (the
  // top softmax probability of a linear head; Freeze's, mapped into [0, 1),
  // of a distance head): the same kernels the CPU backend's exit head runs.
  int predict(const float* features, float* confidence) const;
  LinearHeadView view() const;
  DistanceHeadView distance_view() const;
  const ExitHeadSpec& head_spec() const { return *this; }
  // The inverse of head_spec (no training record).
  static ExitCache from_head_spec(const ExitHeadSpec& h);
};

// A head's kind as reports name it: "linear", "mlp32" (a learned head with
// 32 hidden units), "knn", "kmeans".
std::string head_description(const ExitHeadSpec& h);

// The argmax of `logits` [classes] and its softmax probability: the one
// definition of confidence (kernels/cpu/exit_head_cpu.h).
int top_class(const float* logits, int classes, float* confidence);

struct SgdOptions {
  int epochs = 10;
  int batch = 64;
  float lr = 0.05f, momentum = 0.9f, weight_decay = 5e-4f;
  uint32_t seed = 0;
  // Distillation from the full model's logits (GATI: alpha 0.5, T 6); 0:
  // its labels alone.  Offline training only (train_exit_cache with the
  // logits); online steps use the labels.
  float distill_alpha = 0, distill_temperature = 6;
};

// A linear head's weights rounded to the nearest IEEE halves (kept as
// floats).  Backends store such weights as halves, so a lookup reads half
// the bytes and computes exactly what the floats give: at batch 1 a head
// costs the reading of its weights (ResNet-50's 17 heads of 1000 classes
// hold 60 MB as floats).  The rounding moves each weight by at most 2^-11
// of itself (at most 2^-25 for weights below 2^-14, which halves hold as
// subnormals), far below what training settles; a weight beyond the
// largest half (65504) is left as it is, and its head read as floats.
void round_weights_to_half(ExitHeadSpec& head);

// Heads of at least this many weights (256 KiB as halves, more than a
// core's L2: read from memory at every batch-1 lookup) are kept as int8.
constexpr size_t kInt8HeadWeights = size_t(1) << 17;

// How gati cache build leaves a linear head's weights for serving: a head
// of kInt8HeadWeights or more rounded per class to int8 times a power of two
// (round_rows_to_int8: each weight moves by at most 1/254 of its class's
// largest |weight|; the CPU reads a quarter of the floats' bytes, computing
// the same floats, and such weights are halves too), a smaller one to halves.
// Calibration comes after, so thresholds account for the rounding.
void round_weights_for_serving(ExitHeadSpec& head);

// Fits mean/inv_std on `features` [n, dim] and trains the predictor (with
// cache.hidden > 0 hidden units, an MLP from a seeded random start; else a
// linear layer from zeros) to the full model's labels, and with opt.distill_alpha > 0 to its logits
// `full_logits` [n, classes] as well; the trained weights are then rounded
// for serving (round_weights_for_serving).  Returns the mean loss of each epoch.
std::vector<double> train_exit_cache(ExitCache& cache, const std::vector<float>& features,
                                     const std::vector<int>& labels, const SgdOptions& opt,
                                     const std::vector<float>& full_logits = {});

// GATI's selector, fed sorted scores: a logistic regression from the k
// largest softmax probabilities of the trained predictor (descending) to
// whether its answer is the full model's (`labels`), fitted by Newton's
// method with an L2 penalty of 1e-2 (k + 1 parameters: over-fitting is not
// the risk, all-right training data is, hence the penalty).  Sets
// cache.selector; the head's confidence is then the selector's.  Fit it on
// data the predictor was not trained on (build_caches: the held-out images),
// where its mistakes look like the traffic's.
void fit_selector(ExitCache& cache, const std::vector<float>& features, const std::vector<int>& labels, int k);

// One SGD step on a mini-batch (also the online update path, which
// updates linear heads only).  A head with a hidden layer steps through
// both layers (mlp_sgd_step).  `teacher`
// [n, classes]: the full model's softmax at opt.distill_temperature, used
// when opt.distill_alpha > 0.  Returns the batch loss, or throws gati::Error
// (weights unchanged) if the step would make any weight non-finite.
double sgd_step(ExitCache& cache, const float* features, const int* labels, int n, const SgdOptions& opt,
                std::vector<float>& velocity, const float* teacher = nullptr);

// Per-feature mean and 1 / sqrt(variance + 1e-6) of the rows of features
// [n, dim] with keep[i] != 0 (keep null: every row), in double; returns how
// many rows that was.  The standardisation of cache models and memories.
size_t fit_standardisation(const float* features, size_t n, int dim, const uint8_t* keep, std::vector<float>* mean,
                           std::vector<float>* inv_std);

// One-sided 95% Wilson score lower bound of a proportion agree / n (0 when
// n = 0); n may be an effective, fractional sample size.
double wilson_lower(double agree, double n);

// How a threshold is chosen from held-out samples.
enum class ThresholdRule {
  kBound,      // the taken samples' agreement has a one-sided 95% Wilson lower bound >= target
  kTarget,     // the taken samples' agreement (the point estimate) >= target
  kZeroError,  // Freeze's rule: just above the highest confidence that was ever wrong
};
// "bound", "target", "zero-error"; errors list the valid names.
ThresholdRule threshold_rule(const std::string& name);
const char* threshold_rule_name(ThresholdRule rule);

// Chooses each exit's threshold, in exit order, on held-out samples: exit e
// sees only the samples no earlier exit took, and gets the lowest threshold
// the rule accepts.  The point estimate meets the target on the held-out
// set but lands just under it on unseen traffic (0.987-0.990 for 0.99 in
// our measurements); the bound keeps a margin that grows as an exit's hits
// get fewer.  features[e] is [n, dim_e].
void calibrate_thresholds(std::vector<ExitCache>& caches, const std::vector<std::vector<float>>& features,
                          const std::vector<int>& labels, double target, ThresholdRule rule = ThresholdRule::kBound,
                          int min_hits = 20);

// What answering at each exit costs one sample (MACs, or measured time),
// for choosing the cascade's thresholds.
struct CascadeCosts {
  std::vector<double> through;  // [exit] the network up to and including the exit's block
  std::vector<double> head;     // [exit] the exit's own head (pooling and scores), paid by every sample reaching it
  double full = 0;              // the whole network
};

struct CascadeResult {
  double agreement = 0;  // of the held-out samples with the full model (those that run to the end agree)
  double bound = 0;      // its one-sided 95% Wilson lower bound (both: the part with the lowest bound)
  double hit_rate = 0;   // share of samples answered by an exit
  double cost = 0;       // expected cost per sample as a fraction of costs.full (heads included)
  double head_cost = 0;  // the open exits' heads as a fraction of costs.full: what caches that never hit add
  int steps = 0;         // greedy moves and refinement passes that changed something
};

// Chooses every exit's threshold at once so that the whole cascade agrees
// with the full model at `target` on the held-out samples (rule kBound: the
// one-sided 95% Wilson lower bound of the overall agreement >= target;
// kTarget: the point estimate) at the lowest expected cost.  Samples that
// run to the end always agree, so the error budget 1 - target is spent where
// it saves the most: greedily, each step lowers the one exit's threshold
// (taking about 0.25% more of the samples) with the most cost saved per
// added disagreement, while the bound holds.  Exits the search never opens
// stay disabled (threshold > 1): that is exit placement.  Coordinate descent
// over each exit's threshold then refines the greedy result.  An opened exit
// takes at least min_hits samples.  features[e] is [n, dim_e].
//
// part_ends splits the samples into consecutive parts (for example clean
// and shifted images, ends 10000 and 20000; empty: one part) and the rule
// must hold on each part alone, so traffic made of only one kind still meets
// the target.  The result reports the worst part.
//
// traffic_requests > 0 asks for more: that a stretch of traffic of that
// many independent requests, drawn like a part, still agrees at the target
// (95%, one-sided).  Its own sampling error adds to the held-out one, so
// the bound is taken as if from 1 / (1 / part + 1 / traffic_requests)
// samples.  A trace that repeats items (temporal locality: about one new
// item per ten requests) has fewer independent requests than requests.
//
// max_head_cost bounds what the open exits' heads together cost (the sum
// of costs.head over them, as a fraction of costs.full): the cost of
// caches that never hit, which traffic no cache can answer pays in full.
// Exits stay closed rather than pass it.
CascadeResult calibrate_cascade(std::vector<ExitCache>& caches, const std::vector<std::vector<float>>& features,
                                const std::vector<int>& labels, double target, ThresholdRule rule,
                                const CascadeCosts& costs, const std::vector<size_t>& part_ends = {}, int min_hits = 20,
                                double traffic_requests = 0, double max_head_cost = 1.0);

struct CacheSet {
  std::string model_arch;         // the architecture name the caches were built for
  std::string model_fingerprint;  // fingerprint() of the exact weights they were built for
  double target_agreement = 0.99;
  // The full model's label mix on the training images [classes] (shares
  // summing to 1): what the learned heads' softmax assumes, and what online
  // prior adaptation (label_shift.h) corrects from.  Empty in files made
  // before it was kept.
  std::vector<float> label_prior;
  std::vector<ExitCache> exits;
  // A memory of recent answers to set up with the caches (engine/memory.h),
  // and its record on the calibration stream.
  std::optional<MemorySpec> memory;
  double memory_hit_rate = 0, memory_hit_agreement = 0;

  // The enabled exits as exit heads for Engine::make_exit_heads.
  std::vector<ExitHeadSpec> head_specs() const;

  void save(const std::string& path) const;
  // Loads and validates against the model (exit names, dims, classes).
  static CacheSet load(const std::string& path, const Model& model);
};

}  // namespace gati
