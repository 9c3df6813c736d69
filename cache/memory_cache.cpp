// Memory calibration; see memory_cache.h.
#include "cache/memory_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/memory_cpu.h"
#include "weights/common/error.h"

namespace gati {
namespace {

void check_stream(const MemorySpec& spec, const MemoryStream& s) {
  const size_t n = s.size();
  if (s.features.size() != n * size_t(spec.dim) || s.full_conf.size() != n || s.reaches.size() != n ||
      s.answered.size() != n)
    fail("memory calibration: the stream's arrays do not match ", n, " requests of ", spec.dim, " features");
  if (spec.capacity < 1) fail("memory calibration: capacity ", spec.capacity, " must be at least 1");
}

// The stream standardised as the memory's keys are.
std::vector<float> standardised(const MemorySpec& spec, const MemoryStream& s) {
  std::vector<float> x(s.features.size());
  const size_t dim = size_t(spec.dim);
  for (size_t i = 0; i < s.size(); ++i)
    for (size_t d = 0; d < dim; ++d) x[i * dim + d] = (s.features[i * dim + d] - spec.mean[d]) * spec.inv_std[d];
  return x;
}

// The replay itself, on standardised features; also each lookup's nearest
// squared distance (infinity while the memory is empty) when `nearest` is
// set, and the stats of each of `parts` consecutive parts when `per_part` is.
MemoryStats replay(const MemorySpec& spec, const MemoryStream& s, const std::vector<float>& x,
                   std::vector<float>* nearest, int parts = 1, std::vector<MemoryStats>* per_part = nullptr) {
  const size_t dim = size_t(spec.dim), cap = size_t(spec.capacity);
  std::vector<float> keys(cap * dim);
  std::vector<int> labels(cap);
  size_t entries = 0, next = 0;
  MemoryStats st;
  if (per_part) per_part->assign(size_t(parts), MemoryStats{});
  for (size_t i = 0; i < s.size(); ++i) {
    if (!s.reaches[i]) continue;
    MemoryStats* part = per_part ? &(*per_part)[i * size_t(parts) / s.size()] : nullptr;
    const float* q = x.data() + i * dim;
    ++st.lookups;
    if (part) ++part->lookups;
    float best_d = 0;
    const int best = cpu::nearest_entry(q, keys.data(), int(entries), spec.dim, &best_d);
    if (nearest) nearest->push_back(best < 0 ? INFINITY : best_d);
    if (best >= 0 && best_d <= spec.threshold) {
      const bool agree = labels[size_t(best)] == s.full_label[i];
      ++st.hits;
      st.hit_agree += agree;
      if (part) {
        ++part->hits;
        part->hit_agree += agree;
      }
      continue;
    }
    if (s.answered[i] || !(s.full_conf[i] >= spec.min_confidence)) continue;
    std::memcpy(keys.data() + next * dim, q, dim * sizeof(float));
    labels[next] = s.full_label[i];
    next = (next + 1) % cap;
    entries = std::min(entries + 1, cap);
    ++st.stored;
  }
  return st;
}

}  // namespace

MemoryStats simulate_memory(const MemorySpec& spec, const MemoryStream& s) {
  check_stream(spec, s);
  return replay(spec, s, standardised(spec, s), nullptr);
}

MemoryStats calibrate_memory(MemorySpec& spec, const MemoryStream& s, double target, int min_hits) {
  if (!(target > 0 && target <= 1)) fail("memory calibration: target agreement ", target, " must be in (0, 1]");
  check_stream(spec, s);
  // Standardisation over the requests that reach the memory.
  if (fit_standardisation(s.features.data(), s.size(), spec.dim, s.reaches.data(), &spec.mean, &spec.inv_std) == 0)
    fail("memory calibration: no request reaches the memory's exit");
  const std::vector<float> x = standardised(spec, s);

  // Candidates: 32 thresholds spaced geometrically from the 1% quantile of
  // the nearest distances with nothing answered (the memory at its fullest)
  // to the largest.  Feasibility is not monotone in the threshold (a larger
  // one stores fewer, older answers), so every candidate is tried and the
  // largest feasible one wins.
  spec.threshold = -1.f;
  std::vector<float> nearest;
  replay(spec, s, x, &nearest);
  nearest.erase(std::remove_if(nearest.begin(), nearest.end(), [](float d) { return !std::isfinite(d); }),
                nearest.end());
  std::sort(nearest.begin(), nearest.end());
  MemoryStats best = replay(spec, s, x, nullptr);
  if (nearest.empty()) return best;
  const double lo = std::max(double(nearest[nearest.size() / 100]), 1e-12), hi = std::max(double(nearest.back()), lo);
  constexpr int kCandidates = 32;
  // A wrong entry answers every near-repeat until it is evicted, so hits
  // are far from independent: the bound must hold on each quarter of the
  // stream alone, not only on the whole.
  constexpr int kParts = 4;
  auto feasible = [&](float t, MemoryStats* out) {
    spec.threshold = t;
    std::vector<MemoryStats> parts;
    *out = replay(spec, s, x, nullptr, kParts, &parts);
    if (out->hits < min_hits) return false;
    for (const MemoryStats& p : parts)
      if (p.hits > 0 && wilson_lower(int(p.hit_agree), int(p.hits)) < target) return false;
    return true;
  };
  float chosen = -1.f;
  for (int q = 0; q < kCandidates; ++q) {
    const float t = float(lo * std::pow(hi / lo, double(q) / (kCandidates - 1)));
    MemoryStats st;
    if (feasible(t, &st)) {
      chosen = t;
      best = st;
    }
  }
  spec.threshold = chosen;
  if (chosen < 0) best = replay(spec, s, x, nullptr);
  return best;
}

}  // namespace gati
