// Engine (shared) and Session (per worker); see engine.h.
#include "engine/engine.h"

#include <algorithm>

#include "weights/common/checked.h"

namespace gati {
namespace {

void check_input_shape(const Arch& a, const float* x, int n, int c, int h, int w) {
  if (n < 1) fail("input: empty batch (n = ", n, ")");
  if (c != a.in_channels) fail("input: ", c, " channels, but model '", a.name, "' takes ", a.in_channels);
  if (h < 1 || w < 1) fail("input: empty image ", h, "x", w);
  if (!x) fail("input: null data");
}

// The batch a plan for n rows is made for: powers of two from `from`, so a
// stream of rising batch sizes re-plans rarely.
int plan_capacity(int from, int n) {
  int cap = std::max(from, 1);
  while (cap < n) cap = cap > (1 << 29) ? n : cap * 2;
  return cap;
}

void check_plan_fits(const Plan& plan, int n, const SessionOptions& options) {
  const size_t bytes = plan.arena_floats * sizeof(float) + plan.exit_state.bytes;
  if (bytes > options.max_arena_bytes)
    fail("run: batch ", n, " at ", plan.input.h, "x", plan.input.w, " needs ", bytes >> 20,
         " MiB of activations, over the session's limit of ", options.max_arena_bytes >> 20,
         " MiB (SessionOptions::max_arena_bytes)");
}

// Reads every value: call only once the size is known to be sane (a plan
// for it exists), never on an absurd h x w.
void check_input_values(const float* x, int n, int c, int h, int w) {
  const size_t total =
      mul_size(mul_size(size_t(n), size_t(c), "input"), mul_size(size_t(h), size_t(w), "input"), "input");
  const size_t i = first_non_finite(x, total);
  if (i < total) non_finite_input(i, x[i], Act{n, h, w, c});
}

}  // namespace

// Sessions for the thread-safe conveniences: borrowed per call, returned
// after; a call that finds none idle makes a new one, so a hook that calls
// back into the engine gets its own session instead of waiting for its caller.
class Engine::SessionPool {
 public:
  explicit SessionPool(size_t keep) : keep_(keep) {}
  std::unique_ptr<Session> take(const Engine& e) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!idle_.empty()) {
        std::unique_ptr<Session> s = std::move(idle_.back());
        idle_.pop_back();
        return s;
      }
    }
    return std::unique_ptr<Session>(new Session(e, SessionOptions{}));
  }
  void give_back(std::unique_ptr<Session> s) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (idle_.size() < keep_) idle_.push_back(std::move(s));
  }

 private:
  size_t keep_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Session>> idle_;
};

Engine::Engine(const std::string& model_path, const EngineOptions& options) : Engine(load_model(model_path), options) {}

Engine::Engine(Model model, const EngineOptions& options)
    : model_(std::make_shared<const Model>(std::move(model))),
      device_(make_backend_device(options.device, *model_, options.tf32, options.fp16)),
      options_(options),
      pool_(std::make_unique<SessionPool>(4)) {
  if (options.threads < 0) fail("engine: threads must be >= 0 (0 = all cores), got ", options.threads);
}

Engine::~Engine() = default;

namespace {

// Each head against the model: its exit point, name, pooling and classes.
void check_heads_fit(std::vector<ExitHeadSpec>& specs, const Model& model) {
  const std::vector<ExitPointInfo> points = exit_points(model.net);
  for (ExitHeadSpec& s : specs) {
    if (s.exit < 0 || s.exit >= int(points.size()))
      fail("exit head '", s.name, "': exit ", s.exit, " is not one of the model's ", points.size(),
           " exit points (the stem and ", points.size() - 1, " blocks)");
    const ExitPointInfo& p = points[size_t(s.exit)];
    if (!s.name.empty() && s.name != p.name)
      fail("exit head '", s.name, "': exit ", s.exit, " of the model is '", p.name, "'");
    s.name = p.name;
    if (s.pool.grid < 1 || s.pool.grid > kMaxPoolGrid)
      fail("exit head '", p.name, "': pool grid ", s.pool.grid, " is not in [1, ", kMaxPoolGrid, "]");
    check_pool_fits("exit head '" + p.name + "'", s.dim, s.pool, p.channels);
    if (s.classes != model.arch().num_classes)
      fail("exit head '", p.name, "': ", s.classes, " classes, the model has ", model.arch().num_classes);
  }
  // Sizes, values and a distance head's entries are checked once, by the
  // backend's ExitHeads (check_head_spec), before anything is uploaded.
}

}  // namespace

std::shared_ptr<const ExitHeads> Engine::make_exit_heads(std::vector<ExitHeadSpec> specs) const {
  check_heads_fit(specs, *model_);
  return device_->upload_exit_heads(std::move(specs));
}

Session Engine::session(const SessionOptions& options) const { return Session(*this, options); }

std::vector<float> Engine::infer(const float* input, int n, int c, int h, int w) const {
  return profile(input, n, c, h, w, nullptr);
}

std::vector<float> Engine::profile(const float* input, int n, int c, int h, int w,
                                   std::vector<LayerTiming>* timings) const {
  std::unique_ptr<Session> s = pool_->take(*this);
  RunOptions opts;
  opts.timings = timings;
  std::vector<float> logits = s->infer(input, n, c, h, w, opts);
  pool_->give_back(std::move(s));  // a session whose run threw is dropped, not reused
  return logits;
}

void Engine::check_size(int n, int h, int w, const SessionOptions& options) const {
  if (n < 1) fail("input: empty batch (n = ", n, ")");
  check_plan_fits(make_plan(model_->net, plan_capacity(1, n), h, w), n, options);
}

void Engine::check_input(const float* x, int n, int c, int h, int w) const {
  check_input_shape(arch(), x, n, c, h, w);
  make_plan(model_->net, n, h, w);  // rejects sizes that overflow before any value is read
  check_input_values(x, n, c, h, w);
}

void Engine::normalize(float* x, int n) const {
  const Arch& a = arch();
  const size_t hw = size_t(a.input_h) * size_t(a.input_w);
  check_input_values(x, n, a.in_channels, a.input_h, a.input_w);
  for (int i = 0; i < n; ++i)
    for (int ch = 0; ch < a.in_channels; ++ch) {
      float* p = x + (size_t(i) * size_t(a.in_channels) + size_t(ch)) * hw;
      const float m = a.mean[size_t(ch)], inv = 1.0f / a.std[size_t(ch)];
      for (size_t k = 0; k < hw; ++k) p[k] = (p[k] - m) * inv;
    }
  // Finite values can leave float's range here (3e38 with a std below 1):
  // say so, rather than let the run blame its input.
  const size_t total = size_t(n) * size_t(a.in_channels) * hw;
  const size_t i = first_non_finite(x, total);
  if (i < total) {
    const size_t ch = (i / hw) % size_t(a.in_channels);
    fail("normalize: the value at [", i / (hw * size_t(a.in_channels)), ",", ch, ",", (i % hw) / size_t(a.input_w), ",",
         i % size_t(a.input_w), "] leaves float's range in (x - mean) / std with the model's mean ", a.mean[ch],
         " and std ", a.std[ch], "; raw inputs are expected in [0, 1]");
  }
}

// ---- Session -------------------------------------------------------------------

Session::Session(const Engine& engine, const SessionOptions& options)
    : model_(engine.model_), device_(engine.device_), options_(options) {
  if (options_.threads < -1) fail("session: threads must be >= -1, got ", options_.threads);
  if (options_.max_plans < 1) fail("session: max_plans must be at least 1, got ", options_.max_plans);
  const int threads = options_.threads < 0 ? engine.options().threads : options_.threads;
  ctx_ = device_->make_context(threads);
}

Session::Session(Session&&) noexcept = default;
Session::~Session() = default;

std::unique_ptr<AnswerMemory> Session::make_memory(MemorySpec spec) {
  check_memory_spec(spec, model_->net);
  return std::make_unique<AnswerMemory>(*ctx_, std::move(spec));
}

std::unique_ptr<HeadLearner> Session::make_learner(std::vector<ExitHeadSpec> specs, const LearnerOptions& options) {
  check_heads_fit(specs, *model_);
  return std::make_unique<HeadLearner>(*ctx_, *device_, std::move(specs), options);
}

size_t Session::arena_bytes() const {
  size_t total = 0;
  for (const Prepared& p : plans_) total += p.executor->arena_bytes();
  return total;
}

Executor& Session::executor_for(int n, int h, int w) {
  auto it = plans_.begin();
  while (it != plans_.end() && (it->h != h || it->w != w)) ++it;
  if (it != plans_.end() && it->executor->plan().max_batch >= n) {
    plans_.splice(plans_.begin(), plans_, it);  // most recently used first
    return *plans_.front().executor;
  }
  const int cap = plan_capacity(it != plans_.end() ? it->executor->plan().max_batch : 1, n);
  if (it != plans_.end()) plans_.erase(it);  // free the old arena first
  Plan plan = make_plan(model_->net, cap, h, w);
  check_plan_fits(plan, n, options_);
  while (int(plans_.size()) >= options_.max_plans) plans_.pop_back();
  plans_.push_front({h, w, std::make_unique<Executor>(*ctx_, std::move(plan))});
  return *plans_.front().executor;
}

void Session::run(const float* input, int n, int c, int h, int w, SampleResult* results, float* logits,
                  const RunOptions& opts) {
  if (busy_) fail("session: run called while this session is running (from its own observer?); use another session");
  check_input_shape(model_->arch(), input, n, c, h, w);
  if (!results) fail("run: null results");
  busy_ = true;
  struct Release {
    bool& b;
    ~Release() { b = false; }
  } release{busy_};
  Executor& ex = executor_for(n, h, w);  // checks the size before a value is read
  if (opts.input_on_device) {
    const Act shape{n, h, w, c};
    const size_t i = ctx_->stage_device_input(input, shape);
    if (i < shape.elems()) {
      float value = 0;
      ctx_->to_host(input + i, sizeof value, &value);
      ctx_->synchronize();
      non_finite_input(i, value, shape);
    }
  }  // a host input is checked where the backend stages it, in the same pass
  ex.run(input, n, results, logits, opts);
}

std::vector<float> Session::infer(const float* input, int n, int c, int h, int w, const RunOptions& opts) {
  check_input_shape(model_->arch(), input, n, c, h, w);  // before sizing the vectors by n
  std::vector<float> logits(size_t(n) * size_t(model_->arch().num_classes));
  std::vector<SampleResult> results(static_cast<size_t>(n));
  run(input, n, c, h, w, results.data(), logits.data(), opts);
  return logits;
}

}  // namespace gati
