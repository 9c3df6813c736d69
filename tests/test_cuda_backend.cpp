// The CUDA backend as a whole against the CPU backend, its oracle: logits of
// random-weight models of every block kind and stem (FP32, TF32 off: within
// 1e-4 of the largest logit), exit decisions with the same cache models
// (identical exits and labels, confidences within 1e-5), batches 1, 3 and 8,
// several threads sharing one engine, the server, recorded CUDA graphs, and
// per-layer timing from CUDA events.  Without a GPU every test here skips with the reason, except
// the one that checks what a user without a GPU is told.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "cache/learned_cache.h"
#include "engine/engine.h"
#include "engine/server.h"
#include "kernels/cuda/cuda_device.h"
#include "kernels/cuda/plan_store.h"
#include "random_model.h"
#include "test_util.h"
#include "weights/common/error.h"

namespace gati {
namespace {

using test::random_floats;

// An ImageNet stem and grouped bottlenecks (ResNeXt-style), small enough for
// a quick test but with every step kind: 7x7/2 stem, max-pool, 1x1/3x3/1x1
// with projections and strides, 10 classes.
const char* kBottleneckArch =
    R"({"name":"resnext_tiny","block":"bottleneck","layers":[1,2,1],"widths":[16,32,64],"stem":"imagenet",
        "stem_width":16,"groups":4,"width_per_group":8,"in_channels":3,"input_size":[48,48],"num_classes":10,
        "mean":[0.5,0.5,0.5],"std":[0.25,0.25,0.25]})";

std::string cuda_unavailable() {
  std::string why;
  const std::vector<cuda::DeviceInfo> devs = cuda::devices(&why);
  if (!cuda::built_with_cuda()) return why;
  if (devs.empty()) return why;
  if (!devs.front().has_code) return "this build has no code for " + devs.front().name;
  return {};
}

#define SKIP_WITHOUT_GPU()                                                       \
  do {                                                                           \
    const std::string why = cuda_unavailable();                                  \
    if (!why.empty()) GTEST_SKIP() << "CUDA backend not runnable here: " << why; \
  } while (0)

struct Pair {
  Engine cpu, gpu;
  Pair(const Model& m) : cpu(m, {"cpu", 0}), gpu(m, {"cuda", 0}) {}
};

double max_rel_error(const std::vector<float>& got, const std::vector<float>& want) {
  double max_ref = 0, max_err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i]) || std::isnan(got[i])) {
      if (std::isnan(want[i]) != std::isnan(got[i])) return INFINITY;
      continue;
    }
    max_ref = std::max(max_ref, std::abs(double(want[i])));
    max_err = std::max(max_err, std::abs(double(got[i]) - double(want[i])));
  }
  return max_ref > 0 ? max_err / max_ref : max_err;
}

// Every head of `specs` with threshold t.
std::vector<ExitHeadSpec> with_threshold(std::vector<ExitHeadSpec> specs, float t) {
  for (ExitHeadSpec& h : specs) h.threshold = t;
  return specs;
}

// random_heads' weights saturate the top softmax (confidence 1 in float) at
// every exit, so a threshold sends every sample out at the first exit or
// none, and the tests would check neither compaction nor the later exits.
// This scales each head's weights and bias (on the CPU, the oracle) until its
// median confidence over random inputs like the tests' (32, scaled by 2, from
// `seed`) sits midway between chance and 1, rounds them to halves if asked,
// then sets the threshold at which those inputs mix most evenly: some
// answered at an exit, some by the full model.  The tests count the mix in
// their own runs and require it.
std::vector<ExitHeadSpec> mixing_heads(const Engine& cpu, std::vector<ExitHeadSpec> specs, uint32_t seed,
                                       bool halves = false) {
  const Arch& a = cpu.arch();
  const int n = 8, batches = 4;
  const size_t per = size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w);
  std::vector<std::vector<float>> inputs;
  for (int b = 0; b < batches; ++b) inputs.push_back(random_floats(size_t(n) * per, seed + uint32_t(b), 2.0f));
  Session s = cpu.session();
  auto answers = [&](const std::vector<ExitHeadSpec>& heads_specs) {
    const std::shared_ptr<const ExitHeads> heads = cpu.make_exit_heads(heads_specs);
    RunOptions o;
    o.heads = heads.get();
    std::vector<SampleResult> all;
    for (const std::vector<float>& x : inputs) {
      std::vector<SampleResult> r(static_cast<size_t>(n));
      s.run(x.data(), n, a.in_channels, a.input_h, a.input_w, r.data(), nullptr, o);
      all.insert(all.end(), r.begin(), r.end());
    }
    return all;
  };
  // Head e alone, answering every sample (threshold 0): its confidences.
  auto confidences_at = [&](size_t e, const ExitHeadSpec& head) {
    std::vector<ExitHeadSpec> only = specs;
    for (ExitHeadSpec& h : only) h.threshold = 2.f;
    only[e] = head;
    only[e].threshold = 0.f;
    std::vector<float> c;
    for (const SampleResult& r : answers(only)) c.push_back(r.confidence);
    std::sort(c.begin(), c.end());
    return c;
  };
  auto scaled = [&](const ExitHeadSpec& h, double f) {
    ExitHeadSpec out = h;
    for (float& w : out.weight) w = float(w * f);
    for (float& b : out.bias) b = float(b * f);
    if (halves) round_weights_to_half(out);
    return out;
  };
  const double target = 0.5 * (1.0 / a.num_classes + 1.0);
  std::vector<float> all;
  for (size_t e = 0; e < specs.size(); ++e) {
    double lo = -10, hi = 0;  // log2 of the scale
    for (int it = 0; it < 14; ++it) {
      const double mid = 0.5 * (lo + hi);
      const std::vector<float> c = confidences_at(e, scaled(specs[e], std::exp2(mid)));
      (c[c.size() / 2] < target ? lo : hi) = mid;
    }
    specs[e] = scaled(specs[e], std::exp2(0.5 * (lo + hi)));
    const std::vector<float> c = confidences_at(e, specs[e]);
    all.insert(all.end(), c.begin(), c.end());
  }
  std::sort(all.begin(), all.end());
  float best = 2.f;
  int best_even = -1;
  for (size_t q = 1; q < 16; ++q) {
    const float t = all[all.size() * q / 16];
    int early = 0, full = 0;
    for (const SampleResult& r : answers(with_threshold(specs, t))) (r.exit == kFullModel ? full : early)++;
    if (std::min(early, full) > best_even) {
      best_even = std::min(early, full);
      best = t;
    }
  }
  return with_threshold(specs, best);
}

// Counts where a run's answers came from.
struct Mix {
  int early = 0, full = 0;
  std::map<int, int> by_exit;
  void add(const SampleResult& r) {
    (r.exit == kFullModel ? full : early)++;
    ++by_exit[r.exit];
  }
  std::string text() const {
    std::string t;
    for (const auto& [exit, count] : by_exit) t += " " + std::to_string(exit) + ":" + std::to_string(count);
    return t;
  }
};

TEST(CudaBackend, WithoutAGpuTheErrorSaysWhyAndAutoFallsBackToTheCpu) {
  if (cuda_unavailable().empty()) GTEST_SKIP() << "a CUDA device is present; this test is for machines without one";
  const Model m = test::random_model(test::kTinyArch, 3);
  try {
    Engine e(m, {"cuda", 0});
    FAIL() << "device 'cuda' constructed without a usable GPU";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("device 'cuda'"), std::string::npos) << what;
    EXPECT_NE(what.find("cpu"), std::string::npos) << "the error should point at the CPU backend: " << what;
  }
  Engine automatic(m, {"auto", 0});
  EXPECT_EQ(automatic.device_name(), "cpu");
}

TEST(CudaBackend, WholeModelLogitsMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 100;
  for (const char* arch : {test::kTinyArch, test::kSmallArch, kBottleneckArch}) {
    const Model m = test::random_model(arch, seed++);
    Pair p(m);
    const Arch& a = m.arch();
    for (int n : {1, 3, 8}) {
      SCOPED_TRACE(a.name + " batch " + std::to_string(n));
      const std::vector<float> x =
          random_floats(size_t(n) * size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w), seed++);
      const std::vector<float> want = p.cpu.infer(x.data(), n), got = p.gpu.infer(x.data(), n);
      ASSERT_EQ(got.size(), want.size());
      EXPECT_LE(max_rel_error(got, want), 1e-4);
    }
  }
}

TEST(CudaBackend, ExitDecisionsMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 200;
  for (const char* arch : {test::kSmallArch, kBottleneckArch}) {
    const Model m = test::random_model(arch, seed++);
    Pair p(m);
    const Arch& a = m.arch();
    // Heads as they come, and rounded to halves as gati cache build leaves
    // them (both backends then read the weights as halves), at a threshold
    // that some samples reach at some exits and others never do.
    for (bool halves : {false, true}) {
      const std::vector<ExitHeadSpec> specs = mixing_heads(p.cpu, test::random_heads(m, seed, 2.f), seed + 1, halves);
      seed += 2;
      const auto cpu_heads = p.cpu.make_exit_heads(specs), gpu_heads = p.gpu.make_exit_heads(specs);
      EXPECT_EQ(gpu_heads->view(0).weight_f16 != nullptr, halves);
      Session cs = p.cpu.session(), gs = p.gpu.session();
      Mix mix;
      for (int n : {1, 3, 8}) {
        SCOPED_TRACE(a.name + (halves ? " halves" : "") + " batch " + std::to_string(n));
        const std::vector<float> x =
            random_floats(size_t(n) * size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w), seed++, 2.0f);
        std::vector<SampleResult> rc(static_cast<size_t>(n)), rg(static_cast<size_t>(n));
        std::vector<float> lc(size_t(n) * size_t(a.num_classes)), lg(lc.size());
        RunOptions oc, og;
        oc.heads = cpu_heads.get();
        og.heads = gpu_heads.get();
        cs.run(x.data(), n, a.in_channels, a.input_h, a.input_w, rc.data(), lc.data(), oc);
        gs.run(x.data(), n, a.in_channels, a.input_h, a.input_w, rg.data(), lg.data(), og);
        for (int i = 0; i < n; ++i) {
          EXPECT_EQ(rg[size_t(i)].exit, rc[size_t(i)].exit) << "sample " << i;
          EXPECT_EQ(rg[size_t(i)].label, rc[size_t(i)].label) << "sample " << i;
          EXPECT_NEAR(rg[size_t(i)].confidence, rc[size_t(i)].confidence, 1e-5) << "sample " << i;
          mix.add(rc[size_t(i)]);
        }
        EXPECT_LE(max_rel_error(lg, lc), 1e-4);
      }
      EXPECT_GT(mix.early, 0) << a.name << ": no sample left early";
      EXPECT_GT(mix.full, 0) << a.name << ": every sample left early (compaction's survivors untested)";
      std::printf("[cuda exits] %s%s: %d samples exited early, %d ran the full model; by exit%s\n", a.name.c_str(),
                  halves ? " (weights as halves)" : "", mix.early, mix.full, mix.text().c_str());
    }
  }
}

// On-device learning (engine/learner.h) on the GPU against the same on the
// CPU, its oracle: the same requests give the same answers while the heads
// learn (steps and publications queued in the stream between runs, batch-1
// runs replayed as recorded graphs that read the published weights), the
// same number of steps, and weights within 1e-4 of each other.
TEST(CudaBackend, LearnerFollowsTheCpuLearner) {
  SKIP_WITHOUT_GPU();
  const Model m = test::random_model(test::kSmallArch, 910);
  Pair p(m);
  const Arch& a = m.arch();
  const size_t per = size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w);
  const std::vector<ExitHeadSpec> specs = mixing_heads(p.cpu, test::random_heads(m, 911, 2.f), 912);
  LearnerOptions lo;
  lo.batch = 4;
  lo.hyper = {0.02f, 0.9f, 5e-4f};
  for (int n : {1, 3}) {
    SCOPED_TRACE("batch " + std::to_string(n));
    Session cs = p.cpu.session(), gs = p.gpu.session();
    std::unique_ptr<HeadLearner> cl = cs.make_learner(specs, lo), gl = gs.make_learner(specs, lo);
    RunOptions oc, og;
    oc.learner = cl.get();
    og.learner = gl.get();
    Mix mix;
    for (int r = 0; r < 40; ++r) {
      const std::vector<float> x = random_floats(size_t(n) * per, uint32_t(920 + r), 2.0f);
      std::vector<SampleResult> rc(static_cast<size_t>(n)), rg(static_cast<size_t>(n));
      cs.run(x.data(), n, a.in_channels, a.input_h, a.input_w, rc.data(), nullptr, oc);
      gs.run(x.data(), n, a.in_channels, a.input_h, a.input_w, rg.data(), nullptr, og);
      for (int i = 0; i < n; ++i) {
        ASSERT_EQ(rg[size_t(i)].exit, rc[size_t(i)].exit) << "request " << r << " sample " << i;
        ASSERT_EQ(rg[size_t(i)].label, rc[size_t(i)].label) << "request " << r << " sample " << i;
        // 1e-4: once the heads have learned, their weights differ in the
        // last bits (the GPU sums the gradient in another order).
        EXPECT_NEAR(rg[size_t(i)].confidence, rc[size_t(i)].confidence, 1e-4) << "request " << r;
        mix.add(rc[size_t(i)]);
      }
    }
    const LearnerStats sc = cl->stats(), sg = gl->stats();
    EXPECT_EQ(sg.learned, sc.learned);
    EXPECT_EQ(sg.steps, sc.steps);
    EXPECT_EQ(sg.rejected, 0) << sg.last_rejection;
    EXPECT_GT(sc.steps, 0);
    EXPECT_NEAR(sg.last_loss, sc.last_loss, 1e-5 * (1 + sc.last_loss));
    const std::vector<ExitHeadSpec> wc = cl->specs(), wg = gl->specs();
    for (size_t e = 0; e < wc.size(); ++e) {
      EXPECT_LE(max_rel_error(wg[e].weight, wc[e].weight), 1e-4) << wc[e].name;
      EXPECT_LE(max_rel_error(wg[e].bias, wc[e].bias), 1e-4) << wc[e].name;
    }
    EXPECT_GT(mix.early, 0) << "no answer from an exit";
    std::printf("[cuda learner] batch %d: %d answers from exits, %d from the full model (by exit%s), %lld steps\n", n,
                mix.early, mix.full, mix.text().c_str(), static_cast<long long>(sg.steps));
  }
}

// FP16 storage (CudaOptions::fp16): activations and convolution weights as
// halves, FP32 arithmetic inside every op, NHWC: logits within 1e-2 of the
// CPU's for every block kind and stem, and exit decisions the CPU's except
// where a confidence sits within FP16's rounding of the threshold.
TEST(CudaBackend, Fp16LogitsAndExitsFollowTheCpu) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 800;
  for (const char* arch : {test::kTinyArch, test::kSmallArch, kBottleneckArch}) {
    const Model m = test::random_model(arch, seed++);
    const Arch& a = m.arch();
    EngineOptions half;
    half.device = "cuda";
    half.fp16 = true;
    Engine cpu(m, {"cpu", 0}), gpu(m, half);
    EXPECT_NE(gpu.device_name().find("FP16"), std::string::npos) << gpu.device_name();
    const std::vector<ExitHeadSpec> specs = mixing_heads(cpu, test::random_heads(m, seed, 2.f), seed + 1);
    seed += 2;
    const auto cpu_heads = cpu.make_exit_heads(specs), gpu_heads = gpu.make_exit_heads(specs);
    Session cs = cpu.session(), gs = gpu.session();
    int same = 0, total = 0;
    Mix mix;
    for (int n : {1, 3, 8}) {
      SCOPED_TRACE(a.name + " batch " + std::to_string(n));
      const std::vector<float> x =
          random_floats(size_t(n) * size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w), seed++, 2.0f);
      EXPECT_LE(max_rel_error(gpu.infer(x.data(), n), cpu.infer(x.data(), n)), 1e-2);
      std::vector<SampleResult> rc(static_cast<size_t>(n)), rg(static_cast<size_t>(n));
      RunOptions oc, og;
      oc.heads = cpu_heads.get();
      og.heads = gpu_heads.get();
      cs.run(x.data(), n, a.in_channels, a.input_h, a.input_w, rc.data(), nullptr, oc);
      gs.run(x.data(), n, a.in_channels, a.input_h, a.input_w, rg.data(), nullptr, og);
      for (int i = 0; i < n; ++i) {
        ++total;
        mix.add(rc[size_t(i)]);
        if (rg[size_t(i)].exit != rc[size_t(i)].exit || rg[size_t(i)].label != rc[size_t(i)].label) continue;
        ++same;
        EXPECT_NEAR(rg[size_t(i)].confidence, rc[size_t(i)].confidence, 1e-2) << "sample " << i;
      }
    }
    EXPECT_GE(same, total * 3 / 4) << "FP16 changed most exit decisions";
    EXPECT_GT(mix.early, 0) << a.name << ": no sample left early on the CPU";
    EXPECT_GT(mix.full, 0) << a.name << ": every sample left early on the CPU";
    std::printf("[cuda fp16] %s: %d of %d exit decisions as on the CPU (CPU by exit%s)\n", a.name.c_str(), same, total,
                mix.text().c_str());
  }
}

// RunOptions::input_on_device: no host copy, the same answers bit for bit
// (host and device inputs alternate, so a graph recorded for one replays for
// the other), the check on the device names the bad value like the host's,
// and the session serves on after a refusal.
TEST(CudaBackend, InputAlreadyOnTheDeviceAnswersAsFromTheHostAndIsChecked) {
  SKIP_WITHOUT_GPU();
  const Model m = test::random_model(kBottleneckArch, 400);
  Engine e(m, {"cuda", 0});
  const Arch& a = m.arch();
  Session s = e.session();
  RunOptions on_device;
  on_device.input_on_device = true;
  const size_t per = size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w);
  for (int n : {1, 8}) {
    SCOPED_TRACE("batch " + std::to_string(n));
    std::vector<float> x = random_floats(per * size_t(n), 401 + uint32_t(n));
    std::unique_ptr<Buffer> dev = s.context().allocate(x.size() * sizeof(float));
    s.context().from_host(x.data(), x.size() * sizeof(float), dev->data());
    s.context().synchronize();
    const std::vector<float> want = s.infer(x.data(), n, a.in_channels, a.input_h, a.input_w);
    for (int round = 0; round < 3; ++round) {
      EXPECT_EQ(s.infer(dev->floats(), n, a.in_channels, a.input_h, a.input_w, on_device), want) << "round " << round;
      EXPECT_EQ(s.infer(x.data(), n, a.in_channels, a.input_h, a.input_w), want) << "round " << round;
    }
    if (n < 2) continue;
    x[per + 2 * size_t(a.input_h) * size_t(a.input_w) + 5 * size_t(a.input_w) + 7] = NAN;  // sample 1, channel 2
    s.context().from_host(x.data(), x.size() * sizeof(float), dev->data());
    s.context().synchronize();
    EXPECT_GATI_ERROR(s.infer(dev->floats(), n, a.in_channels, a.input_h, a.input_w, on_device),
                      "value at [1,2,5,7] is nan");
    EXPECT_GATI_ERROR(s.infer(x.data(), n, a.in_channels, a.input_h, a.input_w, on_device), "is not device memory");
    // From the host the check happens where the input is copied into pinned memory, in the same pass.
    EXPECT_GATI_ERROR(s.infer(x.data(), n, a.in_channels, a.input_h, a.input_w), "value at [1,2,5,7] is nan");
    x[per + 2 * size_t(a.input_h) * size_t(a.input_w) + 5 * size_t(a.input_w) + 7] = 0.f;
    EXPECT_EQ(s.infer(x.data(), n, a.in_channels, a.input_h, a.input_w).size(), size_t(n) * size_t(a.num_classes));
  }
  // 1400 samples (38.7 MB: ten chunks of the pinned copy, shared by threads) with bad values in two threads'
  // parts: the first is reported, after the chunks already issued have landed, and the next run answers as
  // before.
  const int big = 1400;
  std::vector<float> x = random_floats(per * size_t(big), 402);
  const std::vector<float> want = s.infer(x.data(), big, a.in_channels, a.input_h, a.input_w);
  const size_t early = per * 500 + 3, late = per * 1390 + 2 * size_t(a.input_w);  // [500,0,0,3], [1390,0,2,0]
  const float kept_early = x[early], kept_late = x[late];
  x[early] = NAN;
  x[late] = -INFINITY;
  EXPECT_GATI_ERROR(s.infer(x.data(), big, a.in_channels, a.input_h, a.input_w), "value at [500,0,0,3] is nan");
  x[early] = kept_early;
  EXPECT_GATI_ERROR(s.infer(x.data(), big, a.in_channels, a.input_h, a.input_w), "value at [1390,0,2,0] is -inf");
  x[late] = kept_late;
  EXPECT_EQ(s.infer(x.data(), big, a.in_channels, a.input_h, a.input_w), want);
}

TEST(CudaBackend, ThreadsSharingOneEngineAndTheServerAgree) {
  SKIP_WITHOUT_GPU();
  const Model m = test::random_model(test::kSmallArch, 300);
  Engine e(m, {"cuda", 0});
  const Arch& a = m.arch();
  const size_t per = size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w);
  const int n = 16;
  const std::vector<float> x = random_floats(per * n, 301);
  const std::vector<float> want = e.infer(x.data(), n);
  std::vector<std::thread> threads;
  std::vector<double> errors(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int r = 0; r < 5; ++r)
        errors[size_t(t)] = std::max(errors[size_t(t)], max_rel_error(e.infer(x.data(), n), want));
    });
  for (auto& t : threads) t.join();
  for (double err : errors) EXPECT_LE(err, 1e-6);

  ServerOptions so;
  so.workers = 2;
  so.max_batch = 4;
  Server server(e, so);
  std::vector<std::future<ServeResult>> futures;
  for (int i = 0; i < n; ++i)
    futures.push_back(server.submit({x.begin() + long(per) * i, x.begin() + long(per) * (i + 1)}));
  for (int i = 0; i < n; ++i) {
    const ServeResult r = futures[size_t(i)].get();
    const std::vector<float> row(want.begin() + long(a.num_classes) * i, want.begin() + long(a.num_classes) * (i + 1));
    EXPECT_LE(max_rel_error(r.logits, row), 1e-4) << "request " << i;
  }
}

// CUDA graphs: a segment's second run is recorded, later ones replay.  Each
// run takes a fresh input (a replay must read the new one), batch sizes go
// up and down (scratch grows, and the graphs holding the old addresses must
// go), and two sets of heads alternate (a graph reads its own heads).
TEST(CudaBackend, RecordedGraphsAnswerWhatTheCpuAnswers) {
  SKIP_WITHOUT_GPU();
  const Model m = test::random_model(kBottleneckArch, 500);
  Pair p(m);
  const Arch& a = m.arch();
  const std::vector<ExitHeadSpec> specs_a = mixing_heads(p.cpu, test::random_heads(m, 501, 2.f), 503),
                                  specs_b = mixing_heads(p.cpu, test::random_heads(m, 502, 2.f), 504);
  const auto cpu_a = p.cpu.make_exit_heads(specs_a), gpu_a = p.gpu.make_exit_heads(specs_a);
  const auto cpu_b = p.cpu.make_exit_heads(specs_b), gpu_b = p.gpu.make_exit_heads(specs_b);
  Session cs = p.cpu.session(), gs = p.gpu.session();
  struct Run {
    int n;
    char heads;  // '-', 'a' or 'b'
  };
  const Run runs[] = {{1, '-'}, {1, '-'}, {1, '-'}, {8, 'a'}, {8, 'a'}, {8, 'a'}, {1, '-'}, {1, '-'}, {1, '-'},
                      {3, 'b'}, {3, 'a'}, {3, 'b'}, {3, 'a'}, {3, 'b'}, {8, 'b'}, {8, 'b'}, {1, 'a'}, {1, 'a'}};
  uint32_t seed = 510;
  Mix mix;
  for (size_t k = 0; k < std::size(runs); ++k) {
    const Run& r = runs[k];
    SCOPED_TRACE("run " + std::to_string(k) + ": batch " + std::to_string(r.n) + " heads " + r.heads);
    const std::vector<float> x =
        random_floats(size_t(r.n) * size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w), seed++, 2.0f);
    std::vector<SampleResult> rc(size_t(r.n)), rg(size_t(r.n));
    std::vector<float> lc(size_t(r.n) * size_t(a.num_classes)), lg(lc.size());
    RunOptions oc, og;
    oc.heads = r.heads == 'a' ? cpu_a.get() : r.heads == 'b' ? cpu_b.get() : nullptr;
    og.heads = r.heads == 'a' ? gpu_a.get() : r.heads == 'b' ? gpu_b.get() : nullptr;
    cs.run(x.data(), r.n, a.in_channels, a.input_h, a.input_w, rc.data(), lc.data(), oc);
    gs.run(x.data(), r.n, a.in_channels, a.input_h, a.input_w, rg.data(), lg.data(), og);
    for (int i = 0; i < r.n; ++i) {
      EXPECT_EQ(rg[size_t(i)].exit, rc[size_t(i)].exit) << "sample " << i;
      EXPECT_EQ(rg[size_t(i)].label, rc[size_t(i)].label) << "sample " << i;
      EXPECT_NEAR(rg[size_t(i)].confidence, rc[size_t(i)].confidence, 1e-5) << "sample " << i;
      if (r.heads != '-') mix.add(rc[size_t(i)]);
    }
    EXPECT_LE(max_rel_error(lg, lc), 1e-4);
    if (k == 2) {
      EXPECT_GE(gs.context().graph_launches(), 2) << "the third batch-1 run should replay a graph";
    }
  }
  EXPECT_GT(mix.early, 0) << "no sample left early: the heads' segments were not exercised";
  EXPECT_GT(mix.full, 0) << "every sample left early: the segments after compaction were not exercised";
  std::printf("[cuda graphs] %lld graph launches over %zu runs; with heads, answers by exit%s\n",
              static_cast<long long>(gs.context().graph_launches()), std::size(runs), mix.text().c_str());
}

// ---- the cuDNN plan cache: its file on every machine, its use on a GPU ----

cuda::PlanRecord graph_record(int rank, int64_t engine, bool fused) {
  cuda::PlanRecord r;
  r.graph = true;
  r.rank = rank;
  r.engine = engine;
  r.fused = fused;
  r.ms = 0.25f;
  return r;
}

cuda::PlanRecord legacy_record(int algo, bool fused) {
  cuda::PlanRecord r;
  r.graph = false;
  r.algo = algo;
  r.math = 1;
  r.fused = fused;
  r.ms = 0.5f;
  return r;
}

TEST(PlanStore, KeepsTimedChoicesAcrossARestart) {
  const auto dir = test::scratch_dir("plans_restart");
  const std::string path = (dir / "sub" / "plans.json").string();  // the folder is made on save
  {
    cuda::PlanStore s(path, "H100 sm_90, cudnn 91900");
    EXPECT_FALSE(s.find("64,64,3,1,1,1 n1 56x56 relu").has_value());
    s.put("64,64,3,1,1,1 n1 56x56 relu", graph_record(2, 11, true));
    s.put("256,64,1,1,0,1 n8 56x56", legacy_record(1, false));
    EXPECT_TRUE(s.save());
  }
  cuda::PlanStore again(path, "H100 sm_90, cudnn 91900");
  EXPECT_EQ(again.ignored(), "");
  EXPECT_EQ(again.size(), 2u);
  ASSERT_TRUE(again.find("64,64,3,1,1,1 n1 56x56 relu").has_value());
  EXPECT_TRUE(*again.find("64,64,3,1,1,1 n1 56x56 relu") == graph_record(2, 11, true));
  EXPECT_TRUE(*again.find("256,64,1,1,0,1 n8 56x56") == legacy_record(1, false));
  EXPECT_FALSE(again.find("256,64,1,1,0,1 n8 56x56 relu").has_value());
  std::filesystem::remove_all(dir);
}

// One file, one section per context (GPU, cuDNN, layout, precision,
// switches): a store sees and rewrites its own section only.  A damaged file
// is ignored, said once, and rewritten.
TEST(PlanStore, KeepsOtherContextsAndRewritesADamagedFile) {
  const auto dir = test::scratch_dir("plans_damaged");
  const std::string path = (dir / "plans.json").string();
  {
    cuda::PlanStore s(path, "GPU A");
    s.put("k", graph_record(0, 3, false));
    ASSERT_TRUE(s.save());
  }
  {
    cuda::PlanStore other(path, "GPU B, FP16");  // another GPU or setting: none of A's choices
    EXPECT_EQ(other.size(), 0u);
    EXPECT_EQ(other.ignored(), "");
    other.put("k2", legacy_record(1, true));
    ASSERT_TRUE(other.save());
  }
  EXPECT_EQ(cuda::PlanStore(path, "GPU A").size(), 1u) << "B's save dropped A's section";
  EXPECT_TRUE(cuda::PlanStore(path, "GPU A").find("k").has_value());
  EXPECT_TRUE(cuda::PlanStore(path, "GPU B, FP16").find("k2").has_value());

  const std::string head = "{\"format\": \"gati-cudnn-plans/1\", \"contexts\": {\"GPU A\": ";
  const std::pair<std::string, const char*> damaged[] = {
      {head + "{", "not valid JSON"},
      {"[1, 2]", "must be a JSON object"},
      {"{\"format\": \"gati-cudnn-plans/9\", \"contexts\": {}}", "format is not"},
      {head + "{\"k\": {\"api\": \"tpu\", \"fused\": true, \"ms\": 1}}}}", "'api' is 'tpu'"},
      {head + "{\"k\": {\"api\": \"graph\", \"fused\": true, \"rank\": 3.5, \"engine\": 1, \"ms\": 1}}}}",
       "'rank' must be an integer"},
      {head + "{}}, \"extra\": 1}", "unknown key 'extra'"},
      {head + "{\"k\": {\"api\": \"legacy\", \"fused\": true, \"algo\": 1, \"math\": 0, \"ms\": 1, \"ms\": 2}}}}",
       "key 'ms' appears twice"},
  };
  for (const auto& [text, needle] : damaged) {
    SCOPED_TRACE(text);
    std::ofstream(path, std::ios::trunc) << text;
    cuda::PlanStore s(path, "GPU A");
    EXPECT_EQ(s.size(), 0u);
    EXPECT_NE(s.ignored().find(needle), std::string::npos) << s.ignored();
    s.put("k", legacy_record(0, true));
    ASSERT_TRUE(s.save());  // rewritten whole
    cuda::PlanStore fixed(path, "GPU A");
    EXPECT_EQ(fixed.ignored(), "");
    EXPECT_EQ(fixed.size(), 1u);
  }
  // A folder where the file should be: ignored on load, a warning on save.
  const std::string folder = (dir / "a_folder").string();
  std::filesystem::create_directories(folder);
  cuda::PlanStore f(folder, "GPU A");
  EXPECT_NE(f.ignored().find("is a folder"), std::string::npos) << f.ignored();
  f.put("k", legacy_record(0, true));
  EXPECT_FALSE(f.save());
  EXPECT_TRUE(std::filesystem::is_directory(folder));
  std::filesystem::remove_all(dir);
}

TEST(PlanStore, MergesWhatAnotherProcessSavedMeanwhile) {
  const auto dir = test::scratch_dir("plans_merge");
  const std::string path = (dir / "plans.json").string();
  cuda::PlanStore a(path, "ctx"), b(path, "ctx");  // both started before either saved
  a.put("ka", graph_record(1, 7, true));
  ASSERT_TRUE(a.save());
  b.put("kb", legacy_record(6, false));
  ASSERT_TRUE(b.save());
  cuda::PlanStore c(path, "ctx");
  EXPECT_EQ(c.size(), 2u);
  EXPECT_TRUE(c.find("ka").has_value());
  EXPECT_TRUE(c.find("kb").has_value());
  // A choice made anew elsewhere is not put back by a store that only
  // loaded the old one: it wins only for the shapes it chose itself.
  cuda::PlanStore d(path, "ctx");
  c.put("ka", graph_record(4, 9, false));  // ka timed again by c
  ASSERT_TRUE(c.save());
  d.put("kd", legacy_record(2, false));
  ASSERT_TRUE(d.save());
  const cuda::PlanStore e(path, "ctx");
  EXPECT_EQ(e.size(), 3u);
  ASSERT_TRUE(e.find("ka").has_value());
  EXPECT_TRUE(*e.find("ka") == graph_record(4, 9, false)) << "d's stale ka came back";
  cuda::PlanStore memory_only("", "ctx");  // no file: nothing read or written
  memory_only.put("k", legacy_record(0, false));
  EXPECT_TRUE(memory_only.save());
  EXPECT_TRUE(memory_only.find("k").has_value());
  std::filesystem::remove_all(dir);
}

TEST(PlanStore, DefaultPathFollowsTheEnvironment) {
  const char* saved = std::getenv("GATI_CUDNN_PLANS");
  const std::string keep = saved ? saved : "";
  setenv("GATI_CUDNN_PLANS", "off", 1);
  EXPECT_EQ(cuda::default_plan_store_path(), "");
  setenv("GATI_CUDNN_PLANS", "/tmp/somewhere/plans.json", 1);
  EXPECT_EQ(cuda::default_plan_store_path(), "/tmp/somewhere/plans.json");
  unsetenv("GATI_CUDNN_PLANS");
  if (std::getenv("HOME") || std::getenv("XDG_CACHE_HOME")) {
    EXPECT_NE(cuda::default_plan_store_path().find("gati/cudnn-plans.json"), std::string::npos);
  }
  if (saved) setenv("GATI_CUDNN_PLANS", keep.c_str(), 1);
}

// A second engine on the same GPU rebuilds every convolution from the file
// the first one wrote, untimed, and answers bit for bit as it did.
TEST(CudaBackend, PlanCacheSkipsTheSearchOnRestart) {
  SKIP_WITHOUT_GPU();
  const auto dir = test::scratch_dir("plans_gpu");
  const std::string path = (dir / "plans.json").string();
  const test::ScopedEnv plans("GATI_CUDNN_PLANS", path);
  const Model m = test::random_model(kBottleneckArch, 700);
  const Arch& a = m.arch();
  // Batch 4: a plan's capacity (powers of two), whose convolutions are
  // timed; a batch between (3) runs choices made untimed, as compaction's.
  const int n = 4;
  const std::vector<float> x = random_floats(size_t(n * a.in_channels * a.input_h * a.input_w), 701);
  std::vector<LayerTiming> first, second;
  std::vector<float> l1, l2;
  {
    Engine e(m, {"cuda", 0});
    l1 = e.profile(x.data(), n, a.in_channels, a.input_h, a.input_w, &first);
  }
  ASSERT_TRUE(std::filesystem::exists(path)) << "the first engine saved no plan cache";
  {
    Engine e(m, {"cuda", 0});
    l2 = e.profile(x.data(), n, a.in_channels, a.input_h, a.input_w, &second);
    // Batch 3 in a plan of 4: choices made untimed, and the profile says so.
    std::vector<LayerTiming> third;
    e.profile(x.data(), 3, a.in_channels, a.input_h, a.input_w, &third);
    for (const LayerTiming& t : third)
      if (t.kind == "conv") {
        EXPECT_NE(t.method.find("[untimed]"), std::string::npos) << t.name << ": " << t.method;
      }
  }
  ASSERT_EQ(first.size(), second.size());
  int convs = 0;
  for (size_t i = 0; i < first.size(); ++i) {
    if (first[i].kind != "conv") continue;
    ++convs;
    EXPECT_EQ(first[i].method.find("[cached]"), std::string::npos) << first[i].name << ": " << first[i].method;
    EXPECT_EQ(second[i].method, first[i].method + " [cached]") << second[i].name;
  }
  EXPECT_GT(convs, 0);
  EXPECT_EQ(l1, l2) << "the same choices must give the same logits";
  std::filesystem::remove_all(dir);
}

// Device-side skip: at batch 1 one recorded graph holds the whole run, each
// exit a conditional node, so from the third run on every run is one graph
// launch whichever exit answers, and the answers are the CPU's: samples that
// leave at the first exits, later ones, and at the end replay the same graph.
TEST(CudaBackend, BatchOneSkipsTheRestOnTheDeviceInOneLaunch) {
  SKIP_WITHOUT_GPU();
  const Model m = test::random_model(kBottleneckArch, 600);
  Pair p(m);
  const Arch& a = m.arch();
  const auto specs = mixing_heads(p.cpu, test::random_heads(m, 601, 2.f), 602);
  const auto cpu_heads = p.cpu.make_exit_heads(specs), gpu_heads = p.gpu.make_exit_heads(specs);
  Session cs = p.cpu.session(), gs = p.gpu.session();
  const bool skip = gs.context().device_skip();
  if (!skip)
    std::printf(
        "[cuda skip] no device-side skip in this context (GATI_CUDA_SKIP=0, graphs off, or CUDA < 12.4): "
        "one graph per exit\n");
  std::map<int, int> exits;  // exit -> replayed runs that answered there
  uint32_t seed = 610;
  for (int k = 0; k < 40; ++k) {
    SCOPED_TRACE("run " + std::to_string(k));
    const std::vector<float> x =
        random_floats(size_t(a.in_channels) * size_t(a.input_h) * size_t(a.input_w), seed++, 2.0f);
    SampleResult rc, rg;
    std::vector<float> lc(size_t(a.num_classes)), lg(lc.size());
    RunOptions oc, og;
    oc.heads = cpu_heads.get();
    og.heads = gpu_heads.get();
    cs.run(x.data(), 1, a.in_channels, a.input_h, a.input_w, &rc, lc.data(), oc);
    const int64_t before = gs.context().graph_launches();
    gs.run(x.data(), 1, a.in_channels, a.input_h, a.input_w, &rg, lg.data(), og);
    const int64_t launches = gs.context().graph_launches() - before;
    EXPECT_EQ(rg.exit, rc.exit);
    EXPECT_EQ(rg.label, rc.label);
    EXPECT_NEAR(rg.confidence, rc.confidence, 1e-5);
    EXPECT_LE(max_rel_error(lg, lc), 1e-4);
    if (k >= 2) {
      ++exits[rc.exit];
      if (skip) {
        EXPECT_EQ(launches, 1) << "a replayed batch-1 run is one graph launch";
      }
    }
  }
  EXPECT_GE(exits.size(), 2u) << "every replayed run answered at the same exit: the skip was not exercised";
  EXPECT_EQ(gs.context().device_skip(), skip) << "the device-side skip turned itself off (stderr says why)";
  std::string seen;
  for (const auto& [exit, count] : exits) seen += " " + std::to_string(exit) + ":" + std::to_string(count);
  std::printf("[cuda skip] replayed runs by exit (-1 = full model):%s\n", seen.c_str());
}

TEST(CudaBackend, ProfileTimesEveryLayerWithEvents) {
  SKIP_WITHOUT_GPU();
  const Model m = test::random_model(kBottleneckArch, 400);
  Engine e(m, {"cuda", 0});
  const Arch& a = m.arch();
  const std::vector<float> x = random_floats(size_t(2 * a.in_channels * a.input_h * a.input_w), 401);
  std::vector<LayerTiming> t;
  const std::vector<float> logits = e.profile(x.data(), 2, a.in_channels, a.input_h, a.input_w, &t);
  ASSERT_FALSE(t.empty());
  double total = 0;
  for (const LayerTiming& l : t) {
    EXPECT_GE(l.ms, 0) << l.name;
    total += l.ms;
    // Each convolution says how cuDNN ran it ("graph engine 11 fused", "legacy algo 0").
    if (l.kind == "conv") {
      EXPECT_TRUE(l.method.rfind("graph engine ", 0) == 0 || l.method.rfind("legacy algo ", 0) == 0)
          << l.name << ": '" << l.method << "'";
    } else {
      EXPECT_TRUE(l.method.empty()) << l.name;
    }
  }
  EXPECT_GT(total, 0);
  EXPECT_LE(max_rel_error(logits, Engine(m, {"cpu", 0}).infer(x.data(), 2)), 1e-4);
}

}  // namespace
}  // namespace gati
