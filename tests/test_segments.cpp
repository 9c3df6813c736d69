// The executor's recorded segments (CUDA graphs) without a GPU: a context
// that records ops the way a CUDA graph does (each call kept with its
// arguments' values, run again on every replay) wraps the CPU context.  What
// it checks is the executor's side of the contract: every op of a segment
// is issued inside it, skipped when a replay stands for it, nothing the key
// does not name changes between a recording and its replays (the input is
// staged outside), the host never waits inside a segment, and a failed or
// interrupted recording is run again op by op with the same answers.  The
// CUDA side (test_cuda_backend) checks the real graphs against the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "engine/executor.h"
#include "random_model.h"
#include "weights/common/error.h"

namespace gati {
namespace {

using test::random_floats;

class RecordingContext final : public BackendContext {
 public:
  explicit RecordingContext(std::unique_ptr<BackendContext> inner) : inner_(std::move(inner)) {}

  // Failure injection: the n-th recording (counting from 1) fails at its
  // end, or throws from inside its first op.
  int fail_recording = 0, throw_in_recording = 0;
  int recordings = 0, replays = 0, direct = 0;
  bool graphs_on = true;

  std::unique_ptr<Buffer> allocate(size_t bytes) override { return inner_->allocate(bytes); }
  std::unique_ptr<Buffer> allocate_host_visible(size_t bytes) override { return inner_->allocate_host_visible(bytes); }
  void from_host(const void* host, size_t bytes, void* dst) override {
    op([=, this] { inner_->from_host(host, bytes, dst); });
  }
  size_t stage_input(const float* host, const Act& shape) override {
    if (open_) ADD_FAILURE() << "input staged inside a segment: a replay would read a stale input";
    return inner_->stage_input(host, shape);
  }
  void input_from_stage(const Act& shape, float* dst) override {
    op([=, this] { inner_->input_from_stage(shape, dst); });
  }
  void conv(int conv, const float* in, const Act& s, float* out, const float* residual, bool relu) override {
    op([=, this] { inner_->conv(conv, in, s, out, residual, relu); });
  }
  void prepare_conv(int conv, const Act& s, bool relu, bool residual) override {
    inner_->prepare_conv(conv, s, relu, residual);
  }
  void max_pool(const float* in, const Act& s, int kernel, int stride, int pad, float* out) override {
    op([=, this] { inner_->max_pool(in, s, kernel, stride, pad, out); });
  }
  void global_avg_pool(const float* in, const Act& s, float* out) override {
    op([=, this] { inner_->global_avg_pool(in, s, out); });
  }
  void pool_features(const float* in, const Act& s, const PoolSpec& pool, float* out) override {
    op([=, this] { inner_->pool_features(in, s, pool, out); });
  }
  void classifier(const float* pooled, int n, float* logits) override {
    op([=, this] { inner_->classifier(pooled, n, logits); });
  }
  void begin_exits(const ExitState& st, int n, int classes) override {
    op([=, this] { inner_->begin_exits(st, n, classes); });
  }
  void exit_head(const ExitHeads& heads, int head, const float* act, const Act& s, int exit_id, const ExitState& st,
                 int pos, float* pooled) override {
    const ExitHeads* h = &heads;
    op([=, this] { inner_->exit_head(*h, head, act, s, exit_id, st, pos, pooled); });
  }
  void compact(float* act, const Act& s, const ExitState& st, int pos_in, int pos_out) override {
    op([=, this] { inner_->compact(act, s, st, pos_in, pos_out); });
  }
  int alive(const ExitState& st) override {
    host_wait("alive()");
    return inner_->alive(st);
  }
  void finish_full_model(const float* logits, int n, int classes, const ExitState& st, int pos) override {
    op([=, this] { inner_->finish_full_model(logits, n, classes, st, pos); });
  }
  void memory_lookup(const MemoryView& m, const float* act, const Act& s, int exit_id, const ExitState& st, int pos,
                     float* pooled) override {
    if (open_) ADD_FAILURE() << "the memory lookup sits inside a segment";
    inner_->memory_lookup(m, act, s, exit_id, st, pos, pooled);
  }
  void memory_insert(const MemoryView& m, const ExitState& st, int n) override {
    if (open_) ADD_FAILURE() << "the memory insertion sits inside a segment";
    inner_->memory_insert(m, st, n);
  }
  OpStatus linear_sgd_step(const LinearHeadMut& head, const float* features, const int32_t* labels, int n,
                           const SgdHyper& hyper, double* loss) override {
    host_wait("linear_sgd_step()");
    return inner_->linear_sgd_step(head, features, labels, n, hyper, loss);
  }
  // A learner's ops follow the run, outside every segment.
  void linear_sgd_enqueue(const LinearHeadMut& head, const float* features, const int32_t* labels, int n,
                          const SgdHyper& hyper, const SgdReport& report) override {
    if (open_) ADD_FAILURE() << "an SGD step sits inside a segment";
    inner_->linear_sgd_enqueue(head, features, labels, n, hyper, report);
  }
  void gather_rows(const float* features, int dim, const RowGather& rows, float* x, int32_t* y, int offset) override {
    if (open_) ADD_FAILURE() << "a learner's gathering sits inside a segment";
    inner_->gather_rows(features, dim, rows, x, y, offset);
  }
  void publish_linear(const float* weight, const float* bias, int dim, int classes, float* served_w,
                      uint16_t* served_f16, float* served_b) override {
    if (open_) ADD_FAILURE() << "a learner's publication sits inside a segment";
    inner_->publish_linear(weight, bias, dim, classes, served_w, served_f16, served_b);
  }
  void timing_begin() override { inner_->timing_begin(); }
  void timing_mark() override { inner_->timing_mark(); }
  std::vector<double> timing_read() override { return inner_->timing_read(); }
  void to_host(const void* src, size_t bytes, void* host) override {
    host_wait("to_host()");
    inner_->to_host(src, bytes, host);
  }
  void synchronize() override {
    host_wait("synchronize()");
    inner_->synchronize();
  }

  // The same life cycle as the CUDA context: direct, recorded, replayed.
  Segment segment_begin(const SegmentKey& key) override {
    if (open_) ADD_FAILURE() << "a segment began inside another";
    if (!graphs_on) return Segment::kDirect;
    open_ = true;
    Recorded& r = graphs_[key];
    if (r.recorded) {
      ++replays;
      for (const auto& f : r.ops) f();
      open_ = false;  // a replay is one launch: no segment_end follows
      return Segment::kReplayed;
    }
    if (++r.seen < 2) {
      ++direct;
      return Segment::kDirect;
    }
    recording_ = &r;
    ++recordings;
    return Segment::kRecording;
  }
  bool segment_end() override {
    open_ = false;
    if (!recording_) return true;
    Recorded& r = *recording_;
    recording_ = nullptr;
    if (recordings == fail_recording) {
      r.ops.clear();
      graphs_on = false;
      graphs_.clear();
      return false;  // nothing ran
    }
    r.recorded = true;
    for (const auto& f : r.ops) f();  // the launch that follows a recording
    return true;
  }
  void segment_abort() noexcept override {
    open_ = false;
    recording_ = nullptr;
    graphs_on = false;
    graphs_.clear();
  }
  void forget_segments(uint64_t owner) override {
    for (auto it = graphs_.begin(); it != graphs_.end();) it = it->first.owner == owner ? graphs_.erase(it) : ++it;
  }
  int64_t graph_launches() const override { return replays; }

 private:
  struct Recorded {
    int seen = 0;
    bool recorded = false;
    std::vector<std::function<void()>> ops;
  };
  void op(std::function<void()> f) {
    if (recording_) {
      if (recordings == throw_in_recording && recording_->ops.empty()) fail("injected: an op refused to be recorded");
      recording_->ops.push_back(std::move(f));
    } else {
      f();
    }
  }
  void host_wait(const char* what) {
    if (open_) ADD_FAILURE() << what << " inside a segment: the host would wait on a recording";
  }

  std::unique_ptr<BackendContext> inner_;
  std::map<SegmentKey, Recorded> graphs_;
  Recorded* recording_ = nullptr;
  bool open_ = false;
};

struct Fixture {
  Model model = test::random_model(test::kSmallArch, 700);
  std::shared_ptr<const BackendDevice> device = make_cpu_device(model);
  std::unique_ptr<BackendContext> plain_ctx = device->make_context(1);
  RecordingContext rec{device->make_context(1)};
  Executor plain{*plain_ctx, make_plan(model.net, 8, 16, 16)};
  Executor recorded{rec, make_plan(model.net, 8, 16, 16)};
  std::shared_ptr<const ExitHeads> a = device->upload_exit_heads(test::random_heads(model, 701, 0.4f));
  std::shared_ptr<const ExitHeads> b = device->upload_exit_heads(test::random_heads(model, 702, 0.3f));
  uint32_t seed = 710;
  int exited = 0;

  // One run of both executors on a fresh input; the answers must be the same.
  void run(int n, const ExitHeads* heads) {
    const std::vector<float> x = random_floats(size_t(n) * 16 * 16, seed++, 2.0f);
    std::vector<SampleResult> want(static_cast<size_t>(n)), got(static_cast<size_t>(n));
    std::vector<float> lw(size_t(n) * 6), lg(lw.size());
    RunOptions o;
    o.heads = heads;
    plain.run(x.data(), n, want.data(), lw.data(), o);
    recorded.run(x.data(), n, got.data(), lg.data(), o);
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(got[size_t(i)].exit, want[size_t(i)].exit) << "sample " << i;
      EXPECT_EQ(got[size_t(i)].label, want[size_t(i)].label) << "sample " << i;
      EXPECT_EQ(got[size_t(i)].confidence, want[size_t(i)].confidence) << "sample " << i;
      exited += want[size_t(i)].exit != kFullModel;
    }
    for (size_t k = 0; k < lw.size(); ++k) {
      if (!(std::isnan(lw[k]) && std::isnan(lg[k]))) {
        EXPECT_EQ(lg[k], lw[k]) << "logit " << k;
      }
    }
  }
};

TEST(Segments, ReplaysAnswerWhatDirectRunsAnswer) {
  Fixture f;
  for (int r = 0; r < 3; ++r) f.run(1, nullptr);
  EXPECT_EQ(f.rec.direct, 1);
  EXPECT_EQ(f.rec.recordings, 1);
  EXPECT_EQ(f.rec.replays, 1) << "the third run of the same batch should replay the recording";
  const struct {
    int n;
    char heads;
  } runs[] = {{8, 'a'}, {8, 'a'}, {8, 'a'}, {3, 'b'}, {3, 'a'}, {3, 'b'}, {3, 'a'}, {3, 'b'},
              {1, 'a'}, {1, 'a'}, {1, 'a'}, {8, '-'}, {8, '-'}, {8, '-'}, {8, 'b'}, {8, 'b'}};
  for (const auto& r : runs) {
    SCOPED_TRACE("batch " + std::to_string(r.n) + " heads " + r.heads);
    f.run(r.n, r.heads == 'a' ? f.a.get() : r.heads == 'b' ? f.b.get() : nullptr);
  }
  EXPECT_GT(f.exited, 0) << "no sample left early: the segments between exits were not exercised";
  // The runs whose first segment's key repeats a third time: b1, b8 a, b3 b, b1 a, b8 without heads.
  EXPECT_GE(f.rec.replays, 5);
}

TEST(Segments, TimingsObserversAndMemoriesRunDirect) {
  Fixture f;
  const std::vector<float> x = random_floats(2 * 16 * 16, 720);
  std::vector<SampleResult> res(2);
  std::vector<LayerTiming> t;
  RunOptions o;
  o.timings = &t;
  for (int r = 0; r < 3; ++r) f.recorded.run(x.data(), 2, res.data(), nullptr, o);
  o = {};
  int seen = 0;
  o.observer = [&](const ExitPoint&, BackendContext&, const float*, int, const int32_t*) { ++seen; };
  for (int r = 0; r < 3; ++r) f.recorded.run(x.data(), 2, res.data(), nullptr, o);
  EXPECT_GT(seen, 0);
  EXPECT_EQ(f.rec.direct + f.rec.recordings + f.rec.replays, 0);
}

// A recording that fails at its end, or that an op's error interrupts: the
// run is issued again op by op (the answers checked in run()), graphs stay off.
TEST(Segments, AFailedOrInterruptedRecordingRunsAgainOpByOp) {
  for (const bool interrupted : {false, true}) {
    SCOPED_TRACE(interrupted ? "interrupted" : "failed");
    Fixture f;
    (interrupted ? f.rec.throw_in_recording : f.rec.fail_recording) = 1;
    for (int r = 0; r < 4; ++r) f.run(interrupted ? 1 : 3, interrupted ? f.b.get() : f.a.get());
    EXPECT_EQ(f.rec.recordings, 1);
    EXPECT_FALSE(f.rec.graphs_on);
    EXPECT_EQ(f.rec.replays, 0);
  }
}

TEST(Segments, ErrorsOutsideARecordingStand) {
  Fixture f;
  const std::vector<float> x = random_floats(16 * 16, 730);
  std::vector<SampleResult> res(1);
  EXPECT_THROW(f.recorded.run(x.data(), 9, res.data(), nullptr), Error);  // over the plan's batch
  std::vector<float> bad(x.size());
  for (size_t k = 0; k < bad.size(); ++k) bad[k] = k % 2 ? 3e38f : -3e38f;  // overflows inside the network
  for (int r = 0; r < 3; ++r) {
    try {
      f.recorded.run(bad.data(), 1, res.data(), nullptr);
      ADD_FAILURE() << "an overflowing input was answered";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("not finite"), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(f.rec.graphs_on) << "an error after the segments closed must not turn graphs off";
}

}  // namespace
}  // namespace gati
