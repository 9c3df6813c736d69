// Caches that learn from the traffic they serve: SGD on the learned heads
// toward the full model's answers, and the label-shift prior (label_shift.h)
// following the served class mix.
//
// OnlineState holds what both uses share: the caches as they are now, each
// head's momentum, the mini-batches being gathered and the prior estimate.
// replay_trace (replay.h) drives it in step with a trace; OnlineCaches
// drives it beside a Server:
//
//   gati::OnlineOptions oo;  oo.sgd = true;  oo.prior = true;
//   gati::OnlineCaches online(engine, caches, server, oo);   // publishes its heads to the server
//   server.submit(image, [&, image](const gati::ServeResult* r, std::exception_ptr) {
//     if (r) online.observe(*r, image.data());               // any thread; never waits on a model
//   });
//
// Design decisions (OnlineCaches):
// - The thread that served a request only hands the answer over (a lock and
//   a copy into a bounded queue); a learner thread of its own does the model
//   work: the pooled features of the requests the full model answered (on
//   one session of its own, off the request path, as GATI trains its caches
//   beside serving), the SGD steps (under a lock of their own, so observe()
//   never waits behind them), and the republishing, which uploads the heads
//   with no lock held.  Server::set_exit_heads makes workers take the new
//   heads at their next batch boundary.
// - Bounded: at most queue_capacity images wait; beyond that an image is
//   dropped (counted in stats()), its answer still counts for the prior.
// - A step the SGD guard rejects (weights would turn non-finite) is counted
//   with its reason and its batch discarded; learning goes on.
// - Thresholds stay as calibrated; the drift guard (guard.h) is what
//   watches agreement when heads move.  Its feedback never delays a client:
//   a picked answer is served as it is, and the learner runs the full model
//   on a copy of the request to check it.
// - Lifetime: the destructor never touches the server (it may be gone);
//   close() publishes a last time while it is alive (see close()).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "cache/features.h"
#include "cache/guard.h"
#include "cache/label_shift.h"
#include "cache/learned_cache.h"
#include "engine/server.h"

namespace gati {

struct OnlineOptions {
  // SGD on the open learned heads, one step per sgd_options.batch requests
  // that the full model answered, toward its labels.
  bool sgd = false;
  SgdOptions sgd_options = {1, 32, 0.005f, 0.9f, 5e-4f, 0};
  // replay_trace: take those steps in the serving backend (engine/learner.h:
  // from the features the exits pooled, queued after each batch, on the GPU
  // with a CUDA engine) instead of a separate pass on the host; the same
  // steps, inside the timed runs.  It learns from the full model's own
  // answers only, so it takes no feedback, guard or prior.
  bool in_backend = false;
  // The label-shift correction from every answer, republished every
  // prior_every answers; needs caches that carry their label prior.
  bool prior = false;
  LabelShiftOptions prior_options;
  int prior_every = 32;
  // Feedback: this share of the answers an exit gives (picked by a hash of
  // the answer's position and feedback_seed: feedback_picked) is checked
  // against the full model's, so each exit's agreement is measured while
  // serving.  replay_trace keeps such a request running to the end;
  // OnlineCaches checks it on the learner's session, after its client has
  // the answer.
  double feedback = 0;
  uint64_t feedback_seed = 1;
  // The drift guard (guard.h) over that feedback and over the exits it
  // switched off, scored in shadow on requests whose full answer is known;
  // judged against the cache set's target agreement (guard_options.target
  // is ignored); needs feedback > 0.  The heads it leaves open are
  // republished when it switches one.
  bool guard = false;
  GuardOptions guard_options;
};

// Whether the answer at `position` is one the feedback share checks.
bool feedback_picked(uint64_t position, double share, uint64_t seed);

class OnlineState {
 public:
  // `caches` as built (CacheSet::exits); label_prior: CacheSet::label_prior
  // (needed with prior); target: CacheSet::target_agreement (the guard's).
  OnlineState(std::vector<ExitCache> caches, const std::vector<float>& label_prior, double target,
              const OnlineOptions& options);

  // One answer served (hits included).  True when the prior is due to be
  // republished (every prior_every answers).
  bool observe_answer(int label);
  // A request the full model answered: `features` holds its pooled features
  // at every exit point (row `row` of each), `label` the full model's answer.
  // True when a head took a step.
  bool learn(const CollectedFeatures& features, int row, int label);

  // The drift guard, when options.guard: a feedback-checked answer of
  // `exit` agreed with the full model or not.  True when the guard switched
  // the exit by it.
  bool check(int exit, bool agree);
  // The exits the guard has switched off, scored in shadow on a request the
  // full model answered: features at every exit point (row `row`), its
  // label.  True when the guard switched one.
  bool score_off_exits(const CollectedFeatures& features, int row, int full_label);
  // Some open cache is switched off by the guard (its shadow needs the
  // full model's requests).
  bool any_off() const;
  const std::vector<GuardEvent>& guard_events() const;

  // The heads as served now (the prior's correction applied), for the open
  // caches the guard has not switched off; also updates served().
  std::vector<ExitHeadSpec> head_specs();

  const std::vector<ExitCache>& live() const { return live_; }      // as learned
  const std::vector<ExitCache>& served() const { return served_; }  // as last published
  int64_t steps() const { return steps_; }
  std::vector<double> prior_estimate() const;
  // The pooling of each exit point, for collect_features.
  std::vector<PoolSpec> pools(int exit_points) const;

 private:
  OnlineOptions o_;
  std::vector<ExitCache> live_, served_;
  std::vector<std::vector<float>> velocity_, pending_x_;
  std::vector<std::vector<int>> pending_y_;
  std::optional<LabelShift> shift_;
  std::optional<DriftGuard> guard_;
  int64_t steps_ = 0, answers_ = 0;
};

struct OnlineStats {
  int64_t answers = 0;    // observed
  int64_t learned = 0;    // full-model answers learned from
  int64_t dropped = 0;    // images dropped because the queue was full
  int64_t steps = 0;      // SGD steps
  int64_t publishes = 0;  // heads handed to the server
  int64_t errors = 0;     // learner failures (the last one in last_error()); serving goes on
  int64_t late = 0;       // answers observed after close(), ignored
  int64_t checked = 0;    // exits' answers checked against the full model (feedback)
  int64_t check_agreed = 0;
  int64_t switches = 0;  // exits the drift guard switched off or on
};

class OnlineCaches {
 public:
  // Publishes the caches' heads to `server` at once.
  OnlineCaches(const Engine& engine, const CacheSet& caches, Server& server, const OnlineOptions& options,
               size_t queue_capacity = 1024);
  // Stops the learner without touching the server (which may be gone).
  ~OnlineCaches();
  OnlineCaches(const OnlineCaches&) = delete;
  OnlineCaches& operator=(const OnlineCaches&) = delete;

  // Learns from what is queued, publishes a last time and stops; the server
  // must still be alive.  Lifetime: a callback that calls observe() must not
  // outlive this object.  Destroy the server first (its destructor serves
  // what was queued, callbacks included), or wait for every submitted
  // request's callback, then close() and destroy this.  observe() after
  // close() is counted (stats().late) and ignored.
  void close();

  // An answer the server gave; `image` (the normalised request, the model's
  // input size) is copied when the full model answered and SGD is on, and
  // may be null.  Thread-safe; never waits on model work.
  void observe(const ServeResult& result, const float* image);
  // Returns once everything observed before the call is learned and any
  // heads it moved are published.
  void flush();

  OnlineStats stats() const;
  // The drift guard's switches so far (GuardEvent::exit: an exit point id).
  std::vector<GuardEvent> guard_events() const;
  std::string last_error() const;
  // The caches as learned so far (to save them: CacheSet::save).
  CacheSet caches() const;

 private:
  struct Item {
    int label = -1;
    int check_exit = -1;       // >= 0: an answer of this exit, checked against the full model's
    std::vector<float> image;  // empty: the prior only
  };
  void learn_loop();
  void publish(std::vector<ExitHeadSpec> specs);
  void stop(bool publish_last);

  const Engine& engine_;
  Server& server_;
  const OnlineOptions options_;
  const size_t capacity_;
  CacheSet base_;  // the set as built: its fields besides the exits
  int exit_points_ = 0;
  mutable std::mutex mutex_;  // the queue, the counts, the stats
  std::condition_variable wake_, done_;
  std::vector<Item> queue_;
  size_t queued_images_ = 0;
  int64_t enqueued_ = 0, processed_ = 0;
  std::atomic<int64_t> positions_{0};  // answers seen, for feedback_picked
  std::atomic<bool> any_off_{false};   // the guard has an exit off: full-model answers feed its shadow
  bool stopping_ = false, publish_last_ = false;
  mutable std::mutex state_mutex_;  // state_: the learner writes it, caches() reads it
  OnlineState state_;
  OnlineStats stats_;
  std::string last_error_;
  std::thread learner_;
};

}  // namespace gati
