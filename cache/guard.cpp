// The drift guard; see guard.h.
#include "cache/guard.h"

#include <cmath>

#include "weights/common/error.h"

namespace gati {

double wilson_upper(int agree, int n) {
  if (n == 0) return 1;
  const double z = 1.6448536269514722, p = double(agree) / n, z2n = z * z / n;
  return (p + z2n / 2 + z * std::sqrt(p * (1 - p) / n + z2n / (4.0 * n))) / (1 + z2n);
}

DriftGuard::DriftGuard(int exits, const GuardOptions& o) : options_(o), exits_(size_t(exits < 0 ? 0 : exits)) {
  if (!(o.target > 0 && o.target <= 1)) fail("drift guard: target ", o.target, " must be in (0, 1]");
  if (o.window < 1 || o.min_observations < 1 || o.min_observations > o.window)
    fail("drift guard: window ", o.window, " and min_observations ", o.min_observations,
         " must be >= 1, min_observations at most the window");
}

double DriftGuard::agreement(int exit) const {
  const Exit& e = exits_.at(size_t(exit));
  return e.window.empty() ? 1.0 : double(e.agree) / double(e.window.size());
}

bool DriftGuard::observe(int exit, bool agree) {
  if (exit < 0 || size_t(exit) >= exits_.size()) fail("drift guard: exit ", exit, " is not one of ", exits_.size());
  Exit& e = exits_[size_t(exit)];
  ++seen_;
  e.window.push_back(agree ? 1 : 0);
  e.agree += agree ? 1 : 0;
  if (int(e.window.size()) > options_.window) {
    e.agree -= e.window.front();
    e.window.pop_front();
  }
  const int n = int(e.window.size());
  const bool switch_off = e.on && n >= options_.min_observations && wilson_upper(e.agree, n) < options_.target;
  const bool switch_on = !e.on && n == options_.window && double(e.agree) / n >= options_.target;
  if (!switch_off && !switch_on) return false;
  events_.push_back({seen_, exit, switch_on, double(e.agree) / n, n});
  e.on = switch_on;
  e.window.clear();  // the next decision rests on observations made in the new state
  e.agree = 0;
  return true;
}

}  // namespace gati
