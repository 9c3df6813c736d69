// Heads that learn in the backend; see learner.h.
#include "engine/learner.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "weights/common/error.h"
#include "weights/common/half.h"

namespace gati {

// One head's state in backend memory.  Empty (learns false) for a head that
// does not learn.
struct HeadLearner::Head {
  bool learns = false;
  int dim = 0, classes = 0;
  std::unique_ptr<Buffer> live_w, live_b, velocity;        // what the steps update
  std::unique_ptr<Buffer> served_w, served_b, served_f16;  // what runs read
  std::unique_ptr<Buffer> batch_x, batch_y;                // the next SGD batch
  std::unique_ptr<Buffer> features;                        // [rows, dim] pooled at the exit in the last run
  std::unique_ptr<Buffer> reports;                         // host-visible SgdReport slots
  int pending = 0;                                         // rows in batch_x
  int slots = 0, queued = 0;                               // report slots, and those holding unread reports
  bool halves = false;                                     // the backend reads this head's weights as halves
  LinearHeadMut live(const LinearHeadView& base) const {
    return {dim, classes, base.mean, base.inv_std, live_w->floats(), live_b->floats(), velocity->floats()};
  }
  SgdReport report(int slot) const {
    auto* p = static_cast<unsigned char*>(reports->data()) + size_t(slot) * 16;
    return {reinterpret_cast<int32_t*>(p), reinterpret_cast<double*>(p + 8)};
  }
};

// The heads a run reads: the base's, with each learning head's weights
// taken from the served copy.
class HeadLearner::Heads final : public ExitHeads {
 public:
  Heads(const ExitHeads& base, const std::vector<Head>& heads)
      : ExitHeads(base.specs(), base.exit_points()), base_(base), heads_(heads) {}
  LinearHeadView view(int head) const override {
    LinearHeadView v = base_.view(head);
    const Head& h = heads_.at(size_t(head));
    if (h.learns) {
      v.weight = h.served_w->floats();
      v.bias = h.served_b->floats();
      v.weight_f16 = h.halves ? static_cast<const uint16_t*>(h.served_f16->data()) : nullptr;
      v.weight_i8 = nullptr;  // the base's copy would go stale with the first step
      v.weight_i8_scale = nullptr;
    }
    return v;
  }
  DistanceHeadView distance_view(int head) const override { return base_.distance_view(head); }
  const ExitHeads& storage() const override { return base_.storage(); }
  void renew_id() { id_ = next_object_id(); }

 private:
  const ExitHeads& base_;
  const std::vector<Head>& heads_;
};

void check_learner_options(const LearnerOptions& o) {
  if (o.batch < 1 || o.batch > (1 << 16)) fail("learner: the SGD batch must be 1 to 65536 requests, got ", o.batch);
  const SgdHyper& hp = o.hyper;
  if (!(hp.lr > 0 && std::isfinite(hp.lr)) || !(hp.momentum >= 0 && hp.momentum < 1) ||
      !(hp.weight_decay >= 0 && std::isfinite(hp.weight_decay)) || !(hp.max_weight > 0))
    fail("learner: lr ", hp.lr, " must be finite and > 0, momentum ", hp.momentum, " in [0, 1), weight decay ",
         hp.weight_decay, " finite and >= 0, max_weight ", hp.max_weight, " > 0");
}

void check_learnable(const std::vector<ExitHeadSpec>& specs) {
  for (const ExitHeadSpec& s : specs) {
    if (s.kind != HeadKind::kLinear || s.hidden > 0) continue;  // a hidden layer: served as built
    for (size_t j = 0; j < s.weight.size(); ++j)
      if (!(std::abs(s.weight[j]) <= kHalfMax))
        fail("learner: head '", s.name, "': weight ", j, " (", s.weight[j],
             ") is beyond the largest half (65504); a learning head is served as halves");
  }
}

HeadLearner::HeadLearner(BackendContext& ctx, const BackendDevice& device, std::vector<ExitHeadSpec> specs,
                         const LearnerOptions& options)
    : ctx_(ctx), options_(options) {
  check_learner_options(options_);
  options_.hyper.max_weight = std::min(options_.hyper.max_weight, kHalfMax);
  check_learnable(specs);
  // Served as halves: the weights as the first publication would round them.
  std::vector<std::vector<float>> live(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    ExitHeadSpec& s = specs[i];
    if (s.kind != HeadKind::kLinear || s.hidden > 0) continue;  // a hidden layer: served as built
    live[i] = s.weight;
    for (float& w : s.weight) w = round_to_half(w);
  }
  base_ = device.upload_exit_heads(std::move(specs));  // checks every spec
  heads_.resize(base_->specs().size());
  for (size_t i = 0; i < heads_.size(); ++i) {
    const ExitHeadSpec& s = base_->specs()[i];
    if (s.kind != HeadKind::kLinear || s.hidden > 0) continue;  // a hidden layer: served as built
    Head& h = heads_[i];
    h.learns = true;
    h.dim = s.dim;
    h.classes = s.classes;
    h.halves = base_->view(int(i)).weight_f16 != nullptr;
    const size_t w = size_t(s.dim) * size_t(s.classes), c = size_t(s.classes);
    h.live_w = ctx_.allocate(w * sizeof(float));
    h.live_b = ctx_.allocate(c * sizeof(float));
    h.velocity = ctx_.allocate((w + c) * sizeof(float));
    h.served_w = ctx_.allocate(w * sizeof(float));
    h.served_b = ctx_.allocate(c * sizeof(float));
    h.served_f16 = ctx_.allocate(w * sizeof(uint16_t));
    h.batch_x = ctx_.allocate(size_t(options_.batch) * size_t(s.dim) * sizeof(float));
    h.batch_y = ctx_.allocate(size_t(options_.batch) * sizeof(int32_t));
    ctx_.from_host(live[i].data(), w * sizeof(float), h.live_w->data());
    ctx_.from_host(s.bias.data(), c * sizeof(float), h.live_b->data());
    const std::vector<float> zero(w + c, 0.f);
    ctx_.from_host(zero.data(), zero.size() * sizeof(float), h.velocity->data());
    publish(h);
  }
  view_ = std::make_unique<Heads>(*base_, heads_);
  ctx_.synchronize();
}

HeadLearner::~HeadLearner() {
  try {
    ctx_.synchronize();
  } catch (...) {  // a destructor must not throw; the context reports its own failure on its next call
  }
}

const ExitHeads& HeadLearner::heads() const { return *view_; }

void HeadLearner::reserve(int rows) {
  if (rows <= rows_) return;
  ctx_.synchronize();  // nothing queued reads the old buffers
  for (Head& h : heads_)
    if (h.learns) h.features = ctx_.allocate(size_t(rows) * size_t(h.dim) * sizeof(float));
  rows_ = rows;
  view_->renew_id();  // recorded runs wrote into the old buffers
}

float* HeadLearner::features(int head) {
  if (head < 0 || size_t(head) >= heads_.size()) fail("learner: head ", head, " is not one of its ", heads_.size());
  Head& h = heads_[size_t(head)];
  return h.learns && h.features ? h.features->floats() : nullptr;
}

void HeadLearner::harvest() {
  for (size_t i = 0; i < heads_.size(); ++i) {
    Head& h = heads_[i];
    for (int k = 0; k < h.queued; ++k) {
      const SgdReport r = h.report(k);
      if (r.status[0] == int32_t(OpStatus::kOk)) {
        ++stats_.steps;
        stats_.last_loss = *r.loss;
      } else {
        ++stats_.rejected;
        const std::string& name = base_->specs()[i].name;
        stats_.last_rejection = r.status[0] == int32_t(OpStatus::kNonFinite)
                                    ? "head '" + name + "': parameter " + std::to_string(r.status[1]) +
                                          " would turn non-finite or leave [-" +
                                          std::to_string(options_.hyper.max_weight) + ", " +
                                          std::to_string(options_.hyper.max_weight) + "]; the batch was dropped"
                                    : "head '" + name + "': the step reported status " + std::to_string(r.status[0]) +
                                          " (index " + std::to_string(r.status[1]) + "); the batch was dropped";
      }
    }
    h.queued = 0;
  }
}

void HeadLearner::step(Head& h) {
  const int n = h.pending;
  h.pending = 0;  // the batch is spent whether or not the step can be queued
  if (h.queued >= h.slots) fail("learner: no report slot left (internal error)");
  const int head = int(&h - heads_.data());
  const SgdReport report = h.report(h.queued);
  report.status[0] = -1;  // read as a failure unless the step writes it
  ctx_.linear_sgd_enqueue(h.live(base_->view(head)), h.batch_x->floats(),
                          static_cast<const int32_t*>(h.batch_y->data()), n, options_.hyper, report);
  ++h.queued;
}

void HeadLearner::publish(Head& h) {
  ctx_.publish_linear(h.live_w->floats(), h.live_b->floats(), h.dim, h.classes, h.served_w->floats(),
                      static_cast<uint16_t*>(h.served_f16->data()), h.served_b->floats());
}

void HeadLearner::learn(const ExitState& st, int n) {
  ctx_.synchronize();  // after a run it is idle already: the queued steps are done
  harvest();
  if (n > rows_) fail("learner: a run of ", n, " samples, but features for ", rows_, " (call reserve first)");
  const int full = int(std::count(st.exit, st.exit + n, kFullModel));
  if (full == 0) return;
  for (size_t i = 0; i < heads_.size(); ++i) {
    Head& h = heads_[i];
    if (!h.learns) continue;
    // Report slots for every step this run can complete (the context is idle: safe to grow).
    const int most = (h.pending + full) / options_.batch;
    if (most > h.slots) {
      h.reports = ctx_.allocate_host_visible(size_t(most) * 16);
      h.slots = most;
    }
    // The row each sample had at this head's exit: the samples that reached
    // it, in caller order (compaction keeps the survivors' order).
    const int exit = base_->specs()[i].exit;
    auto reached = [&](int s) {
      const int e = st.exit[s];
      return e == kFullModel || e > exit || (e == exit && st.source[s] != kByMemory);
    };
    RowGather g;
    int offset = h.pending, row = 0;
    auto gather = [&] {  // the rows listed so far into the batch, from `offset`
      ctx_.gather_rows(h.features->floats(), h.dim, g, h.batch_x->floats(), static_cast<int32_t*>(h.batch_y->data()),
                       offset);
      g.count = 0;
      offset = h.pending;
    };
    bool stepped = false;
    for (int s = 0; s < n; ++s) {
      if (!reached(s)) continue;
      const int r = row++;
      if (st.exit[s] != kFullModel) continue;
      g.row[g.count] = r;
      g.label[g.count] = st.label[s];
      ++g.count;
      ++h.pending;
      const bool batch_full = h.pending >= options_.batch;
      if (batch_full || g.count == RowGather::kMax) gather();
      if (batch_full) {
        step(h);
        stepped = true;
        offset = 0;
      }
    }
    if (g.count > 0) gather();
    if (stepped) publish(h);
  }
  stats_.learned += full;
}

LearnerStats HeadLearner::stats() {
  ctx_.synchronize();
  harvest();
  return stats_;
}

std::vector<ExitHeadSpec> HeadLearner::specs() {
  std::vector<ExitHeadSpec> out = base_->specs();
  for (size_t i = 0; i < heads_.size(); ++i) {
    const Head& h = heads_[i];
    if (!h.learns) continue;
    ctx_.to_host(h.live_w->data(), out[i].weight.size() * sizeof(float), out[i].weight.data());
    ctx_.to_host(h.live_b->data(), out[i].bias.size() * sizeof(float), out[i].bias.data());
  }
  ctx_.synchronize();
  harvest();
  return out;
}

}  // namespace gati
