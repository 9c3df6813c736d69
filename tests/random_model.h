// In-memory random-weight models and exit heads for runtime tests: no files,
// seeded, never zeros.  Folded weights are drawn directly (the folding itself
// is tested in test_model.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/plan.h"
#include "loaders/fashion_mnist.h"
#include "test_util.h"
#include "weights/model.h"

namespace gati::test {

// A CIFAR-style resnet8 (widths 8/16/32, 3 blocks = 3 exits) on 1x12x12 input, 5 classes.
inline const char* kTinyArch =
    R"({"name":"resnet8","block":"basic","layers":[1,1,1],"widths":[8,16,32],"stem":"cifar","stem_width":8,
        "groups":1,"width_per_group":64,"in_channels":1,"input_size":[12,12],"num_classes":5,"mean":[0.5],"std":[0.25]})";
// The same family one stage deeper per stage: 6 blocks, 6 exits.
inline const char* kSmallArch =
    R"({"name":"resnet14","block":"basic","layers":[2,2,2],"widths":[8,16,32],"stem":"cifar","stem_width":8,
        "groups":1,"width_per_group":64,"in_channels":1,"input_size":[16,16],"num_classes":6,"mean":[0.5],"std":[0.25]})";

inline Model random_model(const std::string& arch_json, uint32_t seed) {
  Model m;
  m.net = describe(Arch::from_json(arch_json));
  for (const ConvSpec& c : m.net.convs) {
    const size_t fan_in = size_t(c.cin / c.groups) * size_t(c.kernel * c.kernel);
    ConvWeights w;
    w.weight = random_floats(size_t(c.cout) * fan_in, seed++, float(std::sqrt(2.0 / double(fan_in))));
    w.bias = random_floats(size_t(c.cout), seed++, 0.1f);
    m.convs.push_back(std::move(w));
  }
  const int classes = m.arch().num_classes;
  m.fc_weight = random_floats(size_t(classes) * size_t(m.net.features), seed++, 0.3f);
  m.fc_bias = random_floats(size_t(classes), seed++, 0.1f);
  m.path = "random:" + m.arch().name;
  return m;
}

// A data set for traces: 50 random 1x4x4 images of 5 classes, named "tiny".
inline Dataset tiny_dataset() {
  Dataset d;
  d.name = "tiny";
  d.n = 50;
  d.c = 1;
  d.h = d.w = 4;
  d.classes = 5;
  d.images = random_floats(50 * 16, 3);
  for (int i = 0; i < 50; ++i) d.labels.push_back(i % 5);
  return d;
}

// A random linear head at every exit point of `model` (the stem and every
// block), all with `threshold`.
inline std::vector<ExitHeadSpec> random_heads(const Model& model, uint32_t seed, float threshold,
                                              const std::vector<PoolSpec>& pools = {}) {
  std::vector<ExitHeadSpec> heads;
  const std::vector<ExitPointInfo> points = exit_points(model.net);
  for (size_t e = 0; e < points.size(); ++e) {
    ExitHeadSpec h;
    h.exit = int(e);
    h.name = points[e].name;
    h.pool = pools.empty() ? PoolSpec{} : pools[e % pools.size()];  // cycled over the exits
    h.dim = h.pool.features(points[e].channels);
    h.classes = model.arch().num_classes;
    h.mean = random_floats(size_t(h.dim), seed++, 0.2f);
    h.inv_std.assign(size_t(h.dim), 1.0f);
    for (float& v : h.inv_std) v += 0.5f * std::abs(random_floats(1, seed++)[0]);
    h.weight = random_floats(size_t(h.dim) * size_t(h.classes), seed++, 0.5f);
    h.bias = random_floats(size_t(h.classes), seed++, 0.5f);
    h.threshold = threshold;
    heads.push_back(std::move(h));
  }
  return heads;
}

}  // namespace gati::test
