// The one interface between the runtime and a backend (CPU today, CUDA next).
//
// Design decision: a backend is two types.  A BackendDevice holds what is
// shared and immutable (the model's weights in the backend's own layout,
// uploaded once per device); a BackendContext is one worker's private state
// (its stream, workspace, events and thread count) and owns every buffer it
// hands out.  Workers never share scratch memory, so N contexts on one device
// run in parallel without a lock.  Cache models are uploaded as ExitHeads:
// immutable too, replaced as a whole (a new version is published at a batch
// boundary), so a run never reads half-updated weights.
//
// Activations are in the context's layout(): NHWC on the CPU, NCHW or NHWC
// on CUDA (kernels/exit_state.h, Layout); a sample is contiguous in both, so
// only the ops that index inside one care.  Context calls may be asynchronous (a CUDA
// context enqueues on its stream): synchronize() is the only full barrier,
// alive() is the only point where the host waits for a device-side count
// (batch > 1, after a compaction), and to_host() is the only copy out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/exit_state.h"

namespace gati {

struct Model;

// A number unique in the process, never reused: the ids of exit heads and
// executors, which name the device memory a recorded graph reads.
uint64_t next_object_id();

// An activation's shape: batch, height, width, channels (its memory order is
// the context's layout()).
struct Act {
  int n = 0, h = 0, w = 0, c = 0;
  size_t per_sample() const { return size_t(h) * size_t(w) * size_t(c); }
  size_t elems() const { return size_t(n) * per_sample(); }
  Act with_batch(int batch) const { return {batch, h, w, c}; }
};

// Memory owned by a backend context (host, device or mapped), released by
// its destructor.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual void* data() = 0;
  virtual size_t bytes() const = 0;
  float* floats() { return static_cast<float*>(data()); }
};

// One cache model at exit point `exit` (engine/plan.h: 0 is the stem, then
// one per residual block), in host memory, as the runtime hands it to a
// backend: a learned linear predictor (GATI) or a distance head (Freeze's
// k-NN or k-means; kernels/exit_state.h, DistanceHeadView, has the math).
struct ExitHeadSpec {
  int exit = 0;
  std::string name;  // the exit point's name, "stem", "layer2.1"
  HeadKind kind = HeadKind::kLinear;
  PoolSpec pool;                     // how the output there becomes the features
  int dim = 0, classes = 0;          // dim = pool.features(the output's channels)
  std::vector<float> mean, inv_std;  // [dim]
  // kLinear
  std::vector<float> weight;  // [classes, dim], or [classes, hidden] with a hidden layer
  std::vector<float> bias;    // [classes]
  // kLinear with a hidden layer (GATI's MLP predictor; LinearHeadView::hidden)
  int hidden = 0;
  std::vector<float> hidden_weight;  // [hidden, dim]
  std::vector<float> hidden_bias;    // [hidden]
  std::vector<float> selector;       // optional: [k + 1], k in [1, kMaxSelectorK] (LinearHeadView::selector)
  // kKnn, kKmeans
  int reduced = 0, neighbours = 1;
  std::vector<float> projection;  // [reduced, dim]
  std::vector<float> keys;        // [entries, reduced]
  std::vector<int32_t> labels;    // [entries]
  std::vector<float> share;       // [entries]
  int entries() const { return int(labels.size()); }
  int selector_k() const { return selector.empty() ? 0 : int(selector.size()) - 1; }
  // The score layer's inputs: the hidden units, or the features.
  int inputs() const { return hidden > 0 ? hidden : dim; }
  float threshold = 2.0f;  // confidence needed to hit; > 1 never hits
};

// "linear", "knn", "kmeans"; head_kind is the inverse and its errors list
// the valid names.
const char* head_kind_name(HeadKind kind);
HeadKind head_kind(const std::string& name);

// Throws "<what>: ..." unless the spec's vectors have the sizes its dims
// say, its pooling is valid, its distance-head labels are classes and its
// shares in (0, 1], and every value is finite: the one check for heads
// handed to a backend and heads read from a cache file.
void check_head_spec(const std::string& what, const ExitHeadSpec& spec);

// The spec's parameters in place, as the kernels' views over host memory:
// what the CPU backend runs and what calibration scores with.
LinearHeadView host_linear_view(const ExitHeadSpec& spec);
DistanceHeadView host_distance_view(const ExitHeadSpec& spec);

// A pooling's name: "avg" (global average), "mix" (global average and max),
// "avg4x4", "mix2x2" (a grid of cells); parse_pool is its inverse and its
// errors list the valid names.
std::string pool_name(const PoolSpec& pool);
PoolSpec parse_pool(const std::string& name);

// A backend's own copy of a set of exit heads; immutable.
class ExitHeads {
 public:
  virtual ~ExitHeads() = default;
  const std::vector<ExitHeadSpec>& specs() const { return specs_; }
  // Index into specs() of the head at exit point `exit`, or -1.
  int for_exit(int exit) const { return exit >= 0 && size_t(exit) < by_exit_.size() ? by_exit_[size_t(exit)] : -1; }
  // The head's parameters in backend memory (view: a kLinear head;
  // distance_view: a kKnn or kKmeans head).
  virtual LinearHeadView view(int head) const = 0;
  virtual DistanceHeadView distance_view(int head) const = 0;
  // The widest head's features (sizes the pooled-features scratch).
  int max_dim() const { return max_dim_; }
  // The model's exit points these heads were made for.
  int exit_points() const { return int(by_exit_.size()); }
  // The heads whose backend memory the views point into, for a backend's
  // check that they are its own: these, or the heads a wrapper serves from
  // (a learner's heads, engine/learner.h).
  virtual const ExitHeads& storage() const { return *this; }
  // Unique in the process, never reused (a recorded graph names the heads
  // whose device memory it reads by it).
  uint64_t id() const { return id_; }

 protected:
  ExitHeads(std::vector<ExitHeadSpec> specs, int exits);
  // The spec of `head`, which must be of the kind the view wants.
  const ExitHeadSpec& linear_spec(int head) const;
  const ExitHeadSpec& distance_spec(int head) const;
  std::vector<ExitHeadSpec> specs_;
  std::vector<int> by_exit_;
  int max_dim_ = 0;
  uint64_t id_;
};

// Throws unless head `head` takes the features of activations of `shape`
// (dim == pool.features(channels)); backends call it before an exit head.
void check_exit_head_fits(const ExitHeads& heads, int head, const Act& shape);
// The one statement of that rule, for heads and cache files alike: throws
// "<what>: dim D, but C channels pooled P give F features" unless it holds.
void check_pool_fits(const std::string& what, int dim, const PoolSpec& pool, int channels);

// Per-sample work of one exit head on activations of shape (n = 1): every
// activation read once (twice with max), then dim x classes MACs of scores
// (with a hidden layer, dim x hidden + hidden x classes).
inline int64_t exit_head_macs(const Act& shape, const PoolSpec& pool, int dim, int classes, int hidden = 0) {
  const int64_t scores = hidden > 0 ? int64_t(dim) * hidden + int64_t(hidden) * classes : int64_t(dim) * classes;
  return int64_t(shape.per_sample()) * (pool.with_max ? 2 : 1) + scores;
}
// The same for any head: a distance head's projection (dim x reduced) and
// distances to its keys (entries x reduced) in place of the scores.
inline int64_t exit_head_macs(const Act& shape, const ExitHeadSpec& s) {
  if (s.kind == HeadKind::kLinear) return exit_head_macs(shape, s.pool, s.dim, s.classes, s.hidden);
  return exit_head_macs(shape, s.pool, s.dim, s.reduced) + int64_t(s.entries()) * s.reduced;
}

class BackendContext {
 public:
  virtual ~BackendContext() = default;

  virtual std::unique_ptr<Buffer> allocate(size_t bytes) = 0;
  // Memory the host reads and writes directly, without a copy (mapped pinned
  // memory on CUDA): the exit state and results live here.
  virtual std::unique_ptr<Buffer> allocate_host_visible(size_t bytes) = 0;

  // Raw copies between host and backend memory (test staging, parameters).
  virtual void from_host(const void* host, size_t bytes, void* dst) = 0;

  // How this context stores activations: their layout and precision (an
  // FP16 context stores halves; from_host/to_host copy raw bytes).
  virtual Layout layout() const { return Layout::kNhwc; }
  virtual Precision precision() const { return Precision::kF32; }

  // Host NCHW (the PyTorch convention) into the backend's layout, in two
  // halves so that a run can be recorded as a CUDA graph: stage_input is
  // the host's part (a copy into pinned memory on CUDA; the CPU only
  // remembers the pointer) and runs on every run; input_from_stage is the
  // backend's part (a copy or a transpose into dst), which a recorded graph
  // replays.  stage_input also checks the values, in the same pass where it
  // copies them: it returns the flat index of the first NaN or infinity, or
  // shape.elems() when every value is finite; after a bad value nothing it
  // issued is still in flight.
  virtual size_t stage_input(const float* host, const Act& shape) = 0;
  virtual void input_from_stage(const Act& shape, float* dst) = 0;
  // An input already in this backend's memory (NCHW at `device`), staged as
  // stage_input stages a host one and checked where it is: waits for the
  // check and returns the flat index of the first NaN or infinity, or
  // shape.elems() when every value is finite.  A backend that reads host
  // memory only (the CPU) refuses.
  virtual size_t stage_device_input(const float* device, const Act& shape);
  // Model convolution `conv` (index into Network::convs) with folded bias,
  // optional residual (same shape as the output) and ReLU.
  virtual void conv(int conv, const float* in, const Act& in_shape, float* out, const float* residual, bool relu) = 0;
  // Per-shape setup of a convolution ahead of its first run (descriptors and
  // algorithm choice on CUDA); conv() prepares any shape it has not seen.
  virtual void prepare_conv(int conv, const Act& in_shape, bool relu, bool residual) {
    (void)conv, (void)in_shape, (void)relu, (void)residual;
  }
  // How the convolution runs at this shape ("graph engine 11 fused"), for
  // the profile; empty where the backend has one way only.
  virtual std::string conv_method(int conv, const Act& in_shape, bool relu, bool residual) {
    (void)conv, (void)in_shape, (void)relu, (void)residual;
    return {};
  }
  // The next conv() writes the activation that an exit pools as `pool`
  // right after (its head, or the memory of recent answers): a backend may
  // pool while it writes (the CPU does, in the GEMM's epilogue, so the exit
  // does not read the activation back from memory) and serve that exit's
  // pooling from it, bit for bit as pooling the activation would.
  virtual void conv_feeds_exit(const PoolSpec& pool) { (void)pool; }
  virtual void max_pool(const float* in, const Act& in_shape, int kernel, int stride, int pad, float* out) = 0;
  // (n, h, w, c) -> [n, c]
  virtual void global_avg_pool(const float* in, const Act& shape, float* out) = 0;
  // An exit's features, (n, h, w, c) -> [n, pool.features(c)], pooled as
  // the exit head pools them (feature collection for cache building).
  virtual void pool_features(const float* in, const Act& shape, const PoolSpec& pool, float* out) = 0;
  // The model's fully connected layer: [n, features] -> [n, classes]
  virtual void classifier(const float* pooled, int n, float* logits) = 0;

  // Exit ops (kernels/cpu/exit_head_cpu.h documents their contract).
  virtual void begin_exits(const ExitState& st, int n, int classes) = 0;
  virtual void exit_head(const ExitHeads& heads, int head, const float* act, const Act& shape, int exit_id,
                         const ExitState& st, int pos, float* pooled) = 0;
  // In place: the surviving rows of act move to the front.
  virtual void compact(float* act, const Act& shape, const ExitState& st, int pos_in, int pos_out) = 0;
  // Scratch for compacting activations up to `largest` (batch included),
  // allocated now: a recorded segment may not allocate.
  virtual void prepare_compaction(const Act& largest) { (void)largest; }
  // Scratch the exit heads need for batches up to max_batch, allocated now
  // (CUDA: the wide exit kernels' scores).
  virtual void prepare_exit_heads(const ExitHeads& heads, int max_batch) {
    (void)heads;
    (void)max_batch;
  }
  // Called once a plan's shapes are all prepared (CUDA: the timed choices
  // are saved to the plan cache).
  virtual void prepared() {}
  // Rows still running after the last compaction (waits for it).
  virtual int alive(const ExitState& st) = 0;
  virtual void finish_full_model(const float* logits, int n, int classes, const ExitState& st, int pos) = 0;
  // The memory of recent answers (kernels/cpu/memory_cpu.h documents the
  // contract): the lookup at its exit point, then after the run the
  // insertion of the full model's confident answers.
  virtual void memory_lookup(const MemoryView& m, const float* act, const Act& shape, int exit_id, const ExitState& st,
                             int pos, float* pooled) = 0;
  virtual void memory_insert(const MemoryView& m, const ExitState& st, int n) = 0;
  // One SGD step on a linear head in backend memory (features [n, dim],
  // labels [n] in backend memory); waits for and returns the device's status
  // word, and the batch's loss before the step in *loss.
  virtual OpStatus linear_sgd_step(const LinearHeadMut& head, const float* features, const int32_t* labels, int n,
                                   const SgdHyper& hyper, double* loss) = 0;
  // The same step queued without a wait: its outcome lands in `report`
  // (host-visible memory), final after the next synchronize().
  virtual void linear_sgd_enqueue(const LinearHeadMut& head, const float* features, const int32_t* labels, int n,
                                  const SgdHyper& hyper, const SgdReport& report) = 0;
  // On-device learning (engine/learner.h; kernels/cpu/learn_cpu.h documents
  // both): rows of a head's features into its next SGD batch, and a
  // learned head's weights into the copy that runs read.
  virtual void gather_rows(const float* features, int dim, const RowGather& rows, float* x, int32_t* y, int offset) = 0;
  virtual void publish_linear(const float* weight, const float* bias, int dim, int classes, float* served_w,
                              uint16_t* served_f16, float* served_b) = 0;

  // Timing marks (device events on CUDA): begin, one mark per step, then
  // read() waits and returns each mark's time in ms since begin.
  virtual void timing_begin() = 0;
  virtual void timing_mark() = 0;
  virtual std::vector<double> timing_read() = 0;
  // The practical peak of this context's compute (GFLOP/s), measured once
  // by a short benchmark of the backend's own GEMM; 0 when not measured.
  virtual double peak_gflops() { return 0; }
  // Profiling annotations around a step (NVTX ranges on CUDA, shown by
  // Nsight Systems; nothing on the CPU).  Only called when timing.
  virtual void range_push(const char* name) { (void)name; }
  virtual void range_pop() {}

  virtual void to_host(const void* src, size_t bytes, void* host) = 0;
  virtual void synchronize() = 0;

  // Recorded segments (CUDA graphs; a backend without them runs every op as
  // it comes).  The executor brackets the ops between two host waits as one
  // segment, named by what decides its ops.  segment_begin returns kReplayed
  // when it launched the graph recorded for that key (the caller then skips
  // the ops), else the ops follow (run directly, or recorded) and
  // segment_end closes the segment.  A key's first run is direct (it sizes
  // scratch and plans convolutions), its second is recorded, later ones
  // replay.  segment_end returns false when a recording failed: the ops did
  // not run and the caller must issue them again (graphs are then off in
  // this context).  segment_abort ends a recording that an exception
  // interrupted (graphs off too); forget_segments drops the graphs of an
  // owner whose memory goes away.
  struct SegmentKey {
    uint64_t owner = 0;  // Executor's id: its arena and exit state
    uint64_t heads = 0;  // ExitHeads::id(), 0 without heads
    int step = 0, alive = 0, pos = 0;
    bool operator<(const SegmentKey& o) const;
  };
  enum class Segment { kDirect, kRecording, kReplayed };
  virtual Segment segment_begin(const SegmentKey& key) {
    (void)key;
    return Segment::kDirect;
  }
  virtual bool segment_end() { return true; }
  // Device-side skip (CUDA conditional graph nodes): whether one recorded
  // segment can hold a whole batch-1 run, each exit's host wait replaced by
  // skip_unless_alive.  While recording, the ops issued after
  // skip_unless_alive(st) run, when the segment replays, only if *st.alive
  // is non-zero at that point on the device; segment_end closes every skip
  // the segment opened.  Errors throw (the recording is then abandoned as by
  // segment_abort).
  virtual bool device_skip() const { return false; }
  virtual void skip_unless_alive(const ExitState& st);
  virtual void segment_abort() noexcept {}
  virtual void forget_segments(uint64_t owner) { (void)owner; }
  // Graphs launched so far (replays), for tests and the benchmark's report.
  virtual int64_t graph_launches() const { return 0; }
};

class BackendDevice : public std::enable_shared_from_this<BackendDevice> {
 public:
  virtual ~BackendDevice() = default;
  virtual std::string name() const = 0;
  // A worker's context; `threads` <= 0 means every core (CPU backend).
  virtual std::unique_ptr<BackendContext> make_context(int threads) const = 0;
  virtual std::shared_ptr<const ExitHeads> upload_exit_heads(std::vector<ExitHeadSpec> specs) const = 0;
};

// The CPU device: packs the model's folded weights once.
std::shared_ptr<const BackendDevice> make_cpu_device(const Model& model);
// "cpu", "cuda" or "auto" (CUDA when this build has a CUDA backend and a
// device, else the CPU); errors list the valid choices.  tf32 lets CUDA FP32
// convolutions use TF32 tensor cores (off: FP32 within 1e-4 of the CPU);
// fp16 stores CUDA activations and weights as halves (refused on the CPU; an
// "auto" that falls back to the CPU runs FP32).
std::shared_ptr<const BackendDevice> make_backend_device(const std::string& device, const Model& model,
                                                         bool tf32 = false, bool fp16 = false);

}  // namespace gati
