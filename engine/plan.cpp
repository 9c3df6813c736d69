// Plan construction; see plan.h.
#include "engine/plan.h"

#include <algorithm>
#include <cstdint>

#include "weights/common/checked.h"
#include "weights/common/error.h"

namespace gati {

const char* step_kind_name(StepKind k) {
  switch (k) {
    case StepKind::Input:
      return "input";
    case StepKind::Conv:
      return "conv";
    case StepKind::MaxPool:
      return "maxpool";
    case StepKind::GlobalAvgPool:
      return "avgpool";
    case StepKind::Classifier:
      return "fc";
  }
  return "?";
}

std::vector<ExitPointInfo> exit_points(const Network& net) {
  std::vector<ExitPointInfo> out;
  out.push_back({"stem", -1, net.convs.at(size_t(net.stem)).cout});
  for (size_t b = 0; b < net.blocks.size(); ++b)
    out.push_back({net.blocks[b].name, int(b), net.blocks[b].out_channels});
  return out;
}

int exit_point_id(const Network& net, const std::string& name) {
  const std::vector<ExitPointInfo> points = exit_points(net);
  for (size_t i = 0; i < points.size(); ++i)
    if (points[i].name == name) return int(i);
  return -1;
}

std::string exit_point_names(const Network& net) {
  std::string names;
  for (const ExitPointInfo& p : exit_points(net)) names += (names.empty() ? "" : ", ") + p.name;
  return names;
}

Plan make_plan(const Network& net, int max_batch, int h, int w) {
  if (max_batch < 1) fail("plan: batch size must be at least 1, got ", max_batch);
  if (h < 1 || w < 1) fail("plan: input size ", h, "x", w, " is empty");
  int widest = net.arch.in_channels;
  for (const ConvSpec& c : net.convs) widest = std::max({widest, c.cin, c.cout});
  // The largest activation the network can have; checked before any Act::per_sample.
  mul_size(mul_size(mul_size(size_t(h), size_t(w), "plan: input size"), size_t(widest), "plan: activation size"),
           mul_size(size_t(max_batch), sizeof(float), "plan: batch"), "plan: activation bytes");
  Plan plan;
  plan.max_batch = max_batch;
  plan.input = {1, h, w, net.arch.in_channels};
  plan.num_slots = 4;
  plan.features = net.features;
  plan.classes = net.arch.num_classes;

  auto conv_step = [&](int conv, const Act& in, int in_slot, int out_slot, int residual_slot, bool relu, int block) {
    const ConvSpec& c = net.convs[size_t(conv)];
    Step s;
    s.kind = StepKind::Conv;
    s.name = c.name;
    s.conv = conv;
    s.in = in;
    s.out = {1, conv_out(in.h, c.kernel, c.stride, c.pad), conv_out(in.w, c.kernel, c.stride, c.pad), c.cout};
    if (s.out.h < 1 || s.out.w < 1)
      fail("plan: input ", h, "x", w, " is too small: ", c.name, " would produce ", s.out.h, "x", s.out.w);
    s.in_slot = in_slot;
    s.out_slot = out_slot;
    s.residual_slot = residual_slot;
    s.relu = relu;
    s.block = block;
    s.macs_per_sample = int64_t(s.out.per_sample()) * (c.cin / c.groups) * c.kernel * c.kernel;
    plan.steps.push_back(s);
    return s.out;
  };

  Step input;
  input.kind = StepKind::Input;
  input.name = "input";
  input.out = plan.input;
  input.out_slot = 0;
  plan.steps.push_back(input);

  Act cur = conv_step(net.stem, plan.input, 0, 1, -1, true, -1);
  int cur_slot = 1;
  if (net.stem_maxpool) {
    Step mp;
    mp.kind = StepKind::MaxPool;
    mp.name = "maxpool";
    mp.in = cur;
    mp.out = {1, conv_out(cur.h, 3, 2, 1), conv_out(cur.w, 3, 2, 1), cur.c};
    mp.in_slot = 1;
    mp.out_slot = 2;
    mp.macs_per_sample = 0;
    plan.steps.push_back(mp);
    cur = mp.out;
    cur_slot = 2;
  }
  plan.exits.push_back({0, -1, "stem", int(plan.steps.size()) - 1, cur, cur_slot});

  for (size_t b = 0; b < net.blocks.size(); ++b) {
    const BlockSpec& blk = net.blocks[b];
    int free[3], nf = 0;
    for (int s = 0; s < plan.num_slots && nf < 3; ++s)
      if (s != cur_slot) free[nf++] = s;
    const int t1 = free[0], t2 = free[1], sc = free[2];
    int residual = cur_slot;
    if (blk.downsample >= 0) {
      conv_step(blk.downsample, cur, cur_slot, sc, -1, false, int(b));
      residual = sc;
    }
    Act a = conv_step(blk.convs[0], cur, cur_slot, t1, -1, true, int(b));
    int out_slot;
    if (blk.convs.size() == 2) {
      cur = conv_step(blk.convs[1], a, t1, t2, residual, true, int(b));
      out_slot = t2;
    } else {
      Act m = conv_step(blk.convs[1], a, t1, t2, -1, true, int(b));
      cur = conv_step(blk.convs[2], m, t2, t1, residual, true, int(b));
      out_slot = t1;
    }
    cur_slot = out_slot;
    plan.exits.push_back({int(plan.exits.size()), int(b), blk.name, int(plan.steps.size()) - 1, cur, cur_slot});
  }

  Step pool;
  pool.kind = StepKind::GlobalAvgPool;
  pool.name = "avgpool";
  pool.in = cur;
  pool.out = {1, 1, 1, cur.c};
  pool.in_slot = cur_slot;
  plan.steps.push_back(pool);

  Step fc;
  fc.kind = StepKind::Classifier;
  fc.name = "fc";
  fc.in = pool.out;
  fc.out = {1, 1, 1, plan.classes};
  fc.macs_per_sample = int64_t(plan.features) * plan.classes;
  plan.steps.push_back(fc);

  size_t largest = 0;
  for (const Step& s : plan.steps) {
    if (s.kind == StepKind::GlobalAvgPool || s.kind == StepKind::Classifier) continue;
    largest = std::max({largest, s.in.per_sample(), s.out.per_sample()});
    plan.macs_per_sample += s.macs_per_sample;
  }
  plan.macs_per_sample += fc.macs_per_sample;
  // Round every region to 16 floats so each starts 64-byte aligned.
  const size_t batch = size_t(max_batch);
  auto round16 = [](size_t n) { return add_size(n, 15, "plan") / 16 * 16; };
  plan.slot_floats = round16(mul_size(largest, batch, "plan: activation slot"));
  plan.pooled_offset = mul_size(plan.slot_floats, size_t(plan.num_slots), "plan: arena");
  plan.logits_offset = add_size(plan.pooled_offset, round16(batch * size_t(plan.features)), "plan: arena");
  plan.arena_floats = add_size(plan.logits_offset, round16(batch * size_t(plan.classes)), "plan: arena");
  mul_size(plan.arena_floats, sizeof(float), "plan: arena bytes");

  ExitStateLayout& L = plan.exit_state;
  const size_t ints = (batch * 4 + 63) / 64 * 64;  // one int32 array, 64-byte aligned
  L.position[0] = 0;
  L.position[1] = ints;
  L.hit = 2 * ints;
  L.exit = 3 * ints;
  L.label = 4 * ints;
  L.confidence = 5 * ints;
  L.source = 6 * ints;
  L.alive = 7 * ints;
  L.logits = 7 * ints + 64;
  L.bytes = L.logits + round16(batch * size_t(plan.classes)) * sizeof(float);
  return plan;
}

int64_t macs_through(const Plan& plan, int exit) {
  const ExitPoint& e = plan.exits.at(size_t(exit));
  int64_t macs = 0;
  for (int s = 0; s <= e.after_step; ++s) macs += plan.steps[size_t(s)].macs_per_sample;
  return macs;
}

}  // namespace gati
