// The drift guard: while serving, a feedback fraction of the requests an
// exit answers keep running to the end, so each exit's agreement with the
// full model is measured on live traffic.  An exit whose rolling agreement
// is confidently below the target is switched off; while off it is still
// scored in shadow on requests whose full answer is known, and it is
// switched on again once a full window of those agrees at the target.
//
// Design decision: switching off needs evidence, not one unlucky window:
// the one-sided 95% Wilson upper bound of the window's agreement must fall
// below the target (at 0.99, a window of 200 with 8 disagreements does; one
// with 2 does not).  Switching on needs a full window at the target (point
// estimate), since a bound at 0.99 would need thousands of observations.
// Pure bookkeeping, so the runtime, the server and the replay share it.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

namespace gati {

struct GuardOptions {
  double target = 0.99;
  int window = 500;           // observations per exit kept for its rolling agreement
  int min_observations = 50;  // before an exit may be switched off
};

// One switch, for the report.
struct GuardEvent {
  int64_t at = 0;  // the observation count (all exits) when it happened
  int exit = 0;
  bool on = false;
  double agreement = 0;  // of the window that decided it
  int observations = 0;
};

class DriftGuard {
 public:
  DriftGuard(int exits, const GuardOptions& options);
  // An observation at `exit`: its answer (served, or scored in shadow while
  // it is off) agreed with the full model or not.  Returns true when the
  // exit was switched by it.
  bool observe(int exit, bool agree);
  bool enabled(int exit) const { return exits_.at(size_t(exit)).on; }
  // The rolling agreement of the exit's window (1 when empty) and its size.
  double agreement(int exit) const;
  int observations(int exit) const { return int(exits_.at(size_t(exit)).window.size()); }
  const std::vector<GuardEvent>& events() const { return events_; }
  const GuardOptions& options() const { return options_; }

 private:
  struct Exit {
    std::deque<uint8_t> window;
    int agree = 0;
    bool on = true;
  };
  GuardOptions options_;
  std::vector<Exit> exits_;
  std::vector<GuardEvent> events_;
  int64_t seen_ = 0;
};

// One-sided 95% Wilson score upper bound of agree / n (1 when n = 0).
double wilson_upper(int agree, int n);

}  // namespace gati
