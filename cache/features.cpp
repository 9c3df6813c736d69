// Feature collection; see features.h.
#include "cache/features.h"

#include <algorithm>

namespace gati {

CollectedFeatures collect_features(const Engine& engine, const float* images, int n, int batch,
                                   const std::vector<PoolSpec>& pools_in, const ProgressFn& progress) {
  if (batch < 1) fail("collect: batch must be at least 1, got ", batch);
  const Arch& a = engine.arch();
  const Network& net = engine.model().net;
  const std::vector<PoolSpec> pools = pools_in.empty() ? std::vector<PoolSpec>(net.blocks.size()) : pools_in;
  if (pools.size() != net.blocks.size())
    fail("collect: ", pools.size(), " poolings for the model's ", net.blocks.size(), " exits");
  CollectedFeatures out;
  out.per_exit.resize(net.blocks.size());
  for (size_t b = 0; b < net.blocks.size(); ++b) out.dims.push_back(pools[b].features(net.blocks[b].out_channels));
  Session session = engine.session();
  std::unique_ptr<Buffer> pooled;
  std::vector<float> host;
  const size_t per = size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w);
  std::vector<SampleResult> results;
  RunOptions opts;
  opts.observer = [&](const ExitPoint& e, BackendContext& ctx, const float* act, int rows, const int32_t*) {
    const size_t need = size_t(rows) * size_t(out.dims[size_t(e.block)]);
    if (!pooled || pooled->bytes() < need * sizeof(float)) pooled = ctx.allocate(need * sizeof(float));
    ctx.pool_features(act, e.shape.with_batch(rows), pools[size_t(e.block)], pooled->floats());
    host.resize(need);
    ctx.to_host(pooled->floats(), need * sizeof(float), host.data());
    ctx.synchronize();
    std::vector<float>& dst = out.per_exit[size_t(e.block)];
    dst.insert(dst.end(), host.begin(), host.end());
  };
  for (int s = 0; s < n; s += batch) {
    const int nb = std::min(batch, n - s);
    results.resize(size_t(nb));
    session.run(images + size_t(s) * per, nb, a.in_channels, a.input_h, a.input_w, results.data(), nullptr, opts);
    for (const SampleResult& r : results) out.full_labels.push_back(r.label);
    if (progress) progress(size_t(s + nb), size_t(n));
  }
  return out;
}

}  // namespace gati
