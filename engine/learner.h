// Cache models that learn where they run: the learned linear heads take SGD
// steps in the session's backend context (on the GPU, in its stream) from
// the requests the full model answered, without the pooled features or the
// weights ever leaving backend memory.
//
//   gati::Session s = engine.session();
//   std::unique_ptr<gati::HeadLearner> learner = s.make_learner(cache_set.head_specs(), {});
//   gati::RunOptions opts;
//   opts.learner = learner.get();       // its heads answer, and learn from the full model's answers
//   s.run(images, n, c, h, w, results.data(), nullptr, opts);
//   learner->stats();                   // steps, rejections, the last loss (waits)
//
// How a run feeds it: each learning head's exit writes its pooled features
// into the learner's buffer for that head (rows in the order the exit saw
// them) instead of a shared scratch.  After the run, the host knows from the
// answers which samples the full model answered and which row each had at
// every exit (survivors keep their order), so it queues, per head, the
// gathering of those rows into the head's next SGD batch (the row list
// travels by value), a step whenever a batch is full, and one publication
// after the head's last step; then run() returns without waiting for them.
//
// Design decisions:
// - Double buffer: the steps update the live weights (floats, with their
//   momentum); runs read the served copy, which only publish_linear writes.
//   Everything is queued in the context's order (one CUDA stream), after the
//   run that supplied the answers and before the next run, so a run reads
//   the weights published at a batch boundary, never half-updated ones.
// - Served weights are the live ones rounded to halves (as built caches and
//   the host's online updates serve them), kept as halves where the backend
//   reads halves; so a step that would take a weight beyond the largest half
//   is refused like a non-finite one (hyper.max_weight is capped there).
// - A refused step is reported, not thrown (device code cannot throw): its
//   batch is dropped, the weights stay, learning goes on; stats() counts it.
// - The same answers in the same order give the same steps as OnlineState's
//   host path (cache/online.h), bit for bit on the CPU backend.
// - Per session: a service with several workers has one learner per worker,
//   each learning from its own traffic.
// - Linear heads only: a head with a hidden layer (GATI's MLP) is served as
//   it was built (the host's online updates, cache/online.h, train it).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace gati {

struct LearnerOptions {
  int batch = 32;                       // full-model answers per SGD step of a head
  SgdHyper hyper{0.005f, 0.9f, 5e-4f};  // max_weight is capped at the largest half
};

struct LearnerStats {
  int64_t learned = 0;         // full-model answers taken (each feeds every learning head)
  int64_t steps = 0;           // SGD steps committed, over all heads
  int64_t rejected = 0;        // steps refused (their batches dropped)
  double last_loss = 0;        // mean loss of the last committed step's batch, before the step
  std::string last_rejection;  // why the last refused step was refused
};

// Throws unless the options are in range (batch 1 to 65536; lr finite and
// > 0; momentum in [0, 1); weight decay finite and >= 0; max_weight > 0).
void check_learner_options(const LearnerOptions& options);
// Throws unless every linear head's weights lie within the largest half
// (65504), as a learning head's must: it is served as halves.
void check_learnable(const std::vector<ExitHeadSpec>& specs);

class HeadLearner {
 public:
  // Allocates from ctx (which must outlive it) and uploads `specs` through
  // `device` (checked by the caller: Session::make_learner).  The linear
  // heads learn; distance heads answer as given.  Throws when a linear
  // head's weight lies beyond the largest half, or options are out of range.
  HeadLearner(BackendContext& ctx, const BackendDevice& device, std::vector<ExitHeadSpec> specs,
              const LearnerOptions& options);
  ~HeadLearner();  // waits for the context: nothing queued reads freed memory
  HeadLearner(const HeadLearner&) = delete;
  HeadLearner& operator=(const HeadLearner&) = delete;

  bool belongs_to(const BackendContext& ctx) const { return &ctx == &ctx_; }
  const LearnerOptions& options() const { return options_; }

  // The heads a run reads (RunOptions::learner): the linear ones from the
  // served copy.  Its id changes when reserve() grows the features.
  const ExitHeads& heads() const;
  // Features for runs of up to `rows` samples (a run calls it before it
  // records anything: growing moves the buffers).
  void reserve(int rows);
  // Where head `head`'s exit writes its pooled features [rows, dim] in a
  // run; null for a head that does not learn.
  float* features(int head);
  // After a run of n samples whose answers `st` holds (the host reads them):
  // queues the full-model answers into every learning head's batch, a step
  // per full batch and a publication per head that stepped; does not wait.
  void learn(const ExitState& st, int n);

  // Waits for the context, then: the counts so far.
  LearnerStats stats();
  // Without waiting: the counts as of the last run's end (the steps that run
  // queued are counted after the next run, or by stats()).
  const LearnerStats& stats_so_far() const { return stats_; }
  // Waits, then: the specs with every linear head's live weights (the
  // learned floats, before rounding), to save or to compare.
  std::vector<ExitHeadSpec> specs();

 private:
  class Heads;
  struct Head;
  void harvest();  // reads the reports of the steps queued so far (the context is idle)
  void step(Head& h);
  void publish(Head& h);  // live weights into the served copy, queued

  BackendContext& ctx_;
  LearnerOptions options_;
  std::shared_ptr<const ExitHeads> base_;  // the specs with rounded weights, as the backend keeps them
  std::vector<Head> heads_;                // per spec (a non-learning head's entry is empty)
  std::unique_ptr<Heads> view_;
  int rows_ = 0;
  LearnerStats stats_;
};

}  // namespace gati
