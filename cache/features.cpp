// Feature collection; see features.h.
#include "cache/features.h"

#include <algorithm>
#include <cstdint>

namespace gati {

CollectedFeatures collect_features(const Engine& engine, const float* images, int n, int batch,
                                   const std::vector<PoolSpec>& pools, const ProgressFn& progress) {
  Session session = engine.session();
  return collect_features(session, images, n, batch, pools, progress);
}

CollectedFeatures collect_features(Session& session, const float* images, int n, int batch,
                                   const std::vector<PoolSpec>& pools_in, const ProgressFn& progress) {
  if (batch < 1) fail("collect: batch must be at least 1, got ", batch);
  const Arch& a = session.model().arch();
  const std::vector<ExitPointInfo> points = exit_points(session.model().net);
  const std::vector<PoolSpec> pools = pools_in.empty() ? std::vector<PoolSpec>(points.size()) : pools_in;
  if (pools.size() != points.size())
    fail("collect: ", pools.size(), " poolings for the model's ", points.size(), " exit points");
  CollectedFeatures out;
  out.per_exit.resize(points.size());
  for (size_t e = 0; e < points.size(); ++e) out.dims.push_back(pools[e].features(points[e].channels));
  std::unique_ptr<Buffer> pooled;
  std::vector<float> host;
  const size_t per = size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w);
  std::vector<SampleResult> results;
  std::vector<float> logits;
  const size_t classes = size_t(a.num_classes);
  out.full_logits.reserve(size_t(std::max(n, 0)) * classes);
  RunOptions opts;
  opts.observer = [&](const ExitPoint& e, BackendContext& ctx, const float* act, int rows, const int32_t*) {
    const size_t need = size_t(rows) * size_t(out.dims[size_t(e.id)]);
    if (!pooled || pooled->bytes() < need * sizeof(float)) pooled = ctx.allocate(need * sizeof(float));
    ctx.pool_features(act, e.shape.with_batch(rows), pools[size_t(e.id)], pooled->floats());
    host.resize(need);
    ctx.to_host(pooled->floats(), need * sizeof(float), host.data());
    ctx.synchronize();
    std::vector<float>& dst = out.per_exit[size_t(e.id)];
    dst.insert(dst.end(), host.begin(), host.end());
  };
  for (int s = 0; s < n; s += batch) {
    const int nb = std::min(batch, n - s);
    results.resize(size_t(nb));
    logits.resize(size_t(nb) * classes);
    session.run(images + size_t(s) * per, nb, a.in_channels, a.input_h, a.input_w, results.data(), logits.data(), opts);
    out.full_logits.insert(out.full_logits.end(), logits.begin(), logits.end());
    for (const SampleResult& r : results) {
      out.full_labels.push_back(r.label);
      out.full_conf.push_back(r.confidence);
    }
    if (progress) progress(size_t(s + nb), size_t(n));
  }
  return out;
}

}  // namespace gati
