// Replaying a request trace through the engine with caches, against the
// same engine without them, in one run: per-request exits, per-exit hit
// rates, agreement with the full model, accuracy, latency and throughput.
// `gati serve-sim` is a thin wrapper around replay_trace.
//
// Requests are served in trace order in batches of `batch` (per-sample exits
// with compaction inside a batch); a request's latency is its batch's time,
// since a batch's answers return together.  Each batch runs with caches and
// then without, back to back, so both see the same machine state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cache/features.h"
#include "cache/guard.h"
#include "cache/label_shift.h"
#include "cache/learned_cache.h"
#include "cache/online.h"
#include "loaders/trace.h"

namespace gati {

struct ReplayOptions {
  int batch = 1;
  // Untimed runs of the trace's first batch before the replay, with the
  // cache set's heads and without them (no memory, no learner: nothing they
  // change sees them), so that building the plans (a GPU times cuDNN's
  // candidates) and recording graphs stay out of the latencies.
  int warmup = 2;
  bool memory = true;  // use the cache set's memory of recent answers, when it has one
  // Online updates, feedback and the drift guard (online.h), in step with
  // the trace.  online.feedback: that share of the requests an exit answers
  // keep running to the end, answered by the full model and charged the
  // batch's full-model latency.  online.guard: heads are republished
  // between batches when it switches an exit.  online.sgd: the
  // open learned caches take SGD steps on the pooled features of the
  // requests the full model answered (misses and feedback) toward its
  // labels; thresholds stay as calibrated, the guard watches the result.
  // online.prior: the learned heads are served with their bias corrected
  // for the class mix of the answers given so far, republished every
  // online.prior_every requests; needs caches that carry their label prior.
  // Both untimed, as an update off the request path would be; their time is
  // reported apart.
  OnlineOptions online;
  ProgressFn progress;
};

struct RequestRecord {
  int64_t id = 0;  // position in the trace
  int index = 0;   // item in the data set
  int exit = kFullModel;
  std::string exit_name;  // "stem", "layer1.2", "stem:memory" (the memory at the stem) or "full"
  int label = -1;
  float confidence = 0;
  int full_label = -1, truth = -1;
  double latency_us = 0, full_latency_us = 0;
  double macs = 0;  // multiply-accumulates spent on it: the network up to where it left, and every head it passed
  int feedback_exit = -1;  // the exit that answered it, when it was kept running as feedback (exit is then full)
};

struct ExitStats {
  std::string name;
  bool enabled = false;
  float threshold = 0;
  int64_t hits = 0, hit_agree = 0;
  int64_t feedback = 0, feedback_agree = 0;  // answers kept running to the end, and how many the full model confirmed
  double hit_rate(size_t requests) const { return requests ? double(hits) / double(requests) : 0; }
  double hit_agreement() const { return hits ? double(hit_agree) / double(hits) : 1; }  // 1 with no hits
};

struct ReplayReport {
  std::string trace_kind, data_name, model_arch;
  uint64_t seed = 0;
  int batch = 1;
  std::vector<RequestRecord> requests;
  std::vector<ExitStats> exits;  // parallel to the cache set's exits
  bool has_memory = false;
  ExitStats memory;  // the memory of recent answers, when used (threshold: its squared distance)
  double seconds_caches = 0, seconds_full = 0;
  int warmup_runs = 0;                   // ReplayOptions::warmup
  double seconds_warmup = 0;             // their time, outside the latencies
  std::vector<GuardEvent> guard_events;  // when the drift guard switched exits (GuardEvent::exit: an exit point id)
  double feedback = 0;                   // the share of hits run to the end
  int64_t online_steps = 0;              // SGD steps of the online updates
  bool online_in_backend = false;        // taken in the serving backend, inside the latencies (online.in_backend)
  int64_t prior_updates = 0;             // republications with a new prior correction
  std::vector<double> prior_estimate;    // the served class mix as estimated at the end (when prior)
  std::vector<ExitCache> caches_after;   // the caches as the online updates left them (when online)
  double seconds_updates = 0;            // their time (feature collection and steps), outside the latencies
  bool guard = false;
  std::string kinds;       // the enabled heads' kinds, "linear", "knn+linear"; "none" without any
  double macs_full = 0;    // per request without caches
  size_t cache_bytes = 0;  // the enabled heads' parameters and keys, and the memory's entries

  int64_t hits() const;
  double hit_rate() const;
  double agreement() const;
  double hit_agreement() const;
  double accuracy_caches() const;
  double accuracy_full() const;
  double latency_mean_us(bool caches) const;
  double latency_percentile_us(bool caches, double p) const;
  double speedup_mean() const { return latency_mean_us(false) / latency_mean_us(true); }
  double macs_mean() const;
  // MACs without caches over MACs with them, the caches' own cost included.
  double speedup_compute() const { return macs_full / macs_mean(); }
};

// `test` is raw [0, 1] images; the trace must have been made or loaded for it.
ReplayReport replay_trace(const Engine& engine, const CacheSet& caches, const Dataset& test, const Trace& trace,
                          const ReplayOptions& options = {});

// The report as JSON (what `serve-sim --json` writes), and one JSON line per
// request (`--per-request`).
std::string replay_json(const ReplayReport& r);
std::string replay_per_request_jsonl(const ReplayReport& r);

}  // namespace gati
