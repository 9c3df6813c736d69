// Online prior adaptation; see label_shift.h.
#include "cache/label_shift.h"

#include <algorithm>
#include <cmath>

#include "weights/common/error.h"

namespace gati {

LabelShift::LabelShift(std::vector<float> train_prior, const LabelShiftOptions& options)
    : train_(std::move(train_prior)), o_(options) {
  if (train_.empty())
    fail("label shift: the caches carry no label prior (made by an older gati); rebuild them with 'gati cache build'");
  if (o_.window < 1) fail("label shift: window must be at least 1 request, got ", o_.window);
  if (!(o_.max_ratio >= 1 && std::isfinite(o_.max_ratio)))
    fail("label shift: max_ratio must be finite and at least 1, got ", o_.max_ratio);
  double sum = 0;
  for (size_t k = 0; k < train_.size(); ++k) {
    if (!(std::isfinite(train_[k]) && train_[k] >= 0))
      fail("label shift: the label prior of class ", k, " is ", train_[k], " (must be finite and >= 0)");
    sum += train_[k];
  }
  if (std::fabs(sum - 1) > 1e-3) fail("label shift: the label prior sums to ", sum, ", not 1");
  now_.assign(train_.begin(), train_.end());
}

void LabelShift::observe(int label) {
  if (label < 0 || size_t(label) >= now_.size())
    fail("label shift: label ", label, " is outside the ", now_.size(), " classes");
  const double rate = 1.0 / o_.window;
  for (double& q : now_) q *= 1 - rate;
  now_[size_t(label)] += rate;
}

std::vector<float> LabelShift::correction() const {
  const double limit = std::log(o_.max_ratio);
  std::vector<float> c(now_.size(), 0.f);
  for (size_t k = 0; k < now_.size(); ++k) {
    if (train_[k] <= 0) continue;
    // q(k) >= p(k) * (1 - rate)^n stays positive; the clamp bounds it anyway.
    const double r = now_[k] > 0 ? std::log(now_[k] / double(train_[k])) : -limit;
    c[k] = float(std::clamp(r, -limit, limit));
  }
  return c;
}

ExitCache LabelShift::adapt(const ExitCache& c) const {
  ExitCache out = c;
  if (c.kind != HeadKind::kLinear) return out;
  if (size_t(c.classes) != now_.size())
    fail("label shift: exit '", c.name, "' has ", c.classes, " classes, the label prior ", now_.size());
  const std::vector<float> d = correction();
  for (size_t k = 0; k < d.size(); ++k) out.bias[k] += d[k];
  return out;
}

}  // namespace gati
