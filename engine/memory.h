// A memory of recent full-model answers at one exit point: requests that
// nearly repeat a recent one (temporal locality: video frames, retries, a
// user browsing one item) are answered from it after the stem, before any
// cache model.
//
//   gati::Session s = engine.session();
//   std::unique_ptr<gati::AnswerMemory> memory = s.make_memory(spec);  // this session's, mutated by its runs
//   opts.memory = memory.get();
//
// Design decision: only answers the full model itself gave, with confidence
// >= min_confidence, are ever stored, so a memory hit repeats an answer the
// full model gave for a near-identical input; entries are replaced
// round-robin (the most recent `capacity` answers).  The memory is per
// session (its storage lives in the session's backend context and each run
// updates it in the same stream, after the run's answers are known), so it
// needs no lock; a service with several workers has one memory per worker.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace gati {

struct Network;

struct MemorySpec {
  int exit = 0;                      // exit point id (engine/plan.h); 0 = the stem
  std::string name;                  // its name, "stem"
  PoolSpec pool;                     // how the output there becomes the key
  int dim = 0;                       // pool.features(channels)
  int capacity = 1024;               // entries
  std::vector<float> mean, inv_std;  // [dim] standardisation of the keys
  float threshold = -1.f;            // squared distance within which the nearest entry answers; < 0 never
  float min_confidence = 0.99f;      // the full model's confidence an answer needs to be stored
};

// Throws unless `spec` fits `net` (exit point, dim, sizes, finite values,
// capacity 1 to 1<<20); names the memory in the message.  Fills spec.name.
void check_memory_spec(MemorySpec& spec, const Network& net);

// The memory's storage in one backend context.
class AnswerMemory {
 public:
  // Allocates from ctx (which must outlive it); spec checked by the caller
  // (Session::make_memory).  Starts empty.
  AnswerMemory(BackendContext& ctx, MemorySpec spec);
  const MemorySpec& spec() const { return spec_; }
  bool belongs_to(const BackendContext& ctx) const { return &ctx == &ctx_; }
  // The view a run of up to `max_batch` samples uses (grows the pending
  // features on first need).
  MemoryView view(int max_batch);
  // Entries in use; waits for the context.
  int entries();
  // Forgets every entry.
  void clear();

 private:
  BackendContext& ctx_;
  MemorySpec spec_;
  std::unique_ptr<Buffer> params_, keys_, labels_, confidence_, fill_, pending_;
  int pending_rows_ = 0;
};

}  // namespace gati
