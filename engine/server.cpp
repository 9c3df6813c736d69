// The batching server; see server.h.
#include "engine/server.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "weights/common/checked.h"

namespace gati {
namespace {

// The worker whose callbacks are running on this thread, if any.
thread_local void* tls_worker_of_server = nullptr;

void add_learning(LearnerStats& to, const LearnerStats& from) {
  to.learned += from.learned;
  to.steps += from.steps;
  to.rejected += from.rejected;
  if (!from.last_rejection.empty()) to.last_rejection = from.last_rejection;
  if (from.steps > 0) to.last_loss = from.last_loss;
}

}  // namespace

Server::Server(const Engine& engine, const ServerOptions& options, std::shared_ptr<const ExitHeads> heads)
    : arch_(engine.arch()), options_(options), heads_(std::move(heads)) {
  if (options_.workers < 1 || options_.workers > 256) fail("server: workers = ", options_.workers, " (valid: 1..256)");
  if (options_.max_batch < 1 || options_.max_batch > 65536)
    fail("server: max_batch = ", options_.max_batch, " (valid: 1..65536)");
  if (options_.max_wait_us < 0) fail("server: max_wait_us = ", options_.max_wait_us, " must be >= 0");
  if (options_.max_queue < 1) fail("server: max_queue must be at least 1");
  if (options_.threads_per_worker < 0) fail("server: threads_per_worker must be >= 0");
  int threads = options_.threads_per_worker;
  if (threads == 0) threads = std::max(1, int(std::thread::hardware_concurrency()) / options_.workers);
  if (options_.learn) check_learner_options(options_.learner);
  if (options_.learn && heads_) check_learnable(heads_->specs());
  SessionOptions so;
  so.threads = threads;
  so.max_plans = 1;
  for (int i = 0; i < options_.workers; ++i) {
    auto w = std::make_unique<Worker>();
    w->server = this;
    w->session = std::make_unique<Session>(engine.session(so));
    workers_.push_back(std::move(w));
  }
  for (auto& w : workers_) w->thread = std::thread([this, wp = w.get()] { worker_loop(*wp); });
}

Server::~Server() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  has_work_.notify_all();
  has_room_.notify_all();
  for (auto& w : workers_)
    if (w->thread.joinable()) w->thread.join();
}

void Server::check_image(const std::vector<float>& image) const {
  const size_t want = size_t(arch_.in_channels) * size_t(arch_.input_h) * size_t(arch_.input_w);
  if (image.size() != want)
    fail("server: image has ", image.size(), " values, the model takes ", arch_.in_channels, "x", arch_.input_h, "x",
         arch_.input_w, " = ", want);
  const size_t i = first_non_finite(image.data(), image.size());
  if (i < image.size()) fail("server: image value ", i, " is ", image[i], "; inputs must be finite");
}

std::future<ServeResult> Server::submit(std::vector<float> image) {
  Pending p;
  p.image = std::move(image);
  std::future<ServeResult> f = p.promise.get_future();
  enqueue(std::move(p));
  return f;
}

void Server::submit(std::vector<float> image, Callback done) {
  if (!done) fail("server: submit with an empty callback");
  Pending p;
  p.image = std::move(image);
  p.callback = std::move(done);
  enqueue(std::move(p));
}

void Server::enqueue(Pending p) {
  check_image(p.image);
  p.submitted = std::chrono::steady_clock::now();
  // From inside one of our own callbacks: serve now on that worker (its
  // session is idle while callbacks run), so waiting cannot deadlock.
  for (auto& w : workers_)
    if (tls_worker_of_server == w.get()) {
      std::vector<Pending> one;
      one.push_back(std::move(p));
      inline_++;
      std::shared_ptr<const ExitHeads> heads;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        heads = heads_;
      }
      serve(*w, one, heads);
      return;
    }
  std::unique_lock<std::mutex> lock(mutex_);
  has_room_.wait(lock, [&] { return stopping_ || queue_.size() < options_.max_queue; });
  if (stopping_) fail("server: shutting down, request not accepted");
  queue_.push_back(std::move(p));
  lock.unlock();
  has_work_.notify_one();
}

void Server::set_exit_heads(std::shared_ptr<const ExitHeads> heads) {
  if (options_.learn && heads) check_learnable(heads->specs());
  std::lock_guard<std::mutex> lock(mutex_);
  heads_ = std::move(heads);
}

ServerStats Server::stats() const {
  ServerStats s;
  s.requests = requests_.load();
  s.batches = batches_.load();
  s.inline_requests = inline_.load();
  s.failed = failed_.load();
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& w : workers_) {
    add_learning(s.learning, w->retired);
    add_learning(s.learning, w->learned);
  }
  return s;
}

void Server::worker_loop(Worker& w) {
  const auto max_wait = std::chrono::microseconds(options_.max_wait_us);
  std::vector<Pending> batch;
  for (;;) {
    std::shared_ptr<const ExitHeads> heads;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      has_work_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to serve
      const auto deadline = queue_.front().submitted + max_wait;
      while (!stopping_ && queue_.size() < size_t(options_.max_batch) &&
             has_work_.wait_until(lock, deadline) != std::cv_status::timeout) {
      }
      if (queue_.empty()) continue;  // another worker took them
      const size_t take = std::min(queue_.size(), size_t(options_.max_batch));
      batch.clear();
      for (size_t i = 0; i < take; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      heads = heads_;  // the version this whole batch uses
    }
    has_room_.notify_all();
    serve(w, batch, heads);
  }
}

void Server::serve(Worker& w, std::vector<Pending>& batch, const std::shared_ptr<const ExitHeads>& heads) {
  const int n = int(batch.size());
  const size_t per = batch[0].image.size();
  const int classes = arch_.num_classes;
  std::vector<float> x(per * size_t(n)), logits(size_t(n) * size_t(classes));
  for (int i = 0; i < n; ++i)
    std::memcpy(x.data() + size_t(i) * per, batch[size_t(i)].image.data(), per * sizeof(float));
  std::vector<SampleResult> results(static_cast<size_t>(n));
  std::exception_ptr error;
  try {
    RunOptions opts;
    opts.heads = heads.get();
    if (options_.learn && heads) {
      if (w.learner && w.learner_of != heads->id()) {  // new heads: learn from them
        const LearnerStats last = w.learner->stats();  // with the steps its last batch queued
        w.learner.reset();
        std::lock_guard<std::mutex> lock(mutex_);
        add_learning(w.retired, last);
        w.learned = {};
      }
      if (!w.learner) {
        w.learner = w.session->make_learner(heads->specs(), options_.learner);
        w.learner_of = heads->id();
      }
      opts.heads = nullptr;
      opts.learner = w.learner.get();
    }
    w.session->run(x.data(), n, arch_.in_channels, arch_.input_h, arch_.input_w, results.data(), logits.data(), opts);
    if (opts.learner) {
      std::lock_guard<std::mutex> lock(mutex_);
      w.learned = w.learner->stats_so_far();
    }
  } catch (...) {
    error = std::current_exception();
  }
  batches_++;
  requests_ += n;
  if (error) failed_ += n;
  const auto now = std::chrono::steady_clock::now();
  void* saved = tls_worker_of_server;
  tls_worker_of_server = &w;
  for (int i = 0; i < n; ++i) {
    Pending& p = batch[size_t(i)];
    if (error) {
      if (p.callback)
        p.callback(nullptr, error);
      else
        p.promise.set_exception(error);
      continue;
    }
    ServeResult r;
    r.result = results[size_t(i)];
    if (r.result.exit == kFullModel)
      r.logits.assign(logits.begin() + long(size_t(i) * size_t(classes)),
                      logits.begin() + long(size_t(i + 1) * size_t(classes)));
    r.latency_us = std::chrono::duration<double, std::micro>(now - p.submitted).count();
    r.batch_size = n;
    if (p.callback) {
      try {
        p.callback(&r, nullptr);
      } catch (...) {
        // A callback's own failure must not take down the worker or the
        // other requests of its batch.
      }
    } else {
      p.promise.set_value(std::move(r));
    }
  }
  tls_worker_of_server = saved;
}

}  // namespace gati
