// Architecture record parsing and the network builder; see resnet.h.
#include "weights/resnet.h"

#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "weights/common/error.h"
#include "weights/common/json_read.h"

namespace gati {
namespace {

using nlohmann::json;

std::vector<int> int_list(const JsonFields& j, const char* key, int lo, int hi) {
  const json& v = j.array(key);
  std::vector<int> out;
  for (size_t i = 0; i < v.size(); ++i)
    out.push_back(int(json_integer(v[i], str_cat(j.where_of(key), "[", i, "]"), lo, hi)));
  return out;
}

std::vector<float> float_list(const JsonFields& j, const char* key) {
  const json& v = j.array(key);
  std::vector<float> out;
  for (size_t i = 0; i < v.size(); ++i)
    out.push_back(float(json_number(v[i], str_cat(j.where_of(key), "[", i, "]"), -3.4e38, 3.4e38)));
  return out;
}

}  // namespace

Arch Arch::from_json(const std::string& text) {
  const json j = json_parse(text, "architecture");
  const JsonFields f(j, "architecture");
  Arch a;
  a.name = f.has("name") ? f.string("name") : std::string("resnet");
  const std::string block = f.string("block");
  if (block == "basic") {
    a.block = BlockKind::Basic;
  } else if (block == "bottleneck") {
    a.block = BlockKind::Bottleneck;
  } else {
    fail("architecture: 'block' = '", block, "' (valid: basic, bottleneck)");
  }
  const std::string stem = f.string("stem");
  if (stem == "imagenet") {
    a.stem = StemKind::ImageNet;
  } else if (stem == "cifar") {
    a.stem = StemKind::Cifar;
  } else {
    fail("architecture: 'stem' = '", stem, "' (valid: imagenet, cifar)");
  }
  a.layers = int_list(f, "layers", 1, 1000);
  a.widths = int_list(f, "widths", 1, 1 << 16);
  if (a.layers.size() != a.widths.size())
    fail("architecture: 'layers' has ", a.layers.size(), " stages but 'widths' has ", a.widths.size());
  a.stem_width = int(f.integer("stem_width", 1, 1 << 16));
  a.groups = int(f.integer("groups", 1, 1 << 12));
  a.width_per_group = int(f.integer("width_per_group", 1, 1 << 16));
  a.in_channels = int(f.integer("in_channels", 1, 1 << 12));
  a.num_classes = int(f.integer("num_classes", 1, 1 << 20));
  const std::vector<int> size = int_list(f, "input_size", 1, 1 << 14);
  if (size.size() != 2) fail("architecture: 'input_size' must be [H, W]");
  a.input_h = size[0];
  a.input_w = size[1];
  a.mean = float_list(f, "mean");
  a.std = float_list(f, "std");
  if (int(a.mean.size()) != a.in_channels || int(a.std.size()) != a.in_channels)
    fail("architecture: 'mean' and 'std' need one value per input channel (", a.in_channels, ")");
  // A normalisation outside these bounds scales inputs by more than a
  // million: refused here rather than blamed on the data later.
  for (float s : a.std)
    if (!(s >= 1e-6f && s <= 1e6f)) fail("architecture: 'std' values must be in [1e-06, 1e+06], got ", s);
  for (float m : a.mean)
    if (!(std::abs(m) <= 1e6f)) fail("architecture: 'mean' values must be in [-1e+06, 1e+06], got ", m);
  if (f.has("bn_eps")) {
    a.bn_eps = f.number("bn_eps", 0, 1);
    if (!(a.bn_eps > 0)) fail("architecture: 'bn_eps' must be positive");
  }
  if (a.block == BlockKind::Basic && (a.groups != 1 || a.width_per_group != 64))
    fail("architecture: basic blocks support only groups=1 and width_per_group=64");
  if (a.block == BlockKind::Bottleneck)
    for (size_t s = 0; s < a.widths.size(); ++s)  // describe()'s width, checked before any layer has it
      if (int(a.widths[s] * (a.width_per_group / 64.0)) < 1)
        fail("architecture: stage ", s + 1, " has width ", a.widths[s], " and width_per_group ", a.width_per_group,
             ", which gives bottleneck convolutions with 0 channels");
  return a;
}

std::string Arch::to_json() const {
  json j = {{"name", name},
            {"block", block == BlockKind::Basic ? "basic" : "bottleneck"},
            {"layers", layers},
            {"widths", widths},
            {"stem", stem == StemKind::ImageNet ? "imagenet" : "cifar"},
            {"stem_width", stem_width},
            {"groups", groups},
            {"width_per_group", width_per_group},
            {"in_channels", in_channels},
            {"input_size", {input_h, input_w}},
            {"num_classes", num_classes},
            {"mean", mean},
            {"std", std},
            {"bn_eps", bn_eps}};
  return j.dump();
}

Network describe(const Arch& arch) {
  Network net;
  net.arch = arch;
  auto add_conv = [&](ConvSpec c) {
    net.convs.push_back(std::move(c));
    return int(net.convs.size()) - 1;
  };
  if (arch.stem == StemKind::ImageNet) {
    net.stem = add_conv({"conv1", "bn1", arch.in_channels, arch.stem_width, 7, 2, 3, 1});
    net.stem_maxpool = true;
  } else {
    net.stem = add_conv({"conv1", "bn1", arch.in_channels, arch.stem_width, 3, 1, 1, 1});
  }
  const int expansion = arch.block == BlockKind::Basic ? 1 : 4;
  int cin = arch.stem_width;
  for (size_t s = 0; s < arch.layers.size(); ++s) {
    const int planes = arch.widths[s];
    for (int b = 0; b < arch.layers[s]; ++b) {
      const int stride = (s > 0 && b == 0) ? 2 : 1;
      BlockSpec blk;
      blk.name = str_cat("layer", s + 1, ".", b);
      blk.stage = int(s);
      blk.index = b;
      const std::string p = blk.name + ".";
      const int cout = planes * expansion;
      if (arch.block == BlockKind::Basic) {
        blk.convs.push_back(add_conv({p + "conv1", p + "bn1", cin, planes, 3, stride, 1, 1}));
        blk.convs.push_back(add_conv({p + "conv2", p + "bn2", planes, planes, 3, 1, 1, 1}));
      } else {
        const int width = int(planes * (arch.width_per_group / 64.0)) * arch.groups;
        if (width % arch.groups != 0) fail("architecture: bottleneck width ", width, " not divisible by groups");
        blk.convs.push_back(add_conv({p + "conv1", p + "bn1", cin, width, 1, 1, 0, 1}));
        blk.convs.push_back(add_conv({p + "conv2", p + "bn2", width, width, 3, stride, 1, arch.groups}));
        blk.convs.push_back(add_conv({p + "conv3", p + "bn3", width, cout, 1, 1, 0, 1}));
      }
      if (stride != 1 || cin != cout)
        blk.downsample = add_conv({p + "downsample.0", p + "downsample.1", cin, cout, 1, stride, 0, 1});
      blk.out_channels = cout;
      net.blocks.push_back(std::move(blk));
      cin = cout;
    }
  }
  net.features = cin;
  return net;
}

}  // namespace gati
