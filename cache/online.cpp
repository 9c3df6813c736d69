// Caches that learn from the traffic they serve; see online.h.
#include "cache/online.h"

#include <algorithm>
#include <utility>

#include "weights/common/error.h"

namespace gati {

bool feedback_picked(uint64_t position, double share, uint64_t seed) {
  uint64_t z = position * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53 < share;
}

OnlineState::OnlineState(std::vector<ExitCache> caches, const std::vector<float>& label_prior, double target,
                         const OnlineOptions& options)
    : o_(options),
      live_(std::move(caches)),
      served_(live_),
      velocity_(live_.size()),
      pending_x_(live_.size()),
      pending_y_(live_.size()) {
  if (o_.sgd && o_.sgd_options.batch < 1)
    fail("online: the SGD batch must be at least 1 request, got ", o_.sgd_options.batch);
  if (o_.sgd && o_.sgd_options.distill_alpha > 0)
    fail("online: distillation (distill_alpha ", o_.sgd_options.distill_alpha,
         ") is for offline training; online steps learn from the full model's labels");
  if (o_.prior) {
    if (o_.prior_every < 1) fail("online: prior_every must be at least 1 request, got ", o_.prior_every);
    shift_.emplace(label_prior, o_.prior_options);
  }
  if (!(o_.feedback >= 0 && o_.feedback <= 1)) fail("online: feedback ", o_.feedback, " must be in [0, 1]");
  if (o_.guard) {
    if (o_.feedback <= 0) fail("online: the drift guard needs feedback (a share > 0 of the exits' answers checked)");
    GuardOptions g = o_.guard_options;
    g.target = target;
    int exits = 0;
    for (const ExitCache& c : live_) exits = std::max(exits, c.exit + 1);
    guard_.emplace(exits, g);
  }
}

bool OnlineState::check(int exit, bool agree) { return guard_ && guard_->observe(exit, agree); }

bool OnlineState::score_off_exits(const CollectedFeatures& features, int row, int full_label) {
  if (!guard_) return false;
  bool switched = false;
  for (size_t e = 0; e < live_.size(); ++e) {
    const ExitCache& c = live_[e];
    if (!c.enabled() || guard_->enabled(c.exit)) continue;
    const size_t at = size_t(c.exit);
    if (at >= features.per_exit.size() || features.dims[at] != c.dim ||
        size_t(row + 1) * size_t(c.dim) > features.per_exit[at].size())
      fail("online: no features for request ", row, " at exit '", c.name, "' (dim ", c.dim, ")");
    float conf = 0;
    const int label = served_[e].predict(features.per_exit[at].data() + size_t(row) * size_t(c.dim), &conf);
    if (conf >= c.threshold) switched |= guard_->observe(c.exit, label == full_label);
  }
  return switched;
}

bool OnlineState::any_off() const {
  if (!guard_) return false;
  for (const ExitCache& c : live_)
    if (c.enabled() && !guard_->enabled(c.exit)) return true;
  return false;
}

const std::vector<GuardEvent>& OnlineState::guard_events() const {
  static const std::vector<GuardEvent> none;
  return guard_ ? guard_->events() : none;
}

bool OnlineState::observe_answer(int label) {
  if (!shift_) return false;
  shift_->observe(label);
  return ++answers_ % o_.prior_every == 0;
}

bool OnlineState::learn(const CollectedFeatures& features, int row, int label) {
  if (!o_.sgd) return false;
  bool stepped = false;
  for (size_t e = 0; e < live_.size(); ++e) {
    ExitCache& c = live_[e];
    if (c.kind != HeadKind::kLinear || !c.enabled()) continue;  // learned heads, linear or MLP (sgd_step)
    const size_t at = size_t(c.exit);
    if (at >= features.per_exit.size() || features.dims[at] != c.dim)
      fail("online: the features collected at exit '", c.name, "' do not match its cache (dim ", c.dim, ")");
    if (row < 0 || size_t(row + 1) * size_t(c.dim) > features.per_exit[at].size())
      fail("online: no features for request ", row, " at exit '", c.name, "'");
    const float* feat = features.per_exit[at].data() + size_t(row) * size_t(c.dim);
    pending_x_[e].insert(pending_x_[e].end(), feat, feat + c.dim);
    pending_y_[e].push_back(label);
    if (int(pending_y_[e].size()) >= o_.sgd_options.batch) {
      // Taken out first: a rejected step (sgd_step throws, weights
      // unchanged) must not leave a batch behind that never steps again.
      const std::vector<float> x = std::move(pending_x_[e]);
      const std::vector<int> y = std::move(pending_y_[e]);
      pending_x_[e].clear();
      pending_y_[e].clear();
      sgd_step(c, x.data(), y.data(), int(y.size()), o_.sgd_options, velocity_[e]);
      ++steps_;
      stepped = true;
    }
  }
  return stepped;
}

std::vector<ExitHeadSpec> OnlineState::head_specs() {
  std::vector<ExitHeadSpec> specs;
  for (size_t e = 0; e < live_.size(); ++e) {
    if (!live_[e].enabled()) continue;  // closed: never served, never scored
    served_[e] = shift_ ? shift_->adapt(live_[e]) : live_[e];
    // Served rounded as built caches are (the steps go on from the float
    // weights, which keep updates smaller than a rounding step).
    round_weights_for_serving(served_[e]);
    if (!guard_ || guard_->enabled(live_[e].exit)) specs.push_back(served_[e].head_spec());
  }
  return specs;
}

std::vector<double> OnlineState::prior_estimate() const { return shift_ ? shift_->estimate() : std::vector<double>{}; }

std::vector<PoolSpec> OnlineState::pools(int exit_points) const {
  std::vector<PoolSpec> out(size_t(std::max(exit_points, 0)));
  for (const ExitCache& c : live_)
    if (c.exit >= 0 && c.exit < exit_points) out[size_t(c.exit)] = c.pool;
  return out;
}

// ---- beside a Server ---------------------------------------------------------------

OnlineCaches::OnlineCaches(const Engine& engine, const CacheSet& caches, Server& server, const OnlineOptions& options,
                           size_t queue_capacity)
    : engine_(engine),
      server_(server),
      options_(options),
      capacity_(queue_capacity),
      base_(caches),
      exit_points_(int(exit_points(engine.model().net).size())),
      state_(caches.exits, caches.label_prior, caches.target_agreement, options) {
  if (!caches.model_fingerprint.empty() && caches.model_fingerprint != fingerprint(engine.model()))
    fail("online: the caches were built for other weights of ", caches.model_arch, " than the engine's model");
  publish(state_.head_specs());  // checks the heads against the model before anything is served with them
  learner_ = std::thread([this] { learn_loop(); });
}

OnlineCaches::~OnlineCaches() { stop(false); }

void OnlineCaches::close() { stop(true); }

void OnlineCaches::stop(bool publish_last) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
    publish_last_ = publish_last;
  }
  wake_.notify_all();
  learner_.join();
}

void OnlineCaches::observe(const ServeResult& result, const float* image) {
  Item item;
  item.label = result.result.label;
  const Arch& a = engine_.arch();
  const size_t per = size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w);
  const bool full = result.result.exit == kFullModel, by_exit = result.result.exit >= 0 && !result.result.from_memory;
  const int64_t position = positions_++;
  const bool shadow = any_off_;
  // The full model's requests teach SGD and feed the shadow of exits the
  // guard switched off; a feedback pick of an exit's answer is checked.
  if (by_exit && options_.guard && feedback_picked(uint64_t(position), options_.feedback, options_.feedback_seed))
    item.check_exit = result.result.exit;
  const bool wanted = image && (item.check_exit >= 0 || (full && (options_.sgd || shadow)));
  if (wanted) item.image.assign(image, image + per);  // copied before the lock
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {  // a callback still running after close(): nothing to learn with any more
      ++stats_.late;
      return;
    }
    ++stats_.answers;
    if (wanted && queued_images_ >= capacity_) {
      ++stats_.dropped;
      item.image.clear();
      item.check_exit = -1;
    }
    if (!item.image.empty()) ++queued_images_;
    queue_.push_back(std::move(item));
    ++enqueued_;
  }
  wake_.notify_one();
}

void OnlineCaches::flush() {
  std::unique_lock<std::mutex> lock(mutex_);
  const int64_t upto = enqueued_;  // what was observed before this call, not what comes after
  done_.wait(lock, [&] { return processed_ >= upto || stopping_; });
}

OnlineStats OnlineCaches::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

std::vector<GuardEvent> OnlineCaches::guard_events() const {
  std::lock_guard<std::mutex> lock(state_mutex_);
  return state_.guard_events();
}

std::string OnlineCaches::last_error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return last_error_;
}

CacheSet OnlineCaches::caches() const {
  std::lock_guard<std::mutex> lock(state_mutex_);
  CacheSet set = base_;
  set.exits = state_.live();
  return set;
}

// Called by the constructor and the learner only, never with mutex_ held:
// uploading the heads is device work that observe() must not wait behind.
void OnlineCaches::publish(std::vector<ExitHeadSpec> specs) {
  server_.set_exit_heads(engine_.make_exit_heads(std::move(specs)));
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.publishes;
}

void OnlineCaches::learn_loop() {
  const std::vector<PoolSpec> pools = state_.pools(exit_points_);  // fixed: learning moves weights only
  std::unique_ptr<Session> session;  // one for the learner's life: its plans and scratch are reused
  auto note = [this](const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.errors;
    last_error_ = what;
  };
  for (;;) {
    std::vector<Item> items;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping, and nothing left to learn from
      items.swap(queue_);
      queued_images_ = 0;
    }
    // The model work, without the lock: every queued image's pooled features.
    bool due = false;
    std::vector<ExitHeadSpec> specs;
    try {
      std::vector<float> x;
      int n = 0;
      for (const Item& it : items)
        if (!it.image.empty()) {
          x.insert(x.end(), it.image.begin(), it.image.end());
          ++n;
        }
      CollectedFeatures f;
      if (n > 0) {
        if (!session) session = std::make_unique<Session>(engine_.session());
        f = collect_features(*session, x.data(), n, std::min(n, 64), pools);
      }
      // The SGD steps under the state's own lock, not the queue's:
      // observe() never waits behind them.
      int64_t learned = 0, steps = 0, checked = 0, agreed = 0;
      size_t switches = 0;
      bool any_off = false;
      std::string rejected;
      {
        std::lock_guard<std::mutex> lock(state_mutex_);
        int row = 0;
        for (const Item& it : items) {
          due |= state_.observe_answer(it.label);
          if (it.image.empty()) continue;
          const int full_label = f.full_labels.at(size_t(row));
          if (it.check_exit >= 0) {
            ++checked;
            agreed += it.label == full_label;
            due |= state_.check(it.check_exit, it.label == full_label);
          }
          due |= state_.score_off_exits(f, row, full_label);
          if (options_.sgd) {
            try {
              due |= state_.learn(f, row, full_label);
              ++learned;
            } catch (const Error& e) {  // a rejected step: the rest of the batch still counts
              rejected = e.what();
            }
          }
          ++row;
        }
        steps = state_.steps();
        switches = state_.guard_events().size();
        any_off = state_.any_off();
        if (due) specs = state_.head_specs();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.learned += learned;
      stats_.steps = steps;
      stats_.checked += checked;
      stats_.check_agreed += agreed;
      stats_.switches = int64_t(switches);
      any_off_ = any_off;
      if (!rejected.empty()) {
        ++stats_.errors;
        last_error_ = rejected;
      }
    } catch (const std::exception& e) {
      note(e.what());
    } catch (...) {
      note("online: unknown error in the learner");
    }
    if (due) {
      try {
        publish(std::move(specs));
      } catch (const std::exception& e) {
        note(e.what());
      }
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      processed_ += int64_t(items.size());
    }
    done_.notify_all();
  }
  // close(): the last answers' prior, while the server is still there.
  bool last = false;
  std::vector<ExitHeadSpec> specs;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    last = publish_last_;
  }
  if (last) {
    std::lock_guard<std::mutex> lock(state_mutex_);
    specs = state_.head_specs();
  }
  if (last) {
    try {
      publish(std::move(specs));
    } catch (const std::exception& e) {
      note(e.what());
    }
  }
  done_.notify_all();
}

}  // namespace gati
