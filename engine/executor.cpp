// The executor loop; see executor.h.
#include "engine/executor.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "engine/learner.h"
#include "engine/memory.h"
#include "weights/common/error.h"

namespace gati {

namespace {

// Brackets the ops between two host waits as one recorded segment
// (BackendContext::segment_begin).  issue() says whether to enqueue an op
// (false while a recorded graph stands for them); close() ends the segment
// before a host wait.  whole(): at batch 1 on a backend with device-side
// skip, one segment holds the whole run and continue_if_alive() stands for
// each exit's wait.
class Segments {
 public:
  Segments(BackendContext& ctx, bool on, uint64_t owner, uint64_t heads, bool whole, bool* aborted)
      : ctx_(ctx), on_(on), whole_(on && whole), owner_(owner), heads_(heads), aborted_(aborted) {}
  ~Segments() {  // still recording here only when an exception left the segment
    if (open_ && state_ == BackendContext::Segment::kRecording) {
      ctx_.segment_abort();
      *aborted_ = true;
    }
  }
  Segments(const Segments&) = delete;
  Segments& operator=(const Segments&) = delete;

  bool issue(int step, int alive, int pos) {
    if (!on_) return true;
    if (!open_) {
      open_ = true;
      // A whole run's key: step -1, apart from the per-exit segments'.
      state_ = ctx_.segment_begin({owner_, heads_, whole_ ? -1 : step, alive, pos});
    }
    return state_ != BackendContext::Segment::kReplayed;
  }
  bool whole() const { return whole_; }
  // Whole runs, after an exit's compaction: the rows still running (the
  // host waits for the count only in a direct run; a recording skips on the
  // device, and a replay has decided already).
  int continue_if_alive(const ExitState& st, int alive) {
    switch (state_) {
      case BackendContext::Segment::kDirect:
        return ctx_.alive(st);
      case BackendContext::Segment::kRecording:
        ctx_.skip_unless_alive(st);
        return alive;
      case BackendContext::Segment::kReplayed:
        return alive;
    }
    return alive;
  }
  // False when the segment's recording failed: its ops did not run.
  bool close() {
    if (!open_) return true;
    open_ = false;
    return state_ == BackendContext::Segment::kReplayed || ctx_.segment_end();
  }

 private:
  BackendContext& ctx_;
  bool on_, whole_;
  uint64_t owner_, heads_;
  bool* aborted_;
  bool open_ = false;
  BackendContext::Segment state_ = BackendContext::Segment::kDirect;
};

}  // namespace

Executor::Executor(BackendContext& ctx, Plan plan) : ctx_(ctx), plan_(std::move(plan)), id_(next_object_id()) {
  arena_ = ctx_.allocate(plan_.arena_floats * sizeof(float));
  state_ = ctx_.allocate_host_visible(plan_.exit_state.bytes);
  auto* base = static_cast<unsigned char*>(state_->data());
  const ExitStateLayout& L = plan_.exit_state;
  st_.position[0] = reinterpret_cast<int32_t*>(base + L.position[0]);
  st_.position[1] = reinterpret_cast<int32_t*>(base + L.position[1]);
  st_.hit = reinterpret_cast<int32_t*>(base + L.hit);
  st_.alive = reinterpret_cast<int32_t*>(base + L.alive);
  st_.exit = reinterpret_cast<int32_t*>(base + L.exit);
  st_.source = reinterpret_cast<int32_t*>(base + L.source);
  st_.label = reinterpret_cast<int32_t*>(base + L.label);
  st_.confidence = reinterpret_cast<float*>(base + L.confidence);
  st_.logits = reinterpret_cast<float*>(base + L.logits);
  // Compaction scratch for the largest exit, and every convolution at the
  // plan's batch, and at batch 1 where the plan is larger (where compaction
  // leaves a single survivor), before the first run.
  Act largest{0, 0, 0, 0};
  for (const ExitPoint& e : plan_.exits)
    if (e.shape.with_batch(plan_.max_batch).elems() > largest.elems()) largest = e.shape.with_batch(plan_.max_batch);
  if (largest.elems() > 0) ctx_.prepare_compaction(largest);
  for (const Step& s : plan_.steps)
    if (s.kind == StepKind::Conv)
      for (int b : {plan_.max_batch, 1}) {
        ctx_.prepare_conv(s.conv, s.in.with_batch(b), s.relu, s.residual_slot >= 0);
        if (plan_.max_batch == 1) break;
      }
  ctx_.prepared();
}

Executor::~Executor() { ctx_.forget_segments(id_); }

const PoolSpec* Executor::exit_pool_after(size_t step, const RunOptions& opts) const {
  for (const ExitPoint& e : plan_.exits) {
    if (e.after_step != int(step)) continue;
    if (e.slot != plan_.steps[step].out_slot) return nullptr;
    if (opts.memory && opts.memory->spec().exit == e.id) return &opts.memory->spec().pool;
    const int head = opts.heads ? opts.heads->for_exit(e.id) : -1;
    return head >= 0 ? &opts.heads->specs()[size_t(head)].pool : nullptr;
  }
  return nullptr;
}

float* Executor::exit_pooled(int dim) {
  const size_t bytes = size_t(plan_.max_batch) * size_t(dim) * sizeof(float);
  if (!exit_pooled_ || exit_pooled_->bytes() < bytes) {
    ctx_.forget_segments(id_);  // they read the old scratch
    exit_pooled_ = ctx_.allocate(bytes);
  }
  return exit_pooled_->floats();
}

void non_finite_input(size_t i, float value, const Act& shape) {
  const size_t c = size_t(shape.c), w = size_t(shape.w), hw = size_t(shape.h) * w;
  fail("input: value at [", i / (hw * c), ",", (i / hw) % c, ",", (i % hw) / w, ",", i % w, "] is ", value,
       "; inputs must be finite");
}

void Executor::run(const float* input_nchw, int n, SampleResult* results, float* logits, const RunOptions& options) {
  if (n < 1) fail("run: empty batch");
  if (n > plan_.max_batch) fail("run: batch ", n, " exceeds the plan's maximum ", plan_.max_batch);
  // A learner's heads answer; from here on opts.heads names them.
  RunOptions with_learner;
  if (options.learner) {
    if (options.heads) fail("run: give either heads or a learner (whose heads answer), not both");
    if (!options.learner->belongs_to(ctx_))
      fail("run: the learner belongs to another session (make it with this one's make_learner)");
    options.learner->reserve(plan_.max_batch);  // before anything is recorded: it may move its buffers
    with_learner = options;
    with_learner.heads = &options.learner->heads();
  }
  const RunOptions& opts = options.learner ? with_learner : options;
  // Segments replay what a run did before, so nothing that changes between
  // runs may sit inside them: timing marks, the observer, the memory.
  const bool segments = !opts.timings && !opts.observer && !opts.memory;
  if (segments) {
    if (opts.heads) {  // grown before anything is recorded
      exit_pooled(opts.heads->max_dim());
      ctx_.prepare_exit_heads(*opts.heads, plan_.max_batch);
    }
    bool done = false;
    aborted_recording_ = false;
    try {
      done = run_once(input_nchw, n, results, logits, opts, true);
    } catch (...) {
      // An error while recording (the backend turns its graphs off) is
      // retried below op by op; any other error stands.
      if (!aborted_recording_) throw;
    }
    if (done) return;
  }
  run_once(input_nchw, n, results, logits, opts, false);
}

bool Executor::run_once(const float* input_nchw, int n, SampleResult* results, float* logits, const RunOptions& opts,
                        bool recorded) {
  const int classes = plan_.classes;
  Segments seg(ctx_, recorded, id_, opts.heads ? opts.heads->id() : 0, n == 1 && ctx_.device_skip(),
               &aborted_recording_);
  // Before staging: a backend may issue the input's copy there (CUDA, large
  // inputs), and the profile's first entry should carry it.
  if (opts.timings) ctx_.timing_begin();
  if (!opts.input_on_device) {
    const Act in = plan_.input.with_batch(n);
    const size_t bad = ctx_.stage_input(input_nchw, in);
    if (bad < in.elems()) non_finite_input(bad, input_nchw[bad], in);
  }
  if (seg.issue(0, n, 0)) ctx_.begin_exits(st_, n, classes);

  // Timing: one mark per recorded entry; names and sizes kept alongside.
  struct Entry {
    std::string name, kind;
    int block;
    int64_t macs;
    std::string method;
  };
  std::vector<Entry> entries;
  auto mark = [&](std::string name, std::string kind, int block, int64_t macs, std::string method = {}) {
    if (!opts.timings) return;
    ctx_.timing_mark();
    entries.push_back({std::move(name), std::move(kind), block, macs, std::move(method)});
  };

  MemoryView memory;
  if (opts.memory) {
    if (!opts.memory->belongs_to(ctx_))
      fail("run: the memory belongs to another session (make it with this one's make_memory)");
    memory = opts.memory->view(plan_.max_batch);
  }
  int alive = n;  // rows still running
  int pos = 0;    // which position array maps rows to samples
  size_t next_exit = 0;
  bool finished_early = false;
  for (size_t i = 0; i < plan_.steps.size() && !finished_early; ++i) {
    const Step& s = plan_.steps[i];
    if (seg.issue(int(i), alive, pos)) {
      if (opts.timings) ctx_.range_push(s.name.c_str());
      switch (s.kind) {
        case StepKind::Input:
          ctx_.input_from_stage({n, s.out.h, s.out.w, s.out.c}, slot(s.out_slot));
          break;
        case StepKind::Conv:
          if (const PoolSpec* pool = exit_pool_after(i, opts)) ctx_.conv_feeds_exit(*pool);
          ctx_.conv(s.conv, slot(s.in_slot), s.in.with_batch(alive), slot(s.out_slot),
                    s.residual_slot >= 0 ? slot(s.residual_slot) : nullptr, s.relu);
          break;
        case StepKind::MaxPool:
          ctx_.max_pool(slot(s.in_slot), s.in.with_batch(alive), 3, 2, 1, slot(s.out_slot));
          break;
        case StepKind::GlobalAvgPool:
          ctx_.global_avg_pool(slot(s.in_slot), s.in.with_batch(alive), region(plan_.pooled_offset));
          break;
        case StepKind::Classifier:
          ctx_.classifier(region(plan_.pooled_offset), alive, region(plan_.logits_offset));
          break;
      }
      if (opts.timings) ctx_.range_pop();
    }
    mark(s.name, step_kind_name(s.kind), s.block, s.macs_per_sample * alive,
         opts.timings && s.kind == StepKind::Conv
             ? ctx_.conv_method(s.conv, s.in.with_batch(alive), s.relu, s.residual_slot >= 0)
             : std::string());
    if (next_exit >= plan_.exits.size() || plan_.exits[next_exit].after_step != int(i)) continue;

    const ExitPoint& e = plan_.exits[next_exit++];
    if (opts.observer) {
      ctx_.synchronize();
      opts.observer(e, ctx_, slot(e.slot), alive, st_.position[pos]);
    }
    // After an exit op decided its rows: the survivors move to the front,
    // and the host waits for their count (the end of a segment).
    auto compact = [&](const std::string& what) {
      if (seg.issue(int(i), alive, pos)) ctx_.compact(slot(e.slot), e.shape.with_batch(alive), st_, pos, 1 - pos);
      if (seg.whole()) {
        alive = seg.continue_if_alive(st_, alive);
      } else {
        if (!seg.close()) return false;
        alive = ctx_.alive(st_);
      }
      pos = 1 - pos;
      mark(what, "compact", e.block, 0);
      finished_early = alive == 0;
      return true;
    };
    if (opts.memory && opts.memory->spec().exit == e.id) {  // never inside a segment (run() says why)
      if (opts.timings) ctx_.range_push((e.name + ".memory").c_str());
      ctx_.memory_lookup(memory, slot(e.slot), e.shape.with_batch(alive), e.id, st_, pos, exit_pooled(memory.dim));
      if (opts.timings) ctx_.range_pop();
      // A lookup costs what a head with one class per entry would.
      mark(e.name + ".memory", "memory", e.block,
           int64_t(alive) * exit_head_macs(e.shape, memory.pool, memory.dim, memory.capacity));
      if (!compact(e.name + ".memory.compact")) return false;
      if (finished_early) continue;
    }
    const int head = opts.heads ? opts.heads->for_exit(e.id) : -1;
    if (head < 0) continue;
    // Sized in run(): no reallocation inside a segment.  A learning head's
    // features stay where the learner reads them after the run.
    float* pooled = opts.learner ? opts.learner->features(head) : nullptr;
    if (!pooled) pooled = exit_pooled(opts.heads->max_dim());
    if (seg.issue(int(i), alive, pos)) {
      if (opts.timings) ctx_.range_push((e.name + ".exit").c_str());
      ctx_.exit_head(*opts.heads, head, slot(e.slot), e.shape.with_batch(alive), e.id, st_, pos, pooled);
      if (opts.timings) ctx_.range_pop();
    }
    const ExitHeadSpec& spec = opts.heads->specs()[size_t(head)];
    mark(e.name + ".exit", "exit", e.block, int64_t(alive) * exit_head_macs(e.shape, spec));
    if (!compact(e.name + ".compact")) return false;
  }
  if (!finished_early) {
    if (seg.issue(int(plan_.steps.size()), alive, pos))
      ctx_.finish_full_model(region(plan_.logits_offset), alive, classes, st_, pos);
    if (!seg.close()) return false;
    if (opts.memory) ctx_.memory_insert(memory, st_, n);
  }
  if (!seg.close()) return false;  // a whole run that ended early, directly
  ctx_.synchronize();

  for (int i = 0; i < n; ++i) {
    if (st_.exit[i] == kStillRunning) fail("run: sample ", i, " got no answer (internal error)");
    if (!std::isfinite(st_.confidence[i])) {
      // Finite inputs can still overflow float inside the network (values
      // near 3e38, or weights that amplify): say so instead of answering NaN.
      const size_t per = plan_.input.per_sample();
      float largest = 0;
      for (size_t k = 0; k < per; ++k) largest = std::max(largest, std::abs(input_nchw[size_t(i) * per + k]));
      fail("run: sample ", i, ": the ", st_.exit[i] == kFullModel ? "model's" : "exit head's",
           " output is not finite: activations overflowed float (the input's largest |value| is ", largest, ")");
    }
    results[i] = {st_.exit[i], st_.label[i], st_.confidence[i], st_.source[i] == kByMemory};
  }
  if (logits) std::memcpy(logits, st_.logits, size_t(n) * size_t(classes) * sizeof(float));
  if (opts.learner) opts.learner->learn(st_, n);  // queued: the next run reads what it publishes
  if (opts.timings) {
    const std::vector<double> at = ctx_.timing_read();
    double prev = 0;
    for (size_t k = 0; k < entries.size() && k < at.size(); ++k) {
      opts.timings->push_back(
          {entries[k].name, entries[k].kind, entries[k].block, prev, at[k] - prev, entries[k].macs, entries[k].method});
      prev = at[k];
    }
  }
  return true;
}

}  // namespace gati
