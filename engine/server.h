// A serving front end: many client threads submit single images, worker
// threads form batches dynamically and run them with per-sample exits.
//
//   gati::ServerOptions so;                                  // workers, max_batch, max_wait_us, ...
//   gati::Server server(engine, so, heads);
//   std::future<gati::ServeResult> f = server.submit(image);   // from any thread
//   gati::ServeResult r = f.get();                              // exit, label, confidence, logits
//
// Design decisions:
// - Each worker owns a Session (backend context, arena, plans), so workers
//   never share scratch memory; the Engine and the exit heads are shared and
//   immutable.  set_exit_heads() publishes a new version that each worker
//   picks up at its next batch boundary, so no batch mixes two versions.
// - A batch forms when max_batch requests wait, or when the oldest has waited
//   max_wait_us.  Memory is bounded: only images of the model's input size
//   are accepted, and submit() blocks while max_queue requests wait.
// - Callbacks run on the worker thread after its batch is done.  A callback
//   (or anything it calls) that submits to the same server is served at once
//   on that worker, without queueing, so waiting on its result cannot
//   deadlock the server, even with one worker.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/engine.h"

namespace gati {

struct ServerOptions {
  int workers = 1;
  int max_batch = 8;
  int max_wait_us = 200;       // how long the oldest waiting request may wait for company
  size_t max_queue = 4096;     // submit() blocks while this many requests wait
  int threads_per_worker = 0;  // CPU threads per worker; 0 = cores / workers
  // The learned heads learn where they run (engine/learner.h): each worker
  // keeps a learner made from the heads in use, which takes SGD steps in
  // its backend from the full model's answers it serves, queued after each
  // batch (on CUDA the answers go out while the GPU steps; the CPU backend
  // steps before they do).  Workers learn apart, each from its own
  // traffic; set_exit_heads starts them over from the new heads.
  bool learn = false;
  LearnerOptions learner;
};

struct ServeResult {
  SampleResult result;
  std::vector<float> logits;  // [classes] when the full model answered, empty when the sample exited early
  double latency_us = 0;      // submit to answer
  int batch_size = 0;         // samples in the batch that served it
};

struct ServerStats {
  int64_t requests = 0, batches = 0, inline_requests = 0, failed = 0;
  // With ServerOptions::learn, summed over the workers and every learner
  // they made, as of each worker's last batch (HeadLearner::stats_so_far).
  LearnerStats learning;
  double mean_batch() const { return batches ? double(requests - inline_requests) / double(batches) : 0.0; }
};

class Server {
 public:
  using Callback = std::function<void(const ServeResult* result, std::exception_ptr error)>;

  Server(const Engine& engine, const ServerOptions& options = {}, std::shared_ptr<const ExitHeads> heads = nullptr);
  // Stops accepting, serves everything already submitted, joins the workers.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // `image` is one normalised sample, NCHW without the batch dimension, at
  // the model's input size.  Throws (on the caller's thread) on a wrong size,
  // a non-finite value, or a server that is shutting down.
  std::future<ServeResult> submit(std::vector<float> image);
  // Exactly one of result / error is non-null when `done` is called.
  void submit(std::vector<float> image, Callback done);

  void set_exit_heads(std::shared_ptr<const ExitHeads> heads);
  ServerStats stats() const;

 private:
  struct Pending {
    std::vector<float> image;
    std::promise<ServeResult> promise;
    Callback callback;  // used instead of the promise when set
    std::chrono::steady_clock::time_point submitted;
  };
  struct Worker {
    Server* server = nullptr;
    std::unique_ptr<Session> session;
    std::thread thread;
    std::unique_ptr<HeadLearner> learner;  // with options.learn: made from the heads with id learner_of
    uint64_t learner_of = 0;
    LearnerStats learned, retired;  // the current learner's counts, and its predecessors' (under mutex_)
  };

  void enqueue(Pending p);
  void worker_loop(Worker& w);
  void serve(Worker& w, std::vector<Pending>& batch, const std::shared_ptr<const ExitHeads>& heads);
  void check_image(const std::vector<float>& image) const;

  Arch arch_;
  ServerOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable has_work_, has_room_;
  std::deque<Pending> queue_;
  std::shared_ptr<const ExitHeads> heads_;
  bool stopping_ = false;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<int64_t> requests_{0}, batches_{0}, inline_{0}, failed_{0};
};

}  // namespace gati
