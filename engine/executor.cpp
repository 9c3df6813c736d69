// The executor loop; see executor.h.
#include "engine/executor.h"

#include <chrono>

#include "engine/error.h"

namespace gati {

Executor::Executor(const Model& model, Backend& backend, int max_batch, int h, int w)
    : model_(model), backend_(backend), plan_(make_plan(model.net, max_batch, h, w)) {
  arena_ = backend_.allocate(plan_.arena_floats);
}

bool Executor::run(const float* input_nchw, int n, float* logits, const RunOptions& opts) {
  if (n < 1) fail("run: empty batch");
  if (n > plan_.max_batch) fail("run: batch ", n, " exceeds the plan's maximum ", plan_.max_batch);
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto ms_since = [&](clock::time_point t) { return std::chrono::duration<double, std::milli>(t - t0).count(); };
  size_t next_exit = 0;
  for (size_t i = 0; i < plan_.steps.size(); ++i) {
    const Step& s = plan_.steps[i];
    const auto start = opts.timings ? clock::now() : t0;
    switch (s.kind) {
      case StepKind::Input:
        backend_.input_from_host_nchw(input_nchw, {n, s.out.h, s.out.w, s.out.c}, slot(s.out_slot));
        break;
      case StepKind::Conv:
        backend_.conv(s.conv, slot(s.in_slot), s.in.with_batch(n), slot(s.out_slot),
                      s.residual_slot >= 0 ? slot(s.residual_slot) : nullptr, s.relu);
        break;
      case StepKind::MaxPool:
        backend_.max_pool(slot(s.in_slot), s.in.with_batch(n), 3, 2, 1, slot(s.out_slot));
        break;
      case StepKind::GlobalAvgPool:
        backend_.global_avg_pool(slot(s.in_slot), s.in.with_batch(n), pooled());
        break;
      case StepKind::Classifier:
        backend_.classifier(pooled(), n, arena_->data() + plan_.logits_offset);
        break;
    }
    if (opts.timings) {
      backend_.synchronize();
      opts.timings->push_back(
          {s.name, s.kind, s.block, ms_since(start), ms_since(clock::now()) - ms_since(start), s.macs_per_sample * n});
    }
    if (next_exit < plan_.exits.size() && plan_.exits[next_exit].after_step == int(i)) {
      const ExitPoint& e = plan_.exits[next_exit++];
      if (opts.on_exit && !opts.on_exit(e, slot(e.slot), n)) return false;
    }
  }
  backend_.to_host(arena_->data() + plan_.logits_offset, size_t(n) * size_t(plan_.classes), logits);
  backend_.synchronize();
  return true;
}

}  // namespace gati
