// A plan: every step of one forward pass with its shapes, computed once, and
// one activation arena sized for the largest batch it serves.
//
// Activations rotate through four arena slots (a residual block needs its
// input, two intermediates and the shortcut alive at once); the pooled
// features and the logits have their own regions (the exit heads' pooled
// features, whose size depends on the heads, live in the executor).  The
// stem's output and each residual block's output are exit points; when an
// exit head is attached
// there, the executor runs it and compacts the batch in place (survivors to
// the front), so the plan does not depend on which caches are attached.  The
// exit state (per-sample results) is laid out here too; it lives in
// host-visible memory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "weights/resnet.h"

namespace gati {

enum class StepKind { Input, Conv, MaxPool, GlobalAvgPool, Classifier };
const char* step_kind_name(StepKind k);

struct Step {
  StepKind kind = StepKind::Conv;
  std::string name;  // "layer1.0.conv1", "maxpool", "fc"
  int conv = -1;     // index into Network::convs for Conv steps
  Act in, out;       // per-sample shapes (n = 1)
  int in_slot = -1, out_slot = -1, residual_slot = -1;
  bool relu = false;
  int block = -1;  // residual block this step belongs to, -1 for stem and head
  int64_t macs_per_sample = 0;
};

// Where a sample may leave: "stem" (after the stem convolution and its
// max-pool), then after every residual block.  An exit's id everywhere
// (exit heads, cache files, SampleResult::exit) is its index in this order.
struct ExitPointInfo {
  std::string name;  // "stem", "layer2.1"
  int block = -1;    // index into Network::blocks, -1 for the stem
  int channels = 0;  // of the output there
};
std::vector<ExitPointInfo> exit_points(const Network& net);
// The id of the exit point called `name`, or -1.
int exit_point_id(const Network& net, const std::string& name);
// "stem, layer1.0, ...": every exit point's name, for errors that list them.
std::string exit_point_names(const Network& net);

struct ExitPoint {
  int id = 0;          // index into Plan::exits (and exit_points())
  int block = -1;      // index into Network::blocks, -1 for the stem
  std::string name;    // "stem", "layer2.1"
  int after_step = 0;  // index of the last step before it
  Act shape;           // per-sample
  int slot = 0;
};

// Byte offsets of the exit state (kernels/exit_state.h) in its buffer.
struct ExitStateLayout {
  size_t position[2] = {0, 0}, hit = 0, alive = 0, exit = 0, source = 0, label = 0, confidence = 0, logits = 0,
         bytes = 0;
};

struct Plan {
  int max_batch = 0;
  Act input;  // per-sample NHWC shape of the network input
  std::vector<Step> steps;
  std::vector<ExitPoint> exits;
  int num_slots = 0;
  size_t slot_floats = 0;  // per slot, for max_batch
  size_t pooled_offset = 0, logits_offset = 0, arena_floats = 0;
  ExitStateLayout exit_state;
  int features = 0, classes = 0;
  int64_t macs_per_sample = 0;
};

// h, w: input size; throws if the input is too small for the network or any
// size overflows.
Plan make_plan(const Network& net, int max_batch, int h, int w);

// MACs per sample of every step up to exit point `exit` (the network's cost
// to produce the output that exit reads; its head not included).
int64_t macs_through(const Plan& plan, int exit);

}  // namespace gati
