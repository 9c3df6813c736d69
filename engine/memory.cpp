// The memory of recent answers; see memory.h.
#include "engine/memory.h"

#include <cmath>
#include <cstdint>

#include "engine/plan.h"
#include "weights/common/error.h"

namespace gati {

void check_memory_spec(MemorySpec& s, const Network& net) {
  const std::vector<ExitPointInfo> points = exit_points(net);
  if (s.exit < 0 || s.exit >= int(points.size()))
    fail("memory '", s.name, "': exit ", s.exit, " is not one of the model's ", points.size(), " exit points");
  const ExitPointInfo& p = points[size_t(s.exit)];
  if (!s.name.empty() && s.name != p.name)
    fail("memory '", s.name, "': exit ", s.exit, " of the model is '", p.name, "'");
  s.name = p.name;
  const std::string what = "memory at '" + p.name + "'";
  if (s.pool.grid < 1 || s.pool.grid > kMaxPoolGrid)
    fail(what, ": pool grid ", s.pool.grid, " is not in [1, ", kMaxPoolGrid, "]");
  check_pool_fits(what, s.dim, s.pool, p.channels);
  if (s.capacity < 1 || s.capacity > (1 << 20)) fail(what, ": capacity ", s.capacity, " is not in [1, 1048576]");
  if (s.mean.size() != size_t(s.dim) || s.inv_std.size() != size_t(s.dim))
    fail(what, ": mean and inv_std have ", s.mean.size(), " and ", s.inv_std.size(), " values, dim is ", s.dim);
  for (const auto* v : {&s.mean, &s.inv_std})
    for (float x : *v)
      if (!std::isfinite(x)) fail(what, ": non-finite standardisation");
  if (!std::isfinite(s.threshold)) fail(what, ": threshold ", s.threshold, " is not finite");
  if (!(s.min_confidence >= 0 && s.min_confidence <= 1))
    fail(what, ": min_confidence ", s.min_confidence, " is not in [0, 1]");
}

AnswerMemory::AnswerMemory(BackendContext& ctx, MemorySpec spec) : ctx_(ctx), spec_(std::move(spec)) {
  const size_t dim = size_t(spec_.dim), cap = size_t(spec_.capacity);
  std::vector<float> params(spec_.mean);
  params.insert(params.end(), spec_.inv_std.begin(), spec_.inv_std.end());
  params_ = ctx_.allocate(params.size() * sizeof(float));
  ctx_.from_host(params.data(), params.size() * sizeof(float), params_->data());
  keys_ = ctx_.allocate(cap * dim * sizeof(float));
  labels_ = ctx_.allocate(cap * sizeof(int32_t));
  confidence_ = ctx_.allocate(cap * sizeof(float));
  fill_ = ctx_.allocate(2 * sizeof(int32_t));
  clear();
}

void AnswerMemory::clear() {
  const int32_t zero[2] = {0, 0};
  ctx_.from_host(zero, sizeof(zero), fill_->data());
}

int AnswerMemory::entries() {
  int32_t fill[2];
  ctx_.to_host(fill_->data(), sizeof(fill), fill);
  ctx_.synchronize();
  return fill[0];
}

MemoryView AnswerMemory::view(int max_batch) {
  if (max_batch > pending_rows_) {
    pending_ = ctx_.allocate(size_t(max_batch) * size_t(spec_.dim) * sizeof(float));
    pending_rows_ = max_batch;
  }
  MemoryView v;
  v.dim = spec_.dim;
  v.capacity = spec_.capacity;
  v.pool = spec_.pool;
  v.mean = params_->floats();
  v.inv_std = params_->floats() + spec_.dim;
  v.keys = keys_->floats();
  v.labels = static_cast<int32_t*>(labels_->data());
  v.confidence = confidence_->floats();
  v.fill = static_cast<int32_t*>(fill_->data());
  v.pending = pending_->floats();
  v.threshold = spec_.threshold;
  v.min_confidence = spec_.min_confidence;
  return v;
}

}  // namespace gati
