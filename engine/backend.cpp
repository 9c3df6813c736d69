// What every backend shares: the exit index of exit heads; see backend.h.
#include "engine/backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <tuple>

#include "engine/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_device.h"
#include "weights/common/error.h"

namespace gati {

uint64_t next_object_id() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

bool BackendContext::SegmentKey::operator<(const SegmentKey& o) const {
  return std::tie(owner, heads, step, alive, pos) < std::tie(o.owner, o.heads, o.step, o.alive, o.pos);
}

ExitHeads::ExitHeads(std::vector<ExitHeadSpec> specs, int exits)
    : specs_(std::move(specs)), by_exit_(size_t(std::max(exits, 0)), -1), id_(next_object_id()) {
  for (size_t i = 0; i < specs_.size(); ++i) {
    const ExitHeadSpec& s = specs_[i];
    if (s.exit < 0 || s.exit >= exits) fail("exit head '", s.name, "': exit ", s.exit, " is not in the model");
    if (by_exit_[size_t(s.exit)] >= 0) fail("exit head '", s.name, "': two heads at exit ", s.exit);
    // Every backend's kernels read dim, classes and entries worth of each vector.
    check_head_spec("exit head '" + s.name + "'", s);
    by_exit_[size_t(s.exit)] = int(i);
    max_dim_ = std::max(max_dim_, s.dim);
  }
}

const ExitHeadSpec& ExitHeads::linear_spec(int head) const {
  const ExitHeadSpec& s = specs_.at(size_t(head));
  if (s.kind != HeadKind::kLinear) fail("exit head '", s.name, "' is a ", head_kind_name(s.kind), " head, not linear");
  return s;
}

const ExitHeadSpec& ExitHeads::distance_spec(int head) const {
  const ExitHeadSpec& s = specs_.at(size_t(head));
  if (s.kind == HeadKind::kLinear) fail("exit head '", s.name, "' is a linear head, not a distance head");
  return s;
}

const char* head_kind_name(HeadKind kind) {
  switch (kind) {
    case HeadKind::kLinear:
      return "linear";
    case HeadKind::kKnn:
      return "knn";
    case HeadKind::kKmeans:
      return "kmeans";
  }
  return "?";
}

HeadKind head_kind(const std::string& name) {
  for (HeadKind k : {HeadKind::kLinear, HeadKind::kKnn, HeadKind::kKmeans})
    if (name == head_kind_name(k)) return k;
  fail("cache kind '", name, "' (valid: linear, knn, kmeans)");
}

LinearHeadView host_linear_view(const ExitHeadSpec& s) {
  return {s.dim,
          s.classes,
          s.mean.data(),
          s.inv_std.data(),
          s.weight.data(),
          s.bias.data(),
          s.threshold,
          s.pool,
          s.selector.empty() ? nullptr : s.selector.data(),
          s.selector_k(),
          nullptr,
          nullptr,
          nullptr,
          s.hidden,
          s.hidden > 0 ? s.hidden_weight.data() : nullptr,
          s.hidden > 0 ? s.hidden_bias.data() : nullptr};
}

DistanceHeadView host_distance_view(const ExitHeadSpec& s) {
  return {s.dim,           s.reduced,      s.entries(),      s.neighbours,        s.classes,
          s.pool,          s.mean.data(),  s.inv_std.data(), s.projection.data(), s.keys.data(),
          s.labels.data(), s.share.data(), s.threshold};
}

void check_head_spec(const std::string& what, const ExitHeadSpec& s) {
  const size_t d = size_t(std::max(s.dim, 0)), k = size_t(std::max(s.classes, 0));
  if (s.dim < 1 || s.classes < 1 || s.mean.size() != d || s.inv_std.size() != d)
    fail(what, ": parameter sizes do not match dim ", s.dim, " and ", s.classes, " classes");
  if (s.pool.grid < 1 || s.pool.grid > kMaxPoolGrid || s.dim % s.pool.features(1) != 0)
    fail(what, ": pool grid ", s.pool.grid, (s.pool.with_max ? " with max" : ""), " does not fit dim ", s.dim,
         " (grid 1 to ", kMaxPoolGrid, ", dim a multiple of the features per channel)");
  auto finite = [&](const std::vector<float>& v, const char* name) {
    for (size_t j = 0; j < v.size(); ++j)
      if (!std::isfinite(v[j])) fail(what, ": ", name, "[", j, "] is not finite");
  };
  finite(s.mean, "mean");
  finite(s.inv_std, "inv_std");
  if (s.kind == HeadKind::kLinear) {
    if (s.hidden < 0 || s.hidden > kMaxHidden)
      fail(what, ": ", s.hidden, " hidden units (valid: 0 for a linear predictor, up to ", kMaxHidden, ")");
    const size_t u = size_t(s.hidden);
    if (s.hidden_weight.size() != u * d || s.hidden_bias.size() != u)
      fail(what, ": hidden layer sizes do not match dim ", s.dim, " and ", s.hidden, " hidden units (weight ",
           s.hidden_weight.size(), ", bias ", s.hidden_bias.size(), ")");
    if (s.weight.size() != size_t(s.inputs()) * k || s.bias.size() != k)
      fail(what, ": parameter sizes do not match ",
           s.hidden > 0 ? str_cat(s.hidden, " hidden units") : str_cat("dim ", s.dim), " and ", s.classes, " classes");
    finite(s.weight, "weight");
    finite(s.bias, "bias");
    finite(s.hidden_weight, "hidden_weight");
    finite(s.hidden_bias, "hidden_bias");
    if (!s.selector.empty() && (s.selector.size() < 2 || s.selector.size() > size_t(kMaxSelectorK) + 1))
      fail(what, ": selector of ", s.selector.size(), " values (valid: none, or k + 1 with k from 1 to ", kMaxSelectorK,
           ")");
    finite(s.selector, "selector");
  } else {
    const size_t r = size_t(std::max(s.reduced, 0)), e = s.labels.size();
    if (s.reduced < 1 || s.reduced > s.dim || e < 1 || s.projection.size() != r * d || s.keys.size() != e * r ||
        s.share.size() != e)
      fail(what, ": ", head_kind_name(s.kind), " sizes do not match (dim ", s.dim, ", reduced ", s.reduced, ", ", e,
           " entries: projection ", s.projection.size(), ", keys ", s.keys.size(), ", shares ", s.share.size(),
           "; reduced must be in [1, dim] and entries >= 1)");
    if (s.neighbours < 1 || s.neighbours > kMaxNeighbours)
      fail(what, ": ", s.neighbours, " neighbours (valid: 1 to ", kMaxNeighbours, ")");
    finite(s.projection, "projection");
    finite(s.keys, "keys");
    for (size_t j = 0; j < e; ++j) {
      if (s.labels[j] < 0 || s.labels[j] >= s.classes)
        fail(what, ": entry ", j, " has label ", s.labels[j], ", not one of the ", s.classes, " classes");
      if (!(s.share[j] > 0.f && s.share[j] <= 1.f))
        fail(what, ": entry ", j, " has share ", s.share[j], " (must be in (0, 1])");
    }
  }
  if (!(s.threshold >= 0)) fail(what, ": threshold ", s.threshold, " must be >= 0");
}

std::string pool_name(const PoolSpec& pool) {
  const std::string kind = pool.with_max ? "mix" : "avg";
  if (pool.grid == 1) return kind;
  return kind + std::to_string(pool.grid) + "x" + std::to_string(pool.grid);
}

PoolSpec parse_pool(const std::string& name) {
  PoolSpec p;
  const std::string kind = name.substr(0, 3), rest = name.size() > 3 ? name.substr(3) : "";
  bool ok = kind == "avg" || kind == "mix";
  p.with_max = kind == "mix";
  if (ok && !rest.empty()) {
    // "GxG" with one digit each side, both the same, 1..kMaxPoolGrid
    ok = rest.size() == 3 && rest[1] == 'x' && rest[0] == rest[2] && rest[0] >= '1' && rest[0] <= '0' + kMaxPoolGrid;
    if (ok) p.grid = rest[0] - '0';
  }
  if (!ok)
    fail("pooling '", name, "' (valid: avg, mix, avgGxG or mixGxG with G from 1 to ", kMaxPoolGrid,
         ", e.g. avg2x2, mix4x4)");
  return p;
}

size_t BackendContext::stage_device_input(const float*, const Act&) {
  fail("input on the device (RunOptions::input_on_device): this backend reads its input from host memory; ",
       "use a CUDA session, or pass host memory");
}

void BackendContext::skip_unless_alive(const ExitState&) {
  fail("skip_unless_alive: this backend has no device-side skip (device_skip() is false)");
}

void check_pool_fits(const std::string& what, int dim, const PoolSpec& pool, int channels) {
  if (dim != pool.features(channels))
    fail(what, ": dim ", dim, ", but ", channels, " channels pooled ", pool_name(pool), " give ",
         pool.features(channels), " features");
}

void check_exit_head_fits(const ExitHeads& heads, int head, const Act& shape) {
  const ExitHeadSpec& s = heads.specs().at(size_t(head));
  check_pool_fits("exit head '" + s.name + "' on these activations", s.dim, s.pool, shape.c);
}

std::shared_ptr<const BackendDevice> make_backend_device(const std::string& device, const Model& model, bool tf32,
                                                         bool fp16) {
  CudaOptions cuda_options;
  cuda_options.tf32 = tf32;
  cuda_options.fp16 = fp16;
  if (device == "cpu") {
    if (fp16) fail("device 'cpu': FP16 is a CUDA option (the CPU backend computes and stores FP32)");
    return make_cpu_device(model);
  }
  if (device == "cuda") return make_cuda_device(model, cuda_options);
  if (device == "auto") {
    // The first CUDA device when this build can run on it, else the CPU.
    const std::vector<cuda::DeviceInfo> devs = cuda::devices();
    if (!devs.empty() && devs.front().has_code) return make_cuda_device(model, cuda_options);
    return make_cpu_device(model);
  }
  fail("unknown device '", device, "' (valid: cpu, cuda, auto)");
}

}  // namespace gati
