// A plan: every step of one forward pass with its shapes, computed once, and
// one activation arena sized for the largest batch it serves.
//
// Activations rotate through four arena slots (a residual block needs its
// input, two intermediates and the shortcut alive at once); the pooled
// features and logits have their own regions.  Each residual block's output
// is an exit point: the executor stops there to let caches look at it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/resnet.h"

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

struct ExitPoint {
  int block = 0;       // index into Network::blocks
  std::string name;    // "layer2.1"
  int after_step = 0;  // index of the block's last step
  Act shape;           // per-sample
  int slot = 0;
};

struct Plan {
  int max_batch = 0;
  Act input;  // per-sample NHWC shape of the network input
  std::vector<Step> steps;
  std::vector<ExitPoint> exits;
  int num_slots = 0;
  size_t slot_floats = 0;  // per slot, for max_batch
  size_t pooled_offset = 0, logits_offset = 0, arena_floats = 0;
  int features = 0, classes = 0;
  int64_t macs_per_sample = 0;
};

// h, w: input size; throws if the input is too small for the network.
Plan make_plan(const Network& net, int max_batch, int h, int w);

}  // namespace gati
