// Architecture records, the network builder, batch-norm folding, model files
// with missing / misshaped / non-finite tensors, the plan, and the Engine's
// input checks.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "engine/plan.h"
#include "engine/staging.h"
#include "test_util.h"
#include "weights/common/checked.h"
#include "weights/model.h"
#include "weights/safetensors.h"

namespace gati {
namespace {

const char* kSmallArch =
    R"({"name":"resnet8","block":"basic","layers":[1,1,1],"widths":[8,16,32],"stem":"cifar","stem_width":8,
        "groups":1,"width_per_group":64,"in_channels":1,"input_size":[12,12],"num_classes":5,"mean":[0.5],"std":[0.25]})";

// Writes a random-weight model for `arch_json`; `edit` may change a tensor
// (name, shape, values) before it is added, or return false to drop it.
using Edit = std::function<bool(const std::string&, std::vector<int64_t>&, std::vector<float>&)>;

std::string write_model(const std::filesystem::path& path, const std::string& arch_json, const Edit& edit = {}) {
  const Network net = describe(Arch::from_json(arch_json));
  SafeTensorsWriter w;
  uint32_t seed = 1;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, std::vector<float> v) {
    if (edit && !edit(name, shape, v)) return;
    w.add_float(name, shape, v);
  };
  for (const ConvSpec& c : net.convs) {
    const size_t wn = size_t(c.cout) * size_t(c.cin / c.groups) * size_t(c.kernel * c.kernel);
    add(c.name + ".weight", {c.cout, c.cin / c.groups, c.kernel, c.kernel}, test::random_floats(wn, seed++, 0.3f));
    add(c.bn + ".weight", {c.cout}, test::random_floats(size_t(c.cout), seed++));
    add(c.bn + ".bias", {c.cout}, test::random_floats(size_t(c.cout), seed++));
    add(c.bn + ".running_mean", {c.cout}, test::random_floats(size_t(c.cout), seed++));
    std::vector<float> var = test::random_floats(size_t(c.cout), seed++);
    for (float& v : var) v = 0.5f + std::abs(v);
    add(c.bn + ".running_var", {c.cout}, var);
  }
  const int classes = net.arch.num_classes;
  add("fc.weight", {classes, net.features}, test::random_floats(size_t(classes * net.features), seed++));
  add("fc.bias", {classes}, test::random_floats(size_t(classes), seed++));
  w.set_metadata("gati.arch", arch_json);
  w.write(path.string());
  return path.string();
}

TEST(Arch, ParsesAndRoundTrips) {
  const Arch a = Arch::from_json(kSmallArch);
  EXPECT_EQ(a.layers, (std::vector<int>{1, 1, 1}));
  EXPECT_EQ(a.stem, StemKind::Cifar);
  const Arch b = Arch::from_json(a.to_json());
  EXPECT_EQ(b.to_json(), a.to_json());
}

TEST(Arch, ErrorsNameTheFieldAndValidChoices) {
  auto with = [](const std::string& key, const nlohmann::json& value) {
    nlohmann::json j = nlohmann::json::parse(kSmallArch);
    if (value.is_null())
      j.erase(key);
    else
      j[key] = value;
    return j.dump();
  };
  EXPECT_GATI_ERROR(Arch::from_json(with("block", "dense")), "'block' = 'dense' (valid: basic, bottleneck)");
  EXPECT_GATI_ERROR(Arch::from_json(with("stem", "vit")), "(valid: imagenet, cifar)");
  EXPECT_GATI_ERROR(Arch::from_json(with("layers", nullptr)), "architecture: missing key 'layers'");
  EXPECT_GATI_ERROR(Arch::from_json(with("widths", {8, 16})), "'layers' has 3 stages but 'widths' has 2");
  EXPECT_GATI_ERROR(Arch::from_json(with("num_classes", 0)),
                    "architecture: 'num_classes' must be an integer in [1, 1048576], got 0");
  EXPECT_GATI_ERROR(Arch::from_json(with("mean", {0.1, 0.2})), "one value per input channel");
  EXPECT_GATI_ERROR(Arch::from_json("{not json"), "not valid JSON");
  {  // planes * width_per_group / 64 rounds to 0: zero-channel convolutions
    nlohmann::json j = nlohmann::json::parse(kSmallArch);
    j["block"] = "bottleneck";
    j["width_per_group"] = 4;
    EXPECT_GATI_ERROR(Arch::from_json(j.dump()), "0 channels");
  }
}

Arch imagenet(const char* block, std::vector<int> layers, int groups = 1, int wpg = 64) {
  nlohmann::json j = {{"block", block},         {"layers", layers},  {"widths", {64, 128, 256, 512}},
                      {"stem", "imagenet"},     {"stem_width", 64},  {"groups", groups},
                      {"width_per_group", wpg}, {"in_channels", 3},  {"input_size", {224, 224}},
                      {"num_classes", 1000},    {"mean", {0, 0, 0}}, {"std", {1, 1, 1}}};
  return Arch::from_json(j.dump());
}

TEST(Network, TorchvisionLayerCounts) {
  // Convolutions (with projections) and residual blocks as torchvision has them.
  const Network r18 = describe(imagenet("basic", {2, 2, 2, 2}));
  EXPECT_EQ(r18.convs.size(), 20u);
  EXPECT_EQ(r18.blocks.size(), 8u);
  const Network r50 = describe(imagenet("bottleneck", {3, 4, 6, 3}));
  EXPECT_EQ(r50.convs.size(), 53u);
  EXPECT_EQ(r50.blocks.size(), 16u);
  EXPECT_EQ(r50.features, 2048);
  const Network rx = describe(imagenet("bottleneck", {3, 4, 6, 3}, 32, 4));
  EXPECT_EQ(rx.convs[2].name, "layer1.0.conv2");
  EXPECT_EQ(rx.convs[2].groups, 32);
  EXPECT_EQ(rx.convs[2].cout, 128);
  const Network wide = describe(imagenet("bottleneck", {3, 4, 6, 3}, 1, 128));
  EXPECT_EQ(wide.convs[1].cout, 128);  // layer1.0.conv1: 64 planes * 2
}

TEST(Plan, ShapesExitsAndArena) {
  const Network r50 = describe(imagenet("bottleneck", {3, 4, 6, 3}));
  const Plan p = make_plan(r50, 4, 224, 224);
  ASSERT_EQ(p.exits.size(), 17u);  // the stem and 16 blocks
  EXPECT_EQ(p.exits[0].name, "stem");
  EXPECT_EQ(p.exits[0].block, -1);
  EXPECT_EQ(p.exits[0].shape.c, 64);  // after the max-pool
  EXPECT_EQ(p.exits[0].shape.h, 56);
  EXPECT_EQ(p.exits[0].after_step, 2);  // input, conv1, maxpool
  EXPECT_EQ(p.exits[1].name, "layer1.0");
  EXPECT_EQ(p.exits[1].block, 0);
  EXPECT_EQ(p.exits[1].shape.c, 256);
  EXPECT_EQ(p.exits[1].shape.h, 56);
  for (size_t e = 0; e < p.exits.size(); ++e) {
    EXPECT_EQ(p.exits[e].id, int(e));
    EXPECT_EQ(exit_points(r50)[e].name, p.exits[e].name);
    EXPECT_EQ(exit_points(r50)[e].channels, p.exits[e].shape.c);
    EXPECT_EQ(exit_point_id(r50, p.exits[e].name), int(e));
  }
  EXPECT_EQ(exit_point_id(r50, "layer9.0"), -1);
  EXPECT_EQ(p.exits.back().shape.h, 7);
  EXPECT_EQ(p.exits.back().shape.c, 2048);
  // resnet50 is ~4.09 GMACs at 224x224.
  EXPECT_NEAR(double(p.macs_per_sample) / 1e9, 4.09, 0.02);
  EXPECT_GE(p.slot_floats, size_t(4) * 112 * 112 * 64);
  for (const Step& s : p.steps)
    if (s.kind == StepKind::Conv) {
      EXPECT_NE(s.in_slot, s.out_slot) << s.name;
      EXPECT_NE(s.residual_slot, s.out_slot) << s.name;
    }
  EXPECT_GATI_ERROR(make_plan(r50, 1, 0, 224), "input size 0x224 is empty");
  // Tiny inputs still plan (every ResNet layer keeps at least 1x1), as in PyTorch.
  EXPECT_EQ(make_plan(r50, 1, 1, 1).exits.back().shape.h, 1);
  EXPECT_GATI_ERROR(make_plan(r50, 0, 224, 224), "batch size must be at least 1");
}

TEST(FoldBatchNorm, MatchesFormula) {
  const std::vector<float> w = {1, 2, 3, 4}, gamma = {2, 0.5f}, beta = {1, -1}, mean = {0.5f, 2}, var = {4, 0.25f};
  const ConvWeights f = fold_batch_norm(w, 2, gamma, beta, mean, var, 0.0);
  EXPECT_FLOAT_EQ(f.weight[0], 1 * 2 / 2.0f);
  EXPECT_FLOAT_EQ(f.weight[3], 4 * 0.5f / 0.5f);
  EXPECT_FLOAT_EQ(f.bias[0], 1 - 0.5f * 1.0f);
  EXPECT_FLOAT_EQ(f.bias[1], -1 - 2 * 1.0f);
  EXPECT_GATI_ERROR(fold_batch_norm(w, 2, gamma, beta, mean, {-1, 1}, 1e-5), "negative");
  // Finite inputs whose folded values are not: a huge gamma over a tiny variance.
  EXPECT_GATI_ERROR(fold_batch_norm({3e38f, 1, 1, 1}, 2, {1e30f, 1}, beta, mean, {1e-30f, 1}, 1e-30),
                    "overflows weight 0");
  EXPECT_GATI_ERROR(fold_batch_norm(w, 2, {1e30f, 1}, beta, {3e38f, 1}, {1e-30f, 1}, 1e-30), "overflows");
}

class ModelFiles : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::scratch_dir("model"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(ModelFiles, LoadsAndRuns) {
  Engine e(write_model(dir_ / "ok.safetensors", kSmallArch));
  EXPECT_EQ(e.model().net.blocks.size(), 3u);
  const auto x = test::random_floats(2 * 12 * 12, 5);
  const std::vector<float> y = e.infer(x.data(), 2);
  ASSERT_EQ(y.size(), 10u);
  // Batch 2 equals two runs of batch 1 up to float rounding: the GEMM
  // splits rows differently by batch, and on some compilers and CPUs (GCC 13
  // on the GPU machine's Xeon) the split changes the rounding in the last bit.
  const std::vector<float> y0 = e.infer(x.data(), 1), y1 = e.infer(x.data() + 144, 1);
  for (int i = 0; i < 5; ++i) {
    EXPECT_NEAR(y[size_t(i)], y0[size_t(i)], 1e-5 * std::abs(y0[size_t(i)]) + 1e-6);
    EXPECT_NEAR(y[size_t(5 + i)], y1[size_t(i)], 1e-5 * std::abs(y1[size_t(i)]) + 1e-6);
  }
}

TEST_F(ModelFiles, MissingTensor) {
  const auto p = write_model(dir_ / "m.safetensors", kSmallArch,
                             [](const std::string& n, auto&, auto&) { return n != "layer2.0.bn1.running_var"; });
  EXPECT_GATI_ERROR(load_model(p), "tensor 'layer2.0.bn1.running_var' is missing");
}

TEST_F(ModelFiles, WrongShape) {
  const auto p = write_model(dir_ / "s.safetensors", kSmallArch, [](const std::string& n, auto& shape, auto& v) {
    if (n == "layer2.0.conv2.weight") {
      shape = {16, 8, 3, 3};
      v.resize(16 * 8 * 9);
    }
    return true;
  });
  EXPECT_GATI_ERROR(load_model(p), "layer2.0.conv2.weight: expected shape [16,16,3,3], file has [16,8,3,3]");
}

TEST_F(ModelFiles, NonFiniteWeight) {
  const auto p = write_model(dir_ / "nan.safetensors", kSmallArch, [](const std::string& n, auto&, auto& v) {
    if (n == "layer3.0.conv1.weight") v[7] = NAN;
    return true;
  });
  EXPECT_GATI_ERROR(load_model(p), "layer3.0.conv1.weight: value 7 is nan");
}

TEST_F(ModelFiles, UnexpectedTensorAndBadMetadata) {
  const std::string deeper = nlohmann::json::parse(kSmallArch).dump();
  nlohmann::json j = nlohmann::json::parse(kSmallArch);
  j["layers"] = {2, 1, 1};
  const auto p = write_model(dir_ / "deep.safetensors", j.dump());
  // The file has layer1.1.*, which a [1,1,1] model does not use.
  std::vector<uint8_t> bytes = test::read_bytes(p);
  const SafeTensorsFile f = SafeTensorsFile::open(p);
  SafeTensorsWriter w;
  for (const auto& n : f.names()) w.add_float(n, f.info(n).shape, f.read_float(n, f.info(n).shape));
  w.set_metadata("gati.arch", deeper);
  w.write((dir_ / "mismatch.safetensors").string());
  EXPECT_GATI_ERROR(load_model((dir_ / "mismatch.safetensors").string()), "does not use: layer1.1.");
  SafeTensorsWriter nometa;
  nometa.add_float("fc.bias", {1}, {1.f});
  nometa.write((dir_ / "nometa.safetensors").string());
  EXPECT_GATI_ERROR(load_model((dir_ / "nometa.safetensors").string()), "metadata key 'gati.arch' is missing");
}

TEST_F(ModelFiles, BadInputsAreRejectedAndEngineStaysUsable) {
  Engine e(write_model(dir_ / "ok.safetensors", kSmallArch));
  auto x = test::random_floats(3 * 12 * 12, 9);
  EXPECT_GATI_ERROR(e.infer(x.data(), 0), "empty batch");
  EXPECT_GATI_ERROR(e.infer(x.data(), 1, 3, 12, 12), "3 channels, but model 'resnet8' takes 1");
  x[2 * 144 + 17] = NAN;
  EXPECT_GATI_ERROR(e.infer(x.data(), 3), "value at [2,0,1,5] is nan");
  x[2 * 144 + 17] = 0.f;
  EXPECT_EQ(e.infer(x.data(), 3).size(), 15u);
  Session s = e.session();
  RunOptions on_device;
  on_device.input_on_device = true;
  EXPECT_GATI_ERROR(s.infer(x.data(), 3, 1, 12, 12, on_device), "reads its input from host memory");
  EXPECT_EQ(s.infer(x.data(), 3, 1, 12, 12).size(), 15u);
  // A different input size gets its own plan.
  const auto big = test::random_floats(20 * 20, 10);
  EXPECT_EQ(e.infer(big.data(), 1, 1, 20, 20).size(), 5u);
}

// The vectorised scan behind every input and weight check: the first bad
// value wherever it sits (block edges, the tail), finite extremes passed.
TEST(FirstNonFinite, FindsTheFirstNanOrInfinityAnywhere) {
  std::vector<float> v = test::random_floats(3000, 4);
  v[5] = std::numeric_limits<float>::max();
  v[6] = -std::numeric_limits<float>::max();
  v[7] = std::numeric_limits<float>::denorm_min();
  v[8] = -0.f;
  EXPECT_EQ(first_non_finite(v.data(), v.size()), v.size());
  EXPECT_EQ(first_non_finite(v.data(), 0), 0u);
  for (size_t at : {size_t(0), size_t(1023), size_t(1024), size_t(2047), size_t(2999)}) {
    for (float bad : {NAN, -NAN, INFINITY, -INFINITY}) {
      std::vector<float> w = v;
      w[at] = bad;
      if (at + 7 < w.size()) w[at + 7] = NAN;  // a later one in the same block is not reported
      EXPECT_EQ(first_non_finite(w.data(), w.size()), at) << "bad value " << bad << " at " << at;
      EXPECT_EQ(first_non_finite(w.data(), at), at) << "a scan that stops before it";
    }
  }
}

// The copy that stages a host input (CUDA): checks in the same pass, piece by
// piece, so the answer is first_non_finite's wherever the value sits, at a
// piece's edges (32768 floats) or in the tail, and a finite input arrives whole.
TEST(CopyCheckingFinite, CopiesAndFindsWhatTheScanFinds) {
  const size_t n = 3 * 32768 + 1000;
  const std::vector<float> v = test::random_floats(n, 5);
  std::vector<float> dst(n, -1.f);
  EXPECT_EQ(copy_checking_finite(dst.data(), v.data(), n), n);
  EXPECT_EQ(dst, v);
  EXPECT_EQ(copy_checking_finite(dst.data(), v.data(), 0), 0u);
  for (size_t at : {size_t(0), size_t(32767), size_t(32768), size_t(65536 + 5), size_t(3 * 32768), n - 1}) {
    std::vector<float> w = v;
    w[at] = at % 2 ? INFINITY : NAN;
    if (at + 40000 < n) w[at + 40000] = NAN;  // a later one, in the next piece, is not reported
    EXPECT_EQ(copy_checking_finite(dst.data(), w.data(), n), at) << "bad value at " << at;
    EXPECT_EQ(first_non_finite(w.data(), n), at);
  }
}

// The threads that stage a large input: every chunk copied and handed on
// once, the first bad value of the whole input reported whichever thread
// found it, and a part stopped by its callback or its start copies no more.
TEST(CopyInChunks, SharesTheChunksAndReportsTheFirstBadValue) {
  const size_t n = 10500, chunk = 1000;  // 11 chunks, the last one short
  const std::vector<float> v = test::random_floats(n, 6);
  struct Seen {
    std::mutex m;
    std::map<size_t, size_t> chunks;  // at -> count
    int starts = 0;
  };
  auto run = [&](const std::vector<float>& src, size_t parts, Seen& seen, size_t stop_at = SIZE_MAX,
                 bool start_ok = true) {
    std::vector<float> dst(n, -1.f);
    const size_t first = copy_in_chunks(
        dst.data(), src.data(), n, {chunk, parts},
        [&](size_t at, size_t count) {
          EXPECT_TRUE(std::equal(src.begin() + long(at), src.begin() + long(at + count), dst.begin() + long(at)));
          std::lock_guard<std::mutex> lock(seen.m);
          EXPECT_TRUE(seen.chunks.emplace(at, count).second) << "chunk at " << at << " handed on twice";
          return at != stop_at;
        },
        [&] {
          std::lock_guard<std::mutex> lock(seen.m);
          ++seen.starts;
          return start_ok;
        });
    return first;
  };
  for (size_t parts : {size_t(1), size_t(4), size_t(20)}) {
    SCOPED_TRACE("parts " + std::to_string(parts));
    Seen all;
    EXPECT_EQ(run(v, parts, all), n);
    ASSERT_EQ(all.chunks.size(), 11u);
    for (const auto& [at, count] : all.chunks) EXPECT_EQ(count, at == 10000 ? 500u : chunk);
    EXPECT_EQ(all.starts, int(std::min<size_t>(parts, 11)) - 1);

    std::vector<float> w = v;
    w[3500] = NAN;       // part 1 of 4 (chunks 2-4)
    w[9001] = INFINITY;  // part 3 of 4 (chunks 8-10)
    Seen bad;
    EXPECT_EQ(run(w, parts, bad), 3500u);
    EXPECT_EQ(bad.chunks.count(3000), 0u) << "the chunk holding the bad value is not handed on";
    for (size_t at : {size_t(0), size_t(1000), size_t(2000)}) EXPECT_EQ(bad.chunks.count(at), 1u) << at;
    if (parts == 1) {
      EXPECT_EQ(bad.chunks.size(), 3u) << "one thread stops at the first bad value";
    }
  }
  Seen stopped;  // chunk 1 (part 0 of 4: chunks 0-1) refused: part 0 stops, the others go on
  EXPECT_EQ(run(v, 4, stopped, 1000), n);
  EXPECT_EQ(stopped.chunks.size(), 11u);
  Seen stopped_early;  // chunk 0 refused: chunk 1 is never copied
  EXPECT_EQ(run(v, 4, stopped_early, 0), n);
  EXPECT_EQ(stopped_early.chunks.count(1000), 0u);
  EXPECT_EQ(stopped_early.chunks.size(), 10u);
  Seen no_start;  // the extra threads could not start: only part 0's chunks
  EXPECT_EQ(run(v, 4, no_start, SIZE_MAX, false), n);
  EXPECT_EQ(no_start.chunks.size(), 2u);
  EXPECT_EQ(no_start.starts, 3);

  std::vector<float> none;
  EXPECT_EQ(copy_in_chunks(none.data(), none.data(), 0, {chunk, 4}, [](size_t, size_t) { return true; }), 0u);
  EXPECT_GATI_ERROR(copy_in_chunks(none.data(), none.data(), 0, {0, 4}, [](size_t, size_t) { return true; }),
                    "chunk and parts must be positive");

  EXPECT_EQ(staging_parts(size_t(31) << 20, size_t(4) << 20, size_t(32) << 20, 4), 1u);
  const size_t parts = staging_parts(size_t(154) << 20, size_t(4) << 20, size_t(32) << 20, 4);
  EXPECT_GE(parts, 1u);
  EXPECT_LE(parts, 4u);
  EXPECT_LE(staging_parts(size_t(33) << 20, size_t(32) << 20, size_t(32) << 20, 4), 2u) << "two chunks";
}

}  // namespace
}  // namespace gati
