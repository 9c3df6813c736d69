// Calibrating a memory of recent answers (engine/memory.h) on a simulated
// stream of requests: the same lookups and insertions the engine makes, in
// trace order, on the host.
//
// Design decision: the memory's threshold is chosen so that its own hits
// agree with the full model at the target (the one-sided 95% Wilson lower
// bound, as the cascade's rule), on a locality trace over held-out images
// the cache models never trained on.  The simulation knows which requests a
// cache model answers (those never reach the full model, so they are never
// stored), so the memory's contents follow what serving would put there.
#pragma once

#include <cstdint>
#include <vector>

#include "cache/learned_cache.h"
#include "engine/memory.h"

namespace gati {

// One request stream at the memory's exit, in order.
struct MemoryStream {
  std::vector<float> features;    // [n, dim] pooled as the memory pools (not yet standardised)
  std::vector<int> full_label;    // [n] the full model's answer
  std::vector<float> full_conf;   // [n] its confidence
  std::vector<uint8_t> reaches;   // [n] 1: no cache model answered before the memory's exit
  std::vector<uint8_t> answered;  // [n] 1: a cache model at or after the memory's exit answered (never stored)
  size_t size() const { return full_label.size(); }
};

struct MemoryStats {
  int64_t lookups = 0, hits = 0, hit_agree = 0, stored = 0;
  double hit_rate() const { return lookups ? double(hits) / double(lookups) : 0; }
  double hit_agreement() const { return hits ? double(hit_agree) / double(hits) : 1; }
};

// Replays the stream through a memory as `spec` describes (its threshold,
// capacity, min_confidence and standardisation).
MemoryStats simulate_memory(const MemorySpec& spec, const MemoryStream& stream);

// Sets spec.mean/inv_std from the stream's features and the largest
// threshold whose hits' agreement has a one-sided 95% Wilson lower bound
// >= target on each quarter of the stream (hits are correlated: one wrong
// entry answers every near-repeat), with at least min_hits hits in all
// (none: threshold -1, the memory never answers).  Returns the stats at the
// chosen threshold.
MemoryStats calibrate_memory(MemorySpec& spec, const MemoryStream& stream, double target, int min_hits = 20);

}  // namespace gati
