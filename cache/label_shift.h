// Online prior adaptation: when the traffic's class mix moves away from the
// one the caches were trained on (the `drift` trace: 80% of requests from
// three classes per phase), a learned head's softmax is the posterior under
// the training mix, and re-weighting it by the served mix makes the common
// classes' answers more confident and the rare ones' less.
//
// Design decision: the correction is the label-shift one (Saerens et al.,
// 2002): under a new prior q, p_q(k|x) is proportional to
// p(k|x) * q(k) / p(k), which for a linear head is its bias plus
// log(q(k) / p(k)) (no change to the kernels: the head is republished with
// that bias).  p is the full model's label mix on the training images
// (CacheSet::label_prior); q is an exponential moving average of the labels
// the service answered with (hits included: they agree with the full model
// at the target rate), started at p.  Two limits keep a noisy estimate from
// buying hits that disagree: the average spans about `window` requests, and
// each log ratio is clamped to +-log(max_ratio).  On the temporal-locality
// trace, where the class runs for ~10 requests, an unclamped 50-request
// window took agreement from 0.993 to 0.958 (README, "Freeze and GATI side
// by side").  Distance heads (k-NN, k-means) are served unchanged.
#pragma once

#include <vector>

#include "cache/learned_cache.h"

namespace gati {

struct LabelShiftOptions {
  int window = 200;        // requests the moving average spans (its rate is 1 / window)
  double max_ratio = 1.5;  // clamp of q(k) / p(k) to [1 / max_ratio, max_ratio]
};

class LabelShift {
 public:
  // train_prior [classes]: finite, >= 0, summing to 1 (within 1e-3);
  // classes with p(k) = 0 are never corrected.
  LabelShift(std::vector<float> train_prior, const LabelShiftOptions& options);

  // One served answer.
  void observe(int label);
  // q, the served mix as estimated now.
  const std::vector<double>& estimate() const { return now_; }
  // log(q(k) / p(k)) per class, clamped.
  std::vector<float> correction() const;
  // The cache as served under the current estimate: a learned linear head
  // with the correction added to its bias; any other kind as it is.
  ExitCache adapt(const ExitCache& c) const;

 private:
  std::vector<float> train_;
  std::vector<double> now_;
  LabelShiftOptions o_;
};

}  // namespace gati
